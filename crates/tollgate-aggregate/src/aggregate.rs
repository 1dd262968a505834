//! `Aggregate`: one endpoint that calls several backends concurrently and answers with one
//! JSON object.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::Body as _;
use http_body_util::{BodyExt, Full};
use serde_json::{Map, Value};
use tokio::sync::{watch, Semaphore};
use tollgate_core::{has_dot_segment, AccessRecord, Principal, Rejection};
use tower::Service;

use crate::backend::{Backend, BackendBody, LocalCall, Location};
use crate::claims::ClaimHeaders;
use crate::client::{upstream_body, BoxError, HttpClient, SendError, SendErrorKind};
use crate::merge::{merge, Collision, Merge, MergeConflict};
use crate::pipeline::{DotPath, PathError, Pipeline};
use crate::template::{
    extract, route_params, BodyTemplate, Extract, FillError, Param, Slot, Template, Vars,
};
use crate::upstream::{deadline_after, header_name, UpstreamError};

/// The request headers every backend call carries besides its `forward_headers`: W3C trace
/// context (`traceparent`, `tracestate`) and the request id (`x-request-id`).
pub const TRACE_HEADERS: [&str; 3] = ["traceparent", "tracestate", "x-request-id"];

/// `X-Tollgate-Completed`: `true` when every backend answered, `false` when an optional one
/// failed.
pub const X_TOLLGATE_COMPLETED: HeaderName = HeaderName::from_static("x-tollgate-completed");

const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// The future an [`Aggregate`] returns.
pub type AggregateFuture =
    Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send>>;

/// A tower service that fans one request out to several backends and merges their JSON.
///
/// Backends without dependencies run concurrently; one that uses an earlier backend's fields
/// waits for that one only. Each response passes through its backend's pipeline, then the
/// objects are merged in declaration order (never in order of arrival), so the answer is the
/// same however the backends are timed. Keys come out sorted, as `serde_json`'s map keeps
/// them, unless the application enables `serde_json`'s `preserve_order` feature.
///
/// | outcome | response |
/// |---|---|
/// | every backend answered | 200, `X-Tollgate-Completed: true` |
/// | an optional backend failed or was late | 200 with the others, `X-Tollgate-Completed: false`, and an `errors` object if [`errors_field`](AggregateBuilder::errors_field) is set |
/// | a required backend failed | 502 problem+json naming it (504 when it timed out) |
/// | two backends return one field under [`Collision::Error`] | 502 naming both |
/// | the [`concurrency_limit`](AggregateBuilder::concurrency_limit) is reached | 503 with `Retry-After` |
///
/// A backend fails when it cannot be reached, answers a non-2xx status, sends more than its
/// [`max_body`](Backend::max_body), sends something that is not JSON, or runs past its timeout
/// or the endpoint's deadline.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use http::StatusCode;
/// use serde_json::json;
/// use tollgate_aggregate::{Aggregate, Backend, Mock};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let profile = Mock::json(StatusCode::OK, &json!({"data": {"id": 7, "name": "Ann"}}));
/// let orders = Mock::json(StatusCode::OK, &json!([{"id": 1}, {"id": 2}]));
/// let dashboard = Aggregate::builder()
///     .route("/users/{id}/dashboard")
///     .backend(Backend::service("profile", profile).path("/users/{id}").target("data"))
///     .backend(
///         Backend::service("orders", orders)
///             .path("/orders?user={profile.data.id}")
///             .collection("orders")
///             .optional()
///             .timeout(Duration::from_millis(300)),
///     )
///     .build()?;
///
/// use tower::ServiceExt;
/// let request = http::Request::get("/users/7/dashboard").body(())?;
/// let response = dashboard.oneshot(request).await?;
/// assert_eq!(response.headers()["x-tollgate-completed"], "true");
/// use http_body_util::BodyExt;
/// let body: serde_json::Value =
///     serde_json::from_slice(&response.into_body().collect().await?.to_bytes())?;
/// assert_eq!(body, json!({"id": 7, "name": "Ann", "orders": [{"id": 1}, {"id": 2}]}));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Aggregate {
    endpoint: Arc<Endpoint>,
}

struct Endpoint {
    name: Arc<str>,
    /// The route and its template as written (which names catch-all parameters).
    route: Option<(matchit::Router<()>, String)>,
    backends: Vec<Compiled>,
    merge: Merge,
    collision: Collision,
    deadline: Duration,
    errors_field: Option<String>,
    status_from: Option<usize>,
    limit: Option<Arc<Semaphore>>,
    client: HttpClient,
}

struct Compiled {
    name: Arc<str>,
    target: CompiledTarget,
    method: Method,
    required: bool,
    timeout: Option<Duration>,
    forward_headers: Vec<HeaderName>,
    claims: ClaimHeaders,
    forward_query: bool,
    body: Option<BodyTemplate>,
    pipeline: Pipeline,
    hedge: Option<(u32, Duration)>,
    max_body: usize,
    /// Indices of the earlier backends whose fields this one uses.
    depends_on: Vec<usize>,
    /// The fields of earlier backends this one uses: (backend index, path).
    reads: Vec<(usize, Vec<String>)>,
    /// The fields of this backend's response that later backends use.
    feeds: Vec<Vec<String>>,
    /// Whether its templates read the request's parameters or query.
    reads_request: bool,
}

enum CompiledTarget {
    Http(Template),
    Local { call: LocalCall, path: Template },
}

