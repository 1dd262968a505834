//! The response cache's second level in Redis, shared by every instance.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use tollgate_cache::{
    CacheKey, CacheStore, CachedResponse, Lookup, MemoryStore, Purge, Variants, DEFAULT_MAX_BYTES,
    MAX_VARIANTS,
};

use crate::breaker::{Breaker, BreakerConfig};
use crate::connection::Redis;

/// How long a purge is remembered, so that an entry Redis still holds while the purge's
/// delete runs is not read back.
const RECENT_PURGE_WINDOW: Duration = Duration::from_secs(10);
/// The most purges remembered; past it the oldest is forgotten early.
const RECENT_PURGE_MAX: usize = 256;
/// The furthest ahead of ours another instance's clock is believed when it dates a purge.
const MAX_CLOCK_AHEAD: Duration = Duration::from_secs(60);
/// The longest an entry stays in Redis, however long its response may be used.
const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 3600);
/// Keys asked for per `SCAN` page while a purge looks for its entries.
const SCAN_COUNT: usize = 500;
/// The wait before the subscriber's first reconnection attempt, doubled up to the next.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often the subscriber checks that its connection still answers, and how long it waits
/// for the answer (at least: the connection timeout, if longer).
const PING_EVERY: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// The response cache's store with a second level in Redis: each instance keeps the responses
/// it serves in memory (L1, a [`MemoryStore`]), and every instance shares the ones in Redis
/// (L2), so a response cached through one gateway instance is a hit on all of them.
///
/// - A lookup answers from memory when it can, without waiting; otherwise it reads the entry
///   from Redis (one `HGET`), keeps what is still usable in memory and answers with it.
/// - A stored response goes to memory at once and to Redis in the background (one
///   `MULTI`/`EXEC` round trip), with every variant memory holds for its key, under
///   `<prefix>:cache:<hash of the cache key>` — the hash is keyed with
///   [`RedisConfig::key_secret`](crate::RedisConfig::key_secret), so Redis key names show
///   nothing a client sent — and a TTL of the time until its last variant stops being usable.
/// - A purge (through the layer's `CacheHandle`) drops what memory holds at once, then, in the
///   background, publishes the purge on `<prefix>:cache:purge`, so every other instance drops
///   it from its memory too, and deletes the matching entries from Redis. For 10 s (the last
///   256 purges at most), entries read from Redis that a purge names and that were stored
///   before it are ignored, so what was purged is not read back while the delete runs. A
///   purge is dated by the later of the purging and the receiving instance's clocks (at most
///   a minute ahead of the receiver's), and compared with when an entry was stored by the
///   clock of the instance that stored it: keep the instances' clocks synchronized.
///
/// Redis that is down, slow past the connection's timeout, or answering nonsense is a miss,
/// never an error response: requests are served from memory or the upstream. A circuit
/// breaker stops calling a failing Redis (counted in
/// `tollgate_redis_fallbacks_total{store="cache"}`), so an outage costs no time per request,
/// and lets calls through again once Redis answers.
///
/// # What an operator should know
///
/// - Every entry has a TTL, so Redis never holds entries nobody can use; give it a
///   `maxmemory` with a `volatile-*` policy (`volatile-ttl` or `volatile-lru`), never an
///   `allkeys-*` one: an evicted entry is just a miss, but
///   [`RedisKeyStore`](crate::RedisKeyStore) keeps API keys in the same Redis without a TTL.
/// - Responses (headers and bodies), their resources (path and query) and their tags are
///   stored in Redis in the clear; only key names are hashed. A Redis that holds cached
///   private responses must be protected like the upstream that serves them.
/// - A purge other than of everything costs a `SCAN` of every cache key under the prefix (in
///   pages of 500) plus one round trip per page to read the matching fields, on one instance,
///   in the background. Purges are meant to be rare; purging on every write of a busy
///   resource is better done with short TTLs. A purge Redis did not take (it was down) is
///   logged at WARN: other instances keep serving the purged responses until they expire.
/// - A purge can lose a race with a write: when another instance stores a response before
///   the purge reaches it, and that store's background write lands after the purge's `SCAN`
///   has passed the key, the purged entry is back in Redis, served until its TTL. (The cache
///   layer does not store a response fetched across a purge made on the same instance, and a
///   store does not keep one requested from the upstream before a purge it has received.)
/// - With `Vary`, an instance answers from memory whenever memory holds any variant of a key
///   (a variant it lacks comes from the upstream, not from Redis), and writes to Redis only
///   the variants it holds, replacing the entry there; so instances overwrite each other's
///   variants in Redis. On `Vary` routes spread over instances this lowers the hit rate; it
///   never gives a wrong answer.
/// - Each store holds one more connection, for purges from other instances (pub/sub), and
///   sends a `PING` on it every 5 s. When it is lost (closed, or a `PING` unanswered within
///   1 s, or [`RedisConfig::timeout`](crate::RedisConfig::timeout) if longer, as across a
///   partition that resets nothing) it reconnects (100 ms, doubling to 2 s), and after every
///   subscription the memory level is emptied, since purges sent meanwhile were missed; the
///   first requests after a reconnection are read from Redis again.
/// - Instances sharing the cache must share the prefix and the key secret; different
///   prefixes never see each other's entries.
/// - The memory level is bounded by its own byte limit (default
///   [`DEFAULT_MAX_BYTES`]); the cache layer's `max_bytes` applies only to its built-in store.
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
/// use axum::{routing::get, Router};
/// use tollgate_cache::{CacheLayer, CachePolicy};
/// use tollgate_redis::{RedisCacheStore, RedisConfig};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let redis = RedisConfig::new("redis://127.0.0.1:6379").prefix("shop").connect().await?;
/// let cache = CacheLayer::builder()
///     .route("GET /products/{id}", CachePolicy::new().ttl(Duration::from_secs(30)))
///     .build_with(RedisCacheStore::new(redis.clone()))?;
/// let purge = cache.handle();
///
/// let app: Router = Router::new()
///     .route("/products/{id}", get(|| async { "a product" }))
///     .layer(cache);
///
/// // When product 7 changes, on any instance: every instance stops serving it.
/// purge.purge_resource("/products/7");
/// # let _ = app; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisCacheStore {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    redis: Redis,
    breaker: Arc<Breaker>,
    state: Arc<State>,
    /// `<prefix>:cache:`
    entry_prefix: String,
    /// `<prefix>:cache:purge`
    channel: String,
}

