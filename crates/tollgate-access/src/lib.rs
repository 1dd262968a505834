//! Access control for [tollgate](https://docs.rs/tollgate): who may call at all, decided
//! before any other step.
//!
//! - [`IpFilterLayer`]: IP allow and deny lists by CIDR, on the client's address as trusted
//!   proxies report it (Amazon API Gateway's resource policies on `aws:SourceIp`, Kong's
//!   ip-restriction). Refused clients get a 403 problem+json.
//! - [`cors`]: tower-http's CORS layer, re-exported. `tollgate::Gateway` puts it right after
//!   the IP lists and before the throttle, the authorizer and the usage plan, so a browser's
//!   preflight (which carries no credentials) is answered without being throttled, refused or
//!   counted against a quota, and refusals (401, 429) carry the CORS headers a browser needs
//!   to read them. tower-http answers every `OPTIONS` request as a preflight.
#![warn(missing_docs)]
#![deny(unsafe_code, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod cors_config;
mod ip;

pub use cors_config::{CorsConfig, CorsConfigError};
pub use ip::{
    IpFilter, IpFilterBuilder, IpFilterConfig, IpFilterError, IpFilterLayer, ResponseFuture,
};

/// tower-http's CORS layer (`CorsLayer`, `AllowOrigin`, ...).
pub use tower_http::cors;
