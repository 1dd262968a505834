//! `RedisQuotaStore`: quota counters and daily usage in Redis, exact across every gateway
//! instance.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use tollgate_usage::{
    Day, Found, MemoryQuotaStore, QuotaStore, StoreError, Take, Window, DEFAULT_RETENTION_DAYS,
};

use crate::breaker::{Breaker, BreakerConfig};
use crate::connection::Redis;
use crate::throttle::FailurePolicy;

/// One unit of quota and one count of the day's usage, atomically, in the key's one hash.
///
/// KEYS[1] the key's hash. ARGV: the period's start in seconds since the epoch ("" when the
/// request is only counted), the limit, the day's index, the oldest day to keep, and the
/// hash's time to live in milliseconds. Fields: `p` the period's start, `n` units spent in it,
/// `d<day>` the units of each day. Returns {1, used} when taken, {0, used} when exhausted.
const TAKE: &str = r#"
local key = KEYS[1]
local used = 0
if ARGV[1] ~= '' then
  local want = tonumber(ARGV[1])
  local limit = tonumber(ARGV[2])
  local state = redis.call('HMGET', key, 'p', 'n')
  local period = tonumber(state[1])
  local spent = tonumber(state[2]) or 0
  -- A request that read the clock a moment before another, which has already rolled the
  -- period over, counts in the newer period. A period of another plan that began earlier
  -- (monthly, for a key moved to a daily plan) starts afresh.
  if not (period and period >= want and spent > 0) then
    period = want
    spent = 0
  end
  if spent >= limit then
    return {0, spent}
  end
  used = spent + 1
  redis.call('HSET', key, 'p', string.format('%.0f', period), 'n', used)
end
if redis.call('HINCRBY', key, 'd' .. ARGV[3], 1) == 1 then
  -- The day's first request files away the days past the retention.
  local oldest = tonumber(ARGV[4])
  for _, field in ipairs(redis.call('HKEYS', key)) do
    if string.byte(field, 1) == 100 and (tonumber(string.sub(field, 2)) or oldest) < oldest then
      redis.call('HDEL', key, field)
    end
  end
end
-- Only ever extended: a request without a quota must not cut short the life a longer period
-- gave the hash.
if redis.call('PTTL', key) < tonumber(ARGV[5]) then
  redis.call('PEXPIRE', key, ARGV[5])
end
return {1, used}
"#;

/// Quota counters and daily usage in Redis: exact under any concurrency across every instance
/// sharing the Redis and prefix, since each request's take is one Lua script, run atomically.
///
/// Each API key has one hash, `<prefix>:usage:{<key id>}`, holding the current period's start
/// and count and one field per day of usage. The days past the retention are dropped as each
/// new day begins, and the hash expires once the key is unused for the longer of the quota
/// period and the retention. A take is one round trip (`EVALSHA`); a usage report one
/// `HGETALL`; a revocation one `DEL`.
///
/// Periods are the usage layer's: each instance computes the window from its own clock, so
/// instances' clocks should agree to within the accuracy wanted at period boundaries.
///
/// When Redis fails, [`FailurePolicy::Report`] leaves the decision to the usage layer's
/// `on_store_error` (admit by default, or 503); [`FailurePolicy::LocalFallback`] keeps counting
/// in memory with each instance's share of the limit: during outages a period may admit up to
/// that share per instance on top of what Redis counted (the local count of a period starts
/// at its first outage and carries over to later ones), and those requests are missing from
/// the usage reports. A take that times out may still have been counted in Redis.
///
/// Quota counts live only in Redis: give it persistence (AOF or RDB), or a restart starts
/// every period afresh.
///
/// # Example
///
/// ```no_run
/// use tollgate_redis::{Redis, RedisKeyStore, RedisQuotaStore, RedisThrottleStore};
/// use tollgate_throttle::Rate;
/// use tollgate_usage::{QuotaPeriod, UsagePlan, UsagePlans};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let redis = Redis::connect("redis://127.0.0.1:6379").await?;
/// let plans = UsagePlans::builder()
///     .plan(UsagePlan::new("basic").throttle(Rate::per_second(10), 20).quota(1_000, QuotaPeriod::Day))
///     .build_with(
///         RedisKeyStore::new(redis.clone()),
///         RedisQuotaStore::new(redis.clone()),
///         |rules, clock| RedisThrottleStore::new(redis.clone(), rules, clock),
///     )?;
/// let layer = plans.layer();
/// # let _ = layer; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisQuotaStore {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    redis: Redis,
    script: redis::Script,
    retention_days: u32,
    policy: FailurePolicy,
    fallback: Option<Arc<MemoryQuotaStore>>,
    breaker: Arc<Breaker>,
}

