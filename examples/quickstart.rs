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
//! `GET /v1/orders` and `GET /v2/orders` are two stages of an orders API, each its own axum
//! `Router`, behind a stage router that selects them by base path and strips it. `v1` is
//! deprecated, with a sunset six months after start-up and `/v2` as its successor, so its
//! responses carry `Deprecation`, `Sunset` and `Link`. `v2` has a canary, `v2-canary`, that 10 %
//! of client IPs are sent to, always the same ones; the quickstart turns on the `X-Canary`
//! override header (off by default), so `X-Canary: always` (or `never`) forces a side. Every
//! stage response names its deployment in `X-Deployment`, and the handler answers its stage,
//! deployment and `orders_table` stage variable as JSON.
//!
//! `GET /api/dashboard` is one call for two in-process backends, answered as one JSON object:
//! a profile (a `Mock` integration, unwrapped from its `data` envelope) and the recent orders
//! (an axum `Router`, its bare array put under `orders`). The orders are optional, with a
//! 300 ms timeout, and every third call they take 1 s: that answer comes after 300 ms with the
//! profile alone, `X-Tollgate-Completed: false` and an `errors` object saying why.
//!
//! `GET /openapi.json` is the OpenAPI 3.1 document of all of the above, for client SDK
//! generators: the bearer and API key schemes, the stages `v1` and `v2` as servers of
//! `/orders`, and the problem+json refusals (401, 403, 429) each route can answer.
//!
//! Set `TOLLGATE_ADDR` to listen elsewhere.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderName, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use tollgate::aggregate::{Aggregate, AggregateError, Backend, Mock};
use tollgate::auth::jwt::{JwtAuthorizer, JwtProvider, Keys};
use tollgate::auth::AuthLayer;
use tollgate::cache::{CacheLayer, CachePolicy};
use tollgate::core::InnerBody;
use tollgate::key::ClientIp;
use tollgate::openapi::{OpenApi, OpenApiError, Operation};
use tollgate::stage::{Canary, StageError, StageRouter, StageSpec, DEFAULT_OVERRIDE_HEADER};
use tollgate::throttle::{Rate, Rule, ThrottleLayer};
use tollgate::usage::{NewKey, QuotaPeriod, UsagePlan, UsagePlans};
use tollgate::{Principal, Stage, TrustedProxies};

const ISSUER: &str = "tollgate-quickstart";
const AUDIENCE: &str = "quickstart";

/// How long after start-up stage `v1` is retired.
const V1_SUNSET_AFTER: Duration = Duration::from_secs(180 * 24 * 60 * 60);

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

/// Orders, from whichever stage and deployment the stage router chose.
async fn orders(stage: Stage) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "stage": stage.name(),
        "deployment": stage.deployment(),
        "orders_table": stage.variable("orders_table"),
        "orders": [{ "id": 1, "total": "12.50" }, { "id": 2, "total": "7.00" }],
    }))
}

/// Stage `v1` under `/v1`, deprecated and retiring, and stage `v2` under `/v2` with a 10 %
/// canary that `X-Canary` can force; each deployment its own axum `Router`.
fn stages() -> Result<StageRouter<Router, InnerBody>, StageError> {
    let deployment = || Router::new().route("/orders", get(orders));
    let now = SystemTime::now();
    let v1 = StageSpec::new("v1", deployment())
        .base_path("/v1")
        .variable("orders_table", "orders_v1")
        .deprecated_at(now)
        .sunset_at(now + V1_SUNSET_AFTER)
        .successor("/v2");
    let v2 = StageSpec::new("v2", deployment())
        .base_path("/v2")
        .variable("orders_table", "orders_v2")
        .canary(
            Canary::new(deployment())
                .deployment("v2-canary")
                .percent(10.0)
                .variable("orders_table", "orders_v2_next"),
        );
    Ok(StageRouter::builder()
        .stage(v1)
        .stage(v2)
        // The same client IP always lands on the same side of the canary.
        .sticky_by(ClientIp::new(TrustedProxies::none()))
        // For the demo anyone may force a side; a real gateway adds `.override_scope(..)`, with
        // the authorizer around the stage router, so only testers can.
        .override_header(Some(HeaderName::from_static(DEFAULT_OVERRIDE_HEADER)))
        .build()?
        .keep_inner_body())
}

/// Calls of the orders backend so far, so every third can be slow.
static ORDERS_CALLS: AtomicU64 = AtomicU64::new(0);

