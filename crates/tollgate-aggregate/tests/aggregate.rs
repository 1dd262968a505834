//! The aggregate endpoint as a client sees it: the gateway served on loopback TCP and called
//! with a real HTTP client, its backends real loopback HTTP servers (axum). Deadlines, timeouts
//! and hedging are also run on tokio's paused clock, the endpoint called in-process with
//! in-process backends and no sockets, so they are exact rather than raced.

#[allow(dead_code)] // this binary uses part of the shared client
#[path = "../../../tests/support/client.rs"]
mod client;
#[allow(dead_code)] // this binary uses part of the shared servers
#[path = "../../../tests/support/server.rs"]
mod server;

mod unreachable;

use std::convert::Infallible;
use std::future::pending;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::routing::any;
use axum::{Json, Router};
use bytes::Bytes;
use client::{Client, Reply};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use metrics::{SharedString, Unit};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::CompositeKey;
use serde_json::{json, Map, Value};
use server::{serve_axum, serve_hyper};
use tokio::sync::{mpsc, oneshot, watch, Barrier};
use tokio::time::{sleep, timeout, Instant};
use tollgate_aggregate::{
    Aggregate, AggregateConfig, Backend, Collision, HttpClient, Merge, Mock, MockConfig,
    X_TOLLGATE_COMPLETED,
};
use tollgate_core::Principal;
use tower::ServiceExt;
use unreachable::{nothing_accepting, nothing_listening};

/// How long one client call may take before the test fails instead of hanging.
const CALL_LIMIT: Duration = Duration::from_secs(10);

// Servers and calls.

/// Serves `backend` on loopback and returns its base URL.
async fn serve(backend: Router) -> String {
    format!("http://{}", serve_axum(backend).await)
}

/// Serves the endpoint on loopback TCP, as a plain hyper service.
async fn serve_gateway(aggregate: Aggregate) -> SocketAddr {
    serve_hyper(aggregate).await
}

/// Serves the endpoint behind a stand-in authorizer: a request's `x-test-user` becomes the
/// verified principal's subject, with the claim `tier: 3`.
async fn serve_gateway_with_principals(aggregate: Aggregate) -> SocketAddr {
    fn authorize(mut request: Request<Incoming>) -> Request<Incoming> {
        let user = request.headers_mut().remove("x-test-user");
        if let Some(user) = user.and_then(|user| user.to_str().ok().map(str::to_owned)) {
            let principal = Principal::builder().subject(user).claim("tier", 3).build();
            request.extensions_mut().insert(principal);
        }
        request
    }
    let service = tower::ServiceBuilder::new()
        .map_request(authorize as fn(Request<Incoming>) -> Request<Incoming>)
        .service(aggregate);
    serve_hyper(service).await
}

async fn get(addr: SocketAddr, path: &'static str) -> Reply {
    get_with(addr, path, &[]).await
}

async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    timeout(CALL_LIMIT, Client::new().get(addr, path, headers))
        .await
        .unwrap_or_else(|_| panic!("GET {path} got no answer within {CALL_LIMIT:?}"))
}

/// A GET from `client`, which keeps its connections between calls.
async fn get_from(client: &Client, addr: SocketAddr, path: &str) -> Reply {
    timeout(CALL_LIMIT, client.get(addr, path, &[]))
        .await
        .unwrap_or_else(|_| panic!("GET {path} got no answer within {CALL_LIMIT:?}"))
}

/// Calls the endpoint in-process with a GET of `path`, no sockets involved: on the paused
/// clock tokio may advance time while socket I/O is in flight, firing timers early.
async fn call_in_process(aggregate: Aggregate, path: &str) -> Reply {
    let request = Request::get(path).body(Full::<Bytes>::default()).unwrap();
    let response = timeout(CALL_LIMIT, aggregate.oneshot(request))
        .await
        .unwrap_or_else(|_| panic!("GET {path} got no answer within {CALL_LIMIT:?}"))
        .unwrap_or_else(|never| match never {});
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .unwrap_or_else(|never| match never {})
        .to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

// Backends.

/// A backend answering every request with `status` and `value` as JSON.
fn answering(status: StatusCode, value: Value) -> Router {
    Router::new().fallback(move || {
        let value = value.clone();
        async move { (status, Json(value)) }
    })
}

/// A backend answering 200 with `value`.
fn json_backend(value: Value) -> Router {
    answering(StatusCode::OK, value)
}

/// A backend answering 200 with `value` after `delay`.
fn answering_after(delay: Duration, value: Value) -> Router {
    Router::new().fallback(move || {
        let value = value.clone();
        async move {
            sleep(delay).await;
            Json(value)
        }
    })
}

/// A backend answering with `body` under `content_type`.
fn raw_backend(content_type: &'static str, body: &'static str) -> Router {
    Router::new().fallback(move || async move { ([(CONTENT_TYPE, content_type)], body) })
}

/// A backend that accepts requests and never answers them.
fn never_answering() -> Router {
    Router::new().fallback(pending::<Json<Value>>)
}

/// A backend answering every request with what it received (method, target, headers, JSON
/// body), counting the calls in `calls`.
fn echo_counting(calls: Arc<AtomicUsize>) -> Router {
    Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                let mut seen_headers = Map::new();
                for name in headers.keys() {
                    let values = headers
                        .get_all(name)
                        .iter()
                        .map(|value| Value::from(value.to_str().unwrap_or("<not text>")))
                        .collect();
                    seen_headers.insert(name.to_string(), Value::Array(values));
                }
                Json(json!({
                    "method": method.as_str(),
                    "target": uri.to_string(),
                    "headers": seen_headers,
                    "body": serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
                }))
            }
        },
    )
}

fn echo() -> Router {
    echo_counting(Arc::default())
}

/// A JSON response for in-process backends.
fn json_response(value: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(value.to_string())))
        .unwrap()
}

/// Set when the future holding it is dropped before it finished: a cancelled call.
struct CancelledFlag {
    flag: Arc<AtomicBool>,
    finished: bool,
}

impl CancelledFlag {
    fn new(flag: &Arc<AtomicBool>) -> Self {
        Self {
            flag: Arc::clone(flag),
            finished: false,
        }
    }
}

impl Drop for CancelledFlag {
    fn drop(&mut self) {
        if !self.finished {
            self.flag.store(true, Ordering::SeqCst);
        }
    }
}

// Assertions.

/// Asserts a merged 200 with `X-Tollgate-Completed: completed` and `body`.
#[track_caller]
fn assert_merged(reply: &Reply, completed: bool, body: Value) {
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.header("content-type"), "application/json");
    assert_eq!(
        reply.header(X_TOLLGATE_COMPLETED.as_str()),
        completed.to_string(),
        "{reply:?}"
    );
    assert_eq!(reply.json(), body);
}

/// Asserts a problem+json refusal of `status` and `kind` whose detail mentions each of
/// `mentions`.
#[track_caller]
fn assert_problem(reply: &Reply, status: u16, kind: &str, mentions: &[&str]) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(reply.problem(), format!("urn:tollgate:problem:{kind}"));
    let problem = reply.json();
    assert_eq!(problem["status"], status, "{problem}");
    let detail = problem["detail"]
        .as_str()
        .unwrap_or_else(|| panic!("no detail in {problem}"));
    for mention in mentions {
        assert!(
            detail.contains(mention),
            "{detail:?} does not mention {mention:?}"
        );
    }
}

// Concurrency.

#[tokio::test]
async fn three_backends_of_100_ms_are_called_at_once_and_answer_in_under_200_ms() {
    // Each backend waits for the other two before its 100 ms of work: the barrier only opens
    // when all three calls are in flight at once, and a backend left waiting answers 500.
    let barrier = Arc::new(Barrier::new(3));
    let backend = |field: &'static str| {
        let barrier = Arc::clone(&barrier);
        Router::new().fallback(move || {
            let barrier = Arc::clone(&barrier);
            async move {
                if timeout(Duration::from_secs(2), barrier.wait())
                    .await
                    .is_err()
                {
                    return (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({})));
                }
                sleep(Duration::from_millis(100)).await;
                (StatusCode::OK, Json(json!({ field: true })))
            }
        })
    };
    let aggregate = Aggregate::builder()
        .backend(Backend::http("a", serve(backend("a")).await))
        .backend(Backend::http("b", serve(backend("b")).await))
        .backend(Backend::http("c", serve(backend("c")).await))
        .build()
        .unwrap();
    let addr = serve_gateway(aggregate).await;
    let client = Client::new();
    // The first call opens the connections; the timed one reuses them from the pools.
    let warm_up = get_from(&client, addr, "/").await;
    assert_merged(&warm_up, true, json!({"a": true, "b": true, "c": true}));

    let started = Instant::now();
    let reply = get_from(&client, addr, "/").await;
    let took = started.elapsed();

    assert_merged(&reply, true, json!({"a": true, "b": true, "c": true}));
    assert!(took >= Duration::from_millis(100), "took {took:?}");
    assert!(took < Duration::from_millis(200), "took {took:?}");
}

