//! The auth layer's cost beside a bare service, and the JWT authorizer's cost beside calling
//! `jsonwebtoken::decode` directly, measured in the same run.
//!
//! Each group has a `bare` baseline; a layered variant's overhead is its median minus the
//! baseline's. Every variant of a group builds its requests the same way, inside the timed
//! loop: a fresh `Request<()>` with, where the variant needs one, an `Authorization` header
//! cloned from a value made before timing (a static value, so the clone costs the same for
//! every token). Services are driven directly: `poll_ready`, `call`, then the response
//! future is polled with a no-op waker until it is ready. Every path measured here answers at
//! the first poll except the custom authorizer's boxed future, which also completes at its
//! first poll on a cache hit (moka's future cache does not wait on an uncontended hit); the
//! loop is there so that the custom variant is driven correctly, and is the same code for
//! every variant.
//!
//! - `auth/cached`: a token verified before timing starts, so each request is a cache hit.
//!   `jwt_hs256_cached` and `jwt_rs256_cached` are the JWT authorizer with its default cache;
//!   `custom_cached` is a [`CustomAuthorizer`] reading `Authorization` whose decision (Allow)
//!   is cached by default. The one call that fills each cache runs before timing, inside a
//!   current-thread tokio runtime, since a custom authorizer's call is under
//!   `tokio::time::timeout`.
//! - `auth/uncached`: every request verified afresh. For each of HS256, RS256 (2048-bit) and
//!   ES256, `decode_<alg>` is a bare service whose handler takes the bearer token from the
//!   header and calls `jsonwebtoken::decode` into a `serde_json::Map` with the validation the
//!   authorizer uses (issuer, audience, `exp`/`iss`/`aud` required); `layer_<alg>` is the
//!   bare service behind an [`AuthLayer`] whose JWT authorizer has its cache off
//!   (`cache_ttl(Duration::ZERO)`). The ratio `layer_<alg>` / `decode_<alg>` is the layer's
//!   cost relative to verifying the token at all.
//! - `auth/refused`: the 401 path. `missing_token` sends no `Authorization` header and is
//!   measured beside `bare`, which sends none either; `bad_signature_hs256` and
//!   `bad_signature_rs256` send a token signed with another key and are measured beside
//!   `bare_with_token`, which sends the same header. The JWT authorizer has its default cache.
//!
//! Run with `cargo bench --bench auth` (the `jwt` and `axum` features are on by default).

use std::convert::Infallible;
use std::future::ready;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Empty;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};
use tollgate::auth::jwt::{JwtAuthorizer, JwtProvider, Keys};
use tollgate::auth::{
    Allow, AuthLayer, AuthorizerResponse, BoxError, CustomAuthorizer, IdentitySource,
};
use tower::{Service, ServiceBuilder, ServiceExt};

mod support;
use support::{bare, configure, hello, serve};

const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "orders-api";
const SECRET: &[u8; 32] = b"a secret of at least 32 bytes!!!";
const OTHER_SECRET: &[u8; 32] = b"another secret of 32 bytes, too!";

