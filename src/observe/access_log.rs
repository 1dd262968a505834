//! The access log: one `tracing` event per request.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response};
use http_body::{Frame, SizeHint};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::{record_of, X_REQUEST_ID};
use crate::core::{AccessFields, AccessRecord, ProblemType, RequestHead};
use crate::key::ClientIp;
use crate::TrustedProxies;

/// The cache's status header, read for the access log's `cache` field.
const X_CACHE_STATUS: HeaderName = HeaderName::from_static("x-cache-status");

/// The access log: one `tracing` event per request (see [the module](crate::observe) for its fields).
///
/// Put it in a [`Gateway`](crate::Gateway) with
/// [`GatewayBuilder::access_log`](crate::GatewayBuilder::access_log), where it runs right
/// after the request id and so logs every request, refused or not. It is also a tower layer of
/// its own for any service that takes axum bodies.
///
/// ```
/// use tollgate::observe::AccessLogLayer;
/// use tollgate::{Gateway, TrustedProxies};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let gateway = Gateway::builder()
///     .request_id()
///     .access_log(AccessLogLayer::new().trusted_proxies(TrustedProxies::new(["10.0.0.0/8"])?))
///     .build();
/// # let _ = gateway;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct AccessLogLayer {
    client_ip: ClientIp,
    request_id: Option<HeaderName>,
    without_path: bool,
}

impl AccessLogLayer {
    /// An access log that takes the TCP peer for the client and reads `x-request-id`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the client's address from the forwarding headers of these proxies, as the
    /// throttle's [`ClientIp`] does.
    pub fn trusted_proxies(mut self, proxies: TrustedProxies) -> Self {
        self.client_ip = ClientIp::new(proxies);
        self
    }

    /// Finds the client's address with `client_ip` (trusted proxies and their header).
    pub fn client_ip(mut self, client_ip: ClientIp) -> Self {
        self.client_ip = client_ip;
        self
    }

    /// Reads the request id from `header` rather than `x-request-id`.
    pub fn request_id_header(mut self, header: HeaderName) -> Self {
        self.request_id = Some(header);
        self
    }

    /// Leaves the request path out of the event and the span, for APIs that carry secrets in
    /// path segments (a reset token, a signed link): the `route` template still says which
    /// route served the request.
    pub fn without_path(mut self) -> Self {
        self.without_path = true;
        self
    }
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> AccessLog<S> {
        AccessLog {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of an [`AccessLogLayer`].
#[derive(Clone, Debug)]
pub struct AccessLog<S> {
    inner: S,
    layer: AccessLogLayer,
}

/// What the access log learnt from the request, before it went in.
#[derive(Debug)]
struct Entry {
    started: Instant,
    record: AccessRecord,
    request_id: Option<HeaderValue>,
    request_id_header: HeaderName,
    client_ip: Option<IpAddr>,
    method: Method,
    path: Option<Box<str>>,
}

impl<S> Service<Request<Body>> for AccessLog<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        // Filtered out: nothing is gathered, and the request goes straight in.
        if !tracing::enabled!(target: "tollgate::access", tracing::Level::INFO) {
            return Box::pin(self.inner.call(request));
        }
        let started = Instant::now();
        let request_id_header = self.layer.request_id.clone().unwrap_or(X_REQUEST_ID);
        let entry = Entry {
            started,
            record: record_of(&mut request),
            request_id: request.headers().get(&request_id_header).cloned(),
            request_id_header,
            client_ip: self.layer.client_ip.client_ip(&RequestHead::of(&request)),
            method: request.method().clone(),
            path: (!self.layer.without_path).then(|| request.uri().path().into()),
        };
        // Every step's own events (decisions, errors) nest in the request's span.
        let span = tracing::info_span!(
            target: "tollgate::request",
            "request",
            request_id = entry.request_id.as_ref().and_then(request_id_text),
            method = entry.method.as_str(),
            path = entry.path.as_deref(),
        );
        let response = span.in_scope(|| self.inner.call(request));
        let response = tracing::Instrument::instrument(response, span);
        Box::pin(async move {
            // Logged as aborted if the future is dropped before the response comes: the
            // client went away (or a timeout outside gave up) while the gateway worked.
            let mut pending = Pending(Some(entry));
            let response = response.await?;
            let Some(entry) = pending.0.take() else {
                return Ok(response);
            };
            let latency = entry.started.elapsed();
            let (parts, body) = response.into_parts();
            let head = Head {
                status: parts.status.as_u16(),
                decision: parts.extensions.get::<ProblemType>().copied(),
                cache: parts.headers.get(X_CACHE_STATUS).cloned(),
                request_id: parts.headers.get(&entry.request_id_header).cloned(),
                latency,
            };
            // A response that sends no body (to HEAD, 1xx, 204, 304, or an empty one) is
            // complete now; hyper never reads its body, so waiting for the end would log it as
            // aborted.
            let bodiless = entry.method == Method::HEAD
                || parts.status.is_informational()
                || parts.status == http::StatusCode::NO_CONTENT
                || parts.status == http::StatusCode::NOT_MODIFIED
                || http_body::Body::size_hint(&body).exact() == Some(0);
            let body = if bodiless {
                log(&entry, Some(&head), 0, Some(latency), End::Complete);
                body
            } else {
                // Logged when the body has gone out (or failed, or was dropped): a size the
                // body declares is not a size sent.
                Body::new(LoggedBody {
                    body,
                    log: Some((entry, head)),
                    bytes: 0,
                })
            };
            Ok(Response::from_parts(parts, body))
        })
    }
}

/// Holds a request's entry while the response is awaited, and logs it as aborted if the
/// wait is dropped.
struct Pending(Option<Entry>);

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(entry) = self.0.take() {
            log(&entry, None, 0, Some(entry.started.elapsed()), End::Aborted);
        }
    }
}