// The pipeline, step by step.

#[tokio::test]
async fn target_keeps_only_the_value_inside_the_envelope() {
    let profile = json_backend(json!({"data": {"id": 7, "name": "Ann"}, "meta": {"v": 2}}));
    let aggregate = Aggregate::builder()
        .backend(Backend::http("profile", serve(profile).await).target("data"))
        .build()
        .unwrap();
    let reply = get(serve_gateway(aggregate).await, "/").await;
    assert_merged(&reply, true, json!({"id": 7, "name": "Ann"}));
}

#[tokio::test]
async fn allow_keeps_only_the_listed_dot_paths() {
    let profile = json_backend(json!({
        "id": 7, "password_hash": "x", "address": {"city": "Oslo", "zip": "0150"}
    }));
    let aggregate = Aggregate::builder()
        .backend(Backend::http("profile", serve(profile).await).allow(["id", "address.city"]))
        .build()
        .unwrap();
    let reply = get(serve_gateway(aggregate).await, "/").await;
    assert_merged(&reply, true, json!({"id": 7, "address": {"city": "Oslo"}}));
}

#[tokio::test]
async fn deny_removes_the_listed_dot_paths() {
    let profile = json_backend(json!({
        "id": 7, "password_hash": "x", "address": {"city": "Oslo", "zip": "0150"}
    }));
    let aggregate = Aggregate::builder()
        .backend(
            Backend::http("profile", serve(profile).await).deny(["password_hash", "address.zip"]),
        )
        .build()
        .unwrap();
    let reply = get(serve_gateway(aggregate).await, "/").await;
    assert_merged(&reply, true, json!({"id": 7, "address": {"city": "Oslo"}}));
}

#[tokio::test]
async fn mapping_renames_top_level_fields() {
    let profile = json_backend(json!({"id": 7, "nm": "Ann"}));
    let aggregate = Aggregate::builder()
        .backend(
            Backend::http("profile", serve(profile).await)
                .mapping([("nm", "name"), ("id", "user_id")]),
        )
        .build()
        .unwrap();
    let reply = get(serve_gateway(aggregate).await, "/").await;
    assert_merged(&reply, true, json!({"user_id": 7, "name": "Ann"}));
}

#[tokio::test]
async fn mapping_renames_all_at_once_so_two_fields_can_swap() {
    let profile = json_backend(json!({"first": "Ann", "last": "Lee", "id": 7}));
    let aggregate = Aggregate::builder()
        .backend(
            Backend::http("profile", serve(profile).await)
                .mapping([("first", "last"), ("last", "first")]),
        )
        .build()
        .unwrap();
    let reply = get(serve_gateway(aggregate).await, "/").await;
    assert_merged(
        &reply,
        true,
        json!({"first": "Lee", "last": "Ann", "id": 7}),
    );
}

#[tokio::test]
async fn group_puts_the_whole_response_under_a_key() {
    let profile = json_backend(json!({"id": 7, "name": "Ann"}));
    let orders = json_backend(json!({"id": 91, "total": 12.5}));
    let aggregate = Aggregate::builder()
        .backend(Backend::http("profile", serve(profile).await).group("user"))
        .backend(Backend::http("orders", serve(orders).await).group("last_order"))
        .build()
        .unwrap();
    let reply = get(serve_gateway(aggregate).await, "/").await;
    assert_merged(
        &reply,
        true,
        json!({"user": {"id": 7, "name": "Ann"}, "last_order": {"id": 91, "total": 12.5}}),
    );
}

#[tokio::test]
async fn a_bare_array_is_wrapped_under_collection_or_the_key_given() {
    let tags = json_backend(json!(["new", "sale"]));
    let orders = json_backend(json!([{"id": 1}, {"id": 2}]));
    let aggregate = Aggregate::builder()
        .backend(Backend::http("tags", serve(tags).await))
        .backend(Backend::http("orders", serve(orders).await).collection("orders"))
        .build()
        .unwrap();
    let reply = get(serve_gateway(aggregate).await, "/").await;
    assert_merged(
        &reply,
        true,
        json!({"collection": ["new", "sale"], "orders": [{"id": 1}, {"id": 2}]}),
    );
}

#[tokio::test]
async fn the_pipeline_runs_target_then_allow_and_deny_then_mapping_then_group() {
    // `allow` names fields before `mapping` renames them, and `group` wraps the result.
    let profile = json_backend(json!({
        "data": {"nm": "Ann", "address": {"city": "Oslo", "zip": "0150"}, "ssn": "x"},
        "meta": {}
    }));
    let aggregate = Aggregate::builder()
        .backend(
            Backend::http("profile", serve(profile).await)
                .target("data")
                .allow(["nm", "address"])
                .deny(["address.zip"])
                .mapping([("nm", "name")])
                .group("user"),
        )
        .build()
        .unwrap();
    let reply = get(serve_gateway(aggregate).await, "/").await;
    assert_merged(
        &reply,
        true,
        json!({"user": {"name": "Ann", "address": {"city": "Oslo"}}}),
    );
}

// Merging.

/// Two backends that both return `name`, the one declared first answering 50 ms later.
async fn colliding(collision: Option<Collision>) -> Reply {
    let first = answering_after(
        Duration::from_millis(50),
        json!({"name": "from-profile", "id": 7}),
    );
    let second = json_backend(json!({"name": "from-account", "plan": "pro"}));
    let mut builder = Aggregate::builder()
        .backend(Backend::http("profile", serve(first).await))
        .backend(Backend::http("account", serve(second).await));
    if let Some(collision) = collision {
        builder = builder.collision(collision);
    }
    get(serve_gateway(builder.build().unwrap()).await, "/").await
}

#[tokio::test]
async fn by_default_the_backend_declared_first_keeps_a_contested_field_even_when_it_answers_last() {
    let reply = colliding(None).await;
    assert_merged(
        &reply,
        true,
        json!({"name": "from-profile", "id": 7, "plan": "pro"}),
    );
}

#[tokio::test]
async fn first_wins_keeps_the_field_of_the_backend_declared_first() {
    let reply = colliding(Some(Collision::FirstWins)).await;
    assert_merged(
        &reply,
        true,
        json!({"name": "from-profile", "id": 7, "plan": "pro"}),
    );
}

#[tokio::test]
async fn last_wins_keeps_the_field_of_the_backend_declared_last_even_when_it_answers_first() {
    let reply = colliding(Some(Collision::LastWins)).await;
    assert_merged(
        &reply,
        true,
        json!({"name": "from-account", "id": 7, "plan": "pro"}),
    );
}

#[tokio::test]
async fn collect_gathers_every_value_of_a_contested_field_in_declaration_order() {
    let reply = colliding(Some(Collision::Collect)).await;
    assert_merged(
        &reply,
        true,
        json!({"name": ["from-profile", "from-account"], "id": 7, "plan": "pro"}),
    );
}

#[tokio::test]
async fn collision_error_answers_502_naming_both_backends_and_the_field() {
    let reply = colliding(Some(Collision::Error)).await;
    assert_problem(
        &reply,
        502,
        "bad-gateway",
        &["\"profile\"", "\"account\"", "\"name\""],
    );
}

#[tokio::test]
async fn collect_keeps_a_backends_own_array_as_one_element() {
    let a = json_backend(json!({"tags": ["a1", "a2"]}));
    let b = json_backend(json!({"tags": ["b1"]}));
    let c = json_backend(json!({"tags": "c1"}));
    let aggregate = Aggregate::builder()
        .backend(Backend::http("a", serve(a).await))
        .backend(Backend::http("b", serve(b).await))
        .backend(Backend::http("c", serve(c).await))
        .collision(Collision::Collect)
        .build()
        .unwrap();
    let reply = get(serve_gateway(aggregate).await, "/").await;
    assert_merged(&reply, true, json!({"tags": [["a1", "a2"], ["b1"], "c1"]}));
}