const RSA_PRIVATE: &[u8] = include_bytes!("../crates/tollgate-auth/tests/keys/rsa-1.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("../crates/tollgate-auth/tests/keys/rsa-1.pub.pem");
const OTHER_RSA_PRIVATE: &[u8] = include_bytes!("../crates/tollgate-auth/tests/keys/rsa-2.pem");
const EC_PRIVATE: &[u8] = include_bytes!("../crates/tollgate-auth/tests/keys/ec-p256.pem");
const EC_PUBLIC: &[u8] = include_bytes!("../crates/tollgate-auth/tests/keys/ec-p256.pub.pem");

/// One signing algorithm: how tokens are signed, and how they are verified both ways.
struct Alg {
    name: &'static str,
    algorithm: Algorithm,
    signing: fn() -> EncodingKey,
    /// The authorizer's keys.
    keys: fn() -> Keys,
    /// The key `decode_<alg>` verifies with.
    decoding: fn() -> DecodingKey,
}

const HS256: Alg = Alg {
    name: "hs256",
    algorithm: Algorithm::HS256,
    signing: || EncodingKey::from_secret(SECRET),
    keys: || Keys::hmac(SECRET),
    decoding: || DecodingKey::from_secret(SECRET),
};

const RS256: Alg = Alg {
    name: "rs256",
    algorithm: Algorithm::RS256,
    signing: || EncodingKey::from_rsa_pem(RSA_PRIVATE).expect("the test RSA key reads"),
    keys: || Keys::rsa_pem(RSA_PUBLIC),
    decoding: || DecodingKey::from_rsa_pem(RSA_PUBLIC).expect("the test RSA key reads"),
};

const ES256: Alg = Alg {
    name: "es256",
    algorithm: Algorithm::ES256,
    signing: || EncodingKey::from_ec_pem(EC_PRIVATE).expect("the test EC key reads"),
    keys: || Keys::ec_pem(EC_PUBLIC),
    decoding: || DecodingKey::from_ec_pem(EC_PUBLIC).expect("the test EC key reads"),
};

impl Alg {
    /// A token the authorizer accepts: issuer, audience, a subject, scopes, a day to live.
    fn token(&self) -> String {
        self.token_signed_with(&(self.signing)())
    }

    fn token_signed_with(&self, key: &EncodingKey) -> String {
        support::token(&Header::new(self.algorithm), key, ISSUER, AUDIENCE)
    }

    /// The JWT authorizer for this algorithm's key, with its cache on (the default) or off.
    fn authorizer(&self, cached: bool) -> JwtAuthorizer {
        let builder = JwtAuthorizer::builder()
            .provider(JwtProvider::new(ISSUER, (self.keys)()).audience(AUDIENCE));
        let builder = if cached {
            builder
        } else {
            builder.cache_ttl(Duration::ZERO)
        };
        builder
            .build()
            .expect("the benchmark's authorizer is valid")
    }

    /// The validation the authorizer's key has: issuer and audience checked, `exp`, `iss`
    /// and `aud` required, only this algorithm (the authorizer also allows the other
    /// algorithm of an RSA or EC key, which costs nothing here). `exp` is checked by
    /// jsonwebtoken here and by the authorizer itself after decoding there.
    fn validation(&self) -> Validation {
        let mut validation = Validation::new(self.algorithm);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation
    }
}

/// `Authorization: Bearer <token>` as a static header value, so that cloning it inside the
/// timed loop costs the same whatever the token.
fn bearer(token: &str) -> HeaderValue {
    let value: &'static str = Box::leak(format!("Bearer {token}").into_boxed_str());
    HeaderValue::from_static(value)
}

/// The request every variant of a group builds inside the timed loop.
#[inline(always)]
fn request(authorization: Option<&HeaderValue>) -> Request<()> {
    let mut request = Request::new(());
    if let Some(value) = authorization {
        request.headers_mut().insert(AUTHORIZATION, value.clone());
    }
    request
}

/// The bare service whose handler verifies the bearer token with `jsonwebtoken::decode`, as
/// an application without the layer would: the work the layer's verification is compared to.
fn decoding(
    alg: &Alg,
) -> impl Service<Request<()>, Response = Response<Empty<Bytes>>, Error = Infallible> + Clone {
    let key = Arc::new((alg.decoding)());
    let validation = Arc::new(alg.validation());
    tower::service_fn(move |req: Request<()>| {
        let token = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .expect("the request carries a bearer token");
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
            .expect("the token verifies")
            .claims;
        black_box(claims);
        ready(Ok::<_, Infallible>(hello(Empty::<Bytes>::new())))
    })
}

/// A custom authorizer that allows everyone, reading `Authorization`, with its decision
/// cache on (the default); `calls` counts how often it is really called.
fn custom_authorizer(calls: Arc<AtomicUsize>) -> CustomAuthorizer {
    CustomAuthorizer::builder([IdentitySource::Header(AUTHORIZATION)])
        .from_fn(move |_identity| {
            calls.fetch_add(1, Ordering::Relaxed);
            async { Ok::<_, BoxError>(AuthorizerResponse::Allow(Allow::new("user-1234"))) }
        })
        .expect("the benchmark's custom authorizer is valid")
}

/// Serves one request inside a current-thread tokio runtime, to fill a cache before timing:
/// a custom authorizer's call needs tokio's timer.
fn prime<S, B>(service: &mut S, authorization: Option<&HeaderValue>, expected: StatusCode)
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime starts");
    let response = runtime.block_on(async {
        let ready = service.ready().await.expect("the service is ready");
        ready
            .call(request(authorization))
            .await
            .expect("the service answers")
    });
    assert_eq!(response.status(), expected);
}

