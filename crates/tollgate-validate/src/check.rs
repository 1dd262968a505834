//! The checks of one route, and the violations they find.

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::HeaderMap;
use serde_json::{json, Map, Value};
use tollgate_core::Rejection;

use crate::validation::Validation;

/// The most violations listed in one refusal; the rest are counted.
pub(crate) const MAX_LISTED: usize = 20;

/// The most violations counted in one refusal: past it, the detail says "over".
const MAX_COUNTED: usize = 1000;

/// The most characters of a body violation's detail, which can name the client's own keys.
const MAX_DETAIL_CHARS: usize = 160;

/// The longest body pointer said back: a longer one points at its nearest ancestor that fits,
/// so a client's long keys do not multiply into a long refusal.
const MAX_POINTER_BYTES: usize = 256;

/// Where a violation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    Header,
    Query,
    Body,
}

impl Place {
    fn as_str(self) -> &'static str {
        match self {
            Place::Header => "header",
            Place::Query => "query",
            Place::Body => "body",
        }
    }
}

/// One thing wrong with a request.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Violation {
    pub(crate) place: Place,
    /// The header or parameter; none for the body.
    pub(crate) name: Option<String>,
    /// A JSON Pointer (RFC 6901): the instance path in the body, `/<name>` otherwise.
    pub(crate) pointer: String,
    pub(crate) detail: String,
    /// The JSON Schema keyword that failed, for a body violation.
    pub(crate) keyword: Option<String>,
}

impl Violation {
    fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("in".to_owned(), json!(self.place.as_str()));
        if let Some(name) = &self.name {
            object.insert("name".to_owned(), json!(name));
        }
        object.insert("pointer".to_owned(), json!(self.pointer));
        object.insert("detail".to_owned(), json!(self.detail));
        if let Some(keyword) = &self.keyword {
            object.insert("keyword".to_owned(), json!(keyword));
        }
        Value::Object(object)
    }
}

/// The violations of one request: the first [`MAX_LISTED`] kept, the rest counted.
#[derive(Debug, Default)]
pub(crate) struct Violations {
    listed: Vec<Violation>,
    total: usize,
}

impl Violations {
    /// Adds a violation, built only when it will be listed. `false` once counting stops.
    fn add(&mut self, violation: impl FnOnce() -> Violation) -> bool {
        if self.total > MAX_COUNTED {
            return false;
        }
        self.total += 1;
        if self.listed.len() < MAX_LISTED {
            self.listed.push(violation());
        }
        true
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.total == 0
    }

    pub(crate) fn total(&self) -> usize {
        self.total
    }

    #[cfg(test)]
    pub(crate) fn listed(&self) -> &[Violation] {
        &self.listed
    }

    fn detail(&self) -> String {
        let listed = self.listed.len();
        match self.total {
            1 => "1 violation".to_owned(),
            total if total == listed => format!("{total} violations"),
            total if total > MAX_COUNTED => {
                format!("over {MAX_COUNTED} violations: the first {listed} listed")
            }
            total => format!(
                "{total} violations: the first {listed} listed, and {} more",
                total - listed
            ),
        }
    }

    /// The 400 problem document listing them under `errors`.
    pub(crate) fn into_rejection(self) -> Rejection {
        let errors = self.listed.iter().map(Violation::to_json).collect();
        Rejection::bad_request(self.detail()).with_member("errors", Value::Array(errors))
    }
}

/// Checks the required headers and the query parameters of `validation`.
pub(crate) fn check_head(
    validation: &Validation,
    headers: &HeaderMap,
    query: Option<&str>,
    out: &mut Violations,
) {
    for name in validation.headers() {
        let mut values = headers.get_all(name).iter().peekable();
        let detail = if values.peek().is_none() {
            "the header is required"
        } else if values.all(|value| is_blank(value.as_bytes())) {
            "the header is required and must not be blank"
        } else {
            continue;
        };
        out.add(|| Violation {
            place: Place::Header,
            name: Some(name.as_str().to_owned()),
            pointer: format!("/{}", escape_pointer(name.as_str())),
            detail: detail.to_owned(),
            keyword: None,
        });
    }

    let params = validation.query_slice();
    if params.is_empty() {
        return;
    }
    let mut present = vec![false; params.len()];
    // Lossy: invalid UTF-8 and bad escapes become U+FFFD or stay as written, never a panic.
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let Some(index) = params.iter().position(|(known, _)| *known == name) else {
            continue;
        };
        // Only an empty value counts as absent, as Amazon API Gateway has it for required
        // ones: any other, whitespace included, reaches the handler, so it is checked.
        if value.is_empty() {
            continue;
        }
        present[index] = true;
        let (name, param) = &params[index];
        if let Err(detail) = param.check(&value) {
            out.add(|| query_violation(name, detail));
        }
    }
    for ((name, param), present) in params.iter().zip(present) {
        if param.is_required() && !present {
            out.add(|| query_violation(name, "the query parameter is required".to_owned()));
        }
    }
}

