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
    /// once, or the chosen deployment's service, readied and called.
    pub struct ResponseFuture<S, Req, M, B>
    where
        S: Service<Req>,
        M: BodyMode<B>,
    {
        #[pin]
        kind: Kind<S, Req, M, B>,
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
        Inner { #[pin] future: Oneshot<S, Req>, extra: Option<Extra> },
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
        }
    }

    pub(crate) fn inner(future: Oneshot<S, Req>, extra: Extra) -> Self {
        Self {
            kind: Kind::Inner {
                future,
                extra: Some(extra),
            },
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
        match self.project().kind.project() {
            KindProj::Rejected { response, .. } => Poll::Ready(Ok(response
                .take()
                .expect("ResponseFuture polled after completion"))),
            KindProj::Inner { future, extra } => {
                let mut response = ready!(future.poll(cx))?;
                if let Some(extra) = extra.take() {
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
