//! Shared types every tollgate layer speaks.
//!
//! A gateway is a stack of layers that each read what the ones before them decided. This crate
//! holds the vocabulary they share, so that a throttle can key on the principal an authorizer
//! verified, and every refusal reaches the client in the same shape:
//!
//! - [`Principal`]: who is calling, inserted by authorizers and usage plans.
//! - [`Stage`]: which stage and deployment serves the request.
//! - [`Rejection`]: every refusal, rendered as `application/problem+json` (RFC 9457) with the
//!   headers its status needs.
//! - [`KeyExtractor`]: what a limit or quota counts by (client IP behind trusted proxies, a
//!   header, the principal, the API key, the matched route, or everyone together).
//! - [`RouteTable`]: method + path template to settings, for per-route overrides.
//! - [`Clock`]: the time source, so windows and TTLs are testable without sleeping.
//! - [`AccessRecord`]: where each layer notes what it decided, for the access log.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tollgate_core::Rejection;
//!
//! let refusal = Rejection::throttled(Duration::from_millis(200));
//! let response = refusal.into_response::<http_body_util::Empty<bytes::Bytes>>();
//! assert_eq!(response.status(), 429);
//! assert_eq!(response.headers()["retry-after"], "1");
//! assert_eq!(response.headers()["content-type"], "application/problem+json");
//! ```
#![warn(missing_docs)]
#![deny(unsafe_code, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod client_ip;
mod clock;
mod duration;
#[cfg(feature = "axum")]
mod extract;
mod hop;
pub mod key;
mod path;
mod principal;
pub mod ratelimit;
mod record;
mod rejection;
mod route;
mod stage;

pub use body::{BodyMode, InnerBody, ResponseBody, WrapBody};
pub use client_ip::{ForwardedHeader, TrustedProxies, TrustedProxiesError};
pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use duration::{DurationError, HumanDuration};
pub use hop::remove_hop_by_hop;
pub use key::{
    Key, KeyError, KeyExtractor, KeyExtractorExt, KeyScope, PeerAddr, RequestHead, MAX_KEY_BYTES,
};
pub use path::{has_dot_segment, is_dot_segment};
pub use principal::{Principal, PrincipalBuilder};
pub use record::{AccessFields, AccessRecord};
pub use rejection::{retry_after_seconds, BearerError, ProblemType, Rejection};
pub use route::{RouteMatch, RouteTable, RouteTableError};
pub use stage::Stage;
