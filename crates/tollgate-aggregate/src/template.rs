//! URL and body templates: `/users/{id}/orders?limit={query.limit}` filled from the request's
//! path parameters, its query, and earlier backends' responses (`{profile.account.id}`).

use std::sync::Arc;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;
use tollgate_core::is_dot_segment;

/// Everything but RFC 3986's unreserved characters is encoded, so a value stays inside its
/// path segment or query component: a `/` or `?` in a user id cannot change the URL's shape.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// One placeholder of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    /// `{id}`: a path parameter of the endpoint's route.
    Param(String),
    /// `{query.page}`: a query parameter of the incoming request.
    Query(String),
    /// `{profile.account.id}`: a field of an earlier backend's response (before its pipeline).
    Field { backend: String, path: Vec<String> },
}

impl Slot {
    fn parse(inner: &str) -> Option<Self> {
        let mut parts = inner.split('.');
        let first = parts.next().filter(|name| valid_name(name))?;
        let rest: Vec<String> = parts.map(str::to_owned).collect();
        if rest.iter().any(|segment| segment.is_empty()) {
            return None;
        }
        Some(match (first, rest.len()) {
            (_, 0) => Slot::Param(first.to_owned()),
            ("query", 1) => Slot::Query(rest.into_iter().next()?),
            ("query", _) => return None,
            _ => Slot::Field {
                backend: first.to_owned(),
                path: rest,
            },
        })
    }

    /// How the slot is written, for error messages.
    pub(crate) fn spelled(&self) -> String {
        match self {
            Slot::Param(name) => format!("{{{name}}}"),
            Slot::Query(name) => format!("{{query.{name}}}"),
            Slot::Field { backend, path } => format!("{{{backend}.{}}}", path.join(".")),
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Slot(Slot),
}

/// A string with `{…}` placeholders, parsed once when the endpoint is built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Template {
    pieces: Vec<Piece>,
}

/// A template that could not be parsed: the message says where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ParseError(pub(crate) String);

impl Template {
    pub(crate) fn parse(text: &str) -> Result<Self, ParseError> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find(['{', '}']) {
            if rest.as_bytes()[open] == b'}' {
                return Err(ParseError(format!("unmatched '}}' in {text:?}")));
            }
            let close = rest[open..]
                .find('}')
                .map(|at| open + at)
                .ok_or_else(|| ParseError(format!("unclosed '{{' in {text:?}")))?;
            if open > 0 {
                pieces.push(Piece::Literal(rest[..open].to_owned()));
            }
            let inner = &rest[open + 1..close];
            let slot = Slot::parse(inner).ok_or_else(|| {
                ParseError(format!(
                    "invalid placeholder {{{inner}}} in {text:?}: expected {{name}}, \
                     {{query.name}} or {{backend.field}}"
                ))
            })?;
            pieces.push(Piece::Slot(slot));
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Literal(rest.to_owned()));
        }
        Ok(Self { pieces })
    }

    /// The placeholders, in order.
    pub(crate) fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.pieces.iter().filter_map(|piece| match piece {
            Piece::Slot(slot) => Some(slot),
            Piece::Literal(_) => None,
        })
    }

    /// The template as a whole when it is exactly one placeholder (`"{profile.id}"`), so a
    /// body field keeps the value's JSON type.
    fn single(&self) -> Option<&Slot> {
        match self.pieces.as_slice() {
            [Piece::Slot(slot)] => Some(slot),
            _ => None,
        }
    }

    /// Fills the template for a URL: each value percent-encoded as one component.
    ///
    /// A value that is `.` or `..` fails: as a path segment it would climb the upstream's
    /// path (`/users/{id}/orders` with `..` is `/orders`).
    pub(crate) fn fill_url(&self, vars: &Vars<'_>) -> Result<String, FillError> {
        self.fill(vars, |out, text| {
            if is_dot_segment(text) {
                return false;
            }
            out.extend(utf8_percent_encode(text, COMPONENT));
            true
        })
    }

    /// Fills the template as plain text (inside a JSON string).
    fn fill_text(&self, vars: &Vars<'_>) -> Result<String, FillError> {
        self.fill(vars, |out, text| {
            out.push_str(text);
            true
        })
    }

    fn fill(
        &self,
        vars: &Vars<'_>,
        mut write: impl FnMut(&mut String, &str) -> bool,
    ) -> Result<String, FillError> {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(text) => out.push_str(text),
                Piece::Slot(slot) => {
                    let written = match vars.lookup(slot)? {
                        Value::String(text) => write(&mut out, &text),
                        value @ (Value::Number(_) | Value::Bool(_)) => {
                            write(&mut out, &value.to_string())
                        }
                        _ => return Err(FillError::NotAScalar(slot.spelled())),
                    };
                    if !written {
                        return Err(FillError::DotSegment(slot.spelled()));
                    }
                }
            }
        }
        Ok(out)
    }
}

