//! The pooled HTTP client every upstream and HTTP backend sends through.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// A boxed error, as bodies and services report them.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// The body of a request sent upstream: any body, boxed once so one pool serves them all.
pub(crate) type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;

/// Boxes any request body for the client.
pub(crate) fn upstream_body<B>(body: B) -> UpstreamBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// A pooled HTTP/1.1 and h2c client (hyper-util's), shared by every upstream and backend built
/// with it: connections are kept alive and reused per host.
///
/// Cheap to clone; clones share the pool. Plain `http://` only: TLS to upstreams is not built
/// in yet.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tollgate_aggregate::{HttpClient, HttpUpstream};
///
/// let client = HttpClient::builder()
///     .connect_timeout(Duration::from_secs(2))
///     .build();
/// let users = HttpUpstream::builder("http://127.0.0.1:8081")
///     .client(client.clone())
///     .build()?;
/// # Ok::<(), tollgate_aggregate::UpstreamError>(())
/// ```
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, UpstreamBody>,
    http2: bool,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient").finish_non_exhaustive()
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::builder().build()
    }
}

impl HttpClient {
    /// Starts a client with the defaults: 5 s connect timeout, 90 s idle connections,
    /// HTTP/1.1.
    pub fn builder() -> HttpClientBuilder {
        HttpClientBuilder {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(90),
            max_idle_per_host: usize::MAX,
            http2_only: false,
        }
    }

    /// Whether it speaks h2c.
    pub(crate) fn is_http2(&self) -> bool {
        self.http2
    }

    /// Sends `request`, whose URI must be absolute (`http://host:port/path`).
    pub(crate) async fn send(
        &self,
        request: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, SendError> {
        self.inner.request(request).await.map_err(|error| {
            let kind = if !error.is_connect() {
                SendErrorKind::Broken
            } else if timed_out(&error) {
                SendErrorKind::ConnectTimedOut
            } else {
                SendErrorKind::Unreachable
            };
            SendError {
                kind,
                source: error,
            }
        })
    }
}

/// Builds an [`HttpClient`].
#[derive(Clone, Debug)]
#[must_use]
pub struct HttpClientBuilder {
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle_per_host: usize,
    http2_only: bool,
}

impl HttpClientBuilder {
    /// How long a TCP connect may take before the call fails with 504 (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long an unused pooled connection is kept (default 90 s).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// The most idle connections kept per host (default unbounded; idle ones expire).
    pub fn max_idle_per_host(mut self, max: usize) -> Self {
        self.max_idle_per_host = max;
        self
    }

    /// Speaks HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1: for upstreams that accept
    /// cleartext HTTP/2, many requests share one connection.
    pub fn http2_prior_knowledge(mut self) -> Self {
        self.http2_only = true;
        self
    }

    /// Builds the client. Needs a tokio runtime when it sends, not when it is built.
    pub fn build(self) -> HttpClient {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(self.connect_timeout));
        connector.set_nodelay(true);
        let inner = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(self.idle_timeout)
            .pool_max_idle_per_host(self.max_idle_per_host)
            .http2_only(self.http2_only)
            .build(connector);
        HttpClient {
            inner,
            http2: self.http2_only,
        }
    }
}

/// Why a call upstream failed before a response arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SendErrorKind {
    /// Nothing accepted the connection (refused, no route, DNS failure).
    Unreachable,
    /// The TCP connect did not finish within the connect timeout.
    ConnectTimedOut,
    /// The connection failed during the exchange.
    Broken,
}

#[derive(Debug)]
pub(crate) struct SendError {
    pub(crate) kind: SendErrorKind,
    pub(crate) source: hyper_util::client::legacy::Error,
}

fn timed_out(error: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        next = error.source();
    }
    false
}
