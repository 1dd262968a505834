//! Several gateway instances on one Redis enforce one limit, not one each.

mod gateway;
mod support;

use std::time::{Duration, Instant};

use hyper::StatusCode;
use support::RedisServer;
use tollgate_core::key::Global;
use tollgate_redis::{RedisConfig, RedisThrottleStore};
use tollgate_throttle::{Rate, Rule, ThrottleLayer};

const INSTANCES: usize = 4;
const CLIENTS: usize = 16;
const LOAD: Duration = Duration::from_secs(5);
/// Each client's pause between requests: at most 16 × 200 = 3,200 requests/s offered,
/// far over the limit, yet short of what two cores serve in a debug build.
const PAUSE: Duration = Duration::from_millis(5);

#[derive(Debug, Default)]
struct Tally {
    admitted: u64,
    limited: u64,
    /// Admitted without a rule's fields: a store failure let through, not Redis's decision.
    failed_open: u64,
    other: u64,
    slowest: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_on_one_redis_admit_one_shared_limit() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut instances = Vec::new();
    for _ in 0..INSTANCES {
        // Each instance its own connection, as separate processes would have.
        // A generous call timeout: this test is about the shared limit, and a call slowed by
        // the loaded machine must not fail open and count as admitted.
        let redis = RedisConfig::new(server.url())
            .timeout(Duration::from_secs(1))
            .connect()
            .await
            .unwrap();
        let throttle = ThrottleLayer::builder()
            .rule(Rule::new("shared", Rate::per_second(100), Global).burst(10))
            .build_with_store(|rules, clock| RedisThrottleStore::new(redis.clone(), rules, clock))
            .unwrap();
        instances.push(gateway::serve(throttle).await);
    }

    let started = Instant::now();
    let deadline = started + LOAD;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let addr = instances[n % INSTANCES].addr;
            tokio::spawn(async move {
                let client = gateway::client();
                let mut tally = Tally::default();
                while Instant::now() < deadline {
                    let reply = gateway::request(&client, addr).await;
                    tally.slowest = tally.slowest.max(reply.latency);
                    match reply.status {
                        StatusCode::OK if reply.rate_limited_fields => tally.admitted += 1,
                        StatusCode::OK => tally.failed_open += 1,
                        StatusCode::TOO_MANY_REQUESTS => tally.limited += 1,
                        _ => tally.other += 1,
                    }
                    tokio::time::sleep(PAUSE).await;
                }
                tally
            })
        })
        .collect();
    let mut total = Tally::default();
    for client in clients {
        let tally = client.await.expect("no client task panics");
        total.admitted += tally.admitted;
        total.limited += tally.limited;
        total.failed_open += tally.failed_open;
        total.other += tally.other;
        total.slowest = total.slowest.max(tally.slowest);
    }
    let elapsed = started.elapsed();
    eprintln!("{INSTANCES} instances, {CLIENTS} clients, {elapsed:?}: {total:?}");

    // 100/s over 5 s plus the burst of 10, and 1 % for the requests in flight at the end.
    let ceiling = (100 * LOAD.as_secs() + 10) * 101 / 100;
    let admitted = total.admitted + total.failed_open;
    assert!(
        admitted <= ceiling,
        "{admitted} admitted over {elapsed:?}, more than {ceiling}: {total:?}"
    );
    // Far more than the limit was offered: a shared limit admits close to all of it.
    assert!(
        total.admitted >= 450,
        "only {} admitted by Redis over {elapsed:?}: {total:?}",
        total.admitted
    );
    assert!(
        total.limited > total.admitted,
        "the load must exceed the limit: {total:?}"
    );
    assert_eq!(total.other, 0, "every answer is 200 or 429: {total:?}");
}
