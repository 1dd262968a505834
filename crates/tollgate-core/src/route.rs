use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use http::Method;
use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};

/// Per-route settings: maps "method + path template" to a value, so a layer in front of the
/// application's router can apply throttle rules, cache policies and the like per route.
///
/// Routes are written `"METHOD /path/template"`, for example `"GET /pets/{id}"`,
/// `"POST /orders"` or `"* /admin/{*rest}"`. A bare `"/path/template"` and the method `*`
/// both match any method. Method names are case-sensitive tokens, as in [`http::Method`]:
/// `get` is a different (extension) method from `GET`. Templates use the [`matchit`] syntax:
/// `{name}` matches one segment, `{*name}` matches the rest of the path (at least one
/// character), and `{{` / `}}` are literal braces.
///
/// # Which route matches
///
/// [`at`](Self::at) looks at the routes for the request's method first, then, for `HEAD`
/// only, at the `GET` routes, and last at the any-method routes. So `"DELETE /pets/{id}"` wins
/// over `"* /pets/{id}"` for a `DELETE`, and also over a more specific `"* /pets/7"`: the
/// method decides before the template does. Among routes of the same method, a static
/// segment beats `{name}`, which beats `{*name}`.
///
/// Paths are compared exactly as they arrive, byte for byte: `/pets` and `/pets/` are
/// different paths, so are `/pets` and `/Pets`, and percent-escapes are not decoded. Pass the
/// request's raw path ([`http::Uri::path`]), without its query string.
///
/// Lookup does not allocate, except inside [`matchit`] for a template with more than three
/// parameters or when overlapping templates make it backtrack.
///
/// # Example
///
/// ```
/// use http::Method;
/// use tollgate_core::RouteTable;
///
/// let limits = RouteTable::new()
///     .with("GET /pets/{id}", 100)?
///     .with("POST /pets", 10)?
///     .with("/{*rest}", 1_000)?;
///
/// let matched = limits.at(&Method::GET, "/pets/7").expect("GET /pets/{id} matches");
/// assert_eq!(matched.route(), "GET /pets/{id}");
/// assert_eq!(matched.param("id"), Some("7"));
/// assert_eq!(*matched.value(), 100);
///
/// // HEAD falls back to the GET routes; other methods to the any-method routes.
/// assert_eq!(limits.at(&Method::HEAD, "/pets/7").map(|m| *m.value()), Some(100));
/// assert_eq!(limits.at(&Method::DELETE, "/pets/7").map(|m| *m.value()), Some(1_000));
/// # Ok::<(), tollgate_core::RouteTableError>(())
/// ```
///
/// # Configuration
///
/// A table deserializes from a map of routes to values, kept in the map's order; an invalid
/// or conflicting route fails deserialization with an error that names it.
///
/// ```
/// use tollgate_core::RouteTable;
///
/// let limits: RouteTable<u32> = serde_json::from_str(r#"{
///     "GET /pets/{id}": 100,
///     "* /admin/{*rest}": 5
/// }"#)?;
/// assert_eq!(limits.len(), 2);
///
/// let error = serde_json::from_str::<RouteTable<u32>>(r#"{ "GET pets": 1 }"#).unwrap_err();
/// assert!(error.to_string().contains(r#"invalid route "GET pets""#));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone)]
#[must_use]
pub struct RouteTable<T> {
    entries: Vec<Entry<T>>,
    // Few methods per table, so a linear scan beats hashing `Method`.
    by_method: Vec<(Method, matchit::Router<usize>)>,
    any_method: matchit::Router<usize>,
}

#[derive(Clone)]
struct Entry<T> {
    /// Normalised "METHOD /template"; the template is its tail, so it is stored once.
    route: Arc<str>,
    template_start: usize,
    value: T,
}

impl<T> Entry<T> {
    fn method(&self) -> &str {
        &self.route[..self.template_start - 1]
    }

    fn template(&self) -> &str {
        &self.route[self.template_start..]
    }
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            by_method: Vec::new(),
            any_method: matchit::Router::new(),
        }
    }
}

