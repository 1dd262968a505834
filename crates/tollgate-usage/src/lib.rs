//! API keys and usage plans for tollgate: each customer gets a key, each key is on a plan
//! with a throttle, a quota and per-route overrides, and the provider sees each key's daily
//! usage — Amazon API Gateway's usage plans, in-process.
//!
//! A [`UsageLayer`] reads the request's API key (the `x-api-key` header by default, or the
//! usage identifier key an authorizer set, or a query parameter when chosen), checks it
//! against its stored hash in constant time, then applies the key's plan:
//!
//! 1. the key must exist, be enabled, not expired, and allowed on the request's stage;
//! 2. the plan throttle (or the matched route's override), by the throttle crate's GCRA
//!    keyed by API key id;
//! 3. the quota, counted exactly: a request takes one unit or is refused, under any
//!    concurrency. A throttled request takes no quota.
//!
//! An admitted request carries a [`Principal`](tollgate_core::Principal) with the key id and
//! plan id, and its response carries `RateLimit-Policy` and `RateLimit` fields for the plan
//! throttle and the quota:
//!
//! ```text
//! RateLimit-Policy: "basic";q=2;w=1, "quota";q=20;w=86400
//! RateLimit: "basic";r=1;t=1, "quota";r=19;t=41220
//! ```
//!
//! Refusals are problem+json: 401 with `WWW-Authenticate: ApiKey` for a missing or unknown
//! key; 403 for a disabled or expired key, or one used on a stage it is not allowed on; 429
//! with `Retry-After` when throttled; 429 of type `quota-exceeded` with `Retry-After` = the
//! seconds until the quota period resets.
//!
//! # Keys
//!
//! Keys read `tg_<id>_<secret>`: a prefix secret scanners can look for, the key id, and 24
//! base62 characters (about 143 bits) from the operating system's CSPRNG. Only the SHA-256 of
//! the key is stored; the plaintext is returned once, by [`UsagePlans::create_key`] or
//! [`UsagePlans::rotate`], and never logged. Rotation keeps the old secret working for a grace
//! period. Keys from a configuration file are [`KeyRecord`]s, which hold hashes.
//!
//! # Quota periods
//!
//! [`QuotaPeriod::Day`], [`Week`](QuotaPeriod::Week) and [`Month`](QuotaPeriod::Month) are
//! calendar periods in UTC: a day starts at 00:00 UTC, a week on Monday at 00:00 UTC (ISO
//! 8601), a month on the 1st at 00:00 UTC. [`QuotaPeriod::Every`] is a fixed length whose
//! windows start at every multiple of the length since the Unix epoch, so every instance of a
//! gateway, and every restart, agrees on when a period starts.
//!
//! # Example
//!
//! ```
//! use axum::{routing::get, Router};
//! use tollgate_throttle::Rate;
//! use tollgate_usage::{QuotaPeriod, UsagePlan, UsagePlans};
//!
//! # fn build() -> Result<Router, Box<dyn std::error::Error>> {
//! let plans = UsagePlans::builder()
//!     .plan(UsagePlan::new("basic").throttle(Rate::per_second(2), 2).quota(20, QuotaPeriod::Day))
//!     .plan(UsagePlan::new("pro").throttle(Rate::per_second(50), 20).quota(10_000, QuotaPeriod::Day))
//!     .build()?;
//! let app = Router::new()
//!     .route("/api/widgets", get(|| async { "[]" }))
//!     .layer(plans.layer());
//! # Ok(app)
//! # }
//! # build().unwrap();
//! ```
//!
//! Keys are made with [`UsagePlans::create_key`], or over HTTP with the admin router
//! (feature `admin`), which the application mounts behind its own authentication.
//!
//! # Observability
//!
//! Every decision counts in `tollgate_usage_requests_total{outcome}` (`allowed`,
//! `missing_key`, `invalid_key`, `forbidden`, `throttled`, `quota_exceeded`, `store_error`),
//! and refusals are `tracing` events at DEBUG naming the key id — never the key.

#![warn(missing_docs)]
#![deny(unsafe_code, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "admin")]
#[cfg_attr(docsrs, doc(cfg(feature = "admin")))]
pub mod admin;
mod config;
mod decide;
mod future;
mod key;
mod layer;
mod period;
mod plan;
mod plans;
mod quota;
mod secret;
mod service;
mod source;
mod time;

pub use config::{KeySourceConfig, PlanConfig, QuotaConfig, ThrottleConfig, UsageConfig};
pub use future::ResponseFuture;
pub use key::{ApiKey, Found, KeyError, KeyRecord, KeyStore, MemoryKeyStore, StoreError};
pub use layer::UsageLayer;
pub use period::{Day, PeriodError, QuotaPeriod, Window};
pub use plan::{PlanThrottle, Quota, UsagePlan};
pub use plans::{
    AdminError, DailyUsage, NewKey, UsageError, UsagePlans, UsagePlansBuilder, UsageReport,
    DEFAULT_THROTTLE_CAPACITY, MAX_REPORT_DAYS,
};
pub use quota::{MemoryQuotaStore, QuotaStore, Take, DEFAULT_RETENTION_DAYS};
pub use secret::{KeyHash, KeyHashError, Secret, KEY_PREFIX};
pub use service::Usage;
pub use source::KeySource;
