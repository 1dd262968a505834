use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::Rejection;

pin_project! {
    /// The response body of a tollgate layer: the inner service's body, or a refusal's
    /// problem+json document.
    ///
    /// Layers are generic over the inner body, so a refusal cannot be built as `B` itself; this
    /// wrapper keeps the inner body (and its error type) untouched on the pass-through path.
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B> {
        Inner { #[pin] body: B },
        // Boxed: a pass-through response stays as small as the inner one.
        Full { data: Option<Box<Bytes>> },
    }
}

impl<B> ResponseBody<B> {
    /// Wraps the inner service's body.
    pub fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    /// A body of the given bytes.
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data = data.into();
        Self {
            kind: Kind::Full {
                data: (!data.is_empty()).then(|| Box::new(data)),
            },
        }
    }
}

impl<B> Default for ResponseBody<B> {
    fn default() -> Self {
        Self {
            kind: Kind::Full { data: None },
        }
    }
}

/// How a layer's responses carry bodies: its refusals, and the inner service's responses.
///
/// [`WrapBody`] (the default) works with any inner body; [`InnerBody`] passes responses
/// through untouched for inner bodies that can be built from bytes.
pub trait BodyMode<B>: Clone + Send + Sync + 'static {
    /// The body of the layer's responses.
    type Body;

    /// An inner service's response, as the layer returns it.
    fn pass(response: Response<B>) -> Response<Self::Body>;

    /// A refusal, as the layer returns it.
    fn refuse(rejection: Rejection) -> Response<Self::Body>;
}

/// Wraps bodies in [`ResponseBody`]: works with any inner body (`Empty`, `BoxBody`, hyper's
/// own). The default.
#[derive(Clone, Copy, Debug, Default)]
pub struct WrapBody;

impl<B> BodyMode<B> for WrapBody {
    type Body = ResponseBody<B>;

    #[inline]
    fn pass(response: Response<B>) -> Response<ResponseBody<B>> {
        response.map(ResponseBody::inner)
    }

    fn refuse(rejection: Rejection) -> Response<ResponseBody<B>> {
        rejection.into_response()
    }
}

/// Keeps the inner service's body type and builds refusals in it, for bodies made from bytes
/// (axum's `Body`, `Full<Bytes>`): responses pass through untouched. Under axum's
/// `Router::layer` this also spares axum boxing a wrapped body on every response.
#[derive(Clone, Copy, Debug, Default)]
pub struct InnerBody;

impl<B: From<Bytes>> BodyMode<B> for InnerBody {
    type Body = B;

    #[inline]
    fn pass(response: Response<B>) -> Response<B> {
        response
    }

    fn refuse(rejection: Rejection) -> Response<B> {
        rejection.into_response_with(B::from)
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(*d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn full_body_yields_its_bytes_once_and_reports_exact_size() {
        let body: ResponseBody<Full<Bytes>> = ResponseBody::full("{}");
        assert_eq!(body.size_hint().exact(), Some(2));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "{}");
    }

    #[tokio::test]
    async fn inner_body_mode_builds_refusals_in_the_inner_body_type() {
        let response = <InnerBody as BodyMode<Full<Bytes>>>::refuse(Rejection::forbidden());
        assert_eq!(response.status(), 403);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(body.starts_with(br#"{"type":"urn:tollgate:problem:forbidden""#));
    }

    #[tokio::test]
    async fn inner_body_passes_through() {
        let body = ResponseBody::inner(Full::new(Bytes::from_static(b"hello")));
        assert!(!body.is_end_stream());
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
    }
}