impl<T> RouteTable<T> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a route: `"METHOD /path/template"`, `"* /path/template"` or `"/path/template"`
    /// (the last two match any method).
    ///
    /// Refuses a method that is not an HTTP token, a template that does not start with `/`
    /// or is not valid [`matchit`] syntax, and a template that conflicts with one already
    /// registered for the same method (such as `/pets/{id}` and `/pets/{name}`). A refused
    /// route leaves the table unchanged.
    pub fn insert(&mut self, route: &str, value: T) -> Result<(), RouteTableError> {
        let parsed = ParsedRoute::parse(route)?;
        self.insert_parsed(parsed, value)
    }

    /// Builder form of [`insert`](Self::insert).
    pub fn with(mut self, route: &str, value: T) -> Result<Self, RouteTableError> {
        self.insert(route, value)?;
        Ok(self)
    }

    /// The route matching a request, if any.
    ///
    /// Routes for `method` are tried first, then the `GET` routes when `method` is `HEAD`,
    /// then the any-method routes. `path` is the request's raw path, without the query
    /// string; it is matched exactly (`/pets` and `/pets/` differ).
    pub fn at<'t, 'p>(&'t self, method: &Method, path: &'p str) -> Option<RouteMatch<'t, 'p, T>> {
        if self.entries.is_empty() {
            // A layer without per-route settings pays nothing for the table.
            return None;
        }
        let lookup = |router: &'t matchit::Router<usize>| router.at(path).ok();
        let found = self
            .router_for(method)
            .and_then(lookup)
            .or_else(|| {
                if method == Method::HEAD {
                    self.router_for(&Method::GET).and_then(lookup)
                } else {
                    None
                }
            })
            .or_else(|| lookup(&self.any_method))?;
        Some(RouteMatch {
            entry: self.entries.get(*found.value)?,
            params: found.params,
        })
    }

    /// The number of routes.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table has no routes.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The routes, normalised (`"GET /pets/{id}"`, `"* /admin/{*rest}"`), with their values,
    /// in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.entries
            .iter()
            .map(|entry| (&*entry.route, &entry.value))
    }

    fn router_for(&self, method: &Method) -> Option<&matchit::Router<usize>> {
        self.by_method
            .iter()
            .find(|(registered, _)| registered == method)
            .map(|(_, router)| router)
    }

    fn insert_parsed(&mut self, parsed: ParsedRoute<'_>, value: T) -> Result<(), RouteTableError> {
        let method_name = parsed.method.as_ref().map_or("*", Method::as_str);
        let route: Arc<str> = format!("{method_name} {}", parsed.template).into();
        let template_start = method_name.len() + 1;
        let index = self.entries.len();

        let inserted = match &parsed.method {
            None => self.any_method.insert(parsed.template, index),
            Some(method) => match self.by_method.iter_mut().find(|(m, _)| m == method) {
                Some((_, router)) => router.insert(parsed.template, index),
                None => {
                    let mut router = matchit::Router::new();
                    let inserted = router.insert(parsed.template, index);
                    if inserted.is_ok() {
                        self.by_method.push((method.clone(), router));
                    }
                    inserted
                }
            },
        };

        match inserted {
            Ok(()) => {
                self.entries.push(Entry {
                    route,
                    template_start,
                    value,
                });
                Ok(())
            }
            Err(matchit::InsertError::Conflict { with }) => {
                let method_name = &route[..template_start - 1];
                // matchit names only the template, unescaped; find the route the user wrote.
                let existing = self
                    .entries
                    .iter()
                    .find(|entry| {
                        entry.method() == method_name
                            && entry.template().replace("{{", "{").replace("}}", "}") == with
                    })
                    .map_or_else(|| format!("{method_name} {with}"), |e| e.route.to_string());
                Err(RouteTableError::Conflict {
                    route: parsed.text.to_owned(),
                    existing,
                })
            }
            Err(error) => Err(parsed.invalid_template(template_problem(&error))),
        }
    }
}

fn template_problem(error: &matchit::InsertError) -> String {
    match error {
        matchit::InsertError::InvalidParam => {
            "expected parameters written as {name} or {*name} ({{ and }} for literal braces)"
                .to_owned()
        }
        matchit::InsertError::InvalidParamSegment => {
            "expected at most one parameter per path segment".to_owned()
        }
        matchit::InsertError::InvalidCatchAll => {
            "expected the catch-all parameter {*name} at the end of the template".to_owned()
        }
        other => other.to_string(),
    }
}

