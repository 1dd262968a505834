//! Fan-out aggregation and HTTP upstream integration for tollgate.
//!
//! One client call, many backend services: an [`Aggregate`] endpoint calls its
//! [`Backend`]s concurrently, runs each JSON response through a pipeline (target, allow / deny,
//! mapping, group, collection) and merges them into one object, so a mobile or web client makes
//! one round trip instead of five. KrakenD's response pipeline is the model; unlike it, the
//! merge is deterministic (declaration order, never arrival order), backends can be required,
//! and real statuses reach the client.
//!
//! Beside it:
//! - [`HttpUpstream`]: a streaming reverse proxy to one base URL (Amazon API Gateway's HTTP
//!   integration), with path rewriting, hop-by-hop stripping, forwarding headers, and
//!   502 / 504 as problem+json.
//! - [`Mock`]: an answer from configuration alone (API Gateway's Mock integration).
//! - [`HttpClient`]: the pooled HTTP/1.1 and h2c client both send through.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::Router;
//! use tollgate_aggregate::{Aggregate, Backend, HttpUpstream};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dashboard = Aggregate::builder()
//!     .route("/api/users/{id}/dashboard")
//!     .backend(Backend::http("profile", "http://127.0.0.1:8081/users/{id}").target("data"))
//!     .backend(
//!         Backend::http("orders", "http://127.0.0.1:8082/orders?user={id}")
//!             .collection("orders")
//!             .optional()
//!             .timeout(Duration::from_millis(300)),
//!     )
//!     .errors_field("errors")
//!     .build()?;
//! // /legacy/orders/7 → http://127.0.0.1:8090/orders/7 (the nest strips /legacy).
//! let legacy = HttpUpstream::builder("http://127.0.0.1:8090").build()?;
//!
//! let app: Router = Router::new()
//!     .route_service("/api/users/{id}/dashboard", dashboard)
//!     .nest_service("/legacy", legacy);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]
#![deny(unsafe_code, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod aggregate;
mod backend;
mod body;
mod claims;
mod client;
mod config;
mod forwarded;
mod merge;
mod mock;
mod pipeline;
mod template;
mod upstream;

pub use aggregate::{
    Aggregate, AggregateBuilder, AggregateError, AggregateFuture, TRACE_HEADERS,
    X_TOLLGATE_COMPLETED,
};
pub use backend::{Backend, DEFAULT_MAX_BODY};
pub use body::{Download, TotalTimeout};
pub use client::{BoxError, HttpClient, HttpClientBuilder};
pub use config::{
    AggregateConfig, BackendConfig, ClientConfig, ConfigError, HedgeConfig, MockConfig,
    PrefixConfig, RewriteConfig, UpstreamConfig,
};
pub use merge::{Collision, Merge, MergeConflict};
pub use mock::Mock;
pub use pipeline::PathError;
pub use upstream::{
    HttpUpstream, HttpUpstreamBuilder, UpstreamError, UpstreamFuture, UpstreamResponseBody,
};
