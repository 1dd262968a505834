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

/// A case: a request in, the response of the service measured.
type Case = Box<dyn FnMut(Request<Body>) -> Response<Body>>;

/// `service`, served by a clone for each request as axum serves a route.
fn case<S>(service: S) -> Case
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone + 'static,
{
    Box::new(move |request| serve(&mut service.clone(), request))
}

/// Every group's first two cases: the bare service, and the gateway with no step around it.
fn baselines() -> Vec<(&'static str, Case)> {
    vec![
        ("bare", case(bare())),
        (
            "gateway_no_steps",
            case(Gateway::builder().build().layer(bare())),
        ),
    ]
}

/// Measures `cases` in group `name`, each on requests from one client.
fn measure(c: &mut Criterion, name: &str, cases: Vec<(&'static str, Case)>) {
    let peer: SocketAddr = "192.0.2.1:4000".parse().expect("an address");
    let mut group = c.benchmark_group(name);
    configure(&mut group);
    for (name, mut service) in cases {
        group.bench_function(name, |b| {
            b.iter(|| {
                let response = service(black_box(request(peer)));
                assert_eq!(response.status(), StatusCode::OK);
                response
            })
        });
    }
    group.finish();
}

fn gateway(c: &mut Criterion) {
    let mut cases = baselines();
    cases.push(("throttle_layer", case(throttle().layer(bare()))));
    cases.push((
        "gateway_throttle",
        case(
            Gateway::builder()
                .throttle(throttle())
                .build()
                .layer(bare()),
        ),
    ));
    #[cfg(feature = "config")]
    cases.push(("config_throttle", case(configured().layer().layer(bare()))));
    measure(c, "gateway/throttle", cases);
}

#[cfg(feature = "observe")]
fn observe(c: &mut Criterion) {
    use tollgate::observe::AccessLogLayer;

    let mut cases = baselines();
    cases.push((
        "request_id",
        case(Gateway::builder().request_id().build().layer(bare())),
    ));
    let access_log = || {
        Gateway::builder()
            .access_log(AccessLogLayer::new())
            .build()
            .layer(bare())
    };
    cases.push(("access_log_off", case(access_log())));
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::sink)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let dispatch = tracing::Dispatch::new(subscriber);
    let service = access_log();
    cases.push((
        "access_log_json",
        Box::new(move |request| {
            tracing::dispatcher::with_default(&dispatch, || serve(&mut service.clone(), request))
        }),
    ));
    cases.push((
        "metrics_off",
        case(Gateway::builder().metrics().build().layer(bare())),
    ));
    measure(c, "gateway/observe", cases);
}

#[cfg(not(feature = "observe"))]
fn observe(_: &mut Criterion) {}

criterion_group!(benches, gateway, observe);
criterion_main!(benches);
