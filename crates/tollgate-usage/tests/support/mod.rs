//! Loopback serving, a real HTTP client and UTC instants, shared by the usage test binaries.
#![allow(dead_code)] // each test binary uses its own part of this module

#[path = "../../../../tests/support/client.rs"]
mod client;
#[allow(unused_imports)] // each test binary uses its own part of this module
pub use client::{Client, Reply};

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use axum::Router;
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
