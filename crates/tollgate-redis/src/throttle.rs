//! `RedisThrottleStore`: the throttle layer's GCRA, kept in Redis so every gateway instance
//! spends one allowance.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use tollgate_core::{Clock, Key, SharedClock};
use tollgate_throttle::{Check, CheckAll, MemoryStore, Outcome, Rule, StoreError, ThrottleStore};

use crate::breaker::{Breaker, BreakerConfig, Guard};
use crate::connection::Redis;

/// GCRA as governor runs it, in microseconds, for one or several rules of a request in one
/// round trip, each key expiring once idle.
///
/// KEYS: one per rule. ARGV[1]: the time now (negative: take the server's clock, so all
/// instances share one); then for each rule its emission interval `t`, its tolerance `tau`
/// (= t × (burst − 1)) and whether it is in shadow mode ("1"). Rules are decided in order, up
/// to and including the first that limits and is not in shadow mode. Returns two numbers per
/// rule decided: 1 and the remaining burst when allowed, 0 and the wait when limited.
const GCRA: &str = r#"
-- Redis 3.2 and 4 need this before TIME and a write; later versions always replicate effects.
if redis.replicate_commands then redis.replicate_commands() end
local now = tonumber(ARGV[1])
if now < 0 then
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000000 + tonumber(time[2])
end
local out = {}
for i = 1, #KEYS do
  local t = tonumber(ARGV[3 * i - 1])
  local tau = tonumber(ARGV[3 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now) or now
  local earliest = tat - tau
  if now < earliest then
    out[#out + 1] = 0
    out[#out + 1] = earliest - now
    if ARGV[3 * i + 1] ~= '1' then
      return out
    end
  else
    local next = math.max(tat, now) + t
    -- A second of slack: a key that outlives its allowance being whole decides exactly as a
    -- missing one (max(tat, now)), while one that expires early would admit extra requests.
    local ttl = math.ceil((next - now) / 1000) + 1000
    redis.call('SET', KEYS[i], string.format('%.0f', next), 'PX', ttl)
    local room = math.min(now + tau + t - next, tau + t)
    if room < 0 then room = 0 end
    out[#out + 1] = 1
    out[#out + 1] = math.floor(room / t)
  end
end
return out
"#;

/// What the store does when Redis cannot decide (down, slow past the timeout, or the breaker
/// open).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Report the failure to the layer (the throttle or the usage plans), whose
    /// `on_store_error` decides: its
    /// `StoreFailure::Allow` (the default) fails open, as Amazon API Gateway and Kong do;
    /// `StoreFailure::Reject` fails closed with 503 and `Retry-After`.
    #[default]
    Report,
    /// Keep enforcing in memory, each instance with its share of every rule (rate and burst)
    /// or quota (limit), divided by `instances`, the number of gateways expected to share the
    /// traffic.
    LocalFallback {
        /// How many instances share the traffic (1: each enforces the whole rule alone).
        instances: u32,
    },
}

/// Rule state in Redis: the same GCRA as the in-memory [`MemoryStore`], the same decisions and
/// headers, shared by every gateway instance using the same Redis and prefix.
///
/// One round trip per request, however many of the layer's rules apply to it (a Lua script,
/// loaded on start and run by `EVALSHA`, loaded again by itself after Redis forgets it, that
/// decides the rules in order and stops at the first that limits, as the in-memory store
/// does rule by rule), keys under `<prefix>:throttle:<rule>:<key>` (a `:` in a
/// rule name written `%3A`; client values such as header values kept only as a keyed hash)
/// that expire about a second after their allowance is whole again. Intervals are rounded up
/// to whole microseconds, so Redis is never more lenient than the rule. Calls that
/// fail or pass the connection's timeout count towards a circuit breaker; while it is open
/// no call is made, so a dead Redis costs nothing per request, and a probe finds out when it
/// is back.
///
/// Unlike the in-memory store, Redis holds as many keys as clients send: give it a
/// `maxmemory` with `maxmemory-policy volatile-ttl` (every key here has a TTL, and the ones
/// nearest to whole go first). Rule names must be unique across every layer that shares a
/// prefix, since a rule's state is found by its name.
///
/// # Example
///
/// ```no_run
/// use tollgate_core::key::ClientIp;
/// use tollgate_core::TrustedProxies;
/// use tollgate_redis::{FailurePolicy, Redis, RedisThrottleStore};
/// use tollgate_throttle::{Rate, Rule, ThrottleLayer};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let redis = Redis::connect("redis://127.0.0.1:6379").await?;
/// let throttle = ThrottleLayer::builder()
///     .rule(Rule::new("per-client", Rate::per_second(100), ClientIp::new(TrustedProxies::none())).burst(10))
///     .build_with_store(|rules, clock| {
///         RedisThrottleStore::new(redis.clone(), rules, clock)
///             .on_failure(FailurePolicy::LocalFallback { instances: 4 })
///     })?;
/// # let _ = throttle; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisThrottleStore {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    redis: Redis,
    rules: Arc<[RuleSpec]>,
    script: redis::Script,
    clock: Option<SharedClock>,
    policy: FailurePolicy,
    fallback: Option<Arc<MemoryStore>>,
    source_rules: Box<[Rule]>,
    source_clock: SharedClock,
    breaker: Arc<Breaker>,
}

#[derive(Clone)]
struct RuleSpec {
    /// `<prefix>:throttle:<rule>:`
    key_prefix: String,
    interval: Duration,
    burst: u32,
    t_micros: u64,
    tau_micros: u64,
}

impl fmt::Debug for RedisThrottleStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisThrottleStore")
            .field("redis", &self.inner.redis)
            .field("policy", &self.inner.policy)
            .field("breaker_open", &self.inner.breaker.is_open())
            .finish_non_exhaustive()
    }
}

impl RedisThrottleStore {
    /// State for `rules` (as the throttle layer's `build_with_store` passes them) in `redis`.
    /// Time comes from the Redis server, so instances with skewed clocks still agree.
    pub fn new(redis: Redis, rules: &[Rule], clock: &SharedClock) -> Self {
        let specs = rules
            .iter()
            .map(|rule| {
                let interval = rule.rate().interval();
                let burst = rule.burst_size().get();
                // Rounded up to whole microseconds (Lua's numbers hold them exactly): Redis is
                // never more lenient than the rule, and equal to the in-memory store whenever
                // the interval is a whole number of microseconds (10/s, 3/min; not 3/s).
                let t_micros = micros_up(interval).max(1);
                RuleSpec {
                    key_prefix: format!(
                        "{}:throttle:{}:",
                        redis.prefix,
                        rule.name().replace('%', "%25").replace(':', "%3A")
                    ),
                    interval,
                    burst,
                    t_micros,
                    tau_micros: t_micros.saturating_mul(u64::from(burst - 1)),
                }
            })
            .collect();
        load_on_start(&redis, &redis::Script::new(GCRA), "throttle");
        Self {
            inner: Arc::new(Inner {
                redis,
                rules: specs,
                script: redis::Script::new(GCRA),
                clock: None,
                policy: FailurePolicy::Report,
                fallback: None,
                source_rules: rules.into(),
                source_clock: clock.clone(),
                breaker: Arc::new(Breaker::new(BreakerConfig::default(), "throttle")),
            }),
        }
    }

    /// What happens when Redis cannot decide (default [`FailurePolicy::Report`]).
    #[must_use]
    pub fn on_failure(self, policy: FailurePolicy) -> Self {
        self.rebuild(|inner| {
            inner.fallback = match policy {
                FailurePolicy::Report => None,
                FailurePolicy::LocalFallback { instances } => {
                    let shares: Vec<Rule> = inner
                        .source_rules
                        .iter()
                        .map(|rule| rule.divided(instances))
                        .collect();
                    Some(Arc::new(MemoryStore::new(
                        &shares,
                        tollgate_throttle::DEFAULT_CAPACITY,
                        inner.source_clock.clone(),
                    )))
                }
            };
            inner.policy = policy;
        })
    }

    /// When the circuit breaker opens and for how long (default: 3 failures in a row, 1 s).
    #[must_use]
    pub fn breaker(self, config: BreakerConfig) -> Self {
        self.rebuild(|inner| inner.breaker = Arc::new(Breaker::new(config, "throttle")))
    }

    /// Takes the time from the layer's clock rather than the Redis server's: for tests with
    /// a manual clock. Instances must then keep their clocks in step. Redis still expires idle
    /// keys by its own clock, so a manual clock must not run slower than real time between
    /// checks of one key, or keys vanish before their allowance is whole.
    #[must_use]
    pub fn with_local_clock(self) -> Self {
        self.rebuild(|inner| inner.clock = Some(inner.source_clock.clone()))
    }

    /// Loads the script now, so the first requests do not pay for it.
    ///
    /// # Errors
    ///
    /// Redis cannot be reached.
    pub async fn preload(&self) -> Result<(), redis::RedisError> {
        let mut connection = self.inner.redis.connection();
        self.inner
            .script
            .prepare_invoke()
            .load_async(&mut connection)
            .await?;
        Ok(())
    }

    /// Changes a setting; the store is built before it is shared, so nothing is copied.
    fn rebuild(mut self, change: impl FnOnce(&mut Inner)) -> Self {
        change(Arc::make_mut(&mut self.inner));
        self
    }
}

/// Loads `script` when a runtime is at hand, so the first calls do not each pay for it;
/// `invoke_async` loads it again by itself whenever Redis answers NOSCRIPT.
pub(crate) fn load_on_start(redis: &Redis, script: &redis::Script, store: &'static str) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let (script, mut connection) = (script.clone(), redis.connection());
        runtime.spawn(async move {
            if let Err(error) = script.prepare_invoke().load_async(&mut connection).await {
                tracing::warn!(%error, store, "tollgate redis: a script could not be loaded on start");
            }
        });
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// The Redis key for `key` under a rule: addresses and the global key as they are, every
/// other value (a header, a cookie, a subject, which may be a credential or an email) as a
/// keyed SHA-256, so nothing a client sent is stored in Redis in the clear.
fn key_name(rule_prefix: &str, key: &Key, secret: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    use std::fmt::Write as _;

    let shown = key.to_string();
    if key.as_ip().is_some() || !shown.contains(':') {
        return format!("{rule_prefix}{shown}");
    }
    let (kind, value) = shown.split_once(':').unwrap_or(("key", &shown));
    let digest = Sha256::new()
        .chain_update(secret)
        .chain_update([0])
        .chain_update(value.as_bytes())
        .finalize();
    let mut name = String::with_capacity(rule_prefix.len() + kind.len() + 33);
    name.push_str(rule_prefix);
    name.push_str(kind);
    name.push(':');
    for byte in &digest[..16] {
        let _ = write!(name, "{byte:02x}");
    }
    name
}

fn micros_up(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos().div_ceil(1000)).unwrap_or(u64::MAX)
}

/// A decision of Redis's, read back as the in-memory store reports it.
fn outcome(spec: &RuleSpec, allowed: i64, value: i64) -> Outcome {
    let value = u64::try_from(value).unwrap_or(0);
    if allowed == 1 {
        let remaining = u32::try_from(value).unwrap_or(u32::MAX).min(spec.burst);
        Outcome::Allowed {
            remaining,
            reset: spec
                .interval
                .saturating_mul(spec.burst.saturating_sub(remaining)),
        }
    } else {
        let retry_after = Duration::from_micros(value);
        Outcome::Limited {
            retry_after,
            reset: retry_after.saturating_add(spec.interval.saturating_mul(spec.burst - 1)),
        }
    }
}

/// Decisions made at once (a fallback or an error) or on their way from Redis.
enum Decided {
    Now(Result<Vec<Outcome>, StoreError>),
    Later(Call),
}

/// A round trip to make: boxed once, by the caller, with whatever maps its answer.
struct Call {
    inner: Arc<Inner>,
    guard: Guard,
    keys: Vec<String>,
    args: Vec<i64>,
    indices: Vec<usize>,
    /// Owned keys for a fallback after a failed call, only when there is one.
    keys_for_fallback: Option<Vec<Key>>,
}

impl Call {
    async fn run(self) -> Result<Vec<Outcome>, StoreError> {
        let Call {
            inner,
            guard,
            keys,
            args,
            indices,
            keys_for_fallback,
        } = self;
        let mut connection = inner.redis.connection();
        let mut invocation = inner.script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(arg);
        }
        let call = invocation.invoke_async::<Vec<i64>>(&mut connection);
        match guard.run(&inner.redis, call).await {
            // Two numbers per rule decided, for at most every rule asked.
            Ok(reply) if reply.len() % 2 == 0 && reply.len() <= 2 * indices.len() => Ok(reply
                .chunks_exact(2)
                .zip(&indices)
                .map(|(pair, &index)| outcome(&inner.rules[index], pair[0], pair[1]))
                .collect()),
            Ok(reply) => Err(StoreError(
                format!(
                    "Redis answered {} numbers for {} rules",
                    reply.len(),
                    indices.len()
                )
                .into(),
            )),
            Err(failure) => {
                tracing::warn!(error = %failure, "tollgate redis: a throttle check failed");
                let keys = keys_for_fallback.unwrap_or_default();
                inner.fallback(indices.iter().copied().zip(&keys), &failure)
            }
        }
    }
}

