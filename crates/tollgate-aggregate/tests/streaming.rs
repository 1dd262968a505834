//! Bodies stream through `HttpUpstream` both ways in bounded memory: a 100 MiB download and a
//! 100 MiB upload cross the proxy on loopback TCP while the process's peak resident set
//! (`VmHWM` in `/proc/self/status`) grows far less than the body.
//!
//! This binary holds only these tests: the peak is the whole process's, so nothing else may
//! run beside them, and they take turns through `ONE_AT_A_TIME`.

#[allow(dead_code)] // this binary uses part of the shared servers
#[path = "../../../tests/support/server.rs"]
mod server;

mod generated;

use std::time::Duration;

use axum::body::Body;
use axum::extract::Request as AxumRequest;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use generated::Generated;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use server::{serve_axum, serve_hyper};
use tokio::sync::Mutex;
use tokio::time::{timeout, Instant};
use tollgate_aggregate::HttpUpstream;

const BODY_SIZE: u64 = 100 * 1024 * 1024;
const CHUNK_SIZE: usize = 64 * 1024;
/// How much the peak resident set may grow while the body crosses: well under its size.
const GROWTH_LIMIT: u64 = 40 * 1024 * 1024;
/// How long one transfer may take before the test fails instead of hanging.
const TRANSFER_LIMIT: Duration = Duration::from_secs(120);

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// The 100 MiB body of each test, made as it is read.
fn generated() -> Generated {
    Generated::new(BODY_SIZE, CHUNK_SIZE)
}

/// Reads a body to its end, keeping only its length.
async fn count_and_discard<B>(mut body: B) -> u64
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let mut count = 0;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.unwrap().data_ref() {
            count += data.len() as u64;
        }
    }
    count
}

/// An upstream that sends `BODY_SIZE` bytes on `GET /download` and answers the number of bytes
/// it read on `POST /upload`.
fn upstream() -> Router {
    Router::new()
        .route("/download", get(|| async { Body::new(generated()) }))
        .route(
            "/upload",
            post(|request: AxumRequest| async move {
                count_and_discard(request.into_body()).await.to_string()
            }),
        )
}

/// The proxy in front of the upstream, both on loopback.
async fn serve_proxy() -> std::net::SocketAddr {
    let base = format!("http://{}", serve_axum(upstream()).await);
    serve_hyper(HttpUpstream::builder(base).build().unwrap()).await
}

/// A field of `/proc/self/status`, in bytes.
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    let kib: u64 = line.trim().trim_end_matches("kB").trim().parse().unwrap();
    kib * 1024
}

/// Runs `transfer` and returns how far the process's peak resident set rose above the
/// resident set it started from.
async fn peak_growth_during<F: std::future::Future>(transfer: F) -> (F::Output, u64) {
    // Resetting the peak (Linux ≥ 4.0) measures this transfer alone; where the reset is refused,
    // an earlier, higher peak makes the growth look larger, never smaller.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let start = status_bytes("VmRSS");
    let output = timeout(TRANSFER_LIMIT, transfer)
        .await
        .expect("the transfer finished in time");
    let growth = status_bytes("VmHWM").saturating_sub(start);
    (output, growth)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mib_download_streams_through_the_proxy_in_bounded_memory() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let addr = serve_proxy().await;
    let client =
        Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(HttpConnector::new());
    let request = Request::get(format!("http://{addr}/download"))
        .body(Empty::new())
        .unwrap();

    let started = Instant::now();
    let ((status, received), growth) = peak_growth_during(async {
        let response = client.request(request).await.unwrap();
        let status = response.status();
        (status, count_and_discard(response.into_body()).await)
    })
    .await;

    println!(
        "download: {} MiB in {:?}, peak RSS grew {:.1} MiB",
        mib(received),
        started.elapsed(),
        mib(growth)
    );
    assert_eq!(status, StatusCode::OK);
    assert_eq!(received, BODY_SIZE);
    assert!(
        growth < GROWTH_LIMIT,
        "peak RSS grew {:.1} MiB for a {} MiB download",
        mib(growth),
        mib(BODY_SIZE)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mib_upload_streams_through_the_proxy_in_bounded_memory() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let addr = serve_proxy().await;
    let client = Client::builder(TokioExecutor::new()).build::<_, Generated>(HttpConnector::new());
    let request = Request::post(format!("http://{addr}/upload"))
        .body(generated())
        .unwrap();

    let started = Instant::now();
    let ((status, answer), growth) = peak_growth_during(async {
        let response = client.request(request).await.unwrap();
        let status = response.status();
        let answer = response.into_body().collect().await.unwrap().to_bytes();
        (status, answer)
    })
    .await;

    println!(
        "upload: {} MiB in {:?}, peak RSS grew {:.1} MiB",
        mib(BODY_SIZE),
        started.elapsed(),
        mib(growth)
    );
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer, BODY_SIZE.to_string(), "the upstream's byte count");
    assert!(
        growth < GROWTH_LIMIT,
        "peak RSS grew {:.1} MiB for a {} MiB upload",
        mib(growth),
        mib(BODY_SIZE)
    );
}
