//! One backend of an aggregate endpoint: where it is, how it is called, and what of its
//! response is kept.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Body;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tower::{Service, ServiceExt};

use crate::client::BoxError;

/// The default cap on one backend's response body: 10 MiB.
pub const DEFAULT_MAX_BODY: usize = 10 * 1024 * 1024;

pub(crate) type BackendBody = UnsyncBoxBody<Bytes, BoxError>;
pub(crate) type CallFuture =
    Pin<Box<dyn Future<Output = Result<Response<BackendBody>, BoxError>> + Send>>;
/// An in-process backend, type-erased so one endpoint can mix services.
pub(crate) type LocalCall = Arc<dyn Fn(Request<Full<Bytes>>) -> CallFuture + Send + Sync>;

pub(crate) enum Location {
    /// `http://host:port/path/{id}`, sent through the endpoint's client.
    Http(String),
    /// A tower service in this process, called with `path`.
    Local { call: LocalCall, path: String },
}

/// One backend of an [`Aggregate`](crate::Aggregate): an HTTP service at a URL template, or any
/// tower service in this process, with how it is called and what of its JSON is kept.
///
/// Backends are required unless marked [`optional`](Backend::optional).
///
/// # Placeholders
///
/// URL, path and body templates take `{name}` (a path parameter of the endpoint's
/// [`route`](crate::AggregateBuilder::route)), `{query.name}` (a query parameter of the
/// request) and `{backend.field.path}` (a field of an earlier backend's response, as it came
/// before its pipeline; array elements by index, `items.0.id`). A backend that uses another's
/// fields waits for it; the others run at once.
///
/// # Pipeline
///
/// Each response goes through, in order: [`target`](Backend::target),
/// [`allow`](Backend::allow) / [`deny`](Backend::deny), [`mapping`](Backend::mapping),
/// [`group`](Backend::group), and a bare array is wrapped under
/// [`collection`](Backend::collection).
#[must_use]
pub struct Backend {
    pub(crate) name: String,
    pub(crate) location: Location,
    pub(crate) method: Method,
    pub(crate) required: bool,
    pub(crate) timeout: Option<Duration>,
    pub(crate) forward_headers: Vec<String>,
    pub(crate) claims: Vec<(String, String)>,
    pub(crate) forward_query: bool,
    pub(crate) body: Option<Value>,
    pub(crate) target: Option<String>,
    pub(crate) allow: Vec<String>,
    pub(crate) deny: Vec<String>,
    pub(crate) mapping: Vec<(String, String)>,
    pub(crate) group: Option<String>,
    pub(crate) collection: Option<String>,
    pub(crate) hedge: Option<(u32, Duration)>,
    pub(crate) max_body: usize,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let location = match &self.location {
            Location::Http(url) => url.as_str(),
            Location::Local { path, .. } => path.as_str(),
        };
        f.debug_struct("Backend")
            .field("name", &self.name)
            .field("location", &location)
            .field("method", &self.method)
            .field("required", &self.required)
            .finish_non_exhaustive()
    }
}

impl Backend {
    /// A backend over HTTP at `url`, a template such as
    /// `http://127.0.0.1:8081/users/{id}/orders?limit={query.limit}`.
    pub fn http(name: impl Into<String>, url: impl Into<String>) -> Self {
        Self::with(name.into(), Location::Http(url.into()))
    }

