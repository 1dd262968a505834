//! What the crate's test binaries share: a bare service and requests from a peer.
#![allow(dead_code)] // each test binary uses its own part of this module

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use tollgate_core::PeerAddr;

pub type Bare = tower::util::ServiceFn<
    fn(Request<()>) -> std::future::Ready<Result<Response<Empty<Bytes>>, Infallible>>,
>;

/// The service under the layer: answers at once with an empty 200.
pub fn bare() -> Bare {
    tower::service_fn(|_| std::future::ready(Ok(Response::new(Empty::new()))))
}

/// A request whose connection came from `peer`, as a hyper server would mark it.
pub fn request_from(peer: &str) -> Request<()> {
    let mut request = Request::new(());
    request
        .extensions_mut()
        .insert(PeerAddr(peer.parse().unwrap()));
    request
}
