//! The Redis throttle store against a real `redis-server` of the test's own: the same decisions
//! as the in-memory store, keys that expire, and one round trip per check.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::RedisServer;
use tollgate_core::key::Global;
use tollgate_core::{Key, ManualClock};
use tollgate_redis::{BreakerConfig, Redis, RedisConfig, RedisThrottleStore};
use tollgate_throttle::{
    Check, MemoryStore, Outcome, Rate, Rule, StoreError, ThrottleLayer, ThrottleStore,
    DEFAULT_CAPACITY,
};

async fn check<S: ThrottleStore>(store: &S, rule: &Rule, key: &Key) -> Result<Outcome, StoreError> {
    match store.check(rule, key) {
        Check::Ready(result) => result,
        Check::Pending(future) => future.await,
    }
}

async fn decide<S: ThrottleStore>(store: &S, rule: &Rule, key: &Key) -> Outcome {
    check(store, rule, key).await.expect("the store decides")
}

/// A Redis store for `rules` as a real layer numbers them, and those numbered rules.
fn redis_store(
    redis: &Redis,
    rules: Vec<Rule>,
    clock: Option<&ManualClock>,
) -> (RedisThrottleStore, Vec<Rule>) {
    let mut builder = ThrottleLayer::builder();
    if let Some(clock) = clock {
        builder = builder.clock(clock.clone());
    }
    for rule in rules {
        builder = builder.rule(rule);
    }
    let mut made = None;
    let layer = builder
        .build_with_store(|rules, shared| {
            let store = RedisThrottleStore::new(redis.clone(), rules, shared);
            // A manual clock is the test's time; otherwise Redis's own clock decides.
            let store = if clock.is_some() {
                store.with_local_clock()
            } else {
                store
            };
            made = Some(store.clone());
            store
        })
        .expect("the rules are valid");
    let store = made.expect("build_with_store made the store");
    (store, layer.rules().to_vec())
}

async fn admin(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .expect("the URL is valid")
        .get_multiplexed_async_connection()
        .await
        .expect("the test's redis-server accepts connections")
}

/// xorshift64: a seeded sequence, so a failing case replays from its seed.
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform enough in `0..n` for test inputs.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A gap between two requests, in whole microseconds: often none, mostly within a rule's
/// interval, sometimes long enough for an allowance to come back whole.
///
/// Redis expires keys by its own clock, not the test's: the gaps add up to far more test time
/// than the requests take in real time, so no key expires before the test's clock reaches it.
fn gap(rng: &mut Xorshift) -> u64 {
    match rng.below(100) {
        0..30 => 0,
        30..55 => 1 + rng.below(1_000),
        55..80 => 1 + rng.below(100_000),
        80..95 => 1 + rng.below(1_000_000),
        _ => 1 + rng.below(60_000_000),
    }
}

/// Only what the layer reads: a rule that does not report its remaining allowance leaves
/// `remaining` and `reset` of an allowed request unread, and the in-memory store skips them.
fn as_read(rule: &Rule, outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::Allowed { .. } if !rule.reports_remaining() => Outcome::Allowed {
            remaining: 0,
            reset: Duration::ZERO,
        },
        other => other,
    }
}

