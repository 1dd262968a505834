//! The throttle layer over real loopback TCP, as a user sees it: status, headers, body.

mod support;

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use support::{serve_axum, serve_hyper, Client};
use tokio::sync::Barrier;
use tollgate::key::{ClientIp, Global, HeaderKey};
use tollgate::throttle::{AllowedFields, Rate, Rule, ThrottleLayer};
use tollgate::{ManualClock, RouteTable, TrustedProxies};

fn per_client(rate: Rate, burst: u32, proxies: TrustedProxies) -> Rule {
    Rule::new("per-client", rate, ClientIp::new(proxies)).burst(burst)
}

fn layer(rules: impl IntoIterator<Item = Rule>, clock: &ManualClock) -> ThrottleLayer {
    rules
        .into_iter()
        .fold(ThrottleLayer::builder().clock(clock.clone()), |b, r| {
            b.rule(r)
        })
        .build()
        .unwrap()
}

/// `GET /hello` behind a throttle of `rules` on a manual clock, served on loopback.
async fn serve_hello(rules: impl IntoIterator<Item = Rule>) -> (std::net::SocketAddr, ManualClock) {
    let clock = ManualClock::new();
    let addr = serve_axum(hello_app(layer(rules, &clock))).await;
    (addr, clock)
}

fn hello_app(throttle: ThrottleLayer) -> Router {
    Router::new()
        .route("/hello", get(|| async { "hello" }))
        .layer(throttle)
}

#[tokio::test]
async fn burst_then_429_with_retry_after_and_ratelimit_fields_then_refill() {
    let (addr, clock) =
        serve_hello([per_client(Rate::per_second(5), 5, TrustedProxies::none())]).await;
    let client = Client::new();

    for remaining in (0..5).rev() {
        let reply = client.get(addr, "/hello", &[]).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, "hello");
        // The policy is the same on every response; allowed ones carry only RateLimit.
        assert!(reply.headers.get("ratelimit-policy").is_none());
        let expected_reset = 5 - remaining as u64;
        assert_eq!(
            reply.header("ratelimit"),
            format!(
                r#""per-client";r={remaining};t={}"#,
                expected_reset.div_ceil(5)
            )
        );
    }

    let refused = client.get(addr, "/hello", &[]).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.header("retry-after"), "1");
    assert_eq!(
        refused.header("ratelimit-policy"),
        r#""per-client";q=5;w=1"#
    );
    assert_eq!(refused.header("ratelimit"), r#""per-client";r=0;t=1"#);
    assert_eq!(refused.header("content-type"), "application/problem+json");
    let problem = refused.json();
    assert_eq!(problem["type"], "urn:tollgate:problem:throttled");
    assert_eq!(problem["status"], 429);
    assert_eq!(problem["detail"], r#"rate limit "per-client" exceeded"#);

    // One interval (200 ms) brings back one request, a full period the whole burst.
    clock.advance(Duration::from_millis(200));
    assert_eq!(client.get(addr, "/hello", &[]).await.status, StatusCode::OK);
    assert_eq!(
        client.get(addr, "/hello", &[]).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    clock.advance(Duration::from_secs(1));
    let refilled = client.get(addr, "/hello", &[]).await;
    assert_eq!(refilled.status, StatusCode::OK);
    assert_eq!(refilled.header("ratelimit"), r#""per-client";r=4;t=1"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_connections_against_burst_5_admit_exactly_5() {
    let (addr, _clock) =
        serve_hello([per_client(Rate::per_second(5), 5, TrustedProxies::none())]).await;
    let barrier = Arc::new(Barrier::new(50));

    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                // A client of its own: its own connection, its own clone of the service.
                let client = Client::new();
                barrier.wait().await;
                client.get(addr, "/hello", &[]).await.status
            })
        })
        .collect();
    let mut ok = 0;
    let mut limited = 0;
    for task in tasks {
        match task.await.unwrap() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((ok, limited), (5, 45));
}

