use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderName, Method};
use tollgate_core::{RouteTable, RouteTableError, SharedClock};
use tower::Layer;

use crate::flight::Flights;
use crate::policy::{CachePolicy, CompiledPolicy};
use crate::service::Cache;
use crate::store::{CacheStore, MemoryStore, Purge, DEFAULT_MAX_BYTES};
use crate::writes::Writes;

/// The largest response stored, by default: 1 MiB (Amazon API Gateway's entry limit).
pub const DEFAULT_MAX_ENTRY_BYTES: usize = 1024 * 1024;

/// How long a request waits for another request's upstream call on the same key, by default,
/// before going upstream itself.
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(5);

/// The response header whose tags purges by tag match, by default.
pub const DEFAULT_TAG_HEADER: &str = "cache-tag";

/// Why a cache layer could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// A route template that does not parse, or a route given twice.
    #[error("invalid cache route {route:?}: {source}")]
    Route {
        /// The route as given.
        route: String,
        /// What is wrong with it.
        source: RouteTableError,
    },
    /// A byte bound of zero.
    #[error("{0} must be at least 1 byte")]
    ZeroBytes(&'static str),
    /// A configuration value is invalid.
    #[error("invalid cache configuration: {0}")]
    Config(String),
}

/// Caches responses to GET and HEAD by HTTP's rules; see the [crate docs](crate) for an example.
///
/// Clones share one store, so a response stored through one connection serves every other.
#[must_use]
pub struct CacheLayer<St = MemoryStore> {
    pub(crate) shared: Arc<Shared<St>>,
}

impl<St> Clone for CacheLayer<St> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<St> fmt::Debug for CacheLayer<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheLayer")
            .field("default", &self.shared.default)
            .field("routes", &self.shared.routes)
            .finish_non_exhaustive()
    }
}

/// What every clone of the layer and service shares.
pub(crate) struct Shared<St> {
    pub(crate) store: St,
    pub(crate) default: Arc<CompiledPolicy>,
    pub(crate) routes: RouteTable<Arc<CompiledPolicy>>,
    pub(crate) clock: SharedClock,
    pub(crate) flights: Flights,
    pub(crate) credential_headers: Box<[HeaderName]>,
    pub(crate) tag_header: Option<HeaderName>,
    pub(crate) max_entry_bytes: usize,
    pub(crate) wait_timeout: Duration,
    pub(crate) counters: Counters,
    pub(crate) writes: Arc<Writes>,
    /// Counts purges, so a response fetched across one is not stored afterwards.
    pub(crate) purges: std::sync::atomic::AtomicU64,
}

pub(crate) struct Counters {
    pub(crate) hit: metrics::Counter,
    pub(crate) miss: metrics::Counter,
    pub(crate) stale: metrics::Counter,
    pub(crate) bypass: metrics::Counter,
    pub(crate) refresh: metrics::Counter,
}

impl Counters {
    fn new() -> Self {
        let status =
            |s: &'static str| metrics::counter!("tollgate_cache_requests_total", "status" => s);
        Self {
            hit: status("hit"),
            miss: status("miss"),
            stale: status("stale"),
            bypass: status("bypass"),
            refresh: status("refresh"),
        }
    }
}

impl<St> Shared<St> {
    /// The policy of a GET or HEAD request's route.
    pub(crate) fn policy(&self, path: &str) -> &Arc<CompiledPolicy> {
        match self.routes.at(&Method::GET, path) {
            Some(found) => found.value(),
            None => &self.default,
        }
    }
}

impl CacheLayer {
    /// Starts building a cache layer.
    pub fn builder() -> CacheBuilder {
        CacheBuilder::default()
    }
}

impl<St: CacheStore> CacheLayer<St> {
    /// A handle for purging entries, which outlives and works beside the layer.
    pub fn handle(&self) -> CacheHandle<St> {
        CacheHandle {
            shared: self.shared.clone(),
        }
    }

    /// The store.
    pub fn store(&self) -> &St {
        &self.shared.store
    }
}

impl<S, St> Layer<S> for CacheLayer<St> {
    type Service = Cache<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        Cache {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Purges cached responses at run time: one resource, a path prefix, a tag, or everything.
///
/// ```
/// # fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let cache = tollgate_cache::CacheLayer::builder().build()?;
/// let handle = cache.handle();
/// handle.purge_resource("/products?page=2");
/// handle.purge_prefix("/products/");
/// handle.purge_tag("product-42");
/// handle.purge_all();
/// # Ok(()) }
/// # run().unwrap();
/// ```
#[must_use]
pub struct CacheHandle<St = MemoryStore> {
    shared: Arc<Shared<St>>,
}

impl<St> Clone for CacheHandle<St> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<St> fmt::Debug for CacheHandle<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheHandle").finish_non_exhaustive()
    }
}

impl<St: CacheStore> CacheHandle<St> {
    /// Drops one resource (`/items?page=2`; parameter order does not matter) for every caller,
    /// stage and variant.
    pub fn purge_resource(&self, path_and_query: &str) {
        self.purge(&Purge::resource(path_and_query));
    }