/// A JSON body with placeholders in its strings. A string that is one placeholder becomes
/// the value itself, type and all (`"{profile.id}"` → `42`); placeholders inside longer strings
/// are written as text.
#[derive(Clone, Debug)]
pub(crate) struct BodyTemplate {
    value: Value,
    slots: Vec<Slot>,
}

impl BodyTemplate {
    pub(crate) fn parse(value: Value) -> Result<Self, ParseError> {
        let mut slots = Vec::new();
        collect_slots(&value, &mut slots)?;
        Ok(Self { value, slots })
    }

    pub(crate) fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter()
    }

    pub(crate) fn fill(&self, vars: &Vars<'_>) -> Result<Value, FillError> {
        if self.slots.is_empty() {
            return Ok(self.value.clone());
        }
        fill_value(&self.value, vars)
    }
}

fn collect_slots(value: &Value, slots: &mut Vec<Slot>) -> Result<(), ParseError> {
    match value {
        Value::String(text) if text.contains(['{', '}']) => {
            slots.extend(Template::parse(text)?.slots().cloned());
        }
        Value::Array(items) => {
            for item in items {
                collect_slots(item, slots)?;
            }
        }
        Value::Object(fields) => {
            for item in fields.values() {
                collect_slots(item, slots)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn fill_value(value: &Value, vars: &Vars<'_>) -> Result<Value, FillError> {
    Ok(match value {
        Value::String(text) if text.contains(['{', '}']) => {
            // Parsed when the endpoint was built, so this cannot fail here.
            let template = Template::parse(text).map_err(|error| FillError::Invalid(error.0))?;
            match template.single() {
                Some(slot) => vars.lookup(slot)?,
                None => Value::String(template.fill_text(vars)?),
            }
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| fill_value(item, vars))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(key, item)| Ok((key.clone(), fill_value(item, vars)?)))
                .collect::<Result<_, _>>()?,
        ),
        other => other.clone(),
    })
}

/// What placeholders are filled from, for one request.
pub(crate) struct Vars<'a> {
    /// The route's path parameters, decoded.
    pub(crate) params: &'a [(String, String)],
    /// The request's query parameters, decoded, in order.
    pub(crate) query: &'a [(String, String)],
    /// Earlier backends' parsed responses, by name.
    pub(crate) responses: &'a [(&'a str, Option<Arc<Value>>)],
}

impl Vars<'_> {
    fn lookup(&self, slot: &Slot) -> Result<Value, FillError> {
        // Strings are cloned out: templates are short and filled once per call.
        match slot {
            Slot::Param(name) => {
                pair(self.params, name).ok_or_else(|| FillError::Missing(slot.spelled()))
            }
            Slot::Query(name) => {
                pair(self.query, name).ok_or_else(|| FillError::Missing(slot.spelled()))
            }
            Slot::Field { backend, path } => {
                let response = self
                    .responses
                    .iter()
                    .find(|(name, _)| name == backend)
                    .and_then(|(_, response)| response.as_deref())
                    .ok_or_else(|| FillError::NoResponse(backend.clone()))?;
                field(response, path)
                    .cloned()
                    .ok_or_else(|| FillError::Missing(slot.spelled()))
            }
        }
    }
}

fn pair(pairs: &[(String, String)], name: &str) -> Option<Value> {
    pairs
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| Value::String(value.clone()))
}

