//! The layer on a tower service, request by request: what passes untouched, what is refused
//! and with which problem document, what the handler receives, and what is counted.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use serde_json::{json, Value};
use tollgate_validate::{QueryParam, ValidateLayer, Validation};
use tower::{Layer, Service, ServiceExt};

const BAD_REQUEST: &str = "urn:tollgate:problem:bad-request";

/// What the handler saw: how many calls, and the last body.
#[derive(Clone, Default)]
struct Seen {
    calls: Arc<AtomicUsize>,
    body: Arc<std::sync::Mutex<Bytes>>,
}

impl Seen {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn body(&self) -> Bytes {
        self.body.lock().unwrap().clone()
    }
}

/// A handler that reads the whole body, notes it, and answers 200 `ok`.
fn handler<B>(
    seen: &Seen,
) -> impl Service<Request<B>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Debug,
{
    let seen = seen.clone();
    tower::service_fn(move |request: Request<B>| {
        let seen = seen.clone();
        async move {
            seen.calls.fetch_add(1, Ordering::SeqCst);
            let body = request.into_body().collect().await.unwrap().to_bytes();
            *seen.body.lock().unwrap() = body;
            Ok::<_, Infallible>(Response::new(Full::from("ok")))
        }
    })
}

fn orders() -> ValidateLayer {
    ValidateLayer::builder()
        .route(
            "POST /orders",
            Validation::new()
                .header("x-client")
                .query("limit", QueryParam::integer().min(1).max(100))
                .query("dry_run", QueryParam::boolean())
                .query("region", QueryParam::one_of(["eu", "us"]).required())
                .body(json!({
                    "type": "object",
                    "required": ["items"],
                    "properties": {
                        "items": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {"quantity": {"type": "integer", "maximum": 10}}
                            }
                        },
                        "a/b": {"type": "string"}
                    }
                }))
                .max_body_bytes(1024),
        )
        .route("PUT /blobs/{id}", Validation::new().max_body_bytes(8))
        .build()
        .unwrap()
}

fn post(uri: &str, headers: &[(&str, &str)], body: &str) -> Request<Full<Bytes>> {
    let mut request = Request::post(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Full::from(body.to_owned())).unwrap()
}

const JSON: (&str, &str) = ("content-type", "application/json");
const CLIENT: (&str, &str) = ("x-client", "web");

struct Reply {
    status: StatusCode,
    content_type: String,
    body: Bytes,
}

impl Reply {
    fn problem(&self) -> Value {
        assert_eq!(self.content_type, "application/problem+json");
        serde_json::from_slice(&self.body).unwrap()
    }
}

async fn send<B>(layer: &ValidateLayer, seen: &Seen, request: Request<B>) -> Reply
where
    B: tollgate_validate::FromBytes + Send + 'static,
    B::Error: std::fmt::Debug + std::fmt::Display,
{
    let response = layer
        .clone()
        .layer(handler::<B>(seen))
        .oneshot(request)
        .await
        .unwrap();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    Reply {
        status: response.status(),
        content_type,
        body: response.into_body().collect().await.unwrap().to_bytes(),
    }
}

async fn send_full(layer: &ValidateLayer, seen: &Seen, request: Request<Full<Bytes>>) -> Reply {
    send(layer, seen, request).await
}