impl fmt::Debug for Aggregate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.endpoint.backends.iter().map(|b| &*b.name).collect();
        f.debug_struct("Aggregate")
            .field("name", &self.endpoint.name)
            .field("backends", &names)
            .field("merge", &self.endpoint.merge)
            .field("collision", &self.endpoint.collision)
            .field("deadline", &self.endpoint.deadline)
            .finish_non_exhaustive()
    }
}

impl Aggregate {
    /// Starts an endpoint with the defaults: shallow merge, the backend declared first keeps
    /// a contested field, a 10 s deadline, no `errors` object, no concurrency limit.
    pub fn builder() -> AggregateBuilder {
        AggregateBuilder {
            name: "aggregate".to_owned(),
            route: None,
            backends: Vec::new(),
            merge: Merge::default(),
            collision: Collision::default(),
            deadline: Duration::from_secs(10),
            errors_field: None,
            status_from: None,
            concurrency_limit: None,
            client: None,
        }
    }
}

/// Builds an [`Aggregate`].
#[must_use]
pub struct AggregateBuilder {
    name: String,
    route: Option<String>,
    backends: Vec<Backend>,
    merge: Merge,
    collision: Collision,
    deadline: Duration,
    errors_field: Option<String>,
    status_from: Option<String>,
    concurrency_limit: Option<usize>,
    client: Option<HttpClient>,
}

impl fmt::Debug for AggregateBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AggregateBuilder")
            .field("name", &self.name)
            .field("backends", &self.backends)
            .finish_non_exhaustive()
    }
}

impl AggregateBuilder {
    /// The endpoint's name in logs and metrics (the `endpoint` label; default `aggregate`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The route template (`/users/{id}/dashboard`) whose parameters fill the backends'
    /// `{id}` placeholders. A path it does not match is answered 404. Under axum's `nest`,
    /// write it without the nest prefix.
    pub fn route(mut self, route: impl Into<String>) -> Self {
        self.route = Some(route.into());
        self
    }

    /// Adds a backend. Declaration order is merge order.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backends.push(backend);
        self
    }

    /// Shallow (top-level fields; the default) or deep merge.
    pub fn merge(mut self, merge: Merge) -> Self {
        self.merge = merge;
        self
    }

    /// What happens when two backends return the same field (default
    /// [`Collision::FirstWins`]: the backend declared first keeps it).
    pub fn collision(mut self, collision: Collision) -> Self {
        self.collision = collision;
        self
    }

    /// The whole call's deadline (default 10 s): a required backend still running then fails
    /// the call with 504, an optional one is dropped.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Adds a `field` object to a partial answer, holding each failed backend's status
    /// (`{"reviews": {"status": 503}}`) or error (`{"reviews": {"error": "timeout"}}`).
    /// It replaces a backend field of that name.
    pub fn errors_field(mut self, field: impl Into<String>) -> Self {
        self.errors_field = Some(field.into());
        self
    }

    /// Answers with this backend's status unchanged: its 2xx status becomes the aggregate's
    /// (but 204, 205 and 304, which cannot carry the merged body, stay 200), and when it
    /// answers 4xx or 5xx the client gets that status, that backend's body, and the headers
    /// the status needs (`Location`, `WWW-Authenticate`, `Retry-After`, `Allow`,
    /// `Content-Language`) — even when another required backend failed first.
    pub fn status_from(mut self, backend: impl Into<String>) -> Self {
        self.status_from = Some(backend.into());
        self
    }

    /// At most `limit` calls of this endpoint at once; more are answered 503 at once rather
    /// than queued, so a slow backend cannot pile up work.
    pub fn concurrency_limit(mut self, limit: usize) -> Self {
        self.concurrency_limit = Some(limit);
        self
    }

    /// Sends HTTP backends through `client`, sharing its pool (by default the endpoint has
    /// its own).
    pub fn client(mut self, client: HttpClient) -> Self {
        self.client = Some(client);
        self
    }

    /// Checks every backend and builds the endpoint.
    ///
    /// # Errors
    ///
    /// An [`AggregateError`] naming the backend and setting that is wrong.
    pub fn build(self) -> Result<Aggregate, AggregateError> {
        if self.backends.is_empty() {
            return Err(AggregateError::NoBackends);
        }
        if self.concurrency_limit == Some(0) {
            return Err(AggregateError::ZeroConcurrency);
        }
        let route = self
            .route
            .as_ref()
            .map(|route| {
                let mut router = matchit::Router::new();
                router
                    .insert(route.clone(), ())
                    .map(|()| (router, route.clone()))
                    .map_err(|error| AggregateError::InvalidRoute {
                        route: route.clone(),
                        reason: error.to_string(),
                    })
            })
            .transpose()?;
        let mut names: Vec<Arc<str>> = Vec::with_capacity(self.backends.len());
        let mut backends: Vec<Compiled> = Vec::with_capacity(self.backends.len());
        for backend in self.backends {
            let compiled = compile(backend, &names, self.route.as_deref())?;
            for (index, path) in &compiled.reads {
                let feeds = &mut backends[*index].feeds;
                if !feeds.contains(path) {
                    feeds.push(path.clone());
                }
            }
            names.push(Arc::clone(&compiled.name));
            backends.push(compiled);
        }
        let status_from = self
            .status_from
            .map(|name| {
                names.iter().position(|known| **known == *name).ok_or(
                    AggregateError::UnknownBackend {
                        backend: name.clone(),
                        referenced: name,
                    },
                )
            })
            .transpose()?;
        Ok(Aggregate {
            endpoint: Arc::new(Endpoint {
                name: self.name.into(),
                route,
                backends,
                merge: self.merge,
                collision: self.collision,
                deadline: self.deadline,
                errors_field: self.errors_field,
                status_from,
                limit: self
                    .concurrency_limit
                    .map(|limit| Arc::new(Semaphore::new(limit))),
                client: self.client.unwrap_or_default(),
            }),
        })
    }
}

