//! Redis (or Valkey) backends for tollgate, so several gateway instances behave as one.
//!
//! Per-instance limits multiply with the number of instances behind a load balancer; state in
//! one Redis makes them one limit again. This crate implements the layers' store traits on
//! Redis, through one reconnecting connection ([`Redis`]) with a key prefix and a call timeout
//! (and, for each cache store, a pub/sub connection of its own);
//! each store has its own circuit breaker:
//!
//! - [`RedisThrottleStore`]: the throttle layer's GCRA, with the same rule, the same
//!   decisions and the same headers as the in-memory store, one round trip per request
//!   whatever the number of rules. It also serves the usage layer's plan throttles.
//! - [`RedisQuotaStore`]: the usage layer's quotas, counted exactly across instances, and the
//!   daily usage of each API key, kept for a retention window.
//! - [`RedisKeyStore`]: the usage layer's API keys (hashes, never secrets): a key created,
//!   disabled, rotated or revoked through one instance is seen by all on their next request.
//! - [`RedisCacheStore`]: the response cache's store with a second level in Redis: each
//!   instance answers from memory, misses read the entry every instance stored, and purges
//!   reach every instance.
//!
//! When Redis is slow or gone, the throttle and quota stores follow their [`FailurePolicy`]:
//! report the failure to the layer (which fails open or closed, as configured), or keep
//! enforcing in memory with each instance's share of the limits. The key store refuses (503)
//! unless [`RedisKeyStore::remember_keys`] keeps the keys it has seen working, and the cache
//! store takes it as a miss. Once a few calls in a row have failed, the breaker
//! stops calling Redis for a while, so an outage costs no latency per request; it closes again
//! by itself when Redis answers. Transitions are logged and counted in
//! `tollgate_redis_breaker_transitions_total{store, to}`; checks Redis did not decide in
//! `tollgate_redis_fallbacks_total{store}`.
//!
//! Plain `redis://` only for now: TLS (`rediss://`) is not built in.
//!
//! # Example
//!
//! ```no_run
//! use tollgate_core::key::ClientIp;
//! use tollgate_core::TrustedProxies;
//! use tollgate_redis::{RedisConfig, RedisThrottleStore};
//! use tollgate_throttle::{Rate, Rule, ThrottleLayer};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let redis = RedisConfig::new("redis://127.0.0.1:6379").prefix("shop").connect().await?;
//! let throttle = ThrottleLayer::builder()
//!     .rule(Rule::new("per-client", Rate::per_second(100), ClientIp::new(TrustedProxies::none())))
//!     .build_with_store(|rules, clock| RedisThrottleStore::new(redis.clone(), rules, clock))?;
//! # let _ = throttle; Ok(()) }
//! ```
#![warn(missing_docs)]
#![deny(unsafe_code, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod breaker;
mod cache;
mod connection;
mod keys;
mod quota;
mod throttle;

pub use breaker::BreakerConfig;
pub use cache::RedisCacheStore;
pub use connection::{Redis, RedisConfig};
pub use keys::{RedisGet, RedisKeyStore};
pub use quota::{RedisQuotaStore, RedisTake};
pub use redis::RedisError;
pub use throttle::{FailurePolicy, RedisCheck, RedisThrottleStore};
