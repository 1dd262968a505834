//! What one route requires of a request: [`Validation`] and its query parameters.

use std::fmt;

use http::HeaderName;
use serde_json::{json, Value};

/// The default cap on a body validated against a schema: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;

/// What one route requires of a request, as Amazon API Gateway's request validator reads a
/// method's required headers, query strings and body model.
///
/// Nothing is required until said: an empty `Validation` lets every request through.
///
/// ```
/// use serde_json::json;
/// use tollgate_validate::{QueryParam, Validation};
///
/// let create_order = Validation::new()
///     .header("idempotency-key")
///     .query("dry_run", QueryParam::boolean())
///     .query("priority", QueryParam::integer().min(1).max(5))
///     .body(json!({
///         "type": "object",
///         "required": ["items"],
///         "properties": {"items": {"type": "array", "minItems": 1}}
///     }))
///     .max_body_bytes(64 * 1024);
/// assert_eq!(create_order.body_limit(), Some(64 * 1024));
/// assert_eq!(create_order.headers().count(), 1);
/// ```
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct Validation {
    headers: Vec<HeaderName>,
    /// Names that are not header names, refused by the builder with the route.
    invalid_headers: Vec<String>,
    query: Vec<(String, QueryParam)>,
    body: Option<Value>,
    max_body_bytes: Option<u64>,
}

impl Validation {
    /// Requires nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requires the header `name` (any case), present and not empty, as Amazon API Gateway
    /// requires a method's required headers. A value of whitespace only is empty: whitespace
    /// around a field value is not part of it (RFC 9110, section 5.5), and hyper strips it
    /// before the layer sees it. Its value need not be UTF-8. A name that is not a valid
    /// header name is refused when the layer is built.
    pub fn header(mut self, name: &str) -> Self {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(name) if !self.headers.contains(&name) => self.headers.push(name),
            Ok(_) => {}
            Err(_) => self.invalid_headers.push(name.to_owned()),
        }
        self
    }

    /// Checks the query parameter `name` (compared after percent-decoding, case-sensitively):
    /// each occurrence must parse as `param` says, and a required one must be present. An
    /// empty value (`?limit=`) counts as absent; any other, whitespace (`?limit=+`) included,
    /// is checked. Given twice, the later `param` replaces the earlier.
    pub fn query(mut self, name: impl Into<String>, param: QueryParam) -> Self {
        let name = name.into();
        match self.query.iter_mut().find(|(known, _)| *known == name) {
            Some((_, known)) => *known = param,
            None => self.query.push((name, param)),
        }
        self
    }

    /// Requires a JSON body (`Content-Type: application/json` or a `+json` type) that is valid
    /// against `schema`, a JSON Schema of draft 2020-12 unless its `$schema` names another
    /// draft; `format` is checked. The schema is compiled when the layer is built; every
    /// `$ref` must point inside it (nothing is fetched). The body is read whole, up to
    /// [`max_body_bytes`](Self::max_body_bytes) ([`DEFAULT_MAX_BODY_BYTES`] unless set).
    pub fn body(mut self, schema: Value) -> Self {
        self.body = Some(schema);
        self
    }

    /// Caps the body at `limit` bytes: a larger one is refused with 413, at once when its
    /// `Content-Length` says so, else as soon as the bytes read pass the limit. Without a body
    /// schema the body is then read whole (up to the limit) before the handler runs.
    pub fn max_body_bytes(mut self, limit: u64) -> Self {
        self.max_body_bytes = Some(limit);
        self
    }

    /// The required headers.
    pub fn headers(&self) -> impl Iterator<Item = &HeaderName> {
        self.headers.iter()
    }

    /// The checked query parameters, in the order given.
    pub fn query_params(&self) -> impl Iterator<Item = (&str, &QueryParam)> {
        self.query
            .iter()
            .map(|(name, param)| (name.as_str(), param))
    }

    /// The JSON Schema of the body, if one is required.
    pub fn body_schema(&self) -> Option<&Value> {
        self.body.as_ref()
    }

    /// The cap on the body: the one set, else [`DEFAULT_MAX_BODY_BYTES`] when a body schema
    /// is required, else none.
    pub fn body_limit(&self) -> Option<u64> {
        self.max_body_bytes
            .or_else(|| self.body.as_ref().map(|_| DEFAULT_MAX_BODY_BYTES))
    }

    pub(crate) fn query_slice(&self) -> &[(String, QueryParam)] {
        &self.query
    }

    pub(crate) fn invalid_headers(&self) -> &[String] {
        &self.invalid_headers
    }
}

/// What a query parameter's value must be. Optional unless [`required`](Self::required), as
/// in Amazon API Gateway.
///
/// ```
/// use serde_json::json;
/// use tollgate_validate::QueryParam;
///
/// let page = QueryParam::integer().min(1).required();
/// assert!(page.is_required());
/// assert_eq!(page.json_schema(), json!({"type": "integer", "minimum": 1}));
/// assert_eq!(
///     QueryParam::one_of(["asc", "desc"]).json_schema(),
///     json!({"type": "string", "enum": ["asc", "desc"]})
/// );
/// ```
#[derive(Clone, Debug, PartialEq)]
#[must_use]
pub struct QueryParam {
    kind: QueryKind,
    required: bool,
    /// `min` or `max` was set on a kind that is not an integer: refused at build.
    stray_bound: bool,
}

