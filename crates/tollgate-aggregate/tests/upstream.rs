//! `HttpUpstream` as a reverse proxy, seen from both ends: the gateway served on loopback TCP
//! and called with a real HTTP client, the upstream a real loopback server (axum over HTTP/1.1,
//! or hyper's HTTP/2 server for h2c) that answers with what it received.

#[allow(dead_code)] // this binary uses part of the shared client
#[path = "../../../tests/support/client.rs"]
mod client;
#[allow(dead_code)] // this binary uses part of the shared servers
#[path = "../../../tests/support/server.rs"]
mod server;

mod unreachable;

mod generated;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request as AxumRequest;
use axum::response::IntoResponse;
use axum::routing::any;
use axum::{Json, Router};
use bytes::Bytes;
use client::{Client, Reply};
use generated::Generated;
use http::{Request, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Map, Value};
use server::{serve_axum, serve_hyper};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout, Instant};
use tollgate_aggregate::{HttpClient, HttpUpstream, UpstreamConfig};
use tollgate_core::{Principal, TrustedProxies};
use tower::ServiceExt;
use unreachable::{nothing_accepting, nothing_listening};

/// How long one client call may take before the test fails instead of hanging.
const CALL_LIMIT: Duration = Duration::from_secs(10);

// The upstream.

/// What the upstream saw of one request: method, target, HTTP version, headers (every value
/// of each) and body.
async fn seen(request: AxumRequest) -> Json<Value> {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let mut headers = Map::new();
    for name in parts.headers.keys() {
        let values = parts
            .headers
            .get_all(name)
            .iter()
            .map(|value| Value::from(value.to_str().unwrap_or("<not text>")))
            .collect();
        headers.insert(name.to_string(), Value::Array(values));
    }
    Json(json!({
        "method": parts.method.as_str(),
        "target": parts.uri.to_string(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    }))
}

/// An upstream answering every request with what it saw, counting the calls in `calls`, and
/// a few fixed answers:
/// - `/teapot`: 418 with `x-why` and a text body;
/// - `/unavailable`: 503 with `Retry-After` and a JSON body;
/// - `/hop-by-hop`: 200 with hop-by-hop response headers beside an end-to-end one;
/// - `/slow`: 200 after 5 s;
/// - `/stalled`: 200 and the start of a body that never ends.
fn upstream_counting(calls: Arc<AtomicUsize>) -> Router {
    let counted = move |request: AxumRequest| {
        calls.fetch_add(1, Ordering::SeqCst);
        seen(request)
    };
    Router::new()
        .route(
            "/teapot",
            any(|| async {
                (
                    StatusCode::IM_A_TEAPOT,
                    [("content-type", "text/plain"), ("x-why", "short and stout")],
                    "I'm a teapot",
                )
            }),
        )
        .route(
            "/unavailable",
            any(|| async {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [("retry-after", "7")],
                    Json(json!({"error": "maintenance"})),
                )
            }),
        )
        .route(
            "/hop-by-hop",
            any(|| async {
                (
                    [
                        ("connection", "x-internal"),
                        ("x-internal", "node-3"),
                        ("keep-alive", "timeout=5"),
                        ("proxy-authenticate", "Basic realm=\"inside\""),
                        ("trailer", "x-checksum"),
                        ("x-end-to-end", "kept"),
                    ],
                    "ok",
                )
                    .into_response()
            }),
        )
        .route(
            "/slow",
            any(|| async {
                sleep(Duration::from_secs(5)).await;
                "late"
            }),
        )
        .route(
            "/stalled",
            any(|| async {
                axum::body::Body::new(Stalled {
                    first: Some(Bytes::from_static(b"partial")),
                })
            }),
        )
        .fallback(counted)
}

/// A body that sends `first` and then nothing, forever.
struct Stalled {
    first: Option<Bytes>,
}

impl http_body::Body for Stalled {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.first.take() {
            Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
            None => Poll::Pending,
        }
    }
}

/// A request body whose chunks arrive when the test sends them.
struct Trickle(mpsc::Receiver<Bytes>);

