use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::header::LINK;
use http::{HeaderName, HeaderValue, Response};
use pin_project_lite::pin_project;
use tollgate_core::BodyMode;
use tower::util::Oneshot;
use tower::Service;

use crate::spec::Deprecation;

/// What a stage's responses carry besides the inner service's headers.
pub(crate) struct Extra {
    pub(crate) deployment: Option<(HeaderName, HeaderValue)>,
    pub(crate) deprecation: Option<Arc<Deprecation>>,
}

pin_project! {
    /// The response future of a [`StageRouter`](crate::StageRouter): a refusal answered at
    /// once, or the chosen deployment's service, called (or readied, then called).
    pub struct ResponseFuture<S, Req, M, B>
    where
        S: Service<Req>,
        M: BodyMode<B>,
    {
        #[pin]
        kind: Kind<S, Req, M, B>,
        extra: Option<Extra>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S, Req, M, B>
    where
        S: Service<Req>,
        M: BodyMode<B>,
    {
        Rejected { response: Option<Response<M::Body>>, marker: PhantomData<fn() -> B> },
        // The service was ready at once and has been called.
        Called { #[pin] future: S::Future },
        // The service was not ready: it is readied, then called, here. Boxed, as it holds
        // the request and the service: the common case's future stays small to move.
        Readying { future: Pin<Box<Oneshot<S, Req>>> },
        Failed { error: Option<S::Error> },
    }
}

impl<S, Req, M, B> ResponseFuture<S, Req, M, B>
where
    S: Service<Req>,
    M: BodyMode<B>,
{
    pub(crate) fn rejected(response: Response<M::Body>) -> Self {
        Self {
            kind: Kind::Rejected {
                response: Some(response),
                marker: PhantomData,
            },
            extra: None,
        }
    }

    pub(crate) fn called(future: S::Future, extra: Extra) -> Self {
        Self {
            kind: Kind::Called { future },
            extra: Some(extra),
        }
    }

    pub(crate) fn readying(future: Oneshot<S, Req>, extra: Extra) -> Self {
        Self {
            kind: Kind::Readying {
                future: Box::pin(future),
            },
            extra: Some(extra),
        }
    }

    pub(crate) fn failed(error: S::Error) -> Self {
        Self {
            kind: Kind::Failed { error: Some(error) },
            extra: None,
        }
    }
}

impl<S, Req, M, B> Future for ResponseFuture<S, Req, M, B>
where
    S: Service<Req, Response = Response<B>>,
    M: BodyMode<B>,
{
    type Output = Result<Response<M::Body>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = match this.kind.project() {
            KindProj::Rejected { response, .. } => {
                return Poll::Ready(Ok(response
                    .take()
                    .expect("ResponseFuture polled after completion")))
            }
            KindProj::Failed { error } => {
                return Poll::Ready(Err(error
                    .take()
                    .expect("ResponseFuture polled after completion")))
            }
            KindProj::Called { future } => ready!(future.poll(cx))?,
            KindProj::Readying { future } => ready!(future.as_mut().poll(cx))?,
        };
        if let Some(extra) = this.extra.take() {
            let headers = response.headers_mut();
            if let Some((name, value)) = extra.deployment {
                headers.insert(name, value);
            }
            if let Some(deprecation) = extra.deprecation {
                if let Some(value) = &deprecation.deprecation {
                    headers.insert(HeaderName::from_static("deprecation"), value.clone());
                }
                if let Some((_, value)) = &deprecation.sunset {
                    headers.insert(HeaderName::from_static("sunset"), value.clone());
                }
                if let Some(value) = &deprecation.link {
                    headers.append(LINK, value.clone());
                }
            }
        }
        Poll::Ready(Ok(M::pass(response)))
    }
}

impl<S, Req, M, B> std::fmt::Debug for ResponseFuture<S, Req, M, B>
where
    S: Service<Req>,
    M: BodyMode<B>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
