use std::future::Future;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tollgate_core::ratelimit::{append_fields, RateLimitFields};
use tollgate_core::{BodyMode, Rejection, RequestHead, WrapBody};
use tower::Service;

use crate::headers::Report;
use crate::service::{Shared, Step};
use crate::store::{CheckAll, ThrottleStore};

pin_project! {
    /// The response future of [`Throttle`](crate::Throttle): a refusal, the inner service's
    /// response, or a store decision still on its way.
    pub struct ResponseFuture<S, ReqBody, St, M = WrapBody>
    where
        S: Service<Request<ReqBody>>,
        St: ThrottleStore,
    {
        #[pin]
        state: State<S, ReqBody, St>,
        mode: PhantomData<fn() -> M>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody, St>
    where
        S: Service<Request<ReqBody>>,
        St: ThrottleStore,
    {
        Rejected { rejection: Option<Box<Rejection>> },
        Inner {
            #[pin]
            future: S::Future,
            headers: Option<RateLimitFields>,
        },
        Waiting {
            #[pin]
            check: St::Future,
            // Boxed: only a store that answers later pays for carrying the request, and the
            // in-memory path keeps a small future.
            paused: Option<Box<Paused<S, ReqBody, St>>>,
        },
        WaitingAll {
            check: CheckAll,
            paused: Option<Box<Paused<S, ReqBody, St>>>,
        },
    }
}

/// A request whose rules are part-way checked.
struct Paused<S, ReqBody, St> {
    inner: S,
    request: Request<ReqBody>,
    shared: Arc<Shared<St>>,
    rule: usize,
    client: Option<IpAddr>,
    /// The rules decided together, while waiting for all of them.
    together: Box<[(usize, Option<IpAddr>)]>,
    report: Report,
}

impl<S, ReqBody, St> Paused<S, ReqBody, St>
where
    S: Service<Request<ReqBody>>,
    St: ThrottleStore,
{
    /// Where the request goes after a step.
    fn resume(mut self: Box<Self>, step: Step<St::Future>) -> State<S, ReqBody, St> {
        match step {
            Step::Reject(rejection) => State::Rejected {
                rejection: Some(rejection),
            },
            Step::Pass(headers) => {
                let Paused {
                    mut inner, request, ..
                } = *self;
                State::Inner {
                    future: inner.call(request),
                    headers,
                }
            }
            Step::Wait {
                check,
                rule,
                client,
            } => {
                self.rule = rule;
                self.client = client;
                State::Waiting {
                    check,
                    paused: Some(self),
                }
            }
            Step::WaitAll { check, rules } => {
                self.together = rules;
                State::WaitingAll {
                    check,
                    paused: Some(self),
                }
            }
        }
    }
}

impl<S, ReqBody, St, M> ResponseFuture<S, ReqBody, St, M>
where
    S: Service<Request<ReqBody>>,
    St: ThrottleStore,
{
    #[inline]
    pub(crate) fn inner(future: S::Future, headers: Option<RateLimitFields>) -> Self {
        Self {
            state: State::Inner { future, headers },
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
        check: St::Future,
        inner: S,
        request: Request<ReqBody>,
        shared: Arc<Shared<St>>,
        rule: usize,
        client: Option<IpAddr>,
        report: Report,
    ) -> Self {
        Self {
            state: State::Waiting {
                check,
                paused: Some(Box::new(Paused {
                    inner,
                    request,
                    shared,
                    rule,
                    client,
                    together: Box::default(),
                    report,
                })),
            },
            mode: PhantomData,
        }
    }

    pub(crate) fn waiting_all(
        check: CheckAll,
        rules: Box<[(usize, Option<IpAddr>)]>,
        inner: S,
        request: Request<ReqBody>,
        shared: Arc<Shared<St>>,
    ) -> Self {
        Self {
            state: State::WaitingAll {
                check,
                paused: Some(Box::new(Paused {
                    inner,
                    request,
                    shared,
                    rule: 0,
                    client: None,
                    together: rules,
                    report: Report::default(),
                })),
            },
            mode: PhantomData,
        }
    }
}

impl<S, ReqBody, ResBody, St, M> Future for ResponseFuture<S, ReqBody, St, M>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    St: ThrottleStore,
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
                StateProj::Inner { future, headers } => {
                    let mut response = ready!(future.poll(cx))?;
                    if let Some(fields) = headers.take() {
                        append_fields(response.headers_mut(), fields);
                    }
                    return Poll::Ready(Ok(M::pass(response)));
                }
                StateProj::Waiting { check, paused } => {
                    let result = ready!(check.poll(cx));
                    let mut paused = paused
                        .take()
                        .expect("ResponseFuture polled after completion");
                    let Paused {
                        request,
                        shared,
                        rule,
                        client,
                        report,
                        ..
                    } = &mut *paused;
                    let step = match shared.rules.get(*rule) {
                        Some(current) => match shared.decide(current, *client, result, report) {
                            Some(rejection) => Step::Reject(Box::new(rejection)),
                            None => shared.evaluate(&RequestHead::of(request), *rule + 1, report),
                        },
                        None => Step::Pass(None),
                    };
                    paused.resume(step)
                }
                StateProj::WaitingAll { check, paused } => {
                    let result = ready!(check.as_mut().poll(cx));
                    let mut paused = paused
                        .take()
                        .expect("ResponseFuture polled after completion");
                    let Paused {
                        shared,
                        together,
                        report,
                        ..
                    } = &mut *paused;
                    let step = shared.decide_all(together, result, report);
                    paused.resume(step)
                }
            };
            state.set(next);
        }
    }
}
