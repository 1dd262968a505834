//! The custom authorizer: the application's own code decides who is calling, like an Amazon
//! API Gateway Lambda `REQUEST` authorizer. The user-facing documentation (example, status
//! mapping, cache) is on [`CustomAuthorizer`], since this module is private.

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::Method;
use moka::future::Cache;
use moka::ops::compute::Op;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use tollgate_core::{BearerError, Clock, Principal, Rejection, SharedClock, Stage};
use tower::Service;

use crate::{AuthRequest, Authorizer, Decision, Verdict};

/// A type-erased error, what a custom authorizer may fail with.
pub type BoxError = Box<dyn Error + Send + Sync>;

/// How long a decision is cached unless [`CustomAuthorizerBuilder::ttl`] says otherwise.
const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// The longest TTL a decision may be cached for, as in Amazon API Gateway.
const MAX_TTL: Duration = Duration::from_secs(3600);
/// How many decisions are cached unless [`CustomAuthorizerBuilder::capacity`] says otherwise.
const DEFAULT_CAPACITY: u64 = 10_000;
/// How long the authorizer may take unless [`CustomAuthorizerBuilder::timeout`] says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Identities whose cache key is longer than this are decided afresh every time, so that the
/// cache's memory stays bounded by its capacity times this.
const MAX_CACHED_KEY_BYTES: usize = 8 * 1024;
/// How long a client is told to wait after the authorizer timed out.
const RETRY_AFTER_TIMEOUT: Duration = Duration::from_secs(1);

/// Where a [`CustomAuthorizer`] reads the caller's identity from, in Amazon API Gateway's
/// vocabulary. The values of all sources are handed to the authorizer as an [`Identity`] and
/// together form the key its decision is cached under.
///
/// A header, query parameter or stage variable that is absent or empty means the request has
/// no credentials: the authorizer is not called. The method, path and route are always there;
/// listing them only makes them part of the cache key.
///
/// Identity sources also parse from (and display as) API Gateway's HTTP API syntax, so they
/// can come from a configuration file:
///
/// ```
/// use tollgate_auth::IdentitySource;
///
/// let source: IdentitySource = "$request.header.Authorization".parse()?;
/// assert_eq!(source, IdentitySource::Header(http::header::AUTHORIZATION));
/// assert_eq!(
///     "$request.querystring.token".parse::<IdentitySource>()?,
///     IdentitySource::Query("token".into())
/// );
/// assert_eq!(source.to_string(), "$request.header.authorization");
/// # Ok::<_, tollgate_auth::CustomAuthorizerError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum IdentitySource {
    /// A request header (`$request.header.NAME`). Sent twice, or not UTF-8, it is refused with
    /// 401 `error="invalid_request"`.
    Header(HeaderName),
    /// A query string parameter (`$request.querystring.NAME`). Name and value are taken as
    /// they are in the URI, without percent-decoding. Sent twice, it is refused with 401
    /// `error="invalid_request"`.
    Query(String),
    /// The request method (`$context.httpMethod`).
    Method,
    /// The request path (`$context.path`), as it is in the URI.
    Path,
    /// The route the request matched (`$context.routeKey`): see
    /// [`AuthRequest::route`](crate::AuthRequest::route). When no route is known the value is
    /// absent, which does not count as missing credentials.
    Route,
    /// A variable of the [`Stage`] a stage router inserted (`$stageVariables.NAME`).
    StageVariable(String),
}

impl fmt::Display for IdentitySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header(name) => write!(f, "$request.header.{name}"),
            Self::Query(name) => write!(f, "$request.querystring.{name}"),
            Self::Method => f.write_str("$context.httpMethod"),
            Self::Path => f.write_str("$context.path"),
            Self::Route => f.write_str("$context.routeKey"),
            Self::StageVariable(name) => write!(f, "$stageVariables.{name}"),
        }
    }
}

impl FromStr for IdentitySource {
    type Err = CustomAuthorizerError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let named = |prefix: &str| text.strip_prefix(prefix).filter(|name| !name.is_empty());
        if let Some(name) = named("$request.header.") {
            return HeaderName::try_from(name)
                .map(Self::Header)
                .map_err(|_| CustomAuthorizerError::InvalidHeaderName(text.to_owned()));
        }
        if let Some(name) = named("$request.querystring.") {
            return Ok(Self::Query(name.to_owned()));
        }
        if let Some(name) = named("$stageVariables.") {
            return Ok(Self::StageVariable(name.to_owned()));
        }
        match text {
            "$context.httpMethod" => Ok(Self::Method),
            "$context.path" => Ok(Self::Path),
            "$context.routeKey" => Ok(Self::Route),
            _ => Err(CustomAuthorizerError::UnknownIdentitySource(
                text.to_owned(),
            )),
        }
    }
}

