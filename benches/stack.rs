//! The whole stack's in-process cost beside a bare service: throttle, JWT authorizer, usage
//! plan and cache on one request, stacked directly and through `Gateway`, measured in the
//! same group.
//!
//! Group `stack/warm`. Every request is built the same way inside the timed loop, whatever the
//! case: a `Request<Body>` (axum's body, empty) for `/items`, from one client (a `PeerAddr` in
//! its extensions), with `Authorization: Bearer <an HS256 JWT>` and `x-api-key: <a real key>`,
//! both cloned from static values made before timing. Each request is served by a clone of the
//! service, as axum serves each request of a route, driven directly (`poll_ready`, `call`, one
//! poll with a no-op waker) through the same boxed closure in every case, and its status is
//! checked to be 200. Every case has its own layers, so no state is shared between cases.
//!
//! The application is a handler answering an empty 200 with a `content-type` (as axum sets)
//! and a `Cache-Control`: `no-store` for `bare` and the miss cases, `max-age=300` for
//! `gateway_hit` (whose handler is called only while warming up).
//!
//! - `bare`: the `no-store` handler alone.
//! - `stacked_by_hand_miss`: the handler behind, outermost first, a `ThrottleLayer` (one rule,
//!   `PeerIp`, 10⁹/s with a burst of 10⁶: never refuses), an `AuthLayer` with a JWT authorizer
//!   (HS256, issuer and audience checked; the token was verified once before timing, so each
//!   request is a hit of the verified-token cache, as in `benches/auth.rs`), a `UsageLayer`
//!   (one key on a plan whose throttle, 10⁹/s with a burst of 10⁹, and quota, `u32::MAX` a
//!   day, never refuse, as in `benches/usage.rs`) and a `CacheLayer` (the defaults: per-principal
//!   keys, 64 MiB), nested with `tower::ServiceBuilder`, each with `keep_inner_body()` where it
//!   has one. The cache's body is made axum's `Body` (`IntoResponse`, as axum does to a
//!   router's responses, and as the gateway does to each step's) so that the layers above it
//!   keep their inner body. Every request is a cache MISS: the key is built (per principal:
//!   the JWT's subject), looked up, the request leads the key's flight upstream, and the
//!   handler's `no-store` response is passed on unstored — the miss path of `cache_no_store`
//!   in `benches/cache.rs`. (A disabled route would be a BYPASS, which never builds a key.)
//! - `gateway_miss`: the same four layers as the steps of `Gateway::builder()`, around the same
//!   handler: the erasure (one boxed future per step, a reference-counted clone per step)
//!   on top of `stacked_by_hand_miss`.
//! - `gateway_hit`: the same gateway around the `max-age=300` handler, its cache warmed
//!   before timing: every request is throttled, authorized and counted against the key's
//!   quota, then answered by the cache (HIT, the stored empty body) without reaching the
//!   handler.
//!
//! `gateway_miss` − `bare` is the full stack's in-process cost, `gateway_miss` −
//! `stacked_by_hand_miss` what the erasure costs, and `gateway_hit` beside `bare` what a
//! cached answer costs against the application answering at once.
//!
//! Run with `cargo bench --bench stack --features full`.

mod support;

use std::convert::Infallible;
use std::future::ready;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::SystemTime;

use axum::body::Body;
use axum::response::IntoResponse;
use criterion::{criterion_group, criterion_main, Criterion};
use http::header::{AUTHORIZATION, CACHE_CONTROL};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use jsonwebtoken::{EncodingKey, Header};
use support::{configure, hello, serve};
use tollgate::auth::jwt::{JwtAuthorizer, JwtProvider, Keys};
use tollgate::auth::AuthLayer;
use tollgate::cache::{CacheLayer, X_CACHE_STATUS};
use tollgate::core::InnerBody;
use tollgate::key::PeerIp;
use tollgate::throttle::{MemoryStore, Rate, Rule, ThrottleLayer};
use tollgate::usage::{ApiKey, KeyHash, QuotaPeriod, UsagePlan, UsagePlans};
use tollgate::{Gateway, PeerAddr};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "orders-api";
const SECRET: &[u8; 32] = b"a secret of at least 32 bytes!!!";

/// The API key's plaintext (as in `benches/usage.rs`).
const API_KEY: &str = "tg_k0000000_Q8vJ2xLm4Rt7Wp9Zc3Nh6Ysd";

static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// The application: an empty 200 with a `content-type` and `cache_control`.
fn handler(
    cache_control: &'static str,
) -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send>
       + Clone
       + Send
       + Sync
       + 'static {
    tower::service_fn(move |_: Request<Body>| {
        let mut response = hello(Body::empty());
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static(cache_control));
        ready(Ok::<_, Infallible>(response))
    })
}

/// A token the authorizer accepts: issuer, audience, a subject, scopes, a day to live.
fn token() -> String {
    support::token(
        &Header::default(),
        &EncodingKey::from_secret(SECRET),
        ISSUER,
        AUDIENCE,
    )
}

