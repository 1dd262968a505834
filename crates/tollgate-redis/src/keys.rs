//! `RedisKeyStore`: API keys in Redis (their hashes, never a secret), so a key created,
//! changed or revoked through one gateway instance is seen by every instance on its next
//! request.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use tollgate_usage::{ApiKey, Found, KeyRecord, KeyStore, StoreError};

use crate::breaker::{Breaker, BreakerConfig};
use crate::connection::Redis;

/// Stores a key unless its id is taken. KEYS: the key, the index. ARGV: the record, the id.
const INSERT: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('ZADD', KEYS[2], 0, ARGV[2])
  return 1
end
return 0
";

/// Stores a key, replacing any with its id. KEYS: the key, the index. ARGV: the record, the id.
const PUT: &str = r"
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], 0, ARGV[2])
return 1
";

/// Replaces a key only if it is still as it was read. KEYS: the key. ARGV: the record read,
/// the new record. Returns 1 when replaced, 0 when it changed meanwhile, -1 when it is gone.
const REPLACE: &str = r"
local current = redis.call('GET', KEYS[1])
if not current then
  return -1
end
if current ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
return 1
";

/// Removes a key. KEYS: the key, the index. ARGV: the id. Returns how many keys were removed.
const REMOVE: &str = r"
local removed = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return removed
";

/// Keys whose last parse is kept by default, so a lookup of an unchanged key parses nothing.
const PARSED_KEYS: usize = 10_000;

/// How long an update keeps trying while other writers change the key between its read and
/// its write. A deadline rather than a number of tries: of n edits at once, one wins a round,
/// so a fixed number of tries would fail edits as soon as enough admins (or instances) edit
/// one key at once.
const UPDATE_PATIENCE: Duration = Duration::from_secs(5);

/// The longest wait before an update tries again.
const UPDATE_BACKOFF_CAP: Duration = Duration::from_millis(100);

/// API keys in Redis: settings and hashes as JSON [`KeyRecord`]s under `<prefix>:key:<id>`,
/// and the ids in a sorted set, `<prefix>:keys`, for listing.
///
/// Every request's key lookup is one `GET`, so a key created, disabled, rotated or revoked on
/// one instance is seen by all on their next request; the parsed key is reused while the
/// stored record is unchanged, so a lookup costs one round trip and no parsing. Changes are
/// atomic across instances: inserts do not overwrite (`SET NX`), and an update replaces the
/// record only if it is still as it was read, trying again otherwise, so two admins' edits
/// at once do not lose one and a key revoked meanwhile stays revoked.
///
/// While Redis cannot answer, lookups fail and the usage layer refuses with 503, unless
/// [`remember_keys`](Self::remember_keys) is set: then keys this instance looked up before
/// keep working as last seen (a revocation made during the outage is seen once Redis is back).
///
/// Keys have no TTL and live only in Redis: give it persistence (AOF or RDB) and a
/// `volatile-*` eviction policy, never `allkeys-*`, or a restart or an eviction loses keys
/// and their clients get 401.
///
/// # Example
///
/// ```no_run
/// use tollgate_redis::{Redis, RedisKeyStore, RedisQuotaStore, RedisThrottleStore};
/// use tollgate_usage::{NewKey, UsagePlan, UsagePlans};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let redis = Redis::connect("redis://127.0.0.1:6379").await?;
/// let plans = UsagePlans::builder()
///     .plan(UsagePlan::new("basic"))
///     .build_with(
///         RedisKeyStore::new(redis.clone()).remember_keys(10_000),
///         RedisQuotaStore::new(redis.clone()),
///         |rules, clock| RedisThrottleStore::new(redis.clone(), rules, clock),
///     )?;
/// // Seen by every instance using the same Redis and prefix from their next request on.
/// let (key, secret) = plans.create_key(NewKey::new("basic").name("Acme")).await?;
/// # let _ = (key, secret); Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisKeyStore {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    redis: Redis,
    index: String,
    insert: redis::Script,
    put: redis::Script,
    replace: redis::Script,
    remove: redis::Script,
    /// The last record read of each key and the key parsed from it.
    seen: Arc<Seen>,
    /// Whether `seen` answers while Redis cannot.
    remember: bool,
    breaker: Arc<Breaker>,
}

/// Records read lately and the keys parsed from them, bounded (moka: the least valuable go
/// first).
struct Seen {
    keys: moka::sync::Cache<Arc<str>, Parsed>,
}

/// A record as read, and the key parsed from it.
type Parsed = (Arc<str>, Arc<ApiKey>);

impl Seen {
    fn new(capacity: usize) -> Self {
        Self {
            keys: moka::sync::Cache::new(u64::try_from(capacity).unwrap_or(u64::MAX)),
        }
    }

    fn get(&self, id: &str) -> Option<Parsed> {
        self.keys.get(id)
    }

