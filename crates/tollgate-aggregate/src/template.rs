//! URL and body templates: `/users/{id}/orders?limit={query.limit}` filled from the request's
//! path parameters, its query, and earlier backends' responses (`{profile.account.id}`).

use std::sync::Arc;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;

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

    /// Whether its value comes from the request, so a bad one is the client's mistake.
    pub(crate) fn is_from_request(&self) -> bool {
        matches!(self, Slot::Param(_) | Slot::Query(_))
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

    /// The template with every placeholder written as `x`: what a URL template looks like
    /// filled, to check its literal parts when the endpoint is built.
    pub(crate) fn sample(&self) -> String {
        self.pieces
            .iter()
            .map(|piece| match piece {
                Piece::Literal(text) => text.as_str(),
                Piece::Slot(_) => "x",
            })
            .collect()
    }

    /// The template as a whole when it is exactly one placeholder (`"{profile.id}"`), so a
    /// body field keeps the value's JSON type.
    fn single(&self) -> Option<&Slot> {
        match self.pieces.as_slice() {
            [Piece::Slot(slot)] => Some(slot),
            _ => None,
        }
    }

    /// Fills the template for a URL, each value written by [`url_writer`].
    pub(crate) fn fill_url(&self, vars: &Vars<'_>) -> Result<String, FillError> {
        self.fill(vars, true, url_writer(vars))
    }

    /// Fills only what the request supplies (backend fields written as `x`), so that a
    /// request that cannot fill the URL is refused before any backend is called.
    pub(crate) fn check_request(&self, vars: &Vars<'_>) -> Result<(), FillError> {
        self.fill(vars, false, url_writer(vars)).map(drop)
    }

    /// Fills the template as plain text (inside a JSON string).
    fn fill_text(&self, vars: &Vars<'_>) -> Result<String, FillError> {
        self.fill(vars, true, |out, _, text| {
            out.push_str(text);
            Ok(())
        })
    }

    fn fill(
        &self,
        vars: &Vars<'_>,
        fields: bool,
        mut write: impl FnMut(&mut String, &Slot, &str) -> Result<(), &'static str>,
    ) -> Result<String, FillError> {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(text) => out.push_str(text),
                Piece::Slot(Slot::Field { .. }) if !fields => out.push('x'),
                Piece::Slot(slot) => {
                    let written = match vars.lookup(slot)? {
                        Value::String(text) => write(&mut out, slot, &text),
                        value @ (Value::Number(_) | Value::Bool(_)) => {
                            write(&mut out, slot, &value.to_string())
                        }
                        _ => return Err(FillError::NotAScalar(slot.spelled())),
                    };
                    if let Err(reason) = written {
                        return Err(if slot.is_from_request() {
                            FillError::Request(format!("{} {reason}", slot.spelled()))
                        } else {
                            FillError::Unusable {
                                slot: slot.spelled(),
                                reason,
                            }
                        });
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Writes a value into a URL: percent-encoded as one component, and in the path never empty,
/// `.` or `..`, since as a segment it would change the upstream's path (`/users/{id}/orders`
/// with `..` is `/orders`, with nothing `/users//orders`). In the query it is only a value.
fn url_writer<'v>(
    vars: &'v Vars<'_>,
) -> impl FnMut(&mut String, &Slot, &str) -> Result<(), &'static str> + 'v {
    move |out, slot, text| {
        if out.contains('?') {
            out.extend(utf8_percent_encode(text, COMPONENT));
            return Ok(());
        }
        let catch_all =
            matches!(slot, Slot::Param(name) if vars.param(name).is_some_and(|p| p.catch_all));
        // `{*path}` keeps its segments: `css/site.css` stays a path, each segment encoded
        // and checked on its own.
        let segments = if catch_all {
            text.split('/').collect()
        } else {
            vec![text]
        };
        for (index, segment) in segments.into_iter().enumerate() {
            // Encoding keeps dots and escapes `%`, so only these are dot segments once
            // written: `%2e%2e` goes out as the harmless `%252e%252e`.
            if matches!(segment, "." | "..") {
                return Err("is `.` or `..`, which would change the URL's path");
            }
            if segment.is_empty() && !catch_all {
                return Err("is empty, which would change the URL's path");
            }
            if index > 0 {
                out.push('/');
            }
            out.extend(utf8_percent_encode(segment, COMPONENT));
        }
        Ok(())
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

    /// Looks up only what the request supplies, so that a request that cannot fill the body
    /// is refused before any backend is called.
    pub(crate) fn check_request(&self, vars: &Vars<'_>) -> Result<(), FillError> {
        for slot in self.slots.iter().filter(|slot| slot.is_from_request()) {
            vars.lookup(slot)?;
        }
        Ok(())
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

/// A path parameter of the matched route, percent-decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Param {
    pub(crate) name: String,
    pub(crate) value: String,
    /// A `{*rest}` parameter: its `/`s separate segments and stay unencoded in a URL.
    pub(crate) catch_all: bool,
}

/// The parameters of `route` (as written) that `matched` found, decoded; `Err` names one
/// whose bytes are not UTF-8.
pub(crate) fn route_params(
    route: &str,
    matched: &matchit::Params<'_, '_>,
) -> Result<Vec<Param>, String> {
    matched
        .iter()
        .map(|(name, raw)| {
            let value = percent_encoding::percent_decode_str(raw)
                .decode_utf8()
                .map_err(|_| name.to_owned())?
                .into_owned();
            Ok(Param {
                catch_all: route.contains(&format!("{{*{name}}}")),
                name: name.to_owned(),
                value,
            })
        })
        .collect()
}

/// The fields of one backend's response that later backends' templates use, copied out so
/// the response itself can go on through its pipeline without being cloned whole.
pub(crate) type Extract = Vec<(Vec<String>, Value)>;

/// Copies the values at `paths` out of `value`; absent paths are left out.
pub(crate) fn extract(value: &Value, paths: &[Vec<String>]) -> Extract {
    paths
        .iter()
        .filter_map(|path| Some((path.clone(), field(value, path)?.clone())))
        .collect()
}

/// What placeholders are filled from, for one request.
pub(crate) struct Vars<'a> {
    /// The route's path parameters, decoded.
    pub(crate) params: &'a [Param],
    /// The request's query parameters, decoded, in order.
    pub(crate) query: &'a [(String, String)],
    /// Earlier backends' fields that this template reads, by backend name.
    pub(crate) responses: &'a [(Arc<str>, Arc<Extract>)],
}

impl Vars<'_> {
    fn lookup(&self, slot: &Slot) -> Result<Value, FillError> {
        // Strings are cloned out: templates are short and filled once per call.
        match slot {
            Slot::Param(name) => self
                .param(name)
                .map(|param| Value::String(param.value.clone()))
                .ok_or_else(|| FillError::Request(format!("{} is missing", slot.spelled()))),
            Slot::Query(name) => self
                .query
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| Value::String(value.clone()))
                .ok_or_else(|| {
                    FillError::Request(format!("the query parameter {name:?} is missing"))
                }),
            Slot::Field { backend, path } => {
                let extract = self
                    .responses
                    .iter()
                    .find(|(name, _)| **name == **backend)
                    .map(|(_, extract)| extract)
                    .ok_or_else(|| FillError::NoResponse(backend.clone()))?;
                extract
                    .iter()
                    .find(|(at, _)| at == path)
                    .map(|(_, value)| value.clone())
                    .ok_or_else(|| FillError::Missing(slot.spelled()))
            }
        }
    }

    fn param(&self, name: &str) -> Option<&Param> {
        self.params.iter().find(|param| param.name == name)
    }
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
    /// The request lacks a value the template needs, or holds one it cannot use: the
    /// client's mistake, answered 400.
    #[error("{0}")]
    Request(String),
    #[error("{0} has no value")]
    Missing(String),
    #[error("{0} is an object, array or null, which cannot be put in a URL")]
    NotAScalar(String),
    #[error("{slot} {reason}")]
    Unusable { slot: String, reason: &'static str },
    #[error("backend {0:?} gave no response to take fields from")]
    NoResponse(String),
    #[error("{0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars<'a>(responses: &'a [(Arc<str>, Arc<Extract>)]) -> Vars<'a> {
        static PARAMS: std::sync::OnceLock<Vec<Param>> = std::sync::OnceLock::new();
        static QUERY: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();
        Vars {
            params: PARAMS.get_or_init(|| {
                vec![
                    Param {
                        name: "id".into(),
                        value: "a/b c".into(),
                        catch_all: false,
                    },
                    Param {
                        name: "rest".into(),
                        value: "css/site.css".into(),
                        catch_all: true,
                    },
                ]
            }),
            query: QUERY.get_or_init(|| vec![("limit".into(), "5".into())]),
            responses,
        }
    }

    /// One backend's response, with every field the test templates read extracted.
    fn response(name: &str, value: Value, paths: &[&str]) -> (Arc<str>, Arc<Extract>) {
        let paths: Vec<Vec<String>> = paths
            .iter()
            .map(|path| path.split('.').map(str::to_owned).collect())
            .collect();
        (name.into(), Arc::new(extract(&value, &paths)))
    }

    #[test]
    fn a_catch_all_keeps_its_slashes_and_checks_each_segment() {
        let template = Template::parse("/static/{rest}").unwrap();
        assert_eq!(
            template.fill_url(&vars(&[])).unwrap(),
            "/static/css/site.css"
        );
    }

    #[test]
    fn urls_are_filled_and_values_percent_encoded() {
        let responses = [response(
            "profile",
            json!({"account": {"id": 42}}),
            &["account.id"],
        )];
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
        let responses = [response(
            "profile",
            json!({"id": 42, "vip": true, "tags": ["a"], "name": "Ann"}),
            &["id", "vip", "tags", "name", "tags.0"],
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
        let responses = [response("profile", json!({}), &["id"])];
        let template = Template::parse("/x/{profile.id}").unwrap();
        assert_eq!(
            template.fill_url(&vars(&responses)),
            Err(FillError::Missing("{profile.id}".into()))
        );
        let template = Template::parse("/x/{query.page}").unwrap();
        assert_eq!(
            template.fill_url(&vars(&responses)),
            Err(FillError::Request(
                "the query parameter \"page\" is missing".into()
            ))
        );
    }

    #[test]
    fn dot_segment_and_empty_values_cannot_go_in_a_url_path() {
        let responses = [response(
            "profile",
            json!({"a": "..", "b": "", "c": "%2e%2e"}),
            &["a", "b", "c"],
        )];
        for text in ["/x/{profile.a}/y", "/x/{profile.b}/y"] {
            let template = Template::parse(text).unwrap();
            assert!(matches!(
                template.fill_url(&vars(&responses)),
                Err(FillError::Unusable { .. })
            ));
        }
        // Written encoded, `%2e%2e` is no dot segment.
        let template = Template::parse("/x/{profile.c}").unwrap();
        assert_eq!(
            template.fill_url(&vars(&responses)).unwrap(),
            "/x/%252e%252e"
        );
    }

    #[test]
    fn dot_values_are_plain_values_in_the_query() {
        let responses = [response("profile", json!({"a": ".."}), &["a"])];
        let template = Template::parse("/x?q={profile.a}").unwrap();
        assert_eq!(template.fill_url(&vars(&responses)).unwrap(), "/x?q=..");
    }

    #[test]
    fn objects_cannot_go_in_a_url() {
        let responses = [response("profile", json!({"a": {"b": 1}}), &["a"])];
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
