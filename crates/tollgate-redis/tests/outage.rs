//! Redis killed under load: each failure policy does what it says, no request waits on the
//! dead Redis once the breaker is open, and the gateways go back to Redis by themselves when it
//! returns.

mod gateway;
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::{Instance, Reply};
use hyper::StatusCode;
use support::RedisServer;
use tokio::task::JoinHandle;
use tollgate_core::key::Global;
use tollgate_redis::{FailurePolicy, Redis, RedisThrottleStore};
use tollgate_throttle::{Rate, Rule, StoreFailure, ThrottleLayer};

/// One an hour with a burst of 10: nothing comes back during a test, so every count is exact.
fn rule() -> Rule {
    Rule::new("outage", Rate::per_hour(1), Global).burst(10)
}

const REDIS_KEY: &str = "tollgate:throttle:outage:global";
/// Load with Redis up, long enough to spend the burst.
const UP: Duration = Duration::from_millis(300);
/// Load with Redis down: past the breaker's default second open, so probes fail too.
const DOWN: Duration = Duration::from_millis(1_500);
/// Nothing waits longer while Redis is down: the call timeout is 50 ms.
const SLOWEST_WHILE_DOWN: Duration = Duration::from_millis(500);
/// Once the breaker is open a request does not wait on Redis at all.
const FAST: Duration = Duration::from_millis(50);
/// The breaker opens after 3 failures of at most 50 ms each; this is ample.
const BREAKER_OPENS_WITHIN: Duration = Duration::from_millis(250);

async fn gateways(
    server: &RedisServer,
    count: usize,
    policy: FailurePolicy,
    on_error: StoreFailure,
) -> Vec<Instance> {
    let mut instances = Vec::new();
    for _ in 0..count {
        let redis = Redis::connect(&server.url()).await.unwrap();
        let throttle = ThrottleLayer::builder()
            .rule(rule())
            .on_store_error(on_error)
            .build_with_store(|rules, clock| {
                RedisThrottleStore::new(redis.clone(), rules, clock).on_failure(policy)
            })
            .unwrap();
        instances.push(gateway::serve(throttle).await);
    }
    instances
}

struct Sent {
    at: Instant,
    reply: Reply,
}

/// Two keep-alive clients per loaded instance, each sending a request every 2 ms or so.
struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<Vec<Sent>>>,
}

impl Load {
    fn start(instances: &[Instance], loaded: &[usize]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = loaded
            .iter()
            .flat_map(|&instance| [instance; 2])
            .map(|instance| {
                let (stop, addr) = (stop.clone(), instances[instance].addr);
                tokio::spawn(async move {
                    let client = gateway::client();
                    let mut sent = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let at = Instant::now();
                        let reply = gateway::request(&client, addr).await;
                        sent.push(Sent { at, reply });
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    sent
                })
            })
            .collect();
        Self { stop, clients }
    }

    async fn stop(self) -> Vec<Sent> {
        self.stop.store(true, Ordering::Relaxed);
        let mut sent = Vec::new();
        for client in self.clients {
            sent.extend(client.await.expect("no client task panics"));
        }
        sent.sort_by_key(|sent| sent.at);
        sent
    }
}

/// Load on `loaded` instances, Redis killed in the middle of it. Returns every request and
/// when Redis was killed, having checked that Redis limited the load while it was up.
async fn kill_under_load(
    server: &mut RedisServer,
    instances: &[Instance],
    loaded: &[usize],
) -> (Vec<Sent>, Instant) {
    let load = Load::start(instances, loaded);
    tokio::time::sleep(UP).await;
    // Taken once the process is gone: requests sent before may still have been decided by
    // Redis, and only later ones are held to what a dead Redis must give.
    server.kill();
    let killed = Instant::now();
    tokio::time::sleep(DOWN).await;
    let sent = load.stop().await;
    assert!(
        sent.iter()
            .any(|s| s.at < killed && s.reply.status == StatusCode::TOO_MANY_REQUESTS),
        "Redis limited the load while it was up"
    );
    (sent, killed)
}

