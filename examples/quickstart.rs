//! The README's first command: a gateway on 127.0.0.1:3000 with in-memory defaults.
//!
//! ```sh
//! cargo run --example quickstart
//! ```
//!
//! `GET /hello` is throttled per client IP at 5 requests per second with a burst of 5, so the
//! sixth immediate request gets a 429 problem+json with `Retry-After` and `RateLimit` fields.
//! Set `TOLLGATE_ADDR` to listen elsewhere.

use std::net::SocketAddr;

use axum::routing::get;
use axum::Router;
use tollgate::key::ClientIp;
use tollgate::throttle::{Rate, Rule, ThrottleLayer};
use tollgate::TrustedProxies;

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

    let app = Router::new()
        .route("/hello", get(|| async { "Hello from behind tollgate!\n" }))
        .layer(throttle);

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
