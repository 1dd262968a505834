//! Rule semantics through the service, driven by a manual clock.

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use support::{bare, request_from};
use tollgate_core::key::{Global, HeaderKey, PeerIp};
use tollgate_core::{Key, ManualClock};
use tollgate_throttle::{
    Check, MemoryStore, MissingKey, Outcome, Rate, Rule, StoreError, StoreFailure, ThrottleError,
    ThrottleLayer, ThrottleStore,
};
use tower::{Layer, Service, ServiceExt};

async fn status<S>(service: &S, request: Request<()>) -> StatusCode
where
    S: Service<
            Request<()>,
            Response = Response<tollgate_core::ResponseBody<Empty<Bytes>>>,
            Error = Infallible,
        > + Clone,
{
    service.clone().oneshot(request).await.unwrap().status()
}

#[tokio::test]
async fn rates_admit_exactly_what_they_say_over_a_simulated_minute() {
    for (rate, expected) in [("10/s", 600), ("100/min", 100), ("0.5/s", 30)] {
        let clock = ManualClock::new();
        let layer = ThrottleLayer::builder()
            .rule(Rule::new("rate", rate.parse().unwrap(), Global).burst(1))
            .clock(clock.clone())
            .build()
            .unwrap();
        let service = layer.layer(bare());
        let mut admitted = 0;
        // A request every 10 ms for one minute: [0 s, 60 s).
        for _ in 0..6000 {
            if status(&service, request_from("192.0.2.1:1")).await == StatusCode::OK {
                admitted += 1;
            }
            clock.advance(Duration::from_millis(10));
        }
        assert_eq!(admitted, expected, "{rate}");
    }
}

#[tokio::test]
async fn burst_adds_to_the_first_minute_only() {
    let clock = ManualClock::new();
    let layer = ThrottleLayer::builder()
        .rule(Rule::new("rate", Rate::per_second(10), Global).burst(10))
        .clock(clock.clone())
        .build()
        .unwrap();
    let service = layer.layer(bare());
    let mut per_minute = [0; 2];
    for step in 0..12_000 {
        if status(&service, request_from("192.0.2.1:1")).await == StatusCode::OK {
            per_minute[step / 6000] += 1;
        }
        clock.advance(Duration::from_millis(10));
    }
    assert_eq!(per_minute, [609, 600]);
}

#[tokio::test]
async fn stored_keys_never_exceed_capacity_under_200k_distinct_keys() {
    let clock = ManualClock::new();
    let layer = ThrottleLayer::builder()
        .rule(
            Rule::new(
                "by-client",
                Rate::per_second(5),
                HeaderKey::new("x-client-id"),
            )
            .burst(5),
        )
        .capacity(10_000)
        .clock(clock.clone())
        .build()
        .unwrap();
    let service = layer.clone().layer(bare());
    let from = |client: &str| {
        let mut request = request_from("192.0.2.1:1");
        request
            .headers_mut()
            .insert("x-client-id", client.parse().unwrap());
        request
    };
    let mut hot_admitted = 0;
    // 200,000 distinct clients at one every 10 µs (2 s), while one client sends every time.
    for n in 0..200_000u32 {
        assert_eq!(status(&service, from(&n.to_string())).await, StatusCode::OK);
        if status(&service, from("hot")).await == StatusCode::OK {
            hot_admitted += 1;
        }
        if n % 1000 == 0 {
            assert!(layer.stored_keys("by-client").unwrap() <= 10_000);
        }
        clock.advance(Duration::from_micros(10));
    }
    let stored = layer.stored_keys("by-client").unwrap();
    assert!((1..=10_000).contains(&stored), "{stored}");
    // The flood never pushed the active client out: burst 5, then one per 200 ms for 2 s.
    assert_eq!(hot_admitted, 5 + 9);
}