/// Two backends describing one user in nested objects, merged with `merge` and `collision`.
async fn nested(merge: Merge, collision: Collision) -> Reply {
    let profile = json_backend(json!({
        "user": {"name": "Ann", "address": {"city": "Oslo"}}, "theme": "dark"
    }));
    let account = json_backend(json!({
        "user": {"plan": "pro", "address": {"zip": "0150"}, "name": "Anne"}
    }));
    let aggregate = Aggregate::builder()
        .backend(Backend::http("profile", serve(profile).await))
        .backend(Backend::http("account", serve(account).await))
        .merge(merge)
        .collision(collision)
        .build()
        .unwrap();
    get(serve_gateway(aggregate).await, "/").await
}

#[tokio::test]
async fn deep_merge_combines_nested_objects_and_applies_the_policy_to_leaves() {
    let reply = nested(Merge::Deep, Collision::FirstWins).await;
    assert_merged(
        &reply,
        true,
        json!({
            "user": {"name": "Ann", "plan": "pro", "address": {"city": "Oslo", "zip": "0150"}},
            "theme": "dark"
        }),
    );
    let reply = nested(Merge::Deep, Collision::LastWins).await;
    assert_eq!(reply.json()["user"]["name"], "Anne");
}

#[tokio::test]
async fn shallow_merge_treats_a_nested_object_as_one_field() {
    let reply = nested(Merge::Shallow, Collision::FirstWins).await;
    assert_merged(
        &reply,
        true,
        json!({"user": {"name": "Ann", "address": {"city": "Oslo"}}, "theme": "dark"}),
    );
}

#[tokio::test]
async fn deep_merge_under_collision_error_names_the_contested_dot_path() {
    let reply = nested(Merge::Deep, Collision::Error).await;
    assert_problem(
        &reply,
        502,
        "bad-gateway",
        &["\"profile\"", "\"account\"", "\"user.name\""],
    );
}

// Failures.

#[tokio::test]
async fn a_required_backend_that_is_down_answers_502_naming_it() {
    let aggregate = Aggregate::builder()
        .backend(Backend::http(
            "profile",
            serve(json_backend(json!({"id": 7}))).await,
        ))
        .backend(Backend::http("orders", nothing_listening()))
        .build()
        .unwrap();
    let reply = get(serve_gateway(aggregate).await, "/").await;
    assert_problem(
        &reply,
        502,
        "bad-gateway",
        &["\"orders\"", "could not be reached"],
    );
}