impl<'de> Deserialize<'de> for IdentitySource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What a [`CustomAuthorizer`] hands to the application's authorizer: the values of its
/// [`IdentitySource`]s, and the request's method, path and route.
///
/// Every header, query parameter and stage variable listed as a source is present and not
/// empty (otherwise the authorizer is not called). `Debug` output hides their values, which
/// are usually credentials.
///
/// A decision is cached by the sources' values and, by default, the method and route. A
/// decision that depends on more (the exact path under `/orders/{id}`, say) needs that listed
/// as a source too, or a cached decision is reused where it should not be.
#[derive(Clone)]
pub struct Identity {
    sources: Arc<[IdentitySource]>,
    /// The value of each source, in order; `None` for the method, path and route, which are
    /// read from the fields below.
    values: Box<[Option<Box<str>>]>,
    method: Method,
    path: Box<str>,
    route: Option<Box<str>>,
}

/// Why a request's identity could not be read.
#[derive(Debug)]
enum Unread {
    /// A source is absent or empty: the request has no credentials.
    Missing,
    /// A source is malformed.
    Invalid(Box<Rejection>),
}

impl Unread {
    fn invalid(source: &IdentitySource, problem: &str) -> Self {
        Self::Invalid(Box::new(
            Rejection::unauthorized(BearerError::InvalidRequest)
                .with_detail(format!("the identity source {source} {problem}")),
        ))
    }
}

impl Identity {
    fn read(sources: &Arc<[IdentitySource]>, request: &AuthRequest<'_>) -> Result<Self, Unread> {
        let head = &request.head;
        let values = sources
            .iter()
            .map(|source| {
                let value = match source {
                    IdentitySource::Header(name) => {
                        let mut all = head.headers.get_all(name).into_iter();
                        let Some(value) = all.next() else {
                            return Err(Unread::Missing);
                        };
                        if all.next().is_some() {
                            return Err(Unread::invalid(source, "was sent more than once"));
                        }
                        std::str::from_utf8(value.as_bytes())
                            .map_err(|_| Unread::invalid(source, "is not UTF-8"))?
                    }
                    IdentitySource::Query(name) => {
                        let mut found = None;
                        for pair in head.uri.query().unwrap_or_default().split('&') {
                            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                            if key == name && found.replace(value).is_some() {
                                return Err(Unread::invalid(source, "was sent more than once"));
                            }
                        }
                        found.ok_or(Unread::Missing)?
                    }
                    IdentitySource::StageVariable(name) => head
                        .extensions
                        .get::<Stage>()
                        .and_then(|stage| stage.variable(name))
                        .ok_or(Unread::Missing)?,
                    IdentitySource::Method | IdentitySource::Path | IdentitySource::Route => {
                        return Ok(None)
                    }
                };
                if value.trim().is_empty() {
                    return Err(Unread::Missing);
                }
                Ok(Some(Box::from(value)))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            sources: sources.clone(),
            values,
            method: head.method.clone(),
            path: head.uri.path().into(),
            route: request.route.map(Box::from),
        })
    }

    /// The value of one source, by position.
    fn value(&self, index: usize) -> Option<&str> {
        match self.sources.get(index)? {
            IdentitySource::Method => Some(self.method.as_str()),
            IdentitySource::Path => Some(&self.path),
            IdentitySource::Route => self.route.as_deref(),
            _ => self.values.get(index)?.as_deref(),
        }
    }

    /// The value of the first source `matches` picks.
    fn find(&self, matches: impl Fn(&IdentitySource) -> bool) -> Option<&str> {
        let index = self.sources.iter().position(matches)?;
        self.value(index)
    }

