//! Usage-plan gateway instances on one Redis, over real loopback HTTP: each instance its own
//! `UsagePlans` with its own connection, as separate processes would have, and a keep-alive
//! client that reads what a user sees (status, headers, problem type).

#![allow(dead_code)] // each test binary uses its own part of this module

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use axum::routing::get;
use axum::Router;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use tollgate_redis::{Redis, RedisKeyStore, RedisQuotaStore, RedisThrottleStore};
use tollgate_usage::{Day, UsagePlans, UsagePlansBuilder};

pub const QUOTA_EXCEEDED: &str = "urn:tollgate:problem:quota-exceeded";
pub const INVALID_API_KEY: &str = "urn:tollgate:problem:invalid-api-key";
pub const FORBIDDEN: &str = "urn:tollgate:problem:forbidden";
pub const UNAVAILABLE: &str = "urn:tollgate:problem:unavailable";

/// No request in these tests may take this long: past it, it counts as hung.
pub const HANG: Duration = Duration::from_secs(5);

/// Usage plans whose keys, quotas and throttles are all in Redis.
pub type RedisPlans = UsagePlans<RedisKeyStore, RedisQuotaStore, RedisThrottleStore>;

/// `builder`'s plans on `keys` and `quotas`, with the plan throttles in `redis`.
pub fn on_redis(
    builder: UsagePlansBuilder,
    redis: &Redis,
    keys: RedisKeyStore,
    quotas: RedisQuotaStore,
) -> RedisPlans {
    builder
        .build_with(keys, quotas, |rules, clock| {
            RedisThrottleStore::new(redis.clone(), rules, clock)
        })
        .expect("the plans are valid")
}

/// One gateway instance: `GET /widgets` behind its usage plans, served until dropped.
pub struct Gateway {
    pub plans: RedisPlans,
    pub addr: SocketAddr,
    /// Served until dropped.
    _served: super::support::Served,
}

/// Serves `GET /widgets` ("ok") behind `plans.layer()` on a free loopback port.
pub async fn serve(plans: RedisPlans) -> Gateway {
    let app = Router::new()
        .route("/widgets", get(|| async { "ok" }))
        .layer(plans.layer());
    let served = super::support::serve(app).await;
    Gateway {
        plans,
        addr: served.addr,
        _served: served,
    }
}

/// An instance with the default stores on a connection of its own to `redis`.
pub async fn gateway(redis: Redis, builder: UsagePlansBuilder) -> Gateway {
    let plans = on_redis(
        builder,
        &redis,
        RedisKeyStore::new(redis.clone()),
        RedisQuotaStore::new(redis.clone()),
    );
    serve(plans).await
}

/// What a client saw of one request.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// From sending the request to the end of its body.
    pub latency: Duration,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|value| value.to_str().expect("an ASCII header"))
    }

    /// The problem+json `type` of a refusal.
    pub fn problem(&self) -> String {
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{self:?}"
        );
        let document: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|error| panic!("{error}: {:?}", String::from_utf8_lossy(&self.body)));
        document["type"]
            .as_str()
            .unwrap_or_else(|| panic!("no type in {document}"))
            .to_owned()
    }

    /// The `r` of the `"quota"` item of the `RateLimit` field, if there is one.
    pub fn quota_left(&self) -> Option<u64> {
        self.header("ratelimit")?
            .split(", ")
            .find_map(|item| item.strip_prefix("\"quota\";r="))?
            .split(';')
            .next()?
            .parse()
            .ok()
    }

    /// Asserts a refusal with `status` and problem `type`.
    pub fn assert_refused(&self, status: StatusCode, problem: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.problem(), problem, "{self:?}");
    }
}

/// A real HTTP/1.1 client that keeps its connections alive between requests.
#[derive(Clone)]
pub struct Client(HyperClient<HttpConnector, Empty<Bytes>>);

impl Default for Client {
    fn default() -> Self {
        Self(HyperClient::builder(TokioExecutor::new()).build_http())
    }
}

impl Client {
    /// `GET /widgets` on `addr` with `x-api-key: key`; panics if it fails or hangs.
    pub async fn widgets(&self, addr: SocketAddr, key: &str) -> Reply {
        let request = Request::get(format!("http://{addr}/widgets"))
            .header("x-api-key", key)
            .body(Empty::new())
            .expect("a valid request");
        let started = Instant::now();
        let exchange = async {
            let response = self.0.request(request).await?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|error| -> Box<dyn std::error::Error + Send + Sync> { Box::new(error) })?
                .to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((parts, body))
        };
        let (parts, body) = tokio::time::timeout(HANG, exchange)
            .await
            .unwrap_or_else(|_| panic!("a request to {addr} hung past {HANG:?}"))
            .unwrap_or_else(|error| panic!("a request to {addr} failed: {error}"));
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
            latency: started.elapsed(),
        }
    }
}

/// Noon UTC on 2026-11-24: twelve hours, 43,200 s, from the next daily quota period.
pub fn noon() -> SystemTime {
    Day::from_ymd(2026, 11, 24).unwrap().start() + Duration::from_secs(12 * 3_600)
}

/// A plain connection to the test's Redis, to look at what the stores wrote.
pub async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}