/// Measures `service` under `name`, each request carrying `authorization` (if any).
fn bench<S, B>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    mut service: S,
    authorization: Option<&HeaderValue>,
    expected: StatusCode,
) where
    S: Service<Request<()>, Response = Response<B>>,
{
    // Checked once outside timing, so a wrong setup fails loudly rather than measuring the
    // wrong path; the timed loop checks the status too.
    assert_eq!(
        serve(&mut service, request(authorization)).status(),
        expected,
        "{name}"
    );
    group.bench_function(name, |b| {
        b.iter(|| {
            let response = serve(&mut service, request(black_box(authorization)));
            assert_eq!(response.status(), expected);
            response
        })
    });
}

fn cached(c: &mut Criterion) {
    let hs256 = bearer(&HS256.token());
    let rs256 = bearer(&RS256.token());
    let mut group = c.benchmark_group("auth/cached");
    configure(&mut group);
    bench(&mut group, "bare", bare(), Some(&hs256), StatusCode::OK);

    for (alg, token) in [(&HS256, &hs256), (&RS256, &rs256)] {
        let mut service = ServiceBuilder::new()
            .layer(AuthLayer::new(alg.authorizer(true)))
            .service(bare());
        // Verified once here; every timed request is a cache hit.
        prime(&mut service, Some(token), StatusCode::OK);
        let name = format!("jwt_{}_cached", alg.name);
        bench(&mut group, &name, service, Some(token), StatusCode::OK);
    }

    let calls = Arc::new(AtomicUsize::new(0));
    let mut service = ServiceBuilder::new()
        .layer(AuthLayer::new(custom_authorizer(calls.clone())))
        .service(bare());
    prime(&mut service, Some(&hs256), StatusCode::OK);
    bench(
        &mut group,
        "custom_cached",
        service,
        Some(&hs256),
        StatusCode::OK,
    );
    group.finish();
    // Only the priming call reached the authorizer: every measured request was a hit.
    assert_eq!(
        calls.load(Ordering::Relaxed),
        1,
        "the custom authorizer was called again"
    );
}

fn uncached(c: &mut Criterion) {
    let mut group = c.benchmark_group("auth/uncached");
    configure(&mut group);
    let hs256 = bearer(&HS256.token());
    bench(&mut group, "bare", bare(), Some(&hs256), StatusCode::OK);
    for alg in [&HS256, &RS256, &ES256] {
        let token = bearer(&alg.token());
        bench(
            &mut group,
            &format!("decode_{}", alg.name),
            decoding(alg),
            Some(&token),
            StatusCode::OK,
        );
        let layered = ServiceBuilder::new()
            .layer(AuthLayer::new(alg.authorizer(false)))
            .service(bare());
        bench(
            &mut group,
            &format!("layer_{}", alg.name),
            layered,
            Some(&token),
            StatusCode::OK,
        );
    }
    group.finish();
}

fn refused(c: &mut Criterion) {
    let forged_hs256 = bearer(&HS256.token_signed_with(&EncodingKey::from_secret(OTHER_SECRET)));
    let forged_rs256 = bearer(&RS256.token_signed_with(
        &EncodingKey::from_rsa_pem(OTHER_RSA_PRIVATE).expect("the test RSA key reads"),
    ));
    let mut group = c.benchmark_group("auth/refused");
    configure(&mut group);
    bench(&mut group, "bare", bare(), None, StatusCode::OK);
    let layered = |alg: &Alg| {
        ServiceBuilder::new()
            .layer(AuthLayer::new(alg.authorizer(true)))
            .service(bare())
    };
    bench(
        &mut group,
        "missing_token",
        layered(&HS256),
        None,
        StatusCode::UNAUTHORIZED,
    );
    bench(
        &mut group,
        "bare_with_token",
        bare(),
        Some(&forged_hs256),
        StatusCode::OK,
    );
    bench(
        &mut group,
        "bad_signature_hs256",
        layered(&HS256),
        Some(&forged_hs256),
        StatusCode::UNAUTHORIZED,
    );
    bench(
        &mut group,
        "bad_signature_rs256",
        layered(&RS256),
        Some(&forged_rs256),
        StatusCode::UNAUTHORIZED,
    );
    group.finish();
}

criterion_group!(benches, cached, uncached, refused);
criterion_main!(benches);