fn compile(
    backend: Backend,
    earlier: &[Arc<str>],
    route: Option<&str>,
) -> Result<Compiled, AggregateError> {
    let name = backend.name;
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && name != "query";
    if !valid {
        return Err(AggregateError::InvalidName(name));
    }
    if earlier.iter().any(|known| **known == *name) {
        return Err(AggregateError::DuplicateBackend(name));
    }
    let invalid = |reason: String| AggregateError::InvalidBackend {
        backend: name.clone(),
        reason,
    };
    let template = |text: &str| Template::parse(text).map_err(|error| invalid(error.0));
    let target = match backend.location {
        Location::Http(url) => {
            let template = template(&url)?;
            let prefix: String = url.chars().take_while(|&c| c != '{').collect();
            let authority = prefix.strip_prefix("http://").unwrap_or_default();
            if authority.is_empty() || authority.starts_with('/') {
                return Err(invalid(format!(
                    "URL {url:?}: expected http://host[:port]/path (TLS upstreams are not built in yet)"
                )));
            }
            // A client-controlled value in the host would let any caller pick the server the
            // gateway calls.
            if template.slots().next().is_some() && !authority.contains('/') {
                return Err(invalid(format!(
                    "URL {url:?}: placeholders may only appear in the path and query"
                )));
            }
            if Uri::try_from(template.sample()).is_err() {
                return Err(invalid(format!("URL {url:?} is not a valid URL")));
            }
            CompiledTarget::Http(template)
        }
        Location::Local { call, path } => {
            if !path.starts_with('/') {
                return Err(invalid(format!(
                    "path {path:?}: expected a path such as \"/orders\""
                )));
            }
            let path_template = template(&path)?;
            if http::uri::PathAndQuery::try_from(path_template.sample()).is_err() {
                return Err(invalid(format!("path {path:?} is not a valid path")));
            }
            CompiledTarget::Local {
                call,
                path: path_template,
            }
        }
    };
    let body = backend
        .body
        .map(|body| BodyTemplate::parse(body).map_err(|error| invalid(error.0)))
        .transpose()?;
    if body.is_some() && matches!(backend.method, Method::GET | Method::HEAD) {
        return Err(invalid(format!(
            "a {} request cannot carry a body",
            backend.method
        )));
    }

    let url_slots = match &target {
        CompiledTarget::Http(template) | CompiledTarget::Local { path: template, .. } => {
            template.slots()
        }
    };
    let mut depends_on = Vec::new();
    let mut reads = Vec::new();
    let mut reads_request = false;
    for slot in url_slots.chain(body.iter().flat_map(BodyTemplate::slots)) {
        match slot {
            Slot::Param(param) => {
                reads_request = true;
                let known = route.is_some_and(|route| {
                    route.contains(&format!("{{{param}}}"))
                        || route.contains(&format!("{{*{param}}}"))
                });
                if !known {
                    return Err(invalid(format!(
                        "{} is not a parameter of the endpoint's route {}",
                        slot.spelled(),
                        route.map_or("(none set)".to_owned(), |route| format!("{route:?}"))
                    )));
                }
            }
            Slot::Query(_) => reads_request = true,
            Slot::Field {
                backend: other,
                path,
            } => {
                let index = earlier
                    .iter()
                    .position(|known| **known == **other)
                    .ok_or_else(|| AggregateError::UnknownBackend {
                        backend: name.clone(),
                        referenced: other.clone(),
                    })?;
                if !depends_on.contains(&index) {
                    depends_on.push(index);
                }
                reads.push((index, path.clone()));
            }
        }
    }

    if let Some((copies, _)) = backend.hedge {
        if copies < 1 {
            return Err(invalid("hedge copies must be at least 1".to_owned()));
        }
        if !backend.method.is_idempotent() {
            return Err(invalid(format!(
                "{} is not idempotent, so its calls cannot be hedged",
                backend.method
            )));
        }
    }
    let path = |text: &String| DotPath::parse(text).map_err(AggregateError::from_path(&name));
    let pipeline = Pipeline {
        target: backend.target.as_ref().map(path).transpose()?,
        allow: backend.allow.iter().map(path).collect::<Result<_, _>>()?,
        deny: backend.deny.iter().map(path).collect::<Result<_, _>>()?,
        mapping: backend.mapping,
        group: backend.group,
        collection: backend
            .collection
            .unwrap_or_else(|| Pipeline::default().collection),
    };
    let mut forward_headers: Vec<HeaderName> = backend
        .forward_headers
        .iter()
        .map(|header| header_name(header))
        .collect::<Result<_, _>>()
        .map_err(|error| invalid(error.to_string()))?;
    // Every call carries the request's trace context and id, so one trace spans the fan-out.
    for name in TRACE_HEADERS {
        let name = HeaderName::from_static(name);
        if !forward_headers.contains(&name) {
            forward_headers.push(name);
        }
    }
    let mut claims = ClaimHeaders::default();
    for (claim, header) in backend.claims {
        claims.push(
            claim,
            header_name(&header).map_err(|error| invalid(error.to_string()))?,
        );
    }
    Ok(Compiled {
        name: name.into(),
        target,
        method: backend.method,
        required: backend.required,
        timeout: backend.timeout,
        forward_headers,
        claims,
        forward_query: backend.forward_query,
        body,
        pipeline,
        hedge: backend.hedge,
        max_body: backend.max_body,
        depends_on,
        reads,
        feeds: Vec::new(),
        reads_request,
    })
}

