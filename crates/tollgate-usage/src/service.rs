//! [`Usage`]: the service a [`UsageLayer`](crate::UsageLayer) wraps around another.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tollgate_core::{BodyMode, WrapBody};
use tower::Service;

use crate::decide::Decision;
use crate::future::ResponseFuture;
use crate::key::KeyStore;
use crate::plans::Shared;
use crate::quota::QuotaStore;
use tollgate_throttle::ThrottleStore;

/// Admits requests whose API key is valid and whose plan's throttle and quota allow them;
/// refuses the rest with problem+json.
pub struct Usage<S, K, Q, T, M = WrapBody> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared<K, Q, T>>,
    pub(crate) mode: M,
}

impl<S: Clone, K, Q, T, M: Clone> Clone for Usage<S, K, Q, T, M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            mode: self.mode.clone(),
        }
    }
}

impl<S: fmt::Debug, K, Q, T, M> fmt::Debug for Usage<S, K, Q, T, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Usage")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, K, Q, T, M, ReqBody, ResBody> Service<Request<ReqBody>> for Usage<S, K, Q, T, M>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    K: KeyStore,
    Q: QuotaStore,
    T: ThrottleStore,
    M: BodyMode<ResBody>,
{
    type Response = Response<M::Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, M>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        match self.shared.decide(&request) {
            Decision::Pass(pass) => {
                pass.grant(&mut request);
                ResponseFuture::inner(self.inner.call(request), pass.fields)
            }
            Decision::Reject(rejection) => ResponseFuture::rejected(rejection),
            Decision::Wait(pending) => {
                // The clone that was made ready goes with the request; this service keeps a
                // fresh one, as tower's ready-service contract asks.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::waiting(pending, inner, request)
            }
        }
    }
}
