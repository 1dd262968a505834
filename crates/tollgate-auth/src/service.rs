use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue, Request, Response};
use serde_json::Value;
use tollgate_core::{
    AccessRecord, BearerError, BodyMode, Principal, Rejection, RequestHead, RouteTable, WrapBody,
};
use tower::Service;

use crate::future::ResponseFuture;
use crate::{AuthRequest, Authorizer, Decision, RoutePolicy, Verdict};

/// The service an [`AuthLayer`](crate::AuthLayer) wraps around an inner service.
pub struct Auth<S, A, M = WrapBody> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared<A>>,
    pub(crate) mode: M,
}

impl<S: Clone, A, M: Clone> Clone for Auth<S, A, M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            mode: self.mode.clone(),
        }
    }
}

impl<S: fmt::Debug, A, M> fmt::Debug for Auth<S, A, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, A, M, ReqBody, ResBody> Service<Request<ReqBody>> for Auth<S, A, M>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    A: Authorizer,
    M: BodyMode<ResBody>,
{
    type Response = Response<M::Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, A, M>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let shared = &*self.shared;
        let head = RequestHead::of(&request);
        let matched = shared.routes.at(head.method, head.uri.path());
        let (policy, route) = match &matched {
            Some(found) => (found.value(), Some(found.route())),
            None => (&shared.default, matched_path(&head)),
        };
        let verdict = shared.authorizer.authorize(&AuthRequest { head, route });
        match verdict {
            Verdict::Ready(decision) => match shared.conclude(decision, policy, &mut request) {
                Ok(()) => ResponseFuture::inner(self.inner.call(request)),
                Err(rejection) => ResponseFuture::rejected(rejection),
            },
            Verdict::Pending(future) => {
                let policy = policy.clone();
                // The ready service goes with the request; a clone takes its place here.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::waiting(future, inner, request, self.shared.clone(), policy)
            }
        }
    }
}

/// axum's matched route, when the layer has no table of its own and runs under `route_layer`.
fn matched_path<'a>(head: &RequestHead<'a>) -> Option<&'a str> {
    #[cfg(feature = "axum")]
    if let Some(path) = head.extensions.get::<axum::extract::MatchedPath>() {
        return Some(path.as_str());
    }
    let _ = head;
    None
}

/// What every clone of a layer and its services shares.
pub(crate) struct Shared<A> {
    pub(crate) authorizer: A,
    pub(crate) routes: RouteTable<RoutePolicy>,
    pub(crate) default: RoutePolicy,
    claim_headers: Box<[(String, HeaderName)]>,
    /// The 401 for requests without credentials, rendered once.
    missing: Rejection,
}

impl<A> Shared<A> {
    pub(crate) fn new(
        authorizer: A,
        routes: RouteTable<RoutePolicy>,
        default: RoutePolicy,
        claim_headers: Box<[(String, HeaderName)]>,
    ) -> Self {
        Self {
            authorizer,
            routes,
            default,
            claim_headers,
            missing: Rejection::unauthorized(BearerError::Missing)
                .with_detail("this route requires credentials")
                .prerendered(),
        }
    }

    /// Applies the route's policy to the authorizer's decision: on success the request
    /// carries the principal (and its claim headers), otherwise the refusal comes back.
    pub(crate) fn conclude<B>(
        &self,
        decision: Decision,
        policy: &RoutePolicy,
        request: &mut Request<B>,
    ) -> Result<(), Box<Rejection>> {
        match decision {
            Decision::Allow(principal) => {
                if let Some(missing) = policy.missing_scopes(&principal) {
                    tracing::debug!(
                        subject = principal.subject(),
                        missing,
                        "tollgate auth: insufficient scope"
                    );
                    count(Outcome::Forbidden);
                    return Err(Box::new(Rejection::insufficient_scope(&missing)));
                }
                tracing::trace!(subject = principal.subject(), "tollgate auth: allowed");
                count(Outcome::Allowed);
                self.write_claim_headers(request.headers_mut(), Some(&principal));
                AccessRecord::update(request.extensions(), |fields| {
                    fields.principal = Some(principal.clone());
                });
                request.extensions_mut().insert(principal);
                Ok(())
            }
            Decision::NoCredentials if policy.is_anonymous() => {
                count(Outcome::Anonymous);
                self.write_claim_headers(request.headers_mut(), None);
                Ok(())
            }
            Decision::NoCredentials => {
                tracing::debug!("tollgate auth: no credentials");
                count(Outcome::Unauthorized);
                Err(Box::new(Rejection::clone(&self.missing)))
            }
            Decision::Deny(rejection) => {
                tracing::debug!(
                    status = rejection.status().as_u16(),
                    detail = rejection.detail(),
                    "tollgate auth: refused"
                );
                count(match rejection.status().as_u16() {
                    401 => Outcome::Unauthorized,
                    403 => Outcome::Forbidden,
                    _ => Outcome::Error,
                });
                Err(rejection)
            }
        }
    }

    /// Removes client-sent copies of the mapped headers, then writes the principal's values.
    fn write_claim_headers(&self, headers: &mut HeaderMap, principal: Option<&Principal>) {
        for (claim, name) in &*self.claim_headers {
            headers.remove(name);
            let Some(value) = principal.and_then(|p| p.claim(claim)) else {
                continue;
            };
            let value = match value {
                Value::String(text) => HeaderValue::try_from(text.as_str()),
                other => HeaderValue::try_from(other.to_string()),
            };
            match value {
                Ok(value) => {
                    headers.insert(name.clone(), value);
                }
                Err(_) => {
                    tracing::debug!(claim, header = %name, "tollgate auth: claim value cannot be a header value; left out")
                }
            }
        }
    }
}

/// Counts a decision. Each arm names its label literally: the macro then builds the metric's
/// key without allocating, which a variable label would cost on every request.
fn count(outcome: Outcome) {
    let counter = match outcome {
        Outcome::Allowed => {
            metrics::counter!("tollgate_auth_decisions_total", "outcome" => "allowed")
        }
        Outcome::Anonymous => {
            metrics::counter!("tollgate_auth_decisions_total", "outcome" => "anonymous")
        }
        Outcome::Unauthorized => {
            metrics::counter!("tollgate_auth_decisions_total", "outcome" => "unauthorized")
        }
        Outcome::Forbidden => {
            metrics::counter!("tollgate_auth_decisions_total", "outcome" => "forbidden")
        }
        Outcome::Error => metrics::counter!("tollgate_auth_decisions_total", "outcome" => "error"),
    };
    counter.increment(1);
}

#[derive(Clone, Copy)]
enum Outcome {
    Allowed,
    Anonymous,
    Unauthorized,
    Forbidden,
    Error,
}
