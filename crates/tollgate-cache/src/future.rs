use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{HeaderValue, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tollgate_core::Rejection;

use crate::body::CacheBody;
use crate::service::X_CACHE_STATUS;
use crate::writes::Writes;

pub(crate) type Boxed<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<CacheBody<B>>, E>> + Send>>;

pin_project! {
    /// The response future of the [`Cache`](crate::Cache) service: a hit or refusal answered
    /// at once, the inner service's future, or a miss on its way upstream.
    pub struct ResponseFuture<F, B: Body, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B: Body, E> {
        Ready { response: Option<Response<CacheBody<B>>> },
        Inner { #[pin] future: F, label: Option<HeaderValue> },
        Boxed { future: Boxed<B, E> },
        Written { #[pin] future: F, write: Option<Write> },
    }
}

/// An unsafe request on its way: when it succeeds, what it wrote is recorded.
pub(crate) struct Write {
    pub(crate) writes: Arc<Writes>,
    pub(crate) path: Box<str>,
    pub(crate) host: Option<Box<str>>,
}

impl<F, B: Body, E> ResponseFuture<F, B, E> {
    pub(crate) fn ready(response: Response<CacheBody<B>>) -> Self {
        Self {
            kind: Kind::Ready {
                response: Some(response),
            },
        }
    }

    /// A refusal; the cache neither served nor stored it.
    pub(crate) fn rejected(rejection: Rejection) -> Self {
        let mut response = rejection.into_response_with(CacheBody::full);
        response
            .headers_mut()
            .insert(X_CACHE_STATUS, HeaderValue::from_static("BYPASS"));
        Self::ready(response)
    }

    pub(crate) fn inner(future: F, label: Option<HeaderValue>) -> Self {
        Self {
            kind: Kind::Inner { future, label },
        }
    }

    pub(crate) fn written(future: F, write: Write) -> Self {
        Self {
            kind: Kind::Written {
                future,
                write: Some(write),
            },
        }
    }

    pub(crate) fn from_box(future: Boxed<B, E>) -> Self {
        Self {
            kind: Kind::Boxed { future },
        }
    }

    pub(crate) fn boxed(
        future: impl Future<Output = Result<Response<CacheBody<B>>, E>> + Send + 'static,
    ) -> Self {
        Self {
            kind: Kind::Boxed {
                future: Box::pin(future),
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<CacheBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Ready { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => panic!("ResponseFuture polled after completion"),
            },
            KindProj::Inner { future, label } => {
                let mut response = ready!(future.poll(cx))?.map(CacheBody::inner);
                if let Some(label) = label.take() {
                    response.headers_mut().insert(X_CACHE_STATUS, label);
                }
                Poll::Ready(Ok(response))
            }
            KindProj::Boxed { future } => future.as_mut().poll(cx),
            KindProj::Written { future, write } => {
                let response = ready!(future.poll(cx))?;
                if let Some(write) = write.take() {
                    write
                        .writes
                        .record(&write.path, write.host.as_deref(), &response);
                }
                Poll::Ready(Ok(response.map(CacheBody::inner)))
            }
        }
    }
}

impl<F, B: Body, E> std::fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