impl Inner {
    /// The answers when Redis was not asked or did not answer: the in-memory store's, rule by
    /// rule as the layer would ask them (by index into the layer's rules), or the failure.
    fn fallback<'k>(
        &self,
        checks: impl IntoIterator<Item = (usize, &'k Key)>,
        why: &str,
    ) -> Result<Vec<Outcome>, StoreError> {
        metrics::counter!("tollgate_redis_fallbacks_total", "store" => "throttle").increment(1);
        let Some(memory) = &self.fallback else {
            return Err(StoreError(why.to_owned().into()));
        };
        let mut outcomes = Vec::new();
        for (index, key) in checks {
            let Some(rule) = self.source_rules.get(index) else {
                return Err(StoreError("a rule is not part of this store".into()));
            };
            let outcome = match memory.check(rule, key) {
                Check::Ready(result) => result?,
                // The in-memory store never waits: `NeverPending` cannot be made.
                Check::Pending(_) => {
                    return Err(StoreError("the local fallback cannot wait".into()))
                }
            };
            outcomes.push(outcome);
            if matches!(outcome, Outcome::Limited { .. }) && !rule.is_shadow() {
                break;
            }
        }
        Ok(outcomes)
    }

    /// The time the script takes as now: the layer's clock when asked to, else the server's.
    fn now(&self) -> i64 {
        match &self.clock {
            Some(clock) => clock
                .system_time()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| i64::try_from(micros(since)).unwrap_or(i64::MAX)),
            None => -1,
        }
    }

    /// The decisions of `checks` in one round trip (or the fallback's, or the failure).
    fn decide(self: &Arc<Self>, checks: &[(&Rule, &Key)]) -> Decided {
        let mut keys = Vec::with_capacity(checks.len());
        let mut args = Vec::with_capacity(1 + 3 * checks.len());
        args.push(self.now());
        for (rule, key) in checks {
            let Some(spec) = self.rules.get(rule.index()) else {
                return Decided::Now(Err(StoreError(
                    format!("rule {:?} is not part of this store", rule.name()).into(),
                )));
            };
            keys.push(key_name(&spec.key_prefix, key, &self.redis.key_secret));
            args.push(i64::try_from(spec.t_micros).unwrap_or(i64::MAX));
            args.push(i64::try_from(spec.tau_micros).unwrap_or(i64::MAX));
            args.push(i64::from(rule.is_shadow()));
        }
        let indices: Vec<usize> = checks.iter().map(|(rule, _)| rule.index()).collect();
        let Some(guard) = self.breaker.guard() else {
            let keyed = indices
                .iter()
                .copied()
                .zip(checks.iter().map(|(_, key)| *key));
            return Decided::Now(self.fallback(keyed, "Redis is failing; the breaker is open"));
        };
        let keys_for_fallback: Option<Vec<Key>> = self
            .fallback
            .as_ref()
            .map(|_| checks.iter().map(|(_, key)| key.detached()).collect());
        Decided::Later(Call {
            inner: Arc::clone(self),
            guard,
            keys,
            args,
            indices,
            keys_for_fallback,
        })
    }
}

/// The future of one check against Redis.
pub type RedisCheck = Pin<Box<dyn Future<Output = Result<Outcome, StoreError>> + Send>>;

/// The one outcome of a call made for one rule.
fn only(outcomes: Result<Vec<Outcome>, StoreError>) -> Result<Outcome, StoreError> {
    outcomes?
        .into_iter()
        .next()
        .ok_or_else(|| StoreError("Redis answered no decision".into()))
}

impl ThrottleStore for RedisThrottleStore {
    type Future = RedisCheck;

    const BATCHES: bool = true;

    fn check(&self, rule: &Rule, key: &Key) -> Check<RedisCheck> {
        match self.inner.decide(&[(rule, key)]) {
            Decided::Now(outcomes) => Check::Ready(only(outcomes)),
            Decided::Later(call) => Check::Pending(Box::pin(async move { only(call.run().await) })),
        }
    }

    fn check_all(&self, checks: &[(&Rule, &Key)]) -> Option<CheckAll> {
        Some(match self.inner.decide(checks) {
            Decided::Now(outcomes) => Box::pin(std::future::ready(outcomes)),
            Decided::Later(call) => Box::pin(call.run()),
        })
    }
}
