//! Where a request's API key is read from.

use http::header::HeaderName;
use http::Request;
use tollgate_core::Principal;

/// Where the usage plan layer looks for a request's API key.
///
/// Sources are tried in the order given; the first that holds a value is used, and a value
/// that is not a valid key is refused rather than passed over for the next source.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeySource {
    /// A request header (`x-api-key` by default, as Amazon API Gateway reads it).
    Header(HeaderName),
    /// The usage identifier key an authorizer set on the request's
    /// [`Principal`] (Amazon API Gateway's `AUTHORIZER` key source): the authorizer
    /// decides which key a caller spends, and the caller never sends it.
    Authorizer,
    /// A query parameter. Keys in URLs end up in access logs, browser history and `Referer`
    /// headers, so this source is never on unless chosen.
    Query(String),
}

impl Default for KeySource {
    fn default() -> Self {
        Self::Header(HeaderName::from_static("x-api-key"))
    }
}

impl KeySource {
    /// The key this source finds in `request`.
    #[inline]
    pub(crate) fn find<'r, B>(&self, request: &'r Request<B>) -> Option<&'r [u8]> {
        match self {
            Self::Header(name) => request.headers().get(name).map(|value| value.as_bytes()),
            Self::Authorizer => request
                .extensions()
                .get::<Principal>()
                .and_then(Principal::usage_identifier_key)
                .map(str::as_bytes),
            Self::Query(name) => request.uri().query().and_then(|query| {
                query.split('&').find_map(|pair| {
                    let (key, value) = pair.split_once('=')?;
                    (key == name).then_some(value.as_bytes())
                })
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_reads_its_own_place() {
        let request = Request::get("/x?a=1&api_key=tg_q_abc")
            .header("x-api-key", "tg_h_abc")
            .extension(
                Principal::builder()
                    .usage_identifier_key("tg_p_abc")
                    .build(),
            )
            .body(())
            .unwrap();
        assert_eq!(KeySource::default().find(&request), Some(&b"tg_h_abc"[..]));
        assert_eq!(KeySource::Authorizer.find(&request), Some(&b"tg_p_abc"[..]));
        assert_eq!(
            KeySource::Query("api_key".into()).find(&request),
            Some(&b"tg_q_abc"[..])
        );
        assert_eq!(KeySource::Query("key".into()).find(&request), None);
        let bare = Request::get("/x").body(()).unwrap();
        assert_eq!(KeySource::Authorizer.find(&bare), None);
        assert_eq!(KeySource::Query("api_key".into()).find(&bare), None);
    }
}
