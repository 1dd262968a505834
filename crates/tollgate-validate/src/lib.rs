//! Request validation for [tollgate](https://docs.rs/tollgate): Amazon API Gateway's request
//! validator as a tower layer. Requests that lack a required header or query parameter, carry
//! a parameter of the wrong kind, or a JSON body its schema refuses, get a 400 problem+json
//! listing every violation, and the handler never runs.
//!
//! # Example
//!
//! ```
//! use axum::{routing::post, Json, Router};
//! use serde_json::{json, Value};
//! use tollgate_validate::{QueryParam, Validation, ValidateLayer};
//!
//! let orders = ValidateLayer::builder()
//!     .route(
//!         "POST /orders",
//!         Validation::new()
//!             .header("idempotency-key")
//!             .query("notify", QueryParam::boolean())
//!             .body(json!({
//!                 "type": "object",
//!                 "required": ["items"],
//!                 "properties": {
//!                     "items": {
//!                         "type": "array",
//!                         "minItems": 1,
//!                         "items": {
//!                             "type": "object",
//!                             "required": ["sku", "quantity"],
//!                             "properties": {
//!                                 "sku": {"type": "string"},
//!                                 "quantity": {"type": "integer", "minimum": 1}
//!                             }
//!                         }
//!                     }
//!                 }
//!             })),
//!     )
//!     .build()?;
//!
//! let app: Router = Router::new()
//!     .route("/orders", post(|Json(order): Json<Value>| async move { Json(order) }))
//!     .layer(orders.keep_inner_body());
//! # Ok::<(), tollgate_validate::ValidateError>(())
//! ```
//!
//! A request of `{"items": [{"sku": 7}]}` without the header is refused with:
//!
//! ```json
//! {
//!   "type": "urn:tollgate:problem:bad-request", "title": "Bad request", "status": 400,
//!   "detail": "3 violations",
//!   "errors": [
//!     {"in": "header", "name": "idempotency-key", "pointer": "/idempotency-key",
//!      "detail": "the header is required"},
//!     {"in": "body", "pointer": "/items/0", "keyword": "required",
//!      "detail": "\"quantity\" is a required property"},
//!     {"in": "body", "pointer": "/items/0/sku", "keyword": "type",
//!      "detail": "the value is not of type \"string\""}
//!   ]
//! }
//! ```
//!
//! # What is checked
//!
//! Only requests whose method and path match a route (see
//! [`RouteTable`](tollgate_core::RouteTable)); the others pass untouched, at the cost of the
//! lookup. For a matched route, in this order:
//!
//! 1. The head: required headers present and not empty (a value of whitespace only is
//!    empty, as HTTP strips whitespace around a value); query parameters percent-decoded,
//!    required ones present (an empty value counts as absent), every other occurrence of a
//!    checked one, whitespace included, of its kind.
//! 2. With a body limit ([`Validation::max_body_bytes`], or the default that comes with a
//!    body schema): a `Content-Length` (or body size hint) over it is refused with 413 at once,
//!    before a byte is read.
//! 3. With a body schema: a `Content-Type` other than `application/json` or a `+json` type
//!    is refused with 415, unread.
//! 4. The body is read up to the limit; the first byte past it ends reading with a 413, and
//!    nothing more is buffered. With a schema the body is read even when the head already
//!    failed, so that one 400 lists the head's and the body's violations together. Without
//!    one, a head violation is refused at once, unread.
//! 5. The body is parsed as JSON (invalid JSON is one violation at pointer `""`, with
//!    serde_json's line and column; nesting deeper than 128 is invalid) and validated
//!    against the schema, collecting every error at its instance path.
//!
//! The 400's `errors` list holds at most 20 violations; `detail` counts them all. Each is
//! `{"in": "header" | "query" | "body", "name", "pointer", "detail", "keyword"}`: `name` for
//! headers and parameters, `pointer` a JSON Pointer (RFC 6901: `/<name>` for those, the
//! instance path in the body), `keyword` the failed JSON Schema keyword. Details quote at
//! most a short prefix of what the client sent.
//!
//! A route without a body schema or limit never touches the body: it streams to the handler.
//!
//! # Bodies
//!
//! When the layer reads a body it hands the handler a new one of the same type, made from the
//! same bytes (trailers are dropped), so the service under the layer takes the request body
//! type the layer takes and axum's `Json` extractor reads it as usual. That type must be
//! [`FromBytes`]: axum's `Body` (the `axum` feature), `Full<Bytes>`, `BoxBody` or
//! `UnsyncBoxBody`. Under an axum `Router` this is always so. In a plain hyper service, map
//! hyper's `Incoming` first:
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{combinators::BoxBody, BodyExt, Full};
//! use tollgate_validate::{Validation, ValidateLayer};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # async fn handle(request: Request<BoxBody<Bytes, hyper::Error>>)
//! #     -> Result<Response<Full<Bytes>>, std::convert::Infallible> { Ok(Response::new(Full::default())) }
//! let validate = ValidateLayer::builder()
//!     .route("POST /orders", Validation::new().body(serde_json::json!({"type": "object"})))
//!     .build()?;
//! let service = ServiceBuilder::new()
//!     .map_request(|request: Request<hyper::body::Incoming>| request.map(|body| body.boxed()))
//!     .layer(validate)
//!     .service_fn(handle);
//! // `service` serves hyper connections, e.g. through hyper_util's TowerToHyperService.
//! # let _ = service;
//! # Ok::<(), tollgate_validate::ValidateError>(())
//! ```
//!
//! # Knobs
//!
//! - [`Validation`]: per route, required headers, [`QueryParam`]s, a body schema and limit.
//! - [`ValidateLayer::keep_inner_body`]: refusals built in the inner service's body type.
//!
//! Every decision on a matched route is counted in `tollgate_validation_total` with `outcome`
//! `passed`, `refused`, `too_large` or `unsupported_media_type` (the `metrics` facade), and
//! every refusal logged at debug level with the route and the number of violations, never the
//! body.
#![warn(missing_docs)]
#![deny(unsafe_code, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod check;
mod future;
mod layer;
mod service;
mod validation;

pub use body::FromBytes;
pub use future::ResponseFuture;
pub use layer::{ValidateBuilder, ValidateError, ValidateLayer};
pub use service::Validate;
pub use validation::{QueryKind, QueryParam, Validation, DEFAULT_MAX_BODY_BYTES};
