//! The gateway's request metrics over real loopback TCP: every request counted by method,
//! route, status and decision (which step refused it, if one did) and timed, read back from a
//! recorder installed for this test binary.

mod support;

use std::net::SocketAddr;

use axum::routing::get;
use axum::Router;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use support::{serve_axum, Client};
use tollgate::key::Global;
use tollgate::throttle::{Rate, Rule, ThrottleLayer};
use tollgate::{Gateway, ManualClock};

fn counter(snapshot: &[(metrics_util::CompositeKey, DebugValue)], labels: &[(&str, &str)]) -> u64 {
    snapshot
        .iter()
        .filter(|(key, _)| {
            key.key().name() == "tollgate_requests_total"
                && labels
                    .iter()
                    .all(|(k, v)| key.key().labels().any(|l| l.key() == *k && l.value() == *v))
        })
        .map(|(_, value)| match value {
            DebugValue::Counter(n) => *n,
            other => panic!("not a counter: {other:?}"),
        })
        .sum()
}

fn timings(snapshot: &[(metrics_util::CompositeKey, DebugValue)], status: &str) -> usize {
    snapshot
        .iter()
        .filter(|(key, _)| {
            key.key().name() == "tollgate_request_duration_seconds"
                && key
                    .key()
                    .labels()
                    .any(|l| l.key() == "status" && l.value() == status)
        })
        .map(|(_, value)| match value {
            DebugValue::Histogram(samples) => samples.len(),
            other => panic!("not a histogram: {other:?}"),
        })
        .sum()
}

async fn gateway() -> SocketAddr {
    // One request a minute for everyone, on a clock that stands still.
    let throttle = ThrottleLayer::builder()
        .rule(Rule::new("everyone", Rate::per_minute(1), Global).burst(1))
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let gateway = Gateway::builder()
        .throttle(throttle)
        .metrics()
        .request_id()
        .build();
    assert_eq!(
        gateway.steps().collect::<Vec<_>>(),
        ["request_id", "metrics", "throttle"]
    );
    let app = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .layer(gateway);
    serve_axum(app).await
}

#[tokio::test]
async fn every_request_is_counted_by_status_and_decision_and_timed() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    let addr = gateway().await;
    let client = Client::new();
    assert_eq!(client.get(addr, "/hello", &[]).await.status, 200);
    let refused = client.get(addr, "/hello", &[]).await;
    assert_eq!(refused.status, 429, "{refused:?}");
    let unusual = client.send("BREW", addr, "/hello", &[]).await;
    assert_eq!(unusual.status, 429, "{unusual:?}");
    // No route serves it: throttled all the same, and counted under `unmatched`.
    let elsewhere = client.get(addr, "/hello/../elsewhere", &[]).await;
    assert_eq!(elsewhere.status, 429, "{elsewhere:?}");

    let snapshot: Vec<_> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| (key, value))
        .collect();
    let allowed = [
        ("method", "GET"),
        ("route", "/hello"),
        ("status", "200"),
        ("decision", "allowed"),
    ];
    assert_eq!(counter(&snapshot, &allowed), 1);
    let throttled = [
        ("method", "GET"),
        ("status", "429"),
        ("decision", "throttled"),
    ];
    assert_eq!(counter(&snapshot, &throttled), 2);
    // A method outside the standard ones cannot grow the label set.
    assert_eq!(counter(&snapshot, &[("method", "other")]), 1);
    assert_eq!(counter(&snapshot, &[("method", "BREW")]), 0);
    assert_eq!(timings(&snapshot, "200"), 1);
    assert_eq!(timings(&snapshot, "429"), 3);
    // Labelled by the route's template, never by the path a client made up.
    assert_eq!(counter(&snapshot, &[("route", "/hello")]), 3);
    assert_eq!(counter(&snapshot, &[("route", "unmatched")]), 1);
    assert_eq!(counter(&snapshot, &[("route", "/hello/../elsewhere")]), 0);
}