/// The dashboard's orders backend: a bare array, and every third call takes 1 s.
async fn recent_orders() -> Json<serde_json::Value> {
    if ORDERS_CALLS.fetch_add(1, Ordering::Relaxed) % 3 == 2 {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Json(serde_json::json!([
        { "id": 1, "total": "12.50", "status": "shipped" },
        { "id": 2, "total": "7.00", "status": "processing" },
    ]))
}

/// `GET /api/dashboard`: the profile (required) and the orders (optional, 300 ms at most),
/// called at once and merged into one object.
fn dashboard() -> Result<Aggregate, AggregateError> {
    let profile = Mock::json(
        StatusCode::OK,
        &serde_json::json!({
            "data": { "id": "demo-user", "name": "Ada Lovelace", "plan": "pro" },
            "meta": { "source": "profile-service" },
        }),
    );
    let orders = Router::new().route("/orders", get(recent_orders));
    Aggregate::builder()
        .name("dashboard")
        .backend(Backend::service("profile", profile).target("data"))
        .backend(
            Backend::service("orders", orders)
                .path("/orders")
                .collection("orders")
                .optional()
                .timeout(Duration::from_millis(300)),
        )
        .errors_field("errors")
        .build()
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

/// The OpenAPI 3.1 document of the quickstart's routes, for the quickstart listening on
/// `addr`: `/orders` is on the stages' servers, the other routes on the plain one.
pub fn openapi(addr: SocketAddr) -> Result<serde_json::Value, OpenApiError> {
    let string = || serde_json::json!({ "type": "string" });
    let order = serde_json::json!({
        "type": "object",
        "properties": { "id": { "type": "integer" }, "total": { "type": "string" } },
    });
    OpenApi::new("tollgate quickstart", env!("CARGO_PKG_VERSION"))
        .description("The routes of `cargo run --example quickstart`, behind tollgate's layers.")
        .server(format!("http://{addr}"), "the quickstart")
        .stage("v1", format!("http://{addr}/v1"))
        .stage("v2", format!("http://{addr}/v2"))
        .bearer_jwt()
        .api_key_header("x-api-key")
        .route(
            "GET /hello",
            Operation::new()
                .summary("A greeting, throttled per client IP (5/s, burst 5)")
                .tag("demo")
                .throttled()
                .response(200, "A line of text (text/plain)", None),
        )
        .route(
            "GET /me",
            Operation::new()
                .summary("The caller, as the authorizer verified its bearer token")
                .tag("demo")
                .bearer(Vec::<String>::new())
                .throttled()
                .response(
                    200,
                    "The verified principal",
                    Some(serde_json::json!({
                        "type": "object",
                        "properties": {
                            "subject": string(),
                            "scopes": { "type": "array", "items": string() },
                            "claims": { "type": "object" },
                        },
                    })),
                ),
        )
        .route(
            "GET /api/widgets",
            Operation::new()
                .summary("Widgets, for an API key on plan basic or pro")
                .tag("api")
                .api_key()
                .response(
                    200,
                    "The widgets, and the key and plan that called",
                    Some(serde_json::json!({
                        "type": "object",
                        "properties": {
                            "widgets": { "type": "array", "items": string() },
                            "api_key_id": string(),
                            "plan": string(),
                        },
                    })),
                ),
        )
        .route(
            "GET /api/slow",
            Operation::new()
                .summary("A slow answer (200 ms), cached for 30 s")
                .tag("api")
                .cached()
                .response(
                    200,
                    "When the answer was made",
                    Some(serde_json::json!({
                        "type": "object",
                        "properties": { "generated_at_unix_ms": { "type": "integer" } },
                    })),
                ),
        )
        .route(
            "GET /orders",
            Operation::new()
                .summary("Orders, from stage v1 (deprecated) or v2 (with a 10 % canary)")
                .description(
                    "`X-Deployment` names the deployment that answered. Stage v1 sends \
                     `Deprecation`, `Sunset` and `Link` to v2, and answers 410 after its sunset. \
                     On v2, `X-Canary: always` or `never` forces a side of the canary.",
                )
                .tag("orders")
                .stages(["v1", "v2"])
                .header("x-canary", false)
                .response(
                    200,
                    "The orders, with the stage, deployment and stage variable that served them",
                    Some(serde_json::json!({
                        "type": "object",
                        "properties": {
                            "stage": string(),
                            "deployment": string(),
                            "orders_table": string(),
                            "orders": { "type": "array", "items": order },
                        },
                    })),
                ),
        )
        .route(
            "GET /api/dashboard",
            Operation::new()
                .summary("The profile and the recent orders, aggregated into one object")
                .description(
                    "`X-Tollgate-Completed: false` and an `errors` member when the optional \
                     orders were late (300 ms).",
                )
                .tag("api")
                .response(
                    200,
                    "The profile's fields and the orders",
                    Some(serde_json::json!({
                        "type": "object",
                        "properties": {
                            "id": string(),
                            "name": string(),
                            "plan": string(),
                            "orders": { "type": "array", "items": order },
                            "errors": { "type": "object" },
                        },
                    })),
                ),
        )
        .route(
            "GET /openapi.json",
            Operation::new()
                .summary("This document")
                .tag("meta")
                .response(
                    200,
                    "The OpenAPI 3.1 document",
                    Some(serde_json::json!({ "type": "object" })),
                ),
        )
        .build()
}

/// The quickstart's routes behind their layers, and the demo credentials made for them.
pub struct App {
    /// Every route; serve it with connect info, for the throttle's client IP.
    pub router: Router,
    /// A bearer token for `/me`, valid for an hour.
    pub token: String,
    /// An API key on plan `basic`.
    pub basic_key: String,
    /// An API key on plan `pro`.
    pub pro_key: String,
}

/// Builds the quickstart to be served at `addr` (named in its OpenAPI document).
pub async fn app(addr: SocketAddr) -> Result<App, Box<dyn std::error::Error>> {
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

    let document = Json(openapi(addr)?);
    let router = Router::new()
        .route("/hello", get(|| async { "Hello from behind tollgate!\n" }))
        .route("/me", get(me).route_layer(auth))
        .layer(throttle)
        .merge(api)
        .merge(slow)
        .route_service("/api/dashboard", dashboard()?)
        // Not throttled, so an SDK generator can always fetch it.
        .route(
            "/openapi.json",
            get(move || std::future::ready(document.clone())),
        )
        // Whatever no route above matches goes to the stages: /v1/... and /v2/... (and a
        // problem+json 404 for paths no stage serves).
        .fallback_service(stages()?);
    Ok(App {
        router,
        token,
        basic_key: basic_key.expose().to_owned(),
        pro_key: pro_key.expose().to_owned(),
    })
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
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let App {
        router,
        token,
        basic_key,
        pro_key,
    } = app(addr).await?;

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
        basic_key
    );
    println!(
        "      200 on plan basic, with RateLimit-Policy: \"basic\";q=2;w=1, \"quota\";q=20;w=86400"
    );
    println!("      and RateLimit: \"basic\";r=1;t=1, \"quota\";r=19;t=<seconds to UTC midnight>");
    println!("      a third request within the second: 429 throttled; the 21st of the day: 429 quota-exceeded");
    println!(
        "  curl -i http://{addr}/api/widgets -H 'x-api-key: {}'",
        pro_key
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
    println!("  curl -i http://{addr}/v1/orders");
    println!("      200 from stage v1 (x-deployment: v1), deprecated: deprecation: @<start-up>,");
    println!("      sunset: <start-up + 180 days>, link: </v2>; rel=\"successor-version\"");
    println!("  curl -i http://{addr}/v2/orders");
    println!(
        "      200 with x-deployment: v2, or v2-canary for the 10 % of client IPs on the canary;"
    );
    println!("      a client stays on its side, so every try from this machine gives the same");
    println!("  curl -i -H 'x-canary: always' http://{addr}/v2/orders");
    println!("      forces the canary: x-deployment: v2-canary, orders_table orders_v2_next ('never': v2)");
    println!("  curl -i http://{addr}/api/dashboard");
    println!(
        "      200, the profile and the orders merged into one JSON, x-tollgate-completed: true;"
    );
    println!(
        "      every third call the orders take 1 s, past their 300 ms timeout: after 300 ms the"
    );
    println!("      profile alone, x-tollgate-completed: false, \"errors\":{{\"orders\":{{\"error\":\"timeout\"}}}}");
    println!("  curl -s http://{addr}/openapi.json");
    println!("      the OpenAPI 3.1 document of these routes, for client SDK generators");
    println!();
    println!("Press Ctrl-C to stop.");

    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
