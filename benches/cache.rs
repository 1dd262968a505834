//! The cache layer's cost beside a bare service, measured in the same group.
//!
//! The upstream is a service that answers a 1 KiB JSON body with `content-type`,
//! `cache-control` and `etag`, as a real handler of a cacheable route does; `bare` is that
//! service alone. Each group has its own `bare` baseline; a layered variant's overhead is its
//! median minus the baseline's. Every variant of a group builds its requests the same way
//! inside the timed loop, and every variant reads the response body to its end. Services are
//! driven directly (`poll_ready`, `call`, then the response future polled with a no-op waker
//! until it is ready), as in the other benches: the in-memory store answers at once and no
//! path measured here waits on a timer.
//!
//! - `cache/hit`: the cache is warmed before timing, so every request is a HIT. `cache` is an
//!   anonymous request for `/items`; `cache_per_principal` sends an `Authorization` header,
//!   so the key carries a SHA-256 of it (no verified `Principal`: the cache alone), beside
//!   `bare_with_authorization`, which sends the same header; `cache_304` sends a matching
//!   `If-None-Match` and is answered 304 without a body, beside `bare_with_if_none_match`
//!   (whose upstream answers the whole 200: what a client pays without the cache).
//! - `cache/miss`: every request has a query parameter no earlier request had (a counter),
//!   so each is a miss that goes upstream. `cache_store` stores the response (reading the
//!   body, building the entry, the store's insert, and an eviction: the store is full before
//!   timing starts), in the default 64 MiB store and in a 1 MiB one that stays in the CPU
//!   caches (`cache_store_1mib`); `cache_no_store` has an upstream answering `Cache-Control: no-store`, so
//!   the response is passed on without being stored. `bare` gets the same unique URIs.
//!
//! Run with `cargo bench --bench cache`.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::Full;
use tollgate::cache::{CacheLayer, DEFAULT_MAX_BYTES, X_CACHE_STATUS};
use tower::{Service, ServiceBuilder};

mod support;
use support::{configure, serve};

/// The body every upstream answers: 1 KiB.
static BODY: [u8; 1024] = [b'x'; 1024];

const ETAG_VALUE: &str = "\"v1\"";

/// A bearer token of a realistic length (an RS256 JWT's header and claims are ~200 bytes).
const TOKEN: &str = "Bearer eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImsxIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIiwiYXVkIjoib3JkZXJzLWFwaSIsInN1YiI6InVzZXItNDIiLCJleHAiOjQxMDI0NDQ4MDB9.c2lnbmF0dXJlLW9mLWEtcmVhbGlzdGljLWxlbmd0aC1mb3ItYW4tcnMyNTYtdG9rZW4tLS0tLS0tLS0tLS0tLS0tLS0tLS0tLS0tLS0";

/// The upstream: a 1 KiB body with the headers a cacheable handler sends.
#[derive(Clone, Copy)]
struct Upstream {
    cache_control: &'static str,
}

impl Service<Request<()>> for Upstream {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        let mut response = Response::new(Full::new(Bytes::from_static(&BODY)));
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static(self.cache_control));
        headers.insert(ETAG, HeaderValue::from_static(ETAG_VALUE));
        ready(Ok(response))
    }
}

fn storable() -> Upstream {
    Upstream {
        cache_control: "public, max-age=300",
    }
}

/// A cache layer with the defaults (64 MiB store, TTL 300 s, per-principal keys).
fn cache_layer() -> CacheLayer {
    cache_layer_of(DEFAULT_MAX_BYTES)
}

/// A cache layer with the defaults but a store of `max_bytes`.
fn cache_layer_of(max_bytes: u64) -> CacheLayer {
    CacheLayer::builder()
        .max_bytes(max_bytes)
        .build()
        .expect("the benchmark's cache layer is valid")
}

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

/// What the cache did with `request`, its body read.
fn cache_status<S, B>(service: &mut S, request: Request<()>) -> String
where
    S: Service<Request<()>, Response = Response<B>>,
    B: Body<Data = Bytes>,
{
    let response = serve(service, request);
    let status = response
        .headers()
        .get(X_CACHE_STATUS)
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    read_to_end(response.into_body());
    status
}

/// Measures `service` on `request(n)` for n = 1, 2, …, each response's body read to the end.
fn bench<S, B>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    mut service: S,
    request: impl Fn(u64) -> Request<()>,
    expected: (StatusCode, usize),
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
            assert_eq!((status, len), expected, "{name} request {n}");
            len
        })
    });
}