#[tokio::test]
async fn redis_decides_every_request_as_the_in_memory_store_does() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    // Every interval is a whole number of microseconds, the unit the Redis script counts in.
    let rules = || {
        vec![
            Rule::new("ten-per-second", Rate::per_second(10), Global).burst(3),
            Rule::new("hundred-per-second", Rate::per_second(100), Global).burst(3),
            Rule::new("three-per-minute", Rate::per_minute(3), Global),
            Rule::new("one-at-a-time", Rate::per_second(5), Global).burst(1),
            Rule::new("shadowed", Rate::per_second(2), Global)
                .burst(2)
                .shadow(true),
        ]
    };
    let keys = ["a", "b", "c", "d"].map(Key::custom);
    // Per rule: (allowed, limited) decisions seen, to prove the sequences reach the limits.
    let mut seen: BTreeMap<String, (u32, u32)> = BTreeMap::new();

    for seed in 1..=16u64 {
        // A generous timeout: this test is about decisions, not about a slow machine.
        let redis = RedisConfig::new(server.url())
            .prefix(format!("seed-{seed}"))
            .timeout(Duration::from_secs(2))
            .connect()
            .await
            .unwrap();
        let clock = ManualClock::new();
        let (redis_store, rules) = redis_store(&redis, rules(), Some(&clock));
        let memory = MemoryStore::new(&rules, DEFAULT_CAPACITY, clock.clone().into());
        assert!(
            rules.iter().any(|rule| !rule.reports_remaining()),
            "the shadow rule does not report its remaining allowance"
        );

        let mut rng = Xorshift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut now_micros = 0u64;
        // Each (rule, key) pair is independent state: its history is the minimal case.
        let mut history: BTreeMap<(usize, usize), Vec<(u64, Outcome)>> = BTreeMap::new();
        let (mut rule_at, mut key_at) = (0, 0);
        for step in 0..400 {
            let advance = gap(&mut rng);
            clock.advance(Duration::from_micros(advance));
            now_micros += advance;
            // Mostly the same pair again, so that bursts reach the limit.
            if rng.below(4) == 0 {
                rule_at = rng.below(rules.len() as u64) as usize;
                key_at = rng.below(keys.len() as u64) as usize;
            }
            let (rule, key) = (&rules[rule_at], &keys[key_at]);

            let expected = decide(&memory, rule, key).await;
            let actual = decide(&redis_store, rule, key).await;
            let pair = history.entry((rule_at, key_at)).or_default();
            pair.push((now_micros, expected));
            assert_eq!(
                as_read(rule, actual),
                as_read(rule, expected),
                "seed {seed}, step {step}: rule {:?} ({:?}, burst {}), key {key}: \
                 Redis and memory disagree; this pair's requests (µs, memory's outcome): {pair:#?}",
                rule.name(),
                rule.rate().interval(),
                rule.burst_size(),
            );
            let counts = seen.entry(rule.name().to_owned()).or_default();
            match expected {
                Outcome::Allowed { .. } => counts.0 += 1,
                Outcome::Limited { .. } => counts.1 += 1,
            }
        }
    }

    for (rule, (allowed, limited)) in &seen {
        assert!(
            *allowed > 0 && *limited > 0,
            "rule {rule} was never both allowed and limited ({allowed} allowed, {limited} limited): \
             the sequences do not exercise it"
        );
    }
}

#[tokio::test]
async fn a_burst_is_allowed_then_the_rule_limits_until_the_interval_passes() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let redis = Redis::connect(&server.url()).await.unwrap();
    let clock = ManualClock::new();
    let (store, rules) = redis_store(
        &redis,
        vec![Rule::new("burst", Rate::per_second(10), Global).burst(3)],
        Some(&clock),
    );
    let (rule, key) = (&rules[0], Key::custom("client-1"));

    for remaining in [2, 1, 0] {
        assert_eq!(
            decide(&store, rule, &key).await,
            Outcome::Allowed {
                remaining,
                reset: Duration::from_millis(100) * (3 - remaining),
            }
        );
    }
    assert_eq!(
        decide(&store, rule, &key).await,
        Outcome::Limited {
            retry_after: Duration::from_millis(100),
            reset: Duration::from_millis(300),
        }
    );
    clock.advance(Duration::from_millis(100));
    assert_eq!(
        decide(&store, rule, &key).await,
        Outcome::Allowed {
            remaining: 0,
            reset: Duration::from_millis(300),
        }
    );
}

