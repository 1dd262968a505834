use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tollgate_core::{RequestHead, ResponseBody};
use tower::Service;

use crate::future::ResponseFuture;
use crate::headers::Report;
use crate::layer::{Shared, Step};
use crate::store::{MemoryStore, ThrottleStore};

/// The service a [`ThrottleLayer`](crate::ThrottleLayer) wraps around an inner service.
pub struct Throttle<S, St = MemoryStore> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared<St>>,
}

impl<S: Clone, St> Clone for Throttle<S, St> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, St> fmt::Debug for Throttle<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Throttle")
            .field("inner", &self.inner)
            .field("rules", &self.shared.rules)
            .finish_non_exhaustive()
    }
}

impl<S, St, ReqBody, ResBody> Service<Request<ReqBody>> for Throttle<S, St>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    St: ThrottleStore,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, St>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let mut report = Report::default();
        let step = self
            .shared
            .evaluate(&RequestHead::of(&request), 0, &mut report);
        match step {
            Step::Pass(headers) => ResponseFuture::inner(self.inner.call(request), headers),
            Step::Reject(rejection) => ResponseFuture::rejected(rejection),
            Step::Wait { check, rule } => {
                // The ready service goes with the request; a clone takes its place here.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::waiting(check, inner, request, self.shared.clone(), rule, report)
            }
        }
    }
}
