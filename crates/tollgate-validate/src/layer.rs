//! The layer, its builder and what it shares with its services.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use http::StatusCode;
use tollgate_core::{InnerBody, ProblemType, Rejection, RouteTable, RouteTableError, WrapBody};
use tower::Layer;

use crate::service::Validate;
use crate::Validation;

/// A layer that could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ValidateError {
    /// A route whose text is not `"METHOD /path/template"`, or that conflicts with (or
    /// repeats) one given before, so a request could match both.
    #[error(transparent)]
    Route(#[from] RouteTableError),
    /// A required header that is not a valid header name.
    #[error("route {route:?}: {name:?} is not a valid header name")]
    InvalidHeaderName {
        /// The route as given.
        route: String,
        /// The name as given.
        name: String,
    },
    /// A query parameter that cannot be checked: bounds on a non-integer, a minimum above
    /// the maximum, an empty enum.
    #[error("route {route:?}: query parameter {name:?}: {reason}")]
    InvalidQueryParam {
        /// The route as given.
        route: String,
        /// The parameter.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A body schema that is not a valid JSON Schema, or refers to one outside itself.
    #[error("route {route:?}: invalid JSON Schema for the body: {reason}")]
    InvalidSchema {
        /// The route as given.
        route: String,
        /// The schema compiler's error.
        reason: String,
    },
}

/// One route's checks, compiled.
pub(crate) struct Route {
    /// The route as given, for the log.
    pub(crate) name: Box<str>,
    pub(crate) validation: Validation,
    pub(crate) schema: Option<jsonschema::Validator>,
    pub(crate) limit: Option<u64>,
}

/// What a refused request is counted as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Refused,
    TooLarge,
    UnsupportedMediaType,
}

impl Outcome {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Outcome::Refused => "refused",
            Outcome::TooLarge => "too_large",
            Outcome::UnsupportedMediaType => "unsupported_media_type",
        }
    }
}

pub(crate) struct Shared {
    pub(crate) routes: RouteTable<Arc<Route>>,
    pub(crate) unsupported: Rejection,
    passed: metrics::Counter,
    refused: metrics::Counter,
    too_large: metrics::Counter,
    unsupported_media_type: metrics::Counter,
}

impl Shared {
    pub(crate) fn count_passed(&self) {
        self.passed.increment(1);
    }

    pub(crate) fn count(&self, outcome: Outcome) {
        match outcome {
            Outcome::Refused => &self.refused,
            Outcome::TooLarge => &self.too_large,
            Outcome::UnsupportedMediaType => &self.unsupported_media_type,
        }
        .increment(1);
    }
}

/// Refuses requests that do not meet their route's [`Validation`] with a 400 problem+json
/// listing every violation, before the handler runs: Amazon API Gateway's request validator.
///
/// See the [crate documentation](crate) for what is checked, in which order, and an example.
///
/// # Which route checks a request
///
/// The layer's route table matches the method first, then the path (see [`RouteTable`]):
/// for a `POST /orders/bulk`, `"POST /orders/{id}"` wins over `"* /orders/bulk"`, which is
/// consulted only when no `POST` route matches. axum's router matches the path first and sends
/// that request to the `/orders/bulk` handler, which would then be checked as
/// `POST /orders/{id}`. So in code, give the layer every route its checks should tell apart
/// (here `"POST /orders/bulk"` too, with an empty [`Validation`] if it needs nothing). A
/// configuration file puts every route in the table, so there the checks always follow the
/// route that serves the request.
#[must_use]
pub struct ValidateLayer<M = WrapBody> {
    shared: Arc<Shared>,
    mode: PhantomData<fn() -> M>,
}

impl<M> Clone for ValidateLayer<M> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            mode: PhantomData,
        }
    }
}

impl<M> fmt::Debug for ValidateLayer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidateLayer")
            .field(
                "routes",
                &self
                    .shared
                    .routes
                    .iter()
                    .map(|(r, _)| r)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl ValidateLayer {
    /// No route yet: every request passes until routes are given.
    pub fn builder() -> ValidateBuilder {
        ValidateBuilder::default()
    }
}

impl<M> ValidateLayer<M> {
    /// Keeps the inner service's body type, building refusals in it (axum's `Body`,
    /// `Full<Bytes>`): responses pass through untouched.
    pub fn keep_inner_body(self) -> ValidateLayer<InnerBody> {
        ValidateLayer {
            shared: self.shared,
            mode: PhantomData,
        }
    }

    /// The routes and what each requires, in the order given; routes read
    /// `"METHOD /path/template"`, with `*` for any method (`"/health"` given reads
    /// `"* /health"`).
    pub fn routes(&self) -> impl Iterator<Item = (&str, &Validation)> {
        self.shared
            .routes
            .iter()
            .map(|(route, compiled)| (route, &compiled.validation))
    }
}

impl<S, M> Layer<S> for ValidateLayer<M> {
    type Service = Validate<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        Validate::new(inner, self.shared.clone())
    }
}

/// Builds a [`ValidateLayer`]; routes and schemas are read when it is built.
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct ValidateBuilder {
    routes: Vec<(String, Validation)>,
}

impl ValidateBuilder {
    /// Checks requests to `route` (`"POST /orders"`, `"PUT /orders/{id}"`, or `"* /path"` and
    /// `"/path"` for any method; see [`RouteTable`] for the syntax and which route wins) as
    /// `validation` says.
    pub fn route(mut self, route: &str, validation: Validation) -> Self {
        self.routes.push((route.to_owned(), validation));
        self
    }

