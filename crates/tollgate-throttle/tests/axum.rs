//! The throttle crate on its own under axum: client addresses come from `ConnectInfo`.
#![cfg(feature = "axum")]

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;
use http::{Request, StatusCode};
use tollgate_core::key::PeerIp;
use tollgate_core::ManualClock;
use tollgate_throttle::{Rate, Rule, ThrottleLayer};
use tower::ServiceExt;

fn request_from(peer: &str) -> Request<Body> {
    let mut request = Request::get("/hello").body(Body::empty()).unwrap();
    let peer: SocketAddr = peer.parse().unwrap();
    request.extensions_mut().insert(ConnectInfo(peer));
    request
}

#[tokio::test]
async fn peer_ip_is_read_from_axum_connect_info() {
    let throttle = ThrottleLayer::builder()
        .rule(Rule::new("per-client", Rate::per_minute(1), PeerIp).burst(1))
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let app = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .layer(throttle);

    let first = app
        .clone()
        .oneshot(request_from("192.0.2.1:1000"))
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let second = app
        .clone()
        .oneshot(request_from("192.0.2.1:1001"))
        .await
        .unwrap();
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    let other = app.oneshot(request_from("192.0.2.2:1000")).await.unwrap();
    assert_eq!(other.status(), StatusCode::OK);
}