impl<T: fmt::Debug> fmt::Debug for RouteTable<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// A route text split into its method (`None` for any) and its path template.
struct ParsedRoute<'a> {
    text: &'a str,
    method: Option<Method>,
    template: &'a str,
}

impl<'a> ParsedRoute<'a> {
    fn parse(text: &'a str) -> Result<Self, RouteTableError> {
        let trimmed = text.trim();
        // Request paths cannot contain whitespace, so the last run of it ends the method.
        let (method, template) = match trimmed.rsplit_once(char::is_whitespace) {
            Some((method, template)) => (Some(method.trim_end()), template),
            None => (None, trimmed),
        };
        let mut parsed = Self {
            text,
            method: None,
            template,
        };

        if let Some(method) = method {
            if let Some(slash) = method.find('/') {
                parsed.template = &trimmed[slash..];
                return Err(parsed.invalid_template("expected a path template without whitespace"));
            }
            if method != "*" {
                parsed.method = Some(Method::from_bytes(method.as_bytes()).map_err(|_| {
                    RouteTableError::InvalidMethod {
                        route: text.to_owned(),
                        method: method.to_owned(),
                    }
                })?);
            }
        }
        if !template.starts_with('/') {
            return Err(parsed.invalid_template("expected a path template starting with '/'"));
        }
        if template.contains(['?', '#']) {
            return Err(parsed
                .invalid_template("expected a path template without a query string or fragment"));
        }
        Ok(parsed)
    }

    fn invalid_template(&self, expected: impl fmt::Display) -> RouteTableError {
        RouteTableError::InvalidTemplate {
            route: self.text.to_owned(),
            reason: format!("{expected}, found {:?}", self.template),
        }
    }
}

/// The route a request matched in a [`RouteTable`], with its value and path parameters.
pub struct RouteMatch<'t, 'p, T> {
    entry: &'t Entry<T>,
    params: matchit::Params<'t, 'p>,
}

impl<'t, 'p, T> RouteMatch<'t, 'p, T> {
    /// The value registered for the route.
    pub fn value(&self) -> &'t T {
        &self.entry.value
    }

    /// The normalised route as inserted: `"GET /pets/{id}"` or `"* /admin/{*rest}"`.
    pub fn route(&self) -> &'t str {
        &self.entry.route
    }

    /// The same text as [`route`](Self::route), shared with the table: cloning it is a
    /// reference-count bump, which makes it a cheap limiter or cache key.
    pub fn route_shared(&self) -> &'t Arc<str> {
        &self.entry.route
    }

    /// The path template: `"/pets/{id}"`.
    pub fn template(&self) -> &'t str {
        self.entry.template()
    }

    /// One path parameter, as it appears in the path (not percent-decoded).
    pub fn param(&self, name: &str) -> Option<&'p str> {
        self.params.get(name)
    }

    /// All path parameters as `(name, value)`, in template order; values are not
    /// percent-decoded.
    pub fn params(&self) -> impl Iterator<Item = (&'t str, &'p str)> + '_ {
        self.params.iter()
    }
}

impl<T: fmt::Debug> fmt::Debug for RouteMatch<'_, '_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteMatch")
            .field("route", &self.route())
            .field("params", &self.params)
            .field("value", self.value())
            .finish()
    }
}

