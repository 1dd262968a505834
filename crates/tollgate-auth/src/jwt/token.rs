use http::header::{HeaderName, AUTHORIZATION, COOKIE};
use serde::Deserialize;
use tollgate_core::RequestHead;

/// The size of the largest token accepted unless told otherwise: 8 KiB.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Where a request carries its token. The authorizer looks in each source in turn and takes
/// the first token it finds.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`, the scheme matched case-insensitively (RFC 6750 §2.1).
    /// The default, and the only source unless others are chosen.
    Bearer,
    /// The whole value of a header (`x-id-token: <token>`).
    #[serde(with = "header_name")]
    Header(HeaderName),
    /// A cookie's value.
    Cookie(String),
    /// A query parameter (`?access_token=`). Tokens in URLs end up in access logs, browser
    /// history and `Referer` headers, so this is never on unless chosen (RFC 6750 §2.3).
    Query(String),
}

/// What the sources found in a request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Found<'a> {
    /// The token's bytes. Not checked as text: jsonwebtoken reads bytes, and anything that is
    /// not base64url fails there; skipping the check saves a scan of the token per request.
    Token(&'a [u8]),
    Nothing,
    /// Credentials that cannot be read, with a general reason for the client.
    Malformed(&'static str),
}

pub(crate) fn find<'a>(sources: &[TokenSource], head: &RequestHead<'a>) -> Found<'a> {
    for source in sources {
        let found = match source {
            TokenSource::Bearer => bearer(head),
            TokenSource::Header(name) => header(head, name),
            TokenSource::Cookie(name) => cookie(head, name),
            TokenSource::Query(name) => query(head, name),
        };
        if found != Found::Nothing {
            return found;
        }
    }
    Found::Nothing
}

fn bearer<'a>(head: &RequestHead<'a>) -> Found<'a> {
    let mut values = head.headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Found::Nothing;
    };
    if values.next().is_some() {
        return Found::Malformed("the request carries more than one Authorization header");
    }
    let value = value.as_bytes();
    let (scheme, token) = match value.iter().position(|b| *b == b' ') {
        Some(space) => (&value[..space], &value[space + 1..]),
        None => (value, &b""[..]),
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        // Another scheme's credentials (Basic, ApiKey…) are not a bearer token.
        return Found::Nothing;
    }
    match token.trim_ascii() {
        b"" => Found::Malformed("the bearer token is empty"),
        token => Found::Token(token),
    }
}

fn header<'a>(head: &RequestHead<'a>, name: &HeaderName) -> Found<'a> {
    let mut values = head.headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Found::Nothing;
    };
    if values.next().is_some() {
        return Found::Malformed("the token header appears more than once");
    }
    match value.as_bytes().trim_ascii() {
        b"" => Found::Nothing,
        token => Found::Token(token),
    }
}

fn cookie<'a>(head: &RequestHead<'a>, name: &str) -> Found<'a> {
    for value in head.headers.get_all(COOKIE) {
        let Ok(value) = value.to_str() else {
            continue;
        };
        for pair in value.split(';') {
            if let Some((key, token)) = pair.trim().split_once('=') {
                if key == name && !token.is_empty() {
                    return Found::Token(token.trim_matches('"').as_bytes());
                }
            }
        }
    }
    Found::Nothing
}

fn query<'a>(head: &RequestHead<'a>, name: &str) -> Found<'a> {
    let Some(query) = head.uri.query() else {
        return Found::Nothing;
    };
    for pair in query.split('&') {
        if let Some((key, token)) = pair.split_once('=') {
            if key == name && !token.is_empty() {
                return Found::Token(token.as_bytes());
            }
        }
    }
    Found::Nothing
}

mod header_name {
    use http::header::HeaderName;
    use serde::{de, Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<HeaderName, D::Error> {
        let name = String::deserialize(d)?;
        HeaderName::try_from(name.as_str()).map_err(|_| {
            de::Error::invalid_value(de::Unexpected::Str(&name), &"a valid HTTP header name")
        })
    }
}

#[cfg(test)]
mod tests {
    use http::Request;

    use super::*;

    fn found(sources: &[TokenSource], request: &Request<()>) -> Found<'static> {
        // The test requests are leaked so the borrowed token can outlive the helper.
        let request: &'static Request<()> = Box::leak(Box::new(request.clone()));
        find(sources, &RequestHead::of(request))
    }

    fn request(headers: &[(&str, &str)], uri: &str) -> Request<()> {
        let mut builder = Request::builder().uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let bearer = [TokenSource::Bearer];
        for value in ["Bearer abc", "bearer abc", "BEARER  abc"] {
            let req = request(&[("authorization", value)], "/");
            assert_eq!(found(&bearer, &req), Found::Token(b"abc"), "{value}");
        }
    }

    #[test]
    fn other_schemes_are_not_bearer_tokens_and_empty_tokens_are_malformed() {
        let bearer = [TokenSource::Bearer];
        let basic = request(&[("authorization", "Basic dXNlcjpwdw==")], "/");
        assert_eq!(found(&bearer, &basic), Found::Nothing);
        let empty = request(&[("authorization", "Bearer ")], "/");
        assert!(matches!(found(&bearer, &empty), Found::Malformed(_)));
        let twice = request(
            &[("authorization", "Bearer a"), ("authorization", "Bearer b")],
            "/",
        );
        assert!(matches!(found(&bearer, &twice), Found::Malformed(_)));
    }

    #[test]
    fn query_tokens_are_found_only_when_that_source_is_chosen() {
        let req = request(&[], "/me?x=1&access_token=abc");
        assert_eq!(found(&[TokenSource::Bearer], &req), Found::Nothing);
        let query = [
            TokenSource::Bearer,
            TokenSource::Query("access_token".into()),
        ];
        assert_eq!(found(&query, &req), Found::Token(b"abc"));
    }

    #[test]
    fn cookies_and_custom_headers_are_read() {
        let req = request(
            &[
                ("cookie", "theme=dark; id_token=abc"),
                ("x-id-token", "def"),
            ],
            "/",
        );
        assert_eq!(
            found(&[TokenSource::Cookie("id_token".into())], &req),
            Found::Token(b"abc")
        );
        let header = [TokenSource::Header(HeaderName::from_static("x-id-token"))];
        assert_eq!(found(&header, &req), Found::Token(b"def"));
    }

    #[test]
    fn sources_deserialize_from_configuration() {
        let sources: Vec<TokenSource> = serde_json::from_str(
            r#"["bearer", {"header": "x-id-token"}, {"cookie": "id"}, {"query": "access_token"}]"#,
        )
        .unwrap();
        assert_eq!(sources.len(), 4);
        assert!(serde_json::from_str::<TokenSource>(r#"{"header": "bad header"}"#).is_err());
    }
}