/// What the subscriber shares with the store: it holds only a `Weak` to it, and is stopped
/// when the store is dropped.
struct State {
    l1: MemoryStore,
    recent: Mutex<RecentPurges>,
    /// Bumped each time memory is emptied after a subscription: a read of Redis that started
    /// before does not fill memory, since a purge missed meanwhile may name it.
    clears: AtomicU64,
    /// This store's id in the purges it publishes, so it does not apply its own twice.
    origin: u64,
    subscriber: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for State {
    fn drop(&mut self) {
        if let Some(subscriber) = lock(&self.subscriber).take() {
            subscriber.abort();
        }
    }
}

impl fmt::Debug for RedisCacheStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCacheStore")
            .field("redis", &self.inner.redis)
            .field("l1", &self.inner.state.l1)
            .field("breaker_open", &self.inner.breaker.is_open())
            .finish_non_exhaustive()
    }
}

impl RedisCacheStore {
    /// A store whose memory level holds at most [`DEFAULT_MAX_BYTES`], with its second level
    /// in `redis`. Called within a tokio runtime, it starts listening for other instances'
    /// purges at once; without one, purges from other instances do not reach it and nothing
    /// is written to Redis.
    pub fn new(redis: Redis) -> Self {
        Self::with_max_bytes(redis, DEFAULT_MAX_BYTES)
    }

    /// A store whose memory level holds at most `max_bytes` of responses.
    pub fn with_max_bytes(redis: Redis, max_bytes: u64) -> Self {
        let state = Arc::new(State {
            l1: MemoryStore::new(max_bytes),
            recent: Mutex::new(RecentPurges::default()),
            clears: AtomicU64::new(0),
            origin: random_id(),
            subscriber: Mutex::new(None),
        });
        let channel = format!("{}:cache:purge", redis.prefix);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let listener = runtime.spawn(listen(
                    Arc::downgrade(&state),
                    redis.client.clone(),
                    channel.clone(),
                    redis.timeout.max(Duration::from_millis(250)),
                ));
                *lock(&state.subscriber) = Some(listener.abort_handle());
            }
            Err(_) => tracing::warn!(
                "tollgate redis: the cache store was built outside a tokio runtime; \
                 purges from other instances will not reach it"
            ),
        }
        Self {
            inner: Arc::new(Inner {
                entry_prefix: format!("{}:cache:", redis.prefix),
                channel,
                redis,
                breaker: Arc::new(Breaker::new(BreakerConfig::default(), "cache")),
                state,
            }),
        }
    }

    /// When the circuit breaker opens and for how long (default: 3 failures in a row, 1 s).
    #[must_use]
    pub fn breaker(mut self, config: BreakerConfig) -> Self {
        Arc::make_mut(&mut self.inner).breaker = Arc::new(Breaker::new(config, "cache"));
        self
    }

    /// The memory level.
    pub fn memory(&self) -> &MemoryStore {
        &self.inner.state.l1
    }
}

impl CacheStore for RedisCacheStore {
    fn get(&self, key: &CacheKey) -> Lookup {
        let inner = &self.inner;
        if let Lookup::Ready(Some(found)) = inner.state.l1.get(key) {
            return Lookup::Ready(Some(found));
        }
        let Some(guard) = inner.breaker.guard() else {
            fallback();
            return Lookup::Ready(None);
        };
        let (inner, key) = (Arc::clone(inner), key.clone());
        Lookup::Pending(Box::pin(async move {
            let name = inner.entry_name(&key);
            let clears = inner.state.clears.load(Ordering::Acquire);
            let mut connection = inner.redis.connection();
            let mut command = redis::cmd("HGET");
            command.arg(&name).arg("b");
            let call = command.query_async::<Option<Vec<u8>>>(&mut connection);
            let blob = match guard.run(&inner.redis, call).await {
                Ok(blob) => blob?,
                Err(error) => {
                    fallback();
                    tracing::debug!(%error, "tollgate redis: a cache read failed; a miss");
                    return None;
                }
            };
            match decode(Bytes::from(blob)) {
                Ok(variants) => inner.state.fill(key, variants, clears),
                Err(Malformed(why)) => {
                    tracing::debug!(why, "tollgate redis: an undecodable cache entry; a miss");
                    None
                }
            }
        }))
    }

