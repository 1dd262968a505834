//! The throttle layer's cost beside a bare service, measured in the same group.
//!
//! Each group has a `bare` baseline; a layered variant's overhead is its median minus the
//! baseline's. Every variant of a group builds its requests the same way, inside the timed
//! loop, so the difference is the layer alone. Services are driven directly: `poll_ready`,
//! `call`, and one poll with a no-op waker, since the in-memory store decides at once.
//!
//! - `throttle/one_key`: every request from one client; `tollgate` is the default (allowed
//!   responses carry `RateLimit`), `tollgate_no_headers` sends no fields on allowed responses,
//!   `tollgate_with_policy` adds `RateLimit-Policy` to them.
//! - `throttle/10k_keys`: 10 000 clients in turn, beside `tower_governor` with the same quota.
//!   `tower_governor` needs an axum body, so it has its own `bare_axum_body` baseline and
//!   tollgate is measured over that service too.
//! - `throttle/axum_router`: one route of an axum `Router` with the layer added by
//!   `Router::layer`, with and without `keep_inner_body`, beside `tower_governor`.
//! - `throttle/1m_keys`: 1 000 000 clients in turn through a store bounded at 1 000 000 keys,
//!   filled before measuring.
//! - `throttle/refused`: the 429 path for one client whose allowance is spent.
//!
//! Run with `cargo bench --bench throttle --features full`.

use std::convert::Infallible;
use std::future::ready;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use http::{Request, Response, StatusCode};
use tollgate::key::PeerIp;
use tollgate::throttle::{AllowedFields, Rate, Rule, ThrottleLayer};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::GovernorLayer;

/// Allowed per client: one request per nanosecond with a burst of 1000, so nothing the
/// benchmark sends is ever refused.
mod support;
use support::{bare, configure, hello, peers, serve, with_peer_addr};

const BURST: u32 = 1_000;

fn unlimited_rate() -> Rate {
    Rate::new(1e9, Duration::from_secs(1)).expect("1e9 per second is a valid rate")
}

/// The bare service with axum's body, which `tower_governor` needs to build its refusals.
fn bare_axum_body(
) -> impl Service<Request<()>, Response = Response<Body>, Error = Infallible> + Clone {
    tower::service_fn(|_req: Request<()>| ready(Ok::<_, Infallible>(hello(Body::empty()))))
}

/// The default (allowed responses carry `RateLimit`) and no fields on allowed responses.
const VARIANTS: [(&str, AllowedFields); 2] = [
    ("tollgate", AllowedFields::RateLimit),
    ("tollgate_no_headers", AllowedFields::None),
];

fn tollgate_layer(capacity: usize, fields: AllowedFields) -> ThrottleLayer {
    ThrottleLayer::builder()
        .rule(Rule::new("per-client", unlimited_rate(), PeerIp).burst(BURST))
        .capacity(capacity)
        .allowed_fields(fields)
        .build()
        .expect("the benchmark's throttle layer is valid")
}

/// `tower_governor`'s `PeerIpKeyExtractor` reads axum's `ConnectInfo`; tollgate reads
/// `PeerAddr` first. Both go on every request of a group that compares the two.
fn with_peer_addr_and_connect_info(peer: SocketAddr) -> Request<()> {
    let mut request = with_peer_addr(peer);
    request.extensions_mut().insert(ConnectInfo(peer));
    request
}

/// The clients of one group and how each variant turns a client into a request.
struct Traffic {
    peers: Vec<SocketAddr>,
    request: fn(SocketAddr) -> Request<()>,
}

impl Traffic {
    /// Measures `service` under `name`, after one pass over every client so that each key is
    /// already stored when timing starts. Returns whether it ran (a filter may skip it).
    fn bench<S, B>(
        &self,
        group: &mut BenchmarkGroup<'_, WallTime>,
        name: &str,
        mut service: S,
        expected: StatusCode,
    ) -> bool
    where
        S: Service<Request<()>, Response = Response<B>>,
    {
        // Criterion calls the routine once per batch; a skipped benchmark never calls it, so
        // its million-key pass is not paid either.
        let mut warm = false;
        let mut next = 0;
        group.bench_function(name, |b| {
            if !warm {
                for &peer in &self.peers {
                    black_box(serve(&mut service, (self.request)(peer)));
                }
                warm = true;
            }
            b.iter(|| {
                let peer = self.peers[next];
                next = if next + 1 == self.peers.len() {
                    0
                } else {
                    next + 1
                };
                let response = serve(&mut service, (self.request)(black_box(peer)));
                assert_eq!(response.status(), expected);
                response
            })
        });
        warm
    }
}

fn one_key(c: &mut Criterion) {
    let traffic = Traffic {
        peers: peers(1),
        request: with_peer_addr,
    };
    let mut group = c.benchmark_group("throttle/one_key");
    configure(&mut group);
    traffic.bench(&mut group, "bare", bare(), StatusCode::OK);
    let layered = |headers| {
        ServiceBuilder::new()
            .layer(tollgate_layer(
                tollgate::throttle::DEFAULT_CAPACITY,
                headers,
            ))
            .service(bare())
    };
    for (name, fields) in VARIANTS {
        traffic.bench(&mut group, name, layered(fields), StatusCode::OK);
    }
    traffic.bench(
        &mut group,
        "tollgate_with_policy",
        layered(AllowedFields::RateLimitAndPolicy),
        StatusCode::OK,
    );
    group.finish();
}