fn hit(c: &mut Criterion) {
    let uri = Uri::from_static("/items");
    let plain = |_: u64| {
        let mut request = Request::new(());
        *request.uri_mut() = uri.clone();
        request
    };
    let authorized = |n: u64| {
        let mut request = plain(n);
        let token = HeaderValue::from_static(TOKEN);
        request.headers_mut().insert(AUTHORIZATION, token);
        request
    };
    let conditional = |n: u64| {
        let mut request = plain(n);
        let etag = HeaderValue::from_static(ETAG_VALUE);
        request.headers_mut().insert(IF_NONE_MATCH, etag);
        request
    };
    let whole = (StatusCode::OK, BODY.len());

    let mut group = c.benchmark_group("cache/hit");
    configure(&mut group);

    bench(&mut group, "bare", storable(), plain, whole);
    let mut cache = ServiceBuilder::new()
        .layer(cache_layer())
        .service(storable());
    assert_eq!(cache_status(&mut cache, plain(0)), "MISS");
    assert_eq!(cache_status(&mut cache, plain(0)), "HIT");
    bench(&mut group, "cache", cache, plain, whole);

    bench(
        &mut group,
        "bare_with_authorization",
        storable(),
        authorized,
        whole,
    );
    let mut cache = ServiceBuilder::new()
        .layer(cache_layer())
        .service(storable());
    assert_eq!(cache_status(&mut cache, authorized(0)), "MISS");
    assert_eq!(cache_status(&mut cache, authorized(0)), "HIT");
    // The anonymous entry is not this caller's.
    assert_eq!(cache_status(&mut cache, plain(0)), "MISS");
    bench(&mut group, "cache_per_principal", cache, authorized, whole);

    bench(
        &mut group,
        "bare_with_if_none_match",
        storable(),
        conditional,
        whole,
    );
    let mut cache = ServiceBuilder::new()
        .layer(cache_layer())
        .service(storable());
    assert_eq!(cache_status(&mut cache, plain(0)), "MISS");
    assert_eq!(cache_status(&mut cache, conditional(0)), "HIT");
    bench(
        &mut group,
        "cache_304",
        cache,
        conditional,
        (StatusCode::NOT_MODIFIED, 0),
    );
    group.finish();
}

fn miss(c: &mut Criterion) {
    // A URI no earlier request had: the cache key includes the query.
    let unique = |n: u64| {
        let mut request = Request::new(());
        *request.uri_mut() = Uri::try_from(format!("/items?n={n}")).expect("a valid URI");
        request
    };
    let whole = (StatusCode::OK, BODY.len());

    let mut group = c.benchmark_group("cache/miss");
    configure(&mut group);

    bench(&mut group, "bare", storable(), unique, whole);

    // Every request stores a ~1.4 KB entry. The store is bounded, so it is filled before
    // timing, with URIs the timed loop never sends, and every measured miss also pays for an
    // eviction. At 64 MiB (the default, about 45,000 such entries) the store's tables and the
    // evicted entries are cold in the CPU caches; at 1 MiB (about 700 entries) they are warm,
    // which isolates the layer's own work from the memory it touches.
    for (name, max_bytes) in [
        ("cache_store", DEFAULT_MAX_BYTES),
        ("cache_store_1mib", 1024 * 1024),
    ] {
        let layer = cache_layer_of(max_bytes);
        let mut cache = ServiceBuilder::new()
            .layer(layer.clone())
            .service(storable());
        assert_eq!(cache_status(&mut cache, unique(0)), "MISS");
        assert_eq!(cache_status(&mut cache, unique(0)), "HIT");
        let fill = max_bytes / BODY.len() as u64;
        for n in 0..fill {
            black_box(read_to_end(
                serve(&mut cache, unique(u64::MAX - n)).into_body(),
            ));
        }
        bench(&mut group, name, cache, unique, whole);
        layer.store().settle();
        println!(
            "cache/miss/{name}: the store holds {} entries, {} bytes",
            layer.store().entries(),
            layer.store().bytes()
        );
    }

    let mut cache = ServiceBuilder::new()
        .layer(cache_layer())
        .service(Upstream {
            cache_control: "no-store",
        });
    assert_eq!(cache_status(&mut cache, unique(0)), "MISS");
    assert_eq!(cache_status(&mut cache, unique(0)), "MISS");
    bench(&mut group, "cache_no_store", cache, unique, whole);
    group.finish();
}

criterion_group!(benches, hit, miss);
criterion_main!(benches);