#[tokio::test]
async fn a_key_lives_until_its_allowance_is_whole_and_at_most_a_second_longer() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let redis = Redis::connect(&server.url()).await.unwrap();
    // 20 s per request: PTTL's milliseconds and the test's own time are small beside it.
    let (store, rules) = redis_store(
        &redis,
        vec![Rule::new("per-client", Rate::per_minute(3), Global)],
        None,
    );
    let (rule, key) = (&rules[0], Key::custom("client-1"));
    let mut admin = admin(&server).await;
    decide(&store, rule, &Key::custom("warm-up")).await;
    redis::cmd("FLUSHALL")
        .query_async::<()>(&mut admin)
        .await
        .unwrap();

    for taken in 1..=3u32 {
        let Outcome::Allowed { remaining, reset } = decide(&store, rule, &key).await else {
            panic!("request {taken} of a burst of 3 is allowed");
        };
        assert_eq!(remaining, 3 - taken);
        assert_eq!(reset, Duration::from_secs(20 * u64::from(taken)));
        let redis_key = only_key(&mut admin).await;
        let pttl: i64 = redis::cmd("PTTL")
            .arg(&redis_key)
            .query_async(&mut admin)
            .await
            .unwrap();
        let whole = i64::try_from(reset.as_millis()).unwrap();
        // Expiring early would admit extra requests; a second of slack decides the same.
        assert!(
            pttl >= whole - 100 && pttl <= whole + 1_000,
            "after {taken} requests the key lives {pttl} ms; the allowance is whole in {whole} ms"
        );
    }

    // A refused request takes nothing, so it does not keep the key alive any longer.
    assert!(matches!(
        decide(&store, rule, &key).await,
        Outcome::Limited { .. }
    ));
    let pttl: i64 = redis::cmd("PTTL")
        .arg(only_key(&mut admin).await)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(
        pttl > 59_000 && pttl <= 61_000,
        "after a refusal the key lives {pttl} ms"
    );
}

/// The one key in Redis.
async fn only_key(admin: &mut redis::aio::MultiplexedConnection) -> String {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(admin)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    keys.into_iter().next().unwrap_or_default()
}

#[tokio::test]
async fn keys_live_under_the_configured_prefix_and_hold_no_client_value() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let redis = RedisConfig::new(server.url())
        .prefix("shop")
        .connect()
        .await
        .unwrap();
    let (store, rules) = redis_store(
        &redis,
        vec![
            Rule::new("per-client", Rate::per_second(10), Global),
            Rule::new("everyone", Rate::per_second(100), Global),
        ],
        None,
    );
    for rule in &rules {
        decide(&store, rule, &Key::custom("client-1")).await;
    }

    let mut admin = admin(&server).await;
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut admin)
        .await
        .unwrap();
    keys.sort();
    assert_eq!(keys.len(), 2, "{keys:?}");
    for (key, rule) in keys.iter().zip(["everyone", "per-client"]) {
        let hash = key
            .strip_prefix(&format!("shop:throttle:{rule}:custom:"))
            .unwrap_or_else(|| panic!("{key} is not under shop:throttle:{rule}:custom:"));
        // The client's value is kept only as a hash: someone reading Redis does not see it.
        assert_eq!(hash.len(), 32, "{key}");
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()), "{key}");
    }
    // Both rules name the same client by the same hash.
    assert_eq!(keys[0].rsplit(':').next(), keys[1].rsplit(':').next());
}

/// Per command since the last `CONFIG RESETSTAT`: (calls, failed calls), from
/// `INFO commandstats`. Redis counts the commands a script runs besides the script's own call:
/// each run of the throttle script also shows as a TIME and a GET, and as a SET when it
/// allows. Those run inside Redis; only the EVALSHA crosses the connection.
async fn command_stats(
    admin: &mut redis::aio::MultiplexedConnection,
) -> BTreeMap<String, (u64, u64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(admin)
        .await
        .unwrap();
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let stat = |field: &str| -> Option<u64> {
                stats
                    .split(',')
                    .find_map(|stat| stat.strip_prefix(field)?.strip_prefix('='))?
                    .parse()
                    .ok()
            };
            Some((name.to_owned(), (stat("calls")?, stat("failed_calls")?)))
        })
        .collect()
}

async fn reset_command_stats(admin: &mut redis::aio::MultiplexedConnection) {
    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(admin)
        .await
        .unwrap();
}

