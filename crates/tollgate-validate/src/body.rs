//! Request bodies the layer can rebuild after reading them.

use bytes::{Bytes, BytesMut};
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{BodyExt, Full};

/// A request body that can be made again from the bytes the layer read, so the service under
/// the layer receives the same body type as the layer did.
///
/// Implemented for axum's `Body` (with the `axum` feature), [`Full<Bytes>`], and
/// [`BoxBody`] / [`UnsyncBoxBody`] of [`Bytes`]. hyper's `Incoming` cannot be made from
/// bytes: in a plain hyper service, turn it into one of these first, for example with
/// `request.map(axum::body::Body::new)` or `request.map(|body| body.boxed())`.
pub trait FromBytes: http_body::Body<Data = Bytes> + Sized {
    /// A body of `bytes`.
    fn from_bytes(bytes: Bytes) -> Self;
}

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl FromBytes for axum::body::Body {
    fn from_bytes(bytes: Bytes) -> Self {
        Self::from(bytes)
    }
}

impl FromBytes for Full<Bytes> {
    fn from_bytes(bytes: Bytes) -> Self {
        Self::new(bytes)
    }
}

impl<E: 'static> FromBytes for BoxBody<Bytes, E> {
    fn from_bytes(bytes: Bytes) -> Self {
        Full::new(bytes).map_err(|never| match never {}).boxed()
    }
}

impl<E: 'static> FromBytes for UnsyncBoxBody<Bytes, E> {
    fn from_bytes(bytes: Bytes) -> Self {
        Full::new(bytes)
            .map_err(|never| match never {})
            .boxed_unsync()
    }
}

/// The body read so far: one chunk kept as it came, or several copied together.
#[derive(Debug, Default)]
pub(crate) struct Collected {
    first: Option<Bytes>,
    rest: Option<BytesMut>,
    len: u64,
}

impl Collected {
    /// Adds a chunk, unless the body would then pass `limit`: `false`, and nothing is kept.
    pub(crate) fn push(&mut self, chunk: Bytes, limit: u64) -> bool {
        let len = self.len.saturating_add(chunk.len() as u64);
        if len > limit {
            return false;
        }
        self.len = len;
        if chunk.is_empty() {
            return true;
        }
        match (&mut self.first, &mut self.rest) {
            (None, _) => self.first = Some(chunk),
            (Some(_), Some(rest)) => rest.extend_from_slice(&chunk),
            (Some(first), None) => {
                let mut rest = BytesMut::with_capacity(first.len() + chunk.len());
                rest.extend_from_slice(first);
                rest.extend_from_slice(&chunk);
                self.rest = Some(rest);
            }
        }
        true
    }

    pub(crate) fn into_bytes(self) -> Bytes {
        match (self.first, self.rest) {
            (_, Some(rest)) => rest.freeze(),
            (Some(first), None) => first,
            (None, None) => Bytes::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_up_to_the_limit_and_keeps_nothing_past_it() {
        let mut collected = Collected::default();
        assert!(collected.push(Bytes::from_static(b"ab"), 5));
        assert!(collected.push(Bytes::new(), 5));
        assert!(collected.push(Bytes::from_static(b"cd"), 5));
        assert!(!collected.push(Bytes::from_static(b"ef"), 5));
        assert!(collected.push(Bytes::from_static(b"e"), 5));
        assert_eq!(collected.into_bytes(), "abcde");
    }

    #[test]
    fn a_single_chunk_is_kept_without_copying() {
        let chunk = Bytes::from(vec![7u8; 64]);
        let mut collected = Collected::default();
        assert!(collected.push(chunk.clone(), 64));
        assert_eq!(collected.into_bytes().as_ptr(), chunk.as_ptr());
        assert_eq!(Collected::default().into_bytes(), "");
    }
}
