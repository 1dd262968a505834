//! tower-http's request-id layers, as the gateway's first step.

use http::HeaderName;
use tower::Layer;

/// tower-http's request-id layers as one: set (or keep) the id, and echo it.
#[derive(Clone, Debug)]
pub(crate) struct RequestIdLayer {
    pub(crate) header: HeaderName,
}

impl<S> Layer<S> for RequestIdLayer {
    type Service = tower_http::request_id::SetRequestId<
        tower_http::request_id::PropagateRequestId<S>,
        tower_http::request_id::MakeRequestUuid,
    >;

    // Set outside, so that the id made for a request without one is there to be echoed.
    fn layer(&self, inner: S) -> Self::Service {
        use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
        let propagate = PropagateRequestIdLayer::new(self.header.clone()).layer(inner);
        SetRequestIdLayer::new(self.header.clone(), MakeRequestUuid).layer(propagate)
    }
}
