//! Usage plans with their quotas in Redis: gateway instances on one Redis enforce one exact
//! quota, the Redis store decides as the in-memory one does, usage history is kept as long as
//! configured, and an outage of Redis costs what each failure policy says and no more.

mod support;
mod usage_support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use support::RedisServer;
use tollgate_core::ManualClock;
use tollgate_redis::{FailurePolicy, Redis, RedisConfig, RedisKeyStore, RedisQuotaStore};
use tollgate_throttle::Rate;
use tollgate_usage::{
    DailyUsage, Day, Found, KeyStore, MemoryQuotaStore, NewKey, QuotaPeriod, QuotaStore,
    StoreError, Take, UsagePlan, UsagePlans,
};
use usage_support::{
    gateway, noon, on_redis, raw, serve, Client, Gateway, Reply, QUOTA_EXCEEDED, UNAVAILABLE,
};

/// The answer of any store, waiting for it if needed.
async fn settle<T, F: std::future::Future<Output = Result<T, StoreError>>>(
    found: Found<T, F>,
) -> T {
    found.settle().await.expect("the store answers")
}

// ---------------------------------------------------------------------------------------------
// 1. One exact quota across instances
// ---------------------------------------------------------------------------------------------

const INSTANCES: usize = 4;
const REQUESTS: usize = 10_000;
/// Requests in flight at once: each task sends its share one after another.
const IN_FLIGHT: usize = 200;
const QUOTA: u32 = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_admit_exactly_the_quota_of_ten_thousand_concurrent_requests() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut instances = Vec::new();
    for _ in 0..INSTANCES {
        // Its own connection and clock, as a separate process would have. A generous call
        // timeout: this test is about exactness, and a call slowed by the loaded machine must
        // not fail open and be admitted uncounted.
        let redis = RedisConfig::new(server.url())
            .timeout(Duration::from_secs(2))
            .connect()
            .await
            .unwrap();
        let builder = UsagePlans::builder()
            .plan(UsagePlan::new("bulk").quota(QUOTA, QuotaPeriod::Day))
            .clock(ManualClock::starting_at(noon()));
        instances.push(gateway(redis, builder).await);
    }
    let (key, secret) = instances[0]
        .plans
        .create_key(NewKey::new("bulk"))
        .await
        .unwrap();
    let secret: Arc<str> = secret.expose().into();
    let addrs: Arc<[_]> = instances.iter().map(|instance| instance.addr).collect();

    let started = Instant::now();
    let load = async {
        let tasks: Vec<_> = (0..IN_FLIGHT)
            .map(|task| {
                let (addrs, secret) = (addrs.clone(), secret.clone());
                tokio::spawn(async move {
                    let client = Client::default();
                    let mut replies = Vec::with_capacity(REQUESTS / IN_FLIGHT);
                    for n in 0..REQUESTS / IN_FLIGHT {
                        let addr = addrs[(task + n) % INSTANCES];
                        replies.push(client.widgets(addr, &secret).await);
                    }
                    replies
                })
            })
            .collect();
        let mut replies = Vec::with_capacity(REQUESTS);
        for task in tasks {
            replies.extend(task.await.expect("no client task panics"));
        }
        replies
    };
    let replies = tokio::time::timeout(Duration::from_secs(60), load)
        .await
        .expect("10,000 requests are answered within a minute");
    eprintln!(
        "{REQUESTS} requests over {INSTANCES} instances, {IN_FLIGHT} at a time: {:?}",
        started.elapsed()
    );

    let mut left_after_admitted = Vec::new();
    for reply in &replies {
        match reply.status {
            StatusCode::OK => left_after_admitted.push(
                reply
                    .quota_left()
                    .unwrap_or_else(|| panic!("an admitted reply names its quota: {reply:?}")),
            ),
            _ => {
                reply.assert_refused(StatusCode::TOO_MANY_REQUESTS, QUOTA_EXCEEDED);
                // Noon: twelve hours to the next UTC day.
                assert_eq!(reply.header("retry-after"), Some("43200"), "{reply:?}");
                assert_eq!(reply.quota_left(), Some(0), "{reply:?}");
            }
        }
    }
    assert_eq!(left_after_admitted.len(), QUOTA as usize);
    assert_eq!(
        replies.len() - left_after_admitted.len(),
        REQUESTS - QUOTA as usize
    );
    // Each admitted request took its own unit, whichever instance it went through.
    let left: BTreeSet<u64> = left_after_admitted.into_iter().collect();
    assert_eq!(left, (0..u64::from(QUOTA)).collect());

    let today = Day::of(noon());
    for instance in &instances {
        let report = instance.plans.usage(key.id(), today, today).await.unwrap();
        let expected = DailyUsage {
            day: today,
            used: u64::from(QUOTA),
            remaining: Some(0),
        };
        assert_eq!(report.days, [expected]);
    }
}

