use std::fmt;
use std::future::poll_fn;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{
    AGE, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_LOCATION, DATE, ETAG, EXPIRES, IF_MODIFIED_SINCE,
    IF_NONE_MATCH, IF_RANGE, LAST_MODIFIED, RANGE, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use tollgate_core::{Clock, Principal, Rejection};
use tower::Service;

use crate::admit::admit;
use crate::body::{read, CacheBody, Read};
use crate::flight::{landing, Join, Landing, Leader};
use crate::future::Write;
use crate::future::{Boxed, ResponseFuture};
use crate::key::{self, CacheKey, Caller};
use crate::layer::Shared;
use crate::policy::{ClientRefresh, CompiledPolicy};
use crate::semantics::{not_modified, CacheControl};
use crate::store::{CacheStore, CachedResponse, Lookup, MemoryStore, Variants};
use crate::writes::{request_host, Writes};

/// The header that says what the cache did with a request.
pub const X_CACHE_STATUS: HeaderName = HeaderName::from_static("x-cache-status");

const HIT: HeaderValue = HeaderValue::from_static("HIT");
const MISS: HeaderValue = HeaderValue::from_static("MISS");
const STALE: HeaderValue = HeaderValue::from_static("STALE");
const BYPASS: HeaderValue = HeaderValue::from_static("BYPASS");
const REFRESH: HeaderValue = HeaderValue::from_static("REFRESH");

/// The service a [`CacheLayer`](crate::CacheLayer) wraps around an inner service.
pub struct Cache<S, St = MemoryStore> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared<St>>,
}

impl<S: Clone, St> Clone for Cache<S, St> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, St> fmt::Debug for Cache<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// Where a lookup left a request.
enum Found {
    /// A fresh variant: serve it.
    Fresh(Arc<CachedResponse>),
    /// Stale, within `stale-while-revalidate`: serve it and refresh in the background.
    Revalidate(Arc<CachedResponse>),
    /// Stale, within `stale-if-error`: go upstream, and serve it if the upstream fails.
    Fallback(Arc<CachedResponse>),
    /// Nothing servable.
    Miss,
}

fn classify(
    found: Option<Variants>,
    request: &HeaderMap,
    path: &str,
    writes: &Writes,
    now: SystemTime,
) -> Found {
    // Newest first: after the upstream changes its Vary, an older variant may match too.
    let Some(variant) = found.and_then(|v| v.iter().rev().find(|v| v.matches(request)).cloned())
    else {
        return Found::Miss;
    };
    if writes.since(path, variant.stored_at) {
        Found::Miss
    } else if now < variant.fresh_until {
        Found::Fresh(variant)
    } else if now < variant.stale_while_revalidate_until {
        Found::Revalidate(variant)
    } else if now < variant.stale_if_error_until {
        Found::Fallback(variant)
    } else {
        Found::Miss
    }
}

