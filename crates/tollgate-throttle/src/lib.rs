//! Throttling for tollgate: GCRA rate limits with tiers, bounded keyed state, shadow mode and
//! the IETF `RateLimit` headers.
//!
//! A [`ThrottleLayer`] holds one or more [`Rule`]s. A rule is a [`Rate`] (`10/s`, `100/min`,
//! `0.5/s` — each means what it says), a burst, a [`KeyExtractor`](tollgate_core::KeyExtractor)
//! that says what it counts by, and optionally the routes it covers. A request must pass every
//! rule that applies to it; rules are checked narrowest first (per client, then per route, then
//! global) and checking stops at the first refusal, so a request refused by its own client's
//! rule takes nothing from the budgets that everyone shares. The converse is deliberate: a
//! request refused by a shared rule has already spent its client's own allowance, as the
//! client did send it. Within one scope, rules are checked in the order they were added. Refusals are `429` problem+json documents with `Retry-After`,
//! `RateLimit-Policy` and `RateLimit`.
//!
//! The decision is governor's GCRA. Keyed state is bounded: each rule remembers at most
//! [`ThrottleBuilder::capacity`] keys and drops idle ones first, so a flood of spoofed client
//! addresses cannot grow memory. Every clone of the layer and service shares the same state.
//!
//! # Example
//!
//! ```
//! use std::net::SocketAddr;
//! use axum::{routing::get, Router};
//! use tollgate_core::key::ClientIp;
//! use tollgate_core::TrustedProxies;
//! use tollgate_throttle::{Rate, Rule, ThrottleLayer};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let throttle = ThrottleLayer::builder()
//!     .rule(Rule::new("per-client", Rate::per_second(5), ClientIp::new(TrustedProxies::none())).burst(5))
//!     .build()?;
//!
//! let app = Router::new().route("/hello", get(|| async { "hello" })).layer(throttle);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! // Client IPs come from the connection, so serve with connect info.
//! # let _ = async {
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! # Ok::<_, std::io::Error>(()) };
//! # Ok(())
//! # }
//! ```
//!
//! # Knobs
//!
//! - [`Rule::burst`], [`Rule::routes`], [`Rule::shadow`] (count would-be refusals, refuse
//!   nothing), [`Rule::on_missing_key`], [`Rule::capacity`].
//! - [`ThrottleBuilder::capacity`], [`ThrottleBuilder::clock`],
//!   [`ThrottleBuilder::allowed_fields`], [`ThrottleBuilder::on_store_error`].
//! - [`ThrottleConfig`]: the same from a configuration file.
//! - [`ThrottleStore`]: where state lives; [`MemoryStore`] by default.
//!
//! # Observability
//!
//! Each refusal is a `tracing` event at INFO (shadow refusals too, marked), each allowed
//! decision one at TRACE. The `metrics` counters `tollgate_throttle_allowed_total` and
//! `tollgate_throttle_limited_total` carry the `rule` label (and `shadow` on the latter).
#![warn(missing_docs)]
#![deny(unsafe_code, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod bounded;
mod config;
mod future;
mod headers;
mod layer;
mod rate;
mod rule;
mod service;
mod store;

pub use config::{KeyConfig, RuleConfig, ThrottleConfig};
pub use future::ResponseFuture;
pub use layer::{
    index_rules, AllowedFields, StoreFailure, ThrottleBuilder, ThrottleError, ThrottleLayer,
    DEFAULT_CAPACITY, MAX_RULES,
};
pub use rate::{Rate, RateError};
pub use rule::{MissingKey, Rule};
pub use service::Throttle;
pub use store::{Check, CheckAll, MemoryStore, NeverPending, Outcome, StoreError, ThrottleStore};
