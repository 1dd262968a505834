//! The README's first command: a gateway on 127.0.0.1:3000 with in-memory defaults.
//!
//! ```sh
//! cargo run --example quickstart
//! ```
//!
//! `GET /hello` is throttled per client IP at 5 requests per second with a burst of 5, so the
//! sixth immediate request gets a 429 problem+json with `Retry-After` and `RateLimit` fields.
//!
//! `GET /me` also needs a bearer token from the quickstart's own HS256 identity provider; a
//! demo token valid for one hour is printed at start-up, and the handler answers the verified
//! `Principal` as JSON.
//!
//! `GET /api/widgets` needs an API key in `x-api-key`, on one of two usage plans: `basic` (2
//! requests/s, burst 2, 20 a day) and `pro` (50/s, burst 20, 10,000 a day). One demo key per
//! plan is made and printed at start-up; responses carry `RateLimit-Policy` and `RateLimit`
//! for the plan's throttle and quota.
//!
//! `GET /api/slow` takes 200 ms and answers when it ran; the cache layer keeps its response for
//! 30 s, so a repeat within that time is answered at once from memory (`X-Cache-Status: HIT`,
//! the same body, an `Age`). The cache wraps only that route: the others are not cached.
//!
//! Set `TOLLGATE_ADDR` to listen elsewhere.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::routing::get;
use axum::{Json, Router};
use tollgate::auth::jwt::{JwtAuthorizer, JwtProvider, Keys};
use tollgate::auth::AuthLayer;
use tollgate::cache::{CacheLayer, CachePolicy};
use tollgate::key::ClientIp;
use tollgate::throttle::{Rate, Rule, ThrottleLayer};
use tollgate::usage::{NewKey, QuotaPeriod, UsagePlan, UsagePlans};
use tollgate::{Principal, TrustedProxies};

const ISSUER: &str = "tollgate-quickstart";
const AUDIENCE: &str = "quickstart";

/// The caller, as the authorizer verified it.
async fn me(principal: Principal) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "subject": principal.subject(),
        "scopes": principal.scopes(),
        "claims": principal.claims(),
    }))
}

/// Widgets, for the holder of an API key: the key id and plan come from the usage layer.
async fn widgets(principal: Principal) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "widgets": ["sprocket", "flange", "grommet"],
        "api_key_id": principal.api_key_id(),
        "plan": principal.usage_plan_id(),
    }))
}

/// A slow upstream: 200 ms of work, stamped with when it ran.
async fn slow() -> Json<serde_json::Value> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ran = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Json(serde_json::json!({ "generated_at_unix_ms": ran.as_millis() as u64 }))
}