#[tokio::test]
async fn clients_are_isolated_by_ip() {
    let (addr, _clock) =
        serve_hello([per_client(Rate::per_minute(2), 2, TrustedProxies::none())]).await;
    let alice = Client::from_ip("127.0.0.2");
    let bob = Client::from_ip("127.0.0.3");

    assert_eq!(alice.get(addr, "/hello", &[]).await.status, StatusCode::OK);
    assert_eq!(alice.get(addr, "/hello", &[]).await.status, StatusCode::OK);
    assert_eq!(
        alice.get(addr, "/hello", &[]).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(bob.get(addr, "/hello", &[]).await.status, StatusCode::OK);
    assert_eq!(bob.get(addr, "/hello", &[]).await.status, StatusCode::OK);
}

#[tokio::test]
async fn trusted_proxy_chain_is_honoured() {
    let proxies = TrustedProxies::new(["127.0.0.1", "10.0.0.0/8"]).unwrap();
    let (addr, _clock) = serve_hello([per_client(Rate::per_minute(1), 1, proxies)]).await;
    let proxy = Client::new();

    // The load balancer (127.0.0.1) got it from 10.1.1.1, which got it from the client.
    let chain = [("x-forwarded-for", "198.51.100.99, 203.0.113.5, 10.1.1.1")];
    assert_eq!(
        proxy.get(addr, "/hello", &chain).await.status,
        StatusCode::OK
    );
    let again = [("x-forwarded-for", "203.0.113.5, 10.1.1.1")];
    assert_eq!(
        proxy.get(addr, "/hello", &again).await.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the same client behind the same proxies must share one budget"
    );
    let other = [("x-forwarded-for", "203.0.113.6, 10.1.1.1")];
    assert_eq!(
        proxy.get(addr, "/hello", &other).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn spoofed_x_forwarded_for_from_untrusted_peer_is_ignored() {
    let proxies = TrustedProxies::new(["10.0.0.0/8"]).unwrap();
    let (addr, _clock) = serve_hello([per_client(Rate::per_minute(2), 2, proxies)]).await;
    let attacker = Client::new();

    for (i, expected) in [
        StatusCode::OK,
        StatusCode::OK,
        StatusCode::TOO_MANY_REQUESTS,
    ]
    .into_iter()
    .enumerate()
    {
        let spoof = format!("198.51.100.{i}");
        let reply = attacker
            .get(addr, "/hello", &[("x-forwarded-for", &spoof)])
            .await;
        assert_eq!(reply.status, expected, "request {i}");
    }
}

#[tokio::test]
async fn one_client_hammering_does_not_exhaust_the_global_budget() {
    let global = Rule::new("global", Rate::per_minute(4), Global).burst(4);
    let per_client = per_client(Rate::per_minute(1), 1, TrustedProxies::none());
    let (addr, _clock) = serve_hello([global, per_client]).await;

    let abuser = Client::from_ip("127.0.0.2");
    let mut admitted = 0;
    for _ in 0..50 {
        let reply = abuser.get(addr, "/hello", &[]).await;
        if reply.status == StatusCode::OK {
            admitted += 1;
        } else {
            assert_eq!(
                reply.json()["detail"],
                r#"rate limit "per-client" exceeded"#
            );
        }
    }
    assert_eq!(admitted, 1);

    // The global budget of 4 lost only the abuser's one admitted request.
    for (ip, global_left) in [("127.0.0.3", 2), ("127.0.0.4", 1), ("127.0.0.5", 0)] {
        let reply = Client::from_ip(ip).get(addr, "/hello", &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{ip}");
        assert_eq!(
            reply.header("ratelimit"),
            format!(
                r#""per-client";r=0;t=60, "global";r={global_left};t={}"#,
                (4 - global_left) * 15
            )
        );
    }
    let late = Client::from_ip("127.0.0.6").get(addr, "/hello", &[]).await;
    assert_eq!(late.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        late.header("ratelimit-policy"),
        r#""per-client";q=1;w=60, "global";q=4;w=60"#
    );
    assert_eq!(late.json()["detail"], r#"rate limit "global" exceeded"#);
}

#[tokio::test]
async fn allowed_responses_can_carry_the_policy_too_or_no_fields() {
    let clock = ManualClock::new();
    let rule = || per_client(Rate::per_second(5), 5, TrustedProxies::none());
    let with_policy = ThrottleLayer::builder()
        .rule(rule())
        .allowed_fields(AllowedFields::RateLimitAndPolicy)
        .clock(clock.clone())
        .build()
        .unwrap();
    let without = ThrottleLayer::builder()
        .rule(rule())
        .allowed_fields(AllowedFields::None)
        .clock(clock.clone())
        .build()
        .unwrap();
    let client = Client::new();

    let addr = serve_axum(hello_app(with_policy)).await;
    let reply = client.get(addr, "/hello", &[]).await;
    assert_eq!(reply.header("ratelimit-policy"), r#""per-client";q=5;w=1"#);
    assert_eq!(reply.header("ratelimit"), r#""per-client";r=4;t=1"#);

    let addr = serve_axum(hello_app(without)).await;
    for _ in 0..5 {
        let reply = client.get(addr, "/hello", &[]).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(reply.headers.get("ratelimit").is_none());
    }
    // Refusals carry both fields whatever the setting.
    let refused = client.get(addr, "/hello", &[]).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        refused.header("ratelimit-policy"),
        r#""per-client";q=5;w=1"#
    );
    assert_eq!(refused.header("ratelimit"), r#""per-client";r=0;t=1"#);
}

#[tokio::test]
async fn keeping_the_inner_body_changes_nothing_a_client_sees() {
    let clock = ManualClock::new();
    let throttle = layer(
        [per_client(Rate::per_second(5), 1, TrustedProxies::none())],
        &clock,
    )
    .keep_inner_body();
    let app = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .layer(throttle);
    let addr = serve_axum(app).await;
    let client = Client::new();

    let allowed = client.get(addr, "/hello", &[]).await;
    assert_eq!(allowed.status, StatusCode::OK);
    assert_eq!(allowed.body, "hello");
    assert_eq!(allowed.header("ratelimit"), r#""per-client";r=0;t=1"#);
    let refused = client.get(addr, "/hello", &[]).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.header("content-type"), "application/problem+json");
    assert_eq!(refused.header("retry-after"), "1");
    assert_eq!(refused.json()["type"], "urn:tollgate:problem:throttled");
}

#[tokio::test]
async fn route_layer_throttles_only_its_routes() {
    let clock = ManualClock::new();
    let throttle = layer(
        [per_client(Rate::per_minute(1), 1, TrustedProxies::none())],
        &clock,
    );
    let app = Router::new()
        .route("/limited", get(|| async { "limited" }))
        .route_layer(throttle)
        .route("/free", get(|| async { "free" }));
    let addr = serve_axum(app).await;
    let client = Client::new();

    assert_eq!(
        client.get(addr, "/limited", &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        client.get(addr, "/limited", &[]).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    for _ in 0..3 {
        let reply = client.get(addr, "/free", &[]).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(reply.headers.get("ratelimit").is_none());
    }
    // route_layer leaves unmatched paths alone: a 404, not a 429.
    assert_eq!(
        client.get(addr, "/missing", &[]).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn works_on_a_plain_hyper_service() {
    let clock = ManualClock::new();
    let throttle = layer(
        [per_client(Rate::per_minute(2), 2, TrustedProxies::none())],
        &clock,
    );
    let service = tower::ServiceBuilder::new()
        .layer(throttle)
        .service(tower::service_fn(|_request| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"plain"))))
        }));
    let addr = serve_hyper(service).await;
    let client = Client::new();

    let reply = client.get(addr, "/anything", &[]).await;
    assert_eq!(
        (reply.status, &reply.body[..]),
        (StatusCode::OK, &b"plain"[..])
    );
    assert_eq!(
        client.get(addr, "/anything", &[]).await.status,
        StatusCode::OK
    );
    let refused = client.get(addr, "/anything", &[]).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.header("retry-after"), "30");
}

#[tokio::test]
async fn route_scoped_rule_leaves_other_routes_alone() {
    let clock = ManualClock::new();
    let search = Rule::new("search", Rate::per_minute(1), Global)
        .burst(1)
        .routes(RouteTable::new().with("GET /search", ()).unwrap());
    let app = Router::new()
        .route("/search", get(|| async { "results" }))
        .route("/hello", get(|| async { "hello" }))
        .layer(layer([search], &clock));
    let addr = serve_axum(app).await;
    let client = Client::new();

    assert_eq!(
        client.get(addr, "/search?q=a", &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        client.get(addr, "/search?q=b", &[]).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    let hello = client.get(addr, "/hello", &[]).await;
    assert_eq!(hello.status, StatusCode::OK);
    assert!(hello.headers.get("ratelimit").is_none());
}

#[tokio::test]
async fn a_refused_route_request_does_not_spend_the_global_budget() {
    let clock = ManualClock::new();
    let global = Rule::new("global", Rate::per_minute(2), Global).burst(2);
    let search = Rule::new("search", Rate::per_minute(1), Global)
        .burst(1)
        .routes(RouteTable::new().with("GET /search", ()).unwrap());
    let app = Router::new()
        .route("/search", get(|| async { "results" }))
        .route("/hello", get(|| async { "hello" }))
        .layer(layer([global, search], &clock));
    let addr = serve_axum(app).await;
    let client = Client::new();

    assert_eq!(
        client.get(addr, "/search", &[]).await.status,
        StatusCode::OK
    );
    for _ in 0..5 {
        let refused = client.get(addr, "/search", &[]).await;
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.json()["detail"], r#"rate limit "search" exceeded"#);
    }
    // The global budget of 2 lost only the one admitted search.
    let hello = client.get(addr, "/hello", &[]).await;
    assert_eq!(hello.status, StatusCode::OK);
    assert_eq!(hello.header("ratelimit"), r#""global";r=0;t=60"#);
}

#[tokio::test]
async fn stacked_throttles_report_both_rules_and_the_inner_refusal_stays_true() {
    let clock = ManualClock::new();
    let coarse = layer(
        [Rule::new("coarse", Rate::per_minute(100), Global).burst(100)],
        &clock,
    );
    let plan = layer(
        [per_client(Rate::per_minute(1), 1, TrustedProxies::none())],
        &clock,
    );
    let app = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .layer(plan)
        .layer(coarse);
    let addr = serve_axum(app).await;
    let client = Client::new();

    let allowed = client.get(addr, "/hello", &[]).await;
    assert_eq!(allowed.status, StatusCode::OK);
    let items: Vec<_> = allowed.headers.get_all("ratelimit").iter().collect();
    assert_eq!(items, [r#""per-client";r=0;t=60"#, r#""coarse";r=99;t=1"#]);

    let refused = client.get(addr, "/hello", &[]).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    let items: Vec<_> = refused.headers.get_all("ratelimit").iter().collect();
    assert_eq!(items, [r#""per-client";r=0;t=60"#, r#""coarse";r=98;t=2"#]);
    let policies: Vec<_> = refused.headers.get_all("ratelimit-policy").iter().collect();
    assert_eq!(policies, [r#""per-client";q=1;w=60"#]);
}

#[tokio::test]
async fn missing_key_header_is_a_clear_400_and_spends_nothing() {
    let clock = ManualClock::new();
    let global = Rule::new("global", Rate::per_minute(1), Global).burst(1);
    let by_client = Rule::new(
        "by-client",
        Rate::per_minute(10),
        HeaderKey::new("x-client-id"),
    );
    let addr = serve_axum(hello_app(layer([global, by_client], &clock))).await;
    let client = Client::new();

    let refused = client.get(addr, "/hello", &[]).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(refused.header("content-type"), "application/problem+json");
    assert_eq!(refused.json()["detail"], "expected a x-client-id header");
    // The refused request took nothing from the global budget of one.
    let reply = client
        .get(addr, "/hello", &[("x-client-id", "tenant-1")])
        .await;
    assert_eq!(reply.status, StatusCode::OK);
}

fn metrics_snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().unwrap();
        snapshotter
    })
}

type Snapshot = Vec<(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;

fn counter(snapshot: &Snapshot, name: &str, labels: &[(&str, &str)]) -> u64 {
    snapshot
        .iter()
        .filter(|(key, ..)| {
            key.key().name() == name
                && labels
                    .iter()
                    .all(|(k, v)| key.key().labels().any(|l| l.key() == *k && l.value() == *v))
        })
        .map(|(.., value)| match value {
            DebugValue::Counter(n) => *n,
            other => panic!("{name} is not a counter: {other:?}"),
        })
        .sum()
}

#[tokio::test]
async fn shadow_rule_lets_everything_through_and_counts() {
    let snapshotter = metrics_snapshotter();
    let clock = ManualClock::new();
    let shadow = Rule::new("shadow-rollout", Rate::per_minute(2), Global)
        .burst(2)
        .shadow(true);
    // Unique rule names: the recorder is global to this test binary.
    let enforced = Rule::new(
        "beside-shadow",
        Rate::per_minute(20),
        ClientIp::new(TrustedProxies::none()),
    )
    .burst(20);
    let addr = serve_axum(hello_app(layer([shadow, enforced], &clock))).await;
    let client = Client::new();

    for remaining in (10..20).rev() {
        let reply = client.get(addr, "/hello", &[]).await;
        assert_eq!(reply.status, StatusCode::OK);
        // A shadow rule is invisible to clients; the enforced one still reports.
        assert_eq!(
            reply.header("ratelimit"),
            format!(
                r#""beside-shadow";r={remaining};t={}"#,
                (20 - remaining) * 3
            )
        );
    }
    // Taking a snapshot resets the debugging recorder's counters: take one.
    let snapshot = snapshotter.snapshot().into_vec();
    let shadow_rule = ("rule", "shadow-rollout");
    assert_eq!(
        counter(&snapshot, "tollgate_throttle_allowed_total", &[shadow_rule]),
        2
    );
    assert_eq!(
        counter(
            &snapshot,
            "tollgate_throttle_limited_total",
            &[shadow_rule, ("shadow", "true")]
        ),
        8
    );
    assert_eq!(
        counter(
            &snapshot,
            "tollgate_throttle_allowed_total",
            &[("rule", "beside-shadow")]
        ),
        10
    );
}