/// Why a route was refused by [`RouteTable::insert`] or while deserializing a table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RouteTableError {
    /// The text before the path template is not an HTTP method token or `*`.
    #[error(
        "invalid route {route:?}: expected an HTTP method such as GET, or * for any method, \
         before the path template, found {method:?}"
    )]
    InvalidMethod {
        /// The route text as given.
        route: String,
        /// The text found where the method should be.
        method: String,
    },
    /// The path template is missing, does not start with `/`, or is not valid template syntax.
    #[error("invalid route {route:?}: {reason}")]
    InvalidTemplate {
        /// The route text as given.
        route: String,
        /// What was expected and what was found.
        reason: String,
    },
    /// The template overlaps one already registered for the same method, so a path could
    /// match both.
    #[error("route {route:?} conflicts with {existing:?}")]
    Conflict {
        /// The route text as given.
        route: String,
        /// The normalised route already in the table.
        existing: String,
    },
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for RouteTable<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RoutesVisitor<T>(PhantomData<fn() -> T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for RoutesVisitor<T> {
            type Value = RouteTable<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map from \"METHOD /path/template\" to route settings")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut table = RouteTable::new();
                while let Some(route) = map.next_key::<String>()? {
                    // Parse before reading the value so the error points at the key.
                    let parsed = ParsedRoute::parse(&route).map_err(de::Error::custom)?;
                    let value = map.next_value()?;
                    table
                        .insert_parsed(parsed, value)
                        .map_err(de::Error::custom)?;
                }
                Ok(table)
            }
        }

        deserializer.deserialize_map(RoutesVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: &[(&str, u32)]) -> RouteTable<u32> {
        let mut table = RouteTable::new();
        for (route, value) in routes {
            table.insert(route, *value).expect("valid route");
        }
        table
    }

    fn value_at(table: &RouteTable<u32>, method: Method, path: &str) -> Option<u32> {
        table.at(&method, path).map(|m| *m.value())
    }

    #[test]
    fn matches_method_and_template_with_params() {
        let routes = table(&[("GET /owners/{owner}/pets/{id}", 7)]);

        let matched = routes
            .at(&Method::GET, "/owners/ana/pets/42")
            .expect("route matches");

        assert_eq!(*matched.value(), 7);
        assert_eq!(matched.route(), "GET /owners/{owner}/pets/{id}");
        assert_eq!(matched.template(), "/owners/{owner}/pets/{id}");
        assert_eq!(matched.param("owner"), Some("ana"));
        assert_eq!(matched.param("id"), Some("42"));
        assert_eq!(matched.param("name"), None);
        assert_eq!(
            matched.params().collect::<Vec<_>>(),
            [("owner", "ana"), ("id", "42")]
        );
        let again = routes
            .at(&Method::GET, "/owners/bo/pets/1")
            .expect("route matches");
        assert!(Arc::ptr_eq(matched.route_shared(), again.route_shared()));
        assert_eq!(value_at(&routes, Method::POST, "/owners/ana/pets/42"), None);
    }

    #[test]
    fn any_method_route_matches_all_methods() {
        let routes = table(&[("* /health", 1), ("/status", 2)]);
        let purge = Method::from_bytes(b"PURGE").expect("valid method");

        for method in [Method::GET, Method::POST, Method::DELETE, purge] {
            assert_eq!(value_at(&routes, method.clone(), "/health"), Some(1));
            assert_eq!(value_at(&routes, method, "/status"), Some(2));
        }
        let matched = routes.at(&Method::PUT, "/status").expect("route matches");
        assert_eq!(matched.route(), "* /status");
    }

    #[test]
    fn method_specific_route_wins_over_any() {
        let routes = table(&[
            ("* /pets/{id}", 1),
            ("* /pets/7", 2),
            ("DELETE /pets/{id}", 3),
        ]);

        assert_eq!(value_at(&routes, Method::DELETE, "/pets/7"), Some(3));
        assert_eq!(value_at(&routes, Method::GET, "/pets/7"), Some(2));
        assert_eq!(value_at(&routes, Method::GET, "/pets/8"), Some(1));
    }

    #[test]
    fn head_falls_back_to_get() {
        let mut routes = table(&[("* /pets", 1), ("GET /pets", 2), ("GET /pets/{id}", 3)]);

        assert_eq!(value_at(&routes, Method::HEAD, "/pets"), Some(2));
        assert_eq!(value_at(&routes, Method::HEAD, "/pets/7"), Some(3));

        routes.insert("HEAD /pets", 4).expect("valid route");
        assert_eq!(value_at(&routes, Method::HEAD, "/pets"), Some(4));
        assert_eq!(value_at(&routes, Method::OPTIONS, "/pets"), Some(1));
    }

    #[test]
    fn catch_all_captures_rest() {
        let routes = table(&[("GET /static/{*path}", 1)]);

        let matched = routes
            .at(&Method::GET, "/static/css/site.css")
            .expect("route matches");
        assert_eq!(matched.param("path"), Some("css/site.css"));
        assert_eq!(matched.template(), "/static/{*path}");
        // A catch-all needs at least one character.
        assert_eq!(value_at(&routes, Method::GET, "/static/"), None);
    }

    #[test]
    fn unknown_path_returns_none() {
        let routes = table(&[("GET /pets", 1)]);

        assert_eq!(value_at(&routes, Method::GET, "/owners"), None);
        assert_eq!(value_at(&routes, Method::GET, "/pets/"), None);
        assert_eq!(value_at(&routes, Method::GET, "/Pets"), None);
        assert_eq!(value_at(&RouteTable::new(), Method::GET, "/pets"), None);
    }

    #[test]
    fn conflicting_templates_are_refused_with_both_routes_named() {
        let mut routes = table(&[("GET /pets/{id}", 1)]);

        let error = routes.insert("GET /pets/{name}", 2).unwrap_err();

        assert_eq!(
            error,
            RouteTableError::Conflict {
                route: "GET /pets/{name}".to_owned(),
                existing: "GET /pets/{id}".to_owned(),
            }
        );
        assert_eq!(
            error.to_string(),
            r#"route "GET /pets/{name}" conflicts with "GET /pets/{id}""#
        );
        assert_eq!(routes.len(), 1);
        assert_eq!(
            routes
                .at(&Method::GET, "/pets/7")
                .and_then(|m| m.param("id")),
            Some("7")
        );
        assert!(routes.insert("POST /pets/{name}", 3).is_ok());
    }

    #[test]
    fn path_without_leading_slash_is_refused() {
        let error = RouteTable::new().with("GET pets", 1).unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"invalid route "GET pets": expected a path template starting with '/', found "pets""#
        );

        let error = RouteTable::new().with("pets", 1).unwrap_err();
        assert!(matches!(error, RouteTableError::InvalidTemplate { route, .. } if route == "pets"));
    }

    #[test]
    fn invalid_method_is_refused() {
        let error = RouteTable::new().with("GE T /x", 1).unwrap_err();

        assert_eq!(
            error,
            RouteTableError::InvalidMethod {
                route: "GE T /x".to_owned(),
                method: "GE T".to_owned(),
            }
        );
        assert_eq!(
            error.to_string(),
            r#"invalid route "GE T /x": expected an HTTP method such as GET, or * for any method, before the path template, found "GE T""#
        );
        let custom = RouteTable::new()
            .with("PURGE /cache", 1)
            .expect("custom method");
        assert_eq!(custom.iter().next(), Some(("PURGE /cache", &1)));
    }

    #[test]
    fn invalid_template_syntax_is_refused_with_reason() {
        let error = RouteTable::new().with("GET /{*rest}/x", 1).unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"invalid route "GET /{*rest}/x": expected the catch-all parameter {*name} at the end of the template, found "/{*rest}/x""#
        );

        let error = RouteTable::new().with("GET /pets?id={id}", 1).unwrap_err();
        assert!(error.to_string().contains("without a query string"));
    }

    #[test]
    fn iter_yields_normalised_routes_in_insertion_order() {
        let routes = table(&[("  POST   /pets ", 1), ("/pets", 2), ("GET /pets", 3)]);

        assert_eq!(
            routes.iter().collect::<Vec<_>>(),
            [("POST /pets", &1), ("* /pets", &2), ("GET /pets", &3)]
        );
        assert_eq!(
            format!("{routes:?}"),
            r#"{"POST /pets": 1, "* /pets": 2, "GET /pets": 3}"#
        );
    }

    #[test]
    fn deserializes_from_map_and_names_bad_route() {
        let routes: RouteTable<u32> =
            serde_json::from_str(r#"{ "GET /pets/{id}": 5, "/{*rest}": 1 }"#).expect("valid table");

        assert_eq!(
            routes.iter().collect::<Vec<_>>(),
            [("GET /pets/{id}", &5), ("* /{*rest}", &1)]
        );
        assert_eq!(value_at(&routes, Method::GET, "/pets/9"), Some(5));

        let error = serde_json::from_str::<RouteTable<u32>>(r#"{ "GET /a": 1, "GET pets": 2 }"#)
            .unwrap_err();
        assert!(
            error.to_string().starts_with(
                r#"invalid route "GET pets": expected a path template starting with '/'"#
            ),
            "{error}"
        );

        let error =
            serde_json::from_str::<RouteTable<u32>>(r#"{ "GET /p/{id}": 1, "GET /p/{n}": 2 }"#)
                .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with(r#"route "GET /p/{n}" conflicts with "GET /p/{id}""#),
            "{error}"
        );
    }
}
