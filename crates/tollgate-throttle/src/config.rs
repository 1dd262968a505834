//! The throttle layer from a configuration file.

use std::sync::Arc;

use http::header::HeaderName;
use tollgate_core::key::{ApiKeyId, ClientIp, Global, HeaderKey, PeerIp, RouteKey, Subject};
use tollgate_core::{ForwardedHeader, KeyExtractor, KeyExtractorExt, RouteTable, TrustedProxies};

use crate::{
    AllowedFields, MissingKey, Rate, Rule, StoreFailure, ThrottleBuilder, ThrottleError,
    ThrottleLayer,
};

/// A throttle layer as configuration: everything the builder does, from YAML, TOML or JSON.
/// Unknown fields are refused, and errors name the field.
///
/// ```
/// use tollgate_throttle::ThrottleConfig;
///
/// let config: ThrottleConfig = serde_json::from_str(r#"{
///     "trusted_proxies": ["10.0.0.0/8"],
///     "rules": [
///         { "name": "global", "rate": "10000/s", "burst": 5000, "key": "global" },
///         { "name": "per-client", "rate": "5/s", "burst": 5, "key": "client-ip" },
///         { "name": "search", "rate": "100/min", "key": "global", "routes": ["GET /search"], "shadow": true }
///     ]
/// }"#).unwrap();
/// let layer = config.build().unwrap();
/// assert_eq!(layer.rules().len(), 3);
/// ```
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleConfig {
    /// The rules (a layer needs at least one).
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// Keys each rule remembers (default [`DEFAULT_CAPACITY`](crate::DEFAULT_CAPACITY)).
    #[serde(default)]
    pub capacity: Option<usize>,
    /// Proxies whose forwarding headers `client-ip` keys believe (default: none).
    #[serde(default)]
    pub trusted_proxies: TrustedProxies,
    /// The forwarding header those proxies write (default `x-forwarded-for`).
    #[serde(default)]
    pub forwarded_header: ForwardedHeader,
    /// Which rate-limit fields allowed responses carry: `none`, `rate-limit` (default) or
    /// `rate-limit-and-policy`.
    #[serde(default)]
    pub allowed_fields: AllowedFields,
    /// What to do when the store fails (default `allow`).
    #[serde(default)]
    pub on_store_error: StoreFailure,
}

/// One rule as configuration.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// The rule's name.
    pub name: String,
    /// The sustained rate, such as `"10/s"`.
    pub rate: Rate,
    /// The burst (default: the rate's requests per period).
    #[serde(default)]
    pub burst: Option<u32>,
    /// What the rule counts by.
    pub key: KeyConfig,
    /// What it counts by when `key` finds nothing (default: none, see `on_missing_key`).
    #[serde(default)]
    pub fallback: Option<KeyConfig>,
    /// Routes the rule covers, as `"GET /pets/{id}"` (default: all).
    #[serde(default)]
    pub routes: Option<Vec<String>>,
    /// Shadow mode (default `false`).
    #[serde(default)]
    pub shadow: bool,
    /// What to do when the key is missing: `reject` (default) or `skip`.
    #[serde(default)]
    pub on_missing_key: MissingKey,
    /// Keys this rule remembers (default: the layer's capacity).
    #[serde(default)]
    pub capacity: Option<usize>,
}

/// What a configured rule counts by.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum KeyConfig {
    /// One budget for everyone.
    Global,
    /// The TCP peer's address.
    PeerIp,
    /// The client's address behind the trusted proxies.
    ClientIp,
    /// A request header's value: `{ "header": "x-client-id" }`.
    Header(String),
    /// The principal's subject.
    Subject,
    /// The API key id.
    ApiKey,
    /// The matched route, one of the rule's `routes`.
    Route,
}

impl ThrottleConfig {
    /// Builds the layer this configuration describes.
    pub fn build(&self) -> Result<ThrottleLayer, ThrottleError> {
        self.builder()?.build()
    }

    /// A builder with this configuration's rules and settings, to add a clock or build with
    /// another store.
    pub fn builder(&self) -> Result<ThrottleBuilder, ThrottleError> {
        let mut builder = ThrottleLayer::builder()
            .allowed_fields(self.allowed_fields)
            .on_store_error(self.on_store_error);
        if let Some(capacity) = self.capacity {
            builder = builder.capacity(capacity);
        }
        for rule in &self.rules {
            builder = builder.rule(self.rule(rule)?);
        }
        Ok(builder)
    }

    /// What `key` counts by, with this configuration's trusted proxies; `route` keys need a
    /// rule's routes, so they are refused here.
    pub fn key_extractor(&self, key: &KeyConfig) -> Result<Arc<dyn KeyExtractor>, ThrottleError> {
        self.extractor(key, None, &|message| ThrottleError::Config(message))
    }

