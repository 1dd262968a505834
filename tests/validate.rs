//! Request validation over real loopback TCP: an axum `POST /orders` whose handler reads
//! `Json<Value>` is refused with a 400 listing every violation (headers, query, body at its
//! JSON Pointer), 415 for a body that is not JSON, and 413 for one past the limit without the
//! server reading it; a valid order reaches the handler with its body intact. The same layer
//! serves a plain hyper service.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use support::{serve_axum, serve_hyper, Calls, Reply};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate::validate::{QueryParam, ValidateLayer, Validation};
use tower::util::MapRequestLayer;
use tower::{service_fn, ServiceBuilder};

const BAD_REQUEST: &str = "urn:tollgate:problem:bad-request";
const TOO_LARGE: &str = "urn:tollgate:problem:payload-too-large";
const UNSUPPORTED: &str = "urn:tollgate:problem:unsupported-media-type";

/// How long one exchange may take before the test fails instead of hanging.
const CALL_LIMIT: Duration = Duration::from_secs(10);

/// The body limit of `POST /orders`.
const LIMIT: u64 = 1024;

const JSON: (&str, &str) = ("content-type", "application/json");
const CLIENT: (&str, &str) = ("x-client-id", "web-7");

/// What `POST /orders` requires.
fn orders_validation() -> Validation {
    Validation::new()
        .header("X-Client-Id")
        .query("region", QueryParam::one_of(["eu", "us"]).required())
        .query("priority", QueryParam::integer().min(1).max(5))
        .query("notify", QueryParam::boolean())
        .body(json!({
            "type": "object",
            "required": ["items"],
            "properties": {
                "items": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["sku", "quantity"],
                        "properties": {
                            "sku": {"type": "string"},
                            "quantity": {"type": "integer", "minimum": 1, "maximum": 10}
                        }
                    }
                },
                "notes": {
                    "type": "object",
                    "properties": {"gift/wrap": {"type": "boolean"}}
                }
            }
        }))
        .max_body_bytes(LIMIT)
}

fn validate() -> ValidateLayer {
    ValidateLayer::builder()
        .route("POST /orders", orders_validation())
        .build()
        .unwrap()
}

/// A request body that counts the bytes the server read of it.
struct Counted {
    inner: Body,
    read: Arc<AtomicU64>,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.read.fetch_add(data.len() as u64, Ordering::SeqCst);
            }
        }
        polled
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The shop: `POST /orders` echoes the order it reads as `Json<Value>`, behind the layer,
/// behind a step that counts the body bytes the server read.
struct Shop {
    addr: SocketAddr,
    handler: Calls,
    read: Arc<AtomicU64>,
}

async fn shop() -> Shop {
    let handler = Calls::default();
    let read = Arc::new(AtomicU64::new(0));
    let calls = handler.clone();
    let counter = read.clone();
    let app = Router::new()
        .route(
            "/orders",
            post(move |Json(order): Json<Value>| {
                calls.next();
                async move { Json(order) }
            }),
        )
        .layer(validate().keep_inner_body())
        .layer(MapRequestLayer::new(move |request: Request<Body>| {
            let read = counter.clone();
            request.map(|inner| Body::new(Counted { inner, read }))
        }));
    Shop {
        addr: serve_axum(app).await,
        handler,
        read,
    }
}

/// A real HTTP/1.1 client that sends bodies.
fn client() -> HyperClient<HttpConnector, Full<Bytes>> {
    HyperClient::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// `POST path` with `headers` and `body`.
async fn post_order(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut request = Request::post(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::from(body.to_owned())).unwrap();
    let response = tokio::time::timeout(CALL_LIMIT, client().request(request))
        .await
        .unwrap_or_else(|_| panic!("POST {path} got no answer within {CALL_LIMIT:?}"))
        .unwrap();
    Reply::of(response).await
}

const VALID_ORDER: &str =
    r#"{"items": [{"sku": "tea", "quantity": 2}], "notes": {"gift/wrap": true}}"#;

fn assert_violations(reply: &Reply, errors: Value) {
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reply:?}");
    assert_eq!(reply.problem(), BAD_REQUEST);
    assert_eq!(reply.json()["errors"], errors, "{reply:?}");
}

#[tokio::test]
async fn a_valid_order_reaches_the_handler_with_its_body_intact() {
    let shop = shop().await;
    let reply = post_order(
        shop.addr,
        "/orders?region=eu&priority=5&notify=true",
        &[JSON, CLIENT],
        VALID_ORDER,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(
        reply.json(),
        serde_json::from_str::<Value>(VALID_ORDER).unwrap()
    );
    assert_eq!(shop.handler.count(), 1);
}

/// A request (path, headers, body) and the one violation it makes.
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, Value);

