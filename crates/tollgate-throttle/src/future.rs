use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tollgate_core::{Rejection, RequestHead, ResponseBody};
use tower::Service;

use crate::headers::{Report, RATELIMIT, RATELIMIT_POLICY};
use crate::layer::{Shared, Step};
use crate::store::ThrottleStore;

pin_project! {
    /// The response future of [`Throttle`](crate::Throttle): a refusal, the inner service's
    /// response, or a store decision still on its way.
    pub struct ResponseFuture<S, ReqBody, St>
    where
        S: Service<Request<ReqBody>>,
        St: ThrottleStore,
    {
        #[pin]
        state: State<S, ReqBody, St>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody, St>
    where
        S: Service<Request<ReqBody>>,
        St: ThrottleStore,
    {
        Rejected { rejection: Option<Rejection> },
        Inner {
            #[pin]
            future: S::Future,
            headers: Option<(HeaderValue, HeaderValue)>,
        },
        Waiting {
            #[pin]
            check: St::Future,
            inner: Option<S>,
            request: Option<Request<ReqBody>>,
            shared: Arc<Shared<St>>,
            rule: usize,
            report: Report,
        },
    }
}

impl<S, ReqBody, St> ResponseFuture<S, ReqBody, St>
where
    S: Service<Request<ReqBody>>,
    St: ThrottleStore,
{
    pub(crate) fn inner(future: S::Future, headers: Option<(HeaderValue, HeaderValue)>) -> Self {
        Self {
            state: State::Inner { future, headers },
        }
    }

    pub(crate) fn rejected(rejection: Rejection) -> Self {
        Self {
            state: State::Rejected {
                rejection: Some(rejection),
            },
        }
    }

    pub(crate) fn waiting(
        check: St::Future,
        inner: S,
        request: Request<ReqBody>,
        shared: Arc<Shared<St>>,
        rule: usize,
        report: Report,
    ) -> Self {
        Self {
            state: State::Waiting {
                check,
                inner: Some(inner),
                request: Some(request),
                shared,
                rule,
                report,
            },
        }
    }
}

impl<S, ReqBody, ResBody, St> Future for ResponseFuture<S, ReqBody, St>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    St: ThrottleStore,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            let next = match state.as_mut().project() {
                StateProj::Rejected { rejection } => {
                    let rejection = rejection
                        .take()
                        .expect("ResponseFuture polled after completion");
                    return Poll::Ready(Ok(rejection.into_response()));
                }
                StateProj::Inner { future, headers } => {
                    let mut response = ready!(future.poll(cx))?;
                    if let Some((policy, ratelimit)) = headers.take() {
                        let map = response.headers_mut();
                        map.insert(RATELIMIT_POLICY.clone(), policy);
                        map.insert(RATELIMIT.clone(), ratelimit);
                    }
                    return Poll::Ready(Ok(response.map(ResponseBody::inner)));
                }
                StateProj::Waiting {
                    check,
                    inner,
                    request,
                    shared,
                    rule,
                    report,
                } => {
                    let result = ready!(check.poll(cx));
                    let mut report = std::mem::take(report);
                    let request_ref = request
                        .as_ref()
                        .expect("ResponseFuture polled after completion");
                    let step = match shared.rules.get(*rule) {
                        Some(current) => match shared.decide(current, None, result, &mut report) {
                            Some(rejection) => Step::Reject(rejection),
                            None => {
                                shared.evaluate(&RequestHead::of(request_ref), *rule + 1, report)
                            }
                        },
                        None => Step::Pass(None),
                    };
                    match step {
                        Step::Reject(rejection) => State::Rejected {
                            rejection: Some(rejection),
                        },
                        Step::Pass(headers) => {
                            let (Some(mut service), Some(request)) = (inner.take(), request.take())
                            else {
                                unreachable!("ResponseFuture polled after completion");
                            };
                            State::Inner {
                                future: service.call(request),
                                headers,
                            }
                        }
                        Step::Wait {
                            check,
                            rule,
                            report,
                        } => State::Waiting {
                            check,
                            inner: inner.take(),
                            request: request.take(),
                            shared: shared.clone(),
                            rule,
                            report,
                        },
                    }
                }
            };
            state.set(next);
        }
    }
}