/// The value at `path`, through objects by key and arrays by index (`items.0.id`).
pub(crate) fn field<'v>(value: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(value, |value, segment| match value {
        Value::Object(fields) => fields.get(segment),
        Value::Array(items) => items.get(segment.parse::<usize>().ok()?),
        _ => None,
    })
}

/// Why a template could not be filled for this request; the backend fails with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FillError {
    #[error("{0} has no value in this request")]
    Missing(String),
    #[error("{0} is an object, array or null, which cannot be put in a URL")]
    NotAScalar(String),
    #[error("{0} is `.` or `..`, which would change the URL's path")]
    DotSegment(String),
    #[error("backend {0:?} gave no response to take fields from")]
    NoResponse(String),
    #[error("{0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars<'a>(responses: &'a [(&'a str, Option<Arc<Value>>)]) -> Vars<'a> {
        static PARAMS: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();
        static QUERY: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();
        Vars {
            params: PARAMS.get_or_init(|| vec![("id".into(), "a/b c".into())]),
            query: QUERY.get_or_init(|| vec![("limit".into(), "5".into())]),
            responses,
        }
    }

    #[test]
    fn urls_are_filled_and_values_percent_encoded() {
        let responses = [("profile", Some(Arc::new(json!({"account": {"id": 42}}))))];
        let template =
            Template::parse("http://h/users/{id}/orders/{profile.account.id}?limit={query.limit}")
                .unwrap();
        assert_eq!(
            template.fill_url(&vars(&responses)).unwrap(),
            "http://h/users/a%2Fb%20c/orders/42?limit=5"
        );
    }

    #[test]
    fn a_body_placeholder_keeps_its_json_type() {
        let responses = [(
            "profile",
            Some(Arc::new(
                json!({"id": 42, "vip": true, "tags": ["a"], "name": "Ann"}),
            )),
        )];
        let body = BodyTemplate::parse(json!({
            "user": "{profile.id}", "vip": "{profile.vip}", "tags": "{profile.tags}",
            "greeting": "hello {profile.name}", "first_tag": "{profile.tags.0}", "n": 1
        }))
        .unwrap();
        assert_eq!(
            body.fill(&vars(&responses)).unwrap(),
            json!({"user": 42, "vip": true, "tags": ["a"], "greeting": "hello Ann",
                   "first_tag": "a", "n": 1})
        );
    }

    #[test]
    fn a_missing_value_names_the_placeholder() {
        let responses = [("profile", Some(Arc::new(json!({}))))];
        let template = Template::parse("/x/{profile.id}").unwrap();
        assert_eq!(
            template.fill_url(&vars(&responses)),
            Err(FillError::Missing("{profile.id}".into()))
        );
        let template = Template::parse("/x/{query.page}").unwrap();
        assert_eq!(
            template.fill_url(&vars(&responses)),
            Err(FillError::Missing("{query.page}".into()))
        );
    }

    #[test]
    fn dot_segment_values_cannot_go_in_a_url() {
        let responses = [("profile", Some(Arc::new(json!({"a": "..", "b": "%2e"}))))];
        for text in ["/x/{profile.a}/y", "/x/{profile.b}"] {
            let template = Template::parse(text).unwrap();
            assert!(matches!(
                template.fill_url(&vars(&responses)),
                Err(FillError::DotSegment(_))
            ));
        }
    }

    #[test]
    fn objects_cannot_go_in_a_url() {
        let responses = [("profile", Some(Arc::new(json!({"a": {"b": 1}}))))];
        let template = Template::parse("/x/{profile.a}").unwrap();
        assert!(matches!(
            template.fill_url(&vars(&responses)),
            Err(FillError::NotAScalar(_))
        ));
    }

    #[test]
    fn malformed_templates_are_refused() {
        for text in [
            "/x/{",
            "/x/}",
            "/x/{}",
            "/x/{a..b}",
            "/x/{query.a.b}",
            "/x/{a b}",
        ] {
            assert!(Template::parse(text).is_err(), "{text}");
        }
        assert_eq!(
            Template::parse("/plain").unwrap().slots().count(),
            0,
            "no placeholders"
        );
    }
}