#[tokio::test]
async fn each_kind_of_violation_is_refused_at_its_pointer_before_the_handler() {
    let shop = shop().await;
    let cases: &[Case] = &[
        (
            "/orders?region=eu",
            &[JSON],
            VALID_ORDER,
            json!({"in": "header", "name": "x-client-id", "pointer": "/x-client-id",
                   "detail": "the header is required"}),
        ),
        (
            "/orders?priority=2",
            &[JSON, CLIENT],
            VALID_ORDER,
            json!({"in": "query", "name": "region", "pointer": "/region",
                   "detail": "the query parameter is required"}),
        ),
        (
            "/orders?region=eu&priority=high",
            &[JSON, CLIENT],
            VALID_ORDER,
            json!({"in": "query", "name": "priority", "pointer": "/priority",
                   "detail": "expected an integer, found \"high\""}),
        ),
        (
            "/orders?region=eu&priority=6",
            &[JSON, CLIENT],
            VALID_ORDER,
            json!({"in": "query", "name": "priority", "pointer": "/priority",
                   "detail": "expected an integer from 1 to 5, found 6"}),
        ),
        (
            "/orders?region=eu&notify=yes",
            &[JSON, CLIENT],
            VALID_ORDER,
            json!({"in": "query", "name": "notify", "pointer": "/notify",
                   "detail": "expected true or false, found \"yes\""}),
        ),
        (
            "/orders?region=asia",
            &[JSON, CLIENT],
            VALID_ORDER,
            json!({"in": "query", "name": "region", "pointer": "/region",
                   "detail": "expected one of \"eu\", \"us\", found \"asia\""}),
        ),
        (
            "/orders?region=eu",
            &[JSON, CLIENT],
            r#"{"items": [}"#,
            json!({"in": "body", "pointer": "",
                   "detail": "invalid JSON: expected value at line 1 column 12"}),
        ),
        (
            "/orders?region=eu",
            &[JSON, CLIENT],
            r#"{"items": [{"sku": "tea", "quantity": 2}, {"sku": "cup", "quantity": 0}]}"#,
            json!({"in": "body", "pointer": "/items/1/quantity", "keyword": "minimum",
                   "detail": "the value is less than the minimum of 1"}),
        ),
        (
            "/orders?region=eu",
            &[JSON, CLIENT],
            r#"{"items": [{"sku": "tea", "quantity": 1}], "notes": {"gift/wrap": "yes"}}"#,
            json!({"in": "body", "pointer": "/notes/gift~1wrap", "keyword": "type",
                   "detail": "the value is not of type \"boolean\""}),
        ),
    ];
    for (path, headers, body, violation) in cases {
        let reply = post_order(shop.addr, path, headers, body).await;
        assert_violations(&reply, json!([violation]));
        assert_eq!(reply.json()["detail"], "1 violation");
    }
    assert_eq!(shop.handler.count(), 0);
}

#[tokio::test]
async fn every_violation_is_listed_in_one_refusal() {
    let shop = shop().await;
    let reply = post_order(
        shop.addr,
        "/orders?priority=0&notify=1&notify=true",
        &[JSON, ("x-client-id", "")],
        r#"{"items": [{"sku": 7, "quantity": 99}, {}]}"#,
    )
    .await;
    assert_violations(
        &reply,
        json!([
            {"in": "header", "name": "x-client-id", "pointer": "/x-client-id",
             "detail": "the header is required and must not be blank"},
            {"in": "query", "name": "priority", "pointer": "/priority",
             "detail": "expected an integer from 1 to 5, found 0"},
            {"in": "query", "name": "notify", "pointer": "/notify",
             "detail": "expected true or false, found \"1\""},
            {"in": "query", "name": "region", "pointer": "/region",
             "detail": "the query parameter is required"},
            {"in": "body", "pointer": "/items/0/quantity", "keyword": "maximum",
             "detail": "the value is greater than the maximum of 10"},
            {"in": "body", "pointer": "/items/0/sku", "keyword": "type",
             "detail": "the value is not of type \"string\""},
            {"in": "body", "pointer": "/items/1", "keyword": "required",
             "detail": "\"sku\" is a required property"},
            {"in": "body", "pointer": "/items/1", "keyword": "required",
             "detail": "\"quantity\" is a required property"},
        ]),
    );
    assert_eq!(reply.json()["detail"], "8 violations");
    assert_eq!(shop.handler.count(), 0);
}

