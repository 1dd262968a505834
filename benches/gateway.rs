//! What `Gateway` adds to its layers: each step is type-erased (one boxed service and one
//! boxed future per step and request), measured beside the same layer stacked directly and a
//! bare service of axum bodies, in the same group.
//!
//! Group `gateway/throttle`: every request from one client (a `PeerAddr` in its extensions),
//! under one rule, `PeerIp`, of a rate that never refuses; responses carry `RateLimit`.
//!
//! - `bare`: a service answering an empty 200 with a `content-type`, as axum does.
//! - `gateway_no_steps`: `Gateway::builder().build()` around it: the erasure of the
//!   application's service alone.
//! - `throttle_layer`: `ThrottleLayer` (with `keep_inner_body`) stacked directly.
//! - `gateway_throttle`: the same layer as the gateway's one step.
//! - `config_throttle` (feature `config`): the same rule from a configuration file, through
//!   `GatewayHandle::layer`, which finds the configuration serving now on every request (a
//!   read lock and a reference count) so that it follows reloads.
//!
//! Group `gateway/observe` (feature `observe`): the same bare service behind the gateway's
//! observing steps alone.
//!
//! - `bare`, `gateway_no_steps`: as above.
//! - `request_id`: tower-http's request-id layers (a UUID made for each request).
//! - `access_log_off`: the access log with no subscriber listening: the record, the span and
//!   the event's callsite check, for a service whose logging is filtered out.
//! - `access_log_json`: the access log formatted as JSON by `tracing-subscriber` into
//!   `io::sink`: the whole cost of a logged request but the write.
//! - `metrics_off`: the request metrics with no recorder installed.
//!
//! Each request is served by a clone of the service, as axum serves each request of a route,
//! driven directly (`poll_ready`, `call`, one poll with a no-op waker) as in the other
//! benches, through the same boxed closure in every case.
//!
//! Run with `cargo bench --bench gateway --features full`.

mod support;

use std::convert::Infallible;
use std::future::ready;
use std::hint::black_box;
use std::net::SocketAddr;

use axum::body::Body;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response, StatusCode};
use support::{configure, hello, serve};
use tollgate::key::PeerIp;
use tollgate::throttle::{Rate, Rule, ThrottleLayer};
use tollgate::{Gateway, PeerAddr};
use tower::{Layer, Service};

fn bare() -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send>
       + Clone
       + Send
       + Sync
       + 'static {
    tower::service_fn(|_: Request<Body>| ready(Ok::<_, Infallible>(hello(Body::empty()))))
}

fn throttle(
) -> tollgate::throttle::ThrottleLayer<tollgate::throttle::MemoryStore, tollgate::core::InnerBody> {
    ThrottleLayer::builder()
        .rule(Rule::new("per-client", Rate::per_second(1_000_000_000), PeerIp).burst(1_000_000))
        .build()
        .expect("the rule is valid")
        .keep_inner_body()
}

/// The rule of [`throttle`] from a configuration, served by a `GatewayHandle`.
#[cfg(feature = "config")]
fn configured() -> tollgate::config::GatewayHandle {
    let config = tollgate::config::GatewayConfig::from_yaml(
        "throttle:\n  rules:\n    - { name: per-client, rate: 1000000000/s, burst: 1000000, key: peer-ip }\n",
    )
    .expect("the configuration is valid");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    runtime
        .block_on(tollgate::config::GatewayHandle::new(
            config,
            tollgate::config::Handlers::new(),
        ))
        .expect("the configuration builds")
}

fn request(peer: SocketAddr) -> Request<Body> {
    let mut request = Request::new(Body::empty());
    request.extensions_mut().insert(PeerAddr(peer));
    request
}

fn gateway(c: &mut Criterion) {
    let peer: SocketAddr = "192.0.2.1:4000".parse().expect("an address");
    let mut group = c.benchmark_group("gateway/throttle");
    configure(&mut group);
    let mut run = |name: &str, mut service: Box<dyn FnMut(Request<Body>) -> Response<Body>>| {
        group.bench_function(name, |b| {
            b.iter(|| {
                let response = service(black_box(request(peer)));
                assert_eq!(response.status(), StatusCode::OK);
                response
            })
        });
    };
    let service = bare();
    run("bare", Box::new(move |r| serve(&mut service.clone(), r)));
    let service = Gateway::builder().build().layer(bare());
    run(
        "gateway_no_steps",
        Box::new(move |r| serve(&mut service.clone(), r)),
    );
    let service = throttle().layer(bare());
    run(
        "throttle_layer",
        Box::new(move |r| serve(&mut service.clone(), r)),
    );
    let service = Gateway::builder()
        .throttle(throttle())
        .build()
        .layer(bare());
    run(
        "gateway_throttle",
        Box::new(move |r| serve(&mut service.clone(), r)),
    );
    #[cfg(feature = "config")]
    {
        let service = configured().layer().layer(bare());
        run(
            "config_throttle",
            Box::new(move |r| serve(&mut service.clone(), r)),
        );
    }
    group.finish();
}

#[cfg(feature = "observe")]
fn observe(c: &mut Criterion) {
    use tollgate::observe::AccessLogLayer;

    let peer: SocketAddr = "192.0.2.1:4000".parse().expect("an address");
    let mut group = c.benchmark_group("gateway/observe");
    configure(&mut group);
    let mut run = |name: &str, mut service: Box<dyn FnMut(Request<Body>) -> Response<Body>>| {
        group.bench_function(name, |b| {
            b.iter(|| {
                let response = service(black_box(request(peer)));
                assert_eq!(response.status(), StatusCode::OK);
                response
            })
        });
    };
    let service = bare();
    run("bare", Box::new(move |r| serve(&mut service.clone(), r)));
    let service = Gateway::builder().build().layer(bare());
    run(
        "gateway_no_steps",
        Box::new(move |r| serve(&mut service.clone(), r)),
    );
    let service = Gateway::builder().request_id().build().layer(bare());
    run(
        "request_id",
        Box::new(move |r| serve(&mut service.clone(), r)),
    );
    let service = Gateway::builder()
        .access_log(AccessLogLayer::new())
        .build()
        .layer(bare());
    run(
        "access_log_off",
        Box::new(move |r| serve(&mut service.clone(), r)),
    );
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::sink)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let dispatch = tracing::Dispatch::new(subscriber);
    let service = Gateway::builder()
        .access_log(AccessLogLayer::new())
        .build()
        .layer(bare());
    run(
        "access_log_json",
        Box::new(move |r| {
            tracing::dispatcher::with_default(&dispatch, || serve(&mut service.clone(), r))
        }),
    );
    let service = Gateway::builder().metrics().build().layer(bare());
    run(
        "metrics_off",
        Box::new(move |r| serve(&mut service.clone(), r)),
    );
    group.finish();
}

#[cfg(not(feature = "observe"))]
fn observe(_: &mut Criterion) {}

criterion_group!(benches, gateway, observe);
criterion_main!(benches);