impl<S, St, ReqBody, ResBody> Service<Request<ReqBody>> for Cache<S, St>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send + 'static,
    St: CacheStore,
{
    type Response = Response<CacheBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let method = request.method();
        if method != Method::GET && method != Method::HEAD {
            if Writes::is_unsafe(method) {
                let write = Write {
                    writes: self.shared.writes.clone(),
                    path: request.uri().path().into(),
                    host: request_host(request.uri(), request.headers()),
                };
                return ResponseFuture::written(self.inner.call(request), write);
            }
            return ResponseFuture::inner(self.inner.call(request), None);
        }
        let shared = &*self.shared;
        let policy = shared.policy(request.uri().path());
        if !policy.enabled {
            return self.bypass(request);
        }
        let mut refresh = false;
        if request.headers().contains_key(CACHE_CONTROL) {
            let asks = CacheControl::of(request.headers());
            if asks.no_store {
                return self.bypass(request);
            }
            if asks.wants_refresh() {
                match &policy.client_refresh {
                    ClientRefresh::Ignore => {}
                    ClientRefresh::Allow => refresh = true,
                    ClientRefresh::RequireScope(scope) => {
                        let allowed = request
                            .extensions()
                            .get::<Principal>()
                            .is_some_and(|p| p.has_scope(scope));
                        if !allowed {
                            return ResponseFuture::rejected(Rejection::insufficient_scope(scope));
                        }
                        refresh = true;
                    }
                    ClientRefresh::Deny => {
                        return ResponseFuture::rejected(
                            Rejection::forbidden()
                                .with_detail("this route does not let clients refresh the cache"),
                        );
                    }
                }
            }
        }
        let built = key::build(
            request.uri(),
            request.headers(),
            request.extensions(),
            policy,
            &shared.credential_headers,
        );
        let caller = built.caller;
        if caller == Caller::Unnamed {
            return self.bypass(request);
        }
        let key = built.to_key();
        let now = shared.clock.system_time();
        // Read before the lookup: a flight that lands after it moves the epoch on.
        let epoch = shared.flights.epoch();
        let lookup = if refresh {
            Lookup::Ready(None)
        } else {
            shared.store.get(&key)
        };
        // Built only past a fresh hit: the policy handle costs on the hit path.
        let miss = |key: CacheKey| Miss {
            key,
            per_principal: caller == Caller::Named,
            policy: policy.clone(),
            label: if refresh { REFRESH } else { MISS },
            // A client's refresh goes upstream whatever another request just stored.
            recheck_after: (!refresh).then_some(epoch),
        };
        let found = match lookup {
            Lookup::Ready(found) => classify(
                found,
                request.headers(),
                request.uri().path(),
                &shared.writes,
                now,
            ),
            Lookup::Pending(pending) => {
                let miss = miss(key);
                let flow = self.flow();
                return ResponseFuture::boxed(async move {
                    let found = classify(
                        pending.await,
                        request.headers(),
                        request.uri().path(),
                        &flow.shared.writes,
                        now,
                    );
                    match flow.dispatch(request, miss, found, now) {
                        Dispatch::Now(response) => Ok(response),
                        Dispatch::Later(future) => future.await,
                    }
                });
            }
        };
        if let Found::Fresh(stored) = &found {
            shared.counters.hit.increment(1);
            return ResponseFuture::ready(serve(stored, &request, now, HIT));
        }
        let miss = miss(key);
        match self.flow().dispatch(request, miss, found, now) {
            Dispatch::Now(response) => ResponseFuture::ready(response),
            Dispatch::Later(future) => ResponseFuture::from_box(future),
        }
    }
}

impl<S, St> Cache<S, St>
where
    S: Clone,
{
    fn bypass<ReqBody, ResBody>(
        &mut self,
        request: Request<ReqBody>,
    ) -> ResponseFuture<S::Future, ResBody, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        ResBody: Body,
    {
        self.shared.counters.bypass.increment(1);
        ResponseFuture::inner(self.inner.call(request), Some(BYPASS))
    }

    /// The request's async part; the ready inner service goes with it.
    fn flow<ReqBody, ResBody>(&mut self) -> Flow<S, St, ReqBody, ResBody> {
        let ready = self.inner.clone();
        Flow {
            inner: std::mem::replace(&mut self.inner, ready),
            shared: self.shared.clone(),
            bodies: PhantomData,
        }
    }
}

/// What a miss carries into its async part.
struct Miss {
    key: CacheKey,
    per_principal: bool,
    policy: Arc<CompiledPolicy>,
    label: HeaderValue,
    /// The flights' epoch at the lookup, when a response stored since then may answer the
    /// request: a leader looks again if a flight landed in between.
    recheck_after: Option<u64>,
}

/// A request's way upstream: the inner service and the shared state.
struct Flow<S, St, ReqBody, ResBody> {
    inner: S,
    shared: Arc<Shared<St>>,
    // The bodies name the service's request and response once, for every method below.
    bodies: PhantomData<fn(ReqBody) -> ResBody>,
}

/// A response now, or once the upstream (or another request's flight) answers.
enum Dispatch<B: Body, E> {
    Now(Response<CacheBody<B>>),
    Later(Boxed<B, E>),
}