    /// The value of the header source `name` (case-insensitive), or `None` when that header
    /// is not an identity source.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.find(
            |s| matches!(s, IdentitySource::Header(h) if h.as_str().eq_ignore_ascii_case(name)),
        )
    }

    /// The value of the query parameter source `name`, as it is in the URI.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.find(|s| matches!(s, IdentitySource::Query(q) if q == name))
    }

    /// The value of the stage variable source `name`.
    pub fn stage_variable(&self, name: &str) -> Option<&str> {
        self.find(|s| matches!(s, IdentitySource::StageVariable(v) if v == name))
    }

    /// The request method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The request path, as it is in the URI.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The route the request matched (`"GET /orders/{id}"` from the layer's route table, or
    /// axum's matched path `"/orders/{id}"`), if known.
    pub fn route(&self) -> Option<&str> {
        self.route.as_deref()
    }

    /// Every source with its value, in the order they were configured; the value is `None`
    /// only for [`IdentitySource::Route`] when no route is known.
    pub fn iter(&self) -> impl Iterator<Item = (&IdentitySource, Option<&str>)> {
        self.sources
            .iter()
            .enumerate()
            .map(|(index, source)| (source, self.value(index)))
    }

    /// The cache key: every source's value and, per route, the method and the route (or the
    /// path when no route is known). Each part is length-prefixed so that no two different
    /// identities share a key.
    fn cache_key(&self, per_route: bool) -> Box<[u8]> {
        fn push(key: &mut Vec<u8>, tag: u8, value: &str) {
            key.push(tag);
            key.extend_from_slice(&(value.len() as u64).to_le_bytes());
            key.extend_from_slice(value.as_bytes());
        }
        let part = |value: &str| 9 + value.len();
        let mut length: usize = self.iter().map(|(_, v)| v.map_or(1, part)).sum();
        if per_route {
            length +=
                part(self.method.as_str()) + part(self.route.as_deref().unwrap_or(&self.path));
        }
        let mut key = Vec::with_capacity(length);
        for (_, value) in self.iter() {
            match value {
                Some(value) => push(&mut key, b'v', value),
                None => key.push(b'-'),
            }
        }
        if per_route {
            // axum's matched path has no method, and GET and DELETE on one path are two routes.
            push(&mut key, b'm', self.method.as_str());
            match &self.route {
                Some(route) => push(&mut key, b'r', route),
                None => push(&mut key, b'p', &self.path),
            }
        }
        key.into_boxed_slice()
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        /// The sources and their values, credentials hidden.
        struct Sources<'a>(&'a Identity);

        impl fmt::Debug for Sources<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut map = f.debug_map();
                for (source, value) in self.0.iter() {
                    let key = format_args!("{source}");
                    match source {
                        IdentitySource::Method | IdentitySource::Path | IdentitySource::Route => {
                            map.entry(&key, &value)
                        }
                        // Usually credentials: never in logs.
                        _ => map.entry(&key, &format_args!("<redacted>")),
                    };
                }
                map.finish()
            }
        }

        f.debug_struct("Identity")
            .field("sources", &Sources(self))
            .field("method", &self.method)
            .field("path", &self.path)
            .field("route", &self.route)
            .finish()
    }
}

/// What the application's authorizer answers.
#[derive(Clone, Debug, PartialEq)]
pub enum AuthorizerResponse {
    /// The caller may go on, as this principal.
    Allow(Allow),
    /// The caller is known but may not make this request: 403.
    Deny,
    /// The credentials are not valid: 401 with `WWW-Authenticate: Bearer
    /// error="invalid_token"`.
    Unauthorized,
}

impl From<Allow> for AuthorizerResponse {
    fn from(allow: Allow) -> Self {
        Self::Allow(allow)
    }
}

/// An allowing answer: the principal id and what the service behind should know about the
/// caller. It becomes the request's [`Principal`]: the principal id its subject, the context
/// its claims.
///
/// ```
/// use tollgate_auth::{Allow, AuthorizerResponse};
///
/// let response: AuthorizerResponse = Allow::new("user-42")
///     .context("tenant", "acme")
///     .context("tier", 3)
///     .scopes(["orders:read"])
///     .into();
/// # let _ = response;
/// ```
#[derive(Clone, PartialEq)]
#[must_use]
pub struct Allow {
    principal_id: Arc<str>,
    context: Map<String, Value>,
    scopes: Vec<String>,
    usage_identifier_key: Option<Arc<str>>,
}

impl Allow {
    /// Allows the caller identified as `principal_id`.
    pub fn new(principal_id: impl Into<Arc<str>>) -> Self {
        Self {
            principal_id: principal_id.into(),
            context: Map::new(),
            scopes: Vec::new(),
            usage_identifier_key: None,
        }
    }

    /// Adds one context value, which the service behind reads as a claim of the
    /// [`Principal`] (and [`AuthBuilder::claim_header`](crate::AuthBuilder::claim_header) can
    /// copy into a header).
    pub fn context(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.context.insert(key.into(), value.into());
        self
    }

    /// Grants scopes, checked against the route's [`RoutePolicy`](crate::RoutePolicy).
    pub fn scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scopes.extend(scopes.into_iter().map(Into::into));
        self
    }

    /// The API key the usage-plan layer should meter this caller by (API Gateway's
    /// `usageIdentifierKey`). A secret: `Debug` output hides it.
    pub fn usage_identifier_key(mut self, key: impl Into<Arc<str>>) -> Self {
        self.usage_identifier_key = Some(key.into());
        self
    }

    fn into_principal(self) -> Principal {
        let principal = Principal::builder()
            .subject(self.principal_id)
            .scopes(self.scopes)
            .claims(self.context);
        match self.usage_identifier_key {
            Some(key) => principal.usage_identifier_key(key),
            None => principal,
        }
        .build()
    }
}

