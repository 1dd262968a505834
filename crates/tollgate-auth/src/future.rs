use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tollgate_core::{BodyMode, Rejection, WrapBody};
use tower::Service;

use crate::service::Shared;
use crate::{Authorizer, RoutePolicy};

pin_project! {
    /// The response future of [`Auth`](crate::Auth): a refusal, the inner service's response,
    /// or a decision still on its way.
    pub struct ResponseFuture<S, ReqBody, A, M = WrapBody>
    where
        S: Service<Request<ReqBody>>,
        A: Authorizer,
    {
        #[pin]
        state: State<S, ReqBody, A>,
        mode: PhantomData<fn() -> M>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody, A>
    where
        S: Service<Request<ReqBody>>,
        A: Authorizer,
    {
        Rejected { rejection: Option<Box<Rejection>> },
        Inner { #[pin] future: S::Future },
        Waiting {
            #[pin]
            decision: A::Future,
            // Boxed: only a decision that waits pays for carrying the request.
            paused: Option<Box<Paused<S, ReqBody, A>>>,
        },
    }
}

struct Paused<S, ReqBody, A> {
    inner: S,
    request: Request<ReqBody>,
    shared: Arc<Shared<A>>,
    policy: RoutePolicy,
}

impl<S, ReqBody, A, M> ResponseFuture<S, ReqBody, A, M>
where
    S: Service<Request<ReqBody>>,
    A: Authorizer,
{
    #[inline]
    pub(crate) fn inner(future: S::Future) -> Self {
        Self {
            state: State::Inner { future },
            mode: PhantomData,
        }
    }

    pub(crate) fn rejected(rejection: Box<Rejection>) -> Self {
        Self {
            state: State::Rejected {
                rejection: Some(rejection),
            },
            mode: PhantomData,
        }
    }

    pub(crate) fn waiting(
        decision: A::Future,
        inner: S,
        request: Request<ReqBody>,
        shared: Arc<Shared<A>>,
        policy: RoutePolicy,
    ) -> Self {
        Self {
            state: State::Waiting {
                decision,
                paused: Some(Box::new(Paused {
                    inner,
                    request,
                    shared,
                    policy,
                })),
            },
            mode: PhantomData,
        }
    }
}

impl<S, ReqBody, ResBody, A, M> Future for ResponseFuture<S, ReqBody, A, M>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    A: Authorizer,
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
                StateProj::Inner { future } => {
                    return Poll::Ready(Ok(M::pass(ready!(future.poll(cx))?)));
                }
                StateProj::Waiting { decision, paused } => {
                    let decision = ready!(decision.poll(cx));
                    let Paused {
                        mut inner,
                        mut request,
                        shared,
                        policy,
                    } = *paused
                        .take()
                        .expect("ResponseFuture polled after completion");
                    match shared.conclude(decision, &policy, &mut request) {
                        Ok(()) => State::Inner {
                            future: inner.call(request),
                        },
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
