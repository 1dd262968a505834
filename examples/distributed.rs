//! Two gateway instances sharing one Redis: limits, quotas and API keys are the same wherever a
//! request lands, and the response cache is shared.
//!
//! ```sh
//! redis-server --port 6379 --save '' &       # or any Redis 7 / Valkey you have
//! cargo run --example distributed --features full
//! ```
//!
//! Instance `a` listens on 127.0.0.1:3001 and instance `b` on 127.0.0.1:3002, as two
//! processes behind a load balancer would. They share nothing in memory: each has its own
//! Redis connection and its own layers, and all their state is in Redis under the prefix
//! `tollgate-distributed`.
//!
//! `GET /api/widgets` needs an API key on plan `demo`: 5 requests/s with a burst of 5, and
//! 10 a day. A demo key is made through instance `a` at start-up and printed; it works on `b`
//! at once. Spend 6 of its 10 on `a` and `b` answers `"quota";r=3` on the next; revoke it
//! through `a`'s admin routes and `b` refuses it with 401 on the next request.
//!
//! `GET /hello` is throttled per client IP with a burst of 10, refilled at 6 a minute, across
//! both instances: 10 quick requests to `a` leave nothing for `b`.
//!
//! `GET /api/report` takes 300 ms and is cached for 60 s in memory and in Redis: generated
//! through `a`, it is a hit on `b` (`X-Cache-Status: HIT`, the same `generated_by` and time).
//! The host is part of a cache key, so the commands send the one public name a load balancer
//! would forward to both (`Host: shop.example`) rather than each instance's own address.
//! `DELETE /admin/cache` on either instance purges it from Redis and from both instances'
//! memory, through Redis pub/sub.
//!
//! The admin routes (`/admin/keys`, from `tollgate::usage::admin`) need the bearer token
//! printed at start-up (or `TOLLGATE_ADMIN_TOKEN`); a real gateway mounts them behind its own
//! authorizer.
//!
//! Set `TOLLGATE_REDIS_URL` to use another Redis (default `redis://127.0.0.1:6379`).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::IntoResponse;
use axum::routing::{delete, get};
use axum::{Json, Router};
use tollgate::cache::{CacheLayer, CachePolicy};
use tollgate::key::ClientIp;
use tollgate::redis::{
    Redis, RedisCacheStore, RedisConfig, RedisKeyStore, RedisQuotaStore, RedisThrottleStore,
};
use tollgate::throttle::{Rate, Rule, ThrottleLayer};
use tollgate::usage::{Day, NewKey, QuotaPeriod, UsagePlan, UsagePlans};
use tollgate::{Principal, TrustedProxies};

/// Every key this example writes in Redis starts with it, so it cannot disturb anything else.
const PREFIX: &str = "tollgate-distributed";

/// One gateway instance: its own connection, stores and layers, as a separate process has.
async fn instance(
    name: &'static str,
    url: &str,
    admin_token: &str,
) -> Result<
    (
        Router,
        UsagePlans<RedisKeyStore, RedisQuotaStore, RedisThrottleStore>,
    ),
    Box<dyn std::error::Error>,
> {
    let redis: Redis = RedisConfig::new(url).prefix(PREFIX).connect().await?;
    let plans = UsagePlans::builder()
        .plan(
            UsagePlan::new("demo")
                .throttle(Rate::per_second(5), 5)
                .quota(10, QuotaPeriod::Day),
        )
        .build_with(
            RedisKeyStore::new(redis.clone()),
            RedisQuotaStore::new(redis.clone()),
            |rules, clock| RedisThrottleStore::new(redis.clone(), rules, clock),
        )?;
    let per_client = ThrottleLayer::builder()
        .rule(
            Rule::new(
                "hello-per-client",
                Rate::per_minute(6),
                ClientIp::new(TrustedProxies::none()),
            )
            .burst(10),
        )
        .build_with_store(|rules, clock| RedisThrottleStore::new(redis.clone(), rules, clock))?;

    let widgets = Router::new()
        .route(
            "/api/widgets",
            get(move |principal: Principal| async move {
                Json(serde_json::json!({
                    "instance": name,
                    "api_key_id": principal.api_key_id(),
                    "widgets": ["sprocket", "flange", "grommet"],
                }))
            }),
        )
        .layer(plans.layer());
    let hello = Router::new()
        .route(
            "/hello",
            get(move || async move { format!("hello from {name}\n") }),
        )
        .layer(per_client);
    let cache = CacheLayer::builder()
        .policy(CachePolicy::new().ttl(Duration::from_secs(60)))
        .build_with(RedisCacheStore::new(redis.clone()))?;
    let purge = cache.handle();
    let report = Router::new()
        .route(
            "/api/report",
            get(move || async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let at = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                Json(serde_json::json!({
                    "generated_by": name,
                    "generated_at_unix_ms": at.as_millis() as u64,
                }))
            }),
        )
        .route_layer(cache);
    let token = format!("Bearer {admin_token}");
    let admin = tollgate::usage::admin::router(plans.clone())
        .route(
            "/cache",
            delete(move || {
                purge.purge_all();
                async { StatusCode::NO_CONTENT }
            }),
        )
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            let allowed = request
                .headers()
                .get(header::AUTHORIZATION)
                .is_some_and(|value| same(value.as_bytes(), token.as_bytes()));
            async move {
                if allowed {
                    next.run(request).await
                } else {
                    (StatusCode::UNAUTHORIZED, "the admin token is required\n").into_response()
                }
            }
        }));
    let app = widgets.merge(hello).merge(report).nest("/admin", admin);
    Ok((app, plans))
}