/// No request sent while Redis was down waited long, and once the breaker had opened none
/// waited on Redis at all but its probes (one per second open).
fn assert_no_wait_on_dead_redis(sent: &[Sent], killed: Instant) {
    let down: Vec<&Sent> = sent.iter().filter(|s| s.at >= killed).collect();
    assert!(down.len() > 100, "the load went on while Redis was down");
    let slowest = down
        .iter()
        .map(|s| s.reply.latency)
        .max()
        .unwrap_or_default();
    assert!(
        slowest < SLOWEST_WHILE_DOWN,
        "a request took {slowest:?} while Redis was down"
    );
    let slow_after_open: Vec<(Duration, Duration)> = down
        .iter()
        .filter(|s| s.at >= killed + BREAKER_OPENS_WITHIN && s.reply.latency >= FAST)
        .map(|s| (s.at - killed, s.reply.latency))
        .collect();
    // One probe per second open, and a few requests a loaded 2-core machine may stall: a
    // breaker that let requests wait on Redis would show hundreds.
    let probes = DOWN.as_secs() + 1 + 3;
    assert!(
        slow_after_open.len() as u64 <= probes,
        "once the breaker was open, more requests than its probes waited {FAST:?} or more \
         (sent after the kill, took): {slow_after_open:?}"
    );
    let mut latencies: Vec<Duration> = down.iter().map(|s| s.reply.latency).collect();
    latencies.sort();
    eprintln!(
        "while down: {} requests, median {:?}, p99 {:?}, slowest {:?}; slow after the breaker opened: {:?}",
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 99 / 100],
        slowest,
        slow_after_open,
    );
}

