//! Stage and version routing for tollgate: several versions of an API side by side, sticky
//! canaries, and deprecation with a sunset.
//!
//! A [`StageRouter`] is a tower service that holds named stages, each served by its own inner
//! service (typically an axum `Router` per version) with its own variables. The services are
//! all of one type, and `Clone + Send + Sync`: to mix service types, box each one in a
//! [`tower::util::BoxCloneSyncService`]. Each request is routed by the first rule that
//! matches, in this order:
//!
//! 1. **base path** — the longest matching prefix of all stages (`/v1`, `/orders/v2`), by
//!    whole segments; the prefix is stripped before the stage's service sees the path
//!    ([`StageSpec::strip_prefix`]), and axum's `OriginalUri` keeps the full one;
//! 2. **host** — `v2.api.example.com`, any port;
//! 3. **version header** — `Accept-Version`, then `X-Api-Version` (or the names given to
//!    [`StageRouterBuilder::version_headers`]);
//! 4. **media type** — `Accept: application/vnd.acme.v2+json` or
//!    `application/vnd.acme+json; version=2`, with [`StageRouterBuilder::media_type_vendor`]
//!    (`v2` and `2` name the same version, in headers too; a range with `q=0` selects nothing);
//! 5. **the default stage**; with none, 404 problem+json.
//!
//! The chosen [`Stage`](tollgate_core::Stage) (name, deployment served, variables) is inserted
//! into the request, where handlers read it (an axum extractor with the `axum` feature).
//!
//! **Canaries.** A stage may have a [`Canary`]: another service, a percent (fractions
//! allowed) and variable overrides. The side is sticky: a fixed hash of the
//! [`sticky_by`](StageRouterBuilder::sticky_by) key (peer IP by default; an API key, the
//! principal, a cookie, …) puts each client in one of a million buckets, and clients below the
//! percent's threshold get the canary — so a client stays on its side, and raising the percent
//! only moves clients from stable to canary. A header such as `X-Canary: always|never` can
//! force a side for testing, once [`override_header`](StageRouterBuilder::override_header)
//! names it (off by default, since any client could send it), optionally only for principals
//! with a scope ([`override_scope`](StageRouterBuilder::override_scope)). A [`StageHandle`]
//! sets the percent, promotes or rolls back at run time, and starts the next canary
//! ([`start_canary`](StageHandle::start_canary)); requests in flight finish on the deployment
//! they started with.
//!
//! **Layer order.** Keys and scopes that other layers put in the request — the principal's
//! subject for `sticky_by(Subject)`, the API key for `sticky_by(ApiKeyId)`, the scopes
//! [`override_scope`](StageRouterBuilder::override_scope) reads — are only there when the
//! authorizer or usage plan runs before the router, as a layer around it. Inside a stage they
//! come too late: requests have no key (every client stays on the stable side) and no scope
//! (no one may force a side).
//!
//! **Deprecation.** A stage may carry a deprecation date, a sunset date and a successor:
//! responses then carry `Deprecation` (RFC 9745), `Sunset` (RFC 8594) and
//! `Link: <…>; rel="successor-version"`, and after the sunset the stage answers 410 Gone
//! pointing to the successor ([`AfterSunset`]).
//!
//! Every response a deployment serves names it (`X-Deployment`); the router's own refusals
//! (404 with no stage, 410 after a sunset, 400 for a path with `.` or `..` segments, which
//! could otherwise be routed to one stage and resolved to another behind it) do not.
//!
//! [`StageConfig`] describes the same from a configuration file; the application supplies a
//! service for each deployment the file names.
//!
//! # Example
//!
//! ```
//! use axum::{routing::get, Router};
//! use tollgate_stage::{Canary, StageRouter, StageSpec};
//!
//! # fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let v1 = Router::new().route("/orders", get(|| async { "orders, v1" }));
//! let v2 = Router::new().route("/orders", get(|| async { "orders, v2" }));
//! let v2_next = Router::new().route("/orders", get(|| async { "orders, v2 next" }));
//!
//! let stages = StageRouter::builder()
//!     .stage(StageSpec::new("v1", v1).base_path("/v1"))
//!     .stage(
//!         StageSpec::new("v2", v2)
//!             .base_path("/v2")
//!             .canary(Canary::new(v2_next).percent(10.0)),
//!     )
//!     .default_stage("v2")
//!     .build()?;
//! let canary = stages.handle();
//!
//! // Serve it as the application (with connect info, for the client IP):
//! let app: Router = Router::new().fallback_service(stages);
//! # let _ = app;
//! // Later: canary.set_percent("v2", 50.0)?; canary.promote("v2")?;
//! // then the next rollout: canary.start_canary("v2", Canary::new(v3).deployment("v2-r3"))?;
//! # let _ = canary;
//! # Ok(()) }
//! # run().unwrap();
//! ```
//!
//! # Observability
//!
//! - `tollgate_stage_requests_total{stage, deployment}` counts the requests each deployment
//!   is sent.
//! - `tollgate_stage_refused_total{reason, stage}` counts refusals: `reason="no_stage"` (404,
//!   no rule selected a stage and there is no default; `stage` is empty) and
//!   `reason="sunset"` (410, the stage is past its sunset).
//!
//! The counters' handles are made when the router is built, so install the `metrics`
//! recorder before. Each refusal is also a `tracing` event at DEBUG (with the path, or the
//! stage); canary changes are events at INFO.
#![warn(missing_docs)]
#![deny(unsafe_code, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
mod future;
mod router;
mod spec;
mod sticky;

pub use config::{
    AfterSunsetConfig, CanaryEntry, Instant, StageConfig, StageConfigError, StageEntry,
    StickyConfig,
};
pub use future::ResponseFuture;
pub use router::{
    StageError, StageHandle, StageRouter, StageRouterBuilder, DEFAULT_DEPLOYMENT_HEADER,
    DEFAULT_OVERRIDE_HEADER, DEFAULT_VERSION_HEADERS,
};
pub use spec::{
    AfterSunset, Canary, StageSpec, MAX_VARIABLES, MAX_VARIABLE_NAME, MAX_VARIABLE_VALUE,
};