// ---------------------------------------------------------------------------------------------
// 2. The same decisions as the in-memory store
// ---------------------------------------------------------------------------------------------

/// A small deterministic pseudo-random sequence (xorshift64*).
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What a key's plan is at one point of the sequence.
#[derive(Clone, Copy, Debug)]
enum Plan {
    Quota(u32, QuotaPeriod),
    /// Counted, without a quota.
    Unlimited,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_quota_store_takes_and_counts_as_the_memory_store_does() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    const RETENTION: u32 = 7;
    let redis = Redis::connect(&server.url()).await.unwrap();
    let in_redis = RedisQuotaStore::new(redis).retention_days(RETENTION);
    let in_memory = MemoryQuotaStore::new(RETENTION);

    let keys: Vec<Arc<str>> = ["alpha", "beta", "gamma", "delta"]
        .into_iter()
        .map(Arc::from)
        .collect();
    // Every key starts on a monthly plan. `alpha` moves to a daily plan mid-month and back to
    // the monthly one a few days later; the others change plans at random, through daily,
    // weekly, hourly and unlimited ones.
    let mut plans: Vec<Plan> = vec![Plan::Quota(20, QuotaPeriod::Month); keys.len()];
    let choices = [
        Plan::Quota(20, QuotaPeriod::Month),
        Plan::Quota(4, QuotaPeriod::Day),
        Plan::Quota(10, QuotaPeriod::Week),
        Plan::Quota(2, QuotaPeriod::Every(Duration::from_secs(3_600))),
        Plan::Unlimited,
    ];
    let mut random = Xorshift(0x9e37_79b9_7f4a_7c15);
    // From late January to late May: month, week, day and hour rollovers.
    let first = Day::from_ymd(2026, 1, 27).unwrap();
    let mut now = first.start() + Duration::from_secs(9 * 3_600);
    let mut seen = [0usize; 2];
    let mut alpha = Vec::new();
    for step in 0..3_000 {
        // Time only moves forward, by up to about four hours, often not at all.
        now += Duration::from_secs(random.below(3) * random.below(2 * 3_600));
        match step {
            1_000 => plans[0] = Plan::Quota(4, QuotaPeriod::Day),
            1_400 => plans[0] = Plan::Quota(20, QuotaPeriod::Month),
            _ if random.below(40) == 0 => {
                let k = 1 + random.below(keys.len() as u64 - 1) as usize;
                plans[k] = choices[random.below(choices.len() as u64) as usize];
            }
            _ => {}
        }
        // `alpha` is asked most, so its monthly quota runs out before the move.
        let k = match random.below(7) {
            0..=3 => 0,
            n => n as usize - 3,
        };
        let window;
        let quota = match plans[k] {
            Plan::Quota(limit, period) => {
                window = period.window(now);
                Some((limit, &window))
            }
            Plan::Unlimited => None,
        };
        let day = Day::of(now);
        let expected = settle(in_memory.take(&keys[k], quota, day)).await;
        let got = settle(in_redis.take(&keys[k], quota, day)).await;
        assert_eq!(
            got, expected,
            "step {step}: key {} on {:?} at {:?}",
            keys[k], plans[k], day
        );
        seen[usize::from(expected == Take::Exhausted)] += 1;
        if k == 0 {
            alpha.push((step, expected));
        }
    }
    // The sequence does what it is meant to: `alpha` had spent its month before the move to
    // the daily plan, which started it afresh.
    let around = |at: usize| {
        let after = alpha.partition_point(|&(step, _)| step < at);
        (alpha[after - 1].1, alpha[after].1)
    };
    assert_eq!(around(1_000), (Take::Exhausted, Take::Taken { used: 1 }));
    eprintln!("alpha back on the monthly plan: {:?}", around(1_400));
    eprintln!(
        "3,000 decisions ({} taken, {} exhausted) from {first} to {}",
        seen[0],
        seen[1],
        Day::of(now)
    );
    assert!(
        seen[0] > 500 && seen[1] > 500,
        "both answers are exercised: {seen:?}"
    );
    assert!(
        Day::of(now) > Day::from_ymd(2026, 3, 1).unwrap(),
        "the run crosses months"
    );