/// How a response ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// Sent whole.
    Complete,
    /// The client went away first.
    Aborted,
    /// The body failed while it was sent (an upstream broke off).
    Failed,
}

/// What the access log learnt from the response head.
#[derive(Debug)]
struct Head {
    status: u16,
    decision: Option<ProblemType>,
    cache: Option<HeaderValue>,
    request_id: Option<HeaderValue>,
    latency: Duration,
}

/// Milliseconds, to the microsecond (so that they print as `0.794`, not `0.7936650000000001`).
fn millis(duration: Duration) -> f64 {
    duration.as_micros() as f64 / 1000.0
}

/// The longest request id logged: a client may send its own, up to the size of a header.
const MAX_REQUEST_ID: usize = 128;

/// A request id as logged: text, cut to [`MAX_REQUEST_ID`] bytes.
fn request_id_text(value: &HeaderValue) -> Option<&str> {
    // A header value that is text is ASCII, so any byte is a character boundary.
    let text = value.to_str().ok()?;
    Some(&text[..text.len().min(MAX_REQUEST_ID)])
}

/// Writes the access log event; `head` is `None` when the client went away before it.
fn log(entry: &Entry, head: Option<&Head>, bytes: u64, total: Option<Duration>, end: End) {
    let AccessFields {
        route,
        principal,
        api_key_id,
        usage_plan,
        stage,
        upstream,
        ..
    } = entry.record.fields();
    let request_id = entry
        .request_id
        .as_ref()
        .or(head.and_then(|head| head.request_id.as_ref()));
    let api_key_id = api_key_id.or_else(|| principal.as_ref()?.api_key_id_shared().cloned());
    let plan = usage_plan.or_else(|| Some(principal.as_ref()?.usage_plan_id()?.into()));
    let decision = head.and_then(|head| head.decision);
    tracing::info!(
        target: "tollgate::access",
        request_id = request_id.and_then(request_id_text),
        client_ip = entry.client_ip.map(tracing::field::display),
        method = entry.method.as_str(),
        path = entry.path.as_deref(),
        route = route.as_deref(),
        status = head.map(|head| head.status),
        latency_ms = head.map(|head| millis(head.latency)),
        total_ms = total.map(millis),
        upstream_ms = upstream.map(millis),
        bytes,
        subject = principal.as_ref().and_then(|p| p.subject()),
        api_key_id = api_key_id.as_deref(),
        plan = plan.as_deref(),
        stage = stage.as_ref().map(|stage| stage.name()),
        deployment = stage.as_ref().map(|stage| stage.deployment()),
        cache = head
            .and_then(|head| head.cache.as_ref())
            .and_then(|value| value.to_str().ok()),
        decision = match (head, decision) {
            (None, _) => "aborted",
            (Some(_), None) => "allowed",
            (Some(_), Some(problem)) => problem.slug(),
        },
        rejection = decision.map(ProblemType::uri),
        aborted = (end == End::Aborted).then_some(true),
        body_error = (end == End::Failed).then_some(true),
        "request"
    );
}

pin_project! {
    /// A response body, counted as it goes out; the access log is written when it ends,
    /// fails or is dropped.
    struct LoggedBody {
        #[pin]
        body: Body,
        log: Option<(Entry, Head)>,
        bytes: u64,
    }

    impl PinnedDrop for LoggedBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some((entry, head)) = this.log.take() {
                let end = if http_body::Body::is_end_stream(&*this.body) {
                    End::Complete
                } else {
                    End::Aborted
                };
                log(&entry, Some(&head), *this.bytes, Some(entry.started.elapsed()), end);
            }
        }
    }
}

impl LoggedBody {
    fn finish(self: Pin<&mut Self>, end: End) {
        let this = self.project();
        if let Some((entry, head)) = this.log.take() {
            log(
                &entry,
                Some(&head),
                *this.bytes,
                Some(entry.started.elapsed()),
                end,
            );
        }
    }
}

impl http_body::Body for LoggedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.as_mut().project();
        let frame = std::task::ready!(this.body.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    *this.bytes += data.len() as u64;
                }
                if self.body.is_end_stream() {
                    self.finish(End::Complete);
                }
            }
            Some(Err(_)) => self.finish(End::Failed),
            None => self.finish(End::Complete),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
