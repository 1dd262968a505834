//! The future of a [`Validate`](crate::Validate) service.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::request::Parts;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tollgate_core::{BodyMode, Rejection};
use tower::Service;

use crate::body::{Collected, FromBytes};
use crate::check::{check_body, Violations};
use crate::layer::{Outcome, Route, Shared};
use crate::service::{refuse, refuse_with};

pin_project! {
    /// The future of a [`Validate`](crate::Validate) service: reading the body, then the inner
    /// service's future, or a refusal.
    pub struct ResponseFuture<S, B, M, ResBody>
    where
        S: Service<Request<B>>,
        M: BodyMode<ResBody>,
    {
        #[pin]
        state: State<S, B, S::Future, M::Body>,
        mode: PhantomData<fn() -> (M, ResBody)>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B, F, R> {
        Inner { #[pin] future: F },
        Refused { response: Option<Response<R>> },
        // Boxed: a request that passes untouched keeps a small future.
        Reading { #[pin] body: B, reading: Option<Box<Reading<S>>> },
    }
}

/// What a request whose body is being read waits with.
pub(crate) struct Reading<S> {
    parts: Parts,
    service: S,
    route: Arc<Route>,
    shared: Arc<Shared>,
    violations: Violations,
    collected: Collected,
    limit: u64,
}

impl<S> Reading<S> {
    pub(crate) fn new(
        parts: Parts,
        service: S,
        route: Arc<Route>,
        shared: Arc<Shared>,
        violations: Violations,
        limit: u64,
    ) -> Self {
        Self {
            parts,
            service,
            route,
            shared,
            violations,
            collected: Collected::default(),
            limit,
        }
    }
}

/// How reading a body ended.
enum Read {
    Whole,
    TooLarge,
    Failed(String),
}

impl<S, B, M, ResBody> ResponseFuture<S, B, M, ResBody>
where
    S: Service<Request<B>>,
    M: BodyMode<ResBody>,
{
    pub(crate) fn inner(future: S::Future) -> Self {
        Self::with(State::Inner { future })
    }

    pub(crate) fn refused(response: Response<M::Body>) -> Self {
        Self::with(State::Refused {
            response: Some(response),
        })
    }

    pub(crate) fn reading(body: B, reading: Reading<S>) -> Self {
        Self::with(State::Reading {
            body,
            reading: Some(Box::new(reading)),
        })
    }

    fn with(state: State<S, B, S::Future, M::Body>) -> Self {
        Self {
            state,
            mode: PhantomData,
        }
    }
}

impl<S, B, M, ResBody> Future for ResponseFuture<S, B, M, ResBody>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    B: FromBytes,
    B::Error: fmt::Display,
    M: BodyMode<ResBody>,
{
    type Output = Result<Response<M::Body>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::Inner { future } => return future.poll(cx).map_ok(M::pass),
                StateProj::Refused { response } => {
                    return Poll::Ready(Ok(response
                        .take()
                        .expect("ResponseFuture polled after completion")))
                }
                StateProj::Reading { mut body, reading } => {
                    let state = reading
                        .as_mut()
                        .expect("ResponseFuture polled after completion");
                    let read = loop {
                        match ready!(body.as_mut().poll_frame(cx)) {
                            None => break Read::Whole,
                            Some(Ok(frame)) => {
                                // Trailers are dropped: the body is rebuilt from its bytes.
                                if let Ok(data) = frame.into_data() {
                                    if !state.collected.push(data, state.limit) {
                                        break Read::TooLarge;
                                    }
                                }
                            }
                            Some(Err(error)) => break Read::Failed(error.to_string()),
                        }
                    };
                    reading
                        .take()
                        .expect("ResponseFuture polled after completion")
                        .finish::<B, M, ResBody>(read)
                }
            };
            self.as_mut().project().state.set(next);
        }
    }
}

impl<S> Reading<S> {
    /// The state after the body was read: the inner service called, or a refusal.
    fn finish<B, M, ResBody>(self, read: Read) -> State<S, B, S::Future, M::Body>
    where
        S: Service<Request<B>, Response = Response<ResBody>>,
        B: FromBytes,
        M: BodyMode<ResBody>,
    {
        let Self {
            parts,
            mut service,
            route,
            shared,
            mut violations,
            collected,
            limit,
        } = self;
        let refused = |response| State::Refused {
            response: Some(response),
        };
        let bytes = match read {
            Read::Whole => collected.into_bytes(),
            Read::TooLarge => {
                return refused(refuse_with::<M, _>(
                    &shared,
                    &route,
                    Outcome::TooLarge,
                    Rejection::payload_too_large(limit),
                ));
            }
            Read::Failed(error) => {
                tracing::debug!(route = &*route.name, %error, "tollgate validate: the body could not be read");
                return refused(refuse_with::<M, _>(
                    &shared,
                    &route,
                    Outcome::Refused,
                    Rejection::bad_request("the body could not be read"),
                ));
            }
        };
        if let Some(schema) = &route.schema {
            check_body(schema, &bytes, &mut violations);
        }
        if !violations.is_empty() {
            return refused(refuse::<M, _>(&shared, &route, violations));
        }
        shared.count_passed();
        let request = Request::from_parts(parts, B::from_bytes(bytes));
        State::Inner {
            future: service.call(request),
        }
    }
}