    fn put(&self, key: CacheKey, response: Arc<CachedResponse>) {
        let l1 = &self.inner.state.l1;
        {
            // Requested from the upstream before a recent purge that names it (from another
            // instance: the layer refuses those across its own).
            let recent = lock(&self.inner.state.recent);
            if recent.dropped(&response) {
                tracing::debug!("tollgate redis: a recent purge names the response; not stored");
                return;
            }
            l1.put(key.clone(), response.clone());
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::debug!(
                "tollgate redis: no tokio runtime; the response is kept in memory only"
            );
            return;
        };
        // Every variant memory holds for the key, so Redis's copy has them all (or this one
        // alone, if memory is too small to keep it).
        let variants = match l1.get(&key) {
            Lookup::Ready(Some(variants)) => variants,
            _ => Arc::from([response]),
        };
        let Some(guard) = self.inner.breaker.guard() else {
            fallback();
            return;
        };
        let inner = Arc::clone(&self.inner);
        runtime.spawn(async move {
            let now = SystemTime::now();
            let variants: Vec<_> = {
                let recent = lock(&inner.state.recent);
                variants
                    .iter()
                    .filter(|v| v.usable_until() > now && !recent.dropped(v))
                    .cloned()
                    .collect()
            };
            let Some(last) = variants.iter().map(|v| v.usable_until()).max() else {
                return;
            };
            // Capped: a TTL Redis refuses would leave the entry without one.
            let ttl = last.duration_since(now).unwrap_or_default().min(MAX_TTL);
            let ttl = micros(ttl) / 1000;
            let Some(blob) = encode(&variants).filter(|_| ttl > 0) else {
                return;
            };
            let (resources, tags) = purge_fields(&variants);
            let name = inner.entry_name(&key);
            let mut connection = inner.redis.connection();
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("HSET")
                .arg(&name)
                .arg("b")
                .arg(blob)
                .arg("r")
                .arg(resources)
                .arg("t")
                .arg(tags)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&name)
                .arg(ttl)
                .ignore();
            let call = pipe.query_async::<()>(&mut connection);
            if let Err(error) = guard.run(&inner.redis, call).await {
                fallback();
                tracing::debug!(%error, "tollgate redis: a cache write failed; kept in memory only");
            }
        });
    }

    fn purge(&self, purge: &Purge) {
        let at = SystemTime::now();
        self.inner.state.purge_locally(at, purge);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                ?purge,
                "tollgate redis: no tokio runtime; the purge reaches neither Redis nor the other instances"
            );
            return;
        };
        let (inner, purge) = (Arc::clone(&self.inner), purge.clone());
        runtime.spawn(async move {
            if let Err(error) = inner.publish(at, &purge).await {
                tracing::warn!(?purge, %error, "tollgate redis: a cache purge was not sent to the other instances");
            }
            if let Err(error) = inner.delete(&purge).await {
                tracing::warn!(
                    ?purge,
                    %error,
                    "tollgate redis: a cache purge did not finish in Redis; entries it names may be served until they expire"
                );
            }
        });
    }
}

impl Inner {
    /// `<prefix>:cache:<hex of a keyed SHA-256 of the key>`.
    fn entry_name(&self, key: &CacheKey) -> String {
        use sha2::{Digest, Sha256};
        use std::fmt::Write as _;

        let digest = Sha256::new()
            .chain_update(&*self.redis.key_secret)
            .chain_update([0])
            .chain_update(key.as_bytes())
            .finalize();
        let mut name = String::with_capacity(self.entry_prefix.len() + 64);
        name.push_str(&self.entry_prefix);
        for byte in digest {
            let _ = write!(name, "{byte:02x}");
        }
        name
    }

