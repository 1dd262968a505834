//! The JWT authorizer on hostile credentials, through its public layer: token extraction from
//! `Authorization` (several lines, any scheme), a token header, a cookie and the query; then
//! the token's header (`alg`, `kid`, key selection), its issuer (which provider verifies it)
//! and, for tokens signed with a known secret, its claims (times, scopes, claim headers).
//!
//! The layer must answer every request with 200, 401, 403 or 503, and never panic.
#![no_main]

use std::convert::Infallible;
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use arbitrary::Arbitrary;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use tollgate::auth::jwt::{JwtAuthorizer, JwtProvider, Keys, TokenSource};
use tollgate::auth::{AuthLayer, RoutePolicy};
use tollgate::core::ManualClock;
use tower::{service_fn, Layer, ServiceExt};

const SECRET_A: &[u8] = b"kid-a-secret-0123456789abcdef-0123";
const SECRET_B: &[u8] = b"kid-b-secret-0123456789abcdef-0123";
const SECRET_C: &[u8] = b"provider-c-secret-0123456789abcdef";
const NOW: u64 = 1_700_000_000;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    /// Each element is one `Authorization` line.
    authorization: Vec<&'a [u8]>,
    id_token: Option<&'a [u8]>,
    cookie: Option<&'a [u8]>,
    query: Option<&'a str>,
    path: Path,
    token: Option<Token<'a>>,
}

#[derive(Arbitrary, Debug)]
enum Path {
    Orders,
    Admin,
    Public,
}

/// A token assembled from its parts, so the fuzzer works on the JSON inside, not on base64.
#[derive(Arbitrary, Debug)]
struct Token<'a> {
    scheme: &'a [u8],
    header: &'a [u8],
    claims: &'a [u8],
    signature: Signature<'a>,
}

#[derive(Arbitrary, Debug)]
enum Signature<'a> {
    Raw(&'a [u8]),
    /// HS256 with a secret the authorizers know, so the claims are read.
    Signed(Secret),
}

#[derive(Arbitrary, Debug)]
enum Secret {
    A,
    B,
    C,
}

type Boxed = tower::util::BoxCloneSyncService<Request<Full<Bytes>>, StatusCode, Infallible>;

/// One provider (no issuer lookup) and two (the issuer picks one).
struct Fixture {
    layers: Vec<Boxed>,
}

fn jwks() -> String {
    let key = |kid: &str, secret: &[u8]| serde_json::json!({"kty": "oct", "kid": kid, "alg": "HS256", "k": URL_SAFE_NO_PAD.encode(secret)});
    serde_json::json!({"keys": [key("a", SECRET_A), key("b", SECRET_B)]}).to_string()
}

fn service(authorizer: JwtAuthorizer) -> Boxed {
    let layer = AuthLayer::builder(authorizer)
        .route(
            "GET /admin",
            RoutePolicy::authenticated().all_scopes(["admin", "write"]),
        )
        .route("GET /public", RoutePolicy::anonymous())
        .default_policy(RoutePolicy::authenticated().any_scope(["read"]))
        .claim_header("sub", "x-subject")
        .claim_header("tenant", "x-tenant")
        .build()
        .expect("a valid auth layer");
    let inner = service_fn(|_: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    });
    let service = layer.layer(inner);
    tower::util::BoxCloneSyncService::new(
        service.map_response(|response: Response<_>| response.status()),
    )
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let clock = ManualClock::starting_at(UNIX_EPOCH + Duration::from_secs(NOW));
        let a = || {
            JwtProvider::new("https://a.test", Keys::jwk_set(jwks()))
                .audience("orders")
                .max_age(Duration::from_secs(3600))
        };
        let c = JwtProvider::new("https://c.test", Keys::hmac(SECRET_C))
            .any_audience()
            .require_claim("tenant");
        let sources = [
            TokenSource::Bearer,
            TokenSource::Header(HeaderName::from_static("x-id-token")),
            TokenSource::Cookie("session".into()),
            TokenSource::Query("access_token".into()),
        ];
        let layers = tollgate_fuzz::runtime().block_on(async {
            let single = JwtAuthorizer::builder()
                .provider(a())
                .token_sources(sources.clone())
                .clock(clock.clone())
                .build()
                .expect("a single-provider authorizer");
            let multi = JwtAuthorizer::builder()
                .provider(a())
                .provider(c)
                .token_sources(sources)
                .cache_ttl(Duration::ZERO)
                .clock(clock)
                .build()
                .expect("a two-provider authorizer");
            vec![service(single), service(multi)]
        });
        Fixture { layers }
    })
}

fn assemble(token: &Token<'_>) -> Vec<u8> {
    let mut signed = URL_SAFE_NO_PAD.encode(token.header);
    signed.push('.');
    signed.push_str(&URL_SAFE_NO_PAD.encode(token.claims));
    let signature = match &token.signature {
        Signature::Raw(raw) => URL_SAFE_NO_PAD.encode(raw),
        Signature::Signed(secret) => {
            let secret = match secret {
                Secret::A => SECRET_A,
                Secret::B => SECRET_B,
                Secret::C => SECRET_C,
            };
            jsonwebtoken::crypto::sign(
                signed.as_bytes(),
                &EncodingKey::from_secret(secret),
                Algorithm::HS256,
            )
            .expect("HMAC signing")
        }
    };
    let mut value = token.scheme.to_vec();
    value.extend_from_slice(signed.as_bytes());
    value.push(b'.');
    value.extend_from_slice(signature.as_bytes());
    value
}

fn request(input: &Input<'_>) -> Option<Request<Full<Bytes>>> {
    let path = match input.path {
        Path::Orders => "/orders",
        Path::Admin => "/admin",
        Path::Public => "/public",
    };
    let uri = match input.query {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let mut request = Request::builder()
        .uri(uri)
        .body(Full::new(Bytes::new()))
        .ok()?;
    let headers = request.headers_mut();
    for line in &input.authorization {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append(AUTHORIZATION, value);
        }
    }
    if let Some(token) = &input.token {
        if let Ok(value) = HeaderValue::from_bytes(&assemble(token)) {
            headers.append(AUTHORIZATION, value);
        }
    }
    if let Some(Ok(value)) = input.id_token.map(HeaderValue::from_bytes) {
        headers.insert("x-id-token", value);
    }
    if let Some(Ok(value)) = input.cookie.map(HeaderValue::from_bytes) {
        headers.insert(COOKIE, value);
    }
    Some(request)
}

fuzz_target!(|input: Input<'_>| {
    let fixture = fixture();
    let Some(request) = request(&input) else {
        return;
    };
    for service in &fixture.layers {
        let Some(request) = clone(&request) else {
            return;
        };
        let status = tollgate_fuzz::runtime()
            .block_on(service.clone().oneshot(request))
            .unwrap_or_else(|never| match never {});
        assert!(
            matches!(status.as_u16(), 200 | 401 | 403 | 503),
            "unexpected status {status}"
        );
    }
});

fn clone(request: &Request<Full<Bytes>>) -> Option<Request<Full<Bytes>>> {
    let mut copy = Request::builder()
        .method(request.method())
        .uri(request.uri())
        .body(Full::new(Bytes::new()))
        .ok()?;
    *copy.headers_mut() = request.headers().clone();
    Some(copy)
}
