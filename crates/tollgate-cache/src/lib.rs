//! Response caching for tollgate: HTTP's caching rules as a shared cache, per-principal keys,
//! coalesced misses, stale serving and invalidation.
//!
//! A [`CacheLayer`] answers GET and HEAD requests from stored responses; other methods pass
//! through untouched, except that a successful POST, PUT, PATCH or DELETE invalidates what is
//! stored for its path (and for the paths its `Location` and `Content-Location` name on the
//! same host), as RFC 9111 §4.4 asks: what was stored before the write is no longer served
//! (it stays in memory until it expires or is evicted). A miss goes to the inner service, and its response is stored if RFC 9111
//! lets a shared cache store it and the route's [`CachePolicy`] agrees:
//!
//! - `no-store`, `no-cache`, `Vary: *` and (unless the route opts in) `Set-Cookie` responses
//!   are never stored; `private` ones only under a per-principal key.
//! - Freshness is `s-maxage`, else `max-age`, else `Expires`, else the route's TTL (300 s by
//!   default), capped by the route's max TTL (3600 s), less the response's `Age`.
//! - The key is the host, the path, the query (decoded and sorted; or chosen parameters),
//!   chosen request headers, the [`Stage`](tollgate_core::Stage), and — when the request carries credentials
//!   (a [`Principal`](tollgate_core::Principal)'s subject, or else its API key together with
//!   a hash of the `Authorization`, `X-Api-Key` and `Cookie` headers, since one key may serve
//!   many users) — the caller, so one user never receives another's response,
//!   unless the route is [`Sharing::Shared`]. A request with a principal that nothing
//!   identifies bypasses the cache. The values of the headers a response's `Vary` names pick
//!   the variant within the key.
//! - Concurrent misses on one key send one upstream request; the others wait for its response,
//!   and go upstream themselves if it is not stored (or after
//!   [`CacheBuilder::wait_timeout`]).
//! - `stale-while-revalidate` serves a stale response at once and refreshes it with one
//!   background request; `stale-if-error` serves it (to the waiters of a failed request
//!   too) when the upstream answers 5xx, fails, or
//!   passes [`CachePolicy::upstream_timeout`]. Both come from the response or the policy.
//! - `If-None-Match` and `If-Modified-Since` are answered 304 from a stored response; a HEAD is
//!   answered from the GET entry.
//! - Every GET and HEAD response carries `X-Cache-Status`: `HIT`, `MISS`, `STALE`, `BYPASS`
//!   (not cached: the route is disabled, the request said `no-store`, or its refresh was
//!   refused) or `REFRESH` (a client
//!   refresh the policy allowed, or a background refresh); hits carry `Age`.
//!
//! Memory is bounded by bytes ([`CacheBuilder::max_bytes`], 64 MiB by default); a response
//! larger than [`CacheBuilder::max_entry_bytes`] (1 MiB) streams to the client without being
//! held whole, and is not stored. A response that may be stored is read up to that limit
//! before its head is sent, as a buffering proxy does: a route that streams (server-sent
//! events, long polls, progress) should send `Cache-Control: no-store` or be
//! [disabled](CachePolicy::disabled) in its policy.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use axum::{routing::get, Router};
//! use tollgate_cache::{CacheLayer, CachePolicy};
//!
//! # fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = CacheLayer::builder()
//!     .route("GET /products/{id}", CachePolicy::new().ttl(Duration::from_secs(30)))
//!     .build()?;
//! let purge = cache.handle();
//!
//! let app: Router = Router::new()
//!     .route("/products/{id}", get(|| async { "a product" }))
//!     .layer(cache);
//!
//! // Later, when product 7 changes:
//! purge.purge_resource("/products/7");
//! # let _ = app;
//! # Ok(()) }
//! # run().unwrap();
//! ```
//!
//! # Knobs
//!
//! - [`CachePolicy`]: TTL, max TTL, [`QueryKey`], key headers, statuses, [`Sharing`],
//!   `Set-Cookie`, stale windows, upstream timeout, [`ClientRefresh`]; per route through
//!   [`CacheBuilder::route`].
//! - [`CacheBuilder`]: byte bounds, the coalescing wait, credential headers, the tag header,
//!   the clock.
//! - [`CacheHandle`]: purge a resource, a path prefix, a tag, or everything.
//! - [`CacheConfig`]: the same from a configuration file.
//! - [`CacheStore`]: where responses live; [`MemoryStore`] by default.
//!
//! # Observability
//!
//! Counters `tollgate_cache_requests_total` (label `status`: hit, miss, stale, bypass,
//! refresh), `tollgate_cache_evictions_total` (label `cause`: size, expired) and
//! `tollgate_cache_purges_total`; gauge `tollgate_cache_bytes`. Why a response was not stored
//! is a `tracing` event at DEBUG.
#![warn(missing_docs)]
#![deny(unsafe_code, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod admit;
mod body;
mod config;
mod flight;
mod future;
mod key;
mod layer;
mod policy;
mod semantics;
mod service;
mod store;
mod writes;

pub use body::CacheBody;
pub use config::{CacheConfig, PolicyConfig, QueryConfig, QueryMode};
pub use future::ResponseFuture;
pub use key::CacheKey;
pub use layer::{
    CacheBuilder, CacheError, CacheHandle, CacheLayer, DEFAULT_MAX_ENTRY_BYTES, DEFAULT_TAG_HEADER,
    DEFAULT_WAIT_TIMEOUT,
};
pub use policy::{
    CachePolicy, ClientRefresh, QueryKey, Sharing, DEFAULT_MAX_TTL, DEFAULT_STATUSES, DEFAULT_TTL,
};
pub use service::{Cache, X_CACHE_STATUS};
pub use store::{
    CacheStore, CachedResponse, Lookup, MemoryStore, Purge, Variants, DEFAULT_MAX_BYTES,
    MAX_VARIANTS,
};