/// An aggregate endpoint that cannot work as configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AggregateError {
    /// The endpoint has no backends.
    #[error("an aggregate needs at least one backend")]
    NoBackends,
    /// A concurrency limit of zero would refuse every call.
    #[error("the concurrency limit must be at least 1")]
    ZeroConcurrency,
    /// The route template cannot be parsed.
    #[error("invalid route {route:?}: {reason}")]
    InvalidRoute {
        /// The route as given.
        route: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A backend name is empty, longer than 64 bytes, has characters other than
    /// `A-Z a-z 0-9 _ -`, or is `query` (which placeholders reserve).
    #[error(
        "invalid backend name {0:?}: expected 1-64 characters of A-Z a-z 0-9 _ -, not \"query\""
    )]
    InvalidName(String),
    /// Two backends have one name.
    #[error("two backends are named {0:?}")]
    DuplicateBackend(String),
    /// A placeholder or option names a backend that is not declared before it.
    #[error("backend {backend:?} uses {referenced:?}, which is not a backend declared before it")]
    UnknownBackend {
        /// The backend (or option) that refers.
        backend: String,
        /// The name it refers to.
        referenced: String,
    },
    /// A backend setting cannot work.
    #[error("backend {backend:?}: {reason}")]
    InvalidBackend {
        /// The backend.
        backend: String,
        /// What is wrong, naming the setting.
        reason: String,
    },
    /// A pipeline field path is not valid.
    #[error("backend {backend:?}: {source}")]
    InvalidPath {
        /// The backend.
        backend: String,
        /// The path's error.
        source: PathError,
    },
}

impl AggregateError {
    fn from_path(backend: &str) -> impl Fn(PathError) -> Self + '_ {
        move |source| Self::InvalidPath {
            backend: backend.to_owned(),
            source,
        }
    }
}

impl From<UpstreamError> for AggregateError {
    fn from(error: UpstreamError) -> Self {
        Self::InvalidBackend {
            backend: String::new(),
            reason: error.to_string(),
        }
    }
}

impl<B> Service<Request<B>> for Aggregate {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = AggregateFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let endpoint = Arc::clone(&self.endpoint);
        // The incoming body is not read: backends get their own bodies from templates.
        let (parts, _body) = request.into_parts();
        let record = AccessRecord::of(&parts.extensions).cloned();
        Box::pin(async move {
            let started = Instant::now();
            let response = endpoint.answer(parts).await;
            if let Some(record) = record {
                // The fan-out, from its start until its last backend answered (or was given up).
                record.note(|fields| fields.add_upstream(started.elapsed()));
            }
            Ok(response)
        })
    }
}

/// Why one backend gave nothing to merge.
#[derive(Debug)]
enum Failure {
    /// It answered a status outside 2xx (boxed: it carries the answer).
    Status(Box<Fetched>),
    TimedOut,
    Unreachable,
    Broken,
    TooLarge,
    NotJson(String),
    Pipeline(String),
    Template(FillError),
    /// A backend it reads failed; `true` when that one timed out.
    Dependency(Arc<str>, bool),
    Service(BoxError),
}

impl Failure {
    /// The short, client-safe kind, for the `errors` object and the metrics label.
    fn kind(&self) -> &'static str {
        match self {
            Failure::Status(_) => "status",
            Failure::TimedOut => "timeout",
            Failure::Unreachable => "unreachable",
            Failure::Broken => "connection",
            Failure::TooLarge => "too-large",
            Failure::NotJson(_) => "invalid-json",
            Failure::Pipeline(_) => "pipeline",
            Failure::Template(FillError::Request(_)) => "request",
            Failure::Template(_) => "template",
            Failure::Dependency(..) => "dependency",
            Failure::Service(_) => "service",
        }
    }

    /// Whether the client should hear 504 rather than 502.
    fn timed_out(&self) -> bool {
        matches!(self, Failure::TimedOut | Failure::Dependency(_, true))
    }

    /// What the client is told; internal errors stay in the log.
    fn describe(&self) -> String {
        match self {
            Failure::Status(fetched) => format!("answered {}", fetched.status.as_u16()),
            Failure::TimedOut => "did not answer in time".to_owned(),
            Failure::Unreachable => "could not be reached".to_owned(),
            Failure::Broken => "dropped the connection".to_owned(),
            Failure::TooLarge => "sent a response over its size limit".to_owned(),
            Failure::NotJson(reason) => format!("did not send JSON: {reason}"),
            Failure::Pipeline(reason) => reason.clone(),
            Failure::Template(error) => format!("could not be called: {error}"),
            Failure::Dependency(other, true) => {
                format!("needs backend {other:?}, which did not answer in time")
            }
            Failure::Dependency(other, false) => format!("needs backend {other:?}, which failed"),
            Failure::Service(_) => "failed".to_owned(),
        }
    }

    fn json(&self) -> Value {
        let mut entry = Map::new();
        match self {
            Failure::Status(fetched) => {
                entry.insert("status".into(), fetched.status.as_u16().into());
            }
            other => {
                entry.insert("error".into(), other.kind().into());
            }
        }
        Value::Object(entry)
    }
}