/// The kind of value a query parameter holds.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum QueryKind {
    /// Any text.
    String,
    /// A decimal integer that fits an `i64` (an optional sign, then digits), within the
    /// bounds when set (inclusive).
    Integer {
        /// The least value allowed.
        min: Option<i64>,
        /// The greatest value allowed.
        max: Option<i64>,
    },
    /// Exactly `true` or `false`.
    Boolean,
    /// One of these values, exactly (case-sensitive).
    OneOf(Vec<String>),
}

impl QueryParam {
    fn of(kind: QueryKind) -> Self {
        Self {
            kind,
            required: false,
            stray_bound: false,
        }
    }

    /// Any text.
    pub fn string() -> Self {
        Self::of(QueryKind::String)
    }

    /// A decimal integer that fits an `i64`.
    pub fn integer() -> Self {
        Self::of(QueryKind::Integer {
            min: None,
            max: None,
        })
    }

    /// Exactly `true` or `false`.
    pub fn boolean() -> Self {
        Self::of(QueryKind::Boolean)
    }

    /// One of `values`, exactly; an empty list is refused when the layer is built.
    pub fn one_of<I, S>(values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::of(QueryKind::OneOf(
            values.into_iter().map(Into::into).collect(),
        ))
    }

    /// Requires the parameter: absent, or present only with empty values, it is a violation.
    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }

    /// The least value allowed, for an [`integer`](Self::integer); on another kind, the layer
    /// refuses to build.
    pub fn min(mut self, n: i64) -> Self {
        match &mut self.kind {
            QueryKind::Integer { min, .. } => *min = Some(n),
            _ => self.stray_bound = true,
        }
        self
    }

    /// The greatest value allowed, for an [`integer`](Self::integer); on another kind, the
    /// layer refuses to build.
    pub fn max(mut self, n: i64) -> Self {
        match &mut self.kind {
            QueryKind::Integer { max, .. } => *max = Some(n),
            _ => self.stray_bound = true,
        }
        self
    }

    /// Whether the parameter must be present.
    pub fn is_required(&self) -> bool {
        self.required
    }

    /// The kind of value it holds.
    pub fn kind(&self) -> &QueryKind {
        &self.kind
    }

    /// The parameter's value as a JSON Schema, for an OpenAPI `parameters[].schema`.
    pub fn json_schema(&self) -> Value {
        match &self.kind {
            QueryKind::String => json!({"type": "string"}),
            QueryKind::Boolean => json!({"type": "boolean"}),
            QueryKind::OneOf(values) => json!({"type": "string", "enum": values}),
            QueryKind::Integer { min, max } => {
                let mut schema = serde_json::Map::new();
                schema.insert("type".to_owned(), json!("integer"));
                if let Some(min) = min {
                    schema.insert("minimum".to_owned(), json!(min));
                }
                if let Some(max) = max {
                    schema.insert("maximum".to_owned(), json!(max));
                }
                Value::Object(schema)
            }
        }
    }

    /// Why the parameter cannot be checked, if it cannot.
    pub(crate) fn problem(&self) -> Option<&'static str> {
        match &self.kind {
            _ if self.stray_bound => Some("min and max apply only to integer parameters"),
            QueryKind::Integer {
                min: Some(min),
                max: Some(max),
            } if min > max => Some("its min is greater than its max"),
            QueryKind::OneOf(values) if values.is_empty() => {
                Some("one_of needs at least one value")
            }
            _ => None,
        }
    }

    /// Checks one value, percent-decoded; `Err` says what was expected.
    pub(crate) fn check(&self, value: &str) -> Result<(), String> {
        match &self.kind {
            QueryKind::String => Ok(()),
            QueryKind::Boolean => match value {
                "true" | "false" => Ok(()),
                _ => Err(format!("expected true or false, found {}", Shown(value))),
            },
            QueryKind::OneOf(values) => {
                if values.iter().any(|allowed| allowed == value) {
                    Ok(())
                } else {
                    Err(format!(
                        "expected one of {}, found {}",
                        Listed(values),
                        Shown(value)
                    ))
                }
            }
            QueryKind::Integer { min, max } => {
                let Ok(n) = value.parse::<i64>() else {
                    return Err(format!("expected an integer, found {}", Shown(value)));
                };
                match (min, max) {
                    (Some(min), Some(max)) if n < *min || n > *max => Err(format!(
                        "expected an integer from {min} to {max}, found {n}"
                    )),
                    (Some(min), _) if n < *min => {
                        Err(format!("expected an integer of at least {min}, found {n}"))
                    }
                    (_, Some(max)) if n > *max => {
                        Err(format!("expected an integer of at most {max}, found {n}"))
                    }
                    _ => Ok(()),
                }
            }
        }
    }
}