#[tokio::test]
async fn whitespace_query_values_are_checked_and_only_empty_ones_count_as_absent() {
    let shop = shop().await;
    let cases: &[(&str, Value)] = &[
        (
            "/orders?region=%20",
            json!({"in": "query", "name": "region", "pointer": "/region",
                   "detail": "expected one of \"eu\", \"us\", found \" \""}),
        ),
        (
            "/orders?region=eu&priority=+",
            json!({"in": "query", "name": "priority", "pointer": "/priority",
                   "detail": "expected an integer, found \" \""}),
        ),
        (
            "/orders?region=eu&priority=%09",
            json!({"in": "query", "name": "priority", "pointer": "/priority",
                   "detail": "expected an integer, found \"\\t\""}),
        ),
        (
            "/orders?region=eu&notify=%20%20",
            json!({"in": "query", "name": "notify", "pointer": "/notify",
                   "detail": "expected true or false, found \"  \""}),
        ),
        (
            "/orders?region=",
            json!({"in": "query", "name": "region", "pointer": "/region",
                   "detail": "the query parameter is required"}),
        ),
    ];
    for (path, violation) in cases {
        let reply = post_order(shop.addr, path, &[JSON, CLIENT], VALID_ORDER).await;
        assert_violations(&reply, json!([violation]));
    }
    assert_eq!(shop.handler.count(), 0);

    let reply = post_order(
        shop.addr,
        "/orders?region=eu&priority=&notify=",
        &[JSON, CLIENT],
        VALID_ORDER,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(shop.handler.count(), 1);
}

#[tokio::test]
async fn a_required_header_of_whitespace_only_is_empty_and_refused() {
    let shop = shop().await;
    let reply = post_order(
        shop.addr,
        "/orders?region=eu",
        &[JSON, ("x-client-id", " \t ")],
        VALID_ORDER,
    )
    .await;
    assert_violations(
        &reply,
        json!([{"in": "header", "name": "x-client-id", "pointer": "/x-client-id",
                "detail": "the header is required and must not be blank"}]),
    );
    assert_eq!(shop.handler.count(), 0);
}

#[tokio::test]
async fn a_body_that_is_not_json_is_refused_with_415() {
    let shop = shop().await;
    let reply = post_order(
        shop.addr,
        "/orders?region=eu",
        &[("content-type", "text/plain"), CLIENT],
        VALID_ORDER,
    )
    .await;
    assert_eq!(
        reply.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "{reply:?}"
    );
    assert_eq!(reply.problem(), UNSUPPORTED);
    assert_eq!(shop.handler.count(), 0);
    assert_eq!(shop.read.load(Ordering::SeqCst), 0);
}

/// Reads one HTTP/1.1 response from `stream`: its status and body.
async fn read_response(stream: &mut (impl AsyncRead + Unpin)) -> (StatusCode, Bytes) {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut buffer).await.unwrap();
        assert!(
            n > 0,
            "the connection closed before a response: {received:?}"
        );
        received.extend_from_slice(&buffer[..n]);
    };
    let head = String::from_utf8(received[..head_end].to_vec()).unwrap();
    let status: u16 = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .expect("a content-length");
    while received.len() < head_end + length {
        let n = stream.read(&mut buffer).await.unwrap();
        assert!(n > 0, "the connection closed inside the response body");
        received.extend_from_slice(&buffer[..n]);
    }
    (
        StatusCode::from_u16(status).unwrap(),
        Bytes::copy_from_slice(&received[head_end..head_end + length]),
    )
}

