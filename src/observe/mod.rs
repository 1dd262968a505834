//! Seeing every request: request ids, an access log and request metrics.
//!
//! The access log is one structured [`tracing`] event per request, target `tollgate::access`,
//! level INFO, message `request`, written when the response's body has been sent (or failed,
//! or the client went away). Its fields, each present only when known:
//!
//! | field | what it holds |
//! |---|---|
//! | `request_id` | the request id header (`x-request-id`, from the gateway's `request_id` step or the client), its first 128 characters |
//! | `client_ip` | the client's IP address, behind the configured trusted proxies |
//! | `method` | the request method |
//! | `path` | the request path, without the query string (which may hold credentials); left out with [`AccessLogLayer::without_path`] |
//! | `route` | the path template of the route that served it (`/pets/{id}`) |
//! | `status` | the response status (absent when the client went away before it) |
//! | `latency_ms` | from the request's arrival to the response head, in milliseconds |
//! | `total_ms` | to the end of the response body (to when the client went away, if it did) |
//! | `upstream_ms` | time spent waiting for an HTTP upstream or an aggregate's backends |
//! | `subject` | the caller, as the authorizer verified it |
//! | `api_key_id` | the id of the API key the usage plan verified — never the key |
//! | `plan` | that key's usage plan |
//! | `stage`, `deployment` | the stage and the deployment (`prod`, `prod-canary`) that served it |
//! | `cache` | the cache's `X-Cache-Status` (`HIT`, `MISS`, `STALE`, `BYPASS`, ...) |
//! | `decision` | `allowed`, the refusal's problem type (`throttled`, `quota-exceeded`, `unauthorized`, ...), or `aborted` when the client went away before the response |
//! | `rejection` | the refusal's problem type URI (`urn:tollgate:problem:throttled`), when refused |
//! | `bytes` | the response body's bytes sent |
//! | `aborted` | `true` when the client went away before the response was sent whole |
//! | `body_error` | `true` when the body failed while it was sent (an upstream broke off) |
//!
//! The access log costs a check of the subscriber's filter when its target is filtered out.
//! When it is on, it also opens a span around the rest of the gateway, target `tollgate::request`,
//! level INFO, named `request`, with `request_id`, `method` and `path`: every step's own
//! events (a refusal's reason, a store's failure) nest in it.
//!
//! Credentials never reach the log: no header is logged but the request id, the query string
//! is dropped, and API keys appear by id only. The path is logged; an API with secrets in its
//! path segments leaves it out with [`AccessLogLayer::without_path`].
//!
//! A layer notes what it decided in the request's [`AccessRecord`]
//! (the authorizer its principal, the usage plan the key id and plan, the stage router the
//! stage, an upstream its latency, a configured route its template); the access log reads the
//! rest from the request and the response. On an axum `Router`, a gateway added with
//! `Router::layer` runs after routing, so the route is axum's `MatchedPath`.

mod access_log;
mod metrics;
mod request_id;

use axum::body::Body;
use axum::extract::MatchedPath;
use http::{HeaderName, Request};
#[cfg(feature = "config")]
use {
    crate::gateway::{GatewayFuture, GatewayService},
    http::Response,
    std::convert::Infallible,
    std::task::{Context, Poll},
    tower::{Layer, Service},
};

pub use access_log::{AccessLog, AccessLogLayer};
pub(crate) use metrics::MetricsLayer;
pub(crate) use request_id::RequestIdLayer;

use crate::core::AccessRecord;
use crate::Stage;

/// The default request id header.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The record of `request`: the one an outer layer put there, or a new one with what is
/// known already (axum's matched route, a stage router's stage in front of the gateway).
fn record_of(request: &mut Request<Body>) -> AccessRecord {
    if let Some(record) = AccessRecord::of(request.extensions()) {
        return record.clone();
    }
    let record = AccessRecord::new();
    let extensions = request.extensions();
    let (matched, stage) = (extensions.get::<MatchedPath>(), extensions.get::<Stage>());
    if matched.is_some() || stage.is_some() {
        record.note(|fields| {
            fields.route = matched.map(|matched| matched.as_str().into());
            fields.stage = stage.cloned();
        });
    }
    request.extensions_mut().insert(record.clone());
    record
}

/// Notes the template of the route that will serve each request, as soon as the request
/// comes in, so that the access log and the metrics name it even when a step refuses the
/// request before it reaches the route (the configuration's dispatch).
#[cfg(feature = "config")]
#[derive(Clone)]
pub(crate) struct RouteNote {
    pub(crate) routes: std::sync::Arc<crate::RouteTable<()>>,
}

#[cfg(feature = "config")]
impl Layer<GatewayService> for RouteNote {
    type Service = NotedRoutes;

    fn layer(&self, inner: GatewayService) -> NotedRoutes {
        NotedRoutes {
            inner,
            routes: self.routes.clone(),
        }
    }
}

#[cfg(feature = "config")]
#[derive(Clone)]
pub(crate) struct NotedRoutes {
    inner: GatewayService,
    routes: std::sync::Arc<crate::RouteTable<()>>,
}

#[cfg(feature = "config")]
impl Service<Request<Body>> for NotedRoutes {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = GatewayFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> GatewayFuture {
        if let Some(record) = AccessRecord::of(request.extensions()) {
            if let Some(route) = self.routes.at(request.method(), request.uri().path()) {
                record.note(|fields| fields.route = Some(route.template().into()));
            }
        }
        self.inner.call(request)
    }
}
