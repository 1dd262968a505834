//! tollgate: an embeddable API gateway for Rust.
//!
//! What a hosted API gateway (Amazon API Gateway, Kong, KrakenD) does in front of your service —
//! authorizers, API keys with usage plans, throttling, response caching, stage routing,
//! aggregation — as tower layers you stack onto your own axum `Router` or hyper service. No
//! second process and no extra network hop: a request that passes the stack costs
//! microseconds.
//!
//! Each layer is a Cargo feature and a crate of its own; this crate re-exports them:
//!
//! | feature | module | what it gives |
//! |---|---|---|
//! | `throttle` (default) | [`throttle`] | GCRA rate limits per client, route or globally, bounded state, `RateLimit` headers |
//! | `auth` (default) | [`auth`] | the authorizer layer: route policies with scopes, custom authorizers with a decision cache |
//! | `jwt` (default) | [`auth::jwt`] | the JWT authorizer: JWKS with rotation, OIDC discovery, a verified-token cache |
//! | `usage` (default) | [`usage`] | API keys (hashed, rotated with a grace period) on usage plans: plan throttles, exact quotas, daily usage reports |
//! | `admin` | [`usage::admin`] | an axum router for key administration, to mount behind the application's own auth |
//! | `stage` (default) | [`stage`] | stage and version routing: base paths, hosts, version headers and media types, sticky canaries with runtime control, deprecation and sunset |
//! | `cache` (default) | [`cache`] | the response cache: RFC 9111 rules, per-principal keys, coalesced misses, stale serving, purges by resource, prefix or tag |
//! | `aggregate` (default) | [`aggregate`] | fan-out aggregation with JSON pipelines and deterministic merges, a streaming HTTP upstream proxy, mock integrations |
//! | `observe` (default) | [`observe`] | the gateway's first steps: request ids (tower-http's `SetRequestId` and `PropagateRequestId`), an access log of one `tracing` event per request with what every step decided, and request metrics by method, route, status and decision |
//! | `access` (default) | [`access`] | IP allow and deny lists by CIDR behind trusted proxies; tower-http's CORS, which `Gateway` answers before the throttle, the authorizer and the quota |
//! | `validate` | [`validate`] | request validation (Amazon API Gateway's request validator): required headers, typed query parameters and JSON Schema bodies per route, refused with a 400 listing every violation; a body that is not JSON refused unread (415), and one over the limit (413) without reading past the limit: at once when its `Content-Length` declares it, a chunked body buffered up to the limit |
//! | `redis` | [`redis`] | Redis (or Valkey) stores shared by several gateway instances: throttles (a request's rules in one round trip), exact quotas with daily usage, API keys, a shared cache level with purges published to every instance; failure policies and circuit breakers (needs Rust 1.88) |
//! | `config` | [`config`] | the whole gateway from a YAML, TOML or JSON file: routes and their integrations, every layer's settings and per-route overrides, errors with field paths and lines, cross-references checked at load; served by a handle that reloads it without dropping a request (needs Rust 1.89) |
//! | `openapi` (default) | [`openapi`] | an OpenAPI 3.1 document of the routes, for client SDK generators: security schemes, stages as servers, and the problem+json refusals (401, 403, 429, 400, 413, 415) each layer adds |
//! | `axum` | — | [`Gateway`], every layer as one in a fixed order; axum extractors for [`Principal`] and [`Stage`], axum's `ConnectInfo` and `MatchedPath` as key sources |
//! | `full` | — | everything |
//!
//! # Example
//!
//! ```
//! # #[cfg(feature = "throttle")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use axum::{routing::get, Router};
//! use tollgate::key::ClientIp;
//! use tollgate::throttle::{Rate, Rule, ThrottleLayer};
//! use tollgate::TrustedProxies;
//!
//! let per_client = Rule::new("per-client", Rate::per_second(5), ClientIp::new(TrustedProxies::none()))
//!     .burst(5);
//! let app: Router = Router::new()
//!     .route("/hello", get(|| async { "hello" }))
//!     .layer(ThrottleLayer::builder().rule(per_client).build()?);
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "throttle"))]
//! # fn main() {}
//! ```
//!
//! Serve it with `into_make_service_with_connect_info::<SocketAddr>()` so the layer sees the
//! client's address; `examples/quickstart.rs` is a complete program.
#![warn(missing_docs)]
#![deny(unsafe_code, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use tollgate_core::{
    key, retry_after_seconds, BearerError, Clock, ForwardedHeader, Key, KeyError, KeyExtractor,
    KeyExtractorExt, KeyScope, ManualClock, PeerAddr, Principal, PrincipalBuilder, ProblemType,
    Rejection, RequestHead, ResponseBody, RouteMatch, RouteTable, RouteTableError, SharedClock,
    Stage, SystemClock, TrustedProxies, TrustedProxiesError,
};

#[cfg(feature = "axum")]
mod gateway;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub use gateway::{Gateway, GatewayBuilder, GatewayFuture, GatewayService, GatewayStep};

#[cfg(feature = "config")]
#[cfg_attr(docsrs, doc(cfg(feature = "config")))]
pub mod config;

#[cfg(feature = "openapi")]
#[cfg_attr(docsrs, doc(cfg(feature = "openapi")))]
pub mod openapi;

#[cfg(feature = "observe")]
#[cfg_attr(docsrs, doc(cfg(feature = "observe")))]
pub mod observe;

/// Shared types of every layer (`tollgate-core`).
pub use tollgate_core as core;

/// Throttling: GCRA rules with tiers, bounded keyed state and `RateLimit` headers.
#[cfg(feature = "throttle")]
#[cfg_attr(docsrs, doc(cfg(feature = "throttle")))]
pub use tollgate_throttle as throttle;

/// Authorizers: JWT (with the `jwt` feature) and custom, with route policies and caching.
#[cfg(feature = "auth")]
#[cfg_attr(docsrs, doc(cfg(feature = "auth")))]
pub use tollgate_auth as auth;

/// API keys and usage plans: hashed keys, plan throttles, exact quotas and usage reports.
#[cfg(feature = "usage")]
#[cfg_attr(docsrs, doc(cfg(feature = "usage")))]
pub use tollgate_usage as usage;

/// Response caching: HTTP's rules, per-principal keys, coalesced misses, stale serving, purges.
#[cfg(feature = "cache")]
#[cfg_attr(docsrs, doc(cfg(feature = "cache")))]
pub use tollgate_cache as cache;

/// Stage and version routing: sticky canaries, deprecation and sunset.
#[cfg(feature = "stage")]
#[cfg_attr(docsrs, doc(cfg(feature = "stage")))]
pub use tollgate_stage as stage;

/// Fan-out aggregation, the HTTP upstream integration and mocks.
#[cfg(feature = "aggregate")]
#[cfg_attr(docsrs, doc(cfg(feature = "aggregate")))]
pub use tollgate_aggregate as aggregate;

/// Access control: IP allow and deny lists, and CORS.
#[cfg(feature = "access")]
#[cfg_attr(docsrs, doc(cfg(feature = "access")))]
pub use tollgate_access as access;

/// Request validation: required headers, typed query parameters and JSON Schema bodies.
#[cfg(feature = "validate")]
#[cfg_attr(docsrs, doc(cfg(feature = "validate")))]
pub use tollgate_validate as validate;

/// Redis stores shared by several gateway instances.
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use tollgate_redis as redis;
