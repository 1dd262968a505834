use serde::Deserialize;
use tollgate_core::Principal;

/// What a route asks of its callers: whether credentials are needed, and which scopes (read
/// from a JWT's `scope` or `scp` claim, or granted by a custom authorizer).
///
/// ```
/// use tollgate_auth::RoutePolicy;
///
/// let read = RoutePolicy::authenticated().any_scope(["orders:read", "orders:admin"]);
/// let write = RoutePolicy::authenticated().all_scopes(["orders:read", "orders:write"]);
/// let public = RoutePolicy::anonymous();
/// # let _ = (read, write, public);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[must_use]
pub struct RoutePolicy {
    /// No credentials needed; credentials that are sent are still verified (a bad token is
    /// still a 401) and fill the `Principal`.
    anonymous: bool,
    /// At least one of these scopes (when not empty).
    any_of: Vec<String>,
    /// Every one of these scopes.
    all_of: Vec<String>,
}

impl RoutePolicy {
    /// Credentials required, no scopes: the default.
    pub fn authenticated() -> Self {
        Self::default()
    }

    /// No credentials required; a token that is sent is still verified.
    pub fn anonymous() -> Self {
        Self {
            anonymous: true,
            ..Self::default()
        }
    }

    /// The caller must hold at least one of `scopes`.
    pub fn any_scope<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.any_of = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// The caller must hold every one of `scopes`.
    pub fn all_scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.all_of = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// The scopes of which the caller must hold at least one (none: no such condition).
    pub fn any_of(&self) -> &[String] {
        &self.any_of
    }

    /// The scopes the caller must all hold.
    pub fn all_of(&self) -> &[String] {
        &self.all_of
    }

    /// Whether requests without credentials are let through.
    pub fn is_anonymous(&self) -> bool {
        self.anonymous
    }

    /// The scopes `principal` lacks, space-separated for a `WWW-Authenticate` challenge, or
    /// `None` when it holds enough.
    pub(crate) fn missing_scopes(&self, principal: &Principal) -> Option<String> {
        let (any_of, all_of) = (&self.any_of, &self.all_of);
        let any_ok = any_of.is_empty() || any_of.iter().any(|s| principal.has_scope(s));
        let all_ok = all_of.iter().all(|s| principal.has_scope(s));
        if any_ok && all_ok {
            return None;
        }
        // The challenge names what would satisfy the route: the whole all-of list, plus the
        // any-of list when that part failed.
        let mut wanted: Vec<&str> = all_of.iter().map(String::as_str).collect();
        if !any_ok {
            wanted.extend(any_of.iter().map(String::as_str));
        }
        Some(wanted.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holding(scopes: &[&str]) -> Principal {
        Principal::builder()
            .subject("u")
            .scopes(scopes.iter().copied())
            .build()
    }

    #[test]
    fn any_of_needs_one_and_all_of_needs_each() {
        let any = RoutePolicy::authenticated().any_scope(["a", "b"]);
        assert_eq!(any.missing_scopes(&holding(&["b"])), None);
        assert_eq!(any.missing_scopes(&holding(&["c"])).as_deref(), Some("a b"));

        let all = RoutePolicy::authenticated().all_scopes(["a", "b"]);
        assert_eq!(all.missing_scopes(&holding(&["a", "b", "c"])), None);
        assert_eq!(all.missing_scopes(&holding(&["a"])).as_deref(), Some("a b"));
    }

    #[test]
    fn no_scopes_required_lets_any_principal_through() {
        assert_eq!(
            RoutePolicy::authenticated().missing_scopes(&holding(&[])),
            None
        );
    }

    #[test]
    fn policies_deserialize_with_unknown_fields_refused() {
        let policy: RoutePolicy =
            serde_json::from_str(r#"{"all_of": ["orders:write"], "anonymous": false}"#).unwrap();
        assert_eq!(
            policy,
            RoutePolicy::authenticated().all_scopes(["orders:write"])
        );
        let error = serde_json::from_str::<RoutePolicy>(r#"{"scopes": ["x"]}"#).unwrap_err();
        assert!(error.to_string().contains("unknown field"), "{error}");
    }
}
