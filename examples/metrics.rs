//! The gateway's metrics as Prometheus scrapes them: every request counted by method, status
//! and decision and timed (`Gateway::builder().metrics()`), beside the layers' own counters
//! (`tollgate_throttle_*`, ...), rendered by `metrics-exporter-prometheus` at `GET /metrics`.
//!
//! ```text
//! cargo run --example metrics
//! curl -s localhost:3000/hello; curl -s localhost:3000/hello; curl -s localhost:3000/hello
//! curl -s localhost:3000/metrics | grep tollgate_requests_total
//! ```
//!
//! Serve `/metrics` on a port of its own, or behind your own auth, in production: it is
//! outside the gateway here so the scrape itself is neither counted nor throttled.

use std::net::SocketAddr;

use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusBuilder;
use tollgate::key::ClientIp;
use tollgate::throttle::{Rate, Rule, ThrottleLayer};
use tollgate::{Gateway, TrustedProxies};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let prometheus = PrometheusBuilder::new().install_recorder()?;

    let per_client = Rule::new(
        "per-client",
        Rate::per_second(1),
        ClientIp::new(TrustedProxies::none()),
    )
    .burst(2);
    let gateway = Gateway::builder()
        .request_id()
        .metrics()
        .throttle(ThrottleLayer::builder().rule(per_client).build()?)
        .build();
    let api = Router::new()
        .route("/hello", get(|| async { "hello\n" }))
        .layer(gateway);
    let app = Router::new()
        .route(
            "/metrics",
            get(move || std::future::ready(prometheus.render())),
        )
        .merge(api);

    let addr: SocketAddr = std::env::var("TOLLGATE_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:3000".to_owned())
        .parse()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("tollgate metrics example on http://{addr}");
    println!("  curl -s {addr}/hello   (three quickly: the third is 429, decision=\"throttled\")");
    println!("  curl -s {addr}/metrics | grep tollgate_");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