/// What `checks` runs of the script cost (`allowed` of them allowed) besides the EVALSHAs,
/// and the test's own CONFIG RESETSTAT. INFO counts itself only after answering.
fn script_runs(checks: u64, allowed: u64) -> BTreeMap<String, (u64, u64)> {
    BTreeMap::from([
        ("config|resetstat".to_owned(), (1, 0)),
        ("time".to_owned(), (checks, 0)),
        ("get".to_owned(), (checks, 0)),
        ("set".to_owned(), (allowed, 0)),
    ])
}

#[tokio::test]
async fn each_check_is_one_evalsha_once_the_script_is_loaded() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let redis = Redis::connect(&server.url()).await.unwrap();
    let (store, rules) = redis_store(
        &redis,
        vec![Rule::new("per-client", Rate::per_second(10), Global).burst(5)],
        None,
    );
    store.preload().await.unwrap();
    let mut admin = admin(&server).await;
    // The store also loads the script on start, from a task of its own: let that land too, so
    // it is not counted below.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while command_stats(&mut admin).await.get("script|load") != Some(&(2, 0)) {
        assert!(tokio::time::Instant::now() < deadline, "two script loads");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reset_command_stats(&mut admin).await;

    // Allowed and limited checks alike, over several keys.
    let mut allowed = 0;
    for n in 0..60 {
        let key = Key::custom(format!("client-{}", n % 3));
        if let Outcome::Allowed { .. } = decide(&store, &rules[0], &key).await {
            allowed += 1;
        }
    }
    assert!(allowed < 60, "some of the 60 checks were limited");

    let mut expected = script_runs(60, allowed);
    expected.insert("evalsha".to_owned(), (60, 0));
    assert_eq!(command_stats(&mut admin).await, expected);
}

#[tokio::test]
async fn the_script_is_loaded_on_start_and_again_when_redis_forgets_it() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let redis = Redis::connect(&server.url()).await.unwrap();
    let mut admin = admin(&server).await;
    reset_command_stats(&mut admin).await;
    let (store, rules) = redis_store(
        &redis,
        vec![Rule::new("per-client", Rate::per_second(10), Global)],
        None,
    );

    // Made inside a runtime, the store loads its script at once, before any check.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let stats = command_stats(&mut admin).await;
        if stats.get("script|load") == Some(&(1, 0)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the script was not loaded on start: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reset_command_stats(&mut admin).await;
    for _ in 0..10 {
        let outcome = decide(&store, &rules[0], &Key::custom("client-1")).await;
        assert!(
            matches!(outcome, Outcome::Allowed { .. }),
            "within the burst of 10"
        );
    }
    let mut expected = script_runs(10, 10);
    expected.insert("evalsha".to_owned(), (10, 0));
    assert_eq!(command_stats(&mut admin).await, expected);

    // Redis forgets its scripts (as after a restart or SCRIPT FLUSH): the next check loads
    // the script again by itself and still decides.
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut admin)
        .await
        .unwrap();
    reset_command_stats(&mut admin).await;
    let outcome = decide(&store, &rules[0], &Key::custom("client-2")).await;
    assert!(
        matches!(outcome, Outcome::Allowed { .. }),
        "a new key is allowed"
    );
    let mut expected = script_runs(1, 1);
    expected.insert("evalsha".to_owned(), (2, 1));
    expected.insert("script|load".to_owned(), (1, 0));
    assert_eq!(command_stats(&mut admin).await, expected);
}

