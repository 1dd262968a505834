//! The access log as JSON lines, with `tracing-subscriber`'s JSON formatter.
//!
//! ```sh
//! cargo run --example access_log
//! ```
//!
//! Starts a gateway on a free loopback port (request ids, the access log, a throttle of 3
//! requests a minute per client, and an authorizer), sends it four requests — allowed, without
//! credentials, allowed, throttled — prints one JSON line per request on stdout (and each
//! status on stderr), and exits.
//! Each line is one access-log event; `tollgate::observe` documents the fields. A line looks
//! like this (wrapped here):
//!
//! ```json
//! {"timestamp":"2026-11-25T03:32:06.320814Z","level":"INFO","fields":{"message":"request",
//!  "request_id":"demo-1","client_ip":"127.0.0.1","method":"GET","path":"/hello",
//!  "route":"/hello","status":200,"latency_ms":0.367304,"bytes":6,"subject":"alice",
//!  "decision":"allowed"},"target":"tollgate::access"}
//! {"timestamp":"2026-11-25T03:32:06.321458Z","level":"INFO","fields":{"message":"request",
//!  "request_id":"demo-2","client_ip":"127.0.0.1","method":"GET","path":"/hello",
//!  "route":"/hello","status":401,"latency_ms":0.049653,"bytes":123,"decision":"unauthorized",
//!  "rejection":"urn:tollgate:problem:unauthorized"},"target":"tollgate::access"}
//! ```
//!
//! In a real service, keep `.json()` and the filter, and send the lines wherever your logs go.

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use http::header::AUTHORIZATION;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tollgate::auth::IdentitySource;
use tollgate::auth::{Allow, AuthLayer, AuthorizerResponse, BoxError, CustomAuthorizer};
use tollgate::key::ClientIp;
use tollgate::observe::AccessLogLayer;
use tollgate::throttle::{Rate, Rule, ThrottleLayer};
use tollgate::{Gateway, TrustedProxies};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // One JSON object per line; only the access log, at INFO.
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(EnvFilter::new("tollgate::access=info"))
        .init();

    // A demo authorizer: the token `alice` is alice; any other is refused.
    let authorizer = CustomAuthorizer::builder([IdentitySource::Header(AUTHORIZATION)])
        .ttl(Duration::from_secs(60))
        .from_fn(|identity| {
            let response = match identity.header("authorization") {
                Some("Bearer alice") => AuthorizerResponse::Allow(Allow::new("alice")),
                _ => AuthorizerResponse::Unauthorized,
            };
            std::future::ready(Ok::<_, BoxError>(response))
        })?;
    let throttle = ThrottleLayer::builder()
        .rule(
            Rule::new(
                "per-client",
                Rate::per_minute(3),
                ClientIp::new(TrustedProxies::none()),
            )
            .burst(3),
        )
        .build()?;
    let gateway = Gateway::builder()
        .request_id()
        .access_log(AccessLogLayer::new())
        .throttle(throttle)
        .authorizer(AuthLayer::new(authorizer))
        .build();
    let app = Router::new()
        .route("/hello", get(|| async { "hello\n" }))
        .layer(gateway);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
    });

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    for (id, token) in [
        ("demo-1", Some("Bearer alice")),
        ("demo-2", None),
        ("demo-3", Some("Bearer alice")),
        ("demo-4", Some("Bearer alice")),
    ] {
        let mut request =
            http::Request::get(format!("http://{addr}/hello")).header("x-request-id", id);
        if let Some(token) = token {
            request = request.header(AUTHORIZATION, token);
        }
        let response = client.request(request.body(Empty::new())?).await?;
        let status = response.status();
        response.into_body().collect().await?;
        eprintln!("{id}: {status}");
    }
    Ok(())
}
