//! Authorizers for tollgate: only verified callers reach the service behind.
//!
//! An [`AuthLayer`] asks an [`Authorizer`] who is calling, applies the matched route's
//! [`RoutePolicy`] (anonymous access, required scopes), and either inserts the verified
//! [`Principal`](tollgate_core::Principal) into the request or refuses:
//!
//! - 401 with `WWW-Authenticate: Bearer` when no credentials were sent, and with
//!   `error="invalid_token"` (or `"invalid_request"`) when they are bad (RFC 6750);
//! - 403 with `error="insufficient_scope", scope="…"` when the route's scopes are missing;
//! - 503 with `Retry-After` when the decision cannot be made now (no keys yet, an authorizer
//!   that timed out), 500 when a custom authorizer fails.
//!
//! Refusals are problem+json documents that say which check failed in general terms
//! ("the token has expired") and never echo the token.
//!
//! Two authorizers come with the crate:
//!
//! - [`jwt::JwtAuthorizer`] (feature `jwt`): JWTs from one or more identity providers, keys
//!   static or from a JWKS URL with rotation, and verified tokens cached so a token seen
//!   before costs a hash lookup instead of a signature check.
//! - [`CustomAuthorizer`]: the application's own async function or tower service decides
//!   from chosen identity sources, like Amazon API Gateway's Lambda authorizers; decisions
//!   are cached per identity and route, and concurrent first requests share one call.
//!
//! # Example
//!
//! ```
//! use axum::{routing::get, Router};
//! use tollgate_auth::jwt::{JwtAuthorizer, JwtProvider, Keys};
//! use tollgate_auth::{AuthLayer, RoutePolicy};
//! use tollgate_core::Principal;
//!
//! # fn build() -> Result<Router, Box<dyn std::error::Error>> {
//! let jwt = JwtAuthorizer::builder()
//!     .provider(
//!         JwtProvider::new("https://issuer.example", Keys::hmac(b"a secret of at least 32 bytes!!!"))
//!             .audience("orders-api"),
//!     )
//!     .build()?;
//! let auth = AuthLayer::builder(jwt)
//!     .route("GET /health", RoutePolicy::anonymous())
//!     .route("POST /orders", RoutePolicy::authenticated().all_scopes(["orders:write"]))
//!     .claim_header("sub", "x-user-id")
//!     .keep_inner_body()
//!     .build()?;
//!
//! let app = Router::new()
//!     .route("/me", get(|who: Principal| async move { who.subject().unwrap_or_default().to_owned() }))
//!     .route("/health", get(|| async { "ok" }))
//!     .layer(auth);
//! # Ok(app)
//! # }
//! # build().unwrap();
//! ```
//!
//! [`AuthConfig`] and [`JwtConfig`] build the same from a configuration file.
//!
//! # Observability
//!
//! Each refusal is a `tracing` event at DEBUG (the reason; never the token), each allowed
//! request one at TRACE. The `metrics` counter `tollgate_auth_decisions_total` carries an
//! `outcome` label (`allowed`, `anonymous`, `unauthorized`, `forbidden`, `error`), and
//! `tollgate_auth_custom_calls_total` counts calls of a custom authorizer.
#![warn(missing_docs)]
#![deny(unsafe_code, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod authorizer;
mod config;
mod custom;
mod future;
#[cfg(feature = "jwt")]
#[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
pub mod jwt;
mod layer;
mod policy;
mod service;

pub use authorizer::{AuthRequest, Authorizer, Decision, Verdict};
pub use config::AuthConfig;
#[cfg(feature = "jwt")]
pub use config::{JwtConfig, KeysConfig, ProviderConfig};
pub use custom::{
    Allow, AuthorizerResponse, BoxError, CustomAuthorizer, CustomAuthorizerBuilder,
    CustomAuthorizerError, Identity, IdentitySource,
};
pub use future::ResponseFuture;
pub use layer::{AuthBuilder, AuthError, AuthLayer};
pub use policy::RoutePolicy;
pub use service::Auth;