async fn serve(app: Router, addr: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(error) = axum::serve(listener, app).await {
            eprintln!("the server stopped: {error}");
        }
    });
    Ok(())
}

/// A token for the admin routes: `TOLLGATE_ADMIN_TOKEN`, or 128 random bits (the standard
/// library's hasher keys come from the operating system's randomness).
/// Whether two secrets are equal, in a time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

fn admin_token() -> String {
    use std::hash::{BuildHasher, RandomState};
    std::env::var("TOLLGATE_ADMIN_TOKEN").unwrap_or_else(|_| {
        let random = RandomState::new();
        format!("{:016x}{:016x}", random.hash_one(1u8), random.hash_one(2u8))
    })
}

fn response_line(status: StatusCode) -> String {
    format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url =
        std::env::var("TOLLGATE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    if let Err(error) = RedisConfig::new(url.as_str()).connect().await {
        eprintln!("cannot reach Redis at {url}: {error}");
        eprintln!("start one with `redis-server --port 6379 --save ''`, or set TOLLGATE_REDIS_URL");
        std::process::exit(1);
    }
    let (a_addr, b_addr): (SocketAddr, SocketAddr) =
        ("127.0.0.1:3001".parse()?, "127.0.0.1:3002".parse()?);

    let token = admin_token();
    let (a, plans) = instance("a", &url, &token).await?;
    let (b, _) = instance("b", &url, &token).await?;
    let (key, secret) = plans
        .create_key(NewKey::new("demo").name("Demo customer"))
        .await?;
    serve(a, a_addr).await?;
    serve(b, b_addr).await?;
    let secret = secret.expose();
    let id = key.id();
    let today = Day::of(std::time::SystemTime::now());

    println!("tollgate distributed: instance a on http://{a_addr}, instance b on http://{b_addr}, one Redis at {url}");
    println!();
    println!("A demo key on plan demo (5/s, burst 5, 10 a day), made through a: {secret}");
    println!();
    println!("Try:");
    println!("  for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{{http_code}}\\n' -H 'x-api-key: {secret}' http://{a_addr}/api/widgets; sleep 0.3; done");
    println!("      six {} from a", response_line(StatusCode::OK));
    println!("  curl -i -H 'x-api-key: {secret}' http://{b_addr}/api/widgets");
    println!("      200 from b, with RateLimit: ..., \"quota\";r=3: b sees the 6 that a counted");
    println!(
        "  three more anywhere, then 429 quota-exceeded on both, with Retry-After to UTC midnight"
    );
    println!("  curl -s 'http://{b_addr}/admin/keys/{id}/usage?from={today}&to={today}' -H 'authorization: Bearer {token}'");
    println!("      today's usage, counted by both instances");
    println!(
        "  curl -i -X DELETE http://{a_addr}/admin/keys/{id} -H 'authorization: Bearer {token}'"
    );
    println!("      204: revoked through a ...");
    println!("  curl -i -H 'x-api-key: {secret}' http://{b_addr}/api/widgets");
    println!("      ... and b refuses it on the next request: 401 invalid-api-key");
    println!("  for i in $(seq 1 10); do curl -s -o /dev/null http://{a_addr}/hello; done; curl -i http://{b_addr}/hello");
    println!("      429 from b: the 10 requests to a spent the burst both instances share");
    println!("  curl -i -H 'host: shop.example' http://{a_addr}/api/report; curl -i -H 'host: shop.example' http://{b_addr}/api/report");
    println!("      a takes 300 ms (x-cache-status: MISS); b answers at once from Redis (HIT), the same body");
    println!("  curl -i -X DELETE http://{b_addr}/admin/cache -H 'authorization: Bearer {token}'; curl -i -H 'host: shop.example' http://{a_addr}/api/report");
    println!("      204, then a MISS on a: the purge reached a's memory and Redis");
    println!();
    println!("Press Ctrl-C to stop.");
    tokio::signal::ctrl_c().await?;
    Ok(())
}
