//! Request metrics through the `metrics` facade.

use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use http::{Method, Request, Response};
use metrics::SharedString;
use tower::{Layer, Service};

use super::record_of;
use crate::core::ProblemType;
use crate::gateway::{GatewayFuture, GatewayService};

/// Counts and times each request ([`GatewayBuilder::metrics`](crate::GatewayBuilder::metrics)).
#[derive(Clone, Copy, Debug)]
pub(crate) struct MetricsLayer;

impl Layer<GatewayService> for MetricsLayer {
    type Service = Metrics;

    fn layer(&self, inner: GatewayService) -> Metrics {
        Metrics { inner }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Metrics {
    inner: GatewayService,
}

impl Service<Request<Body>> for Metrics {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = GatewayFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<Body>) -> GatewayFuture {
        let method = method_label(request.method());
        let record = record_of(&mut request);
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let status = status_label(response.status());
            // Shared, not copied: the template is an `Arc<str>`.
            let route = record
                .read(|fields| fields.route.clone())
                .map_or(SharedString::const_str("unmatched"), SharedString::from);
            metrics::counter!(
                "tollgate_requests_total",
                "method" => method,
                "route" => route.clone(),
                "status" => status.clone(),
                "decision" => decision(&response)
            )
            .increment(1);
            metrics::histogram!(
                "tollgate_request_duration_seconds",
                "method" => method,
                "route" => route,
                "status" => status
            )
            .record(started.elapsed().as_secs_f64());
            Ok(response)
        })
    }
}

/// The status as a label, without an allocation for the statuses a gateway answers most.
fn status_label(status: http::StatusCode) -> SharedString {
    let text = match status.as_u16() {
        200 => "200",
        201 => "201",
        204 => "204",
        301 => "301",
        302 => "302",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        413 => "413",
        415 => "415",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        other => return SharedString::from(other.to_string()),
    };
    SharedString::const_str(text)
}

/// `allowed`, or the problem type of the refusal in `response`.
fn decision<B>(response: &Response<B>) -> &'static str {
    response
        .extensions()
        .get::<ProblemType>()
        .map_or("allowed", |problem| problem.slug())
}

/// The method as a label: the standard ones by name, any other as `other`, so a client
/// cannot grow the label set.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}
