//! axum extractors for what the layers insert.

use axum::extract::FromRequestParts;
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
