use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use moka::notification::RemovalCause;
use moka::Expiry;

use crate::key::{resource_of, CacheKey};

/// One stored response: what a hit serves, and when it stops being servable.
///
/// Times are wall-clock, so entries in a store shared by several instances compare.
#[derive(Clone, Debug)]
pub struct CachedResponse {
    /// The response status.
    pub status: StatusCode,
    /// The response headers, without hop-by-hop fields or a caller's `RateLimit` and
    /// `RateLimit-Policy`, with `Content-Length`.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// The request headers the response's `Vary` names, with the request's values of each.
    pub vary: Box<[(HeaderName, Box<[HeaderValue]>)]>,
    /// The resource (path and query, as requested) the response is for, which purges match.
    pub resource: Box<str>,
    /// Tags from the tag header, which purges by tag match.
    pub tags: Box<[Box<str>]>,
    /// When the response was stored.
    pub stored_at: SystemTime,
    /// Its age when it was stored (from `Age` and `Date`).
    pub initial_age: Duration,
    /// Until when it is fresh.
    pub fresh_until: SystemTime,
    /// Until when it may be served stale while one request refreshes it.
    pub stale_while_revalidate_until: SystemTime,
    /// Until when it may be served stale when the upstream fails.
    pub stale_if_error_until: SystemTime,
}

impl CachedResponse {
    /// Whether this variant was stored for a request with the same values of the `Vary`
    /// headers as `request`.
    pub fn matches(&self, request: &HeaderMap) -> bool {
        self.vary
            .iter()
            .all(|(name, values)| request.get_all(name).iter().eq(values.iter()))
    }

    /// The response's age at `now`, as the `Age` header states it.
    pub fn age(&self, now: SystemTime) -> Duration {
        self.initial_age + now.duration_since(self.stored_at).unwrap_or_default()
    }

    /// The last moment this response can be of any use.
    pub fn usable_until(&self) -> SystemTime {
        self.fresh_until
            .max(self.stale_while_revalidate_until)
            .max(self.stale_if_error_until)
    }

    /// Roughly how many bytes the response holds, for the store's byte bound.
    pub fn weight(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 32)
            .sum();
        let tags: usize = self.tags.iter().map(|t| t.len() + 16).sum();
        let vary: usize = self
            .vary
            .iter()
            .map(|(name, values)| {
                name.as_str().len() + values.iter().map(|v| v.len() + 32).sum::<usize>()
            })
            .sum();
        self.body.len() + headers + tags + vary + self.resource.len() + 256
    }
}

/// Every variant stored under one key.
pub type Variants = Arc<[Arc<CachedResponse>]>;

/// The most variants (distinct values of `Vary` headers) kept under one key; storing one more
/// drops the oldest.
pub const MAX_VARIANTS: usize = 8;

/// What a purge drops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Purge {
    /// One resource: a path and query (`/items?page=2`; the query's order does not matter),
    /// for every host, caller, stage and variant.
    Resource(Box<str>),
    /// Every resource whose path starts with the prefix.
    Prefix(Box<str>),
    /// Every response that carried the tag.
    Tag(Box<str>),
    /// Everything.
    All,
}

impl Purge {
    /// A purge of one resource; the query is normalized as cache keys are.
    pub fn resource(path_and_query: &str) -> Self {
        Purge::Resource(resource_of(path_and_query))
    }

    /// Whether the purge drops `response`.
    pub fn drops(&self, response: &CachedResponse) -> bool {
        self.matches(&response.resource, response.tags.iter().map(|t| &**t))
    }

    /// Whether the purge drops a response stored for `resource` (as in
    /// [`CachedResponse::resource`]) that carried `tags`: [`drops`](Self::drops) for a store
    /// that keeps these apart from the response, so it can match without decoding bodies.
    pub fn matches<'t>(&self, resource: &str, tags: impl IntoIterator<Item = &'t str>) -> bool {
        match self {
            Purge::Resource(purged) => *resource_of(resource) == **purged,
            Purge::Prefix(prefix) => resource.starts_with(&**prefix),
            Purge::Tag(tag) => tags.into_iter().any(|t| t == &**tag),
            Purge::All => true,
        }
    }
}

/// A lookup that a store answers now or later.
pub enum Lookup {
    /// The answer, now.
    Ready(Option<Variants>),
    /// The answer once the future resolves (a store across the network).
    Pending(Pin<Box<dyn Future<Output = Option<Variants>> + Send>>),
}

impl fmt::Debug for Lookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lookup::Ready(found) => f.debug_tuple("Ready").field(found).finish(),
            Lookup::Pending(_) => f.write_str("Pending"),
        }
    }
}

/// Where cached responses live. [`MemoryStore`] is the default; a shared store (Redis) can sit
/// behind it as a second level.
///
/// A store answers lookups on the request path, so an in-memory store answers
/// [`Lookup::Ready`]; a store across the network answers [`Lookup::Pending`] and the layer
/// awaits it. Stores treat an unreachable backend as a miss: a cache outage must not fail
/// requests.
pub trait CacheStore: Send + Sync + 'static {
    /// The variants stored under `key`.
    fn get(&self, key: &CacheKey) -> Lookup;

    /// Stores `response` under `key`, replacing the variant with the same `Vary` values.
    fn put(&self, key: CacheKey, response: Arc<CachedResponse>);

    /// Drops what `purge` names.
    fn purge(&self, purge: &Purge);
}

