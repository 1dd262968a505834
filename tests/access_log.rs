//! The access log over real loopback TCP: one `tracing` event per request, captured by a
//! subscriber of this test binary, carrying what every step of the gateway decided — for a
//! throttled, a cached, an unauthorized and an aggregated request — and never the API key or
//! the token.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use support::{bearer, jwt, serve_axum, Client, KeyedPlan};
use tollgate::aggregate::{Aggregate, Backend, Mock};
use tollgate::auth::AuthLayer;
use tollgate::cache::{CacheLayer, CachePolicy};
use tollgate::key::ClientIp;
use tollgate::observe::AccessLogLayer;
use tollgate::throttle::{Rate, Rule, ThrottleLayer};
use tollgate::{Gateway, ManualClock, TrustedProxies};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// Every access-log event this test binary's gateways wrote, as field name → value.
static EVENTS: Mutex<Vec<BTreeMap<String, Value>>> = Mutex::new(Vec::new());

/// Collects the fields of `tollgate::access` events.
struct Capture;

struct Fields<'a>(&'a mut BTreeMap<String, Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), json!(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), json!(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), json!(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), json!(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), json!(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), json!(format!("{value:?}")));
    }
}

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() == "tollgate::access" {
            let mut fields = BTreeMap::new();
            event.record(&mut Fields(&mut fields));
            EVENTS.lock().unwrap().push(fields);
        }
    }
}

fn capture() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Capture))
            .unwrap();
    });
}

/// The access-log event of the request with `request_id`: exactly one, waited for a little
/// (a streamed body's event is written after its last byte went out).
async fn event(request_id: &str) -> BTreeMap<String, Value> {
    for _ in 0..200 {
        let events: Vec<_> = EVENTS
            .lock()
            .unwrap()
            .iter()
            .filter(|event| event.get("request_id") == Some(&json!(request_id)))
            .cloned()
            .collect();
        match events.len() {
            0 => tokio::time::sleep(Duration::from_millis(10)).await,
            1 => return events.into_iter().next().unwrap(),
            n => panic!("{n} access-log events for request {request_id}: {events:?}"),
        }
    }
    panic!("no access-log event for request {request_id}");
}

/// The fields that must hold `expected` exactly, and those that must be absent.
fn assert_fields(event: &BTreeMap<String, Value>, expected: &[(&str, Value)], absent: &[&str]) {
    for (name, value) in expected {
        assert_eq!(event.get(*name), Some(value), "{name} in {event:?}");
    }
    for name in absent {
        assert!(event.get(*name).is_none(), "{name} in {event:?}");
    }
}

/// Neither secret appears anywhere in any event.
fn assert_no_secrets(secrets: &[&str]) {
    let events = serde_json::to_string(&*EVENTS.lock().unwrap()).unwrap();
    for secret in secrets {
        assert!(!events.contains(secret), "{secret} was logged: {events}");
    }
}

struct Stack {
    addr: SocketAddr,
    plan: KeyedPlan,
    token: String,
}

static CACHED_CALLS: AtomicU64 = AtomicU64::new(0);

/// The whole gateway in front of three routes: `/cached` (cached for 30 s), `/dashboard` (an
/// aggregate of a mock profile and an orders router) and `/plain`. The throttle allows each
/// client (behind the trusted proxy 127.0.0.1) 3 requests an hour, on a clock that stands
/// still; every route needs a bearer token and an API key on plan `basic`.
async fn stack() -> Stack {
    capture();
    let throttle = ThrottleLayer::builder()
        .rule(
            Rule::new(
                "per-client",
                Rate::per_hour(1),
                ClientIp::new(TrustedProxies::new(["127.0.0.1/32"]).unwrap()),
            )
            .burst(3),
        )
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let plan = KeyedPlan::new(100).await;
    let dashboard = Aggregate::builder()
        .name("dashboard")
        .backend(Backend::service(
            "profile",
            Mock::json(StatusCode::OK, &json!({ "profile": { "name": "Ada" } })),
        ))
        .backend(
            Backend::service(
                "orders",
                Router::new().route("/orders", get(|| async { Json(json!([1, 2])) })),
            )
            .path("/orders")
            .collection("orders"),
        )
        .build()
        .unwrap();
    let gateway = Gateway::builder()
        .request_id()
        .access_log(
            AccessLogLayer::new().trusted_proxies(TrustedProxies::new(["127.0.0.1/32"]).unwrap()),
        )
        .throttle(throttle)
        .authorizer(AuthLayer::new(jwt()))
        .usage(plan.plans.layer())
        .cache(
            CacheLayer::builder()
                .policy(CachePolicy::new().ttl(Duration::from_secs(30)))
                .build()
                .unwrap(),
        )
        .build();
    let app = Router::new()
        .route(
            "/cached",
            get(|| async { Json(json!({ "call": CACHED_CALLS.fetch_add(1, Ordering::SeqCst) })) }),
        )
        .route("/plain", get(|| async { "plain" }))
        .route_service("/dashboard", dashboard)
        .layer(gateway);
    Stack {
        addr: serve_axum(app).await,
        plan,
        token: bearer("alice"),
    }
}

