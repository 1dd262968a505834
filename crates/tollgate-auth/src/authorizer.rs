use std::future::Future;
use std::sync::Arc;

use tollgate_core::{Principal, Rejection, RequestHead};

/// What an [`Authorizer`] decided about one request.
#[derive(Debug)]
pub enum Decision {
    /// The caller is verified: the layer checks the route's scopes, inserts the principal and
    /// lets the request through.
    Allow(Principal),
    /// The request carried no credentials at all. Anonymous routes let it through without a
    /// principal; every other route answers 401 with a bare `WWW-Authenticate: Bearer`.
    NoCredentials,
    /// The request is refused with this response, whatever the route.
    Deny(Box<Rejection>),
}

impl Decision {
    /// A refusal.
    pub fn deny(rejection: Rejection) -> Self {
        Self::Deny(Box::new(rejection))
    }
}

/// An [`Authorizer`]'s answer: decided now (the common, cached case, with no allocation), or
/// by a future (a key set to fetch, a custom authorizer to call).
pub enum Verdict<F> {
    /// Decided without waiting.
    Ready(Decision),
    /// Decided when `F` completes.
    Pending(F),
}

/// What an authorizer sees of a request.
#[derive(Clone, Copy, Debug)]
pub struct AuthRequest<'a> {
    /// The request's method, URI, headers and extensions (a [`Stage`](tollgate_core::Stage)
    /// inserted by a stage router in front is there).
    pub head: RequestHead<'a>,
    /// The route the request matched: from the layer's own route table as `"GET /orders/{id}"`
    /// (method and template), else (with the `axum` feature) axum's `MatchedPath` as
    /// `"/orders/{id}"` (template only, so key on the method too). `None` when neither knows;
    /// authorizers that key on the route then fall back to the path.
    pub route: Option<&'a str>,
}

/// Decides who is calling. The layer ([`AuthLayer`](crate::AuthLayer)) asks it once per
/// request, then applies the route's policy (anonymous access, required scopes) to the answer.
///
/// `JwtAuthorizer` (feature `jwt`) and [`CustomAuthorizer`](crate::CustomAuthorizer)
/// implement it; so can an application's own type.
pub trait Authorizer: Send + Sync + 'static {
    /// The future of a decision that cannot be made at once.
    type Future: Future<Output = Decision> + Send + 'static;

    /// Decides about `request`, now or later.
    fn authorize(&self, request: &AuthRequest<'_>) -> Verdict<Self::Future>;
}

impl<A: Authorizer> Authorizer for Arc<A> {
    type Future = A::Future;

    fn authorize(&self, request: &AuthRequest<'_>) -> Verdict<Self::Future> {
        (**self).authorize(request)
    }
}