impl fmt::Debug for RedisQuotaStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisQuotaStore")
            .field("redis", &self.inner.redis)
            .field("retention_days", &self.inner.retention_days)
            .field("policy", &self.inner.policy)
            .field("breaker_open", &self.inner.breaker.is_open())
            .finish_non_exhaustive()
    }
}

impl RedisQuotaStore {
    /// Counters in `redis`, keeping 90 days of usage ([`DEFAULT_RETENTION_DAYS`]).
    pub fn new(redis: Redis) -> Self {
        let script = redis::Script::new(TAKE);
        crate::throttle::load_on_start(&redis, &script, "quota");
        Self {
            inner: Arc::new(Inner {
                redis,
                script,
                retention_days: DEFAULT_RETENTION_DAYS,
                policy: FailurePolicy::Report,
                fallback: None,
                breaker: Arc::new(Breaker::new(BreakerConfig::default(), "quota")),
            }),
        }
    }

    /// Days of usage history kept per key (at least one; default 90).
    #[must_use]
    pub fn retention_days(self, days: u32) -> Self {
        self.rebuild(|inner| {
            inner.retention_days = days.max(1);
            if inner.fallback.is_some() {
                inner.fallback = Some(Arc::new(MemoryQuotaStore::new(inner.retention_days)));
            }
        })
    }

    /// What happens when Redis cannot count (default [`FailurePolicy::Report`]).
    #[must_use]
    pub fn on_failure(self, policy: FailurePolicy) -> Self {
        self.rebuild(|inner| {
            inner.fallback = match policy {
                FailurePolicy::Report => None,
                FailurePolicy::LocalFallback { .. } => {
                    Some(Arc::new(MemoryQuotaStore::new(inner.retention_days)))
                }
            };
            inner.policy = policy;
        })
    }

    /// When the circuit breaker opens and for how long (default: 3 failures in a row, 1 s).
    #[must_use]
    pub fn breaker(self, config: BreakerConfig) -> Self {
        self.rebuild(|inner| inner.breaker = Arc::new(Breaker::new(config, "quota")))
    }

    fn rebuild(mut self, change: impl FnOnce(&mut Inner)) -> Self {
        change(Arc::make_mut(&mut self.inner));
        self
    }

    fn hash_key(&self, key: &str) -> String {
        // Braces: a Redis Cluster hash tag, so a key's state stays in one slot.
        format!("{}:usage:{{{key}}}", self.inner.redis.prefix)
    }
}

impl Inner {
    /// The answer when Redis was not asked or did not answer.
    fn fallback(
        &self,
        key: &Arc<str>,
        quota: Option<(u32, &Window)>,
        day: Day,
        why: String,
    ) -> Result<Take, StoreError> {
        metrics::counter!("tollgate_redis_fallbacks_total", "store" => "quota").increment(1);
        match (&self.fallback, self.policy) {
            (Some(memory), FailurePolicy::LocalFallback { instances }) => {
                let share = quota.map(|(limit, window)| (share(limit, instances), window));
                memory.take(key, share, day).settle_now()
            }
            _ => Err(StoreError(why.into())),
        }
    }
}

/// An instance's share of `limit` when `instances` share it; at least one.
fn share(limit: u32, instances: u32) -> u32 {
    (limit / instances.max(1)).max(1)
}

/// The answer of a store that never waits.
trait SettleNow<T> {
    fn settle_now(self) -> Result<T, StoreError>;
}

impl<T, F> SettleNow<T> for Found<T, F> {
    fn settle_now(self) -> Result<T, StoreError> {
        match self {
            Found::Ready(result) => result,
            Found::Pending(_) => Err(StoreError("the local fallback cannot wait".into())),
        }
    }
}