impl fmt::Debug for Allow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Allow")
            .field("principal_id", &self.principal_id)
            .field("context", &self.context)
            .field("scopes", &self.scopes)
            .field(
                "usage_identifier_key",
                &self.usage_identifier_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Why a [`CustomAuthorizer`] could not be built, or an [`IdentitySource`] not parsed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CustomAuthorizerError {
    /// The result TTL is longer than an hour.
    #[error("the authorizer result TTL is {0:?}, but at most 3600 s (one hour) is allowed")]
    TtlTooLong(Duration),
    /// The timeout is zero, so every call would time out.
    #[error("the authorizer timeout is 0, but must be more than 0 (the default is 5 s)")]
    ZeroTimeout,
    /// The cache capacity is zero while caching is on.
    #[error(
        "the decision cache capacity is 0 entries, but must be at least 1; \
         to turn caching off, set the TTL to 0"
    )]
    ZeroCapacity,
    /// The text is not an identity source expression.
    #[error(
        "identity source {0:?} is not one of $request.header.NAME, $request.querystring.NAME, \
         $stageVariables.NAME, $context.httpMethod, $context.path or $context.routeKey"
    )]
    UnknownIdentitySource(String),
    /// The header an identity source names is not a valid header name.
    #[error("identity source {0:?} names a header, but not with a valid header name")]
    InvalidHeaderName(String),
}

/// An [`Authorizer`] that asks the application's own code, like an Amazon API Gateway Lambda
/// `REQUEST` authorizer: it reads the request's [`IdentitySource`]s, hands their values to a
/// function or tower service as an [`Identity`], and caches the [`AuthorizerResponse`].
///
/// # Example
///
/// ```
/// use axum::{body::Body, routing::get, Json, Router};
/// use http::header::AUTHORIZATION;
/// use http::{Request, StatusCode};
/// use tollgate_auth::{
///     Allow, AuthLayer, AuthorizerResponse, BoxError, CustomAuthorizer, Identity, IdentitySource,
/// };
/// use tollgate_core::Principal;
/// use tower::ServiceExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let authorizer = CustomAuthorizer::builder([IdentitySource::Header(AUTHORIZATION)])
///     .from_fn(|identity: Identity| async move {
///         // Look the token up in a session store, ask another service, ...
///         Ok::<_, BoxError>(match identity.header("authorization") {
///             Some("Bearer let-me-in") => Allow::new("user-42").context("tenant", "acme").into(),
///             Some(_) => AuthorizerResponse::Unauthorized,
///             None => AuthorizerResponse::Deny,
///         })
///     })?;
///
/// let app = Router::new()
///     .route(
///         "/me",
///         get(|principal: Principal| async move { Json(principal.claims().clone()) }),
///     )
///     .layer(AuthLayer::new(authorizer));
///
/// let request = Request::get("/me")
///     .header(AUTHORIZATION, "Bearer let-me-in")
///     .body(Body::empty())?;
/// let response = app.clone().oneshot(request).await?;
/// assert_eq!(response.status(), StatusCode::OK);
///
/// // No Authorization header: the authorizer is not even called.
/// let response = app.oneshot(Request::get("/me").body(Body::empty())?).await?;
/// assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
/// # Ok(())
/// # }
/// ```
///
/// # How a request is decided
///
/// 1. The identity sources are read. When a header, query parameter or stage variable among
///    them is absent or empty, the request has no credentials: the authorizer is not called,
///    and the layer answers 401 with `WWW-Authenticate: Bearer` (or lets the request through
///    on an anonymous route). A source sent twice, or a header that is not UTF-8, is refused
///    with 401 `error="invalid_request"`.
/// 2. A decision cached for the same identity (and route) is reused until its TTL has passed.
/// 3. Otherwise the authorizer is called — once for all concurrent requests that share a
///    cache key — and its answer becomes the response:
///
/// | the authorizer | the client gets | cached |
/// |---|---|---|
/// | [`AuthorizerResponse::Allow`] | the service's response; the service sees a [`Principal`] | yes |
/// | [`AuthorizerResponse::Deny`] | 403 problem+json | yes |
/// | [`AuthorizerResponse::Unauthorized`] | 401, `WWW-Authenticate: Bearer error="invalid_token"` | yes |
/// | an error | 500; the error goes to `tracing`, never to the client | no |
/// | no answer within the [timeout](CustomAuthorizerBuilder::timeout) | 503, `Retry-After: 1` | no |
///
/// An allowed caller must still hold the scopes the route's
/// [`RoutePolicy`](crate::RoutePolicy) asks for.
///
/// # The decision cache
///
/// A decision is cached under the values of the identity sources and, by default, the
/// request's method and route (or its path when the layer knows no route). So an `Allow` for
/// `GET /orders` is never reused for `DELETE /admin` with the same token — the classic pitfall
/// of API Gateway's cached policies. When decisions depend on the caller only,
/// [`cache_per_route(false)`](CustomAuthorizerBuilder::cache_per_route) shares them across
/// routes.
///
/// Decisions live for the [TTL](CustomAuthorizerBuilder::ttl) (5 minutes by default, at most
/// an hour, 0 turns caching off) measured on the builder's [clock](CustomAuthorizerBuilder::clock).
/// The cache holds at most [`capacity`](CustomAuthorizerBuilder::capacity) decisions (10 000
/// by default) and evicts the least useful first. Identities whose key is longer than 8 KiB
/// are not cached.
///
/// # Observability
///
/// Each call of the application's authorizer increments the `metrics` counter
/// `tollgate_auth_custom_calls_total`; denials, refused credentials and timeouts are `tracing`
/// events at DEBUG, errors at ERROR.
///
/// The timeout needs a tokio runtime with its timer, as axum and `#[tokio::main]` have.
#[derive(Clone)]
pub struct CustomAuthorizer {
    shared: Arc<Shared>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type AuthorizeFn =
    Box<dyn Fn(Identity) -> BoxFuture<Result<AuthorizerResponse, BoxError>> + Send + Sync>;

struct Shared {
    sources: Arc<[IdentitySource]>,
    authorize: AuthorizeFn,
    /// `None` when the TTL is 0.
    cache: Option<Cache<Box<[u8]>, Arc<Cached>, foldhash::fast::RandomState>>,
    ttl: Duration,
    per_route: bool,
    timeout: Duration,
    clock: SharedClock,
    denied: Rejection,
    unauthorized: Rejection,
}

/// A decision as the cache keeps it.
struct Cached {
    outcome: Outcome,
    /// When the decision stops being reused, on the builder's clock.
    expires_at: Duration,
}

enum Outcome {
    Allow(Principal),
    Deny,
    Unauthorized,
}

/// Why the application's authorizer gave no answer. Never cached.
#[derive(Debug)]
enum CallError {
    TimedOut,
    Failed(BoxError),
}

impl CustomAuthorizer {
    /// Starts an authorizer that reads `identity_sources`; finish it with
    /// [`from_fn`](CustomAuthorizerBuilder::from_fn) or
    /// [`from_service`](CustomAuthorizerBuilder::from_service).
    pub fn builder<I>(identity_sources: I) -> CustomAuthorizerBuilder
    where
        I: IntoIterator<Item = IdentitySource>,
    {
        CustomAuthorizerBuilder {
            sources: identity_sources.into_iter().collect(),
            ttl: DEFAULT_TTL,
            capacity: DEFAULT_CAPACITY,
            per_route: true,
            timeout: DEFAULT_TIMEOUT,
            clock: SharedClock::default(),
        }
    }