/// A fresh HMAC secret and a token signed with it, valid for an hour.
fn demo_identity_provider() -> Result<(Vec<u8>, String), Box<dyn std::error::Error>> {
    let mut secret = vec![0; 32];
    aws_lc_rs::rand::fill(&mut secret).map_err(|_| "no system randomness for the demo secret")?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = serde_json::json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "demo-user",
        "scope": "profile orders:read",
        "iat": now,
        "exp": now + 3600,
    });
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&secret),
    )?;
    Ok((secret, token))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let addr: SocketAddr = std::env::var("TOLLGATE_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:3000".into())
        .parse()
        .map_err(|e| format!("TOLLGATE_ADDR must be host:port, such as 127.0.0.1:3000 ({e})"))?;

    // No proxy in front of the quickstart, so the connection's peer is the client.
    let per_client = Rule::new(
        "per-client",
        Rate::per_second(5),
        ClientIp::new(TrustedProxies::none()),
    )
    .burst(5);
    // keep_inner_body: refusals are built as axum's own Body, so responses pass through as is.
    let throttle = ThrottleLayer::builder()
        .rule(per_client)
        .build()?
        .keep_inner_body();

    let (secret, token) = demo_identity_provider()?;
    let jwt = JwtAuthorizer::builder()
        .provider(JwtProvider::new(ISSUER, Keys::hmac(&secret)).audience(AUDIENCE))
        .build()?;
    let auth = AuthLayer::builder(jwt).keep_inner_body().build()?;

    let plans = UsagePlans::builder()
        .plan(
            UsagePlan::new("basic")
                .throttle(Rate::per_second(2), 2)
                .quota(20, QuotaPeriod::Day),
        )
        .plan(
            UsagePlan::new("pro")
                .throttle(Rate::per_second(50), 20)
                .quota(10_000, QuotaPeriod::Day),
        )
        .build()?;
    let (_, basic_key) = plans
        .create_key(NewKey::new("basic").name("demo basic"))
        .await?;
    let (_, pro_key) = plans
        .create_key(NewKey::new("pro").name("demo pro"))
        .await?;

    let api = Router::new()
        .route("/api/widgets", get(widgets))
        .route_layer(plans.layer().keep_inner_body());
    // The handler sends no freshness of its own, so the policy's TTL applies. Anonymous callers
    // share the entry; a request with credentials would get its own (the default sharing).
    let cache = CacheLayer::builder()
        .policy(CachePolicy::new().ttl(Duration::from_secs(30)))
        .build()?;
    // route_layer: only the matched route is cached, and other paths' 404s pass by untouched.
    let slow = Router::new()
        .route("/api/slow", get(slow))
        .route_layer(cache);

    let app = Router::new()
        .route("/hello", get(|| async { "Hello from behind tollgate!\n" }))
        .route("/me", get(me).route_layer(auth))
        .layer(throttle)
        .merge(api)
        .merge(slow);

    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    println!("tollgate quickstart listening on http://{addr}");
    println!();
    println!("Try:");
    println!("  curl -i http://{addr}/hello");
    println!("      200, with RateLimit: \"per-client\";r=4;t=1 (4 more now, whole again in 1 s)");
    println!("  for i in $(seq 1 6); do curl -s -o /dev/null -w '%{{http_code}}\\n' http://{addr}/hello; done");
    println!("      200s until the burst of 5 is spent, then 429");
    println!("  curl -i http://{addr}/hello   (right after)");
    println!("      429 application/problem+json with Retry-After: 1");
    println!("  curl -i http://{addr}/me -H 'Authorization: Bearer {token}'");
    println!("      200, the verified principal as JSON (the token is valid for one hour)");
    println!("  curl -i http://{addr}/me");
    println!("      401 with WWW-Authenticate: Bearer");
    println!(
        "  curl -i http://{addr}/api/widgets -H 'x-api-key: {}'",
        basic_key.expose()
    );
    println!(
        "      200 on plan basic, with RateLimit-Policy: \"basic\";q=2;w=1, \"quota\";q=20;w=86400"
    );
    println!("      and RateLimit: \"basic\";r=1;t=1, \"quota\";r=19;t=<seconds to UTC midnight>");
    println!("      a third request within the second: 429 throttled; the 21st of the day: 429 quota-exceeded");
    println!(
        "  curl -i http://{addr}/api/widgets -H 'x-api-key: {}'",
        pro_key.expose()
    );
    println!("      200 on plan pro (50/s, burst 20, 10,000 a day)");
    println!("  curl -i http://{addr}/api/widgets");
    println!("      401 with WWW-Authenticate: ApiKey");
    println!("  curl -i http://{addr}/api/slow; curl -i http://{addr}/api/slow");
    println!("      the first takes 200 ms (X-Cache-Status: MISS); the second is instant, from the cache");
    println!("      (X-Cache-Status: HIT, the same generated_at_unix_ms) for the next 30 s");
    println!(
        "      time them: curl -s -o /dev/null -w '%{{time_total}}\\n' http://{addr}/api/slow"
    );
    println!();
    println!("Press Ctrl-C to stop.");

    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