    fn put(&self, id: &str, record: Arc<str>, key: Arc<ApiKey>) {
        self.keys.insert(Arc::from(id), (record, key));
    }

    fn forget(&self, id: &str) {
        self.keys.invalidate(id);
    }
}

impl fmt::Debug for RedisKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisKeyStore")
            .field("redis", &self.inner.redis)
            .field("remember_keys", &self.inner.remember)
            .field("breaker_open", &self.inner.breaker.is_open())
            .finish_non_exhaustive()
    }
}

impl RedisKeyStore {
    /// Keys in `redis`, under its prefix.
    pub fn new(redis: Redis) -> Self {
        let index = format!("{}:keys", redis.prefix);
        Self {
            inner: Arc::new(Inner {
                redis,
                index,
                insert: redis::Script::new(INSERT),
                put: redis::Script::new(PUT),
                replace: redis::Script::new(REPLACE),
                remove: redis::Script::new(REMOVE),
                seen: Arc::new(Seen::new(PARSED_KEYS)),
                remember: false,
                breaker: Arc::new(Breaker::new(BreakerConfig::default(), "keys")),
            }),
        }
    }

    /// While Redis cannot answer, keeps up to `keys` keys this instance has looked up working
    /// as they were last seen, rather than refusing every request with 503. Off by default
    /// (zero), since a key revoked during an outage would keep working on instances that saw
    /// it. When the table is full, the least valuable remembered key makes room for the next.
    #[must_use]
    pub fn remember_keys(self, keys: usize) -> Self {
        self.rebuild(|inner| {
            // Zero turns remembering off and keeps the default table for parsed keys.
            inner.seen = Arc::new(Seen::new(if keys == 0 { PARSED_KEYS } else { keys }));
            inner.remember = keys > 0;
        })
    }

    /// When the circuit breaker opens and for how long (default: 3 failures in a row, 1 s).
    #[must_use]
    pub fn breaker(self, config: BreakerConfig) -> Self {
        self.rebuild(|inner| inner.breaker = Arc::new(Breaker::new(config, "keys")))
    }

    fn rebuild(mut self, change: impl FnOnce(&mut Inner)) -> Self {
        change(Arc::make_mut(&mut self.inner));
        self
    }
}

impl Inner {
    fn key_name(&self, id: &str) -> String {
        format!("{}:key:{id}", self.redis.prefix)
    }

    fn connection(&self) -> ConnectionManager {
        self.redis.connection()
    }

    /// The key parsed from `record`, reusing the last parse while the record is unchanged.
    fn parse(&self, id: &str, record: String) -> Result<Arc<ApiKey>, StoreError> {
        if let Some((last, key)) = self.seen.get(id) {
            if *last == *record {
                return Ok(key);
            }
        }
        let key = Arc::new(decode(&record)?);
        self.seen.put(id, record.into(), key.clone());
        Ok(key)
    }

    /// The answer while Redis cannot give one.
    fn remembered(&self, id: &str, why: String) -> Result<Option<Arc<ApiKey>>, StoreError> {
        metrics::counter!("tollgate_redis_fallbacks_total", "store" => "keys").increment(1);
        match self.seen.get(id) {
            Some((_, key)) if self.remember => Ok(Some(key)),
            _ => Err(StoreError(why.into())),
        }
    }
}

fn encode(key: &ApiKey) -> Result<String, StoreError> {
    serde_json::to_string(&key.record()).map_err(|error| StoreError(Box::new(error)))
}

fn decode(record: &str) -> Result<ApiKey, StoreError> {
    let record: KeyRecord =
        serde_json::from_str(record).map_err(|error| StoreError(Box::new(error)))?;
    ApiKey::try_from(record).map_err(|error| StoreError(Box::new(error)))
}

/// A random wait of up to 1 ms doubled with each `attempt` lost, at most
/// [`UPDATE_BACKOFF_CAP`].
fn backoff(attempt: u32) -> Duration {
    use std::hash::{BuildHasher, Hasher};

    let ceiling = Duration::from_millis(1 << attempt.min(16)).min(UPDATE_BACKOFF_CAP);
    // A fresh `RandomState` is a fresh random key: enough randomness for a jitter.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(attempt);
    let micros = u64::try_from(ceiling.as_micros())
        .unwrap_or(u64::MAX)
        .max(1);
    Duration::from_micros(hasher.finish() % micros + 1)
}

fn failed(error: redis::RedisError) -> StoreError {
    StoreError(Box::new(error))
}

/// The future of one key lookup in Redis.
pub type RedisGet = Pin<Box<dyn Future<Output = Result<Option<Arc<ApiKey>>, StoreError>> + Send>>;

impl KeyStore for RedisKeyStore {
    type Get = RedisGet;

