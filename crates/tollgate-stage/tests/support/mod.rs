//! Loopback serving (axum with connect info, and plain hyper), stage services that echo what
//! they saw, a stand-in authorizer and a manual clock, shared by the stage router's tests.
#![allow(dead_code)] // each test binary uses its own part of this module

#[path = "../../../../tests/support/client.rs"]
mod client;
#[allow(unused_imports)] // each test binary uses its own part of this module
pub use client::{Client, Reply};
#[path = "../../../../tests/support/server.rs"]
mod server;
#[allow(unused_imports)] // each test binary uses its own part of this module
pub use server::{serve_axum as serve, serve_hyper};
#[path = "../../../../tests/support/principal.rs"]
mod principal;

pub use principal::verified;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{OriginalUri, Request};
use axum::Router;
use http::header::CONTENT_TYPE;
use http::Uri;
use serde_json::{json, Map, Value};
use tollgate_core::{ManualClock, PeerAddr, Stage};

/// The wall time the manual clocks start at: Fri, 15 Jan 2027 08:00:00 GMT.
pub const T0: u64 = 1_800_000_000;

/// A stage service that answers every path with a JSON document of what it saw: its own
/// name (`service`), the path and query it received, the original URI, and the request's
/// `Stage` (name, deployment, variables).
pub fn echo(service: &'static str) -> Router {
    Router::new().fallback(
        move |stage: Stage, OriginalUri(original): OriginalUri, uri: Uri| async move {
            let variables: Map<String, Value> = stage
                .variables()
                .map(|(name, value)| (name.to_owned(), Value::from(value)))
                .collect();
            let seen = json!({
                "service": service,
                "path": uri.to_string(),
                "original": original.to_string(),
                "stage": stage.name(),
                "deployment": stage.deployment(),
                "variables": variables,
            });
            ([(CONTENT_TYPE, "application/json")], seen.to_string())
        },
    )
}

/// What an [`echo`] service saw, after asserting the reply is its 200.
#[track_caller]
pub fn seen(reply: &Reply) -> Value {
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.json()
}

/// A GET request for in-process calls (`ServiceExt::oneshot`), from `peer` when given.
pub fn get_request(path: &str, peer: Option<SocketAddr>, headers: &[(&str, &str)]) -> Request {
    let mut request = http::Request::get(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut request = request.body(Body::empty()).unwrap();
    if let Some(peer) = peer {
        request.extensions_mut().insert(PeerAddr(peer));
    }
    request
}

/// A manual clock whose wall time starts at [`T0`].
pub fn clock() -> ManualClock {
    ManualClock::starting_at(at(0))
}

/// The wall time `seconds` after [`T0`] (before it, when negative).
pub fn at(seconds: i64) -> SystemTime {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(T0);
    if seconds >= 0 {
        t0 + Duration::from_secs(seconds.unsigned_abs())
    } else {
        t0 - Duration::from_secs(seconds.unsigned_abs())
    }
}
