//! A real HTTP/1.1 client over loopback and what it sees: the one client every crate's
//! whole-stack tests use (crates include this file by path).

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;

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

    pub fn json(&self) -> serde_json::Value {
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

    /// The reply `response` makes, its body read to the end.
    pub async fn of<B: http_body::Body>(response: Response<B>) -> Self
    where
        B::Error: std::fmt::Debug,
    {
        let (parts, body) = response.into_parts();
        Self {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }
}

/// A real HTTP/1.1 client with a connection pool, optionally connecting from a chosen
/// loopback address so tests can play several clients (Linux routes all of 127.0.0.0/8 to
/// loopback).
#[derive(Clone)]
pub struct Client(HyperClient<HttpConnector, Empty<Bytes>>);

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    pub fn new() -> Self {
        Self::with_connector(HttpConnector::new())
    }

    pub fn from_ip(ip: &str) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_local_address(Some(ip.parse::<IpAddr>().unwrap()));
        Self::with_connector(connector)
    }

    fn with_connector(connector: HttpConnector) -> Self {
        Self(HyperClient::builder(TokioExecutor::new()).build(connector))
    }

    /// A GET of `path` with `headers`.
    pub async fn get(&self, addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send("GET", addr, path, headers).await
    }

    /// A request with `method` (and no body) of `path` with `headers`.
    pub async fn send(
        &self,
        method: &str,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
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

    /// A GET with `Authorization: Bearer <token>`.
    pub async fn bearer(&self, addr: SocketAddr, path: &str, token: &str) -> Reply {
        self.get(addr, path, &[("authorization", &format!("Bearer {token}"))])
            .await
    }

    /// A GET with `x-api-key: <key>`.
    pub async fn with_key(&self, addr: SocketAddr, path: &str, key: &str) -> Reply {
        self.get(addr, path, &[("x-api-key", key)]).await
    }
}