fn seconds(time: std::time::SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// The future of one take against Redis.
pub type RedisTake = Pin<Box<dyn Future<Output = Result<Take, StoreError>> + Send>>;

impl QuotaStore for RedisQuotaStore {
    type Take = RedisTake;

    fn take(
        &self,
        key: &Arc<str>,
        quota: Option<(u32, &Window)>,
        day: Day,
    ) -> Found<Take, RedisTake> {
        let inner = &self.inner;
        let Some(guard) = inner.breaker.guard() else {
            return Found::Ready(inner.fallback(
                key,
                quota,
                day,
                "Redis is failing; the breaker is open".to_owned(),
            ));
        };
        let hash = self.hash_key(key);
        let oldest = day.index().saturating_sub(inner.retention_days - 1);
        let (period, limit, period_left) = match quota {
            Some((limit, window)) => (
                seconds(window.start).to_string(),
                limit,
                seconds(window.end).saturating_sub(seconds(day.start())),
            ),
            None => (String::new(), 0, 0),
        };
        let ttl_ms = life(period_left, inner.retention_days).as_millis();
        let (key, window) = (key.clone(), quota.map(|(limit, window)| (limit, *window)));
        let inner = Arc::clone(inner);
        Found::Pending(Box::pin(async move {
            let mut connection = inner.redis.connection();
            let mut invocation = inner.script.key(hash);
            invocation
                .arg(period)
                .arg(limit)
                .arg(day.index())
                .arg(oldest)
                .arg(ttl_ms);
            let call = invocation.invoke_async::<(i64, i64)>(&mut connection);
            match guard.run(&inner.redis, call).await {
                Ok((1, used)) => Ok(Take::Taken {
                    used: u32::try_from(used).unwrap_or(u32::MAX),
                }),
                Ok(_) => Ok(Take::Exhausted),
                Err(failure) => {
                    tracing::warn!(error = %failure, "tollgate redis: a quota take failed");
                    let quota = window.as_ref().map(|(limit, window)| (*limit, window));
                    inner.fallback(&key, quota, day, failure)
                }
            }
        }))
    }

    fn daily_usage(
        &self,
        key: &str,
        from: Day,
        to: Day,
    ) -> impl Future<Output = Result<Vec<(Day, u64)>, StoreError>> + Send {
        let hash = self.hash_key(key);
        let inner = Arc::clone(&self.inner);
        async move {
            let mut connection = inner.redis.connection();
            let fields: Vec<(String, u64)> = redis::cmd("HGETALL")
                .arg(hash)
                .query_async(&mut connection)
                .await
                .map_err(|error| StoreError(Box::new(error)))?;
            let days: Vec<(u32, u64)> = fields
                .into_iter()
                .filter_map(|(field, count)| {
                    let day = field.strip_prefix('d')?.parse::<u32>().ok()?;
                    Some((day, count))
                })
                .collect();
            // As the in-memory store: days past the retention, counted from the last day of
            // use, are gone even if no request has filed them away yet.
            let last = days.iter().map(|&(day, _)| day).max().unwrap_or(0);
            let oldest = last.saturating_sub(inner.retention_days - 1);
            let mut usage: Vec<(Day, u64)> = days
                .into_iter()
                .filter(|&(day, count)| {
                    count > 0 && day >= from.index().max(oldest) && day <= to.index()
                })
                .map(|(day, count)| (Day::from_index(day), count))
                .collect();
            usage.sort_unstable_by_key(|&(day, _)| day);
            Ok(usage)
        }
    }

    fn forget(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send {
        let hash = self.hash_key(key);
        let inner = Arc::clone(&self.inner);
        let local = key.to_owned();
        async move {
            if let Some(memory) = &inner.fallback {
                memory.forget(&local).await?;
            }
            let mut connection = inner.redis.connection();
            redis::cmd("DEL")
                .arg(hash)
                .query_async::<()>(&mut connection)
                .await
                .map_err(|error| StoreError(Box::new(error)))
        }
    }
}

/// How long a key's hash lives after a request: past the end of the period it counts and the
/// retention of today's usage, with a day of slack, since a hash that expired early would
/// forget spent units.
fn life(period_left_secs: u64, retention_days: u32) -> Duration {
    let retention = u64::from(retention_days) * 86_400;
    Duration::from_secs(period_left_secs.max(retention).saturating_add(86_400))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_instance_keeps_at_least_one_unit() {
        assert_eq!(share(1_000, 4), 250);
        assert_eq!(share(3, 4), 1);
        assert_eq!(share(10, 0), 10);
    }

    #[test]
    fn a_hash_lives_past_its_period_and_its_retention() {
        assert_eq!(life(31 * 86_400, 1), Duration::from_secs(32 * 86_400));
        assert_eq!(life(60, 90), Duration::from_secs(91 * 86_400));
    }
}
