//! The stage router's cost beside a bare service, measured in the same group.
//!
//! Every stage and canary is served by the same inner service, which `bare` is alone: it
//! answers a small JSON body with a `content-type` when the path it sees is the one it
//! expects, and 404 otherwise, so a router that passed the wrong path fails the run instead of
//! being measured. A variant's overhead is its median minus its baseline's; every variant
//! builds its requests the same way inside the timed loop and reads the response body to its
//! end. Services are driven directly (`poll_ready`, `call`, then the response future polled
//! with a no-op waker until it is ready), as in the other benches. The routers are built with
//! the defaults, so responses carry `X-Deployment`; no `metrics` recorder is installed.
//!
//! Group `stage`:
//!
//! - `bare`: the inner service, asked for `/orders`.
//! - `default_stage`: a router with one stage, the default, and no canary; `/orders`.
//! - `base_path`: stages `v1` and `v2` under `/v1` and `/v2`; `/v2/orders`, stripped to
//!   `/orders` (which also keeps axum's `OriginalUri`).
//! - `base_path_no_strip`: the same with `strip_prefix(false)`: the stage sees `/v2/orders`.
//! - `bare_with_peer`: `bare` with a `PeerAddr` extension in each request, as a server with
//!   connect info gives one; 1,000 client addresses in turn.
//! - `default_stage_with_peer`: `default_stage` with the requests of `bare_with_peer`: the
//!   request's extension map exists already, so inserting the `Stage` does not allocate it.
//! - `canary_sticky`: `base_path` with a 10 % canary on `v2`, sticky by peer IP (the default),
//!   with the same requests as `bare_with_peer` but under `/v2`: each one hashes its client
//!   into a bucket, and about 100 of the 1,000 clients are sent to the canary.
//! - `bare_with_accept_version`: `bare` with an `Accept-Version: 2` header.
//! - `header_version`: stages `v1` and `v2` selected by `Accept-Version`, with that header.
//!
//! Run with `cargo bench --bench stage`.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::Full;
use tollgate::stage::{Canary, StageRouter, StageSpec};
use tollgate::PeerAddr;
use tower::Service;

mod support;
use support::{configure, hello, serve};

/// What every stage answers.
static BODY: &[u8] = br#"{"orders":[{"id":1},{"id":2}]}"#;

static ACCEPT_VERSION: HeaderName = HeaderName::from_static("accept-version");

/// Client addresses the peer-keyed requests take in turn.
const CLIENTS: u32 = 1_000;

/// The inner service of every stage, and the baseline alone: a small JSON body for the path
/// it expects, 404 for any other.
#[derive(Clone, Copy)]
struct Orders {
    path: &'static str,
}

impl Service<Request<()>> for Orders {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<()>) -> Self::Future {
        let mut response = hello(Full::new(Bytes::from_static(BODY)));
        if request.uri().path() != self.path {
            *response.status_mut() = StatusCode::NOT_FOUND;
        }
        ready(Ok(response))
    }
}

/// The inner service when the stage sees the path without its base path.
const STRIPPED: Orders = Orders { path: "/orders" };

/// Reads a body to its end the way a server writes it out, with a no-op waker; the length.
#[inline(always)]
fn read_to_end<B: Body<Data = Bytes>>(body: B) -> usize {
    let mut cx = Context::from_waker(Waker::noop());
    let mut body = pin!(body);
    let mut len = 0;
    loop {
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => len += frame.data_ref().map_or(0, Bytes::len),
            Poll::Ready(Some(Err(_))) => panic!("the body failed"),
            Poll::Ready(None) => return len,
            Poll::Pending => std::hint::spin_loop(),
        }
    }
}

/// A request for `uri`.
fn get(uri: &Uri) -> Request<()> {
    let mut request = Request::new(());
    *request.uri_mut() = uri.clone();
    request
}

/// The client address of request `n`: 10.0.x.y, `CLIENTS` of them in turn.
fn peer(n: u64) -> PeerAddr {
    let n = (n % u64::from(CLIENTS)) as u32;
    PeerAddr(SocketAddr::from((Ipv4Addr::from(0x0a00_0000 + n), 40_000)))
}

/// The deployments that served `requests`, in order, checked to be whole 200s.
fn deployments<S, B>(service: &mut S, requests: impl Iterator<Item = Request<()>>) -> Vec<String>
where
    S: Service<Request<()>, Response = Response<B>>,
    B: Body<Data = Bytes>,
{
    requests
        .map(|request| {
            let response = serve(service, request);
            assert_eq!(response.status(), StatusCode::OK);
            let deployment = response
                .headers()
                .get("x-deployment")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            assert_eq!(read_to_end(response.into_body()), BODY.len());
            deployment
        })
        .collect()
}

