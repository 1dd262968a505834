//! A body made on the fly as it is read, of any size, without a `Content-Length`: for
//! streaming a large upload or download without holding it anywhere.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

/// `remaining` bytes of `x`, sent `chunk` at a time.
pub struct Generated {
    chunk: Bytes,
    remaining: u64,
}

impl Generated {
    /// A body of `total` bytes in chunks of `chunk` bytes.
    pub fn new(total: u64, chunk: usize) -> Self {
        Self {
            chunk: Bytes::from(vec![b'x'; chunk]),
            remaining: total,
        }
    }
}

impl http_body::Body for Generated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let size = self.remaining.min(self.chunk.len() as u64);
        self.remaining -= size;
        let data = self.chunk.slice(..size as usize);
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
