//! `Mock`: an integration that answers from configuration alone (Amazon API Gateway's Mock
//! integration).

use std::convert::Infallible;
use std::fmt;
use std::future::{ready, Ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use tower::Service;

/// A tower service that answers every request with a configured response, or with what a
/// closure makes of the request's head. The request body is never read.
///
/// # Example
///
/// ```
/// use http::StatusCode;
/// use tollgate_aggregate::Mock;
///
/// let health = Mock::json(StatusCode::OK, &serde_json::json!({"status": "ok"}));
/// let teapot = Mock::new(StatusCode::IM_A_TEAPOT)
///     .header("x-reason", "short and stout")
///     .body("I'm a teapot");
/// let echo = Mock::from_fn(|request| {
///     http::Response::new(bytes::Bytes::from(request.uri.path().to_owned()))
/// });
/// ```
#[derive(Clone)]
pub struct Mock {
    answer: Answer,
}

type AnswerFn = dyn Fn(&Parts) -> Response<Bytes> + Send + Sync;

#[derive(Clone)]
enum Answer {
    Fixed(Arc<Response<Bytes>>),
    Dynamic(Arc<AnswerFn>),
}

impl fmt::Debug for Mock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.answer {
            Answer::Fixed(response) => f.debug_tuple("Mock").field(response).finish(),
            Answer::Dynamic(_) => f.write_str("Mock(<fn>)"),
        }
    }
}

impl Mock {
    /// Answers `status` with no headers and an empty body.
    pub fn new(status: StatusCode) -> Self {
        let mut response = Response::new(Bytes::new());
        *response.status_mut() = status;
        Self {
            answer: Answer::Fixed(Arc::new(response)),
        }
    }

    /// Answers `status` with `value` as `application/json`.
    pub fn json(status: StatusCode, value: &serde_json::Value) -> Self {
        Self::new(status)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(value.to_string())
    }

    /// Answers with whatever `answer` makes of each request's head.
    pub fn from_fn<F>(answer: F) -> Self
    where
        F: Fn(&Parts) -> Response<Bytes> + Send + Sync + 'static,
    {
        Self {
            answer: Answer::Dynamic(Arc::new(answer)),
        }
    }

    /// Adds a header to the fixed response (ignored by [`Mock::from_fn`]).
    ///
    /// # Panics
    ///
    /// If `name` or `value` is not a valid header name or value: they are written in the
    /// code, so this is a bug found on first run.
    #[must_use]
    pub fn header<K, V>(mut self, name: K, value: V) -> Self
    where
        K: TryInto<HeaderName>,
        V: TryInto<HeaderValue>,
    {
        let (Ok(name), Ok(value)) = (name.try_into(), value.try_into()) else {
            panic!("Mock::header: invalid header name or value");
        };
        if let Answer::Fixed(response) = &mut self.answer {
            Arc::make_mut(response).headers_mut().append(name, value);
        }
        self
    }

    /// Sets the fixed response's body (ignored by [`Mock::from_fn`]).
    #[must_use]
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        if let Answer::Fixed(response) = &mut self.answer {
            *Arc::make_mut(response).body_mut() = body.into();
        }
        self
    }
}

impl<B> Service<Request<B>> for Mock {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let response = match &self.answer {
            Answer::Fixed(response) => copy(response),
            Answer::Dynamic(answer) => {
                let (parts, _body) = request.into_parts();
                answer(&parts)
            }
        };
        ready(Ok(response.map(Full::new)))
    }
}

/// A fresh response with the fixed one's parts; its body shares the bytes.
fn copy(response: &Response<Bytes>) -> Response<Bytes> {
    let mut copy = Response::new(response.body().clone());
    *copy.status_mut() = response.status();
    *copy.headers_mut() = HeaderMap::clone(response.headers());
    copy
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_fixed_mock_answers_its_status_headers_and_body() {
        let mock = Mock::new(StatusCode::ACCEPTED)
            .header("x-one", "1")
            .body("done");
        let response = mock.oneshot(Request::new(())).await.unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        assert_eq!(response.headers()["x-one"], "1");
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(body, "done");
    }

    #[tokio::test]
    async fn a_closure_mock_reads_the_request() {
        let mock = Mock::from_fn(|parts| Response::new(Bytes::from(parts.uri.path().to_owned())));
        let request = Request::builder().uri("/pets/7").body(()).unwrap();
        let response = mock.oneshot(request).await.unwrap();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(body, "/pets/7");
    }
}