    /// A backend served by a tower service in this process (an axum `Router`, a
    /// [`Mock`](crate::Mock), any `Service<Request<Full<Bytes>>>`), called at path `/` unless
    /// [`path`](Backend::path) says otherwise. The caller's
    /// [`Principal`](tollgate_core::Principal) goes along in the request's extensions.
    pub fn service<S, B>(name: impl Into<String>, service: S) -> Self
    where
        S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let call: LocalCall = Arc::new(move |request| {
            let service = service.clone();
            Box::pin(async move {
                match service.oneshot(request).await {
                    Ok(response) => {
                        Ok(response.map(|body| body.map_err(Into::into).boxed_unsync()))
                    }
                    Err(error) => Err(error.into()),
                }
            })
        });
        Self::with(
            name.into(),
            Location::Local {
                call,
                path: "/".to_owned(),
            },
        )
    }

    fn with(name: String, location: Location) -> Self {
        Self {
            name,
            location,
            method: Method::GET,
            required: true,
            timeout: None,
            forward_headers: Vec::new(),
            claims: Vec::new(),
            forward_query: false,
            body: None,
            target: None,
            allow: Vec::new(),
            deny: Vec::new(),
            mapping: Vec::new(),
            group: None,
            collection: None,
            hedge: None,
            max_body: DEFAULT_MAX_BODY,
        }
    }

    /// The path (a template, with a query if wanted) an in-process backend is called at.
    /// Ignored by HTTP backends, whose URL already has one.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        if let Location::Local { path: current, .. } = &mut self.location {
            *current = path.into();
        }
        self
    }

    /// The method the backend is called with (default `GET`).
    pub fn method(mut self, method: Method) -> Self {
        self.method = method;
        self
    }

    /// Makes the backend optional: when it fails, the others are still returned, with
    /// `X-Tollgate-Completed: false`.
    pub fn optional(mut self) -> Self {
        self.required = false;
        self
    }

    /// How long this backend may take, hedged copies included (default: only the endpoint's
    /// deadline bounds it).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Passes these headers of the incoming request on to the backend (default: none besides
    /// [`TRACE_HEADERS`](crate::TRACE_HEADERS), which every call carries).
    pub fn forward_headers<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.forward_headers = names.into_iter().map(Into::into).collect();
        self
    }

    /// Sends the verified principal's `claim` as `header` (`("sub", "x-user-id")`); a client's
    /// own `header` is never passed on.
    pub fn claim_header(mut self, claim: impl Into<String>, header: impl Into<String>) -> Self {
        self.claims.push((claim.into(), header.into()));
        self
    }

    /// Appends the incoming request's query string to the backend's URL.
    pub fn forward_query(mut self, forward: bool) -> Self {
        self.forward_query = forward;
        self
    }

    /// Sends `body` as JSON. A string that is exactly one placeholder (`"{profile.id}"`)
    /// becomes the value with its JSON type; placeholders inside longer strings are written as
    /// text.
    pub fn body(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }

    /// Keeps only the value at this dot path (`data`), dropping the envelope around it.
    pub fn target(mut self, path: impl Into<String>) -> Self {
        self.target = Some(path.into());
        self
    }

    /// Keeps only these fields (dot paths such as `address.city`).
    pub fn allow<I, S>(mut self, paths: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.allow = paths.into_iter().map(Into::into).collect();
        self
    }

    /// Removes these fields (dot paths).
    pub fn deny<I, S>(mut self, paths: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.deny = paths.into_iter().map(Into::into).collect();
        self
    }

    /// Renames top-level fields, `(from, to)`, all at once: `[("a", "b"), ("b", "a")]` swaps.
    pub fn mapping<I, F, T>(mut self, renames: I) -> Self
    where
        I: IntoIterator<Item = (F, T)>,
        F: Into<String>,
        T: Into<String>,
    {
        self.mapping = renames
            .into_iter()
            .map(|(from, to)| (from.into(), to.into()))
            .collect();
        self
    }

    /// Puts the whole response under this key.
    pub fn group(mut self, key: impl Into<String>) -> Self {
        self.group = Some(key.into());
        self
    }

    /// The key a bare JSON array is wrapped under (default `collection`).
    pub fn collection(mut self, key: impl Into<String>) -> Self {
        self.collection = Some(key.into());
        self
    }

    /// Hedges an idempotent call: when no answer has come `delay` after a copy was sent (or
    /// a copy failed), another is sent, up to `copies` in all. The first success wins and
    /// the rest are cancelled.
    pub fn hedge(mut self, copies: u32, delay: Duration) -> Self {
        self.hedge = Some((copies, delay));
        self
    }

    /// The largest response body accepted (default [`DEFAULT_MAX_BODY`]); a larger one fails
    /// the backend without being read past the cap.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }
}
