//! The servers `scripts/load` puts under load: one hello handler, bare and behind tollgate,
//! each on a loopback port of its own so a load generator measures them side by side.
//!
//! ```sh
//! cargo run --release --example loadtarget -- \
//!     --bare 127.0.0.1:18080 --gateway 127.0.0.1:18081 \
//!     --gateway-hit 127.0.0.1:18082 --cache-hit 127.0.0.1:18083
//! ```
//!
//! Each listener is optional; its address comes from the flag or else from the environment
//! (`LOADTARGET_BARE`, `LOADTARGET_GATEWAY`, `LOADTARGET_GATEWAY_HIT`,
//! `LOADTARGET_CACHE_HIT`). Every server is axum's own (`axum::serve`, HTTP/1.1, `TCP_NODELAY`,
//! with connect info for the throttle's peer IP), on one tokio runtime whose worker count is
//! the cores the process may run on (`taskset -c 0` gives one).
//!
//! The handler answers `Hello, World!` (`text/plain`, as axum sets) with a `Cache-Control`:
//! `no-store` on `/hello`, `max-age=300` on `/cached`.
//!
//! - `bare`: the handler alone, `/hello` and `/cached` (nginx proxies to it as well).
//! - `gateway`: `/hello` behind `tollgate::Gateway` with, outermost first: a throttle (one rule
//!   per peer IP, 10⁹/s, burst 10⁶), a JWT authorizer (HS256, issuer and audience checked;
//!   after the first request each request is a hit of its verified-token cache), an API key
//!   on a usage plan (throttle 10⁹/s with a burst of 10⁹, quota `u32::MAX` a day) and the
//!   response cache (the defaults: per-principal keys, 64 MiB). No step ever refuses. Every
//!   request is a cache MISS: its key is built (the JWT's subject), looked up, the request
//!   leads the key's flight to the handler, and the `no-store` response is passed on
//!   unstored (`X-Cache-Status: MISS`). A disabled route would be a BYPASS instead, which
//!   builds no key.
//! - `gateway-hit`: `/cached` behind a second gateway, the same steps: each request is
//!   throttled, authorized and counted against the key's quota, then answered by the cache
//!   (`HIT`) without reaching the handler.
//! - `cache-hit`: `/cached` behind the cache layer alone (the defaults), answered as a `HIT`.
//!
//! At start-up it prints `authorization Bearer <token>` (a JWT valid for a day) and
//! `api-key <key>`, which the load generator sends with every request to every target, then a
//! `listening <target> <address>` line per listener and `ready`.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::header::CACHE_CONTROL;
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use jsonwebtoken::{EncodingKey, Header};
use tollgate::auth::jwt::{JwtAuthorizer, JwtProvider, Keys};
use tollgate::auth::AuthLayer;
use tollgate::cache::CacheLayer;
use tollgate::key::PeerIp;
use tollgate::throttle::{Rate, Rule, ThrottleLayer};
use tollgate::usage::{ApiKey, KeyHash, QuotaPeriod, UsagePlan, UsagePlans};
use tollgate::Gateway;

const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "loadtarget";
const SECRET: &[u8; 32] = b"a secret of at least 32 bytes!!!";
/// The API key's plaintext: key id `k0000000`.
const API_KEY: &str = "tg_k0000000_Q8vJ2xLm4Rt7Wp9Zc3Nh6Ysd";

type Error = Box<dyn std::error::Error + Send + Sync>;

async fn hello() -> ([(axum::http::HeaderName, &'static str); 1], &'static str) {
    ([(CACHE_CONTROL, "no-store")], "Hello, World!")
}

async fn cached() -> ([(axum::http::HeaderName, &'static str); 1], &'static str) {
    ([(CACHE_CONTROL, "max-age=300")], "Hello, World!")
}

/// A token the authorizer accepts, valid for a day.
fn token() -> Result<String, Error> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = serde_json::json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "load-user",
        "scope": "hello:read",
        "iat": now,
        "exp": now + 86_400,
    });
    Ok(jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )?)
}

/// Throttle, JWT authorizer, usage plan and cache, none of which ever refuses.
fn gateway() -> Result<Gateway, Error> {
    let throttle = ThrottleLayer::builder()
        .rule(Rule::new("per-client", Rate::per_second(1_000_000_000), PeerIp).burst(1_000_000))
        .build()?;
    let authorizer = JwtAuthorizer::builder()
        .provider(JwtProvider::new(ISSUER, Keys::hmac(SECRET)).audience(AUDIENCE))
        .build()?;
    let key = ApiKey::new(
        "k0000000",
        "load",
        KeyHash::of(API_KEY.as_bytes()),
        SystemTime::now(),
    )?;
    let plans = UsagePlans::builder()
        .plan(
            UsagePlan::new("load")
                .throttle(Rate::per_second(1_000_000_000), 1_000_000_000)
                .quota(u32::MAX, QuotaPeriod::Day),
        )
        .key(key)
        .build()?;
    Ok(Gateway::builder()
        .throttle(throttle)
        .authorizer(AuthLayer::new(authorizer))
        .usage(plans.layer())
        .cache(CacheLayer::builder().build()?)
        .build())
}

/// The listener's address for `flag`: the argument after it, else `variable`.
fn address(args: &[String], flag: &str, variable: &str) -> Result<Option<SocketAddr>, Error> {
    let value = match args.iter().position(|arg| arg == flag) {
        Some(at) => Some(
            args.get(at + 1)
                .cloned()
                .ok_or_else(|| format!("{flag} needs an address"))?,
        ),
        None => std::env::var(variable).ok(),
    };
    match value {
        Some(value) => Ok(Some(value.parse().map_err(|_| {
            format!("{flag}: expected an address like 127.0.0.1:18080, got {value:?}")
        })?)),
        None => Ok(None),
    }
}

async fn serve(name: &'static str, addr: SocketAddr, app: Router) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|error| format!("{name}: cannot listen on {addr}: {error}"))?
        .tap_io(|tcp| {
            // As nginx's default `tcp_nodelay on`.
            let _ = tcp.set_nodelay(true);
        });
    println!("listening {name} {addr}");
    tokio::spawn(async move {
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(error) = axum::serve(listener, app).await {
            eprintln!("{name}: {error}");
        }
    });
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let listeners = [
        ("bare", "--bare", "LOADTARGET_BARE"),
        ("gateway", "--gateway", "LOADTARGET_GATEWAY"),
        ("gateway-hit", "--gateway-hit", "LOADTARGET_GATEWAY_HIT"),
        ("cache-hit", "--cache-hit", "LOADTARGET_CACHE_HIT"),
    ];
    println!("authorization Bearer {}", token()?);
    println!("api-key {API_KEY}");
    let mut serving = 0;
    for (name, flag, variable) in listeners {
        let Some(addr) = address(&args, flag, variable)? else {
            continue;
        };
        let app = match name {
            "bare" => Router::new()
                .route("/hello", get(hello))
                .route("/cached", get(cached)),
            "gateway" => Router::new().route("/hello", get(hello)).layer(gateway()?),
            "gateway-hit" => Router::new()
                .route("/cached", get(cached))
                .layer(gateway()?),
            _ => Router::new()
                .route("/cached", get(cached))
                .layer(CacheLayer::builder().build()?),
        };
        serve(name, addr, app).await?;
        serving += 1;
    }
    if serving == 0 {
        return Err(
            "no listener: pass --bare, --gateway, --gateway-hit or --cache-hit ADDR".into(),
        );
    }
    println!("ready");
    tokio::signal::ctrl_c().await?;
    Ok(())
}