    /// Whether `name` is one of this store's entries (and not, say, an entry of a store whose
    /// prefix is ours followed by `:cache`).
    fn is_entry(&self, name: &str) -> bool {
        name.strip_prefix(&*self.entry_prefix)
            .is_some_and(|hash| hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
    }

    async fn publish(&self, at: SystemTime, purge: &Purge) -> Result<(), String> {
        let guard = self.breaker.guard().ok_or_else(breaker_open)?;
        let mut connection = self.redis.connection();
        let mut command = redis::cmd("PUBLISH");
        command
            .arg(&self.channel)
            .arg(purge_message(self.state.origin, at, purge));
        let call = command.query_async::<i64>(&mut connection);
        guard.run(&self.redis, call).await.map(drop)
    }

    /// Deletes the entries `purge` names, a `SCAN` page at a time.
    async fn delete(&self, purge: &Purge) -> Result<(), String> {
        let pattern = format!("{}*", glob_escape(&self.entry_prefix));
        let mut connection = self.redis.connection();
        let mut cursor = 0_u64;
        let mut deleted = 0_usize;
        loop {
            let guard = self.breaker.guard().ok_or_else(breaker_open)?;
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT);
            let page = scan.query_async::<(u64, Vec<String>)>(&mut connection);
            let (next, mut names) = guard.run(&self.redis, page).await?;
            names.retain(|name| self.is_entry(name));
            if *purge != Purge::All && !names.is_empty() {
                let guard = self.breaker.guard().ok_or_else(breaker_open)?;
                let mut pipe = redis::pipe();
                for name in &names {
                    pipe.cmd("HMGET").arg(name).arg("r").arg("t");
                }
                let fields =
                    pipe.query_async::<Vec<(Option<String>, Option<String>)>>(&mut connection);
                let fields = guard.run(&self.redis, fields).await?;
                let mut fields = fields.into_iter();
                names.retain(|_| match fields.next() {
                    Some((Some(resources), tags)) => {
                        let tags = tags.unwrap_or_default();
                        resources
                            .split('\n')
                            .any(|resource| purge.matches(resource, tags.split('\n')))
                    }
                    _ => false,
                });
            }
            if !names.is_empty() {
                let guard = self.breaker.guard().ok_or_else(breaker_open)?;
                let mut del = redis::cmd("DEL");
                del.arg(&names);
                let del = del.query_async::<usize>(&mut connection);
                deleted += guard.run(&self.redis, del).await?;
            }
            if next == 0 {
                tracing::debug!(?purge, deleted, "tollgate redis: cache purge done in Redis");
                return Ok(());
            }
            cursor = next;
        }
    }
}

impl State {
    /// Drops what `purge`, made at `at`, names from memory, and remembers it so that entries
    /// Redis still holds are not read back before the purge's delete there is done.
    fn purge_locally(&self, at: SystemTime, purge: &Purge) {
        let mut recent = lock(&self.recent);
        recent.record(at, purge.clone());
        self.l1.purge(purge);
    }

    /// Empties memory: purges may have been missed.
    fn clear(&self) {
        let _recent = lock(&self.recent);
        self.clears.fetch_add(1, Ordering::AcqRel);
        self.l1.purge(&Purge::All);
    }

    /// Keeps the variants read from Redis that can still be used and that no recent purge
    /// names, in memory too unless memory was emptied since the read began.
    fn fill(
        &self,
        key: CacheKey,
        mut variants: Vec<Arc<CachedResponse>>,
        clears: u64,
    ) -> Option<Variants> {
        let now = SystemTime::now();
        // Held while memory is filled, so that a purge comes wholly before or after.
        let mut recent = lock(&self.recent);
        recent.forget_before(now);
        variants.retain(|v| v.usable_until() > now && !recent.dropped(v));
        if variants.is_empty() {
            return None;
        }
        let variants: Variants = variants.into();
        if self.clears.load(Ordering::Acquire) == clears {
            self.l1.put_variants(key, variants.clone());
        }
        Some(variants)
    }

    /// A purge another instance published.
    fn received(&self, payload: &[u8]) {
        match parse_purge_message(payload) {
            Some((origin, ..)) if origin == self.origin => {}
            Some((_, sent_at, purge)) => {
                tracing::debug!(
                    ?purge,
                    "tollgate redis: a cache purge from another instance"
                );
                self.purge_locally(purge_time(sent_at, SystemTime::now()), &purge);
            }
            None => tracing::debug!("tollgate redis: an unreadable cache purge message; ignored"),
        }
    }
}

/// When a purge received at `now` counts as made: `stored_at` comes from the clock of the
/// instance that stored the response, so the later of the purging instance's time and ours
/// (a clock ahead by more than [`MAX_CLOCK_AHEAD`] counts as that far ahead, so a broken
/// clock cannot stop entries from being stored for long).
fn purge_time(sent_at: Option<SystemTime>, now: SystemTime) -> SystemTime {
    sent_at.map_or(now, |at| at.clamp(now, now + MAX_CLOCK_AHEAD))
}

/// Purges made or received lately, with when.
#[derive(Default)]
struct RecentPurges {
    purges: VecDeque<(SystemTime, Purge)>,
}

impl RecentPurges {
    fn record(&mut self, at: SystemTime, purge: Purge) {
        self.forget_before(at);
        if self.purges.len() >= RECENT_PURGE_MAX {
            self.purges.pop_front();
        }
        self.purges.push_back((at, purge));
    }

    fn forget_before(&mut self, now: SystemTime) {
        // Not in time order: a purge from another instance may be dated ahead of ours.
        self.purges
            .retain(|(at, _)| *at + RECENT_PURGE_WINDOW >= now);
    }

    /// Whether a recent purge names `response`, stored before it.
    fn dropped(&self, response: &CachedResponse) -> bool {
        self.purges
            .iter()
            .any(|(at, purge)| response.stored_at <= *at && purge.drops(response))
    }
}