fn query_violation(name: &str, detail: String) -> Violation {
    Violation {
        place: Place::Query,
        name: Some(name.to_owned()),
        pointer: format!("/{}", escape_pointer(name)),
        detail,
        keyword: None,
    }
}

/// Checks a body against the route's schema: one violation when it is not JSON, else one per
/// schema error, at its instance path.
pub(crate) fn check_body(schema: &jsonschema::Validator, body: &[u8], out: &mut Violations) {
    // serde_json's recursion limit (128) refuses deeply nested documents as not JSON.
    let document: Value = match serde_json::from_slice(body) {
        Ok(document) => document,
        Err(error) => {
            // serde_json's messages name what it expected and where, never the text itself.
            out.add(|| body_violation(String::new(), format!("invalid JSON: {error}"), None));
            return;
        }
    };
    for error in schema.iter_errors(&document) {
        let added = out.add(|| {
            body_violation(
                fitted(error.instance_path().as_str()).to_owned(),
                cut(error.masked_with("the value").to_string()),
                Some(error.kind().keyword().to_owned()),
            )
        });
        if !added {
            break;
        }
    }
}

fn body_violation(pointer: String, detail: String, keyword: Option<String>) -> Violation {
    Violation {
        place: Place::Body,
        name: None,
        pointer,
        detail,
        keyword,
    }
}

/// `pointer`, or its nearest ancestor of at most [`MAX_POINTER_BYTES`].
fn fitted(pointer: &str) -> &str {
    if pointer.len() <= MAX_POINTER_BYTES {
        return pointer;
    }
    // Escaped tokens hold no '/', so every '/' starts a token and is a char boundary.
    let end = pointer.as_bytes()[..=MAX_POINTER_BYTES]
        .iter()
        .rposition(|&byte| byte == b'/')
        .unwrap_or(0);
    &pointer[..end]
}

/// `detail` cut to [`MAX_DETAIL_CHARS`] characters.
fn cut(mut detail: String) -> String {
    if let Some((end, _)) = detail.char_indices().nth(MAX_DETAIL_CHARS) {
        detail.truncate(end);
        detail.push('…');
    }
    detail
}

