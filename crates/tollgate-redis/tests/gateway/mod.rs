//! Gateway instances over real loopback HTTP: an axum app behind a throttle layer whose state
//! is in Redis, served on `127.0.0.1:0`, and keep-alive clients that time their requests.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::StatusCode;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tollgate_redis::RedisThrottleStore;
use tollgate_throttle::ThrottleLayer;

use super::support::{serve as serve_app, Served};

/// One gateway instance, served until dropped.
pub type Instance = Served;

/// No request in these tests may take this long: past it, it counts as hung.
pub const HANG: Duration = Duration::from_secs(5);

/// Serves `GET /` ("ok") behind `throttle` on a free loopback port.
pub async fn serve(throttle: ThrottleLayer<RedisThrottleStore>) -> Served {
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(throttle);
    serve_app(app).await
}

/// A client that keeps its connections alive between requests.
pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// What a client saw of one request.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: StatusCode,
    /// Whether the response carried the `RateLimit` field: a rule's decision, not a store
    /// failure let through.
    pub rate_limited_fields: bool,
    pub retry_after: Option<String>,
    /// From sending the request to the end of its body.
    pub latency: Duration,
}

/// `GET /` on `addr`, read to the end; panics if it fails or takes longer than [`HANG`].
pub async fn request(client: &HttpClient, addr: SocketAddr) -> Reply {
    let uri = format!("http://{addr}/").parse().expect("a valid URI");
    let started = Instant::now();
    let exchange = async {
        let response = client.get(uri).await?;
        let (parts, body) = response.into_parts();
        body.collect()
            .await
            .map_err(|error| -> Box<dyn std::error::Error + Send + Sync> { Box::new(error) })?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(parts)
    };
    let parts = tokio::time::timeout(HANG, exchange)
        .await
        .unwrap_or_else(|_| panic!("a request to {addr} hung past {HANG:?}"))
        .unwrap_or_else(|error| panic!("a request to {addr} failed: {error}"));
    Reply {
        status: parts.status,
        rate_limited_fields: parts.headers.contains_key("ratelimit"),
        retry_after: parts
            .headers
            .get("retry-after")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned),
        latency: started.elapsed(),
    }
}
