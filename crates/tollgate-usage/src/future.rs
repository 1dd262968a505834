//! The response future of [`Usage`](crate::Usage).

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tollgate_core::ratelimit::{append_fields, RateLimitFields};
use tollgate_core::{BodyMode, Rejection, WrapBody};
use tower::Service;

use crate::decide::Pending;

pin_project! {
    /// The response of a request through [`Usage`](crate::Usage): a refusal, or the inner
    /// service's response with the rate-limit fields added.
    pub struct ResponseFuture<S, ReqBody, M = WrapBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody>,
        mode: PhantomData<fn() -> M>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        Rejected { rejection: Option<Box<Rejection>> },
        Inner {
            #[pin]
            future: S::Future,
            fields: Option<RateLimitFields>,
        },
        Waiting {
            pending: Pending,
            paused: Option<Box<(S, Request<ReqBody>)>>,
        },
    }
}

impl<S, ReqBody, M> ResponseFuture<S, ReqBody, M>
where
    S: Service<Request<ReqBody>>,
{
    pub(crate) fn inner(future: S::Future, fields: Option<RateLimitFields>) -> Self {
        Self::from(State::Inner { future, fields })
    }

    pub(crate) fn rejected(rejection: Box<Rejection>) -> Self {
        Self::from(State::Rejected {
            rejection: Some(rejection),
        })
    }

    pub(crate) fn waiting(pending: Pending, inner: S, request: Request<ReqBody>) -> Self {
        Self::from(State::Waiting {
            pending,
            paused: Some(Box::new((inner, request))),
        })
    }

    fn from(state: State<S, ReqBody>) -> Self {
        Self {
            state,
            mode: PhantomData,
        }
    }
}

impl<S, ReqBody, ResBody, M> Future for ResponseFuture<S, ReqBody, M>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    M: BodyMode<ResBody>,
{
    type Output = Result<Response<M::Body>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            let next = match state.as_mut().project() {
                StateProj::Rejected { rejection } => {
                    let rejection = rejection
                        .take()
                        .expect("ResponseFuture polled after completion");
                    return Poll::Ready(Ok(M::refuse(*rejection)));
                }
                StateProj::Inner { future, fields } => {
                    let mut response = ready!(future.poll(cx))?;
                    if let Some(fields) = fields.take() {
                        append_fields(response.headers_mut(), fields);
                    }
                    return Poll::Ready(Ok(M::pass(response)));
                }
                StateProj::Waiting { pending, paused } => {
                    let decision = ready!(pending.as_mut().poll(cx));
                    let (mut inner, mut request) = *paused
                        .take()
                        .expect("ResponseFuture polled after completion");
                    match decision {
                        Ok(pass) => {
                            pass.grant(&mut request);
                            State::Inner {
                                future: inner.call(request),
                                fields: pass.fields,
                            }
                        }
                        Err(rejection) => State::Rejected {
                            rejection: Some(rejection),
                        },
                    }
                }
            };
            state.set(next);
        }
    }
}