impl Stack {
    /// `GET path` from client `ip` (named by the trusted proxy), with request id `id`, the
    /// token and the key when `credentials`.
    async fn get(&self, path: &str, ip: &str, id: &str, credentials: bool) -> support::Reply {
        let mut headers = vec![("x-request-id", id), ("x-forwarded-for", ip)];
        if credentials {
            headers.push(("authorization", &self.token));
            headers.push(("x-api-key", &self.plan.key));
        }
        Client::new().get(self.addr, path, &headers).await
    }
}

#[tokio::test]
async fn a_throttled_request_is_logged_with_its_client_and_the_throttle_decision() {
    let stack = stack().await;
    for n in 0..3 {
        let reply = stack
            .get("/plain", "203.0.113.1", &format!("throttle-{n}"), true)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    }
    let reply = stack
        .get("/plain", "203.0.113.1", "throttle-refused", true)
        .await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{reply:?}");

    let allowed = event("throttle-0").await;
    assert_fields(
        &allowed,
        &[
            ("method", json!("GET")),
            ("path", json!("/plain")),
            ("route", json!("/plain")),
            ("status", json!(200)),
            ("client_ip", json!("203.0.113.1")),
            ("subject", json!("alice")),
            ("api_key_id", json!(stack.plan.key_id)),
            ("plan", json!("basic")),
            ("decision", json!("allowed")),
            ("bytes", json!(5)),
        ],
        &["rejection", "upstream_ms", "aborted"],
    );
    let latency = allowed["latency_ms"].as_f64().unwrap();
    assert!(
        latency > 0.0 && latency <= allowed["total_ms"].as_f64().unwrap(),
        "{allowed:?}"
    );

    let refused = event("throttle-refused").await;
    assert_fields(
        &refused,
        &[
            ("status", json!(429)),
            ("client_ip", json!("203.0.113.1")),
            ("decision", json!("throttled")),
            ("rejection", json!("urn:tollgate:problem:throttled")),
            ("route", json!("/plain")),
        ],
        // Refused before the authorizer and the usage plan saw it.
        &["subject", "api_key_id", "plan", "cache"],
    );
    assert_eq!(
        refused["bytes"].as_u64().unwrap(),
        reply.body.len() as u64,
        "{refused:?}"
    );
    assert_no_secrets(&[&stack.plan.key, stack.token.trim_start_matches("Bearer ")]);
}

#[tokio::test]
async fn a_cached_request_is_logged_as_a_miss_then_a_hit() {
    let stack = stack().await;
    let first = stack
        .get("/cached", "203.0.113.2", "cache-miss", true)
        .await;
    let second = stack.get("/cached", "203.0.113.2", "cache-hit", true).await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    assert_eq!(second.header("x-cache-status"), "HIT", "{second:?}");
    assert_eq!(first.body, second.body);

    assert_fields(
        &event("cache-miss").await,
        &[("cache", json!("MISS")), ("decision", json!("allowed"))],
        &[],
    );
    let hit = event("cache-hit").await;
    assert_fields(
        &hit,
        &[
            ("cache", json!("HIT")),
            ("route", json!("/cached")),
            ("status", json!(200)),
            // A hit was authorized and counted against the key, as the log says.
            ("subject", json!("alice")),
            ("api_key_id", json!(stack.plan.key_id)),
            ("plan", json!("basic")),
            ("bytes", json!(second.body.len())),
        ],
        &["rejection", "upstream_ms"],
    );
    assert_no_secrets(&[&stack.plan.key, stack.token.trim_start_matches("Bearer ")]);
}

