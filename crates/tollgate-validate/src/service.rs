//! The service: decides what it can from the head, and reads the body when a route needs it.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tollgate_core::{BodyMode, Rejection, WrapBody};
use tower::Service;

use crate::body::FromBytes;
use crate::check::{check_head, declared_length, is_json, Violations};
use crate::future::{Reading, ResponseFuture};
use crate::layer::{Outcome, Route, Shared};

/// The service of a [`ValidateLayer`](crate::ValidateLayer).
pub struct Validate<S, M = WrapBody> {
    inner: S,
    shared: Arc<Shared>,
    mode: PhantomData<fn() -> M>,
}

impl<S, M> Validate<S, M> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self {
            inner,
            shared,
            mode: PhantomData,
        }
    }
}

impl<S: Clone, M> Clone for Validate<S, M> {
    fn clone(&self) -> Self {
        Self::new(self.inner.clone(), self.shared.clone())
    }
}

impl<S: fmt::Debug, M> fmt::Debug for Validate<S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Validate")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, B, ResBody, M> Service<Request<B>> for Validate<S, M>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    B: FromBytes,
    B::Error: fmt::Display,
    M: BodyMode<ResBody>,
{
    type Response = Response<M::Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S, B, M, ResBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let Some(route) = self
            .shared
            .routes
            .at(request.method(), request.uri().path())
            .map(|matched| matched.value().clone())
        else {
            return ResponseFuture::inner(self.inner.call(request));
        };

        let mut violations = Violations::default();
        check_head(
            &route.validation,
            request.headers(),
            request.uri().query(),
            &mut violations,
        );

        let Some(limit) = route.limit else {
            if !violations.is_empty() {
                return ResponseFuture::refused(refuse::<M, _>(&self.shared, &route, violations));
            }
            self.shared.count_passed();
            return ResponseFuture::inner(self.inner.call(request));
        };

        let declared = declared_length(request.headers()).unwrap_or(0);
        let hinted = http_body::Body::size_hint(request.body()).lower();
        if declared.max(hinted) > limit {
            return ResponseFuture::refused(refuse_with::<M, _>(
                &self.shared,
                &route,
                Outcome::TooLarge,
                Rejection::payload_too_large(limit),
            ));
        }
        if route.schema.is_some() && !is_json(request.headers()) {
            return ResponseFuture::refused(refuse_with::<M, _>(
                &self.shared,
                &route,
                Outcome::UnsupportedMediaType,
                self.shared.unsupported.clone(),
            ));
        }
        if route.schema.is_none() && !violations.is_empty() {
            // Without a schema the body has nothing more to say.
            return ResponseFuture::refused(refuse::<M, _>(&self.shared, &route, violations));
        }

        // The ready service goes with the body; its clone waits for the next poll_ready.
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        let (parts, body) = request.into_parts();
        ResponseFuture::reading(
            body,
            Reading::new(
                parts,
                service,
                route,
                self.shared.clone(),
                violations,
                limit,
            ),
        )
    }
}

/// A 400 listing `violations`, counted and logged.
pub(crate) fn refuse<M: BodyMode<B>, B>(
    shared: &Shared,
    route: &Route,
    violations: Violations,
) -> Response<M::Body> {
    shared.count(Outcome::Refused);
    tracing::debug!(
        route = &*route.name,
        violations = violations.total(),
        "tollgate validate: request refused"
    );
    M::refuse(violations.into_rejection())
}

/// `rejection` (a 413, a 415, an unreadable body), counted as `outcome` and logged.
pub(crate) fn refuse_with<M: BodyMode<B>, B>(
    shared: &Shared,
    route: &Route,
    outcome: Outcome,
    rejection: Rejection,
) -> Response<M::Body> {
    shared.count(outcome);
    tracing::debug!(
        route = &*route.name,
        outcome = outcome.label(),
        status = rejection.status().as_u16(),
        "tollgate validate: request refused"
    );
    M::refuse(rejection)
}