    /// The identity sources, in the order they were given.
    pub fn identity_sources(&self) -> &[IdentitySource] {
        &self.shared.sources
    }
}

impl fmt::Debug for CustomAuthorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &*self.shared;
        f.debug_struct("CustomAuthorizer")
            .field("sources", &shared.sources)
            .field("ttl", &shared.ttl)
            .field("per_route", &shared.per_route)
            .field("timeout", &shared.timeout)
            .finish_non_exhaustive()
    }
}

impl Authorizer for CustomAuthorizer {
    type Future = BoxFuture<Decision>;

    fn authorize(&self, request: &AuthRequest<'_>) -> Verdict<Self::Future> {
        match Identity::read(&self.shared.sources, request) {
            Ok(identity) => Verdict::Pending(Box::pin(self.shared.clone().decide(identity))),
            Err(Unread::Missing) => {
                tracing::trace!("tollgate auth: an identity source is missing");
                Verdict::Ready(Decision::NoCredentials)
            }
            Err(Unread::Invalid(rejection)) => Verdict::Ready(Decision::Deny(rejection)),
        }
    }
}

impl Shared {
    async fn decide(self: Arc<Self>, identity: Identity) -> Decision {
        if let Some(cache) = &self.cache {
            let key = identity.cache_key(self.per_route);
            if key.len() <= MAX_CACHED_KEY_BYTES {
                return match self.cached(cache, key, identity).await {
                    Ok(cached) => self.decision(&cached.outcome),
                    Err(error) => self.refusal(&error),
                };
            }
        }
        match self.call(identity).await {
            Ok(outcome) => self.decision(&outcome),
            Err(error) => self.refusal(&error),
        }
    }

