use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

/// Who is calling: the verified subject, its scopes and claims, and — once a usage plan has
/// matched — the API key id and usage plan id.
///
/// Authorizers insert it into the request's extensions; the usage-plan layer fills in the key
/// and plan; throttles, quotas and caches key on it. Cheap to clone (one `Arc`).
///
/// ```
/// use tollgate_core::Principal;
///
/// let principal = Principal::builder()
///     .subject("user-42")
///     .scopes(["orders:read", "orders:write"])
///     .claim("tenant", "acme")
///     .build();
/// assert_eq!(principal.subject(), Some("user-42"));
/// assert!(principal.has_scope("orders:read"));
/// assert_eq!(principal.claim("tenant").and_then(|v| v.as_str()), Some("acme"));
///
/// let keyed = principal.with_api_key("key-7", "gold");
/// assert_eq!(keyed.api_key_id(), Some("key-7"));
/// assert_eq!(keyed.usage_plan_id(), Some("gold"));
///
/// // A usage identifier key is a secret, so Debug output never shows it.
/// let metered = Principal::builder().usage_identifier_key("tg_secret").build();
/// assert_eq!(metered.usage_identifier_key(), Some("tg_secret"));
/// assert!(!format!("{metered:?}").contains("tg_secret"));
/// ```
#[derive(Clone, PartialEq)]
pub struct Principal(Arc<PrincipalInner>);

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Clone, Default, PartialEq)]
struct PrincipalInner {
    /// Shared on its own, so that adding the API key to an authorized principal (on every
    /// request through the authorizer and the usage plan) copies no claim.
    identity: Arc<Identity>,
    api_key_id: Option<Arc<str>>,
    usage_plan_id: Option<Arc<str>>,
    usage_identifier_key: Option<Arc<str>>,
}

/// Who the authorizer says the caller is.
#[derive(Clone, Default, PartialEq)]
struct Identity {
    subject: Option<Arc<str>>,
    scopes: Vec<String>,
    claims: Map<String, Value>,
}

impl fmt::Debug for PrincipalInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("subject", &self.identity.subject)
            .field("scopes", &self.identity.scopes)
            .field("claims", &self.identity.claims)
            .field("api_key_id", &self.api_key_id)
            .field("usage_plan_id", &self.usage_plan_id)
            // An API key is a secret: never in logs.
            .field(
                "usage_identifier_key",
                &self.usage_identifier_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Principal {
    /// Starts building a principal.
    pub fn builder() -> PrincipalBuilder {
        PrincipalBuilder::default()
    }

    /// The verified subject (a JWT's `sub`, an authorizer's principal id).
    pub fn subject(&self) -> Option<&str> {
        self.0.identity.subject.as_deref()
    }

    /// The subject as a shared string (a refcount bump), for use as a key.
    pub fn subject_shared(&self) -> Option<&Arc<str>> {
        self.0.identity.subject.as_ref()
    }

    /// The granted scopes.
    pub fn scopes(&self) -> &[String] {
        &self.0.identity.scopes
    }

    /// Whether `scope` was granted.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.0.identity.scopes.iter().any(|s| s == scope)
    }

    /// One verified claim or authorizer context value.
    pub fn claim(&self, name: &str) -> Option<&Value> {
        self.0.identity.claims.get(name)
    }

    /// All verified claims and authorizer context values.
    pub fn claims(&self) -> &Map<String, Value> {
        &self.0.identity.claims
    }

    /// The id (never the secret) of the API key the request presented.
    pub fn api_key_id(&self) -> Option<&str> {
        self.0.api_key_id.as_deref()
    }

    /// The API key id as a shared string, for use as a key.
    pub fn api_key_id_shared(&self) -> Option<&Arc<str>> {
        self.0.api_key_id.as_ref()
    }

    /// The usage plan the API key belongs to.
    pub fn usage_plan_id(&self) -> Option<&str> {
        self.0.usage_plan_id.as_deref()
    }

    /// The API key a custom authorizer chose for the usage-plan layer to meter this request
    /// by (Amazon API Gateway's `usageIdentifierKey`). A secret: never log it.
    pub fn usage_identifier_key(&self) -> Option<&str> {
        self.0.usage_identifier_key.as_deref()
    }

    /// This principal with the API key id and usage plan id filled in.
    #[must_use]
    pub fn with_api_key(
        mut self,
        api_key_id: impl Into<Arc<str>>,
        plan_id: impl Into<Arc<str>>,
    ) -> Self {
        let inner = Arc::make_mut(&mut self.0);
        inner.api_key_id = Some(api_key_id.into());
        inner.usage_plan_id = Some(plan_id.into());
        self
    }
}

/// Builds a [`Principal`].
#[derive(Debug, Default)]
#[must_use]
pub struct PrincipalBuilder(PrincipalInner);

impl PrincipalBuilder {
    /// Sets the subject.
    pub fn subject(mut self, subject: impl Into<Arc<str>>) -> Self {
        Arc::make_mut(&mut self.0.identity).subject = Some(subject.into());
        self
    }

    /// Adds scopes.
    pub fn scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Arc::make_mut(&mut self.0.identity)
            .scopes
            .extend(scopes.into_iter().map(Into::into));
        self
    }

    /// Adds one claim or authorizer context value.
    pub fn claim(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        Arc::make_mut(&mut self.0.identity)
            .claims
            .insert(name.into(), value.into());
        self
    }

    /// Replaces all claims.
    pub fn claims(mut self, claims: Map<String, Value>) -> Self {
        Arc::make_mut(&mut self.0.identity).claims = claims;
        self
    }

    /// Sets the API key id and its usage plan id.
    pub fn api_key(
        mut self,
        api_key_id: impl Into<Arc<str>>,
        plan_id: impl Into<Arc<str>>,
    ) -> Self {
        self.0.api_key_id = Some(api_key_id.into());
        self.0.usage_plan_id = Some(plan_id.into());
        self
    }

    /// Sets the API key the usage-plan layer meters this caller by (a custom authorizer's
    /// usage identifier key).
    pub fn usage_identifier_key(mut self, key: impl Into<Arc<str>>) -> Self {
        self.0.usage_identifier_key = Some(key.into());
        self
    }

    /// Finishes the principal.
    pub fn build(self) -> Principal {
        Principal(Arc::new(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_an_api_key_to_a_shared_principal_copies_no_claim() {
        let authorized = Principal::builder()
            .subject("ann")
            .scopes(["orders:read"])
            .claim("email", "ann@example.com")
            .build();
        // The authorizer keeps its copy (in its cache); the usage plan adds the key to another.
        let metered = authorized.clone().with_api_key("acme", "pro");
        assert_eq!(metered.api_key_id(), Some("acme"));
        assert_eq!(authorized.api_key_id(), None);
        assert_eq!(metered.claims(), authorized.claims());
        assert!(std::ptr::eq(metered.claims(), authorized.claims()));
        assert!(std::ptr::eq(metered.scopes(), authorized.scopes()));
    }
}