#[tokio::test]
async fn a_probe_abandoned_before_redis_answers_does_not_keep_the_breaker_open() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let redis = Redis::connect(&server.url()).await.unwrap();
    let (store, rules) = redis_store(
        &redis,
        vec![Rule::new("per-client", Rate::per_second(10), Global)],
        None,
    );
    // One failure opens the breaker, and the call after it is already the probe.
    let store = store.breaker(BreakerConfig {
        failures: 1,
        open_for: Duration::ZERO,
    });
    let key = Key::custom("client-1");
    decide(&store, &rules[0], &key).await;

    server.kill();
    assert!(check(&store, &rules[0], &key).await.is_err());
    // The probe's request is cancelled (its client hung up) before the check completes.
    drop(store.check(&rules[0], &key));
    server.restart();

    // Bounded: the breaker lets a probe through at once and the connection comes back within
    // its reconnect delay (at most 500 ms).
    let mut last = None;
    for _ in 0..50 {
        match check(&store, &rules[0], &key).await {
            Ok(outcome) => {
                last = None;
                assert!(matches!(outcome, Outcome::Allowed { .. }));
                break;
            }
            Err(error) => last = Some(error.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        last, None,
        "Redis is back but the store still does not ask it"
    );
}

/// What a client sees of a response: its status and rate-limit fields.
fn seen<B>(response: &http::Response<B>) -> Vec<String> {
    let mut seen = vec![response.status().to_string()];
    for name in ["ratelimit-policy", "ratelimit", "retry-after"] {
        let values: Vec<_> = response
            .headers()
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("?").to_owned())
            .collect();
        seen.push(format!("{name}: {values:?}"));
    }
    seen
}

#[tokio::test]
async fn several_rules_of_a_request_are_one_evalsha_and_decide_as_in_memory() {
    use tower::{Layer, ServiceExt};

    let Some(server) = RedisServer::start() else {
        return;
    };
    let redis = Redis::connect(&server.url()).await.unwrap();
    let clock = ManualClock::new();
    // Narrow to wide: per client, a shadow rule that only logs, then one budget for everyone.
    let rules = || {
        vec![
            Rule::new(
                "per-client",
                Rate::per_second(4),
                tollgate_core::key::HeaderKey::new("x-client"),
            )
            .burst(3),
            Rule::new("watch", Rate::per_second(2), Global).shadow(true),
            Rule::new("everyone", Rate::per_second(10), Global).burst(6),
        ]
    };
    let mut memory = ThrottleLayer::builder().clock(clock.clone());
    let mut shared = ThrottleLayer::builder().clock(clock.clone());
    for (a, b) in rules().into_iter().zip(rules()) {
        memory = memory.rule(a);
        shared = shared.rule(b);
    }
    let memory = memory.build().unwrap();
    let shared = shared
        .build_with_store(|rules, clock| {
            RedisThrottleStore::new(redis.clone(), rules, clock).with_local_clock()
        })
        .unwrap();
    let app = tower::service_fn(|_: http::Request<axum::body::Body>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(axum::body::Body::from("ok")))
    });
    let (memory, shared) = (memory.layer(app), shared.layer(app));

    let mut admin = admin(&server).await;
    // The script loaded before counting (one real check of a client the sequence never
    // uses), so the count below is the checks' alone.
    // The in-memory layer sees it too, so both start the sequence alike.
    let primer = || {
        http::Request::builder()
            .header("x-client", "primer")
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let primed = shared.clone().oneshot(primer()).await.unwrap();
    assert_eq!(primed.status(), http::StatusCode::OK);
    let _ = memory.clone().oneshot(primer()).await.unwrap();
    reset_command_stats(&mut admin).await;

    let mut rng = Xorshift(0x5eed_f00d);
    let (mut refused, requests) = (0, 400);
    for n in 0..requests {
        clock.advance(Duration::from_micros(gap(&mut rng) / 10));
        let request = || {
            http::Request::builder()
                .header("x-client", format!("c{}", rng.0 % 3))
                .body(axum::body::Body::empty())
                .unwrap()
        };
        let expected = memory.clone().oneshot(request()).await.unwrap();
        let got = shared.clone().oneshot(request()).await.unwrap();
        assert_eq!(seen(&got), seen(&expected), "request {n}");
        refused += usize::from(expected.status() != http::StatusCode::OK);
    }
    assert!(
        refused > 20 && refused < requests - 20,
        "both kinds of answer were tested: {refused} refused"
    );
    let stats = command_stats(&mut admin).await;
    assert_eq!(
        stats.get("evalsha"),
        Some(&(requests as u64, 0)),
        "{stats:?}"
    );
}