/// A JSON Pointer reference token (RFC 6901): `~` as `~0`, `/` as `~1`.
pub(crate) fn escape_pointer(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Whether a header value is empty: whitespace around a field value is not part of it
/// (RFC 9110, section 5.5), so one of whitespace only is empty too.
fn is_blank(value: &[u8]) -> bool {
    value.iter().all(|byte| matches!(byte, b' ' | b'\t'))
}

/// Whether the body is declared JSON: one `Content-Type`, `application/json` or any
/// `type/subtype+json`, parameters (such as `charset`) allowed.
pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(CONTENT_TYPE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    let is_token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    if !is_token(kind) || !is_token(subtype) {
        return false;
    }
    (kind.eq_ignore_ascii_case("application") && subtype.eq_ignore_ascii_case("json"))
        || (subtype.len() > 5
            && subtype.as_bytes()[subtype.len() - 5..].eq_ignore_ascii_case(b"+json"))
}

/// The `Content-Length` the client declared, when it is one valid number.
pub(crate) fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::QueryParam;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static [u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_bytes(value).unwrap());
        }
        map
    }

    fn head(validation: &Validation, headers: &HeaderMap, query: Option<&str>) -> Violations {
        let mut out = Violations::default();
        check_head(validation, headers, query, &mut out);
        out
    }

    fn pointers_and_details(out: &Violations) -> Vec<(String, String)> {
        out.listed()
            .iter()
            .map(|v| (v.pointer.clone(), v.detail.clone()))
            .collect()
    }

    #[test]
    fn pointers_escape_tilde_and_slash() {
        assert_eq!(escape_pointer("a/b~c"), "a~1b~0c");
        assert_eq!(escape_pointer("~1"), "~01");
        assert_eq!(escape_pointer("plain"), "plain");
    }

    #[test]
    fn json_content_types_are_application_json_and_plus_json() {
        for json in [
            &b"application/json"[..],
            b"application/json; charset=utf-8",
            b"Application/JSON",
            b"application/merge-patch+json",
            b"application/vnd.api+json ; ext=x",
            b"text/x+JSON",
        ] {
            assert!(is_json(&headers(&[("content-type", json)])), "{json:?}");
        }
        for not_json in [
            &b"text/plain"[..],
            b"application/jsonp",
            b"application/json-seq",
            b"application/+json",
            b"+json",
            b"json",
            b"",
            b"application/\xffjson",
        ] {
            assert!(
                !is_json(&headers(&[("content-type", not_json)])),
                "{not_json:?}"
            );
        }
        assert!(!is_json(&HeaderMap::new()));
        // Two declarations are ambiguous.
        assert!(!is_json(&headers(&[
            ("content-type", b"application/json"),
            ("content-type", b"application/json"),
        ])));
    }

    #[test]
    fn required_headers_must_be_present_and_not_blank_in_any_encoding() {
        let validation = Validation::new().header("X-Client").header("x-trace");
        let out = head(
            &validation,
            &headers(&[("x-client", b"\xff\xfe"), ("x-trace", b" ")]),
            None,
        );
        assert_eq!(
            pointers_and_details(&out),
            [(
                "/x-trace".to_owned(),
                "the header is required and must not be blank".to_owned()
            )]
        );
        let out = head(&validation, &HeaderMap::new(), None);
        assert_eq!(out.total(), 2);
        assert_eq!(out.listed()[0].name.as_deref(), Some("x-client"));
        assert_eq!(out.listed()[0].detail, "the header is required");
    }

    #[test]
    fn query_values_are_percent_decoded_and_every_occurrence_is_checked() {
        let validation = Validation::new()
            .query("page size", QueryParam::integer().max(50))
            .query("a/b", QueryParam::boolean().required())
            .query("sort", QueryParam::one_of(["a b"]));
        let ok = head(
            &validation,
            &HeaderMap::new(),
            Some("page%20size=5&a%2Fb=true&sort=a+b&other=x"),
        );
        assert!(ok.is_empty(), "{ok:?}");

        let out = head(
            &validation,
            &HeaderMap::new(),
            Some("page+size=5&page+size=51&page+size=x%ZZ&sort=%FF"),
        );
        assert_eq!(
            pointers_and_details(&out),
            [
                (
                    "/page size".to_owned(),
                    "expected an integer of at most 50, found 51".to_owned()
                ),
                (
                    "/page size".to_owned(),
                    "expected an integer, found \"x%ZZ\"".to_owned()
                ),
                (
                    "/sort".to_owned(),
                    "expected one of \"a b\", found \"\u{fffd}\"".to_owned()
                ),
                (
                    "/a~1b".to_owned(),
                    "the query parameter is required".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn empty_query_values_count_as_absent() {
        let validation = Validation::new()
            .query("page", QueryParam::integer())
            .query("q", QueryParam::string().required());
        let out = head(&validation, &HeaderMap::new(), Some("page=&q="));
        assert_eq!(
            pointers_and_details(&out),
            [(
                "/q".to_owned(),
                "the query parameter is required".to_owned()
            )]
        );
        assert!(head(&validation, &HeaderMap::new(), Some("q=x&q=")).is_empty());
        assert_eq!(head(&validation, &HeaderMap::new(), None).total(), 1);
    }

    #[test]
    fn whitespace_query_values_are_present_and_checked() {
        let validation = Validation::new()
            .query("limit", QueryParam::integer())
            .query("sort", QueryParam::one_of(["name"]).required())
            .query("q", QueryParam::string().required());
        let out = head(
            &validation,
            &HeaderMap::new(),
            Some("limit=+&limit=%09&sort=%20&q=%20"),
        );
        assert_eq!(
            pointers_and_details(&out),
            [
                (
                    "/limit".to_owned(),
                    "expected an integer, found \" \"".to_owned()
                ),
                (
                    "/limit".to_owned(),
                    "expected an integer, found \"\\t\"".to_owned()
                ),
                (
                    "/sort".to_owned(),
                    "expected one of \"name\", found \" \"".to_owned()
                ),
            ]
        );
    }

    fn body(schema: Value, document: &str) -> Violations {
        let schema = jsonschema::validator_for(&schema).unwrap();
        let mut out = Violations::default();
        check_body(&schema, document.as_bytes(), &mut out);
        out
    }

    #[test]
    fn schema_errors_point_at_escaped_instance_paths_without_echoing_values() {
        let schema = json!({
            "type": "object",
            "required": ["id"],
            "properties": {
                "a/b": {"type": "integer"},
                "m~n": {"type": "integer"},
                "items": {"items": {"properties": {"quantity": {"maximum": 10}}}}
            }
        });
        let out = body(
            schema,
            r#"{"a/b": "secret-value", "m~n": "x", "items": [{"quantity": 11}]}"#,
        );
        let found: Vec<_> = out
            .listed()
            .iter()
            .map(|v| (v.pointer.as_str(), v.keyword.as_deref().unwrap()))
            .collect();
        assert_eq!(out.total(), 4, "{out:?}");
        for expected in [
            ("", "required"),
            ("/a~1b", "type"),
            ("/m~0n", "type"),
            ("/items/0/quantity", "maximum"),
        ] {
            assert!(found.contains(&expected), "{expected:?} not in {found:?}");
        }
        assert!(out.listed().iter().all(|v| !v.detail.contains("secret")));
        let quantity = out
            .listed()
            .iter()
            .find(|v| v.keyword.as_deref() == Some("maximum"))
            .unwrap();
        assert_eq!(
            quantity.detail,
            "the value is greater than the maximum of 10"
        );
    }

    #[test]
    fn invalid_and_deeply_nested_json_is_one_violation_at_the_root() {
        let out = body(json!({}), "{\"a\": }");
        assert_eq!(
            pointers_and_details(&out),
            [(
                String::new(),
                "invalid JSON: expected value at line 1 column 7".to_owned()
            )]
        );
        let deep = "[".repeat(100_000);
        let out = body(json!({}), &deep);
        assert!(
            out.listed()[0].detail.contains("recursion limit"),
            "{out:?}"
        );
        let huge = format!("[1e999, {}]", "9".repeat(5000));
        assert_eq!(body(json!({}), &huge).total(), 1);
    }

    #[test]
    fn many_violations_are_capped_and_counted() {
        let schema = json!({"items": {"type": "string"}});
        let out = body(schema.clone(), &format!("[{}1]", "1,".repeat(24)));
        assert_eq!(out.total(), 25);
        let rejection = out.into_rejection();
        assert_eq!(
            rejection.detail(),
            Some("25 violations: the first 20 listed, and 5 more")
        );
        assert_eq!(
            rejection
                .member("errors")
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            20
        );
        let out = body(schema, &format!("[{}1]", "1,".repeat(5000)));
        assert_eq!(
            out.into_rejection().detail(),
            Some("over 1000 violations: the first 20 listed")
        );
        let one = body(json!({"type": "string"}), "1").into_rejection();
        assert_eq!(one.detail(), Some("1 violation"));
        assert_eq!(
            one.member("errors").unwrap()[0],
            json!({"in": "body", "pointer": "", "keyword": "type",
                   "detail": "the value is not of type \"string\""})
        );
    }

    #[test]
    fn long_details_are_cut_and_long_pointers_point_at_an_ancestor() {
        let schema = json!({"properties": {"a": {}}, "additionalProperties": false});
        let key = "k".repeat(1000);
        let out = body(schema, &format!("{{\"{key}\": 1}}"));
        let detail = &out.listed()[0].detail;
        assert_eq!(detail.chars().count(), MAX_DETAIL_CHARS + 1, "{detail}");
        assert!(detail.ends_with('…'));

        let schema = json!({"additionalProperties": {"additionalProperties": {"items": {"type": "string"}}}});
        let out = body(schema, &format!("{{\"a\": {{\"{key}\": [1]}}}}"));
        assert_eq!(out.listed()[0].pointer, "/a");
        assert_eq!(fitted("/a/b"), "/a/b");
        let long = format!("/{}", "é".repeat(200));
        assert_eq!(fitted(&long), "");
    }
}