#[tokio::test]
async fn clones_of_layer_and_service_share_one_limiter() {
    // tower's RateLimit keeps its state per service clone; ours must not.
    let layer = ThrottleLayer::builder()
        .rule(Rule::new("shared", Rate::per_minute(5), PeerIp).burst(5))
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let services: Vec<_> = (0..10)
        .map(|i| {
            if i % 2 == 0 {
                layer.clone().layer(bare())
            } else {
                layer.layer(bare()).clone()
            }
        })
        .collect();
    let mut admitted = 0;
    for service in services.iter().cycle().take(100) {
        if status(service, request_from("192.0.2.1:1")).await == StatusCode::OK {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 5);
}

/// A store that decides like the in-memory one, but always through a future, as a networked
/// store would.
struct DeferredStore(MemoryStore);

impl ThrottleStore for DeferredStore {
    type Future = Pin<Box<dyn Future<Output = Result<Outcome, StoreError>> + Send>>;

    fn check(&self, rule: &Rule, key: &Key) -> Check<Self::Future> {
        let Check::Ready(result) = self.0.check(rule, key) else {
            unreachable!("the memory store is always ready");
        };
        Check::Pending(Box::pin(async move {
            tokio::task::yield_now().await;
            result
        }))
    }
}

#[tokio::test]
async fn a_store_that_answers_later_gives_the_same_decisions_and_headers() {
    let clock = ManualClock::new();
    let build = |deferred: bool| {
        let builder = ThrottleLayer::builder()
            .rule(Rule::new("global", Rate::per_minute(3), Global).burst(3))
            .rule(Rule::new("per-client", Rate::per_minute(2), PeerIp).burst(2))
            .clock(clock.clone());
        if deferred {
            builder
                .build_with_store(|rules, clock| {
                    DeferredStore(MemoryStore::new(rules, 100, clock.clone()))
                })
                .map(|layer| layer.layer(bare()).boxed_clone())
        } else {
            builder
                .build()
                .map(|layer| layer.layer(bare()).boxed_clone())
        }
    };
    let memory = build(false).unwrap();
    let deferred = build(true).unwrap();
    let peers = [
        "192.0.2.1:1",
        "192.0.2.1:1",
        "192.0.2.1:1",
        "192.0.2.2:1",
        "192.0.2.3:1",
    ];
    for (i, peer) in peers.into_iter().enumerate() {
        let a = memory.clone().oneshot(request_from(peer)).await.unwrap();
        let b = deferred.clone().oneshot(request_from(peer)).await.unwrap();
        assert_eq!(a.status(), b.status(), "request {i}");
        assert_eq!(a.headers(), b.headers(), "request {i}");
    }
}

#[tokio::test]
async fn a_rule_that_skips_missing_keys_leaves_anonymous_requests_to_the_other_rules() {
    let layer = ThrottleLayer::builder()
        .rule(
            Rule::new(
                "per-tenant",
                Rate::per_minute(1),
                HeaderKey::new("x-tenant"),
            )
            .burst(1)
            .on_missing_key(MissingKey::Skip),
        )
        .rule(Rule::new("global", Rate::per_minute(3), Global).burst(3))
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let service = layer.layer(bare());
    let tenant = || {
        let mut request = request_from("192.0.2.1:1");
        request
            .headers_mut()
            .insert("x-tenant", "acme".parse().unwrap());
        request
    };

    assert_eq!(status(&service, tenant()).await, StatusCode::OK);
    assert_eq!(
        status(&service, tenant()).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Anonymous requests skip the per-tenant rule and meet only the global one (2 left of 3).
    let anonymous = service
        .clone()
        .oneshot(request_from("192.0.2.2:1"))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::OK);
    assert_eq!(anonymous.headers()["ratelimit"], r#""global";r=1;t=40"#);
    assert_eq!(
        status(&service, request_from("192.0.2.2:1")).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&service, request_from("192.0.2.2:1")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// How a batching store answers `check_all`.
#[derive(Clone, Copy)]
enum Batch {
    /// As the contract says: rule by rule, up to the first refusal not in shadow mode.
    Honest,
    /// One decision fewer than it should, refusing nothing.
    Short,
    /// One decision more than there are rules.
    Long,
}

/// A store that decides all the rules of a request together, through the in-memory store,
/// and counts its calls.
struct BatchingStore {
    memory: MemoryStore,
    rules: Vec<Rule>,
    answer: Batch,
    batches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl ThrottleStore for BatchingStore {
    type Future = tollgate_throttle::NeverPending;

    const BATCHES: bool = true;

    fn check(&self, rule: &Rule, key: &Key) -> Check<Self::Future> {
        self.memory.check(rule, key)
    }

    fn check_all(&self, checks: &[(&Rule, &Key)]) -> Option<tollgate_throttle::CheckAll> {
        self.batches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut outcomes = Vec::new();
        for (rule, key) in checks {
            let Check::Ready(Ok(outcome)) = self.memory.check(rule, key) else {
                unreachable!("the memory store decides at once");
            };
            outcomes.push(outcome);
            if matches!(outcome, Outcome::Limited { .. }) && !self.rules[rule.index()].is_shadow() {
                break;
            }
        }
        match self.answer {
            Batch::Honest => {}
            Batch::Short => {
                outcomes.truncate(checks.len() - 1);
            }
            Batch::Long => outcomes.push(outcomes[0]),
        }
        Some(Box::pin(async move {
            tokio::task::yield_now().await;
            Ok(outcomes)
        }))
    }
}

fn batching_rules() -> Vec<Rule> {
    vec![
        Rule::new("per-client", Rate::per_minute(3), PeerIp).burst(2),
        Rule::new("watch", Rate::per_minute(1), Global).shadow(true),
        Rule::new("tenant", Rate::per_minute(2), HeaderKey::new("x-tenant"))
            .burst(3)
            .on_missing_key(MissingKey::Skip),
        // Narrow rules first: a request without the header is refused here only if the rules
        // before it let it through.
        Rule::new("user", Rate::per_minute(4), HeaderKey::new("x-user")).burst(4),
        Rule::new("global", Rate::per_minute(6), Global).burst(5),
    ]
}

fn batching_layer(
    clock: &ManualClock,
    answer: Batch,
    policy: StoreFailure,
) -> (
    tollgate_throttle::Throttle<support::Bare, BatchingStore>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let batches = std::sync::Arc::default();
    let mut builder = ThrottleLayer::builder()
        .clock(clock.clone())
        .on_store_error(policy);
    for rule in batching_rules() {
        builder = builder.rule(rule);
    }
    let layer = builder
        .build_with_store(|rules, clock| BatchingStore {
            memory: MemoryStore::new(rules, 100, clock.clone()),
            rules: rules.to_vec(),
            answer,
            batches: std::sync::Arc::clone(&batches),
        })
        .unwrap();
    (layer.layer(bare()), batches)
}

#[tokio::test]
async fn rules_decided_together_answer_as_rules_decided_one_by_one() {
    let clock = ManualClock::new();
    let mut builder = ThrottleLayer::builder().clock(clock.clone());
    for rule in batching_rules() {
        builder = builder.rule(rule);
    }
    let memory = builder.build().unwrap().layer(bare());
    let (together, batches) = batching_layer(&clock, Batch::Honest, StoreFailure::Allow);
    let mut missing_user = 0;
    for i in 0..120u32 {
        let request = || {
            let mut request =
                request_from(["192.0.2.1:1", "192.0.2.2:1", "192.0.2.3:1"][i as usize % 3]);
            if i % 4 != 0 {
                request
                    .headers_mut()
                    .insert("x-tenant", "acme".parse().unwrap());
            }
            if i % 7 != 3 {
                request
                    .headers_mut()
                    .insert("x-user", "ann".parse().unwrap());
            }
            request
        };
        missing_user += usize::from(i % 7 == 3);
        let a = memory.clone().oneshot(request()).await.unwrap();
        let b = together.clone().oneshot(request()).await.unwrap();
        assert_eq!(a.status(), b.status(), "request {i}");
        assert_eq!(a.headers(), b.headers(), "request {i}");
        clock.advance(Duration::from_secs(u64::from(i % 5) * 3));
    }
    // Requests with every key went to the store together; those without `x-user`, whose rule
    // refuses a missing key, went rule by rule, so that the rules before it decide first.
    let together = batches.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(together, 120 - missing_user);
}

#[tokio::test]
async fn a_store_that_leaves_rules_undecided_has_failed() {
    let clock = ManualClock::new();
    let request = || {
        let mut request = request_from("192.0.2.1:1");
        request
            .headers_mut()
            .insert("x-tenant", "acme".parse().unwrap());
        request
            .headers_mut()
            .insert("x-user", "ann".parse().unwrap());
        request
    };
    for answer in [Batch::Short, Batch::Long] {
        let (closed, _) = batching_layer(&clock, answer, StoreFailure::Reject);
        let response = closed.oneshot(request()).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()["retry-after"], "1");
        let (open, _) = batching_layer(&clock, answer, StoreFailure::Allow);
        let response = open.oneshot(request()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
}

struct BrokenStore;

impl ThrottleStore for BrokenStore {
    type Future = std::future::Ready<Result<Outcome, StoreError>>;

    fn check(&self, _: &Rule, _: &Key) -> Check<Self::Future> {
        Check::Pending(std::future::ready(Err(StoreError(
            "connection refused".into(),
        ))))
    }
}

#[tokio::test]
async fn store_failure_follows_the_configured_policy() {
    let build = |policy| {
        ThrottleLayer::builder()
            .rule(Rule::new("global", Rate::per_second(1), Global))
            .on_store_error(policy)
            .build_with_store(|_, _| BrokenStore)
            .unwrap()
            .layer(bare())
    };
    let open = build(StoreFailure::Allow)
        .oneshot(request_from("192.0.2.1:1"))
        .await
        .unwrap();
    assert_eq!(open.status(), StatusCode::OK);
    let closed = build(StoreFailure::Reject)
        .oneshot(request_from("192.0.2.1:1"))
        .await
        .unwrap();
    assert_eq!(closed.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(closed.headers()["retry-after"], "1");
}

#[test]
fn invalid_layers_are_refused_at_build_time_with_the_rule_named() {
    let rule = |name: &str| Rule::new(name.to_owned(), Rate::per_second(1), Global);
    let error = |builder: tollgate_throttle::ThrottleBuilder| builder.build().unwrap_err();

    assert!(matches!(
        error(ThrottleLayer::builder()),
        ThrottleError::NoRules
    ));
    let duplicate = error(ThrottleLayer::builder().rule(rule("a")).rule(rule("a")));
    assert_eq!(
        duplicate.to_string(),
        r#"two rules are named "a"; rule names must be unique"#
    );
    let zero = error(ThrottleLayer::builder().rule(rule("a").burst(0)));
    assert_eq!(
        zero.to_string(),
        r#"rule "a" has burst 0; the burst must be at least 1"#
    );
    let quoted = error(ThrottleLayer::builder().rule(rule("a\"b")));
    assert!(matches!(quoted, ThrottleError::InvalidRuleName(name) if name == "a\"b"));
    let forgetful = error(ThrottleLayer::builder().rule(rule("a").capacity(0)));
    assert_eq!(
        forgetful.to_string(),
        r#"rule "a" has capacity 0; it must remember at least one key"#
    );
    let centuries = Rule::new("slow", "1/300000day".parse().unwrap(), Global);
    let too_slow = error(ThrottleLayer::builder().rule(centuries));
    assert_eq!(
        too_slow.to_string(),
        r#"rule "slow": burst × interval must be at most 100 years"#
    );
}
