use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

/// The response body of the cache layer: a stored body, the inner service's body, or the part
/// of the inner body read while deciding whether to store it, followed by the rest.
pub struct CacheBody<B: Body> {
    kind: Kind<B>,
}

enum Kind<B: Body> {
    Inner(Pin<Box<B>>),
    Full(Option<Bytes>),
    Prefix {
        read: VecDeque<Frame<Bytes>>,
        rest: Option<Pin<Box<B>>>,
        // Boxed like the body, so the wrapper stays Unpin.
        error: Option<Box<B::Error>>,
    },
}

impl<B: Body> std::fmt::Debug for CacheBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Inner(_) => "inner",
            Kind::Full(_) => "full",
            Kind::Prefix { .. } => "prefix",
        };
        f.debug_struct("CacheBody").field("kind", &kind).finish()
    }
}

impl<B: Body> CacheBody<B> {
    /// The inner service's body, untouched.
    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner(Box::pin(body)),
        }
    }

    /// A body of the given bytes.
    pub(crate) fn full(data: Bytes) -> Self {
        Self {
            kind: Kind::Full((!data.is_empty()).then_some(data)),
        }
    }

    pub(crate) fn empty() -> Self {
        Self {
            kind: Kind::Full(None),
        }
    }
}

/// A body read up to a limit.
pub(crate) enum Read<B: Body> {
    /// The whole body, within the limit and without trailers: storable.
    Whole(Bytes),
    /// Not storable: what was read, then whatever is left (nothing after an end or error).
    Partial(CacheBody<B>),
}

/// Reads `body` until it ends or passes `limit` bytes, so a large response is never held whole.
pub(crate) async fn read<B: Body<Data = Bytes>>(body: B, limit: usize) -> Read<B> {
    let mut body = Box::pin(body);
    let mut read = VecDeque::new();
    let mut len = 0usize;
    loop {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                let data_len = frame.data_ref().map_or(0, Bytes::len);
                let trailers = frame.is_trailers();
                read.push_back(frame);
                len += data_len;
                if len > limit || trailers {
                    return Read::Partial(CacheBody {
                        kind: Kind::Prefix {
                            read,
                            rest: (!body.is_end_stream()).then_some(body),
                            error: None,
                        },
                    });
                }
            }
            Some(Err(error)) => {
                return Read::Partial(CacheBody {
                    kind: Kind::Prefix {
                        read,
                        rest: None,
                        error: Some(Box::new(error)),
                    },
                })
            }
        }
    }
    let whole = match read.len() {
        0 => Bytes::new(),
        1 => read
            .pop_front()
            .and_then(|frame| frame.into_data().ok())
            .unwrap_or_default(),
        _ => {
            let mut whole = BytesMut::with_capacity(len);
            for frame in read {
                if let Ok(data) = frame.into_data() {
                    whole.extend_from_slice(&data);
                }
            }
            whole.freeze()
        }
    };
    Read::Whole(whole)
}

impl<B> Body for CacheBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        // Every variant keeps the inner body boxed, so the wrapper is Unpin.
        match &mut self.get_mut().kind {
            Kind::Inner(body) => body.as_mut().poll_frame(cx),
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Prefix { read, rest, error } => {
                if let Some(frame) = read.pop_front() {
                    return Poll::Ready(Some(Ok(frame)));
                }
                if let Some(error) = error.take() {
                    return Poll::Ready(Some(Err(*error)));
                }
                match rest {
                    Some(body) => body.as_mut().poll_frame(cx),
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner(body) => body.is_end_stream(),
            Kind::Full(data) => data.is_none(),
            Kind::Prefix { read, rest, error } => {
                read.is_empty()
                    && error.is_none()
                    && rest.as_ref().is_none_or(|b| b.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner(body) => body.size_hint(),
            Kind::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Prefix { read, rest, .. } => {
                let read: u64 = read
                    .iter()
                    .map(|f| f.data_ref().map_or(0, |d| d.len() as u64))
                    .sum();
                let rest = rest
                    .as_ref()
                    .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint());
                let mut hint = SizeHint::new();
                hint.set_lower(read + rest.lower());
                if let Some(upper) = rest.upper() {
                    hint.set_upper(read + upper);
                }
                hint
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    #[tokio::test]
    async fn a_body_within_the_limit_is_read_whole() {
        let Read::Whole(bytes) = read(Full::new(Bytes::from_static(b"hello")), 10).await else {
            panic!("five bytes fit in ten");
        };
        assert_eq!(bytes, "hello");
    }

    #[tokio::test]
    async fn a_body_past_the_limit_is_read_no_further_and_passes_on_whole() {
        let chunks = (0..10)
            .map(|i| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(vec![i; 4]))));
        let pulled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = pulled.clone();
        let stream = futures_lite_stream(chunks, counter);
        let Read::Partial(body) = read(StreamBody::new(stream), 10).await else {
            panic!("forty bytes do not fit in ten");
        };
        assert_eq!(
            pulled.load(std::sync::atomic::Ordering::SeqCst),
            3,
            "read stops past the limit"
        );
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(all.len(), 40);
        assert_eq!(&all[..8], &[0, 0, 0, 0, 1, 1, 1, 1]);
    }

    fn futures_lite_stream<I: Iterator + Unpin>(
        items: I,
        pulled: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) -> impl futures_core::Stream<Item = I::Item> + Unpin {
        struct Counting<I>(I, std::sync::Arc<std::sync::atomic::AtomicUsize>);
        impl<I: Iterator + Unpin> futures_core::Stream for Counting<I> {
            type Item = I::Item;
            fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<I::Item>> {
                let item = self.0.next();
                if item.is_some() {
                    self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                Poll::Ready(item)
            }
        }
        Counting(items, pulled)
    }
}