impl http_body::Body for Trickle {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|data| Ok(Frame::data(data))))
    }
}

fn upstream() -> Router {
    upstream_counting(Arc::default())
}

/// Serves the upstream on loopback over HTTP/1.1 and returns its base URL.
async fn serve_upstream(upstream: Router) -> String {
    format!("http://{}", serve_axum(upstream).await)
}

/// Serves the upstream on loopback over cleartext HTTP/2 only (h2c with prior knowledge).
async fn serve_upstream_h2c(upstream: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    upstream.clone().oneshot(request)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

// The gateway.

/// Serves the proxy on loopback TCP as a plain hyper service, which records the peer.
async fn serve_gateway(upstream: HttpUpstream) -> SocketAddr {
    serve_hyper(upstream).await
}

/// Serves the proxy behind a stand-in authorizer: a request's `x-test-user` becomes the
/// verified principal's subject.
async fn serve_gateway_with_principals(upstream: HttpUpstream) -> SocketAddr {
    fn authorize(mut request: Request<Incoming>) -> Request<Incoming> {
        let user = request.headers_mut().remove("x-test-user");
        if let Some(user) = user.and_then(|user| user.to_str().ok().map(str::to_owned)) {
            let principal = Principal::builder().subject(user).build();
            request.extensions_mut().insert(principal);
        }
        request
    }
    let service = tower::ServiceBuilder::new()
        .map_request(authorize as fn(Request<Incoming>) -> Request<Incoming>)
        .service(upstream);
    serve_hyper(service).await
}

// Calls.

async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    get_from(&Client::new(), addr, path, headers).await
}

async fn get_from(
    client: &Client,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    timeout(CALL_LIMIT, client.get(addr, path, headers))
        .await
        .unwrap_or_else(|_| panic!("GET {path} got no answer within {CALL_LIMIT:?}"))
}

/// Sends `method` with `body` and `headers`.
async fn send(
    method: &str,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &'static str,
) -> Reply {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build::<_, Full<Bytes>>(HttpConnector::new());
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::from_static(body.as_bytes())));
    let response = timeout(CALL_LIMIT, client.request(request.unwrap()))
        .await
        .unwrap_or_else(|_| panic!("{method} {path} got no answer within {CALL_LIMIT:?}"))
        .unwrap();
    Reply::of(response).await
}

/// The upstream's account of the request behind `reply`, after asserting it is a 200.
#[track_caller]
fn upstream_saw(reply: &Reply) -> Value {
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply.json()
}

/// Asserts a problem+json refusal of `status` and `kind` whose detail mentions `mention`.
#[track_caller]
fn assert_problem(reply: &Reply, status: u16, kind: &str, mention: &str) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(reply.problem(), format!("urn:tollgate:problem:{kind}"));
    let problem = reply.json();
    assert_eq!(problem["status"], status, "{problem}");
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(mention), "{detail:?} lacks {mention:?}");
}

// Paths.

