//! The JWT authorizer, tested as users run it: an axum app behind the layer on loopback TCP,
//! a real HTTP client, and a JWKS server of its own.

mod attacks;
mod jwks;
mod routes;
#[path = "../support/mod.rs"]
mod support;

pub use support::{serve, Client as Http, Reply};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use http::{HeaderMap, StatusCode};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde_json::{json, Value};
use tollgate_core::Principal;

pub const ISSUER: &str = "https://issuer.test";
pub const AUDIENCE: &str = "orders-api";
pub const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

pub fn key_file(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims a provider configured with [`ISSUER`] and [`AUDIENCE`] accepts for an hour.
pub fn claims() -> Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-42",
        "exp": now() + 3600,
        "iat": now(),
        "scope": "orders:read profile",
    })
}

pub fn encoding_key(alg: Algorithm) -> EncodingKey {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => EncodingKey::from_secret(SECRET),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&key_file("ec-p256.pem")).unwrap(),
        Algorithm::ES384 => EncodingKey::from_ec_pem(&key_file("ec-p384.pem")).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&key_file("ed25519.pem")).unwrap(),
        _ => EncodingKey::from_rsa_pem(&key_file("rsa-1.pem")).unwrap(),
    }
}

pub fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    sign_with(alg, kid, claims, &encoding_key(alg))
}

pub fn sign_with(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// A JWK set holding the public half of `rsa-<n>.pem` under `kid`, for RS256.
pub fn rsa_jwks(keys: &[(&str, &str)]) -> String {
    let keys = keys
        .iter()
        .map(|(file, kid)| {
            let decoding =
                DecodingKey::from_rsa_pem(&key_file(&file.replace(".pem", ".pub.pem"))).unwrap();
            let mut jwk = Jwk::from_decoding_key(&decoding, Some(Algorithm::RS256)).unwrap();
            jwk.common.key_id = Some((*kid).to_owned());
            jwk
        })
        .collect();
    serde_json::to_string(&JwkSet { keys }).unwrap()
}

/// The app behind the layer: `/me` answers the principal as JSON, `/headers` the request
/// headers it received.
pub fn app() -> Router {
    Router::new()
        .route(
            "/me",
            get(|principal: Principal| async move {
                axum::Json(json!({
                    "subject": principal.subject(),
                    "scopes": principal.scopes(),
                }))
            }),
        )
        .route(
            "/optional",
            get(|principal: Option<Principal>| async move {
                principal
                    .and_then(|p| p.subject().map(str::to_owned))
                    .unwrap_or_else(|| "anonymous".into())
            }),
        )
        .route(
            "/headers",
            get(|headers: HeaderMap| async move {
                let user = headers
                    .get_all("x-user-id")
                    .iter()
                    .map(|v| v.to_str().unwrap().to_owned())
                    .collect::<Vec<_>>();
                axum::Json(json!({ "x-user-id": user }))
            }),
        )
}

/// A JWKS endpoint the test controls: what it serves (or 503 while "down") and how often it
/// was asked.
#[derive(Clone, Default)]
pub struct JwksServer {
    body: Arc<Mutex<Option<String>>>,
    hits: Arc<AtomicUsize>,
}

impl JwksServer {
    pub async fn start(body: Option<String>) -> (Self, SocketAddr) {
        let server = Self::default();
        server.serve(body);
        let app = Router::new()
            .route("/jwks", get(Self::jwks))
            .route("/.well-known/openid-configuration", get(Self::discovery))
            .with_state(server.clone());
        (server, serve(app).await)
    }

    pub fn serve(&self, body: Option<String>) {
        *self.body.lock().unwrap() = body;
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    async fn jwks(State(server): State<Self>) -> Result<String, StatusCode> {
        server.hits.fetch_add(1, Ordering::SeqCst);
        let body = server.body.lock().unwrap().clone();
        body.ok_or(StatusCode::SERVICE_UNAVAILABLE)
    }

    async fn discovery(State(_): State<Self>, headers: HeaderMap) -> axum::Json<Value> {
        let host = headers["host"].to_str().unwrap();
        axum::Json(json!({
            "issuer": format!("http://{host}"),
            "jwks_uri": format!("http://{host}/jwks"),
        }))
    }
}

/// Polls until `check` holds, for state that a background task sets (bounded: 5 s).
pub async fn eventually(mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not met within 5 s");
}
