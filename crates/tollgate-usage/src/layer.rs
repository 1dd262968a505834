//! [`UsageLayer`]: enforces usage plans in front of a service.

use std::fmt;
use std::sync::Arc;

use tollgate_core::{InnerBody, WrapBody};
use tower::Layer;

use crate::plans::Shared;
use crate::Usage;

/// Enforces [`UsagePlans`](crate::UsagePlans): made by
/// [`UsagePlans::layer`](crate::UsagePlans::layer).
#[must_use]
pub struct UsageLayer<K, Q, T, M = WrapBody> {
    shared: Arc<Shared<K, Q, T>>,
    mode: M,
}

impl<K, Q, T> UsageLayer<K, Q, T> {
    pub(crate) fn new(shared: Arc<Shared<K, Q, T>>) -> Self {
        Self {
            shared,
            mode: WrapBody,
        }
    }
}

impl<K, Q, T, M> UsageLayer<K, Q, T, M> {
    /// Answers refusals in the inner service's own body type (which must be buildable from
    /// `Bytes`, as axum's `Body` is), so the layer fits where the body type cannot change,
    /// such as axum's `Router::route_layer`.
    pub fn keep_inner_body(self) -> UsageLayer<K, Q, T, InnerBody> {
        UsageLayer {
            shared: self.shared,
            mode: InnerBody,
        }
    }
}

impl<K, Q, T, M: Clone> Clone for UsageLayer<K, Q, T, M> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            mode: self.mode.clone(),
        }
    }
}

impl<K, Q, T, M> fmt::Debug for UsageLayer<K, Q, T, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageLayer")
            .field("sources", &self.shared.sources)
            .finish_non_exhaustive()
    }
}

impl<S, K, Q, T, M: Clone> Layer<S> for UsageLayer<K, Q, T, M> {
    type Service = Usage<S, K, Q, T, M>;

    fn layer(&self, inner: S) -> Self::Service {
        Usage {
            inner,
            shared: self.shared.clone(),
            mode: self.mode.clone(),
        }
    }
}
