//! Authorizers for tollgate: only verified callers reach the service behind.
//!
//! (Module documentation is completed with the JWT and custom authorizers.)
#![warn(missing_docs)]
#![deny(unsafe_code, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod authorizer;
mod custom;
mod future;
#[cfg(feature = "jwt")]
#[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
pub mod jwt;
mod layer;
mod policy;
mod service;

pub use authorizer::{AuthRequest, Authorizer, Decision, Verdict};
pub use custom::{
    Allow, AuthorizerResponse, BoxError, CustomAuthorizer, CustomAuthorizerBuilder,
    CustomAuthorizerError, Identity, IdentitySource,
};
pub use future::ResponseFuture;
pub use layer::{AuthBuilder, AuthError, AuthLayer};
pub use policy::RoutePolicy;
pub use service::Auth;