/// One case's layers, each with state of its own.
struct Stack {
    throttle: ThrottleLayer<MemoryStore, InnerBody>,
    auth: AuthLayer<JwtAuthorizer, InnerBody>,
    plans: UsagePlans,
    cache: CacheLayer,
}

impl Stack {
    fn new() -> Self {
        let throttle = ThrottleLayer::builder()
            .rule(Rule::new("per-client", Rate::per_second(1_000_000_000), PeerIp).burst(1_000_000))
            .build()
            .expect("the rule is valid")
            .keep_inner_body();
        let authorizer = JwtAuthorizer::builder()
            .provider(JwtProvider::new(ISSUER, Keys::hmac(SECRET)).audience(AUDIENCE))
            .build()
            .expect("the benchmark's authorizer is valid");
        let key = ApiKey::new(
            "k0000000",
            "bench",
            KeyHash::of(API_KEY.as_bytes()),
            SystemTime::now(),
        )
        .expect("the key id is valid");
        let plans = UsagePlans::builder()
            .plan(
                UsagePlan::new("bench")
                    .throttle(Rate::per_second(1_000_000_000), 1_000_000_000)
                    .quota(u32::MAX, QuotaPeriod::Day),
            )
            .key(key)
            .build()
            .expect("the benchmark's plans are valid");
        Self {
            throttle,
            auth: AuthLayer::new(authorizer).keep_inner_body(),
            plans,
            cache: CacheLayer::builder()
                .build()
                .expect("the benchmark's cache layer is valid"),
        }
    }

    fn gateway(self) -> Gateway {
        Gateway::builder()
            .throttle(self.throttle)
            .authorizer(self.auth)
            .usage(self.plans.layer())
            .cache(self.cache)
            .build()
    }
}

/// Serves one request inside a current-thread tokio runtime, before timing (the first
/// verification of the token, the first fill of the cache); what the cache did.
fn prime<S>(service: &S, request: Request<Body>) -> Option<String>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime starts");
    let response = runtime
        .block_on(service.clone().oneshot(request))
        .expect("the service never fails");
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "{:?}",
        response.headers()
    );
    cache_status(&response)
}

fn cache_status(response: &Response<Body>) -> Option<String> {
    let value = response.headers().get(X_CACHE_STATUS)?;
    Some(value.to_str().expect("a visible value").to_owned())
}

fn stack(c: &mut Criterion) {
    let peer: SocketAddr = "192.0.2.1:4000".parse().expect("an address");
    let uri = Uri::from_static("/items");
    let bearer: &'static str = Box::leak(format!("Bearer {}", token()).into_boxed_str());
    let bearer = HeaderValue::from_static(bearer);
    let api_key = HeaderValue::from_static(API_KEY);
    let request = move || {
        let mut request = Request::new(Body::empty());
        *request.uri_mut() = uri.clone();
        let headers = request.headers_mut();
        headers.insert(AUTHORIZATION, bearer.clone());
        headers.insert(X_API_KEY.clone(), api_key.clone());
        request.extensions_mut().insert(PeerAddr(peer));
        request
    };

    let mut group = c.benchmark_group("stack/warm");
    configure(&mut group);
    let mut run = |name: &str, mut service: Box<dyn FnMut(Request<Body>) -> Response<Body>>| {
        // Outside a runtime too, the path measured answers at the first poll.
        let response = service(request());
        assert_eq!(response.status(), StatusCode::OK, "{name}");
        group.bench_function(name, |b| {
            b.iter(|| {
                let response = service(black_box(request()));
                assert_eq!(response.status(), StatusCode::OK);
                response
            })
        });
    };

    let service = handler("no-store");
    assert_eq!(prime(&service, request()), None);
    run("bare", Box::new(move |r| serve(&mut service.clone(), r)));

    let layers = Stack::new();
    let service = ServiceBuilder::new()
        .layer(layers.throttle)
        .layer(layers.auth)
        .layer(layers.plans.layer().keep_inner_body())
        .map_response(IntoResponse::into_response)
        .layer(layers.cache)
        .service(handler("no-store"));
    for _ in 0..2 {
        assert_eq!(prime(&service, request()).as_deref(), Some("MISS"));
    }
    run(
        "stacked_by_hand_miss",
        Box::new(move |r| serve(&mut service.clone(), r)),
    );

    let service = Stack::new().gateway().layer(handler("no-store"));
    for _ in 0..2 {
        assert_eq!(prime(&service, request()).as_deref(), Some("MISS"));
    }
    run(
        "gateway_miss",
        Box::new(move |r| serve(&mut service.clone(), r)),
    );

    let service = Stack::new().gateway().layer(handler("max-age=300"));
    assert_eq!(prime(&service, request()).as_deref(), Some("MISS"));
    assert_eq!(prime(&service, request()).as_deref(), Some("HIT"));
    run(
        "gateway_hit",
        Box::new(move |r| serve(&mut service.clone(), r)),
    );
    group.finish();
}

criterion_group!(benches, stack);
criterion_main!(benches);