fn problem_type(body: &Bytes) -> String {
    let problem: Value = serde_json::from_slice(body).unwrap();
    problem["type"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_declared_oversize_body_is_refused_before_a_byte_of_it_is_sent() {
    let shop = shop().await;
    let mut stream = TcpStream::connect(shop.addr).await.unwrap();
    let head = format!(
        "POST /orders?region=eu HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
         x-client-id: web-7\r\ncontent-length: {}\r\n\r\n",
        shop.addr,
        10 * 1024 * 1024
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // Not a byte of the body is sent: the answer comes from the head alone.
    let (status, body) = tokio::time::timeout(CALL_LIMIT, read_response(&mut stream))
        .await
        .expect("413 before the body");
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(problem_type(&body), TOO_LARGE);
    assert_eq!(shop.read.load(Ordering::SeqCst), 0);
    assert_eq!(shop.handler.count(), 0);
}

#[tokio::test]
async fn a_streamed_body_past_the_limit_is_refused_while_the_client_is_still_sending() {
    let shop = shop().await;
    let stream = TcpStream::connect(shop.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST /orders?region=eu HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
         x-client-id: web-7\r\ntransfer-encoding: chunked\r\n\r\n",
        shop.addr
    );
    writer.write_all(head.as_bytes()).await.unwrap();
    // 64 MiB in 16 KiB chunks, more than loopback's socket buffers hold: a server that read
    // it all would let the client finish.
    const CHUNK: usize = 16 * 1024;
    const CHUNKS: usize = 4096;
    let finished = Arc::new(AtomicBool::new(false));
    let sender = tokio::spawn({
        let finished = finished.clone();
        async move {
            let mut chunk = format!("{CHUNK:x}\r\n").into_bytes();
            chunk.extend(std::iter::repeat_n(b' ', CHUNK));
            chunk.extend_from_slice(b"\r\n");
            for _ in 0..CHUNKS {
                if writer.write_all(&chunk).await.is_err() {
                    return;
                }
            }
            if writer.write_all(b"0\r\n\r\n").await.is_ok() {
                finished.store(true, Ordering::SeqCst);
            }
        }
    });
    let (status, body) = tokio::time::timeout(CALL_LIMIT, read_response(&mut reader))
        .await
        .expect("413 while sending");
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(problem_type(&body), TOO_LARGE);
    assert!(
        !finished.load(Ordering::SeqCst),
        "the client sent the whole body"
    );
    let read = shop.read.load(Ordering::SeqCst);
    assert!(
        read > LIMIT && read <= LIMIT + CHUNK as u64,
        "the server read {read} bytes"
    );
    assert_eq!(shop.handler.count(), 0);
    sender.abort();
}

#[tokio::test]
async fn a_plain_hyper_service_is_validated_after_its_body_is_boxed() {
    let handler = Calls::default();
    let calls = handler.clone();
    let service = ServiceBuilder::new()
        .map_request(|request: Request<hyper::body::Incoming>| request.map(BodyExt::boxed))
        .layer(validate())
        .service(service_fn(
            move |request: Request<http_body_util::combinators::BoxBody<Bytes, hyper::Error>>| {
                calls.next();
                async move {
                    let body = request.into_body().collect().await.unwrap().to_bytes();
                    Ok::<_, Infallible>(Response::new(Full::new(body)))
                }
            },
        ));
    let addr = serve_hyper(service).await;

    let reply = post_order(addr, "/orders?region=us", &[JSON, CLIENT], VALID_ORDER).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.body, VALID_ORDER);

    let reply = post_order(
        addr,
        "/orders?region=us",
        &[JSON, CLIENT],
        r#"{"items": []}"#,
    )
    .await;
    assert_violations(
        &reply,
        json!([{"in": "body", "pointer": "/items", "keyword": "minItems",
                "detail": "the value has less than 1 item"}]),
    );

    // Off the routes, the body streams to the service unread.
    let reply = post_order(addr, "/elsewhere", &[], "anything").await;
    assert_eq!(reply.body, "anything");
    assert_eq!(handler.count(), 2);
}

/// A schema that does not compile is refused at its field: an inline one when the
/// configuration is read, a schema file's when the gateway is built (the file is read then).
#[cfg(feature = "config")]
mod config {
    use tollgate::config::{GatewayConfig, GatewayHandle, Handlers};

    #[test]
    fn an_inline_schema_that_does_not_compile_is_refused_when_the_configuration_is_read() {
        let yaml = "routes:
  - route: GET /health
    integration: { handler: o }
  - route: POST /o
    integration: { handler: o }
    validate: { body: { schema: { type: 12 } } }
";
        let error = GatewayConfig::from_yaml(yaml).unwrap_err();
        let [problem] = error.problems() else {
            panic!("{error}");
        };
        assert_eq!(problem.path, "routes[1].validate.body.schema", "{error}");
        assert!(
            problem.message.starts_with("not a valid JSON Schema: "),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_schema_file_that_does_not_compile_is_refused_at_its_field_when_built() {
        let dir = std::env::temp_dir().join(format!("tollgate-bad-schema-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("order.json"), r#"{"type": 12}"#).unwrap();
        std::fs::write(
            dir.join("gateway.yaml"),
            "routes:
  - route: GET /health
    integration: { handler: o }
  - route: POST /o
    integration: { handler: o }
    validate: { body: { schema_file: order.json } }
",
        )
        .unwrap();
        let config = GatewayConfig::from_file(dir.join("gateway.yaml")).unwrap();
        let error = GatewayHandle::new(config, Handlers::new().handler("o", || async { "ok" }))
            .await
            .unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        let [problem] = error.problems() else {
            panic!("{error}");
        };
        assert_eq!(
            problem.path, "routes[1].validate.body.schema_file",
            "{error}"
        );
        assert!(problem.message.contains("POST /o"), "{error}");
        assert!(problem.message.contains("invalid JSON Schema"), "{error}");
    }
}
