//! Loopback serving (axum and plain hyper), a real HTTP client, upstreams that count their
//! calls, and a stand-in authorizer, shared by the cache layer's test binaries.
#![allow(dead_code)] // each test binary uses its own part of this module

#[path = "../../../../tests/support/client.rs"]
mod client;
#[allow(unused_imports)] // each test binary uses its own part of this module
pub use client::{Client, Reply};
#[path = "../../../../tests/support/server.rs"]
mod server;
#[allow(unused_imports)] // each test binary uses its own part of this module
pub use server::{serve_axum as serve, serve_hyper};
#[path = "../../../../tests/support/principal.rs"]
mod principal;

pub use principal::verified;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use axum::routing::{get, MethodRouter};
use bytes::Bytes;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use tollgate_core::{ManualClock, Principal};

/// Sends a GET of `path` and returns the response as soon as its head arrives, the body
/// unread, so a test can watch it arrive frame by frame.
pub async fn open(addr: SocketAddr, path: &str) -> http::Response<Incoming> {
    let client: HyperClient<HttpConnector, Empty<Bytes>> =
        HyperClient::builder(TokioExecutor::new()).build(HttpConnector::new());
    let request = http::Request::get(format!("http://{addr}{path}"))
        .body(Empty::new())
        .unwrap();
    client.request(request).await.unwrap()
}

/// A GET request for in-process calls (`ServiceExt::oneshot`).
pub fn get_request(path: &str, headers: &[(&str, &str)]) -> Request {
    let mut request = http::Request::get(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Body::empty()).unwrap()
}

/// How many requests reached an upstream.
#[derive(Clone, Debug, Default)]
pub struct Calls(Arc<AtomicUsize>);

impl Calls {
    /// The calls so far.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    /// Counts one call and returns its index (0 for the first).
    pub fn next(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst)
    }

    /// Waits until at least `n` calls arrived; panics after five seconds.
    pub async fn wait_for(&self, n: usize) {
        eventually(&format!("{n} upstream calls"), || async {
            self.count() >= n
        })
        .await;
    }
}

/// A GET route that counts its calls and answers `respond(index of the call, request)`.
pub fn upstream<F>(calls: &Calls, respond: F) -> MethodRouter
where
    F: Fn(usize, &Request) -> Response + Clone + Send + Sync + 'static,
{
    let calls = calls.clone();
    get(move |request: Request| {
        let response = respond(calls.next(), &request);
        async move { response }
    })
}

/// A response with `status`, `headers` and `body`.
pub fn respond(status: u16, headers: &[(&str, &str)], body: impl Into<Body>) -> Response {
    let mut response = http::Response::builder().status(status);
    for (name, value) in headers {
        response = response.header(*name, *value);
    }
    response.body(body.into()).unwrap()
}

/// The subject of the request's verified principal, or `anonymous`.
pub fn subject_of(request: &Request) -> String {
    request
        .extensions()
        .get::<Principal>()
        .and_then(Principal::subject)
        .unwrap_or("anonymous")
        .to_owned()
}

/// A manual clock at a fixed wall time.
pub fn clock() -> ManualClock {
    ManualClock::starting_at(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000))
}

/// Polls `condition` every 10 ms until it holds; panics naming `what` after five seconds.
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
