//! Passing the caller's verified identity on to upstreams, as headers.

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use tollgate_core::Principal;

/// Principal claims sent upstream as headers: `("sub", "x-user-id")`.
#[derive(Clone, Debug, Default)]
pub(crate) struct ClaimHeaders(Vec<(String, HeaderName)>);

impl ClaimHeaders {
    pub(crate) fn push(&mut self, claim: String, header: HeaderName) {
        self.0.retain(|(_, name)| *name != header);
        self.0.push((claim, header));
    }

    /// Removes every claim header the client sent, then sets those the principal has.
    ///
    /// The removal comes first whatever the principal: an upstream that trusts `X-User-Id`
    /// must never see one a client wrote.
    pub(crate) fn apply(&self, headers: &mut HeaderMap, principal: Option<&Principal>) {
        for (claim, header) in &self.0 {
            headers.remove(header);
            if let Some(value) = principal.and_then(|principal| claim_value(principal, claim)) {
                headers.insert(header.clone(), value);
            }
        }
    }
}

/// A claim as a header value: strings as they are, other JSON values as JSON text. `sub` falls
/// back to the principal's subject, `scope` to its scopes, `api_key_id` and `usage_plan_id` to
/// what a usage plan recorded.
fn claim_value(principal: &Principal, claim: &str) -> Option<HeaderValue> {
    let text = match principal.claim(claim) {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Null) => return None,
        Some(other) => other.to_string(),
        None => match claim {
            "sub" => principal.subject()?.to_owned(),
            "scope" if !principal.scopes().is_empty() => principal.scopes().join(" "),
            "api_key_id" => principal.api_key_id()?.to_owned(),
            "usage_plan_id" => principal.usage_plan_id()?.to_owned(),
            _ => return None,
        },
    };
    // A claim with a newline or other control character cannot be a header; it is left out
    // rather than mangled.
    HeaderValue::try_from(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers() -> ClaimHeaders {
        let mut claims = ClaimHeaders::default();
        claims.push("sub".into(), HeaderName::from_static("x-user-id"));
        claims.push("tier".into(), HeaderName::from_static("x-tier"));
        claims.push("org".into(), HeaderName::from_static("x-org"));
        claims
    }

    #[test]
    fn claims_become_headers_and_client_copies_are_dropped() {
        let principal = Principal::builder()
            .subject("user-7")
            .claim("tier", 3)
            .build();
        let mut map = HeaderMap::new();
        map.insert("x-user-id", HeaderValue::from_static("admin"));
        map.insert("x-org", HeaderValue::from_static("forged"));
        headers().apply(&mut map, Some(&principal));
        assert_eq!(map["x-user-id"], "user-7");
        assert_eq!(map["x-tier"], "3");
        assert!(!map.contains_key("x-org"));
    }

    #[test]
    fn without_a_principal_claim_headers_are_only_removed() {
        let mut map = HeaderMap::new();
        map.insert("x-user-id", HeaderValue::from_static("admin"));
        headers().apply(&mut map, None);
        assert!(map.is_empty());
    }
}