/// Measures `service` on `request(n)` for n = 1, 2, …, each response's body read to the end.
fn bench<S, B>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    mut service: S,
    request: impl Fn(u64) -> Request<()>,
) where
    S: Service<Request<()>, Response = Response<B>>,
    B: Body<Data = Bytes>,
{
    let mut n = 0;
    group.bench_function(name, |b| {
        b.iter(|| {
            n += 1;
            let response = serve(&mut service, request(black_box(n)));
            let status = response.status();
            let len = read_to_end(response.into_body());
            // A wrong setup fails loudly instead of measuring the wrong path.
            assert_eq!(
                (status, len),
                (StatusCode::OK, BODY.len()),
                "{name} request {n}"
            );
            len
        })
    });
}

fn stage(c: &mut Criterion) {
    let orders = Uri::from_static("/orders");
    let v2_orders = Uri::from_static("/v2/orders");
    let plain = |_: u64| get(&orders);
    let prefixed = |_: u64| get(&v2_orders);
    let with_peer = |uri: &Uri, n: u64| {
        let mut request = get(uri);
        request.extensions_mut().insert(peer(n));
        request
    };
    let versioned = |_: u64| {
        let mut request = get(&orders);
        let version = HeaderValue::from_static("2");
        request
            .headers_mut()
            .insert(ACCEPT_VERSION.clone(), version);
        request
    };

    let mut group = c.benchmark_group("stage");
    configure(&mut group);

    bench(&mut group, "bare", STRIPPED, plain);

    let mut default_stage = StageRouter::builder()
        .stage(StageSpec::new("v1", STRIPPED))
        .default_stage("v1")
        .build()
        .expect("the benchmark's stages are valid");
    assert_eq!(deployments(&mut default_stage, (0..1).map(plain)), ["v1"]);
    bench(&mut group, "default_stage", default_stage, plain);

    for (name, strip, inner) in [
        ("base_path", true, STRIPPED),
        ("base_path_no_strip", false, Orders { path: "/v2/orders" }),
    ] {
        let mut router = StageRouter::builder()
            .stage(
                StageSpec::new("v1", inner)
                    .base_path("/v1")
                    .strip_prefix(strip),
            )
            .stage(
                StageSpec::new("v2", inner)
                    .base_path("/v2")
                    .strip_prefix(strip),
            )
            .build()
            .expect("the benchmark's stages are valid");
        assert_eq!(deployments(&mut router, (0..1).map(prefixed)), ["v2"]);
        bench(&mut group, name, router, prefixed);
    }

    bench(&mut group, "bare_with_peer", STRIPPED, |n| {
        with_peer(&orders, n)
    });
    let default_stage = StageRouter::builder()
        .stage(StageSpec::new("v1", STRIPPED))
        .default_stage("v1")
        .build()
        .expect("the benchmark's stages are valid");
    bench(&mut group, "default_stage_with_peer", default_stage, |n| {
        with_peer(&orders, n)
    });
    let mut canary = StageRouter::builder()
        .stage(StageSpec::new("v1", STRIPPED).base_path("/v1"))
        .stage(
            StageSpec::new("v2", STRIPPED)
                .base_path("/v2")
                .canary(Canary::new(STRIPPED).percent(10.0)),
        )
        .build()
        .expect("the benchmark's stages are valid");
    let served = deployments(
        &mut canary,
        (0..u64::from(CLIENTS)).map(|n| with_peer(&v2_orders, n)),
    );
    let on_canary = served.iter().filter(|d| *d == "v2-canary").count();
    let on_stable = served.iter().filter(|d| *d == "v2").count();
    println!("stage/canary_sticky: {on_canary} of {CLIENTS} clients on the canary");
    assert_eq!(on_canary + on_stable, CLIENTS as usize);
    assert!((50..=150).contains(&on_canary), "{on_canary} on the canary");
    // Sticky: every client is served by the same side again.
    assert_eq!(
        deployments(
            &mut canary,
            (0..u64::from(CLIENTS)).map(|n| with_peer(&v2_orders, n)),
        ),
        served
    );
    bench(&mut group, "canary_sticky", canary, |n| {
        with_peer(&v2_orders, n)
    });

    bench(&mut group, "bare_with_accept_version", STRIPPED, versioned);
    let mut by_header = StageRouter::builder()
        .stage(StageSpec::new("v1", STRIPPED).version("1"))
        .stage(StageSpec::new("v2", STRIPPED).version("2"))
        .build()
        .expect("the benchmark's stages are valid");
    assert_eq!(deployments(&mut by_header, (0..1).map(versioned)), ["v2"]);
    bench(&mut group, "header_version", by_header, versioned);

    group.finish();
}

criterion_group!(benches, stage);
criterion_main!(benches);
