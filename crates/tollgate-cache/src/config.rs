//! A cache from a configuration file.

use std::collections::BTreeMap;

use http::{HeaderName, StatusCode};
use serde::Deserialize;
use tollgate_core::HumanDuration;

use crate::layer::{CacheBuilder, CacheError, CacheLayer};
use crate::policy::{CachePolicy, ClientRefresh, QueryKey, Sharing};

/// A cache as a configuration file describes it: a default policy, per-route overrides of its
/// fields, and the layer's bounds.
///
/// ```
/// let config: tollgate_cache::CacheConfig = serde_json::from_value(serde_json::json!({
///     "max_bytes": 134217728,
///     "default": { "ttl": "60s", "client_refresh": { "require_scope": "cache:refresh" } },
///     "routes": {
///         "GET /products/{id}": { "ttl": "5m", "sharing": "shared", "stale_if_error": "1h" },
///         "GET /search": { "query": ["q", "page"] },
///         "/me": { "enabled": false }
///     }
/// })).unwrap();
/// let cache = config.builder().unwrap().build().unwrap();
/// # let _ = cache;
/// ```
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// The policy of routes without their own.
    #[serde(default)]
    pub default: PolicyConfig,
    /// Routes (`"GET /products/{id}"`) and the fields they change from the default policy.
    #[serde(default)]
    pub routes: BTreeMap<String, PolicyConfig>,
    /// The most bytes held (default 64 MiB).
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// The largest response stored (default 1 MiB).
    #[serde(default)]
    pub max_entry_bytes: Option<usize>,
    /// How long a request waits for a concurrent miss on its key (default `5s`).
    #[serde(default)]
    pub wait_timeout: Option<HumanDuration>,
    /// Request headers that mark a caller (default `authorization`, `x-api-key`, `cookie`).
    #[serde(default)]
    pub credential_headers: Option<Vec<String>>,
    /// The response header with purge tags (default `cache-tag`); `""` reads none.
    #[serde(default)]
    pub tag_header: Option<String>,
}

/// A cache policy in configuration; every field is optional, and a route's fields replace the
/// default policy's.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Whether the route is cached.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// TTL of responses that say nothing (`30s`).
    #[serde(default)]
    pub ttl: Option<HumanDuration>,
    /// The longest any response stays fresh.
    #[serde(default)]
    pub max_ttl: Option<HumanDuration>,
    /// `"all"`, `"ignore"`, or a list of parameter names.
    #[serde(default)]
    pub query: Option<QueryConfig>,
    /// Request headers in the key.
    #[serde(default)]
    pub key_headers: Option<Vec<String>>,
    /// Statuses stored.
    #[serde(default)]
    pub statuses: Option<Vec<u16>>,
    /// `"per-principal"` or `"shared"`.
    #[serde(default)]
    pub sharing: Option<Sharing>,
    /// Whether responses with `Set-Cookie` are stored.
    #[serde(default)]
    pub store_set_cookie: Option<bool>,
    /// Default `stale-while-revalidate` window.
    #[serde(default)]
    pub stale_while_revalidate: Option<HumanDuration>,
    /// Default `stale-if-error` window.
    #[serde(default)]
    pub stale_if_error: Option<HumanDuration>,
    /// How long to wait for the upstream when a stale response could stand in.
    #[serde(default)]
    pub upstream_timeout: Option<HumanDuration>,
    /// `"ignore"`, `"allow"`, `"deny"` or `{ "require_scope": "..." }`.
    #[serde(default)]
    pub client_refresh: Option<ClientRefresh>,
}

/// Which query parameters are in the key, in configuration.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum QueryConfig {
    /// `"all"` or `"ignore"`.
    Mode(QueryMode),
    /// The parameter names.
    Only(Vec<String>),
}

/// `"all"` or `"ignore"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryMode {
    /// Every parameter.
    All,
    /// None.
    Ignore,
}

impl PolicyConfig {
    /// The fields set here over those of `base`.
    fn over(&self, base: &PolicyConfig) -> PolicyConfig {
        macro_rules! pick {
            ($($field:ident),*) => {
                PolicyConfig { $($field: self.$field.clone().or_else(|| base.$field.clone())),* }
            };
        }
        pick!(
            enabled,
            ttl,
            max_ttl,
            query,
            key_headers,
            statuses,
            sharing,
            store_set_cookie,
            stale_while_revalidate,
            stale_if_error,
            upstream_timeout,
            client_refresh
        )
    }