    /// Drops every resource whose path starts with `prefix`.
    pub fn purge_prefix(&self, prefix: &str) {
        self.purge(&Purge::Prefix(prefix.into()));
    }

    /// Drops every response that carried `tag` in the tag header.
    pub fn purge_tag(&self, tag: &str) {
        self.purge(&Purge::Tag(tag.into()));
    }

    /// Drops everything.
    pub fn purge_all(&self) {
        self.purge(&Purge::All);
    }

    /// Drops what `purge` names.
    pub fn purge(&self, purge: &Purge) {
        tracing::info!(?purge, "cache purge");
        metrics::counter!("tollgate_cache_purges_total").increment(1);
        self.shared
            .purges
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.shared.store.purge(purge);
    }
}

/// Builds a [`CacheLayer`].
#[derive(Debug)]
#[must_use]
pub struct CacheBuilder {
    default: CachePolicy,
    routes: Vec<(String, CachePolicy)>,
    clock: SharedClock,
    max_bytes: u64,
    max_entry_bytes: usize,
    wait_timeout: Duration,
    credential_headers: Vec<HeaderName>,
    tag_header: Option<HeaderName>,
}

impl Default for CacheBuilder {
    fn default() -> Self {
        Self {
            default: CachePolicy::default(),
            routes: Vec::new(),
            clock: SharedClock::default(),
            max_bytes: DEFAULT_MAX_BYTES,
            max_entry_bytes: DEFAULT_MAX_ENTRY_BYTES,
            wait_timeout: DEFAULT_WAIT_TIMEOUT,
            credential_headers: vec![AUTHORIZATION, HeaderName::from_static("x-api-key"), COOKIE],
            tag_header: Some(HeaderName::from_static(DEFAULT_TAG_HEADER)),
        }
    }
}

impl CacheBuilder {
    /// The policy of routes without their own (default: [`CachePolicy::new`]).
    pub fn policy(mut self, policy: CachePolicy) -> Self {
        self.default = policy;
        self
    }

    /// The policy of one route (`"GET /products/{id}"` or `"/products/{id}"`; HEAD requests
    /// follow the GET routes), replacing the default policy there.
    pub fn route(mut self, route: impl Into<String>, policy: CachePolicy) -> Self {
        self.routes.push((route.into(), policy));
        self
    }

    /// The most bytes the in-memory store holds (default 64 MiB); past it, the least valuable
    /// entries are evicted.
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// The largest response stored (default 1 MiB). Larger responses stream through to the
    /// client without being held whole.
    pub fn max_entry_bytes(mut self, bytes: usize) -> Self {
        self.max_entry_bytes = bytes;
        self
    }

    /// How long a request waits for a concurrent request's upstream call on the same key
    /// before going upstream itself (default 5 s).
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.wait_timeout = timeout;
        self
    }

    /// The request headers that make a request a principal's even without a verified
    /// [`Principal`](tollgate_core::Principal) (default `Authorization`, `X-Api-Key` and
    /// `Cookie`); their values are hashed into the key.
    pub fn credential_headers(mut self, headers: impl IntoIterator<Item = HeaderName>) -> Self {
        self.credential_headers = headers.into_iter().collect();
        self
    }

    /// The response header whose tags (separated by commas or spaces) purges match (default
    /// `Cache-Tag`; `Surrogate-Key` is the other common one); `None` reads no tags.
    pub fn tag_header(mut self, header: Option<HeaderName>) -> Self {
        self.tag_header = header;
        self
    }

    /// The clock (default: the system clock). Tests pass a `ManualClock`.
    pub fn clock(mut self, clock: impl Into<SharedClock>) -> Self {
        self.clock = clock.into();
        self
    }

    /// Builds the layer with an in-memory store.
    pub fn build(self) -> Result<CacheLayer, CacheError> {
        if self.max_bytes == 0 {
            return Err(CacheError::ZeroBytes("max_bytes"));
        }
        let store = MemoryStore::new(self.max_bytes);
        self.build_with(store)
    }

    /// Builds the layer with responses kept in `store`.
    pub fn build_with<St: CacheStore>(self, store: St) -> Result<CacheLayer<St>, CacheError> {
        if self.max_entry_bytes == 0 {
            return Err(CacheError::ZeroBytes("max_entry_bytes"));
        }
        let mut routes = RouteTable::new();
        for (route, policy) in self.routes {
            routes
                .insert(&route, policy.compile())
                .map_err(|source| CacheError::Route { route, source })?;
        }
        Ok(CacheLayer {
            shared: Arc::new(Shared {
                store,
                default: self.default.compile(),
                routes,
                clock: self.clock.clone(),
                flights: Flights::default(),
                credential_headers: self.credential_headers.into_boxed_slice(),
                tag_header: self.tag_header,
                max_entry_bytes: self.max_entry_bytes,
                wait_timeout: self.wait_timeout,
                counters: Counters::new(),
                writes: Arc::new(Writes::new(self.clock.clone())),
                purges: std::sync::atomic::AtomicU64::new(0),
            }),
        })
    }
}