    /// The layer.
    ///
    /// # Errors
    ///
    /// The first route that is not valid route text or conflicts with an earlier one, names
    /// a header that is not a header name, has a query parameter that cannot be checked, or a
    /// body schema that does not compile (including one whose `$ref` points outside it:
    /// nothing is fetched). Each error names the route.
    pub fn build(self) -> Result<ValidateLayer, ValidateError> {
        let mut routes = RouteTable::new();
        for (text, validation) in self.routes {
            let route = compile(&text, validation)?;
            routes.insert(&text, Arc::new(route))?;
        }
        let counter = |outcome: &'static str| metrics::counter!("tollgate_validation_total", "outcome" => outcome);
        Ok(ValidateLayer {
            shared: Arc::new(Shared {
                routes,
                unsupported: Rejection::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    ProblemType::UnsupportedMediaType,
                )
                .with_detail(
                    "expected a JSON body: Content-Type application/json or a +json media type",
                )
                .prerendered(),
                passed: counter("passed"),
                refused: counter(Outcome::Refused.label()),
                too_large: counter(Outcome::TooLarge.label()),
                unsupported_media_type: counter(Outcome::UnsupportedMediaType.label()),
            }),
            mode: PhantomData,
        })
    }
}

fn compile(text: &str, validation: Validation) -> Result<Route, ValidateError> {
    if let Some(name) = validation.invalid_headers().first() {
        return Err(ValidateError::InvalidHeaderName {
            route: text.to_owned(),
            name: name.clone(),
        });
    }
    for (name, param) in validation.query_params() {
        if let Some(reason) = param.problem() {
            return Err(ValidateError::InvalidQueryParam {
                route: text.to_owned(),
                name: name.to_owned(),
                reason,
            });
        }
    }
    let schema = validation
        .body_schema()
        .map(|schema| {
            jsonschema::options()
                .should_validate_formats(true)
                .with_retriever(NoFetching)
                .build(schema)
                .map_err(|error| ValidateError::InvalidSchema {
                    route: text.to_owned(),
                    reason: error.to_string(),
                })
        })
        .transpose()?;
    Ok(Route {
        limit: validation.body_limit(),
        name: text.trim().into(),
        validation,
        schema,
    })
}

/// Refuses every schema a `$ref` names outside the schema itself: a gateway does not fetch
/// code from the network or the disk while it starts.
struct NoFetching;

#[derive(Debug, thiserror::Error)]
#[error("{uri} is outside the schema, and schemas are not fetched: put it under $defs")]
struct NotFetched {
    uri: String,
}

impl jsonschema::Retrieve for NoFetching {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<serde_json::Value, Box<dyn std::error::Error + Send + Sync>> {
        Err(Box::new(NotFetched {
            uri: uri.as_str().to_owned(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::QueryParam;
    use serde_json::json;

    fn build(route: &str, validation: Validation) -> Result<ValidateLayer, ValidateError> {
        ValidateLayer::builder().route(route, validation).build()
    }

    #[test]
    fn bad_routes_and_duplicates_are_refused() {
        let error = build("POST orders", Validation::new()).unwrap_err();
        assert!(matches!(error, ValidateError::Route(_)), "{error}");
        assert!(error.to_string().contains("\"POST orders\""), "{error}");

        let error = ValidateLayer::builder()
            .route("POST /orders", Validation::new())
            .route("POST /orders", Validation::new())
            .build()
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"route "POST /orders" conflicts with "POST /orders""#
        );
    }

    #[test]
    fn bad_header_names_and_query_params_name_the_route() {
        let error = build("GET /a", Validation::new().header("x client")).unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"route "GET /a": "x client" is not a valid header name"#
        );
        let error = build(
            "GET /a",
            Validation::new().query("q", QueryParam::string().max(3)),
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"route "GET /a": query parameter "q": min and max apply only to integer parameters"#
        );
    }

    #[test]
    fn invalid_schemas_are_refused_with_the_compiler_error() {
        let error = build("POST /a", Validation::new().body(json!({"type": "thing"}))).unwrap_err();
        let ValidateError::InvalidSchema { route, reason } = &error else {
            panic!("{error:?}");
        };
        assert_eq!(route, "POST /a");
        assert!(reason.contains("thing"), "{reason}");
        assert!(error
            .to_string()
            .starts_with(r#"route "POST /a": invalid JSON Schema for the body: "#));
    }

    #[test]
    fn remote_references_are_not_fetched() {
        let schema = json!({"$ref": "https://schemas.example/order.json"});
        let error = build("POST /a", Validation::new().body(schema)).unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("https://schemas.example/order.json")
                && text.contains("schemas are not fetched"),
            "{text}"
        );
        let local = json!({
            "$defs": {"qty": {"type": "integer"}},
            "properties": {"qty": {"$ref": "#/$defs/qty"}}
        });
        assert!(build("POST /a", Validation::new().body(local)).is_ok());
    }

    #[test]
    fn routes_read_back_normalised_in_order() {
        let layer = ValidateLayer::builder()
            .route("POST /orders", Validation::new().header("x-a"))
            .route("/health", Validation::new())
            .build()
            .unwrap();
        let routes: Vec<_> = layer.routes().map(|(route, _)| route).collect();
        assert_eq!(routes, ["POST /orders", "* /health"]);
        assert_eq!(layer.routes().next().unwrap().1.headers().count(), 1);
    }
}
