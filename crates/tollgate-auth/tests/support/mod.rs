//! Loopback serving and a real HTTP client, shared by the authorizer's test binaries.
#![allow(dead_code)] // each test binary uses its own part of this module

#[path = "../../../../tests/support/client.rs"]
mod client;
#[allow(unused_imports)] // each test binary uses its own part of this module
pub use client::{Client, Reply};

use std::net::SocketAddr;

use axum::Router;
use tokio::net::TcpListener;

/// Serves `app` on `127.0.0.1:0`.
pub async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}