#[tokio::test]
async fn an_unauthorized_request_is_logged_with_its_rejection_and_no_credentials() {
    let stack = stack().await;
    let forged = "Bearer forged.token.value";
    let reply = Client::new()
        .get(
            stack.addr,
            "/plain?api_key=in-the-query",
            &[
                ("x-request-id", "unauthorized"),
                ("x-forwarded-for", "203.0.113.3"),
                ("authorization", forged),
                ("x-api-key", &stack.plan.key),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");
    assert_fields(
        &event("unauthorized").await,
        &[
            ("status", json!(401)),
            ("decision", json!("unauthorized")),
            ("rejection", json!("urn:tollgate:problem:unauthorized")),
            // The query string, which may hold credentials, is never logged.
            ("path", json!("/plain")),
            ("client_ip", json!("203.0.113.3")),
        ],
        &["subject", "api_key_id", "plan"],
    );
    assert_no_secrets(&[&stack.plan.key, "forged.token.value", "in-the-query"]);
}

#[tokio::test]
async fn an_aggregated_request_is_logged_with_its_upstream_time() {
    let stack = stack().await;
    let reply = stack
        .get("/dashboard", "203.0.113.4", "aggregate", true)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(
        reply.json(),
        json!({ "profile": { "name": "Ada" }, "orders": [1, 2] })
    );
    let event = event("aggregate").await;
    assert_fields(
        &event,
        &[
            ("route", json!("/dashboard")),
            ("status", json!(200)),
            ("subject", json!("alice")),
            ("api_key_id", json!(stack.plan.key_id)),
            ("decision", json!("allowed")),
            ("bytes", json!(reply.body.len())),
        ],
        &["rejection"],
    );
    let upstream = event["upstream_ms"].as_f64().expect("upstream_ms");
    let latency = event["latency_ms"].as_f64().unwrap();
    assert!(upstream > 0.0 && upstream <= latency, "{event:?}");
    assert_no_secrets(&[&stack.plan.key, stack.token.trim_start_matches("Bearer ")]);
}

/// A body of chunks (popped from the end) whose size is not known ahead: streamed. A chunk
/// `"!"` is an error, as an upstream that breaks off.
struct Chunks(Vec<&'static str>);

impl http_body::Body for Chunks {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let chunk = self.0.pop();
        std::task::Poll::Ready(chunk.map(|chunk| match chunk {
            "!" => Err(std::io::Error::other("the upstream broke off")),
            chunk => Ok(http_body::Frame::data(chunk.into())),
        }))
    }
}

/// An app of `/stream` (three chunks), `/broken` (a chunk, then an error) and `/slow` (an
/// answer after 10 s), behind request ids and the access log.
async fn streaming_app() -> SocketAddr {
    capture();
    // No cache here: it would read the body whole before sending it.
    let app = Router::new()
        .route(
            "/stream",
            get(|| async { axum::body::Body::new(Chunks(vec!["three", "two ", "one "])) }),
        )
        .route(
            "/broken",
            get(|| async { axum::body::Body::new(Chunks(vec!["!", "half "])) }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                "late"
            }),
        )
        .layer(
            Gateway::builder()
                .request_id()
                .access_log(AccessLogLayer::new())
                .build(),
        );
    serve_axum(app).await
}

#[tokio::test]
async fn a_streamed_body_is_logged_once_it_has_gone_out_with_its_size() {
    let addr = streaming_app().await;
    let reply = Client::new()
        .get(addr, "/stream", &[("x-request-id", "stream")])
        .await;
    assert_eq!(reply.body, "one two three");
    let event = event("stream").await;
    assert_fields(
        &event,
        &[("bytes", json!(13)), ("route", json!("/stream"))],
        &["aborted"],
    );
    assert!(
        event["total_ms"].as_f64().unwrap() >= event["latency_ms"].as_f64().unwrap(),
        "{event:?}"
    );
}

#[tokio::test]
async fn a_head_request_is_logged_complete_though_its_body_is_never_read() {
    let addr = streaming_app().await;
    let reply = Client::new()
        .send("HEAD", addr, "/stream", &[("x-request-id", "head")])
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_fields(
        &event("head").await,
        &[
            ("status", json!(200)),
            ("bytes", json!(0)),
            ("method", json!("HEAD")),
        ],
        &["aborted", "body_error"],
    );
}

#[tokio::test]
async fn a_body_that_fails_while_it_is_sent_is_logged_as_failed_with_what_was_sent() {
    let addr = streaming_app().await;
    // The client sees the connection break; what it reads does not matter here.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let request = http::Request::get(format!("http://{addr}/broken"))
        .header("x-request-id", "broken")
        .body(http_body_util::Empty::new())
        .unwrap();
    // The head may go out with the first chunk or not at all: either way the client sees
    // the connection break.
    if let Ok(response) = client.request(request).await {
        let _ = http_body_util::BodyExt::collect(response.into_body()).await;
    }
    assert_fields(
        &event("broken").await,
        &[
            ("status", json!(200)),
            ("bytes", json!(5)),
            ("body_error", json!(true)),
        ],
        &["aborted"],
    );
}

#[tokio::test]
async fn a_client_that_leaves_before_the_response_is_logged_as_aborted() {
    let addr = streaming_app().await;
    let gone = tokio::time::timeout(
        Duration::from_millis(200),
        Client::new().get(addr, "/slow", &[("x-request-id", "left-early")]),
    )
    .await;
    assert!(gone.is_err(), "the handler answers after 10 s");
    // The client's connection closes with its future; the server drops the request's.
    let event = event("left-early").await;
    assert_fields(
        &event,
        &[
            ("decision", json!("aborted")),
            ("aborted", json!(true)),
            ("route", json!("/slow")),
        ],
        &["status", "latency_ms"],
    );
    assert!(event["total_ms"].as_f64().unwrap() >= 150.0, "{event:?}");
}

#[tokio::test]
async fn a_request_id_is_made_when_the_client_sent_none_and_logged_as_echoed() {
    let stack = stack().await;
    let reply = Client::new()
        .get(
            stack.addr,
            "/plain",
            &[
                ("x-forwarded-for", "203.0.113.5"),
                ("authorization", &stack.token),
                ("x-api-key", &stack.plan.key),
            ],
        )
        .await;
    let id = reply.header("x-request-id").to_owned();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    assert_fields(
        &event(&id).await,
        &[("client_ip", json!("203.0.113.5")), ("status", json!(200))],
        &[],
    );
}

#[cfg(feature = "config")]
#[tokio::test]
async fn a_configured_gateway_logs_the_route_and_stage_of_requests_it_refuses() {
    use tollgate::config::{GatewayConfig, GatewayHandle, Handlers};

    capture();
    let yaml = r#"
request_id: {}
access_log: {}
throttle:
  rules: [{ name: everyone, rate: 1/min, burst: 2, key: global }]
stages:
  stages:
    prod: { deployment: prod-blue, base_paths: [/v1] }
routes:
  - route: GET /items/{id}
    integration: { handler: item }
    validate:
      query: { n: { type: integer } }
"#;
    let config = GatewayConfig::from_yaml(yaml).unwrap();
    let handlers = Handlers::new()
        .handler("item", || async { "item" })
        .clock(ManualClock::new());
    let handle = GatewayHandle::new(config, handlers).await.unwrap();
    let addr = serve_axum(handle.router()).await;
    let client = Client::new();
    for (id, query, status) in [
        ("configured-ok", "n=1", 200),
        ("configured-invalid", "n=x", 400),
        ("configured-throttled", "n=1", 429),
    ] {
        let reply = client
            .get(
                addr,
                &format!("/v1/items/7?{query}"),
                &[("x-request-id", id)],
            )
            .await;
        assert_eq!(reply.status, status, "{reply:?}");
        let event = event(id).await;
        assert_fields(
            &event,
            &[
                ("route", json!("/items/{id}")),
                // As the client sent it, base path and all.
                ("path", json!("/v1/items/7")),
                ("stage", json!("prod")),
                ("deployment", json!("prod-blue")),
                ("status", json!(status)),
            ],
            &[],
        );
    }
    assert_eq!(event("configured-invalid").await["decision"], "bad-request");
    assert_eq!(event("configured-throttled").await["decision"], "throttled");
    // A path no stage serves is refused by the stage router, in front of every other step:
    // logged all the same, with a request id.
    let unserved = client
        .get(
            addr,
            "/v9/items/7",
            &[("x-request-id", "configured-no-stage")],
        )
        .await;
    assert_eq!(unserved.status, 404, "{unserved:?}");
    assert_eq!(unserved.header("x-request-id"), "configured-no-stage");
    assert_fields(
        &event("configured-no-stage").await,
        &[
            ("status", json!(404)),
            ("path", json!("/v9/items/7")),
            ("decision", json!("not-found")),
        ],
        &["route", "stage"],
    );
}
