//! Bodies the upstream wraps: the upload, to follow its progress, and the download, to hold
//! it to the total timeout.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use crate::client::BoxError;

pin_project! {
    /// A request body that reports its progress: a tick for each frame passed upstream, and
    /// the end (sent whole, failed, or dropped) by dropping its sender. The upstream's timeout
    /// restarts on each tick, so a steady upload never times out, while a stalled one (or an
    /// upstream that stopped reading) does.
    pub(crate) struct Upload<B> {
        #[pin]
        body: B,
        progress: Option<watch::Sender<()>>,
    }
}

impl<B: Body> Upload<B> {
    pub(crate) fn new(body: B) -> (Self, watch::Receiver<()>) {
        let (progress, receiver) = watch::channel(());
        let upload = Self {
            progress: (!body.is_end_stream()).then_some(progress),
            body,
        };
        (upload, receiver)
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
        match &polled {
            Poll::Ready(None | Some(Err(_))) => *this.progress = None,
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => *this.progress = None,
            Poll::Ready(Some(Ok(_))) => {
                if let Some(progress) = this.progress {
                    progress.send_replace(());
                }
            }
            Poll::Pending => {}
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