/// The default byte bound of a [`MemoryStore`]: 64 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Clone)]
struct Entry {
    variants: Variants,
    keep_for: Duration,
    // Weighed once: an evicted entry's responses are cold in memory by the time it leaves.
    weight: u32,
}

/// Cached responses in memory (moka), bounded by total bytes; the least valuable entries are
/// evicted first, and entries leave once no longer servable even stale.
#[derive(Clone)]
pub struct MemoryStore {
    cache: moka::sync::Cache<CacheKey, Entry, foldhash::quality::RandomState>,
    bytes: Arc<AtomicU64>,
    gauge: metrics::Gauge,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.cache.entry_count())
            .field("bytes", &self.bytes())
            .finish()
    }
}

struct KeepFor;

impl Expiry<CacheKey, Entry> for KeepFor {
    fn expire_after_create(
        &self,
        _: &CacheKey,
        entry: &Entry,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(entry.keep_for)
    }

    fn expire_after_update(
        &self,
        _: &CacheKey,
        entry: &Entry,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.keep_for)
    }
}

fn weigh(_: &CacheKey, entry: &Entry) -> u32 {
    entry.weight
}

impl MemoryStore {
    /// A store holding at most `max_bytes` of responses (headers and bodies, roughly weighed).
    pub fn new(max_bytes: u64) -> Self {
        let bytes = Arc::new(AtomicU64::new(0));
        let gauge = metrics::gauge!("tollgate_cache_bytes");
        let evicted = bytes.clone();
        let listener_gauge = gauge.clone();
        let by_size = metrics::counter!("tollgate_cache_evictions_total", "cause" => "size");
        let by_expiry = metrics::counter!("tollgate_cache_evictions_total", "cause" => "expired");
        let listener = move |_: Arc<CacheKey>, entry: Entry, cause: RemovalCause| {
            let weight = u64::from(entry.weight);
            let left = evicted
                .fetch_sub(weight, Ordering::Relaxed)
                .saturating_sub(weight);
            listener_gauge.set(left as f64);
            match cause {
                RemovalCause::Size => by_size.increment(1),
                RemovalCause::Expired => by_expiry.increment(1),
                RemovalCause::Explicit | RemovalCause::Replaced => {}
            }
        };
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(weigh)
            .expire_after(KeepFor)
            .eviction_listener(listener)
            .support_invalidation_closures()
            // Randomly seeded, so keys chosen to collide cannot be computed ahead; SipHash (the
            // default) cost a third of a stored miss in moka's table.
            .build_with_hasher(foldhash::quality::RandomState::default());
        Self {
            cache,
            bytes,
            gauge,
        }
    }

    /// The bytes held now (as weighed; evictions settle lazily).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The keys held now (evictions settle lazily).
    pub fn entries(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Runs pending evictions and purges now, rather than on later requests.
    pub fn settle(&self) {
        self.cache.run_pending_tasks();
    }

    /// Stores `variants` as the whole entry of `key`, replacing what it held, kept until the
    /// last of them is no longer usable (counted from now): for a second-level store filling
    /// this one with an entry it holds.
    pub fn put_variants(&self, key: CacheKey, variants: Variants) {
        self.insert(key, variants, SystemTime::now());
    }

    fn insert(&self, key: CacheKey, variants: Variants, now: SystemTime) {
        let keep_for = variants
            .iter()
            .map(|v| v.usable_until().duration_since(now).unwrap_or_default())
            .max()
            .unwrap_or_default();
        let weight = key.as_bytes().len() + variants.iter().map(|v| v.weight()).sum::<usize>();
        let weight = u32::try_from(weight).unwrap_or(u32::MAX);
        let entry = Entry {
            variants,
            keep_for,
            weight,
        };
        let weight = u64::from(weight);
        let held = self.bytes.fetch_add(weight, Ordering::Relaxed) + weight;
        self.gauge.set(held as f64);
        self.cache.insert(key, entry);
    }
}

impl CacheStore for MemoryStore {
    fn get(&self, key: &CacheKey) -> Lookup {
        Lookup::Ready(self.cache.get(key).map(|entry| entry.variants))
    }

    fn put(&self, key: CacheKey, response: Arc<CachedResponse>) {
        let now = response.stored_at;
        // A response without Vary answers every request of its key, so it replaces the entry
        // outright. Two racing puts with Vary may each drop the other's new variant; the
        // loser is fetched again.
        let existing = if response.vary.is_empty() {
            None
        } else {
            self.cache.get(&key)
        };
        let variants: Variants = match existing {
            None => Arc::new([response]),
            Some(existing) => {
                let mut variants: Vec<_> = existing
                    .variants
                    .iter()
                    .filter(|v| v.vary != response.vary && v.usable_until() > now)
                    .cloned()
                    .collect();
                if variants.len() >= MAX_VARIANTS {
                    variants.drain(..=variants.len() - MAX_VARIANTS);
                }
                variants.push(response);
                variants.into()
            }
        };
        self.insert(key, variants, now);
    }

    fn purge(&self, purge: &Purge) {
        if *purge == Purge::All {
            self.cache.invalidate_all();
            return;
        }
        let purge = purge.clone();
        let registered = self
            .cache
            .invalidate_entries_if(move |_, entry| entry.variants.iter().any(|v| purge.drops(v)));
        if let Err(error) = registered {
            // Invalidation closures are enabled in `new`, so this is a bug, not a condition.
            tracing::error!(%error, "cache purge could not be registered");
        }
    }
}
