//! A stand-in authorizer for tests of layers that read a [`Principal`]: `x-user` becomes a
//! verified principal with that subject and the space-separated scopes of `x-scopes`.

use axum::extract::Request;
use axum::middleware::{from_fn, Next};
use axum::Router;
use tollgate_core::Principal;

/// `app` behind the stand-in authorizer.
pub fn verified(app: Router) -> Router {
    app.layer(from_fn(|mut request: Request, next: Next| async move {
        if let Some(principal) = principal_of(request.headers()) {
            request.extensions_mut().insert(principal);
        }
        next.run(request).await
    }))
}

fn principal_of(headers: &http::HeaderMap) -> Option<Principal> {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let subject = header("x-user")?;
    let scopes = header("x-scopes").unwrap_or_default();
    Some(
        Principal::builder()
            .subject(subject)
            .scopes(scopes.split_whitespace())
            .build(),
    )
}