/// The most characters of a client's value said back in a violation.
const SHOWN_CHARS: usize = 32;

/// A client's value, quoted and cut to [`SHOWN_CHARS`] characters.
struct Shown<'a>(&'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(SHOWN_CHARS) {
            Some((end, _)) => write!(f, "{:?}…", &self.0[..end]),
            None => write!(f, "{:?}", self.0),
        }
    }
}

/// The values of an enum, quoted and comma-separated.
struct Listed<'a>(&'a [String]);

impl fmt::Display for Listed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, value) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{value:?}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_parse_within_their_bounds_and_say_what_was_expected() {
        let param = QueryParam::integer().min(1).max(100);
        assert_eq!(param.check("1"), Ok(()));
        assert_eq!(param.check("+100"), Ok(()));
        assert_eq!(
            param.check("0").unwrap_err(),
            "expected an integer from 1 to 100, found 0"
        );
        assert_eq!(
            param.check("1.5").unwrap_err(),
            "expected an integer, found \"1.5\""
        );
        assert_eq!(
            param.check("").unwrap_err(),
            "expected an integer, found \"\""
        );
        assert_eq!(
            param.check(" 7").unwrap_err(),
            "expected an integer, found \" 7\""
        );
        // Past i64: refused as not an integer of ours, never a panic.
        assert!(param.check("99999999999999999999999").is_err());
        assert_eq!(
            QueryParam::integer().min(5).check("4").unwrap_err(),
            "expected an integer of at least 5, found 4"
        );
        assert_eq!(
            QueryParam::integer().max(5).check("-9223372036854775808"),
            Ok(())
        );
        assert_eq!(
            QueryParam::integer().max(5).check("6").unwrap_err(),
            "expected an integer of at most 5, found 6"
        );
    }

    #[test]
    fn booleans_are_exactly_true_or_false() {
        let param = QueryParam::boolean();
        assert_eq!(param.check("true"), Ok(()));
        assert_eq!(param.check("false"), Ok(()));
        assert_eq!(
            param.check("True").unwrap_err(),
            "expected true or false, found \"True\""
        );
        assert!(param.check("1").is_err());
    }

    #[test]
    fn enums_list_their_values_and_cut_long_client_values() {
        let param = QueryParam::one_of(["asc", "desc"]);
        assert_eq!(param.check("desc"), Ok(()));
        let long = "x".repeat(10_000);
        let detail = param.check(&long).unwrap_err();
        assert_eq!(
            detail,
            format!(
                "expected one of \"asc\", \"desc\", found \"{}\"…",
                "x".repeat(32)
            )
        );
        // Cut on a character boundary.
        let detail = param.check(&"é".repeat(40)).unwrap_err();
        assert!(
            detail.ends_with(&format!("\"{}\"…", "é".repeat(32))),
            "{detail}"
        );
    }

    #[test]
    fn bounds_on_other_kinds_and_empty_enums_are_problems() {
        assert_eq!(QueryParam::integer().min(1).max(2).problem(), None);
        assert!(QueryParam::integer().min(3).max(2).problem().is_some());
        assert!(QueryParam::string().min(1).problem().is_some());
        assert!(QueryParam::boolean().max(1).problem().is_some());
        assert!(QueryParam::one_of(Vec::<String>::new()).problem().is_some());
    }

    #[test]
    fn json_schemas_describe_each_kind() {
        assert_eq!(
            QueryParam::integer().min(1).max(9).json_schema(),
            json!({"type": "integer", "minimum": 1, "maximum": 9})
        );
        assert_eq!(
            QueryParam::integer().json_schema(),
            json!({"type": "integer"})
        );
        assert_eq!(
            QueryParam::boolean().json_schema(),
            json!({"type": "boolean"})
        );
        assert_eq!(
            QueryParam::string().json_schema(),
            json!({"type": "string"})
        );
        assert_eq!(
            QueryParam::one_of(["a"]).kind(),
            &QueryKind::OneOf(vec!["a".to_owned()])
        );
    }

    #[test]
    fn validation_reads_back_what_it_requires() {
        let validation = Validation::new()
            .header("X-Client")
            .header("x-client")
            .header("bad header")
            .query("page", QueryParam::string())
            .query("page", QueryParam::integer().required());
        assert_eq!(
            validation
                .headers()
                .map(HeaderName::as_str)
                .collect::<Vec<_>>(),
            ["x-client"]
        );
        assert_eq!(validation.invalid_headers(), ["bad header"]);
        let params: Vec<_> = validation.query_params().collect();
        assert_eq!(params, [("page", &QueryParam::integer().required())]);
        assert_eq!(validation.body_limit(), None);
        assert_eq!(
            validation.clone().body(json!({})).body_limit(),
            Some(DEFAULT_MAX_BODY_BYTES)
        );
        assert_eq!(validation.max_body_bytes(10).body_limit(), Some(10));
    }
}