impl From<SendError> for Failure {
    fn from(error: SendError) -> Self {
        match error.kind {
            SendErrorKind::Unreachable => Failure::Unreachable,
            SendErrorKind::ConnectTimedOut => Failure::TimedOut,
            SendErrorKind::Broken => Failure::Broken,
        }
    }
}

/// A backend's answer, read whole (up to its cap).
#[derive(Debug)]
struct Fetched {
    status: StatusCode,
    content_type: Option<HeaderValue>,
    /// The headers a passed-through status needs to mean anything (`Location` for a
    /// redirect, `WWW-Authenticate` for a 401, ...).
    kept: HeaderMap,
    body: Bytes,
}

/// What [`Fetched::kept`] keeps of a backend's headers.
const STATUS_HEADERS: [HeaderName; 5] = [
    http::header::LOCATION,
    http::header::WWW_AUTHENTICATE,
    http::header::RETRY_AFTER,
    http::header::ALLOW,
    http::header::CONTENT_LANGUAGE,
];

/// A backend's contribution.
struct Part {
    status: StatusCode,
    object: Map<String, Value>,
}

/// What one backend call produced.
type Outcome = Result<Part, Failure>;

/// What a backend tells the later backends that read it: `None` while it runs, then the
/// fields they read, or `Err(timed_out)` when it failed.
type Shared = Option<Result<Arc<Extract>, bool>>;
type Published = watch::Sender<Shared>;
type Watched = watch::Receiver<Shared>;

/// The request, as every backend call reads it.
struct Call<'r> {
    parts: &'r Parts,
    params: Vec<Param>,
    query: Vec<(String, String)>,
    principal: Option<Principal>,
    deadline: tokio::time::Instant,
}