impl<S, St, ReqBody, ResBody> Flow<S, St, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send + 'static,
    St: CacheStore,
{
    /// Serves what a lookup found: fresh, stale while refreshing, or a miss that leads or joins
    /// the key's upstream request.
    fn dispatch(
        self,
        request: Request<ReqBody>,
        miss: Miss,
        found: Found,
        now: SystemTime,
    ) -> Dispatch<ResBody, S::Error> {
        let counters = &self.shared.counters;
        let fallback = match found {
            Found::Fresh(stored) => {
                counters.hit.increment(1);
                return Dispatch::Now(serve(&stored, &request, now, HIT));
            }
            Found::Revalidate(stored) => {
                counters.stale.increment(1);
                let response = serve(&stored, &request, now, STALE);
                self.refresh_in_background(request, miss);
                return Dispatch::Now(response);
            }
            Found::Fallback(stored) => Some(stored),
            Found::Miss => None,
        };
        // The fetch is boxed on its own, not inside a wrapper future: one allocation per miss,
        // no larger than it must be.
        if miss.recheck_after.is_none() {
            // A client's refresh wants what the upstream says now, not a flight already in the
            // air: it leads a new one or goes alone.
            let leader = self.shared.flights.lead(&miss.key);
            return Dispatch::Later(Box::pin(self.fetch(request, miss, leader, fallback)));
        }
        match self.shared.flights.join(&miss.key) {
            Join::Lead(leader) => {
                Dispatch::Later(Box::pin(self.fetch(request, miss, Some(leader), fallback)))
            }
            Join::Wait(flight) => Dispatch::Later(Box::pin(async move {
                let wait = self.shared.wait_timeout;
                let landed = tokio::time::timeout(wait, landing(flight)).await;
                let now = self.shared.clock.system_time();
                match (landed, &fallback) {
                    (Ok(Landing::Stored(stored)), _) if stored.matches(request.headers()) => {
                        self.shared.counters.hit.increment(1);
                        return Ok(serve(&stored, &request, now, HIT));
                    }
                    (Ok(Landing::Failed), Some(stale)) => {
                        self.shared.counters.stale.increment(1);
                        return Ok(serve(stale, &request, now, STALE));
                    }
                    _ => {}
                }
                self.fetch(request, miss, None, fallback).await
            })),
        }
    }

    /// Refreshes a stale entry with this request, unless a refresh is already in flight.
    fn refresh_in_background(self, request: Request<ReqBody>, mut miss: Miss) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(leader) = self.shared.flights.lead(&miss.key) else {
            return;
        };
        miss.label = REFRESH;
        runtime.spawn(async move {
            // The response is stored (or not) as the fetch reads it; nobody reads the rest.
            let _ = self.fetch(request, miss, Some(leader), None).await;
        });
    }

    /// Goes upstream, stores what may be stored, and answers; serves `fallback` instead if the
    /// upstream fails.
    async fn fetch(
        mut self,
        mut request: Request<ReqBody>,
        miss: Miss,
        leader: Option<Leader>,
        fallback: Option<Arc<CachedResponse>>,
    ) -> Result<Response<CacheBody<ResBody>>, S::Error> {
        let shared = self.shared.clone();
        let counters = &shared.counters;
        let moved_on = leader.is_some()
            && miss
                .recheck_after
                .is_some_and(|epoch| shared.flights.epoch() != epoch);
        if moved_on {
            // A flight on this key may have landed between the lookup and the join; what it
            // stored answers this request too.
            let path = request.uri().path();
            if let Some(stored) = stored_since(&shared, &miss.key, request.headers(), path).await {
                if let Some(leader) = leader {
                    leader.land(stored.clone());
                }
                counters.hit.increment(1);
                let now = shared.clock.system_time();
                return Ok(serve(&stored, &request, now, HIT));
            }
        }
        // A HEAD goes upstream as a GET, so its response can fill the entry GETs are served
        // from (nginx's proxy_cache_convert_head).
        let head = request.method() == Method::HEAD;
        if head {
            *request.method_mut() = Method::GET;
        }
        let request_headers = request.headers().clone();
        // The cache fills with the whole representation; the client's own conditions and
        // ranges are answered from it afterwards.
        for name in [IF_NONE_MATCH, IF_MODIFIED_SINCE, IF_RANGE, RANGE] {
            request.headers_mut().remove(name);
        }
        let uri = request.uri().clone();
        let stale = |stored: &CachedResponse| {
            counters.stale.increment(1);
            let now = shared.clock.system_time();
            serve_parts(stored, &request_headers, head, now, STALE)
        };

        poll_fn(|cx| self.inner.poll_ready(cx)).await?;
        // Taken before the upstream sees the request: a write or purge that lands while it is
        // on its way is newer than what it brings back.
        let now = shared.clock.system_time();
        let purges = shared.purges.load(Ordering::Acquire);
        let call = self.inner.call(request);
        let response = match &fallback {
            None => call.await?,
            Some(stored) => {
                let result = match miss.policy.upstream_timeout {
                    Some(limit) => tokio::time::timeout(limit, call).await.ok(),
                    None => Some(call.await),
                };
                match result {
                    Some(Ok(response)) if !response.status().is_server_error() => response,
                    _ => {
                        tracing::debug!("upstream failed or timed out; serving stale");
                        if let Some(leader) = leader {
                            leader.fail();
                        }
                        return Ok(stale(stored));
                    }
                }
            }
        };
        if miss.label == REFRESH {
            counters.refresh.increment(1);
        } else {
            counters.miss.increment(1);
        }

        let (mut parts, body) = response.into_parts();
        let too_long = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_some_and(|len| len > shared.max_entry_bytes as u64);
        let admitted = if too_long {
            Err("larger than the entry limit")
        } else {
            admit(&miss.policy, &parts, miss.per_principal, now)
        };
        let admitted = match admitted {
            Ok(admitted) => admitted,
            Err(reason) => {
                tracing::debug!(reason, "response not stored");
                parts.headers.insert(X_CACHE_STATUS, miss.label);
                let body = if head {
                    head_length(&mut parts.headers, &body);
                    CacheBody::empty()
                } else {
                    CacheBody::inner(body)
                };
                return Ok(Response::from_parts(parts, body));
            }
        };
        match read(body, shared.max_entry_bytes).await {
            Read::Whole(bytes) => {
                let version = parts.version;
                let stored = Arc::new(admitted.into_cached(
                    parts,
                    bytes,
                    &request_headers,
                    key::stored_resource(&uri, &miss.policy.query),
                    shared.tag_header.as_ref(),
                    now,
                ));
                if shared.purges.load(Ordering::Acquire) == purges {
                    shared.store.put(miss.key, stored.clone());
                    if let Some(leader) = leader {
                        leader.land(stored.clone());
                    }
                } else {
                    tracing::debug!("a purge came while the response was on its way; not stored");
                }
                let mut response =
                    serve_parts(&stored, &request_headers, head, now, miss.label.clone());
                *response.version_mut() = version;
                Ok(response)
            }
            Read::Partial(body) => {
                tracing::debug!("response body larger than the entry limit; not stored");
                parts.headers.insert(X_CACHE_STATUS, miss.label);
                let body = if head {
                    head_length(&mut parts.headers, &body);
                    CacheBody::empty()
                } else {
                    body
                };
                Ok(Response::from_parts(parts, body))
            }
        }
    }
}

