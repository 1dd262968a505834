//! Usage plans and keys from a configuration file.

use std::collections::BTreeMap;

use http::header::HeaderName;
use tollgate_throttle::{AllowedFields, Rate, StoreFailure};

use crate::plans::{UsageError, UsagePlansBuilder};
use crate::{ApiKey, KeyRecord, KeySource, QuotaPeriod, UsagePlan, UsagePlans};

/// Usage plans, keys (as hashes) and key sources, as a configuration file holds them.
///
/// ```
/// let config: tollgate_usage::UsageConfig = serde_json::from_value(serde_json::json!({
///     "key_sources": [{ "header": "x-api-key" }, "authorizer"],
///     "plans": {
///         "basic": {
///             "throttle": { "rate": "2/s", "burst": 2 },
///             "quota": { "limit": 20, "period": "day" },
///             "routes": { "POST /reports": { "rate": "1/min", "burst": 1 } }
///         },
///         "pro": { "throttle": { "rate": "50/s", "burst": 20 }, "quota": { "limit": 10000, "period": "month" } }
///     },
///     "keys": [{
///         "id": "acme",
///         "plan": "pro",
///         "created": "2026-11-01T00:00:00Z",
///         "hash": "sha256:4ef7303f4cb824eef2ae3f88a9ed54bac663c1aa5c30e1680404fe3d0a890a1c"
///     }]
/// })).unwrap();
/// let plans = config.builder().unwrap().build().unwrap();
/// assert!(plans.plan("pro").is_some());
/// ```
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageConfig {
    /// Where keys are read from, in order (default: the `x-api-key` header).
    #[serde(default)]
    pub key_sources: Vec<KeySourceConfig>,
    /// The plans, by id.
    pub plans: BTreeMap<String, PlanConfig>,
    /// Keys to load, with hashes of their secrets.
    #[serde(default)]
    pub keys: Vec<KeyRecord>,
    /// Days of daily usage kept per key (default 90).
    #[serde(default)]
    pub retention_days: Option<u32>,
    /// Keys per plan throttle remembered in memory (default 100,000).
    #[serde(default)]
    pub throttle_capacity: Option<usize>,
    /// `allow` (default) or `reject` when the throttle or quota store fails.
    #[serde(default)]
    pub on_store_error: Option<StoreFailure>,
    /// `rate-limit-and-policy` (default), `rate-limit` or `none`: the fields admitted
    /// responses carry.
    #[serde(default)]
    pub allowed_fields: Option<AllowedFields>,
}

/// A key source in configuration: `{ "header": "x-api-key" }`, `"authorizer"` or
/// `{ "query": "api_key" }`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum KeySourceConfig {
    /// A request header.
    Header(String),
    /// The usage identifier key an authorizer set.
    Authorizer,
    /// A query parameter.
    Query(String),
}

/// A rate and a burst in configuration: `{ "rate": "2/s", "burst": 2 }`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleConfig {
    /// The steady rate.
    pub rate: Rate,
    /// Requests at once (default: the rate's requests per period, at least 1).
    #[serde(default)]
    pub burst: Option<u32>,
}

/// A quota in configuration: `{ "limit": 1000, "period": "day" }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// Requests per period.
    pub limit: u32,
    /// `day`, `week`, `month` or a length like `30d`.
    pub period: QuotaPeriod,
}

/// One usage plan in configuration.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    /// A name for people.
    #[serde(default)]
    pub name: String,
    /// The plan throttle.
    #[serde(default)]
    pub throttle: Option<ThrottleConfig>,
    /// The plan quota.
    #[serde(default)]
    pub quota: Option<QuotaConfig>,
    /// Throttle overrides by route (`"GET /search"`).
    #[serde(default)]
    pub routes: BTreeMap<String, ThrottleConfig>,
    /// The stages the plan may be used on.
    #[serde(default)]
    pub stages: Option<Vec<String>>,
    /// The application's other routes, which keep the plan's own throttle: listed so that a
    /// route override's template does not also take their requests (not read from files; a
    /// gateway's configuration fills it with its routes).
    #[serde(skip)]
    pub other_routes: Vec<String>,
}

impl ThrottleConfig {
    fn burst(&self) -> u32 {
        self.burst
            .unwrap_or_else(|| self.rate.requests().ceil() as u32)
            .max(u32::from(self.burst.is_none()))
    }
}

impl UsageConfig {
    /// A builder with this configuration's plans, keys and settings; add a clock or other
    /// settings, then build.
    pub fn builder(self) -> Result<UsagePlansBuilder, UsageError> {
        let mut builder = UsagePlans::builder();
        for source in self.key_sources {
            builder = builder.key_source(match source {
                KeySourceConfig::Header(name) => KeySource::Header(
                    HeaderName::try_from(name.as_str())
                        .map_err(|_| UsageError::InvalidHeader(name))?,
                ),
                KeySourceConfig::Authorizer => KeySource::Authorizer,
                KeySourceConfig::Query(name) => KeySource::Query(name),
            });
        }
        for (id, config) in self.plans {
            let mut plan = UsagePlan::new(id).name(config.name);
            if let Some(throttle) = config.throttle {
                plan = plan.throttle(throttle.rate, throttle.burst());
            }
            if let Some(quota) = config.quota {
                plan = plan.quota(quota.limit, quota.period);
            }
            for route in config.other_routes {
                plan = plan.plan_throttle_route(route);
            }
            for (route, throttle) in config.routes {
                plan = plan.route_throttle(route, throttle.rate, throttle.burst());
            }
            if let Some(stages) = config.stages {
                plan = plan.stages(stages);
            }
            builder = builder.plan(plan);
        }
        for record in self.keys {
            let key = ApiKey::try_from(record).map_err(UsageError::Key)?;
            builder = builder.key(key);
        }
        if let Some(days) = self.retention_days {
            builder = builder.retention_days(days);
        }
        if let Some(keys) = self.throttle_capacity {
            builder = builder.throttle_capacity(keys);
        }
        if let Some(policy) = self.on_store_error {
            builder = builder.on_store_error(policy);
        }
        if let Some(fields) = self.allowed_fields {
            builder = builder.allowed_fields(fields);
        }
        Ok(builder)
    }
}
