//! What every bench shares: the bare service that is each group's baseline, and how a
//! request is served without a runtime.

// Each bench uses part of this module.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::{ready, Future};
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::BenchmarkGroup;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response};
use http_body_util::Empty;
use tower::Service;

/// A response as a real handler makes one: with a `content-type`, as axum sets for any body.
/// (A header map that is still empty would charge a layer's `RateLimit` fields with the
/// map's first allocation, which every real response has already paid.)
pub fn hello<B>(body: B) -> Response<B> {
    let mut response = Response::new(body);
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The baseline: a service that answers `hello` at once.
pub fn bare(
) -> impl Service<Request<()>, Response = Response<Empty<Bytes>>, Error = Infallible> + Clone {
    tower::service_fn(|_req: Request<()>| ready(Ok::<_, Infallible>(hello(Empty::<Bytes>::new()))))
}

/// Serves one request the way a server would: `poll_ready`, `call`, then polls the response
/// future with a no-op waker until it is ready (at the first poll on every path measured).
#[inline(always)]
pub fn serve<R, S: Service<R>>(service: &mut S, request: R) -> S::Response {
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(service.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    let mut future = pin!(service.call(request));
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(response)) => return response,
            Poll::Ready(Err(_)) => panic!("the service failed"),
            Poll::Pending => std::hint::spin_loop(),
        }
    }
}

/// Sample counts and times that keep a group to a few seconds on a 2-core machine.
pub fn configure(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
}

/// Client `n`'s address: 10.0.0.0 onwards, so a million clients stay distinct.
pub fn peers(count: u32) -> Vec<SocketAddr> {
    (0..count)
        .map(|n| SocketAddr::from((Ipv4Addr::from(0x0a00_0000 + n), 40_000)))
        .collect()
}

/// A request from `peer`, as a hyper server that records the peer passes it on.
pub fn with_peer_addr(peer: SocketAddr) -> Request<()> {
    let mut request = Request::new(());
    request.extensions_mut().insert(tollgate::PeerAddr(peer));
    request
}

/// A JWT the benches' authorizers accept: `issuer`, `audience`, a subject, two scopes, a day
/// to live, signed with `header`'s algorithm and `key`.
pub fn token(
    header: &jsonwebtoken::Header,
    key: &jsonwebtoken::EncodingKey,
    issuer: &str,
    audience: &str,
) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_secs();
    let claims = serde_json::json!({
        "iss": issuer,
        "aud": audience,
        "sub": "user-1234",
        "exp": now + 86_400,
        "iat": now,
        "scope": "orders:read orders:write",
    });
    jsonwebtoken::encode(header, &claims, key).expect("the benchmark's token signs")
}
