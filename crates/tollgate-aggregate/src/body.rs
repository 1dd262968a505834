//! Bodies the upstream wraps: the upload, to learn when it has been sent, and the download, to
//! hold it to the total timeout.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use crate::client::BoxError;

pin_project! {
    /// A request body that reports when it is done: sent whole, failed, or dropped. The
    /// response timeout starts then, so a slow client's upload does not count against the
    /// upstream.
    pub(crate) struct Upload<B> {
        #[pin]
        body: B,
        done: Option<oneshot::Sender<()>>,
    }
}

impl<B: Body> Upload<B> {
    pub(crate) fn new(body: B) -> (Self, oneshot::Receiver<()>) {
        let (done, receiver) = oneshot::channel();
        let mut upload = Self {
            body,
            done: Some(done),
        };
        if upload.body.is_end_stream() {
            upload.finish();
        }
        (upload, receiver)
    }

    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

impl<B: Body> Body for Upload<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let polled = this.body.as_mut().poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(None | Some(Err(_))) => true,
            Poll::Ready(Some(Ok(_))) => this.body.is_end_stream(),
            Poll::Pending => false,
        };
        if ended {
            if let Some(done) = this.done.take() {
                let _ = done.send(());
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

pin_project! {
    /// A response body cut off at the exchange's total deadline.
    pub struct Download<B> {
        #[pin]
        body: B,
        deadline: Option<Pin<Box<Sleep>>>,
    }
}

impl<B> Download<B> {
    pub(crate) fn new(body: B, deadline: Option<Instant>) -> Self {
        Self {
            body,
            deadline: deadline.map(|at| Box::pin(tokio::time::sleep_until(at))),
        }
    }
}

impl<B> std::fmt::Debug for Download<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download").finish_non_exhaustive()
    }
}

/// The upstream's body did not finish within the total timeout.
#[derive(Debug, thiserror::Error)]
#[error("the upstream's response did not finish within the total timeout")]
pub struct TotalTimeout;

impl<B> Body for Download<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Poll::Ready(frame) = this.body.poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let expired = this
            .deadline
            .as_mut()
            .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
        if expired {
            *this.deadline = None;
            return Poll::Ready(Some(Err(Box::new(TotalTimeout))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