impl Endpoint {
    async fn answer(self: Arc<Self>, parts: Parts) -> Response<Full<Bytes>> {
        let _permit = match &self.limit {
            Some(limit) => match Arc::clone(limit).try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    metrics::counter!("tollgate_aggregate_refused_total", "endpoint" => Arc::clone(&self.name)).increment(1);
                    return refuse(
                        Rejection::unavailable(Duration::from_secs(1))
                            .with_detail("this endpoint is at its concurrency limit"),
                    );
                }
            },
            None => None,
        };
        if has_dot_segment(parts.uri.path()) {
            // A `..` path parameter would climb a backend's path: the client's mistake, not
            // a backend's failure.
            return refuse(Rejection::bad_request(
                "the path must not hold `.` or `..` segments",
            ));
        }
        let params = match &self.route {
            Some((route, text)) => match route.at(parts.uri.path()) {
                Ok(matched) => match route_params(text, &matched.params) {
                    Ok(params) => params,
                    Err(name) => {
                        return refuse(Rejection::bad_request(format!(
                            "the path parameter {name:?} is not UTF-8"
                        )))
                    }
                },
                Err(_) => return refuse(Rejection::not_found()),
            },
            None => Vec::new(),
        };
        let query = parts
            .uri
            .query()
            .map(|query| {
                form_urlencoded::parse(query.as_bytes())
                    .into_owned()
                    .collect()
            })
            .unwrap_or_default();
        let call = Call {
            principal: parts.extensions.get::<Principal>().cloned(),
            parts: &parts,
            params,
            query,
            deadline: deadline_after(self.deadline),
        };

        // A request that cannot fill a required backend's templates is refused before any
        // backend is called, whatever the order they were declared in.
        let vars = Vars {
            params: &call.params,
            query: &call.query,
            responses: &[],
        };
        for backend in self
            .backends
            .iter()
            .filter(|b| b.required && b.reads_request)
        {
            let checked = match &backend.target {
                CompiledTarget::Http(template) | CompiledTarget::Local { path: template, .. } => {
                    template.check_request(&vars)
                }
            }
            .and_then(|()| {
                backend
                    .body
                    .as_ref()
                    .map_or(Ok(()), |body| body.check_request(&vars))
            });
            if let Err(FillError::Request(reason)) = checked {
                return refuse(Rejection::bad_request(reason));
            }
        }

        // Only backends that others read get a channel.
        let channels: Vec<Option<(Published, Watched)>> = self
            .backends
            .iter()
            .map(|backend| (!backend.feeds.is_empty()).then(|| watch::channel(None)))
            .collect();
        let mut runs = FuturesUnordered::new();
        let (endpoint, call) = (&*self, &call);
        for (index, backend) in self.backends.iter().enumerate() {
            let needs = backend
                .depends_on
                .iter()
                .filter_map(|&other| {
                    let (_, watched) = channels[other].as_ref()?;
                    Some((Arc::clone(&self.backends[other].name), watched.clone()))
                })
                .collect();
            let published = channels[index].as_ref().map(|(sender, _)| sender.clone());
            let run: Pin<Box<dyn Future<Output = (usize, Outcome)> + Send + '_>> = Box::pin(
                async move { (index, endpoint.run(backend, call, needs, published).await) },
            );
            runs.push(run);
        }
        drop(channels);

        let mut outcomes: Vec<Option<Outcome>> = self.backends.iter().map(|_| None).collect();
        // A required failure that arrived while the `status_from` backend, whose own error
        // status takes precedence, was still running.
        let mut held: Option<Response<Full<Bytes>>> = None;
        while let Some((index, outcome)) = runs.next().await {
            let backend = &self.backends[index];
            if let Err(failure) = &outcome {
                if self.status_from == Some(index) {
                    if let Failure::Status(fetched) = failure {
                        return passthrough(fetched);
                    }
                }
                if backend.required {
                    let refusal = required_failure(backend, failure);
                    match self.status_from {
                        Some(deciding) if outcomes[deciding].is_none() && deciding != index => {
                            held.get_or_insert(refusal);
                        }
                        // Nothing can save the call: the rest are cancelled by dropping them.
                        _ => return refusal,
                    }
                }
            }
            outcomes[index] = Some(outcome);
            let decided = self
                .status_from
                .is_some_and(|deciding| outcomes[deciding].is_some());
            if let Some(refusal) = held.take_if(|_| decided) {
                return refusal;
            }
        }
        if let Some(refusal) = held {
            return refusal;
        }
        self.respond(outcomes)
    }

    /// One backend: waits for the backends it reads, calls it within its time, and publishes
    /// the fields later backends read.
    async fn run(
        &self,
        backend: &Compiled,
        call: &Call<'_>,
        needs: Vec<(Arc<str>, Watched)>,
        published: Option<Published>,
    ) -> Outcome {
        let started = Instant::now();
        let work = async {
            let mut responses = Vec::with_capacity(needs.len());
            for (other, mut receiver) in needs {
                let shared = match receiver.wait_for(Option::is_some).await {
                    Ok(shared) => shared.clone(),
                    Err(_) => None,
                };
                match shared {
                    Some(Ok(extract)) => responses.push((other, extract)),
                    Some(Err(timed_out)) => return Err(Failure::Dependency(other, timed_out)),
                    None => return Err(Failure::Dependency(other, false)),
                }
            }
            let limit = backend.timeout.map_or(call.deadline, |timeout| {
                call.deadline.min(deadline_after(timeout))
            });
            match tokio::time::timeout_at(limit, self.fetch_hedged(backend, call, &responses)).await
            {
                Ok(result) => result,
                Err(_) => Err(Failure::TimedOut),
            }
        };
        let result = match tokio::time::timeout_at(call.deadline, work).await {
            Ok(result) => result,
            Err(_) => Err(Failure::TimedOut),
        };
        let outcome = result.and_then(|fetched| self.parse(backend, fetched, published.as_ref()));
        if let (Err(failure), Some(published)) = (&outcome, &published) {
            published.send_replace(Some(Err(failure.timed_out())));
        }
        self.record(backend, started, &outcome);
        outcome
    }

    fn parse(
        &self,
        backend: &Compiled,
        fetched: Fetched,
        published: Option<&Published>,
    ) -> Outcome {
        if !fetched.status.is_success() {
            return Err(Failure::Status(Box::new(fetched)));
        }
        let value: Value = if fetched.body.is_empty()
            && (fetched.status == StatusCode::NO_CONTENT || backend.method == Method::HEAD)
        {
            // Nothing to merge, and nothing wrong.
            Value::Object(Map::new())
        } else {
            if let Some(content_type) = &fetched.content_type {
                if !is_json(content_type) {
                    return Err(Failure::NotJson(format!(
                        "its Content-Type is {:?}",
                        String::from_utf8_lossy(content_type.as_bytes())
                    )));
                }
            }
            serde_json::from_slice(&fetched.body)
                .map_err(|error| Failure::NotJson(error.to_string()))?
        };
        if let Some(published) = published {
            published.send_replace(Some(Ok(Arc::new(extract(&value, &backend.feeds)))));
        }
        let object = backend
            .pipeline
            .apply(value)
            .map_err(|error| Failure::Pipeline(error.to_string()))?;
        Ok(Part {
            status: fetched.status,
            object,
        })
    }

    fn record(&self, backend: &Compiled, started: Instant, outcome: &Outcome) {
        metrics::histogram!(
            "tollgate_aggregate_backend_duration_seconds",
            "endpoint" => Arc::clone(&self.name),
            "backend" => Arc::clone(&backend.name),
        )
        .record(started.elapsed().as_secs_f64());
        if let Err(failure) = outcome {
            metrics::counter!(
                "tollgate_aggregate_backend_failures_total",
                "endpoint" => Arc::clone(&self.name),
                "backend" => Arc::clone(&backend.name),
                "reason" => failure.kind(),
            )
            .increment(1);
            match failure {
                Failure::Service(error) => tracing::warn!(
                    endpoint = %self.name, backend = %backend.name, error = %error,
                    "tollgate: aggregate backend failed"
                ),
                other => tracing::debug!(
                    endpoint = %self.name, backend = %backend.name, reason = %other.describe(),
                    "tollgate: aggregate backend failed"
                ),
            }
        }
    }

    /// Calls the backend, hedged when configured: another copy goes out each time `delay`
    /// passes without an answer or a copy fails, and the first success wins. Dropping the
    /// rest cancels them.
    async fn fetch_hedged(
        &self,
        backend: &Compiled,
        call: &Call<'_>,
        responses: &[(Arc<str>, Arc<Extract>)],
    ) -> Result<Fetched, Failure> {
        let request = self.request(backend, call, responses)?;
        let Some((copies, delay)) = backend.hedge else {
            return self.fetch(backend, request.build()).await;
        };
        let mut running = FuturesUnordered::new();
        running.push(self.attempt(backend, request.build()));
        let mut sent = 1;
        loop {
            let more = sent < copies;
            tokio::select! {
                Some(result) = running.next() => match result {
                    Ok(fetched) if !fetched.status.is_server_error() => return Ok(fetched),
                    failed if !more && running.is_empty() => return failed,
                    _ if more => {
                        running.push(self.attempt(backend, request.build()));
                        sent += 1;
                    }
                    // Copies are still running: one of them may succeed.
                    _ => {}
                },
                () = tokio::time::sleep(delay), if more => {
                    running.push(self.attempt(backend, request.build()));
                    sent += 1;
                }
            }
        }
    }

    fn request(
        &self,
        backend: &Compiled,
        call: &Call<'_>,
        responses: &[(Arc<str>, Arc<Extract>)],
    ) -> Result<Outgoing, Failure> {
        let vars = Vars {
            params: &call.params,
            query: &call.query,
            responses,
        };
        let template = match &backend.target {
            CompiledTarget::Http(template) | CompiledTarget::Local { path: template, .. } => {
                template
            }
        };
        let mut target = template.fill_url(&vars).map_err(Failure::Template)?;
        if backend.forward_query {
            if let Some(query) = call.parts.uri.query() {
                target.push(if target.contains('?') { '&' } else { '?' });
                target.push_str(query);
            }
        }
        let uri: Uri = target.parse().map_err(|_| {
            tracing::warn!(backend = %backend.name, url = %target, "tollgate: a filled backend URL does not parse");
            Failure::Template(FillError::Invalid("the filled URL is not valid".to_owned()))
        })?;
        let mut headers = HeaderMap::new();
        for name in &backend.forward_headers {
            for value in call.parts.headers.get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        backend.claims.apply(&mut headers, call.principal.as_ref());
        let body = match &backend.body {
            Some(template) => {
                let value = template.fill(&vars).map_err(Failure::Template)?;
                headers.insert(CONTENT_TYPE, JSON);
                Bytes::from(value.to_string())
            }
            None => Bytes::new(),
        };
        Ok(Outgoing {
            method: backend.method.clone(),
            uri,
            headers,
            body,
            principal: call.principal.clone(),
        })
    }

    /// One hedged copy, boxed: a `FuturesUnordered` of unboxed borrowing futures trips the
    /// compiler's `Send` inference (rust-lang/rust#102211).
    fn attempt<'a>(
        &'a self,
        backend: &'a Compiled,
        request: Request<Full<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<Fetched, Failure>> + Send + 'a>> {
        Box::pin(self.fetch(backend, request))
    }

    async fn fetch(
        &self,
        backend: &Compiled,
        request: Request<Full<Bytes>>,
    ) -> Result<Fetched, Failure> {
        let response: Response<BackendBody> = match &backend.target {
            CompiledTarget::Http(_) => {
                let request = request.map(upstream_body);
                let response = self.client.send(request).await?;
                response.map(|body| {
                    body.map_err(|error| -> BoxError { Box::new(error) })
                        .boxed_unsync()
                })
            }
            CompiledTarget::Local { call, .. } => call(request).await.map_err(Failure::Service)?,
        };
        let (parts, body) = response.into_parts();
        // After HEAD, 204 or 304 a Content-Length describes a body that is never sent.
        let bodiless = backend.method == Method::HEAD
            || matches!(
                parts.status,
                StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
            );
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|length| length.to_str().ok()?.parse::<u64>().ok());
        if !bodiless && declared.is_some_and(|length| length > backend.max_body as u64) {
            return Err(Failure::TooLarge);
        }
        let body = read_capped(body, backend.max_body).await?;
        let mut kept = HeaderMap::new();
        if !parts.status.is_success() {
            for name in STATUS_HEADERS {
                for value in parts.headers.get_all(&name) {
                    kept.append(name.clone(), value.clone());
                }
            }
        }
        Ok(Fetched {
            status: parts.status,
            content_type: parts.headers.get(CONTENT_TYPE).cloned(),
            kept,
            body,
        })
    }

    /// The merged answer once every backend is done; required failures returned earlier.
    fn respond(&self, outcomes: Vec<Option<Outcome>>) -> Response<Full<Bytes>> {
        let mut status = StatusCode::OK;
        let mut parts = Vec::with_capacity(outcomes.len());
        let mut errors = Map::new();
        for (index, (backend, outcome)) in self.backends.iter().zip(outcomes).enumerate() {
            match outcome {
                Some(Ok(part)) => {
                    // A merged body cannot travel with a status that forbids one.
                    let bodiless = matches!(
                        part.status,
                        StatusCode::NO_CONTENT
                            | StatusCode::RESET_CONTENT
                            | StatusCode::NOT_MODIFIED
                    );
                    if self.status_from == Some(index) && !bodiless {
                        status = part.status;
                    }
                    parts.push((&*backend.name, part.object));
                }
                Some(Err(failure)) => {
                    errors.insert(backend.name.to_string(), failure.json());
                }
                None => {}
            }
        }
        let completed = errors.is_empty();
        let mut merged = match merge(parts, self.merge, self.collision) {
            Ok(merged) => merged,
            Err(conflict) => return refuse(conflict_rejection(&self.name, &conflict)),
        };
        if let (Some(field), false) = (&self.errors_field, completed) {
            merged.insert(field.clone(), Value::Object(errors));
        }
        let body = serde_json::to_vec(&merged).unwrap_or_default();
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(CONTENT_TYPE, JSON);
        response.headers_mut().insert(
            X_TOLLGATE_COMPLETED,
            HeaderValue::from_static(if completed { "true" } else { "false" }),
        );
        response
    }
}