/// A fresh variant for `request` in the store now, which a flight that landed after the
/// request's lookup may have put there.
async fn stored_since<St: CacheStore>(
    shared: &Shared<St>,
    key: &CacheKey,
    request: &HeaderMap,
    path: &str,
) -> Option<Arc<CachedResponse>> {
    let found = match shared.store.get(key) {
        Lookup::Ready(found) => found,
        Lookup::Pending(pending) => pending.await,
    };
    let now = shared.clock.system_time();
    match classify(found, request, path, &shared.writes, now) {
        Found::Fresh(stored) => Some(stored),
        _ => None,
    }
}

/// A HEAD answered from a GET response that is not kept: its length, when the body knows it,
/// so the empty body does not read as `Content-Length: 0`.
fn head_length<B: Body>(headers: &mut HeaderMap, body: &B) {
    if !headers.contains_key(CONTENT_LENGTH) {
        if let Some(len) = body.size_hint().exact() {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        }
    }
}

/// A stored response, as a hit serves it to `request`.
fn serve<B: Body, ReqBody>(
    stored: &CachedResponse,
    request: &Request<ReqBody>,
    now: SystemTime,
    label: HeaderValue,
) -> Response<CacheBody<B>> {
    serve_parts(
        stored,
        request.headers(),
        request.method() == Method::HEAD,
        now,
        label,
    )
}

fn serve_parts<B: Body>(
    stored: &CachedResponse,
    request: &HeaderMap,
    head: bool,
    now: SystemTime,
    label: HeaderValue,
) -> Response<CacheBody<B>> {
    let age = HeaderValue::from(stored.age(now).as_secs());
    let conditional =
        request.contains_key(IF_NONE_MATCH) || request.contains_key(IF_MODIFIED_SINCE);
    if conditional && stored.status == StatusCode::OK && not_modified(request, &stored.headers) {
        let mut response = Response::new(CacheBody::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        let headers = response.headers_mut();
        // RFC 9110 §15.4.5: the fields a 200 would have sent that describe the representation.
        for name in [
            CACHE_CONTROL,
            CONTENT_LOCATION,
            DATE,
            ETAG,
            EXPIRES,
            LAST_MODIFIED,
            VARY,
        ] {
            for value in stored.headers.get_all(&name) {
                headers.append(name.clone(), value.clone());
            }
        }
        headers.insert(AGE, age);
        headers.insert(X_CACHE_STATUS, label);
        return response;
    }
    let body = if head {
        CacheBody::empty()
    } else {
        CacheBody::full(stored.body.clone())
    };
    let mut response = Response::new(body);
    *response.status_mut() = stored.status;
    let headers = response.headers_mut();
    *headers = stored.headers.clone();
    headers.insert(AGE, age);
    headers.insert(X_CACHE_STATUS, label);
    response
}
