//! axum extractors for what the layers insert.

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use http::request::Parts;

use crate::{BearerError, Principal, Rejection, Stage};

/// Extracts the [`Principal`] an authorizer inserted; refuses with 401 when there is none.
impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Principal>().cloned().ok_or_else(|| {
            Rejection::unauthorized(BearerError::Missing).with_detail("authentication required")
        })
    }
}

/// Extracts the [`Principal`] when there is one, for routes open to anonymous callers:
/// `Option<Principal>` in a handler never refuses.
impl<S: Send + Sync> OptionalFromRequestParts<S> for Principal {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Principal>().cloned())
    }
}

/// Extracts the [`Stage`] the stage router chose; a 500 when no stage router ran, since that is
/// a misconfiguration, not the client's fault.
impl<S: Send + Sync> FromRequestParts<S> for Stage {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Stage>().cloned().ok_or_else(|| {
            Rejection::internal(&std::io::Error::other(
                "a handler extracts Stage but no stage router inserted one",
            ))
        })
    }
}