/// The parts of a backend request, built once and copied for each hedged attempt.
struct Outgoing {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    principal: Option<Principal>,
}

impl Outgoing {
    fn build(&self) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        if let Some(principal) = &self.principal {
            request.extensions_mut().insert(principal.clone());
        }
        request
    }
}

/// The answer when a required backend fails: 400 when the request itself cannot fill its
/// templates, 504 when it timed out, 502 otherwise.
fn required_failure(backend: &Compiled, failure: &Failure) -> Response<Full<Bytes>> {
    if let Failure::Template(FillError::Request(reason)) = failure {
        return refuse(Rejection::bad_request(reason.clone()));
    }
    let rejection = if failure.timed_out() {
        Rejection::gateway_timeout()
    } else {
        Rejection::bad_gateway()
    };
    refuse(rejection.with_detail(format!(
        "required backend {:?} {}",
        &*backend.name,
        failure.describe()
    )))
}

/// Reads a body whole, failing as soon as it passes `cap` bytes, so an oversized answer is
/// never buffered past the cap.
async fn read_capped(mut body: BackendBody, cap: usize) -> Result<Bytes, Failure> {
    let mut buffer = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|_| Failure::Broken)?.into_data() else {
            continue; // trailers
        };
        if buffer.len() + data.len() > cap {
            return Err(Failure::TooLarge);
        }
        if buffer.is_empty() && body.is_end_stream() {
            return Ok(data); // one frame: no copy
        }
        buffer.extend_from_slice(&data);
    }
    Ok(buffer.freeze())
}