/// Restarts Redis (empty, on the same port) and asks every instance, ten times a second,
/// until each is answered by Redis again; then until each is refused by the shared rule.
/// Returns how many requests Redis admitted: the whole burst, once, across all instances.
async fn restart_and_recover(server: &mut RedisServer, instances: &[Instance]) -> u32 {
    server.restart();
    let restarted = Instant::now();
    let client = gateway::client();
    let mut admitted_by_redis = 0;
    let mut back = vec![false; instances.len()];
    while back.contains(&false) {
        assert!(
            restarted.elapsed() < Duration::from_secs(10),
            "10 s after Redis restarted, instances {back:?} still do not ask it"
        );
        for (n, instance) in instances.iter().enumerate() {
            let reply = gateway::request(&client, instance.addr).await;
            // A 200 with the rule's fields: Redis admitted it (failing open sends none, and
            // a local fallback in these tests has spent its share).
            if reply.status == StatusCode::OK && reply.rate_limited_fields {
                admitted_by_redis += 1;
                back[n] = true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut refused = vec![false; instances.len()];
    for n in (0..instances.len()).cycle().take(30) {
        let reply = gateway::request(&client, instances[n].addr).await;
        assert!(reply.rate_limited_fields, "Redis decides: {reply:?}");
        match reply.status {
            StatusCode::OK => admitted_by_redis += 1,
            StatusCode::TOO_MANY_REQUESTS => refused[n] = true,
            other => panic!("Redis is back, yet instance {n} answered {other}"),
        }
        if !refused.contains(&false) {
            break;
        }
    }
    eprintln!(
        "Redis decides again {:?} after its restart",
        restarted.elapsed()
    );
    assert!(
        !refused.contains(&false),
        "the shared rule refuses again on every instance: {refused:?}"
    );
    admitted_by_redis
}

async fn redis_key_exists(server: &RedisServer) -> bool {
    let mut admin = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("EXISTS")
        .arg(REDIS_KEY)
        .query_async(&mut admin)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_admits_requests_by_default_then_redis_limits_again_once_back() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let instances = gateways(&server, 2, FailurePolicy::Report, StoreFailure::Allow).await;

    let (sent, killed) = kill_under_load(&mut server, &instances, &[0, 1]).await;
    for s in sent.iter().filter(|s| s.at >= killed) {
        assert_eq!(
            s.reply.status,
            StatusCode::OK,
            "failing open: {:?}",
            s.reply
        );
        assert!(
            !s.reply.rate_limited_fields,
            "no rule decided a request while Redis was down: {:?}",
            s.reply
        );
    }
    assert_no_wait_on_dead_redis(&sent, killed);

    assert_eq!(restart_and_recover(&mut server, &instances).await, 10);
    assert!(redis_key_exists(&server).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_refuses_with_503_and_retry_after_when_the_layer_rejects_on_store_errors() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let instances = gateways(&server, 2, FailurePolicy::Report, StoreFailure::Reject).await;

    let (sent, killed) = kill_under_load(&mut server, &instances, &[0, 1]).await;
    for s in sent.iter().filter(|s| s.at >= killed) {
        assert_eq!(
            s.reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "failing closed: {:?}",
            s.reply
        );
        assert_eq!(s.reply.retry_after.as_deref(), Some("1"));
    }
    assert_no_wait_on_dead_redis(&sent, killed);

    assert_eq!(restart_and_recover(&mut server, &instances).await, 10);
    assert!(redis_key_exists(&server).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_each_instance_enforces_its_share_of_the_rule_in_memory() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let instances = gateways(
        &server,
        2,
        FailurePolicy::LocalFallback { instances: 2 },
        StoreFailure::Reject,
    )
    .await;

    // Load on the second instance only: Redis's burst of 10, then the local share of 5.
    let (sent, killed) = kill_under_load(&mut server, &instances, &[1]).await;
    let admitted = sent
        .iter()
        .filter(|s| s.reply.status == StatusCode::OK)
        .count();
    assert_eq!(
        admitted, 15,
        "Redis's burst of 10 while it was up, then this instance's half of it, 5, in memory"
    );
    for s in sent.iter().filter(|s| s.at >= killed) {
        assert!(
            matches!(
                s.reply.status,
                StatusCode::OK | StatusCode::TOO_MANY_REQUESTS
            ),
            "the local fallback decides, the layer's Reject never applies: {:?}",
            s.reply
        );
        assert!(s.reply.rate_limited_fields);
    }
    assert_no_wait_on_dead_redis(&sent, killed);

    // The first instance, idle until now: one client's immediate requests, 5 then refused.
    let client = gateway::client();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let reply = gateway::request(&client, instances[0].addr).await;
        assert!(
            reply.latency < SLOWEST_WHILE_DOWN,
            "{:?} while Redis is down",
            reply.latency
        );
        statuses.push(reply.status);
    }
    assert_eq!(
        statuses,
        [
            [StatusCode::OK; 5].as_slice(),
            &[StatusCode::TOO_MANY_REQUESTS]
        ]
        .concat()
    );

    assert_eq!(restart_and_recover(&mut server, &instances).await, 10);
    assert!(redis_key_exists(&server).await);
}

/// A Redis that goes silent without resetting the connection (a partition, a frozen host): the
/// calls time out, the breaker opens, and the silent connection is replaced, so the first
/// probe after the breaker's second reaches Redis again over a new one. Without the
/// replacement the old connection would wait for the kernel to give up on it, for minutes.
#[tokio::test]
async fn a_connection_that_goes_silent_is_replaced_and_the_store_recovers() {
    use tollgate_core::Key;
    use tollgate_throttle::{Check, Outcome, ThrottleStore};

    let Some(server) = RedisServer::start() else {
        return;
    };
    let partition = support::Partition::start(&server).await;
    let redis = Redis::connect(&partition.url()).await.unwrap();
    let mut made = None;
    let layer = ThrottleLayer::builder()
        .rule(Rule::new("silent", Rate::per_second(1_000), Global).burst(1_000))
        .build_with_store(|rules, clock| {
            let store = RedisThrottleStore::new(redis.clone(), rules, clock);
            made = Some(store.clone());
            store
        })
        .unwrap();
    let (store, rule) = (made.unwrap(), layer.rules()[0].clone());
    let check = || async {
        match store.check(&rule, &Key::global()) {
            Check::Ready(result) => result,
            Check::Pending(future) => future.await,
        }
    };
    assert!(matches!(check().await, Ok(Outcome::Allowed { .. })));

    partition.freeze();
    let frozen = Instant::now();
    let mut failed = 0;
    loop {
        let started = Instant::now();
        match check().await {
            Ok(outcome) => {
                assert!(matches!(outcome, Outcome::Allowed { .. }), "{outcome:?}");
                break;
            }
            Err(_) => failed += 1,
        }
        assert!(
            started.elapsed() < SLOWEST_WHILE_DOWN,
            "a check waited {:?}",
            started.elapsed()
        );
        assert!(
            frozen.elapsed() < Duration::from_secs(5),
            "still failing {:?} after the freeze ({failed} failed checks)",
            frozen.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Three silent calls opened the breaker and replaced the connection; the breaker's probe
    // a second later got through.
    assert!(failed >= 3, "{failed} failed checks");
    assert!(
        frozen.elapsed() >= Duration::from_secs(1),
        "recovered after {:?}, before the breaker's second",
        frozen.elapsed()
    );
}