/// Listens for other instances' purges until the store is dropped, reconnecting with backoff,
/// and empties memory after every subscription.
async fn listen(state: Weak<State>, client: redis::Client, channel: String, timeout: Duration) {
    let mut backoff = FIRST_BACKOFF;
    let (mut subscribed_before, mut failing) = (false, false);
    loop {
        let attempt = tokio::time::timeout(timeout, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await
        .unwrap_or_else(|_| {
            Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "no answer within the timeout",
            )))
        });
        match attempt {
            Ok(pubsub) => {
                let Some(store) = state.upgrade() else { return };
                store.clear();
                drop(store);
                if subscribed_before {
                    tracing::info!(
                        %channel,
                        "tollgate redis: resubscribed to cache purges; the memory level was emptied"
                    );
                } else {
                    tracing::debug!(%channel, "tollgate redis: subscribed to cache purges");
                }
                (subscribed_before, failing, backoff) = (true, false, FIRST_BACKOFF);
                let lost = receive(&state, pubsub, timeout.max(PING_TIMEOUT)).await;
                let Some(why) = lost else { return };
                tracing::warn!(
                    %channel,
                    %why,
                    "tollgate redis: the cache purge subscription was lost; reconnecting"
                );
            }
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(%channel, %error, "tollgate redis: cannot subscribe to cache purges; retrying");
            }
            Err(error) => {
                tracing::debug!(%channel, %error, "tollgate redis: cannot subscribe to cache purges");
            }
        }
        if state.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Hands the purges `pubsub` receives to the store, sending a `PING` every [`PING_EVERY`]:
/// a connection that stops answering (a partition that never resets it) counts as lost.
/// Returns why it was lost, or `None` once the store is dropped.
async fn receive(
    state: &Weak<State>,
    pubsub: redis::aio::PubSub,
    ping_timeout: Duration,
) -> Option<String> {
    let (mut sink, mut messages) = pubsub.split();
    let mut next_ping = tokio::time::Instant::now() + PING_EVERY;
    loop {
        match tokio::time::timeout_at(next_ping, messages.next()).await {
            Ok(Some(message)) => state.upgrade()?.received(message.get_payload_bytes()),
            Ok(None) => return Some("the connection closed".to_owned()),
            Err(_) => {
                let ping = sink.ping::<redis::Value>();
                match tokio::time::timeout(ping_timeout, ping).await {
                    Ok(Ok(_)) => next_ping = tokio::time::Instant::now() + PING_EVERY,
                    Ok(Err(error)) => return Some(format!("a PING failed: {error}")),
                    Err(_) => return Some(format!("no answer to a PING within {ping_timeout:?}")),
                }
                state.upgrade()?;
            }
        }
    }
}

/// `<origin, 16 hex digits> <purge time, microseconds since the Unix epoch> <A|R|P|T>
/// <resource, prefix or tag>`.
fn purge_message(origin: u64, at: SystemTime, purge: &Purge) -> String {
    let (kind, value) = match purge {
        Purge::All => ('A', ""),
        Purge::Resource(resource) => ('R', &**resource),
        Purge::Prefix(prefix) => ('P', &**prefix),
        Purge::Tag(tag) => ('T', &**tag),
    };
    let at = micros(at.duration_since(UNIX_EPOCH).unwrap_or_default());
    format!("{origin:016x} {at} {kind} {value}")
}

/// A purge another instance published: its origin, when it was made by that instance's
/// clock (`None` if the message does not say, as before the time was sent, or says nonsense),
/// and what it purges.
fn parse_purge_message(payload: &[u8]) -> Option<(u64, Option<SystemTime>, Purge)> {
    let text = std::str::from_utf8(payload).ok()?;
    let (origin, rest) = text.split_once(' ')?;
    let origin = u64::from_str_radix(origin, 16).ok()?;
    // A kind is one letter, never a number.
    let (at, rest) = match rest.split_once(' ') {
        Some((at, rest)) if !at.is_empty() && at.bytes().all(|b| b.is_ascii_digit()) => {
            let at = at.parse().ok().map(Duration::from_micros);
            (at.and_then(|at| UNIX_EPOCH.checked_add(at)), rest)
        }
        _ => (None, rest),
    };
    let (kind, value) = rest.split_once(' ')?;
    let purge = match kind {
        "A" => Purge::All,
        // Already normalized by the instance that made it.
        "R" => Purge::Resource(value.into()),
        "P" => Purge::Prefix(value.into()),
        "T" => Purge::Tag(value.into()),
        _ => return None,
    };
    Some((origin, at, purge))
}

/// The fields purges match in Redis: every variant's resource and every tag, one a line
/// (neither a request target nor a tag can hold a line break). A purge matching any of them
/// drops the whole entry, as it does in memory.
fn purge_fields(variants: &[Arc<CachedResponse>]) -> (String, String) {
    let mut resources: Vec<&str> = Vec::new();
    let mut tags: Vec<&str> = Vec::new();
    for variant in variants {
        if !resources.contains(&&*variant.resource) {
            resources.push(&variant.resource);
        }
        for tag in variant.tags.iter() {
            if !tags.contains(&&**tag) {
                tags.push(tag);
            }
        }
    }
    (resources.join("\n"), tags.join("\n"))
}

fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

fn fallback() {
    metrics::counter!("tollgate_redis_fallbacks_total", "store" => "cache").increment(1);
}

fn breaker_open() -> String {
    fallback();
    "Redis is failing; the breaker is open".to_owned()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn random_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// The first byte of every entry: a format this version cannot read is a miss.
const FORMAT: u8 = 1;

/// Why bytes from Redis are not an entry.
#[derive(Debug, PartialEq, Eq)]
struct Malformed(&'static str);

/// An entry's variants, in a compact binary form (little-endian; a length before every
/// field of variable size; times in microseconds since the Unix epoch). `None` when a field
/// is too large for its length.
fn encode(variants: &[Arc<CachedResponse>]) -> Option<Vec<u8>> {
    let size: usize = variants.iter().map(|v| v.weight()).sum();
    let mut out = Vec::with_capacity(size);
    out.push(FORMAT);
    out.push(u8::try_from(variants.len()).ok()?);
    for variant in variants {
        out.extend_from_slice(&variant.status.as_u16().to_le_bytes());
        out.extend_from_slice(&u32::try_from(variant.headers.len()).ok()?.to_le_bytes());
        for (name, value) in &variant.headers {
            short(&mut out, name.as_str().as_bytes())?;
            long(&mut out, value.as_bytes())?;
        }
        long(&mut out, &variant.body)?;
        out.extend_from_slice(&u16::try_from(variant.vary.len()).ok()?.to_le_bytes());
        for (name, values) in variant.vary.iter() {
            short(&mut out, name.as_str().as_bytes())?;
            out.extend_from_slice(&u16::try_from(values.len()).ok()?.to_le_bytes());
            for value in values.iter() {
                long(&mut out, value.as_bytes())?;
            }
        }
        long(&mut out, variant.resource.as_bytes())?;
        out.extend_from_slice(&u16::try_from(variant.tags.len()).ok()?.to_le_bytes());
        for tag in variant.tags.iter() {
            short(&mut out, tag.as_bytes())?;
        }
        for time in [
            variant.stored_at,
            variant.fresh_until,
            variant.stale_while_revalidate_until,
            variant.stale_if_error_until,
        ] {
            let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
            out.extend_from_slice(&micros(since).to_le_bytes());
        }
        out.extend_from_slice(&micros(variant.initial_age).to_le_bytes());
    }
    Some(out)
}

fn short(out: &mut Vec<u8>, bytes: &[u8]) -> Option<()> {
    out.extend_from_slice(&u16::try_from(bytes.len()).ok()?.to_le_bytes());
    out.extend_from_slice(bytes);
    Some(())
}

fn long(out: &mut Vec<u8>, bytes: &[u8]) -> Option<()> {
    out.extend_from_slice(&u32::try_from(bytes.len()).ok()?.to_le_bytes());
    out.extend_from_slice(bytes);
    Some(())
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// Reads what [`encode`] wrote; any other bytes are refused, never a panic. Bodies share the
/// blob's memory.
fn decode(blob: Bytes) -> Result<Vec<Arc<CachedResponse>>, Malformed> {
    let mut reader = Reader { blob, at: 0 };
    if reader.u8()? != FORMAT {
        return Err(Malformed("an unknown format"));
    }
    let count = usize::from(reader.u8()?);
    if count > MAX_VARIANTS {
        return Err(Malformed("more variants than a key holds"));
    }
    let mut variants = Vec::with_capacity(count);
    for _ in 0..count {
        variants.push(Arc::new(reader.variant()?));
    }
    if reader.at != reader.blob.len() {
        return Err(Malformed("bytes after the last variant"));
    }
    Ok(variants)
}

struct Reader {
    blob: Bytes,
    at: usize,
}

impl Reader {
    fn take(&mut self, len: usize) -> Result<Bytes, Malformed> {
        if len > self.blob.len() - self.at {
            return Err(Malformed("truncated"));
        }
        let taken = self.blob.slice(self.at..self.at + len);
        self.at += len;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Malformed> {
        let bytes = self.take(N)?;
        let mut array = [0; N];
        array.copy_from_slice(&bytes);
        Ok(array)
    }

    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, Malformed> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, Malformed> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, Malformed> {
        self.array().map(u64::from_le_bytes)
    }

    fn short(&mut self) -> Result<Bytes, Malformed> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    fn long(&mut self) -> Result<Bytes, Malformed> {
        let len = self.u32()?;
        self.take(usize::try_from(len).map_err(|_| Malformed("a length past memory"))?)
    }

    fn name(&mut self) -> Result<HeaderName, Malformed> {
        HeaderName::from_bytes(&self.short()?).map_err(|_| Malformed("an invalid header name"))
    }

    fn value(&mut self) -> Result<HeaderValue, Malformed> {
        HeaderValue::from_maybe_shared(self.long()?)
            .map_err(|_| Malformed("an invalid header value"))
    }

    fn text(bytes: Bytes) -> Result<Box<str>, Malformed> {
        std::str::from_utf8(&bytes)
            .map(Box::from)
            .map_err(|_| Malformed("text that is not UTF-8"))
    }

    fn time(&mut self) -> Result<SystemTime, Malformed> {
        UNIX_EPOCH
            .checked_add(Duration::from_micros(self.u64()?))
            .ok_or(Malformed("a time out of range"))
    }

    fn variant(&mut self) -> Result<CachedResponse, Malformed> {
        let status =
            StatusCode::from_u16(self.u16()?).map_err(|_| Malformed("an invalid status"))?;
        let mut headers = HeaderMap::new();
        for _ in 0..self.u32()? {
            let (name, value) = (self.name()?, self.value()?);
            headers
                .try_append(name, value)
                .map_err(|_| Malformed("too many headers"))?;
        }
        let body = self.long()?;
        let mut vary = Vec::new();
        for _ in 0..self.u16()? {
            let name = self.name()?;
            let mut values = Vec::new();
            for _ in 0..self.u16()? {
                values.push(self.value()?);
            }
            vary.push((name, values.into_boxed_slice()));
        }
        let resource = Self::text(self.long()?)?;
        let mut tags = Vec::new();
        for _ in 0..self.u16()? {
            tags.push(Self::text(self.short()?)?);
        }
        let stored_at = self.time()?;
        let fresh_until = self.time()?;
        let stale_while_revalidate_until = self.time()?;
        let stale_if_error_until = self.time()?;
        let initial_age = Duration::from_micros(self.u64()?);
        Ok(CachedResponse {
            status,
            headers,
            body,
            vary: vary.into_boxed_slice(),
            resource,
            tags: tags.into_boxed_slice(),
            stored_at,
            initial_age,
            fresh_until,
            stale_while_revalidate_until,
            stale_if_error_until,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(vary_value: &str, tags: &[&str]) -> Arc<CachedResponse> {
        let stored_at = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("set-thing", HeaderValue::from_static("one"));
        headers.append("set-thing", HeaderValue::from_static("two"));
        headers.insert(
            "x-opaque",
            HeaderValue::from_bytes(b"\xfe\x80 bytes").unwrap(),
        );
        Arc::new(CachedResponse {
            status: StatusCode::NON_AUTHORITATIVE_INFORMATION,
            headers,
            body: Bytes::from(format!("{{\"lang\":\"{vary_value}\"}}")),
            vary: vec![
                (
                    HeaderName::from_static("accept-language"),
                    vec![HeaderValue::from_str(vary_value).unwrap()].into_boxed_slice(),
                ),
                (HeaderName::from_static("accept-encoding"), Box::from([])),
            ]
            .into_boxed_slice(),
            resource: "/items?b=2&a=1".into(),
            tags: tags.iter().map(|t| Box::from(*t)).collect(),
            stored_at,
            initial_age: Duration::from_secs(3),
            fresh_until: stored_at + Duration::from_secs(60),
            stale_while_revalidate_until: stored_at + Duration::from_secs(70),
            stale_if_error_until: stored_at + Duration::from_secs(600),
        })
    }

    fn same(a: &CachedResponse, b: &CachedResponse) {
        assert_eq!(a.status, b.status);
        assert_eq!(a.headers, b.headers);
        assert_eq!(a.body, b.body);
        assert_eq!(a.vary, b.vary);
        assert_eq!(a.resource, b.resource);
        assert_eq!(a.tags, b.tags);
        assert_eq!(a.stored_at, b.stored_at);
        assert_eq!(a.initial_age, b.initial_age);
        assert_eq!(a.fresh_until, b.fresh_until);
        assert_eq!(
            a.stale_while_revalidate_until,
            b.stale_while_revalidate_until
        );
        assert_eq!(a.stale_if_error_until, b.stale_if_error_until);
    }

    #[test]
    fn variants_with_vary_and_tags_survive_a_round_trip() {
        let variants = [response("en", &["items", "item-1"]), response("fr", &[])];
        let blob = encode(&variants).unwrap();
        let decoded = decode(Bytes::from(blob)).unwrap();
        assert_eq!(decoded.len(), 2);
        for (before, after) in variants.iter().zip(&decoded) {
            same(before, after);
        }
        let mut request = HeaderMap::new();
        request.insert("accept-language", HeaderValue::from_static("fr"));
        assert!(!decoded[0].matches(&request) && decoded[1].matches(&request));
    }

    #[test]
    fn truncated_or_random_bytes_are_refused_without_panicking() {
        let blob = encode(&[response("en", &["t"]), response("de", &[])]).unwrap();
        for len in 0..blob.len() {
            assert!(
                decode(Bytes::copy_from_slice(&blob[..len])).is_err(),
                "{len} bytes"
            );
        }
        let mut longer = blob.clone();
        longer.push(0);
        assert_eq!(
            decode(Bytes::from(longer)).unwrap_err(),
            Malformed("bytes after the last variant")
        );
        // A small xorshift, so the inputs are the same on every run.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..20_000 {
            let mut bytes = if round % 2 == 0 {
                // The real entry with a few bytes changed: gets past the first checks.
                blob.clone()
            } else {
                let len = usize::try_from(next() % 512).unwrap();
                (0..len).map(|_| next() as u8).collect()
            };
            if !bytes.is_empty() {
                for _ in 0..1 + next() % 4 {
                    let at = usize::try_from(next()).unwrap() % bytes.len();
                    bytes[at] = next() as u8;
                }
            }
            if round % 2 == 1 && !bytes.is_empty() {
                bytes[0] = FORMAT;
            }
            // Must not panic; a changed byte in a body may still decode, which is fine.
            let _ = decode(Bytes::from(bytes));
        }
        assert_eq!(
            decode(Bytes::from_static(&[2, 0])).unwrap_err(),
            Malformed("an unknown format")
        );
    }

    #[test]
    fn purge_messages_read_back_as_sent() {
        let at = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        for purge in [
            Purge::All,
            Purge::resource("/items?b=2&a=1"),
            Purge::Prefix("/items/".into()),
            Purge::Tag("a tag with spaces".into()),
            Purge::Tag("1234".into()),
        ] {
            let message = purge_message(0xabc, at, &purge);
            assert_eq!(
                parse_purge_message(message.as_bytes()),
                Some((0xabc, Some(at), purge))
            );
        }
        assert_eq!(parse_purge_message(b"zz 1 A "), None);
        assert_eq!(parse_purge_message(b"01 1 X /"), None);
        assert_eq!(parse_purge_message(b"01 1"), None);
        assert_eq!(parse_purge_message(b"01"), None);
        assert_eq!(parse_purge_message(b"\xff A "), None);
    }

    #[test]
    fn a_purge_message_without_a_readable_time_is_dated_on_arrival() {
        // Without a time, as sent before it was.
        assert_eq!(
            parse_purge_message(b"00000000000000ab R /a b"),
            Some((0xab, None, Purge::Resource("/a b".into())))
        );
        assert_eq!(
            parse_purge_message(b"00000000000000ab A "),
            Some((0xab, None, Purge::All))
        );
        // Past what a u64 holds.
        assert_eq!(
            parse_purge_message(b"01 99999999999999999999999 T t"),
            Some((1, None, Purge::Tag("t".into())))
        );
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(purge_time(None, now), now);
        // Half a million years ahead: as far ahead as is believed.
        let message = format!("01 {} T t", u64::MAX);
        let (_, far, _) = parse_purge_message(message.as_bytes()).unwrap();
        assert_eq!(purge_time(far, now), now + MAX_CLOCK_AHEAD);
    }

    #[test]
    fn a_purge_is_dated_by_the_later_clock_within_reason() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let behind = now - Duration::from_secs(30);
        let ahead = now + Duration::from_secs(3);
        assert_eq!(purge_time(Some(behind), now), now);
        assert_eq!(purge_time(Some(ahead), now), ahead);
        assert_eq!(
            purge_time(Some(now + Duration::from_secs(3600)), now),
            now + MAX_CLOCK_AHEAD
        );

        // An entry stored 2 s before the purge by the purging instance's clock, 1 s after the
        // purge came by ours: still dropped.
        let stored_at = ahead - Duration::from_secs(2);
        let mut entry = (*response("en", &["items"])).clone();
        entry.stored_at = stored_at;
        let mut recent = RecentPurges::default();
        recent.record(purge_time(Some(ahead), now), Purge::Tag("items".into()));
        assert!(recent.dropped(&entry));

        // Forgotten by age, whatever the order they came in.
        let mut recent = RecentPurges::default();
        recent.record(now + MAX_CLOCK_AHEAD, Purge::All);
        recent.record(now, Purge::Tag("items".into()));
        recent.forget_before(now + RECENT_PURGE_WINDOW + Duration::from_secs(1));
        assert_eq!(recent.purges.len(), 1);
        assert_eq!(recent.purges[0].1, Purge::All);
    }

    #[test]
    fn a_recent_purge_drops_only_what_it_names_stored_before_it() {
        let old = response("en", &["items"]);
        let mut recent = RecentPurges::default();
        recent.record(
            old.stored_at + Duration::from_secs(1),
            Purge::Tag("items".into()),
        );
        assert!(recent.dropped(&old));
        let mut newer = (*old).clone();
        newer.stored_at += Duration::from_secs(2);
        assert!(!recent.dropped(&newer));
        let mut other = (*old).clone();
        other.tags = Box::from([]);
        assert!(!recent.dropped(&other));
        recent.forget_before(old.stored_at + Duration::from_secs(12));
        assert!(!recent.dropped(&old));
    }

    #[test]
    fn purge_fields_list_every_resource_and_tag_once() {
        let (resources, tags) =
            purge_fields(&[response("en", &["a", "b"]), response("fr", &["b", "c"])]);
        assert_eq!(resources, "/items?b=2&a=1");
        assert_eq!(tags, "a\nb\nc");
        assert!(Purge::resource("/items?a=1&b=2").matches(&resources, tags.split('\n')));
        assert!(Purge::Tag("c".into()).matches(&resources, tags.split('\n')));
        assert!(!Purge::Tag("d".into()).matches(&resources, tags.split('\n')));
    }
}
