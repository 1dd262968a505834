//! Loopback serving, a real HTTP client and UTC instants, shared by the usage test binaries.
#![allow(dead_code)] // each test binary uses its own part of this module

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::net::TcpListener;
use tollgate_usage::Day;

/// Serves `app` on `127.0.0.1:0`.
pub async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// The instant `hh:mm:ss` UTC on `year-month-day`.
pub fn utc(year: i32, month: u32, day: u32, (h, m, s): (u64, u64, u64)) -> SystemTime {
    Day::from_ymd(year, month, day).unwrap().start() + Duration::from_secs(h * 3600 + m * 60 + s)
}

/// What a client sees.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
            .to_str()
            .unwrap()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The problem+json `type` of a refusal.
    pub fn problem(&self) -> String {
        assert_eq!(
            self.header("content-type"),
            "application/problem+json",
            "{self:?}"
        );
        self.json()["type"].as_str().unwrap().to_owned()
    }

    pub async fn of(response: Response<Incoming>) -> Self {
        let (parts, body) = response.into_parts();
        Self {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }
}

/// A real HTTP/1.1 client with a connection pool.
#[derive(Clone)]
pub struct Client(HyperClient<HttpConnector, Empty<Bytes>>);

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    pub fn new() -> Self {
        Self(HyperClient::builder(TokioExecutor::new()).build(HttpConnector::new()))
    }

    pub async fn get(&self, addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = Request::get(format!("http://{addr}{path}"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = self
            .0
            .request(request.body(Empty::new()).unwrap())
            .await
            .unwrap();
        Reply::of(response).await
    }

    /// A GET with `x-api-key: <key>`.
    pub async fn with_key(&self, addr: SocketAddr, path: &str, key: &str) -> Reply {
        self.get(addr, path, &[("x-api-key", key)]).await
    }
}