#[tokio::test]
async fn the_path_query_method_and_body_pass_through_unchanged_by_default() {
    let gateway = HttpUpstream::builder(serve_upstream(upstream()).await)
        .build()
        .unwrap();
    let addr = serve_gateway(gateway).await;
    let reply = send(
        "PUT",
        addr,
        "/users/7?fields=name&q=a%20b",
        &[("content-type", "application/json")],
        r#"{"name":"Ann"}"#,
    )
    .await;
    let saw = upstream_saw(&reply);
    assert_eq!(saw["method"], "PUT");
    assert_eq!(saw["target"], "/users/7?fields=name&q=a%20b");
    assert_eq!(saw["version"], "HTTP/1.1");
    assert_eq!(saw["body"], r#"{"name":"Ann"}"#);
    assert_eq!(saw["headers"]["content-type"], json!(["application/json"]));
}

#[tokio::test]
async fn a_base_path_in_the_upstream_url_prefixes_every_path() {
    let base = serve_upstream(upstream()).await;
    let gateway = HttpUpstream::builder(format!("{base}/internal/"))
        .build()
        .unwrap();
    let addr = serve_gateway(gateway).await;
    let saw = upstream_saw(&get(addr, "/users/7?x=1", &[]).await);
    assert_eq!(saw["target"], "/internal/users/7?x=1");
}

#[tokio::test]
async fn strip_prefix_removes_a_whole_segment_prefix_and_keeps_the_query() {
    let gateway = HttpUpstream::builder(serve_upstream(upstream()).await)
        .strip_prefix("/api")
        .build()
        .unwrap();
    let addr = serve_gateway(gateway).await;
    let saw = upstream_saw(&get(addr, "/api/users/7?x=1", &[]).await);
    assert_eq!(saw["target"], "/users/7?x=1");
    let saw = upstream_saw(&get(addr, "/api", &[]).await);
    assert_eq!(saw["target"], "/");
    // `/apiary` does not start with the segment `/api`.
    let saw = upstream_saw(&get(addr, "/apiary", &[]).await);
    assert_eq!(saw["target"], "/apiary");
}

#[tokio::test]
async fn replace_prefix_swaps_a_whole_segment_prefix() {
    let gateway = HttpUpstream::builder(serve_upstream(upstream()).await)
        .replace_prefix("/api", "/v1")
        .build()
        .unwrap();
    let addr = serve_gateway(gateway).await;
    let saw = upstream_saw(&get(addr, "/api/users/7?x=1", &[]).await);
    assert_eq!(saw["target"], "/v1/users/7?x=1");
    let saw = upstream_saw(&get(addr, "/other/users", &[]).await);
    assert_eq!(saw["target"], "/other/users");
}

#[tokio::test]
async fn a_route_template_rebuilds_the_path_from_its_parameters() {
    let calls = Arc::new(AtomicUsize::new(0));
    let gateway =
        HttpUpstream::builder(serve_upstream(upstream_counting(Arc::clone(&calls))).await)
            .route("/pets/{id}", "/v2/animals/{id}/card")
            .build()
            .unwrap();
    let addr = serve_gateway(gateway).await;
    let saw = upstream_saw(&get(addr, "/pets/7?lang=nb", &[]).await);
    assert_eq!(saw["target"], "/v2/animals/7/card?lang=nb");
    let saw = upstream_saw(&get(addr, "/pets/a%20b", &[]).await);
    assert_eq!(saw["target"], "/v2/animals/a%20b/card");
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // A path the route does not match is answered here, without calling the upstream.
    let reply = get(addr, "/cats/7", &[]).await;
    assert_eq!(reply.status, 404, "{reply:?}");
    assert_eq!(reply.problem(), "urn:tollgate:problem:not-found");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_catch_all_route_parameter_keeps_its_slashes() {
    let gateway = HttpUpstream::builder(serve_upstream(upstream()).await)
        .route("/files/{*path}", "/static/{path}")
        .build()
        .unwrap();
    let addr = serve_gateway(gateway).await;
    let saw = upstream_saw(&get(addr, "/files/css/site.css?v=2", &[]).await);
    assert_eq!(saw["target"], "/static/css/site.css?v=2");
}

#[tokio::test]
async fn a_path_with_dot_segments_is_refused_before_it_can_climb_out_of_the_base_path() {
    let calls = Arc::new(AtomicUsize::new(0));
    let base = serve_upstream(upstream_counting(Arc::clone(&calls))).await;
    let gateway = HttpUpstream::builder(format!("{base}/public"))
        .strip_prefix("/api")
        .build()
        .unwrap();
    let addr = serve_gateway(gateway).await;
    for path in ["/api/../../admin", "/api/%2e%2E/admin", "/api/./x"] {
        let reply = get(addr, path, &[]).await;
        assert_eq!(reply.status, 400, "{path}: {reply:?}");
        assert_eq!(reply.problem(), "urn:tollgate:problem:bad-request");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_route_parameter_that_is_not_utf8_is_refused_as_a_bad_request() {
    let calls = Arc::new(AtomicUsize::new(0));
    let base = serve_upstream(upstream_counting(Arc::clone(&calls))).await;
    let gateway = HttpUpstream::builder(base)
        .route("/pets/{id}", "/animals/{id}")
        .build()
        .unwrap();
    let reply = get(serve_gateway(gateway).await, "/pets/%FF", &[]).await;
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(reply.problem(), "urn:tollgate:problem:bad-request");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn expect_100_continue_is_answered_here_and_not_forwarded() {
    let gateway = HttpUpstream::builder(serve_upstream(upstream()).await)
        .build()
        .unwrap();
    let addr = serve_gateway(gateway).await;
    let reply = send(
        "POST",
        addr,
        "/orders",
        &[("expect", "100-continue"), ("content-type", "text/plain")],
        "the body",
    )
    .await;
    let saw = upstream_saw(&reply);
    assert_eq!(saw["body"], "the body");
    assert!(saw["headers"].get("expect").is_none(), "{saw}");
}

#[tokio::test]
async fn under_axum_nest_service_the_upstream_gets_the_path_without_the_nest_prefix() {
    let gateway = HttpUpstream::builder(serve_upstream(upstream()).await)
        .build()
        .unwrap();
    let app = Router::new().nest_service("/legacy", gateway);
    let addr = serve_axum(app).await;
    let saw = upstream_saw(&get(addr, "/legacy/orders/9?page=2", &[]).await);
    assert_eq!(saw["target"], "/orders/9?page=2");
    // With the crate's `axum` feature (a default), the address comes from connect info.
    #[cfg(feature = "axum")]
    assert_eq!(saw["headers"]["x-forwarded-for"], json!(["127.0.0.1"]));
}

// Headers.

#[tokio::test]
async fn hop_by_hop_request_headers_are_not_forwarded() {
    let base = serve_upstream(upstream()).await;
    let gateway = HttpUpstream::builder(base.clone()).build().unwrap();
    let addr = serve_gateway(gateway).await;
    let sent = [
        ("connection", "keep-alive, x-secret"),
        ("x-secret", "for-the-gateway-only"),
        ("keep-alive", "timeout=5"),
        ("proxy-authorization", "Basic Z2F0ZXdheTpzZWNyZXQ="),
        ("proxy-connection", "keep-alive"),
        ("trailer", "x-checksum"),
        ("te", "gzip, trailers"),
        ("x-end-to-end", "kept"),
    ];
    let hop_by_hop = &sent[..6];

    // Called directly, the upstream sees every one of them: nothing else strips them.
    let upstream_addr: SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let direct = &upstream_saw(&get(upstream_addr, "/", &sent).await)["headers"];
    for (name, _) in hop_by_hop {
        assert!(
            direct.get(name).is_some(),
            "{name} is lost without the gateway"
        );
    }
    assert_eq!(direct["te"], json!(["gzip, trailers"]));

    let headers = &upstream_saw(&get(addr, "/", &sent).await)["headers"];
    for (name, _) in hop_by_hop {
        assert!(
            headers.get(name).is_none(),
            "{name} reached the upstream: {headers}"
        );
    }
    // `TE: trailers` alone crosses, for gRPC; the client's codings were for the gateway.
    assert_eq!(headers["te"], json!(["trailers"]));
    assert_eq!(headers["x-end-to-end"], json!(["kept"]));
}

#[tokio::test]
async fn te_without_trailers_is_not_forwarded() {
    let gateway = HttpUpstream::builder(serve_upstream(upstream()).await)
        .build()
        .unwrap();
    let addr = serve_gateway(gateway).await;
    let saw = upstream_saw(&get(addr, "/", &[("te", "gzip")]).await);
    assert!(saw["headers"].get("te").is_none(), "{saw}");
}

#[tokio::test]
async fn hop_by_hop_response_headers_do_not_reach_the_client() {
    let base = serve_upstream(upstream()).await;
    let gateway = HttpUpstream::builder(base.clone()).build().unwrap();
    let addr = serve_gateway(gateway).await;
    let hop_by_hop = ["x-internal", "keep-alive", "proxy-authenticate", "trailer"];

    // Called directly, the upstream sends every one of them.
    let upstream_addr: SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let direct = get(upstream_addr, "/hop-by-hop", &[]).await;
    for name in hop_by_hop.iter().chain(&["connection"]) {
        assert!(
            direct.headers.contains_key(*name),
            "{name} is lost without the gateway"
        );
    }

    let reply = get(addr, "/hop-by-hop", &[]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.text(), "ok");
    for name in hop_by_hop {
        assert!(
            !reply.headers.contains_key(name),
            "{name} reached the client: {:?}",
            reply.headers
        );
    }
    // The gateway's own server may say `Connection: keep-alive`; never the upstream's line.
    for line in reply.headers.get_all("connection") {
        assert!(
            !line.to_str().unwrap().contains("x-internal"),
            "the upstream's Connection reached the client: {line:?}"
        );
    }
    assert_eq!(reply.header("x-end-to-end"), "kept");
}

/// The forwarding headers a client would use to pass itself off as someone else.
const SPOOFED: [(&str, &str); 4] = [
    ("x-forwarded-for", "6.6.6.6"),
    ("x-forwarded-proto", "https"),
    ("x-forwarded-host", "shop.example"),
    ("forwarded", "for=6.6.6.6;proto=https"),
];

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_peer_are_replaced_with_what_the_gateway_saw() {
    let gateway = HttpUpstream::builder(serve_upstream(upstream()).await)
        .trusted_proxies(TrustedProxies::new(["127.0.0.2"]).unwrap())
        .build()
        .unwrap();
    let addr = serve_gateway(gateway).await;
    let saw = upstream_saw(&get_from(&Client::from_ip("127.0.0.1"), addr, "/", &SPOOFED).await);
    let headers = &saw["headers"];
    assert_eq!(headers["x-forwarded-for"], json!(["127.0.0.1"]));
    assert_eq!(headers["x-forwarded-proto"], json!(["http"]));
    assert_eq!(headers["x-forwarded-host"], json!([addr.to_string()]));
    assert_eq!(
        headers["forwarded"],
        json!([format!("for=127.0.0.1;host=\"{addr}\";proto=http")])
    );
}

#[tokio::test]
async fn forwarding_headers_from_a_trusted_proxy_are_kept_and_extended() {
    let gateway = HttpUpstream::builder(serve_upstream(upstream()).await)
        .trusted_proxies(TrustedProxies::new(["127.0.0.2"]).unwrap())
        .build()
        .unwrap();
    let addr = serve_gateway(gateway).await;
    let saw = upstream_saw(&get_from(&Client::from_ip("127.0.0.2"), addr, "/", &SPOOFED).await);
    let headers = &saw["headers"];
    assert_eq!(headers["x-forwarded-for"], json!(["6.6.6.6, 127.0.0.2"]));
    assert_eq!(headers["x-forwarded-proto"], json!(["https"]));
    assert_eq!(headers["x-forwarded-host"], json!(["shop.example"]));
    assert_eq!(
        headers["forwarded"],
        json!([format!(
            "for=6.6.6.6;proto=https, for=127.0.0.2;host=\"{addr}\";proto=http"
        )])
    );
}

#[tokio::test]
async fn the_upstream_gets_its_own_host_unless_preserve_host_is_set() {
    let base = serve_upstream(upstream()).await;
    let upstream_authority = base.trim_start_matches("http://").to_owned();
    let own = serve_gateway(HttpUpstream::builder(base.clone()).build().unwrap()).await;
    let preserving = serve_gateway(
        HttpUpstream::builder(base)
            .preserve_host(true)
            .build()
            .unwrap(),
    )
    .await;

    let saw = upstream_saw(&get(own, "/", &[]).await);
    assert_eq!(saw["headers"]["host"], json!([upstream_authority]));
    let saw = upstream_saw(&get(preserving, "/", &[("host", "shop.example")]).await);
    assert_eq!(saw["headers"]["host"], json!(["shop.example"]));
}

#[tokio::test]
async fn forward_headers_passes_only_the_listed_headers_and_those_describing_the_body() {
    let gateway = HttpUpstream::builder(serve_upstream(upstream()).await)
        .forward_headers(["accept", "x-request-id"])
        .build()
        .unwrap();
    let addr = serve_gateway(gateway).await;
    let reply = send(
        "POST",
        addr,
        "/orders",
        &[
            ("accept", "application/json"),
            ("x-request-id", "r-1"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("content-type", "application/json"),
            ("content-encoding", "identity"),
            ("authorization", "Bearer secret"),
            ("cookie", "session=1"),
            ("user-agent", "test"),
            ("x-other", "1"),
        ],
        r#"{"item":1}"#,
    )
    .await;
    let saw = upstream_saw(&reply);
    assert_eq!(saw["body"], r#"{"item":1}"#);
    let mut names: Vec<&str> = saw["headers"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "accept",
            "content-encoding",
            "content-length",
            "content-type",
            "forwarded",
            "host",
            // The trace context travels though not listed.
            "traceparent",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto",
            "x-request-id",
        ]
    );
}

#[tokio::test]
async fn claim_header_carries_the_principals_subject_and_drops_the_clients_copy() {
    let gateway = HttpUpstream::builder(serve_upstream(upstream()).await)
        .claim_header("sub", "x-user-id")
        .build()
        .unwrap();
    let addr = serve_gateway_with_principals(gateway).await;

    let saw =
        upstream_saw(&get(addr, "/", &[("x-user-id", "admin"), ("x-test-user", "ann")]).await);
    assert_eq!(saw["headers"]["x-user-id"], json!(["ann"]));
    let saw = upstream_saw(&get(addr, "/", &[("x-user-id", "admin")]).await);
    assert!(
        saw["headers"].get("x-user-id").is_none(),
        "an anonymous client's x-user-id reached the upstream: {saw}"
    );
}

// Upstream answers and failures.

#[tokio::test]
async fn upstream_client_and_server_errors_pass_through_unchanged() {
    let gateway = HttpUpstream::builder(serve_upstream(upstream()).await)
        .build()
        .unwrap();
    let addr = serve_gateway(gateway).await;

    let teapot = get(addr, "/teapot", &[]).await;
    assert_eq!(teapot.status, StatusCode::IM_A_TEAPOT);
    assert_eq!(teapot.header("content-type"), "text/plain");
    assert_eq!(teapot.header("x-why"), "short and stout");
    assert_eq!(teapot.text(), "I'm a teapot");

    let unavailable = get(addr, "/unavailable", &[]).await;
    assert_eq!(unavailable.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(unavailable.header("content-type"), "application/json");
    assert_eq!(unavailable.header("retry-after"), "7");
    assert_eq!(unavailable.json(), json!({"error": "maintenance"}));
}

#[tokio::test]
async fn an_unreachable_upstream_answers_502_problem_json() {
    let gateway = HttpUpstream::builder(nothing_listening()).build().unwrap();
    let reply = get(serve_gateway(gateway).await, "/", &[]).await;
    assert_problem(&reply, 502, "bad-gateway", "could not be reached");
}

#[tokio::test]
async fn an_upstream_slower_than_the_timeout_answers_504_problem_json() {
    let gateway = HttpUpstream::builder(serve_upstream(upstream()).await)
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let addr = serve_gateway(gateway).await;
    let started = Instant::now();
    let reply = get(addr, "/slow", &[]).await;
    assert_problem(&reply, 504, "gateway-timeout", "did not answer in time");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn with_http2_prior_knowledge_the_upstream_is_called_over_h2c() {
    let client = HttpClient::builder().http2_prior_knowledge().build();
    let base = serve_upstream_h2c(upstream()).await;
    let gateway = HttpUpstream::builder(base.clone())
        .client(client)
        .build()
        .unwrap();
    let addr = serve_gateway(gateway).await;
    let reply = send(
        "POST",
        addr,
        "/orders?x=1",
        &[("content-type", "text/plain"), ("x-end-to-end", "kept")],
        "hello over h2",
    )
    .await;
    let saw = upstream_saw(&reply);
    assert_eq!(saw["version"], "HTTP/2.0");
    assert_eq!(saw["method"], "POST");
    // The upstream's own authority travels as `:authority`, with no `Host` beside it.
    assert_eq!(saw["target"], format!("{base}/orders?x=1"));
    assert!(saw["headers"].get("host").is_none(), "{saw}");
    assert_eq!(saw["body"], "hello over h2");
    assert_eq!(saw["headers"]["x-end-to-end"], json!(["kept"]));
}

#[tokio::test]
async fn x_forwarded_proto_comes_from_configuration_never_from_the_client() {
    let gateway = HttpUpstream::builder(serve_upstream(upstream()).await)
        .forwarded_proto("https")
        .build()
        .unwrap();
    let addr = serve_gateway(gateway).await;
    let saw = upstream_saw(&get(addr, "/", &[("x-forwarded-proto", "http")]).await);
    assert_eq!(saw["headers"]["x-forwarded-proto"], json!(["https"]));
    assert_eq!(
        saw["headers"]["forwarded"],
        json!([format!("for=127.0.0.1;host=\"{addr}\";proto=https")])
    );
}

/// Posts `body` to `path` and returns the reply, failing if none comes within `CALL_LIMIT`.
async fn post_streamed<B>(addr: SocketAddr, path: &str, body: B) -> Reply
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build::<_, B>(HttpConnector::new());
    let request = Request::post(format!("http://{addr}{path}"))
        .body(body)
        .unwrap();
    let response = timeout(CALL_LIMIT, client.request(request))
        .await
        .unwrap_or_else(|_| panic!("POST {path} got no answer within {CALL_LIMIT:?}"))
        .unwrap();
    Reply::of(response).await
}

#[tokio::test]
async fn an_upstream_slower_than_the_timeout_after_a_whole_upload_answers_504() {
    let gateway = HttpUpstream::builder(serve_upstream(upstream()).await)
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let addr = serve_gateway(gateway).await;
    let started = Instant::now();
    // A body with a Content-Length: once it is sent, the timer bounds the wait for the head.
    let reply = send(
        "POST",
        addr,
        "/slow",
        &[("content-type", "text/plain")],
        "a body sent whole",
    )
    .await;
    let took = started.elapsed();
    assert_problem(&reply, 504, "gateway-timeout", "did not answer in time");
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[tokio::test]
async fn a_steady_upload_slower_than_the_timeout_in_total_restarts_it_with_each_chunk() {
    let gateway = HttpUpstream::builder(serve_upstream(upstream()).await)
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let addr = serve_gateway(gateway).await;
    let (chunks, receiver) = mpsc::channel(1);
    tokio::spawn(async move {
        // A client on a slow link: a chunk every 250 ms, twice the timeout in all.
        for chunk in ["one,", "two,", "three,", "four"] {
            sleep(Duration::from_millis(250)).await;
            if chunks
                .send(Bytes::from_static(chunk.as_bytes()))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let started = Instant::now();
    let reply = post_streamed(addr, "/upload", Trickle(receiver)).await;
    let took = started.elapsed();
    assert_eq!(upstream_saw(&reply)["body"], "one,two,three,four");
    // Had the timer run from the start without restarting, it would have fired at 500 ms.
    assert!(took >= Duration::from_millis(1000), "took {took:?}");
}

#[tokio::test]
async fn an_upload_that_stalls_longer_than_the_timeout_answers_504() {
    let gateway = HttpUpstream::builder(serve_upstream(upstream()).await)
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let addr = serve_gateway(gateway).await;
    let (chunks, receiver) = mpsc::channel(1);
    chunks.send(Bytes::from_static(b"first,")).await.unwrap();
    let started = Instant::now();
    // `chunks` stays open and silent: the client has stopped sending without ending the body.
    let reply = post_streamed(addr, "/upload", Trickle(receiver)).await;
    let took = started.elapsed();
    assert_problem(&reply, 504, "gateway-timeout", "did not answer in time");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    drop(chunks);
}

/// An upstream that accepts connections and never reads from them, holding them open; the
/// count of accepted connections is in `accepted`.
async fn serve_never_reading(accepted: Arc<AtomicUsize>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn an_upstream_that_stops_reading_a_large_upload_answers_504_instead_of_hanging() {
    let accepted = Arc::new(AtomicUsize::new(0));
    let gateway = HttpUpstream::builder(serve_never_reading(Arc::clone(&accepted)).await)
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let addr = serve_gateway(gateway).await;
    let started = Instant::now();
    // 64 MiB: far more than the socket buffers between the gateway and the upstream hold.
    let reply = post_streamed(addr, "/upload", Generated::new(64 << 20, 64 * 1024)).await;
    let took = started.elapsed();
    assert_problem(&reply, 504, "gateway-timeout", "did not answer in time");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the upstream was not reached"
    );
}

#[tokio::test]
async fn total_timeout_cuts_off_a_response_body_that_stalls() {
    let gateway = HttpUpstream::builder(serve_upstream(upstream()).await)
        .total_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let addr = serve_gateway(gateway).await;
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build::<_, Full<Bytes>>(HttpConnector::new());
    let started = Instant::now();
    let response = timeout(
        CALL_LIMIT,
        client.request(
            Request::get(format!("http://{addr}/stalled"))
                .body(Full::default())
                .unwrap(),
        ),
    )
    .await
    .expect("a response head in time")
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let mut body = response.into_body();
    let mut received = Vec::new();
    let ended = timeout(CALL_LIMIT, async {
        loop {
            match body.frame().await {
                Some(Ok(frame)) => {
                    received.extend_from_slice(frame.data_ref().map_or(&[][..], |data| &data[..]))
                }
                Some(Err(error)) => return Err(error),
                None => return Ok(()),
            }
        }
    })
    .await
    .expect("the stalled body is cut off rather than left hanging");
    let took = started.elapsed();
    assert!(ended.is_err(), "a cut-off body must not look complete");
    assert_eq!(received, b"partial");
    assert!(took >= Duration::from_millis(300), "took {took:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[tokio::test]
async fn total_timeout_before_the_response_head_answers_504() {
    let gateway = HttpUpstream::builder(serve_upstream(upstream()).await)
        .total_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let addr = serve_gateway(gateway).await;
    let started = Instant::now();
    let reply = get(addr, "/slow", &[]).await;
    assert_problem(&reply, 504, "gateway-timeout", "did not answer in time");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn an_upstream_built_from_configuration_rewrites_passes_claims_and_times_out() {
    let config: UpstreamConfig = serde_json::from_value(json!({
        "url": serve_upstream(upstream()).await,
        "strip_prefix": "/api",
        "claim_headers": {"sub": "x-user-id"},
        "forwarded_proto": "https",
        "timeout": "100ms"
    }))
    .unwrap();
    let addr = serve_gateway_with_principals(config.build(None).unwrap()).await;

    let saw = upstream_saw(
        &get(
            addr,
            "/api/users/7",
            &[("x-user-id", "admin"), ("x-test-user", "ann")],
        )
        .await,
    );
    assert_eq!(saw["target"], "/users/7");
    assert_eq!(saw["headers"]["x-user-id"], json!(["ann"]));
    assert_eq!(saw["headers"]["x-forwarded-proto"], json!(["https"]));
    let reply = get(addr, "/api/slow", &[]).await;
    assert_problem(&reply, 504, "gateway-timeout", "did not answer in time");
}

#[tokio::test]
async fn an_upstream_that_does_not_accept_the_connection_in_time_answers_504() {
    let (base, _listener, _queued) = nothing_accepting().await;
    let client = HttpClient::builder()
        .connect_timeout(Duration::from_millis(200))
        .build();
    let gateway = HttpUpstream::builder(base).client(client).build().unwrap();
    let addr = serve_gateway(gateway).await;
    let started = Instant::now();
    let reply = get(addr, "/", &[]).await;
    assert_problem(
        &reply,
        504,
        "gateway-timeout",
        "did not accept a connection in time",
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}