#[tokio::test]
async fn a_valid_request_reaches_the_handler_with_its_body() {
    let seen = Seen::default();
    let body = r#"{"items": [{"quantity": 2}], "a/b": "x"}"#;
    let reply = send_full(
        &orders(),
        &seen,
        post(
            "/orders?limit=5&dry_run=false&region=eu",
            &[JSON, CLIENT],
            body,
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "ok");
    assert_eq!(seen.calls(), 1);
    assert_eq!(seen.body(), body);
}

#[tokio::test]
async fn requests_off_the_routes_pass_untouched() {
    let seen = Seen::default();
    let layer = orders();
    for request in [
        post("/other", &[], "not json"),
        Request::get("/orders").body(Full::from("x")).unwrap(),
    ] {
        let reply = send_full(&layer, &seen, request).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    assert_eq!(seen.calls(), 2);
    assert_eq!(seen.body(), "x");
}

#[tokio::test]
async fn every_violation_is_listed_at_once_and_the_handler_is_not_called() {
    let seen = Seen::default();
    let reply = send_full(
        &orders(),
        &seen,
        post(
            "/orders?limit=0&dry_run=yes&limit=abc",
            &[JSON],
            r#"{"items": [{"quantity": 11}], "a/b": 1}"#,
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(seen.calls(), 0);
    let problem = reply.problem();
    assert_eq!(problem["type"], BAD_REQUEST);
    assert_eq!(problem["status"], 400);
    assert_eq!(problem["detail"], "7 violations");
    assert_eq!(
        problem["errors"],
        json!([
            {"in": "header", "name": "x-client", "pointer": "/x-client",
             "detail": "the header is required"},
            {"in": "query", "name": "limit", "pointer": "/limit",
             "detail": "expected an integer from 1 to 100, found 0"},
            {"in": "query", "name": "dry_run", "pointer": "/dry_run",
             "detail": "expected true or false, found \"yes\""},
            {"in": "query", "name": "limit", "pointer": "/limit",
             "detail": "expected an integer, found \"abc\""},
            {"in": "query", "name": "region", "pointer": "/region",
             "detail": "the query parameter is required"},
            {"in": "body", "pointer": "/a~1b", "keyword": "type",
             "detail": "the value is not of type \"string\""},
            {"in": "body", "pointer": "/items/0/quantity", "keyword": "maximum",
             "detail": "the value is greater than the maximum of 10"},
        ])
    );
}

#[tokio::test]
async fn invalid_json_is_one_violation_with_its_line_and_column() {
    let seen = Seen::default();
    let reply = send_full(
        &orders(),
        &seen,
        post(
            "/orders?region=us",
            &[JSON, CLIENT],
            "{\n  \"items\": [1,]\n}",
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.problem()["errors"],
        json!([{"in": "body", "pointer": "",
                "detail": "invalid JSON: trailing comma at line 2 column 15"}])
    );
    assert_eq!(seen.calls(), 0);
}

#[tokio::test]
async fn hostile_input_is_refused_without_panicking() {
    let seen = Seen::default();
    let layer = orders();
    let reply = send_full(
        &layer,
        &seen,
        post("/orders?region=us", &[JSON, CLIENT], &"[".repeat(1000)),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let detail = reply.problem()["errors"][0]["detail"].clone();
    assert!(
        detail
            .as_str()
            .unwrap()
            .contains("recursion limit exceeded"),
        "{detail}"
    );

    let reply = send_full(
        &layer,
        &seen,
        post(
            "/orders?region=%FF%FE&limit=99999999999999999999999999&limit=%zz&%=",
            &[JSON, CLIENT],
            r#"{"items": [{"quantity": 1e400}]}"#,
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let problem = reply.problem();
    assert_eq!(problem["detail"], "4 violations", "{problem}");
    assert_eq!(
        problem["errors"][0]["detail"],
        "expected one of \"eu\", \"us\", found \"\u{fffd}\u{fffd}\""
    );
    assert_eq!(seen.calls(), 0);
}

#[tokio::test]
async fn a_body_that_is_not_json_is_refused_with_415_unread() {
    let seen = Seen::default();
    for content_type in [None, Some("text/plain"), Some("application/jsonx")] {
        let headers: Vec<_> = content_type
            .map(|value| ("content-type", value))
            .into_iter()
            .chain([CLIENT])
            .collect();
        let reply = send_full(
            &orders(),
            &seen,
            post("/orders?region=eu", &headers, r#"{"items": []}"#),
        )
        .await;
        assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(
            reply.problem()["type"],
            "urn:tollgate:problem:unsupported-media-type"
        );
    }
    let reply = send_full(
        &orders(),
        &seen,
        post(
            "/orders?region=eu",
            &[
                ("content-type", "application/vnd.orders+json; charset=utf-8"),
                CLIENT,
            ],
            r#"{"items": []}"#,
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(seen.calls(), 1);
}

/// A body of `chunks` chunks of `size` bytes that counts the bytes it yields, with no size
/// hint (as a chunked request).
struct Chunks {
    left: usize,
    size: usize,
    yielded: Arc<AtomicU64>,
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        self.left -= 1;
        self.yielded.fetch_add(self.size as u64, Ordering::SeqCst);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b' '; self.size])))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// A chunked JSON request to `method uri` with `x-client`.
fn chunked(
    method: &str,
    uri: &str,
    chunks: usize,
    size: usize,
) -> (Request<UnsyncBoxBody<Bytes, Infallible>>, Arc<AtomicU64>) {
    let yielded = Arc::new(AtomicU64::new(0));
    let body = Chunks {
        left: chunks,
        size,
        yielded: yielded.clone(),
    };
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .header("x-client", "web")
        .body(body.boxed_unsync())
        .unwrap();
    (request, yielded)
}

#[tokio::test]
async fn a_body_past_the_limit_is_refused_with_413_and_never_read_further() {
    let seen = Seen::default();
    let layer = orders();
    // Declared too large: refused before a byte is read.
    let mut request = post("/orders?region=eu", &[JSON, CLIENT], "{}");
    request.headers_mut().insert("content-length", 1025.into());
    let reply = send_full(&layer, &seen, request).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    let problem = reply.problem();
    assert_eq!(problem["type"], "urn:tollgate:problem:payload-too-large");
    assert_eq!(problem["detail"], "the body is larger than 1024 bytes");

    // Streamed without a length: reading stops at the first chunk past the limit.
    let (request, yielded) = chunked("POST", "/orders?region=eu", 10_000, 100);
    let reply = send(&layer, &seen, request).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(yielded.load(Ordering::SeqCst), 1100);

    // At the limit exactly: read and validated.
    let (request, _) = chunked("POST", "/orders?region=eu", 8, 128);
    let reply = send(&layer, &seen, request).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.problem()["errors"][0]["detail"],
        "invalid JSON: EOF while parsing a value at line 1 column 1024"
    );
    assert_eq!(seen.calls(), 0);
}

#[tokio::test]
async fn a_limit_without_a_schema_buffers_the_body_and_checks_only_its_size() {
    let seen = Seen::default();
    let layer = orders();
    let (request, _) = chunked("PUT", "/blobs/7", 2, 4);
    let reply = send(&layer, &seen, request).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(seen.body(), "        ");

    let (request, yielded) = chunked("PUT", "/blobs/7", 100, 4);
    let reply = send(&layer, &seen, request).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(yielded.load(Ordering::SeqCst), 12);
    assert_eq!(seen.calls(), 1);
}

/// A body that fails after its first chunk, as a client that hangs up.
struct Broken(bool);

impl Body for Broken {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if std::mem::replace(&mut self.0, true) {
            return Poll::Ready(Some(Err(std::io::Error::other("connection reset"))));
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"{")))))
    }
}

#[tokio::test]
async fn a_body_that_cannot_be_read_is_refused_with_400() {
    let seen = Seen::default();
    let request = Request::post("/orders?region=eu")
        .header("content-type", "application/json")
        .header("x-client", "web")
        .body(Broken(false).boxed_unsync())
        .unwrap();
    let reply = send(&orders(), &seen, request).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.problem()["detail"], "the body could not be read");
    assert_eq!(seen.calls(), 0);
}

#[tokio::test]
async fn the_schema_draft_follows_dollar_schema_and_formats_are_checked() {
    let seen = Seen::default();
    let tuple = json!({"prefixItems": [{"type": "string"}]});
    let layer = ValidateLayer::builder()
        // 2020-12 by default, where `prefixItems` checks the first item.
        .route("POST /default", Validation::new().body(tuple.clone()))
        // Draft 7 has no `prefixItems`.
        .route(
            "POST /draft7",
            Validation::new().body({
                let mut schema = tuple;
                schema["$schema"] = json!("http://json-schema.org/draft-07/schema#");
                schema
            }),
        )
        .route(
            "POST /email",
            Validation::new().body(json!({"type": "string", "format": "email"})),
        )
        .build()
        .unwrap();
    let default = send_full(&layer, &seen, post("/default", &[JSON], "[1]")).await;
    assert_eq!(default.status, StatusCode::BAD_REQUEST);
    assert_eq!(default.problem()["errors"][0]["pointer"], "/0");
    let draft7 = send_full(&layer, &seen, post("/draft7", &[JSON], "[1]")).await;
    assert_eq!(draft7.status, StatusCode::OK);
    let email = send_full(&layer, &seen, post("/email", &[JSON], r#""nobody""#)).await;
    assert_eq!(email.problem()["errors"][0]["keyword"], "format");
}

#[tokio::test]
async fn keep_inner_body_answers_in_the_inner_body_type() {
    let seen = Seen::default();
    let service = orders()
        .keep_inner_body()
        .layer(handler::<Full<Bytes>>(&seen));
    let response: Response<Full<Bytes>> = service
        .oneshot(post("/orders", &[JSON], "{}"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let problem: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["detail"], "3 violations");
}

type Snapshot = Vec<(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;

fn outcome(snapshot: &Snapshot, outcome: &str) -> u64 {
    snapshot
        .iter()
        .find(|(key, ..)| {
            key.key().name() == "tollgate_validation_total"
                && key
                    .key()
                    .labels()
                    .any(|label| label.key() == "outcome" && label.value() == outcome)
        })
        .map_or(0, |(.., value)| match value {
            DebugValue::Counter(count) => *count,
            other => panic!("{other:?}"),
        })
}

#[tokio::test]
async fn decisions_on_matched_routes_are_counted_by_outcome() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, orders);
    let seen = Seen::default();
    let ok = r#"{"items": []}"#;
    for (request, status) in [
        (post("/orders?region=eu", &[JSON, CLIENT], ok), 200),
        (post("/orders?region=eu", &[JSON, CLIENT], ok), 200),
        (post("/orders", &[JSON, CLIENT], ok), 400),
        (post("/orders?region=eu", &[CLIENT], ok), 415),
        (
            post("/orders?region=eu", &[JSON, CLIENT], &" ".repeat(2000)),
            413,
        ),
        (post("/elsewhere", &[], ""), 200),
    ] {
        assert_eq!(send_full(&layer, &seen, request).await.status, status);
    }
    let snapshot = snapshotter.snapshot().into_vec();
    assert_eq!(outcome(&snapshot, "passed"), 2);
    assert_eq!(outcome(&snapshot, "refused"), 1);
    assert_eq!(outcome(&snapshot, "unsupported_media_type"), 1);
    assert_eq!(outcome(&snapshot, "too_large"), 1);
}