    fn rule(&self, config: &RuleConfig) -> Result<Rule, ThrottleError> {
        let error =
            |message: String| ThrottleError::Config(format!("rule {:?}: {message}", config.name));
        let routes = match &config.routes {
            Some(routes) => {
                let mut table = RouteTable::new();
                for route in routes {
                    table
                        .insert(route, ())
                        .map_err(|e| error(format!("routes: {e}")))?;
                }
                Some(table)
            }
            None => None,
        };
        let mut extractor = self.extractor(&config.key, routes.as_ref(), &error)?;
        if let Some(fallback) = &config.fallback {
            let fallback = self.extractor(fallback, routes.as_ref(), &error)?;
            extractor = Arc::new(extractor.or(fallback));
        }
        let mut rule = Rule::with_shared_extractor(config.name.as_str(), config.rate, extractor);
        if let Some(burst) = config.burst {
            rule = rule.burst(burst);
        }
        if let Some(routes) = routes {
            rule = rule.routes(routes);
        }
        if let Some(capacity) = config.capacity {
            rule = rule.capacity(capacity);
        }
        Ok(rule
            .shadow(config.shadow)
            .on_missing_key(config.on_missing_key))
    }

    fn extractor(
        &self,
        key: &KeyConfig,
        routes: Option<&RouteTable<()>>,
        error: &dyn Fn(String) -> ThrottleError,
    ) -> Result<Arc<dyn KeyExtractor>, ThrottleError> {
        Ok(match key {
            KeyConfig::Global => Arc::new(Global),
            KeyConfig::PeerIp => Arc::new(PeerIp),
            KeyConfig::ClientIp => {
                Arc::new(ClientIp::new(self.trusted_proxies.clone()).header(self.forwarded_header))
            }
            KeyConfig::Header(header) => {
                let header = HeaderName::try_from(header.as_str())
                    .map_err(|_| error(format!("key: invalid header name {header:?}")))?;
                Arc::new(HeaderKey::from_name(header))
            }
            KeyConfig::Subject => Arc::new(Subject),
            KeyConfig::ApiKey => Arc::new(ApiKeyId),
            KeyConfig::Route => {
                let table = routes
                    .cloned()
                    .ok_or_else(|| error("key: \"route\" needs the rule's routes".into()))?;
                Arc::new(RouteKey::new(table))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let error = serde_json::from_str::<ThrottleConfig>(
            r#"{ "rules": [{ "name": "a", "rate": "1/s", "key": "global", "brust": 5 }] }"#,
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("unknown field `brust`"), "{error}");
    }

    #[test]
    fn bad_rate_is_refused_with_the_value() {
        let error = serde_json::from_str::<ThrottleConfig>(
            r#"{ "rules": [{ "name": "a", "rate": "10 per second", "key": "global" }] }"#,
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("invalid rate \"10 per second\""), "{error}");
    }

    #[test]
    fn route_key_without_routes_names_the_rule() {
        let config: ThrottleConfig = serde_json::from_str(
            r#"{ "rules": [{ "name": "per-route", "rate": "1/s", "key": "route" }] }"#,
        )
        .unwrap();
        let error = config.build().unwrap_err().to_string();
        assert!(error.contains("rule \"per-route\""), "{error}");
    }

    #[test]
    fn a_configured_fallback_key_is_used_when_the_first_is_missing() {
        let config: ThrottleConfig = serde_json::from_str(
            r#"{ "rules": [{ "name": "by-client", "rate": "1/min", "burst": 1,
                 "key": { "header": "x-client-id" }, "fallback": "peer-ip" }] }"#,
        )
        .unwrap();
        let layer = config.build().unwrap();
        let extractor = layer.rules()[0].extractor();
        let mut request = http::Request::new(());
        request
            .extensions_mut()
            .insert(tollgate_core::PeerAddr("192.0.2.7:1".parse().unwrap()));
        let key = extractor
            .extract(&tollgate_core::RequestHead::of(&request))
            .unwrap();
        assert_eq!(key.to_string(), "ip:192.0.2.7");
    }

    #[test]
    fn header_key_and_rules_are_built_in_scope_order() {
        let config: ThrottleConfig = serde_json::from_str(
            r#"{ "rules": [
                { "name": "global", "rate": "100/s", "key": "global" },
                { "name": "by-client", "rate": "1/s", "key": { "header": "x-client-id" } }
            ] }"#,
        )
        .unwrap();
        let layer = config.build().unwrap();
        let names: Vec<_> = layer.rules().iter().map(Rule::name).collect();
        assert_eq!(names, ["by-client", "global"]);
    }
}