fn ten_thousand_keys(c: &mut Criterion) {
    let traffic = Traffic {
        peers: peers(10_000),
        request: with_peer_addr_and_connect_info,
    };
    let capacity = tollgate::throttle::DEFAULT_CAPACITY;
    let mut group = c.benchmark_group("throttle/10k_keys");
    configure(&mut group);
    traffic.bench(&mut group, "bare", bare(), StatusCode::OK);
    let layered = |headers| {
        ServiceBuilder::new()
            .layer(tollgate_layer(capacity, headers))
            .service(bare())
    };
    for (name, fields) in VARIANTS {
        traffic.bench(&mut group, name, layered(fields), StatusCode::OK);
    }

    traffic.bench(
        &mut group,
        "bare_axum_body",
        bare_axum_body(),
        StatusCode::OK,
    );
    let layered = |headers| {
        ServiceBuilder::new()
            .layer(tollgate_layer(capacity, headers))
            .service(bare_axum_body())
    };
    traffic.bench(
        &mut group,
        "tollgate_axum_body",
        layered(AllowedFields::RateLimit),
        StatusCode::OK,
    );
    traffic.bench(
        &mut group,
        "tollgate_no_headers_axum_body",
        layered(AllowedFields::None),
        StatusCode::OK,
    );
    // governor's period is the time one request's allowance takes to come back, so 1 ns
    // with a burst of 1000 is the quota of `unlimited_rate()` and `BURST`.
    let governor = GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(BURST)
        .finish()
        .expect("the benchmark's governor quota is valid");
    let service = ServiceBuilder::new()
        .layer(GovernorLayer::new(governor))
        .service(bare_axum_body());
    traffic.bench(&mut group, "tower_governor", service, StatusCode::OK);
    let governor = GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(BURST)
        .use_headers()
        .finish()
        .expect("the benchmark's governor quota is valid");
    let service = ServiceBuilder::new()
        .layer(GovernorLayer::new(governor))
        .service(bare_axum_body());
    traffic.bench(
        &mut group,
        "tower_governor_headers",
        service,
        StatusCode::OK,
    );
    group.finish();
}

fn one_million_keys(c: &mut Criterion) {
    const KEYS: u32 = 1_000_000;
    let traffic = Traffic {
        peers: peers(KEYS),
        request: with_peer_addr,
    };
    let mut group = c.benchmark_group("throttle/1m_keys");
    configure(&mut group);
    traffic.bench(&mut group, "bare", bare(), StatusCode::OK);
    for (name, fields) in VARIANTS {
        let layer = tollgate_layer(KEYS as usize, fields);
        let service = ServiceBuilder::new().layer(layer.clone()).service(bare());
        if traffic.bench(&mut group, name, service, StatusCode::OK) {
            // The store is sized for exactly the clients; it should hold every one.
            let stored = layer.stored_keys("per-client").unwrap_or_default();
            println!("throttle/1m_keys/{name}: the store holds {stored} keys of {KEYS}");
        }
    }
    group.finish();
}

fn refused(c: &mut Criterion) {
    let traffic = Traffic {
        peers: peers(1),
        request: with_peer_addr,
    };
    let mut group = c.benchmark_group("throttle/refused");
    configure(&mut group);
    traffic.bench(&mut group, "bare", bare(), StatusCode::OK);
    // The pass before timing spends the only request of the day; every timed one is refused.
    let layer = ThrottleLayer::builder()
        .rule(Rule::new("per-client", Rate::per_day(1), PeerIp).burst(1))
        .build()
        .expect("the benchmark's throttle layer is valid");
    let service = ServiceBuilder::new().layer(layer).service(bare());
    traffic.bench(
        &mut group,
        "tollgate",
        service,
        StatusCode::TOO_MANY_REQUESTS,
    );
    group.finish();
}

/// One route of an axum `Router`, as a user stacks the layer with `Router::layer`: the
/// comparison users see, including what axum does with each layer's response.
fn axum_router(c: &mut Criterion) {
    let traffic = Traffic {
        peers: peers(10_000),
        request: with_peer_addr_and_connect_info,
    };
    let router = || Router::new().route("/", get(|| async { "hello" }));
    let serve = |router: Router| {
        router
            .into_service::<Body>()
            .map_request(|request: Request<()>| request.map(|()| Body::empty()))
    };
    let capacity = tollgate::throttle::DEFAULT_CAPACITY;
    let mut group = c.benchmark_group("throttle/axum_router");
    configure(&mut group);
    traffic.bench(&mut group, "bare", serve(router()), StatusCode::OK);
    for (name, fields) in VARIANTS {
        let layer = tollgate_layer(capacity, fields);
        traffic.bench(
            &mut group,
            name,
            serve(router().layer(layer.clone())),
            StatusCode::OK,
        );
        let inner = format!("{name}_inner_body");
        let layer = layer.keep_inner_body();
        traffic.bench(
            &mut group,
            &inner,
            serve(router().layer(layer)),
            StatusCode::OK,
        );
    }
    let config = GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(BURST)
        .finish()
        .expect("the benchmark's governor configuration is valid");
    let governor = router().layer(GovernorLayer::new(config));
    traffic.bench(
        &mut group,
        "tower_governor",
        serve(governor),
        StatusCode::OK,
    );
    group.finish();
}

criterion_group!(
    benches,
    one_key,
    ten_thousand_keys,
    axum_router,
    one_million_keys,
    refused
);
criterion_main!(benches);