    /// The policy these fields describe, over [`CachePolicy::new`]'s defaults.
    pub fn policy(&self) -> Result<CachePolicy, CacheError> {
        let mut policy = CachePolicy::new();
        if let Some(enabled) = self.enabled {
            policy = policy.enabled(enabled);
        }
        if let Some(ttl) = self.ttl {
            policy = policy.ttl(ttl.0);
        }
        if let Some(max_ttl) = self.max_ttl {
            policy = policy.max_ttl(max_ttl.0);
        }
        if let Some(query) = &self.query {
            policy = policy.query(match query {
                QueryConfig::Mode(QueryMode::All) => QueryKey::All,
                QueryConfig::Mode(QueryMode::Ignore) => QueryKey::Ignore,
                QueryConfig::Only(names) => QueryKey::Only(names.clone()),
            });
        }
        if let Some(headers) = &self.key_headers {
            policy = policy.key_headers(header_names(headers)?);
        }
        if let Some(statuses) = &self.statuses {
            let statuses = statuses
                .iter()
                .map(|&s| {
                    StatusCode::from_u16(s)
                        .map_err(|_| CacheError::Config(format!("invalid status {s}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            policy = policy.statuses(statuses);
        }
        if let Some(sharing) = self.sharing {
            policy = policy.sharing(sharing);
        }
        if let Some(store) = self.store_set_cookie {
            policy = policy.store_set_cookie(store);
        }
        if let Some(window) = self.stale_while_revalidate {
            policy = policy.stale_while_revalidate(window.0);
        }
        if let Some(window) = self.stale_if_error {
            policy = policy.stale_if_error(window.0);
        }
        if let Some(timeout) = self.upstream_timeout {
            policy = policy.upstream_timeout(timeout.0);
        }
        if let Some(refresh) = &self.client_refresh {
            policy = policy.client_refresh(refresh.clone());
        }
        Ok(policy)
    }
}

fn header_names(names: &[String]) -> Result<Vec<HeaderName>, CacheError> {
    names
        .iter()
        .map(|name| {
            HeaderName::try_from(name.as_str())
                .map_err(|_| CacheError::Config(format!("invalid header name {name:?}")))
        })
        .collect()
}

impl CacheConfig {
    /// A builder with this configuration; add a clock or other settings, then build.
    pub fn builder(&self) -> Result<CacheBuilder, CacheError> {
        let mut builder = CacheLayer::builder().policy(self.default.policy()?);
        for (route, fields) in &self.routes {
            let policy = fields
                .over(&self.default)
                .policy()
                .map_err(|error| CacheError::Config(format!("routes.{route:?}: {error}")))?;
            builder = builder.route(route.clone(), policy);
        }
        if let Some(bytes) = self.max_bytes {
            builder = builder.max_bytes(bytes);
        }
        if let Some(bytes) = self.max_entry_bytes {
            builder = builder.max_entry_bytes(bytes);
        }
        if let Some(timeout) = self.wait_timeout {
            builder = builder.wait_timeout(timeout.0);
        }
        if let Some(headers) = &self.credential_headers {
            builder = builder.credential_headers(header_names(headers)?);
        }
        if let Some(header) = &self.tag_header {
            let header = match header.as_str() {
                "" => None,
                name => Some(header_names(&[name.to_owned()])?.remove(0)),
            };
            builder = builder.tag_header(header);
        }
        Ok(builder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_change_only_the_fields_they_name() {
        let config: CacheConfig = serde_json::from_value(serde_json::json!({
            "default": { "ttl": "60s", "sharing": "shared" },
            "routes": { "GET /a": { "max_ttl": "10s" } }
        }))
        .unwrap();
        let route = config.routes["GET /a"].over(&config.default);
        assert_eq!(
            route.ttl.map(|t| t.0),
            Some(std::time::Duration::from_secs(60))
        );
        assert_eq!(route.sharing, Some(Sharing::Shared));
        assert_eq!(
            route.max_ttl.map(|t| t.0),
            Some(std::time::Duration::from_secs(10))
        );
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused_with_their_names() {
        let unknown = serde_json::from_value::<CacheConfig>(serde_json::json!({
            "default": { "tll": "60s" }
        }))
        .unwrap_err();
        assert!(unknown.to_string().contains("tll"), "{unknown}");

        let config: CacheConfig = serde_json::from_value(serde_json::json!({
            "routes": { "GET /a": { "key_headers": ["bad header"] } }
        }))
        .unwrap();
        let error = config.builder().unwrap_err().to_string();
        assert!(
            error.contains("GET /a") && error.contains("bad header"),
            "{error}"
        );
    }

    #[test]
    fn client_refresh_reads_each_form() {
        for (json, expected) in [
            (serde_json::json!("ignore"), ClientRefresh::Ignore),
            (serde_json::json!("allow"), ClientRefresh::Allow),
            (serde_json::json!("deny"), ClientRefresh::Deny),
            (
                serde_json::json!({ "require_scope": "cache:refresh" }),
                ClientRefresh::RequireScope("cache:refresh".into()),
            ),
        ] {
            assert_eq!(
                serde_json::from_value::<ClientRefresh>(json).unwrap(),
                expected
            );
        }
    }
}