fn is_json(content_type: &HeaderValue) -> bool {
    let essence = content_type
        .as_bytes()
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    essence.eq_ignore_ascii_case(b"application/json")
        || (essence.len() > 5
            && essence[essence.len() - 5..].eq_ignore_ascii_case(b"+json")
            && essence.contains(&b'/'))
}

fn passthrough(fetched: &Fetched) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(fetched.body.clone()));
    *response.status_mut() = fetched.status;
    *response.headers_mut() = fetched.kept.clone();
    response
        .headers_mut()
        .insert(X_TOLLGATE_COMPLETED, HeaderValue::from_static("false"));
    if let Some(content_type) = &fetched.content_type {
        response
            .headers_mut()
            .insert(CONTENT_TYPE, content_type.clone());
    }
    response
}

fn conflict_rejection(endpoint: &str, conflict: &MergeConflict) -> Rejection {
    tracing::warn!(endpoint, %conflict, "tollgate: aggregate merge conflict");
    Rejection::bad_gateway().with_detail(conflict.to_string())
}

fn refuse(rejection: Rejection) -> Response<Full<Bytes>> {
    rejection.into_response_with(Full::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_media_types_are_recognised() {
        for yes in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/problem+json",
            "application/vnd.acme.v2+json",
        ] {
            assert!(is_json(&HeaderValue::from_static(yes)), "{yes}");
        }
        for no in [
            "text/html",
            "application/jsonp",
            "+json",
            "text/plain; x=application/json",
        ] {
            assert!(!is_json(&HeaderValue::from_static(no)), "{no}");
        }
    }

    fn mock() -> crate::Mock {
        crate::Mock::json(StatusCode::OK, &serde_json::json!({}))
    }

    #[test]
    fn misconfigured_endpoints_are_refused_naming_the_backend() {
        let cases: Vec<(AggregateBuilder, &str)> = vec![
            (Aggregate::builder(), "at least one backend"),
            (
                Aggregate::builder()
                    .backend(Backend::service("a", mock()))
                    .backend(Backend::service("a", mock())),
                "two backends are named \"a\"",
            ),
            (
                Aggregate::builder().backend(Backend::service("query", mock())),
                "invalid backend name",
            ),
            (
                Aggregate::builder().backend(Backend::service("a", mock()).path("/x/{id}")),
                "{id} is not a parameter",
            ),
            (
                Aggregate::builder()
                    .backend(Backend::service("a", mock()).path("/x/{b.id}"))
                    .backend(Backend::service("b", mock())),
                "uses \"b\", which is not a backend declared before it",
            ),
            (
                Aggregate::builder().backend(Backend::http("a", "https://h/x")),
                "TLS",
            ),
            (
                Aggregate::builder().backend(Backend::http("a", "http:///x")),
                "expected http://host",
            ),
            (
                Aggregate::builder()
                    .route("/x/{id}")
                    .backend(Backend::http("a", "http://h{id}.internal/x")),
                "only appear in the path",
            ),
            (
                Aggregate::builder()
                    .route("/x/{id}")
                    .backend(Backend::http("a", "http://{id}/x")),
                "expected http://host",
            ),
            (
                Aggregate::builder().backend(
                    Backend::service("a", mock())
                        .method(Method::POST)
                        .hedge(2, Duration::from_millis(5)),
                ),
                "not idempotent",
            ),
            (
                Aggregate::builder().backend(Backend::service("a", mock()).allow(["a..b"])),
                "invalid field path",
            ),
            (
                Aggregate::builder()
                    .backend(Backend::service("a", mock()).body(serde_json::json!({}))),
                "cannot carry a body",
            ),
            (
                Aggregate::builder()
                    .backend(Backend::service("a", mock()))
                    .status_from("b"),
                "\"b\"",
            ),
            (
                Aggregate::builder()
                    .route("/x/{id")
                    .backend(Backend::service("a", mock())),
                "invalid route",
            ),
            (
                Aggregate::builder()
                    .backend(Backend::service("a", mock()))
                    .concurrency_limit(0),
                "at least 1",
            ),
        ];
        for (builder, expected) in cases {
            let shown = format!("{builder:?}");
            let error = builder.build().expect_err(&shown).to_string();
            assert!(error.contains(expected), "{shown}: {error}");
        }
    }
}
