//! Loopback servers and a real HTTP client for whole-stack tests.
#![allow(dead_code)] // each test binary uses its own part of this module

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tollgate::PeerAddr;

/// Serves an axum app on `127.0.0.1:0` with connect info, as the README tells users to.
pub async fn serve_axum(app: axum::Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

/// Serves a plain hyper service on `127.0.0.1:0`, inserting [`PeerAddr`] as a hyper user would.
pub async fn serve_hyper<S, B>(service: S) -> SocketAddr
where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, peer) = listener.accept().await.unwrap();
            let service = service.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
                    request.extensions_mut().insert(PeerAddr(peer));
                    tower::ServiceExt::oneshot(service.clone(), request)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
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

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A real HTTP/1.1 client, optionally connecting from a chosen loopback address so tests can
/// play several clients (Linux routes all of 127.0.0.0/8 to loopback).
#[derive(Clone)]
pub struct Client {
    inner: HyperClient<HttpConnector, Empty<Bytes>>,
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
        Self {
            inner: HyperClient::builder(TokioExecutor::new()).build(connector),
        }
    }

    pub async fn get(&self, addr: SocketAddr, path: &str) -> Reply {
        self.get_with(addr, path, &[]).await
    }

    pub async fn get_with(&self, addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = Request::get(format!("http://{addr}{path}"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = self
            .inner
            .request(request.body(Empty::new()).unwrap())
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }
}