#[tokio::test]
async fn a_required_backend_past_its_timeout_answers_504_naming_it() {
    let slow = answering_after(Duration::from_secs(5), json!({"late": true}));
    let aggregate = Aggregate::builder()
        .backend(Backend::http(
            "profile",
            serve(json_backend(json!({"id": 7}))).await,
        ))
        .backend(Backend::http("orders", serve(slow).await).timeout(Duration::from_millis(100)))
        .build()
        .unwrap();
    let started = Instant::now();
    let reply = get(serve_gateway(aggregate).await, "/").await;
    assert_problem(
        &reply,
        504,
        "gateway-timeout",
        &["\"orders\"", "did not answer in time"],
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_required_backend_that_does_not_accept_the_connection_in_time_answers_504() {
    let (base, _listener, _queued) = nothing_accepting().await;
    let aggregate = Aggregate::builder()
        .backend(Backend::http("profile", base))
        .client(
            HttpClient::builder()
                .connect_timeout(Duration::from_millis(200))
                .build(),
        )
        .build()
        .unwrap();
    let started = Instant::now();
    let reply = get(serve_gateway(aggregate).await, "/").await;
    assert_problem(
        &reply,
        504,
        "gateway-timeout",
        &["\"profile\"", "did not answer in time"],
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_backend_that_never_answers_is_cut_at_the_endpoint_deadline() {
    let aggregate = Aggregate::builder()
        .backend(Backend::http(
            "profile",
            serve(json_backend(json!({"id": 7}))).await,
        ))
        .backend(Backend::http("stuck", serve(never_answering()).await))
        .deadline(Duration::from_millis(300))
        .build()
        .unwrap();
    let started = Instant::now();
    let reply = get(serve_gateway(aggregate).await, "/").await;
    let took = started.elapsed();
    assert_problem(
        &reply,
        504,
        "gateway-timeout",
        &["\"stuck\"", "did not answer in time"],
    );
    assert!(took >= Duration::from_millis(300), "took {took:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[tokio::test]
async fn a_failing_required_backend_ends_the_call_without_waiting_for_the_others() {
    let aggregate = Aggregate::builder()
        .backend(Backend::http(
            "report",
            serve(answering_after(Duration::from_secs(5), json!({}))).await,
        ))
        .backend(Backend::http("profile", nothing_listening()))
        .build()
        .unwrap();
    let started = Instant::now();
    let reply = get(serve_gateway(aggregate).await, "/").await;
    assert_problem(
        &reply,
        502,
        "bad-gateway",
        &["\"profile\"", "could not be reached"],
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_backend_answering_204_merges_as_an_empty_object() {
    let done = Router::new().fallback(|| async { StatusCode::NO_CONTENT });
    let aggregate = Aggregate::builder()
        .backend(Backend::http(
            "profile",
            serve(json_backend(json!({"id": 7}))).await,
        ))
        .backend(
            Backend::http("audit", serve(done).await)
                .method(Method::POST)
                .body(json!({"seen": true})),
        )
        .build()
        .unwrap();
    let reply = get(serve_gateway(aggregate).await, "/").await;
    assert_merged(&reply, true, json!({"id": 7}));
}

#[tokio::test]
async fn a_head_backend_merges_as_an_empty_object_whatever_size_it_declares() {
    // HEAD /files/report.pdf says how big the file is; no body follows.
    let exists = Router::new().fallback(|method: Method| async move {
        assert_eq!(method, Method::HEAD);
        (
            [
                (CONTENT_LENGTH, "20971520"),
                (CONTENT_TYPE, "application/pdf"),
            ],
            (),
        )
    });
    let aggregate = Aggregate::builder()
        .backend(Backend::http(
            "profile",
            serve(json_backend(json!({"id": 7}))).await,
        ))
        .backend(Backend::http("report", serve(exists).await).method(Method::HEAD))
        .build()
        .unwrap();
    let reply = get(serve_gateway(aggregate).await, "/").await;
    assert_merged(&reply, true, json!({"id": 7}));
}

#[tokio::test]
async fn an_optional_backend_that_is_down_leaves_a_200_with_the_others_marked_incomplete() {
    let aggregate = Aggregate::builder()
        .backend(Backend::http(
            "profile",
            serve(json_backend(json!({"id": 7, "name": "Ann"}))).await,
        ))
        .backend(Backend::http("reviews", nothing_listening()).optional())
        .build()
        .unwrap();
    let reply = get(serve_gateway(aggregate).await, "/").await;
    assert_merged(&reply, false, json!({"id": 7, "name": "Ann"}));
}

#[tokio::test]
async fn the_errors_field_holds_each_failed_optional_backends_status_or_error() {
    let aggregate = Aggregate::builder()
        .backend(Backend::http(
            "profile",
            serve(json_backend(json!({"name": "Ann"}))).await,
        ))
        .backend(
            Backend::http(
                "reviews",
                serve(answering(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"error": "overloaded"}),
                ))
                .await,
            )
            .optional(),
        )
        .backend(
            Backend::http(
                "ratings",
                serve(answering_after(Duration::from_secs(5), json!({}))).await,
            )
            .optional()
            .timeout(Duration::from_millis(100)),
        )
        .backend(Backend::http("stock", nothing_listening()).optional())
        .errors_field("errors")
        .build()
        .unwrap();
    let reply = get(serve_gateway(aggregate).await, "/").await;
    assert_merged(
        &reply,
        false,
        json!({
            "name": "Ann",
            "errors": {
                "reviews": {"status": 503},
                "ratings": {"error": "timeout"},
                "stock": {"error": "unreachable"}
            }
        }),
    );
}

#[tokio::test]
async fn when_every_backend_answers_the_call_is_marked_completed_without_an_errors_field() {
    let aggregate = Aggregate::builder()
        .backend(Backend::http(
            "profile",
            serve(json_backend(json!({"name": "Ann"}))).await,
        ))
        .backend(
            Backend::http("reviews", serve(json_backend(json!({"stars": 4}))).await).optional(),
        )
        .errors_field("errors")
        .build()
        .unwrap();
    let reply = get(serve_gateway(aggregate).await, "/").await;
    assert_merged(&reply, true, json!({"name": "Ann", "stars": 4}));
}

#[tokio::test]
async fn a_backend_sending_invalid_json_fails_saying_so() {
    let broken = raw_backend("application/json", r#"{"name": "Ann", "#);
    let aggregate = Aggregate::builder()
        .backend(Backend::http("profile", serve(broken).await))
        .build()
        .unwrap();
    let reply = get(serve_gateway(aggregate).await, "/").await;
    assert_problem(
        &reply,
        502,
        "bad-gateway",
        &["\"profile\"", "did not send JSON"],
    );
}

#[tokio::test]
async fn a_backend_answering_html_fails_naming_its_content_type() {
    let html = raw_backend("text/html; charset=utf-8", "<html><body>{}</body></html>");
    let aggregate = Aggregate::builder()
        .backend(Backend::http("profile", serve(html).await))
        .build()
        .unwrap();
    let reply = get(serve_gateway(aggregate).await, "/").await;
    assert_problem(
        &reply,
        502,
        "bad-gateway",
        &["\"profile\"", "did not send JSON", "text/html"],
    );
}

#[tokio::test]
async fn a_response_over_max_body_fails_its_backend() {
    let big = json_backend(json!({"blob": "x".repeat(2048)}));
    let aggregate = Aggregate::builder()
        .backend(Backend::http("profile", serve(big).await).max_body(1024))
        .build()
        .unwrap();
    let reply = get(serve_gateway(aggregate).await, "/").await;
    assert_problem(
        &reply,
        502,
        "bad-gateway",
        &["\"profile\"", "over its size limit"],
    );
}

/// A response body that never ends, sent without a `Content-Length`; `alive` is dropped with
/// it, so its receiver learns when the server gave up sending.
struct Endless {
    chunk: Bytes,
    _alive: Option<oneshot::Sender<()>>,
}

impl http_body::Body for Endless {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(Some(Ok(Frame::data(self.chunk.clone()))))
    }
}

#[tokio::test]
async fn an_endless_response_is_cut_at_max_body_and_its_connection_dropped() {
    let (alive, gone) = oneshot::channel::<()>();
    let alive = Arc::new(Mutex::new(Some(alive)));
    let endless = Router::new().fallback(move || {
        let body = Endless {
            chunk: Bytes::from(vec![b' '; 16 * 1024]),
            _alive: alive.lock().unwrap().take(),
        };
        async move {
            Response::builder()
                .header(CONTENT_TYPE, "application/json")
                .body(Body::new(body))
                .unwrap()
        }
    });
    let aggregate = Aggregate::builder()
        .backend(Backend::http("feed", serve(endless).await).max_body(64 * 1024))
        .build()
        .unwrap();
    let reply = get(serve_gateway(aggregate).await, "/").await;
    assert_problem(
        &reply,
        502,
        "bad-gateway",
        &["\"feed\"", "over its size limit"],
    );
    // The gateway hung up rather than draining the body: the backend stops sending.
    let stopped = timeout(CALL_LIMIT, gone).await;
    assert!(stopped.is_ok(), "the backend is still sending its body");
}

#[tokio::test]
async fn status_from_passes_a_backends_error_status_and_body_through() {
    let profile = answering(StatusCode::NOT_FOUND, json!({"error": "no user 7"}));
    let aggregate = Aggregate::builder()
        .backend(Backend::http("profile", serve(profile).await))
        .backend(Backend::http(
            "orders",
            serve(json_backend(json!({"orders": []}))).await,
        ))
        .status_from("profile")
        .build()
        .unwrap();
    let reply = get(serve_gateway(aggregate).await, "/").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{reply:?}");
    assert_eq!(reply.header("content-type"), "application/json");
    assert_eq!(reply.header(X_TOLLGATE_COMPLETED.as_str()), "false");
    assert_eq!(reply.json(), json!({"error": "no user 7"}));
}

#[tokio::test]
async fn status_from_gives_the_merged_answer_that_backends_success_status() {
    let created = answering(StatusCode::CREATED, json!({"id": 7}));
    let aggregate = Aggregate::builder()
        .backend(Backend::http("profile", serve(created).await))
        .backend(Backend::http(
            "orders",
            serve(json_backend(json!({"orders": []}))).await,
        ))
        .status_from("profile")
        .build()
        .unwrap();
    let reply = get(serve_gateway(aggregate).await, "/").await;
    assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    assert_eq!(reply.header(X_TOLLGATE_COMPLETED.as_str()), "true");
    assert_eq!(reply.json(), json!({"id": 7, "orders": []}));
}

/// A backend answering `status` with `value` as JSON after `delay`.
fn answering_status_after(delay: Duration, status: StatusCode, value: Value) -> Router {
    Router::new().fallback(move || {
        let value = value.clone();
        async move {
            sleep(delay).await;
            (status, Json(value))
        }
    })
}

#[tokio::test]
async fn status_from_passes_its_error_through_even_when_another_required_backend_failed_first() {
    // `orders` is refused at once; `profile`, which decides the status, answers 50 ms later.
    let profile = answering_status_after(
        Duration::from_millis(50),
        StatusCode::NOT_FOUND,
        json!({"error": "no user 7"}),
    );
    let aggregate = Aggregate::builder()
        .backend(Backend::http("profile", serve(profile).await))
        .backend(Backend::http("orders", nothing_listening()))
        .status_from("profile")
        .build()
        .unwrap();
    let reply = get(serve_gateway(aggregate).await, "/").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{reply:?}");
    assert_eq!(reply.header("content-type"), "application/json");
    assert_eq!(reply.header(X_TOLLGATE_COMPLETED.as_str()), "false");
    assert_eq!(reply.json(), json!({"error": "no user 7"}));
}

#[tokio::test]
async fn when_the_status_from_backend_succeeds_a_failed_required_backend_answers_502_naming_it() {
    let profile =
        answering_status_after(Duration::from_millis(50), StatusCode::OK, json!({"id": 7}));
    let aggregate = Aggregate::builder()
        .backend(Backend::http("profile", serve(profile).await))
        .backend(Backend::http("orders", nothing_listening()))
        .status_from("profile")
        .build()
        .unwrap();
    let reply = get(serve_gateway(aggregate).await, "/").await;
    assert_problem(
        &reply,
        502,
        "bad-gateway",
        &["\"orders\"", "could not be reached"],
    );
}

#[tokio::test]
async fn status_from_passes_through_the_headers_that_give_its_status_meaning() {
    let cases = [
        ("found", StatusCode::FOUND, "location", "/users/8"),
        (
            "unauthorized",
            StatusCode::UNAUTHORIZED,
            "www-authenticate",
            "Bearer realm=\"api\"",
        ),
        (
            "unavailable",
            StatusCode::SERVICE_UNAVAILABLE,
            "retry-after",
            "30",
        ),
        (
            "not-allowed",
            StatusCode::METHOD_NOT_ALLOWED,
            "allow",
            "GET, HEAD",
        ),
    ];
    let mut profile = Router::new();
    for (case, status, name, value) in cases {
        profile = profile.route(
            &format!("/{case}"),
            any(move || async move {
                let headers = [(name, value), ("content-language", "nb")];
                (status, headers, Json(json!({"error": case})))
            }),
        );
    }
    let aggregate = Aggregate::builder()
        .route("/{case}")
        .backend(Backend::http(
            "profile",
            format!("{}/{{case}}", serve(profile).await),
        ))
        .backend(Backend::http(
            "orders",
            serve(json_backend(json!({"orders": []}))).await,
        ))
        .status_from("profile")
        .build()
        .unwrap();
    let addr = serve_gateway(aggregate).await;
    for (case, status, name, value) in cases {
        let reply = get_with(addr, &format!("/{case}"), &[]).await;
        assert_eq!(reply.status, status, "{reply:?}");
        assert_eq!(reply.header(name), value, "{case}");
        assert_eq!(reply.header("content-language"), "nb", "{case}");
        assert_eq!(reply.header(X_TOLLGATE_COMPLETED.as_str()), "false");
        assert_eq!(reply.json(), json!({"error": case}));
    }
}

#[tokio::test]
async fn a_204_from_the_status_from_backend_gives_200_with_the_merged_body() {
    let done = Router::new().fallback(|| async { StatusCode::NO_CONTENT });
    let aggregate = Aggregate::builder()
        .backend(
            Backend::http("audit", serve(done).await)
                .method(Method::POST)
                .body(json!({"seen": true})),
        )
        .backend(Backend::http(
            "profile",
            serve(json_backend(json!({"id": 7}))).await,
        ))
        .status_from("audit")
        .build()
        .unwrap();
    let reply = get(serve_gateway(aggregate).await, "/").await;
    assert_merged(&reply, true, json!({"id": 7}));
}

#[tokio::test]
async fn at_the_concurrency_limit_further_calls_are_refused_503_with_retry_after() {
    let (entered_tx, mut entered) = mpsc::unbounded_channel::<()>();
    let (open_tx, open) = watch::channel(false);
    let gated = Router::new().fallback(move || {
        let (entered_tx, mut open) = (entered_tx.clone(), open.clone());
        async move {
            let _ = entered_tx.send(());
            let _ = timeout(CALL_LIMIT, open.wait_for(|open| *open)).await;
            Json(json!({"ok": true}))
        }
    });
    let aggregate = Aggregate::builder()
        .backend(Backend::http("gated", serve(gated).await))
        .concurrency_limit(1)
        .build()
        .unwrap();
    let addr = serve_gateway(aggregate).await;

    let first = tokio::spawn(get(addr, "/"));
    timeout(CALL_LIMIT, entered.recv())
        .await
        .expect("the first call reaches the backend");
    let refused = get(addr, "/").await;
    assert_problem(&refused, 503, "unavailable", &["concurrency limit"]);
    assert_eq!(refused.header("retry-after"), "1");

    open_tx.send_replace(true);
    assert_merged(&first.await.unwrap(), true, json!({"ok": true}));
    assert_merged(&get(addr, "/").await, true, json!({"ok": true}));
    // The refused call never reached the backend; the first and the last did.
    entered
        .try_recv()
        .expect("the last call reaches the backend");
    assert!(
        entered.try_recv().is_err(),
        "the refused call reached the backend"
    );
}

// Where backends are called, and with what.

#[tokio::test]
async fn route_parameters_fill_the_backend_url_percent_encoded_again() {
    let aggregate = Aggregate::builder()
        .route("/users/{id}/dashboard")
        .backend(
            Backend::http(
                "profile",
                format!("{}/users/{{id}}/card", serve(echo()).await),
            )
            .allow(["target"]),
        )
        .build()
        .unwrap();
    let addr = serve_gateway(aggregate).await;
    let reply = get(addr, "/users/7/dashboard").await;
    assert_merged(&reply, true, json!({"target": "/users/7/card"}));
    // A `/` inside the parameter stays inside its path segment.
    let reply = get(addr, "/users/a%2Fb%20c/dashboard").await;
    assert_merged(&reply, true, json!({"target": "/users/a%2Fb%20c/card"}));
}

#[tokio::test]
async fn a_catch_all_route_parameter_keeps_its_slashes() {
    let aggregate = Aggregate::builder()
        .route("/files/{*path}")
        .backend(
            Backend::http("files", format!("{}/static/{{path}}", serve(echo()).await))
                .allow(["target"]),
        )
        .build()
        .unwrap();
    let reply = get(serve_gateway(aggregate).await, "/files/css/site.css").await;
    assert_merged(&reply, true, json!({"target": "/static/css/site.css"}));
}

#[tokio::test]
async fn a_dot_segment_parameter_is_refused_as_a_bad_request_and_calls_no_backend() {
    let calls = Arc::new(AtomicUsize::new(0));
    let base = serve(echo_counting(Arc::clone(&calls))).await;
    let aggregate = Aggregate::builder()
        .route("/users/{id}/dashboard")
        .backend(Backend::http(
            "profile",
            format!("{base}/users/{{id}}/card"),
        ))
        .build()
        .unwrap();
    let addr = serve_gateway(aggregate).await;
    for path in ["/users/../dashboard", "/users/%2E%2e/dashboard"] {
        let reply = get_with(addr, path, &[]).await;
        assert_eq!(reply.status, 400, "{path}: {reply:?}");
        assert_eq!(reply.problem(), "urn:tollgate:problem:bad-request");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_path_parameter_that_is_not_utf8_is_refused_as_a_bad_request() {
    let calls = Arc::new(AtomicUsize::new(0));
    let base = serve(echo_counting(Arc::clone(&calls))).await;
    let aggregate = Aggregate::builder()
        .route("/users/{id}")
        .backend(Backend::http("profile", format!("{base}/users/{{id}}")))
        .build()
        .unwrap();
    let reply = get(serve_gateway(aggregate).await, "/users/%FF").await;
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(reply.problem(), "urn:tollgate:problem:bad-request");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_path_the_route_does_not_match_is_404_and_calls_no_backend() {
    let calls = Arc::new(AtomicUsize::new(0));
    let base = serve(echo_counting(Arc::clone(&calls))).await;
    let aggregate = Aggregate::builder()
        .route("/users/{id}/dashboard")
        .backend(Backend::http("profile", format!("{base}/users/{{id}}")))
        .build()
        .unwrap();
    let reply = get(serve_gateway(aggregate).await, "/orders/7").await;
    assert_eq!(reply.status, 404, "{reply:?}");
    assert_eq!(reply.problem(), "urn:tollgate:problem:not-found");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn query_placeholders_take_the_requests_query_parameters() {
    let aggregate = Aggregate::builder()
        .backend(
            Backend::http(
                "orders",
                format!("{}/orders?limit={{query.limit}}", serve(echo()).await),
            )
            .allow(["target"]),
        )
        .build()
        .unwrap();
    let addr = serve_gateway(aggregate).await;
    let reply = get(addr, "/?limit=5&sort=new").await;
    assert_merged(&reply, true, json!({"target": "/orders?limit=5"}));
}

/// An endpoint on `route` with two backends on one counting echo server: `profile` at
/// `/profile`, declared first, and `items` at `items_path`, required unless `optional`. Returns
/// the endpoint's address and the count of calls the server got.
async fn with_items_at(
    route: &str,
    items_path: &str,
    optional: bool,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let base = serve(echo_counting(Arc::clone(&calls))).await;
    let mut items = Backend::http("items", format!("{base}{items_path}"))
        .allow(["target"])
        .group("items");
    if optional {
        items = items.optional();
    }
    let aggregate = Aggregate::builder()
        .route(route)
        .backend(
            Backend::http("profile", format!("{base}/profile"))
                .allow(["target"])
                .group("profile"),
        )
        .backend(items)
        .errors_field("errors")
        .build()
        .unwrap();
    (serve_gateway(aggregate).await, calls)
}

/// Requests whose values a backend URL cannot hold: route, `items`' URL path, the request's
/// path, and the placeholder the refusal names.
const UNUSABLE_REQUEST_VALUES: [(&str, &str, &str, &str); 4] = [
    // Decoded, the catch-all is `a/../secret`.
    (
        "/files/{*path}",
        "/static/{path}",
        "/files/a%2F..%2Fsecret",
        "path",
    ),
    ("/items", "/items/{query.id}/price", "/items?id=..", "id"),
    ("/items", "/items/{query.id}/price", "/items?id=", "id"),
    ("/x", "/list?page={query.page}", "/x", "page"),
];

#[tokio::test]
async fn request_values_a_required_backends_url_cannot_hold_are_a_400_and_call_no_backend() {
    for (route, items_path, path, name) in UNUSABLE_REQUEST_VALUES {
        let (addr, calls) = with_items_at(route, items_path, false).await;
        let reply = get_with(addr, path, &[]).await;
        assert_eq!(reply.status, 400, "{path}: {reply:?}");
        assert_problem(&reply, 400, "bad-request", &[name]);
        assert_eq!(calls.load(Ordering::SeqCst), 0, "{path} called a backend");
    }
}

#[tokio::test]
async fn a_refused_request_calls_not_even_an_in_process_backend_declared_before() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let profile = tower::service_fn(move |_: Request<Full<Bytes>>| {
        counted.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok::<_, Infallible>(json_response(&json!({"id": 7}))))
    });
    let aggregate = Aggregate::builder()
        .backend(Backend::service("profile", profile))
        .backend(Backend::service("items", json_backend(json!({}))).path("/items/{query.id}/price"))
        .build()
        .unwrap();
    let reply = call_in_process(aggregate, "/?id=..").await;
    assert_problem(&reply, 400, "bad-request", &["{query.id}"]);
    assert_eq!(calls.load(Ordering::SeqCst), 0, "profile was called");
}

#[tokio::test]
async fn request_values_an_optional_backends_url_cannot_hold_leave_a_200_with_the_others() {
    for (route, items_path, path, _) in UNUSABLE_REQUEST_VALUES {
        let (addr, calls) = with_items_at(route, items_path, true).await;
        let reply = get_with(addr, path, &[]).await;
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
        assert_merged(
            &reply,
            false,
            json!({
                "profile": {"target": "/profile"},
                "errors": {"items": {"error": "request"}}
            }),
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{path}: items was called");
    }
}

#[tokio::test]
async fn an_encoded_percent_in_a_path_parameter_is_passed_on_encoded_rather_than_refused() {
    // `%252e%252e` decodes to the text `%2e%2e`, no dot segment: written encoded again it
    // names the same harmless segment at the backend.
    let (addr, calls) = with_items_at("/users/{id}", "/users/{id}", false).await;
    let reply = get(addr, "/users/%252e%252e").await;
    assert_merged(
        &reply,
        true,
        json!({
            "profile": {"target": "/profile"},
            "items": {"target": "/users/%252e%252e"}
        }),
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_dot_in_a_query_placeholder_is_passed_on_as_a_value() {
    // In the query, `..` is only a value: it cannot change the backend's path.
    let aggregate = Aggregate::builder()
        .backend(
            Backend::http(
                "search",
                format!("{}/search?q={{query.q}}", serve(echo()).await),
            )
            .allow(["target"]),
        )
        .build()
        .unwrap();
    let reply = get(serve_gateway(aggregate).await, "/?q=..").await;
    assert_merged(&reply, true, json!({"target": "/search?q=.."}));
}

#[tokio::test]
async fn forward_query_appends_the_requests_query_string() {
    let base = serve(echo()).await;
    let aggregate = Aggregate::builder()
        .backend(
            Backend::http("search", format!("{base}/search?source=gateway"))
                .forward_query(true)
                .allow(["target"])
                .group("search"),
        )
        .backend(
            Backend::http("plain", format!("{base}/plain"))
                .forward_query(true)
                .allow(["target"])
                .group("plain"),
        )
        .backend(
            Backend::http("untouched", format!("{base}/untouched"))
                .allow(["target"])
                .group("untouched"),
        )
        .build()
        .unwrap();
    let reply = get(serve_gateway(aggregate).await, "/?q=rust&page=2").await;
    assert_merged(
        &reply,
        true,
        json!({
            "search": {"target": "/search?source=gateway&q=rust&page=2"},
            "plain": {"target": "/plain?q=rust&page=2"},
            "untouched": {"target": "/untouched"}
        }),
    );
}

#[tokio::test]
async fn every_backend_call_carries_the_trace_context_and_the_request_id() {
    let aggregate = Aggregate::builder()
        .backend(Backend::http("profile", serve(echo()).await).allow(["headers"]))
        .build()
        .unwrap();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let reply = get_with(
        serve_gateway(aggregate).await,
        "/",
        &[
            ("traceparent", traceparent),
            ("tracestate", "vendor=1"),
            ("x-request-id", "r-2"),
            ("x-other", "1"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let headers = &reply.json()["headers"];
    assert_eq!(headers["traceparent"], json!([traceparent]));
    assert_eq!(headers["tracestate"], json!(["vendor=1"]));
    assert_eq!(headers["x-request-id"], json!(["r-2"]));
    assert!(headers.get("x-other").is_none(), "{headers}");
}

#[tokio::test]
async fn only_the_headers_named_in_forward_headers_reach_the_backend() {
    let aggregate = Aggregate::builder()
        .backend(
            Backend::http("profile", serve(echo()).await)
                .forward_headers(["accept-language", "x-request-id"])
                .allow(["headers"]),
        )
        .build()
        .unwrap();
    let reply = get_with(
        serve_gateway(aggregate).await,
        "/",
        &[
            ("accept-language", "nb"),
            ("x-request-id", "r-1"),
            ("authorization", "Bearer secret"),
            ("cookie", "session=1"),
            ("x-other", "1"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let headers = &reply.json()["headers"];
    assert_eq!(headers["accept-language"], json!(["nb"]));
    assert_eq!(headers["x-request-id"], json!(["r-1"]));
    for name in ["authorization", "cookie", "x-other"] {
        assert!(
            headers.get(name).is_none(),
            "{name} reached the backend: {headers}"
        );
    }
}

#[tokio::test]
async fn claim_header_sends_the_principals_claim_and_never_the_clients_own_header() {
    let aggregate = Aggregate::builder()
        .backend(
            Backend::http("profile", serve(echo()).await)
                .forward_headers(["x-user-id", "x-tier"])
                .claim_header("sub", "x-user-id")
                .claim_header("tier", "x-tier")
                .allow(["headers.x-user-id", "headers.x-tier"]),
        )
        .build()
        .unwrap();
    let addr = serve_gateway_with_principals(aggregate).await;
    let spoofed = [("x-user-id", "admin"), ("x-tier", "99")];

    let signed_in = get_with(addr, "/", &[spoofed[0], spoofed[1], ("x-test-user", "ann")]).await;
    assert_merged(
        &signed_in,
        true,
        json!({"headers": {"x-user-id": ["ann"], "x-tier": ["3"]}}),
    );
    // Even listed in forward_headers, a claim header from an anonymous client is dropped.
    let anonymous = get_with(addr, "/", &spoofed).await;
    assert_merged(&anonymous, true, json!({}));
}

// Chaining.

#[tokio::test]
async fn a_chained_backend_receives_earlier_fields_with_their_json_types() {
    let user = json_backend(json!({
        "id": 42, "vip": true, "name": "Ann", "account": {"tier": "gold"}
    }));
    let base = serve(echo()).await;
    let aggregate = Aggregate::builder()
        // `allow` trims what the client sees, not what later backends read.
        .backend(Backend::http("a", serve(user).await).allow(["name"]))
        .backend(
            Backend::http(
                "b",
                format!("{base}/orders/{{a.id}}?tier={{a.account.tier}}"),
            )
            .method(Method::POST)
            .body(json!({"user": "{a.id}", "vip": "{a.vip}", "note": "for {a.name}"}))
            .allow(["method", "target", "body", "headers.content-type"])
            .group("b"),
        )
        .build()
        .unwrap();
    let reply = get(serve_gateway(aggregate).await, "/").await;
    assert_merged(
        &reply,
        true,
        json!({
            "name": "Ann",
            "b": {
                "method": "POST",
                "target": "/orders/42?tier=gold",
                "body": {"user": 42, "vip": true, "note": "for Ann"},
                "headers": {"content-type": ["application/json"]}
            }
        }),
    );
}

/// `a` answers without `missing`; `b` needs it in its body.
async fn chained_on_a_missing_field(optional: bool) -> (Reply, usize) {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut b = Backend::http("b", serve(echo_counting(Arc::clone(&calls))).await)
        .method(Method::POST)
        .body(json!({"user": "{a.missing}"}));
    if optional {
        b = b.optional();
    }
    let aggregate = Aggregate::builder()
        .backend(Backend::http(
            "a",
            serve(json_backend(json!({"id": 42}))).await,
        ))
        .backend(b)
        .errors_field("errors")
        .build()
        .unwrap();
    let reply = get(serve_gateway(aggregate).await, "/").await;
    (reply, calls.load(Ordering::SeqCst))
}

#[tokio::test]
async fn a_required_chained_backend_missing_a_field_fails_naming_the_field() {
    let (reply, calls) = chained_on_a_missing_field(false).await;
    assert_problem(&reply, 502, "bad-gateway", &["\"b\"", "{a.missing}"]);
    assert_eq!(calls, 0, "b was called without its field");
}

#[tokio::test]
async fn an_optional_chained_backend_missing_a_field_shows_in_the_errors_object() {
    let (reply, calls) = chained_on_a_missing_field(true).await;
    assert_merged(
        &reply,
        false,
        json!({"id": 42, "errors": {"b": {"error": "template"}}}),
    );
    assert_eq!(calls, 0, "b was called without its field");
}

#[tokio::test]
async fn a_backend_chained_on_a_failed_one_fails_as_its_dependency() {
    let calls = Arc::new(AtomicUsize::new(0));
    let aggregate = Aggregate::builder()
        .backend(Backend::http(
            "profile",
            serve(json_backend(json!({"name": "Ann"}))).await,
        ))
        .backend(Backend::http("a", nothing_listening()).optional())
        .backend(
            Backend::http(
                "b",
                format!(
                    "{}/orders/{{a.id}}",
                    serve(echo_counting(Arc::clone(&calls))).await
                ),
            )
            .optional(),
        )
        .errors_field("errors")
        .build()
        .unwrap();
    let reply = get(serve_gateway(aggregate).await, "/").await;
    assert_merged(
        &reply,
        false,
        json!({
            "name": "Ann",
            "errors": {"a": {"error": "unreachable"}, "b": {"error": "dependency"}}
        }),
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_required_backend_chained_on_one_that_timed_out_answers_504_naming_both() {
    let aggregate = Aggregate::builder()
        .backend(
            Backend::service(
                "a",
                in_process_after(Duration::from_secs(10), json!({"id": 1}), &Arc::default()),
            )
            .optional()
            .timeout(Duration::from_secs(1)),
        )
        .backend(
            Backend::service(
                "b",
                in_process_after(Duration::ZERO, json!({}), &Arc::default()),
            )
            .path("/orders/{a.id}"),
        )
        .build()
        .unwrap();
    let reply = call_in_process(aggregate, "/").await;
    assert_problem(
        &reply,
        504,
        "gateway-timeout",
        &["\"b\"", "\"a\"", "did not answer in time"],
    );
}

// Hedging.

#[tokio::test]
async fn hedging_over_http_answers_with_the_fast_copy() {
    let calls = Arc::new(AtomicUsize::new(0));
    let first_slow = {
        let calls = Arc::clone(&calls);
        Router::new().fallback(move || {
            let copy = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if copy == 1 {
                    sleep(Duration::from_secs(5)).await;
                }
                Json(json!({ "copy": copy }))
            }
        })
    };
    // Two copies at most: however late the second lands, it is the one that answers.
    let aggregate = Aggregate::builder()
        .backend(
            Backend::http("profile", serve(first_slow).await).hedge(2, Duration::from_millis(50)),
        )
        .build()
        .unwrap();
    let started = Instant::now();
    let reply = get(serve_gateway(aggregate).await, "/").await;
    let took = started.elapsed();
    assert_merged(&reply, true, json!({"copy": 2}));
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn hedging_answers_with_the_fast_copy_and_cancels_the_slow_one() {
    let calls = Arc::new(AtomicUsize::new(0));
    let slow_cancelled = Arc::new(AtomicBool::new(false));
    let first_slow = {
        let (calls, slow_cancelled) = (Arc::clone(&calls), Arc::clone(&slow_cancelled));
        tower::service_fn(move |_: Request<Full<Bytes>>| {
            let copy = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let slow_cancelled = Arc::clone(&slow_cancelled);
            async move {
                if copy == 1 {
                    let mut cancelled = CancelledFlag::new(&slow_cancelled);
                    sleep(Duration::from_secs(10)).await;
                    cancelled.finished = true;
                }
                Ok::<_, Infallible>(json_response(&json!({ "copy": copy })))
            }
        })
    };
    let aggregate = Aggregate::builder()
        .backend(Backend::service("profile", first_slow).hedge(3, Duration::from_millis(50)))
        .build()
        .unwrap();

    let started = Instant::now();
    let reply = call_in_process(aggregate, "/").await;
    let took = started.elapsed();

    assert_merged(&reply, true, json!({"copy": 2}));
    assert!(
        took >= Duration::from_millis(50) && took < Duration::from_millis(100),
        "took {took:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2, "a third copy was sent");
    assert!(
        slow_cancelled.load(Ordering::SeqCst),
        "the slow copy was not cancelled"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hedged_copy_that_fails_sends_the_next_copy_at_once() {
    let calls = Arc::new(AtomicUsize::new(0));
    let first_fails = {
        let calls = Arc::clone(&calls);
        tower::service_fn(move |_: Request<Full<Bytes>>| {
            let copy = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                let mut response = json_response(&json!({ "copy": copy }));
                if copy == 1 {
                    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                }
                Ok::<_, Infallible>(response)
            }
        })
    };
    let aggregate = Aggregate::builder()
        .backend(Backend::service("profile", first_fails).hedge(2, Duration::from_secs(1)))
        .build()
        .unwrap();

    let started = Instant::now();
    let reply = call_in_process(aggregate, "/").await;
    let took = started.elapsed();

    assert_merged(&reply, true, json!({"copy": 2}));
    assert!(
        took < Duration::from_secs(1),
        "waited for the delay: {took:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

// Deadlines and timeouts on the paused clock.

/// An in-process backend answering `value` after `delay`; `cancelled` is set if its call is
/// dropped first.
fn in_process_after(
    delay: Duration,
    value: Value,
    cancelled: &Arc<AtomicBool>,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send + 'static,
> + Clone
       + Send
       + Sync
       + 'static {
    let cancelled = Arc::clone(cancelled);
    tower::service_fn(move |_: Request<Full<Bytes>>| {
        let (value, cancelled) = (value.clone(), Arc::clone(&cancelled));
        async move {
            let mut flag = CancelledFlag::new(&cancelled);
            sleep(delay).await;
            flag.finished = true;
            Ok::<_, Infallible>(json_response(&value))
        }
    })
}

#[tokio::test(start_paused = true)]
async fn at_the_deadline_a_required_backend_that_never_answers_fails_the_call_with_504() {
    let cancelled = Arc::new(AtomicBool::new(false));
    let aggregate = Aggregate::builder()
        .backend(Backend::service(
            "profile",
            in_process_after(Duration::ZERO, json!({"id": 7}), &Arc::default()),
        ))
        .backend(Backend::service(
            "stuck",
            in_process_after(Duration::from_secs(3600), json!({}), &cancelled),
        ))
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap();

    let started = Instant::now();
    let reply = call_in_process(aggregate, "/").await;
    let took = started.elapsed();

    assert_problem(
        &reply,
        504,
        "gateway-timeout",
        &["\"stuck\"", "did not answer in time"],
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_millis(2100),
        "took {took:?}"
    );
    assert!(
        cancelled.load(Ordering::SeqCst),
        "the late call was not cancelled"
    );
}

#[tokio::test(start_paused = true)]
async fn at_the_deadline_a_late_optional_backend_is_dropped_and_the_others_returned() {
    let cancelled = Arc::new(AtomicBool::new(false));
    let aggregate = Aggregate::builder()
        .backend(Backend::service(
            "profile",
            in_process_after(
                Duration::from_millis(500),
                json!({"id": 7}),
                &Arc::default(),
            ),
        ))
        .backend(
            Backend::service(
                "reviews",
                in_process_after(Duration::from_secs(3600), json!({"stars": 4}), &cancelled),
            )
            .optional(),
        )
        .deadline(Duration::from_secs(1))
        .errors_field("errors")
        .build()
        .unwrap();

    let started = Instant::now();
    let reply = call_in_process(aggregate, "/").await;
    let took = started.elapsed();

    assert_merged(
        &reply,
        false,
        json!({"id": 7, "errors": {"reviews": {"error": "timeout"}}}),
    );
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(1100),
        "took {took:?}"
    );
    assert!(
        cancelled.load(Ordering::SeqCst),
        "the late call was not cancelled"
    );
}

#[tokio::test(start_paused = true)]
async fn a_backend_timeout_cuts_that_backend_alone() {
    let aggregate = Aggregate::builder()
        .backend(
            Backend::service(
                "reviews",
                in_process_after(Duration::from_secs(2), json!({"stars": 4}), &Arc::default()),
            )
            .optional()
            .timeout(Duration::from_secs(1)),
        )
        .backend(Backend::service(
            "profile",
            in_process_after(Duration::from_secs(3), json!({"id": 7}), &Arc::default()),
        ))
        .errors_field("errors")
        .build()
        .unwrap();

    let started = Instant::now();
    let reply = call_in_process(aggregate, "/").await;
    let took = started.elapsed();

    assert_merged(
        &reply,
        false,
        json!({"id": 7, "errors": {"reviews": {"error": "timeout"}}}),
    );
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_millis(3100),
        "took {took:?}"
    );
}

// In-process backends and mocks.

#[tokio::test]
async fn a_mock_served_alone_answers_its_configured_response_or_its_closures() {
    let teapot = Mock::new(StatusCode::IM_A_TEAPOT)
        .header("x-reason", "short and stout")
        .body("I'm a teapot");
    let reply = get(serve_hyper(teapot).await, "/brew").await;
    assert_eq!(reply.status, StatusCode::IM_A_TEAPOT);
    assert_eq!(reply.header("x-reason"), "short and stout");
    assert_eq!(reply.text(), "I'm a teapot");

    let echo = Mock::from_fn(|parts| {
        Response::new(Bytes::from(format!("{} {}", parts.method, parts.uri)))
    });
    let reply = get(serve_hyper(echo).await, "/pets/7?x=1").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "GET /pets/7?x=1");
}

#[tokio::test]
async fn in_process_backends_are_called_at_their_filled_path_with_the_callers_principal() {
    let profile = Mock::from_fn(|parts| {
        let subject = parts
            .extensions
            .get::<Principal>()
            .and_then(Principal::subject)
            .unwrap_or("anonymous");
        let seen = json!({"path": parts.uri.to_string(), "subject": subject});
        Response::builder()
            .header(CONTENT_TYPE, "application/json")
            .body(Bytes::from(seen.to_string()))
            .unwrap()
    });
    let orders = Mock::json(StatusCode::OK, &json!([{"id": 1}, {"id": 2}]));
    let aggregate = Aggregate::builder()
        .route("/users/{id}/dashboard")
        .backend(
            Backend::service("profile", profile)
                .path("/users/{id}?full={query.full}")
                .group("profile"),
        )
        .backend(Backend::service("orders", orders).collection("orders"))
        .build()
        .unwrap();
    let addr = serve_gateway_with_principals(aggregate).await;

    let reply = get_with(
        addr,
        "/users/7/dashboard?full=yes",
        &[("x-test-user", "ann")],
    )
    .await;
    assert_merged(
        &reply,
        true,
        json!({
            "profile": {"path": "/users/7?full=yes", "subject": "ann"},
            "orders": [{"id": 1}, {"id": 2}]
        }),
    );
}

// Metrics.

/// The recorder every endpoint in this binary records into, installed on first use; tests
/// tell their metrics apart by endpoint name.
fn metrics() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("no other recorder in this binary");
        snapshotter
    })
}

/// What the recorder holds, as a snapshot lists it.
type Recorded = [(CompositeKey, Option<Unit>, Option<SharedString>, DebugValue)];

/// The value of metric `name` with exactly `labels`, if recorded.
fn metric<'s>(
    snapshot: &'s Recorded,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<&'s DebugValue> {
    snapshot.iter().find_map(|(key, _, _, value)| {
        let key = key.key();
        let matches = key.name() == name
            && key.labels().count() == labels.len()
            && labels.iter().all(|(k, v)| {
                key.labels()
                    .any(|label| label.key() == *k && label.value() == *v)
            });
        matches.then_some(value)
    })
}

#[tokio::test]
async fn each_backend_records_its_latency_and_failures_by_reason() {
    let snapshotter = metrics();
    let aggregate = Aggregate::builder()
        .name("metered")
        .backend(Backend::http(
            "profile",
            serve(answering_after(Duration::from_millis(20), json!({"id": 7}))).await,
        ))
        .backend(Backend::http("stock", nothing_listening()).optional())
        .backend(
            Backend::http(
                "reviews",
                serve(answering_after(Duration::from_secs(5), json!({}))).await,
            )
            .optional()
            .timeout(Duration::from_millis(50)),
        )
        .build()
        .unwrap();
    let reply = get(serve_gateway(aggregate).await, "/").await;
    assert_merged(&reply, false, json!({"id": 7}));

    let snapshot = snapshotter.snapshot().into_vec();
    let latency = "tollgate_aggregate_backend_duration_seconds";
    match metric(
        &snapshot,
        latency,
        &[("endpoint", "metered"), ("backend", "profile")],
    ) {
        Some(DebugValue::Histogram(samples)) => {
            assert_eq!(samples.len(), 1);
            assert!(samples[0].into_inner() >= 0.02, "{samples:?}");
        }
        other => panic!("no latency histogram for profile: {other:?}"),
    }
    for backend in ["stock", "reviews"] {
        let labels = [("endpoint", "metered"), ("backend", backend)];
        assert!(
            matches!(metric(&snapshot, latency, &labels), Some(DebugValue::Histogram(samples)) if samples.len() == 1),
            "no latency histogram for {backend}"
        );
    }
    let failures = "tollgate_aggregate_backend_failures_total";
    let failed = |backend: &str, reason: &str| {
        let labels = [
            ("endpoint", "metered"),
            ("backend", backend),
            ("reason", reason),
        ];
        match metric(&snapshot, failures, &labels) {
            Some(DebugValue::Counter(count)) => *count,
            other => panic!("no {reason} failure counted for {backend}: {other:?}"),
        }
    };
    assert_eq!(failed("stock", "unreachable"), 1);
    assert_eq!(failed("reviews", "timeout"), 1);
    // Other tests record into the same recorder, some with backends named profile too.
    let profile_failures = snapshot.iter().any(|(key, ..)| {
        let label = |name: &str, value: &str| {
            key.key()
                .labels()
                .any(|label| label.key() == name && label.value() == value)
        };
        key.key().name() == failures && label("endpoint", "metered") && label("backend", "profile")
    });
    assert!(!profile_failures, "a failure was counted for profile");
}

// Configuration.

#[tokio::test]
async fn a_mock_from_configuration_answers_its_status_headers_and_json() {
    let config: MockConfig = serde_json::from_value(json!({
        "status": 201,
        "headers": {"cache-control": "max-age=60"},
        "json": {"status": "ok"}
    }))
    .unwrap();
    let reply = get(serve_hyper(config.build().unwrap()).await, "/health").await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(reply.header("cache-control"), "max-age=60");
    assert_eq!(reply.header("content-type"), "application/json");
    assert_eq!(reply.json(), json!({"status": "ok"}));
}

#[tokio::test]
async fn an_aggregate_from_configuration_behaves_as_one_built_in_code() {
    let catalog = json_backend(json!({"data": {"sku": "A-1", "name": "Lamp"}}));
    let stock = echo();
    let config: AggregateConfig = serde_json::from_value(json!({
        "route": "/products/{id}/details",
        "errors_field": "errors",
        "backends": [
            {"name": "catalog", "url": format!("{}/products/{{id}}", serve(catalog).await),
             "target": "data"},
            {"name": "stock", "url": format!("{}/stock/{{catalog.data.sku}}", serve(stock).await),
             "allow": ["target"], "group": "stock"},
            {"name": "reviews", "service": "reviews", "path": "/reviews?product={id}",
             "optional": true, "collection": "reviews"},
            {"name": "offers", "url": nothing_listening(), "optional": true}
        ]
    }))
    .unwrap();
    let reviews = Mock::json(StatusCode::OK, &json!([{"stars": 5}]));
    let aggregate = config
        .build(|service| (service == "reviews").then(|| reviews.clone()))
        .unwrap();
    let reply = get(serve_gateway(aggregate).await, "/products/42/details").await;
    assert_merged(
        &reply,
        false,
        json!({
            "sku": "A-1",
            "name": "Lamp",
            "stock": {"target": "/stock/A-1"},
            "reviews": [{"stars": 5}],
            "errors": {"offers": {"error": "unreachable"}}
        }),
    );
}