    /// The cached decision for `key`, or a fresh one; concurrent misses share one call.
    async fn cached(
        &self,
        cache: &Cache<Box<[u8]>, Arc<Cached>, foldhash::fast::RandomState>,
        key: Box<[u8]>,
        identity: Identity,
    ) -> Result<Arc<Cached>, Arc<CallError>> {
        if let Some(cached) = cache.get(&key).await {
            if self.clock.now() < cached.expires_at {
                return Ok(cached);
            }
            // Remove only this stale entry: a fresh one another request stored since stays.
            cache
                .entry_by_ref(&key)
                .and_compute_with(|current| {
                    std::future::ready(match current {
                        Some(entry) if Arc::ptr_eq(entry.value(), &cached) => Op::Remove,
                        _ => Op::Nop,
                    })
                })
                .await;
        }
        cache
            .try_get_with(key, async {
                let outcome = self.call(identity).await?;
                let expires_at = self.clock.now().saturating_add(self.ttl);
                Ok(Arc::new(Cached {
                    outcome,
                    expires_at,
                }))
            })
            .await
    }

    /// Calls the application's authorizer, within the timeout.
    async fn call(&self, identity: Identity) -> Result<Outcome, CallError> {
        metrics::counter!("tollgate_auth_custom_calls_total").increment(1);
        match tokio::time::timeout(self.timeout, (self.authorize)(identity)).await {
            Ok(Ok(AuthorizerResponse::Allow(allow))) => Ok(Outcome::Allow(allow.into_principal())),
            Ok(Ok(AuthorizerResponse::Deny)) => {
                tracing::debug!("tollgate auth: the custom authorizer denied the request");
                Ok(Outcome::Deny)
            }
            Ok(Ok(AuthorizerResponse::Unauthorized)) => {
                tracing::debug!("tollgate auth: the custom authorizer refused the credentials");
                Ok(Outcome::Unauthorized)
            }
            Ok(Err(error)) => Err(CallError::Failed(error)),
            Err(_) => {
                tracing::debug!(
                    timeout = ?self.timeout,
                    "tollgate auth: the custom authorizer did not answer in time"
                );
                Err(CallError::TimedOut)
            }
        }
    }

    fn decision(&self, outcome: &Outcome) -> Decision {
        match outcome {
            Outcome::Allow(principal) => Decision::Allow(principal.clone()),
            Outcome::Deny => Decision::deny(self.denied.clone()),
            Outcome::Unauthorized => Decision::deny(self.unauthorized.clone()),
        }
    }

    fn refusal(&self, error: &CallError) -> Decision {
        Decision::deny(match error {
            CallError::TimedOut => Rejection::unavailable(RETRY_AFTER_TIMEOUT)
                .with_detail("the authorizer did not answer in time"),
            CallError::Failed(error) => Rejection::internal(&**error),
        })
    }
}

/// Builds a [`CustomAuthorizer`]; the defaults are a 5-minute TTL per route, 10 000 cached
/// decisions and a 5-second timeout.
#[must_use]
pub struct CustomAuthorizerBuilder {
    sources: Vec<IdentitySource>,
    ttl: Duration,
    capacity: u64,
    per_route: bool,
    timeout: Duration,
    clock: SharedClock,
}