    let last = Day::of(now);
    for key in &keys {
        let expected = in_memory.daily_usage(key, first, last).await.unwrap();
        let got = in_redis.daily_usage(key, first, last).await.unwrap();
        assert_eq!(got, expected, "daily usage of {key}");
        assert!(
            !got.is_empty() && got.len() <= RETENTION as usize,
            "{got:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Retention, forgetting, expiry and the prefix
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_past_the_retention_is_dropped_and_a_forgotten_key_leaves_nothing() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let redis = RedisConfig::new(&url)
        .prefix("shop-7")
        .connect()
        .await
        .unwrap();
    let in_redis = RedisQuotaStore::new(redis).retention_days(3);
    let in_memory = MemoryQuotaStore::new(3);
    let key: Arc<str> = "acme".into();
    let other: Arc<str> = "globex".into();
    let first = Day::from_ymd(2026, 11, 1).unwrap();
    let mut day = first;
    for n in 0..10u32 {
        let window = QuotaPeriod::Day.window(day.start());
        // A few requests a day, one more each day, so each day's count tells it apart.
        for _ in 0..=n {
            for store_key in [&key, &other] {
                let expected = settle(in_memory.take(store_key, Some((100, &window)), day)).await;
                let got = settle(in_redis.take(store_key, Some((100, &window)), day)).await;
                assert_eq!(got, expected);
            }
        }
        day = day.next();
    }
    let last = Day::from_index(day.index() - 1);
    let expected = in_memory.daily_usage(&key, first, last).await.unwrap();
    let kept = in_redis.daily_usage(&key, first, last).await.unwrap();
    assert_eq!(kept, expected);
    assert_eq!(
        kept,
        [(7, 8), (8, 9), (9, 10)]
            .map(|(offset, count)| (Day::from_index(first.index() + offset), count))
    );

    // In Redis: one hash per key under the prefix, holding the days kept and no older one,
    // and expiring by itself.
    let mut plain = raw(&url).await;
    let hash = "shop-7:usage:{acme}";
    let exists: u32 = redis::cmd("EXISTS")
        .arg(hash)
        .query_async(&mut plain)
        .await
        .unwrap();
    assert_eq!(exists, 1);
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(hash)
        .query_async(&mut plain)
        .await
        .unwrap();
    let days: BTreeSet<&str> = fields.iter().filter_map(|f| f.strip_prefix('d')).collect();
    let expected_days: BTreeSet<String> = (last.index() - 2..=last.index())
        .map(|index| index.to_string())
        .collect();
    assert_eq!(
        days,
        expected_days.iter().map(String::as_str).collect(),
        "{fields:?}"
    );
    let ttl: i64 = redis::cmd("PTTL")
        .arg(hash)
        .query_async(&mut plain)
        .await
        .unwrap();
    // At least the retention, and at most the retention and a day of slack.
    assert!(
        ttl > 3 * 86_400_000 && ttl <= 4 * 86_400_000,
        "the hash expires by itself: PTTL {ttl}"
    );
    let names: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut plain)
        .await
        .unwrap();
    assert!(
        !names.is_empty() && names.iter().all(|name| name.starts_with("shop-7:")),
        "every key is under the prefix: {names:?}"
    );

    in_redis.forget(&key).await.unwrap();
    in_memory.forget(&key).await.unwrap();
    let exists: u32 = redis::cmd("EXISTS")
        .arg(hash)
        .query_async(&mut plain)
        .await
        .unwrap();
    assert_eq!(exists, 0, "forget deletes the key's hash");
    assert_eq!(in_redis.daily_usage(&key, first, last).await.unwrap(), []);
    assert_eq!(in_memory.daily_usage(&key, first, last).await.unwrap(), []);
    // Another key's usage is untouched.
    assert_eq!(
        in_redis.daily_usage(&other, first, last).await.unwrap(),
        in_memory.daily_usage(&other, first, last).await.unwrap()
    );
    // A forgotten key starts afresh.
    let window = QuotaPeriod::Day.window(last.start());
    assert_eq!(
        settle(in_redis.take(&key, Some((100, &window)), last)).await,
        Take::Taken { used: 1 }
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Outage
// ---------------------------------------------------------------------------------------------

/// While Redis is down no request waits long: the call timeout (50 ms) for each of the three
/// stores until their breakers open, and a margin for a loaded 2-core machine.
const SLOWEST_WHILE_DOWN: Duration = Duration::from_secs(1);

/// Polls `addr` with `key` until a reply satisfies `back`, for at most 10 s.
async fn until(
    client: &Client,
    addr: std::net::SocketAddr,
    key: &str,
    back: impl Fn(&Reply) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = client.widgets(addr, key).await;
        if back(&reply) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "10 s after Redis restarted, {addr} still answers {reply:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn admitted_by_redis(reply: &Reply) -> bool {
    reply.status == StatusCode::OK && reply.quota_left().is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fails_open_for_quotas_closed_for_unknown_keys_and_recovers() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let clock = ManualClock::starting_at(noon());
    let plan = || {
        UsagePlans::builder()
            .plan(
                UsagePlan::new("basic")
                    .throttle(Rate::per_second(1_000), 1_000)
                    .quota(1_000, QuotaPeriod::Day),
            )
            .clock(clock.clone())
    };
    // `forgetful` checks every key in Redis; `remembering` serves keys it has seen while
    // Redis is down. Both report quota failures to the layer, which admits (the default).
    let redis = Redis::connect(&url).await.unwrap();
    let forgetful = gateway(redis, plan()).await;
    let redis = Redis::connect(&url).await.unwrap();
    let remembering = serve(on_redis(
        plan(),
        &redis,
        RedisKeyStore::new(redis.clone()).remember_keys(100),
        RedisQuotaStore::new(redis.clone()).on_failure(FailurePolicy::Report),
    ))
    .await;
    let (used, used_secret) = forgetful
        .plans
        .create_key(NewKey::new("basic"))
        .await
        .unwrap();
    let (_, unused_secret) = forgetful
        .plans
        .create_key(NewKey::new("basic"))
        .await
        .unwrap();
    let client = Client::default();
    for gateway in [&forgetful, &remembering] {
        let reply = client.widgets(gateway.addr, used_secret.expose()).await;
        assert!(admitted_by_redis(&reply), "{reply:?}");
    }

    server.kill();
    let mut slowest = Duration::ZERO;
    for _ in 0..30 {
        let reply = client.widgets(forgetful.addr, used_secret.expose()).await;
        reply.assert_refused(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE);
        assert!(reply.header("retry-after").is_some(), "{reply:?}");
        slowest = slowest.max(reply.latency);

        let reply = client.widgets(remembering.addr, used_secret.expose()).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "a key seen before the outage works: {reply:?}"
        );
        assert_eq!(reply.quota_left(), None, "admitted uncounted: {reply:?}");
        slowest = slowest.max(reply.latency);

        // Remembering is no cache of every key: one this instance never saw cannot be checked.
        let reply = client
            .widgets(remembering.addr, unused_secret.expose())
            .await;
        reply.assert_refused(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE);
        slowest = slowest.max(reply.latency);
    }
    eprintln!("slowest while Redis was down: {slowest:?}");
    assert!(
        slowest < SLOWEST_WHILE_DOWN,
        "a request took {slowest:?} while Redis was down"
    );

    // Redis comes back empty; the keys are restored from a backup of their records, and the
    // same gateways, not rebuilt, go back to Redis once their breakers let them.
    server.restart();
    let restore = RedisKeyStore::new(Redis::connect(&url).await.unwrap());
    restore.put(used.clone()).await.unwrap();
    for gateway in [&forgetful, &remembering] {
        until(
            &client,
            gateway.addr,
            used_secret.expose(),
            admitted_by_redis,
        )
        .await;
    }
    let today = Day::of(noon());
    let report = forgetful
        .plans
        .usage(used.id(), today, today)
        .await
        .unwrap();
    assert!(
        report.days[0].used >= 2,
        "requests are counted in Redis again: {report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_an_outage_each_of_four_instances_admits_at_most_its_share_of_the_quota() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let mut instances: Vec<Gateway> = Vec::new();
    for _ in 0..INSTANCES {
        let redis = Redis::connect(&url).await.unwrap();
        let builder = UsagePlans::builder()
            .plan(UsagePlan::new("small").quota(100, QuotaPeriod::Day))
            .clock(ManualClock::starting_at(noon()));
        instances.push(
            serve(on_redis(
                builder,
                &redis,
                RedisKeyStore::new(redis.clone()).remember_keys(100),
                RedisQuotaStore::new(redis.clone())
                    .on_failure(FailurePolicy::LocalFallback { instances: 4 }),
            ))
            .await,
        );
    }
    let (_, secret) = instances[0]
        .plans
        .create_key(NewKey::new("small"))
        .await
        .unwrap();
    let client = Client::default();
    for instance in &instances {
        let reply = client.widgets(instance.addr, secret.expose()).await;
        assert!(admitted_by_redis(&reply), "{reply:?}");
    }

    server.kill();
    let mut slowest = Duration::ZERO;
    let mut admitted = Vec::new();
    for instance in &instances {
        let mut admitted_here = 0;
        for _ in 0..40 {
            let reply = client.widgets(instance.addr, secret.expose()).await;
            slowest = slowest.max(reply.latency);
            match reply.status {
                StatusCode::OK => admitted_here += 1,
                _ => {
                    reply.assert_refused(StatusCode::TOO_MANY_REQUESTS, QUOTA_EXCEEDED);
                    assert_eq!(reply.header("retry-after"), Some("43200"), "{reply:?}");
                }
            }
        }
        admitted.push(admitted_here);
    }
    eprintln!("admitted during the outage, per instance: {admitted:?}; slowest {slowest:?}");
    assert!(
        admitted.iter().all(|&n| n == 25),
        "each instance admits exactly its share, 100 / 4, counted from zero: {admitted:?}"
    );
    assert!(
        slowest < SLOWEST_WHILE_DOWN,
        "a request took {slowest:?} while Redis was down"
    );
}