    fn get(&self, id: &str) -> Found<Option<Arc<ApiKey>>, RedisGet> {
        let inner = Arc::clone(&self.inner);
        let Some(guard) = inner.breaker.guard() else {
            return Found::Ready(
                inner.remembered(id, "Redis is failing; the breaker is open".to_owned()),
            );
        };
        let (id, name) = (id.to_owned(), inner.key_name(id));
        Found::Pending(Box::pin(async move {
            let mut connection = inner.connection();
            let mut command = redis::cmd("GET");
            command.arg(name);
            let call = command.query_async::<Option<String>>(&mut connection);
            match guard.run(&inner.redis, call).await {
                Ok(Some(record)) => inner.parse(&id, record).map(Some),
                Ok(None) => {
                    inner.seen.forget(&id);
                    Ok(None)
                }
                Err(failure) => {
                    tracing::warn!(error = %failure, "tollgate redis: a key lookup failed");
                    inner.remembered(&id, failure)
                }
            }
        }))
    }

    fn insert(&self, key: ApiKey) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let inner = Arc::clone(&self.inner);
        async move {
            let record = encode(&key)?;
            let mut invocation = inner.insert.key(inner.key_name(key.id()));
            invocation.key(&inner.index).arg(record).arg(key.id());
            let inserted: i64 = invocation
                .invoke_async(&mut inner.connection())
                .await
                .map_err(failed)?;
            Ok(inserted == 1)
        }
    }

    fn put(&self, key: ApiKey) -> impl Future<Output = Result<(), StoreError>> + Send {
        let inner = Arc::clone(&self.inner);
        async move {
            let record = encode(&key)?;
            let mut invocation = inner.put.key(inner.key_name(key.id()));
            invocation.key(&inner.index).arg(record).arg(key.id());
            invocation
                .invoke_async::<i64>(&mut inner.connection())
                .await
                .map_err(failed)?;
            Ok(())
        }
    }

    fn update<F>(
        &self,
        id: &str,
        edit: F,
    ) -> impl Future<Output = Result<Option<Arc<ApiKey>>, StoreError>> + Send
    where
        F: Fn(&ApiKey) -> ApiKey + Send,
    {
        let inner = Arc::clone(&self.inner);
        let (id, name) = (id.to_owned(), inner.key_name(id));
        async move {
            let mut connection = inner.connection();
            let deadline = tokio::time::Instant::now() + UPDATE_PATIENCE;
            for attempt in 0.. {
                if attempt > 0 {
                    if tokio::time::Instant::now() >= deadline {
                        break;
                    }
                    // Writers that lost a race wait a random while before reading again, so
                    // that they do not all read the same record and lose once more.
                    tokio::time::sleep(backoff(attempt)).await;
                }
                let Some(read) = redis::cmd("GET")
                    .arg(&name)
                    .query_async::<Option<String>>(&mut connection)
                    .await
                    .map_err(failed)?
                else {
                    return Ok(None);
                };
                let edited = edit(&decode(&read)?);
                let mut invocation = inner.replace.key(&name);
                invocation.arg(&read).arg(encode(&edited)?);
                match invocation
                    .invoke_async::<i64>(&mut connection)
                    .await
                    .map_err(failed)?
                {
                    1 => return Ok(Some(Arc::new(edited))),
                    -1 => return Ok(None),
                    // Changed by another instance between the read and the write: again.
                    _ => {}
                }
            }
            Err(StoreError(
                format!("key {id:?} kept changing; the update was not made").into(),
            ))
        }
    }

    fn remove(&self, id: &str) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let inner = Arc::clone(&self.inner);
        let id = id.to_owned();
        async move {
            let mut invocation = inner.remove.key(inner.key_name(&id));
            invocation.key(&inner.index).arg(&id);
            let removed: i64 = invocation
                .invoke_async(&mut inner.connection())
                .await
                .map_err(failed)?;
            inner.seen.forget(&id);
            Ok(removed > 0)
        }
    }

    fn list(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Arc<ApiKey>>, StoreError>> + Send {
        let inner = Arc::clone(&self.inner);
        let start = after.map_or_else(|| "-".to_owned(), |after| format!("({after}"));
        async move {
            if limit == 0 {
                return Ok(Vec::new());
            }
            let mut connection = inner.connection();
            let ids: Vec<String> = redis::cmd("ZRANGEBYLEX")
                .arg(&inner.index)
                .arg(start)
                .arg("+")
                .arg("LIMIT")
                .arg(0)
                .arg(limit)
                .query_async(&mut connection)
                .await
                .map_err(failed)?;
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let names: Vec<String> = ids.iter().map(|id| inner.key_name(id)).collect();
            let records: Vec<Option<String>> = redis::cmd("MGET")
                .arg(names)
                .query_async(&mut connection)
                .await
                .map_err(failed)?;
            // A key removed between the two reads is left out.
            records
                .into_iter()
                .flatten()
                .map(|record| decode(&record).map(Arc::new))
                .collect()
        }
    }
}