impl fmt::Debug for CustomAuthorizerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CustomAuthorizerBuilder")
            .field("sources", &self.sources)
            .field("ttl", &self.ttl)
            .field("capacity", &self.capacity)
            .field("per_route", &self.per_route)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl CustomAuthorizerBuilder {
    /// How long a decision is reused (API Gateway's `authorizerResultTtlInSeconds`): 5 minutes
    /// unless set, at most an hour; [`Duration::ZERO`] calls the authorizer on every request.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How many decisions are cached at most: 10 000 unless set.
    pub fn capacity(mut self, entries: u64) -> Self {
        self.capacity = entries;
        self
    }

    /// Whether a decision is cached per method and route (the default) or shared by every
    /// route the same identity calls. Share only when the decision does not depend on the
    /// route.
    pub fn cache_per_route(mut self, per_route: bool) -> Self {
        self.per_route = per_route;
        self
    }

    /// How long the authorizer may take before the request is refused with 503: 5 seconds
    /// unless set.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The clock cached decisions expire by (default: the system clock). Tests pass a
    /// `ManualClock`.
    pub fn clock(mut self, clock: impl Into<SharedClock>) -> Self {
        self.clock = clock.into();
        self
    }

    /// Builds the authorizer around an async function.
    pub fn from_fn<F, Fut, E>(self, authorize: F) -> Result<CustomAuthorizer, CustomAuthorizerError>
    where
        F: Fn(Identity) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<AuthorizerResponse, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let authorize: AuthorizeFn = Box::new(move |identity| {
            let answer = authorize(identity);
            Box::pin(async move { answer.await.map_err(Into::into) })
        });
        self.build(authorize)
    }

    /// Builds the authorizer around a tower service; each call goes to a clone of it.
    pub fn from_service<S>(self, service: S) -> Result<CustomAuthorizer, CustomAuthorizerError>
    where
        S: Service<Identity, Response = AuthorizerResponse> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        self.from_fn(move |identity| {
            let mut service = service.clone();
            async move {
                std::future::poll_fn(|cx| service.poll_ready(cx))
                    .await
                    .map_err(Into::into)?;
                service.call(identity).await.map_err(Into::into)
            }
        })
    }

    fn build(self, authorize: AuthorizeFn) -> Result<CustomAuthorizer, CustomAuthorizerError> {
        if self.ttl > MAX_TTL {
            return Err(CustomAuthorizerError::TtlTooLong(self.ttl));
        }
        if self.timeout.is_zero() {
            return Err(CustomAuthorizerError::ZeroTimeout);
        }
        let cache = if self.ttl.is_zero() {
            None
        } else if self.capacity == 0 {
            return Err(CustomAuthorizerError::ZeroCapacity);
        } else {
            // moka's own expiry reclaims memory; whether a decision is still valid is
            // decided by the builder's clock.
            Some(
                Cache::builder()
                    .max_capacity(self.capacity)
                    .time_to_live(self.ttl)
                    .build_with_hasher(foldhash::fast::RandomState::default()),
            )
        };
        Ok(CustomAuthorizer {
            shared: Arc::new(Shared {
                sources: self.sources.into(),
                authorize,
                cache,
                ttl: self.ttl,
                per_route: self.per_route,
                timeout: self.timeout,
                clock: self.clock,
                denied: Rejection::forbidden()
                    .with_detail("the authorizer denied this request")
                    .prerendered(),
                unauthorized: Rejection::unauthorized(BearerError::InvalidToken)
                    .with_detail("the authorizer refused the credentials")
                    .prerendered(),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::AUTHORIZATION;
    use http::{Extensions, HeaderMap, HeaderValue, Uri};
    use tollgate_core::RequestHead;

    struct Parts {
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        extensions: Extensions,
    }

    impl Parts {
        fn get(uri: &'static str) -> Self {
            Self {
                method: Method::GET,
                uri: Uri::from_static(uri),
                headers: HeaderMap::new(),
                extensions: Extensions::new(),
            }
        }

        fn header(mut self, name: HeaderName, value: &'static [u8]) -> Self {
            let value = HeaderValue::from_bytes(value).unwrap();
            self.headers.append(name, value);
            self
        }

        fn read(
            &self,
            sources: &[IdentitySource],
            route: Option<&str>,
        ) -> Result<Identity, Unread> {
            let head = RequestHead {
                method: &self.method,
                uri: &self.uri,
                headers: &self.headers,
                extensions: &self.extensions,
            };
            Identity::read(&sources.into(), &AuthRequest { head, route })
        }
    }

    fn query(name: &str) -> IdentitySource {
        IdentitySource::Query(name.into())
    }

    fn invalid_detail(result: Result<Identity, Unread>) -> String {
        match result {
            Err(Unread::Invalid(rejection)) => rejection.detail().unwrap_or_default().to_owned(),
            Err(Unread::Missing) => panic!("expected an invalid identity, got a missing one"),
            Ok(identity) => panic!("expected an invalid identity, got {identity:?}"),
        }
    }

    #[test]
    fn cache_keys_of_different_identities_differ_even_when_their_values_concatenate_alike() {
        let sources = [query("a"), query("b")];
        let one = Parts::get("/x?a=ab&b=c").read(&sources, None).unwrap();
        let two = Parts::get("/x?a=a&b=bc").read(&sources, None).unwrap();
        assert_ne!(one.cache_key(true), two.cache_key(true));
        assert_ne!(one.cache_key(false), two.cache_key(false));
    }

    #[test]
    fn cache_key_per_route_covers_method_and_route_or_path() {
        let sources = [IdentitySource::Header(AUTHORIZATION)];
        let read = |parts: Parts, route| {
            parts
                .header(AUTHORIZATION, b"t")
                .read(&sources, route)
                .unwrap()
        };
        let get = read(Parts::get("/orders/1"), Some("/orders/{id}"));
        let get_other_id = read(Parts::get("/orders/2"), Some("/orders/{id}"));
        let mut delete = Parts::get("/orders/1");
        delete.method = Method::DELETE;
        let delete = read(delete, Some("/orders/{id}"));
        let unrouted = read(Parts::get("/orders/{id}"), None);

        assert_eq!(get.cache_key(true), get_other_id.cache_key(true));
        assert_ne!(get.cache_key(true), delete.cache_key(true));
        assert_ne!(get.cache_key(true), unrouted.cache_key(true));
        assert_eq!(get.cache_key(false), delete.cache_key(false));
    }

    #[test]
    fn query_values_are_taken_raw_and_repeats_are_refused() {
        let identity = Parts::get("/x?a=1&token=abc%20d&flag")
            .read(&[query("token")], None)
            .unwrap();
        assert_eq!(identity.query("token"), Some("abc%20d"));

        let detail = invalid_detail(Parts::get("/x?token=a&token=b").read(&[query("token")], None));
        assert_eq!(
            detail,
            "the identity source $request.querystring.token was sent more than once"
        );
        assert!(matches!(
            Parts::get("/x?flag&token=").read(&[query("token")], None),
            Err(Unread::Missing)
        ));
    }

    #[test]
    fn headers_sent_twice_or_not_utf8_are_invalid_and_blank_ones_missing() {
        let sources = [IdentitySource::Header(AUTHORIZATION)];
        let twice = Parts::get("/")
            .header(AUTHORIZATION, b"a")
            .header(AUTHORIZATION, b"b");
        assert!(invalid_detail(twice.read(&sources, None)).ends_with("was sent more than once"));
        let latin1 = Parts::get("/").header(AUTHORIZATION, b"caf\xe9");
        assert!(invalid_detail(latin1.read(&sources, None)).ends_with("is not UTF-8"));
        let blank = Parts::get("/").header(AUTHORIZATION, b"  ");
        assert!(matches!(blank.read(&sources, None), Err(Unread::Missing)));
        let utf8 = Parts::get("/").header(AUTHORIZATION, "café".as_bytes());
        assert_eq!(
            utf8.read(&sources, None).unwrap().header("Authorization"),
            Some("café")
        );
    }

    #[test]
    fn stage_variables_come_from_the_stage_and_are_missing_without_one() {
        let sources = [IdentitySource::StageVariable("tenant".into())];
        let bare = Parts::get("/");
        assert!(matches!(bare.read(&sources, None), Err(Unread::Missing)));
        let mut staged = Parts::get("/");
        staged
            .extensions
            .insert(Stage::new("prod").with_variable("tenant", "acme"));
        let identity = staged.read(&sources, None).unwrap();
        assert_eq!(identity.stage_variable("tenant"), Some("acme"));
    }

    #[test]
    fn debug_output_hides_credentials() {
        let identity = Parts::get("/me?token=q-secret")
            .header(AUTHORIZATION, b"Bearer h-secret")
            .read(
                &[
                    IdentitySource::Header(AUTHORIZATION),
                    query("token"),
                    IdentitySource::Path,
                ],
                None,
            )
            .unwrap();
        let debug = format!("{identity:?}");
        assert!(!debug.contains("secret"), "{debug}");
        assert!(debug.contains(r#"$context.path: Some("/me")"#), "{debug}");

        let allow = Allow::new("u").usage_identifier_key("k-secret");
        assert!(!format!("{allow:?}").contains("k-secret"));
        let principal = allow.into_principal();
        assert_eq!(principal.usage_identifier_key(), Some("k-secret"));
    }

    #[test]
    fn identity_sources_parse_from_api_gateway_syntax_and_print_back() {
        for text in [
            "$request.header.x-api-key",
            "$request.querystring.token",
            "$stageVariables.tenant",
            "$context.httpMethod",
            "$context.path",
            "$context.routeKey",
        ] {
            let source: IdentitySource = text.parse().unwrap();
            assert_eq!(source.to_string(), text);
        }
        let error = "$request.body.token".parse::<IdentitySource>().unwrap_err();
        assert!(
            error.to_string().contains("$request.header.NAME"),
            "{error}"
        );
        let error = "$request.header.bad name"
            .parse::<IdentitySource>()
            .unwrap_err();
        assert!(matches!(error, CustomAuthorizerError::InvalidHeaderName(_)));
        let error = "$request.header.".parse::<IdentitySource>().unwrap_err();
        assert!(matches!(
            error,
            CustomAuthorizerError::UnknownIdentitySource(_)
        ));

        let sources: Vec<IdentitySource> =
            serde_json::from_str(r#"["$request.header.Authorization", "$context.routeKey"]"#)
                .unwrap();
        assert_eq!(
            sources,
            [IdentitySource::Header(AUTHORIZATION), IdentitySource::Route]
        );
    }

    #[test]
    fn builder_refuses_zero_timeout_and_zero_capacity_but_not_zero_capacity_without_cache() {
        let build = |builder: CustomAuthorizerBuilder| {
            builder.from_fn(|_| async { Ok::<_, BoxError>(AuthorizerResponse::Deny) })
        };
        let start = || CustomAuthorizer::builder([IdentitySource::Header(AUTHORIZATION)]);
        assert!(matches!(
            build(start().timeout(Duration::ZERO)),
            Err(CustomAuthorizerError::ZeroTimeout)
        ));
        assert!(matches!(
            build(start().capacity(0)),
            Err(CustomAuthorizerError::ZeroCapacity)
        ));
        assert!(build(start().capacity(0).ttl(Duration::ZERO)).is_ok());
        assert!(build(start().ttl(MAX_TTL)).is_ok());
    }
}
