//! Stages from a configuration file; the services come from the application.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use http::HeaderName;
use serde::Deserialize;
use tollgate_core::key::{ApiKeyId, ClientIp, CookieKey, HeaderKey, PeerIp, Subject};
use tollgate_core::TrustedProxies;

use crate::router::{StageError, StageRouter, StageRouterBuilder};
use crate::spec::{AfterSunset, Canary, StageSpec};

/// Why a configuration could not become a router builder.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StageConfigError {
    /// The application has no service for a deployment the configuration names.
    #[error("stages.{stage}: no service for deployment {deployment:?}")]
    MissingService {
        /// The stage.
        stage: String,
        /// The deployment.
        deployment: String,
    },
    /// A header name that is not one.
    #[error("{field}: invalid header name {name:?}")]
    InvalidHeader {
        /// Where it was.
        field: String,
        /// The name.
        name: String,
    },
    /// A trusted-proxy list that does not parse.
    #[error("sticky_by.client_ip: {0}")]
    TrustedProxies(String),
    /// The stages themselves are invalid.
    #[error(transparent)]
    Stage(#[from] StageError),
}

/// A stage router as a configuration file describes it.
///
/// ```
/// use axum::{routing::get, Router};
///
/// let config: tollgate_stage::StageConfig = serde_json::from_value(serde_json::json!({
///     "default_stage": "v2",
///     "sticky_by": { "header": "x-client-id" },
///     "stages": {
///         "v1": {
///             "base_paths": ["/v1"],
///             "variables": { "orders_table": "orders_v1" },
///             "deprecated_at": "Sun, 01 Nov 2026 00:00:00 GMT",
///             "sunset_at": 1811808000,
///             "successor": "/v2"
///         },
///         "v2": {
///             "base_paths": ["/v2"],
///             "versions": ["2"],
///             "canary": { "deployment": "v2-next", "percent": 10 }
///         }
///     }
/// })).unwrap();
///
/// let service = |deployment: &str| {
///     let body = format!("served by {deployment}");
///     Some(Router::<()>::new().route("/orders", get(move || async move { body })))
/// };
/// let router = config.builder(service).unwrap().build().unwrap();
/// # let _ = router;
/// ```
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// The stages, by name.
    pub stages: BTreeMap<String, StageEntry>,
    /// The stage that serves requests no rule selects.
    #[serde(default)]
    pub default_stage: Option<String>,
    /// Version headers, in order (default `accept-version`, `x-api-version`).
    #[serde(default)]
    pub version_headers: Option<Vec<String>>,
    /// The vendor of `application/vnd.<vendor>...` media types.
    #[serde(default)]
    pub media_type_vendor: Option<String>,
    /// What keeps a client on one side of a canary (default `peer_ip`).
    #[serde(default)]
    pub sticky_by: Option<StickyConfig>,
    /// The header that forces a side of a canary, such as `x-canary` (default: none, so no
    /// client can force a side; `""` is none too).
    #[serde(default)]
    pub override_header: Option<String>,
    /// The scope a principal needs for the override header to count.
    #[serde(default)]
    pub override_scope: Option<String>,
    /// The header naming the deployment (default `x-deployment`); `""` sends none.
    #[serde(default)]
    pub deployment_header: Option<String>,
}

/// What keeps a client on one side of a canary, in configuration: `"peer_ip"`, `"subject"`,
/// `"api_key"`, `{ "header": "x-client-id" }`, `{ "cookie": "visitor" }` or
/// `{ "client_ip": ["10.0.0.0/8"] }` (the trusted proxies).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum StickyConfig {
    /// The connection's peer address.
    PeerIp,
    /// The verified principal's subject.
    Subject,
    /// The API key id.
    ApiKey,
    /// A request header.
    Header(String),
    /// A cookie.
    Cookie(String),
    /// The client IP behind these trusted proxies.
    ClientIp(Vec<String>),
}

/// One stage in configuration.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageEntry {
    /// The stable deployment's name (default: the stage's).
    #[serde(default)]
    pub deployment: Option<String>,
    /// Base paths that select the stage.
    #[serde(default)]
    pub base_paths: Vec<String>,
    /// Whether the base path is stripped (default true).
    #[serde(default)]
    pub strip_prefix: Option<bool>,
    /// Hosts that select the stage.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Versions (headers and media types) that select the stage.
    #[serde(default)]
    pub versions: Vec<String>,
    /// Stage variables.
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    /// The canary.
    #[serde(default)]
    pub canary: Option<CanaryEntry>,
    /// When the stage is deprecated: an HTTP-date or seconds since the Unix epoch.
    #[serde(default)]
    pub deprecated_at: Option<Instant>,
    /// When the stage is retired: an HTTP-date or seconds since the Unix epoch.
    #[serde(default)]
    pub sunset_at: Option<Instant>,
    /// The successor version's URI.
    #[serde(default)]
    pub successor: Option<String>,
    /// `refuse` (default) or `keep_serving` after the sunset.
    #[serde(default)]
    pub after_sunset: Option<AfterSunsetConfig>,
}

/// A canary in configuration.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryEntry {
    /// The canary deployment's name (default `<stage>-canary`).
    #[serde(default)]
    pub deployment: Option<String>,
    /// The share of clients, 0 to 100.
    #[serde(default)]
    pub percent: f64,
    /// Variable overrides.
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
}

/// `refuse` or `keep_serving`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AfterSunsetConfig {
    /// 410 Gone.
    Refuse,
    /// Keep serving.
    KeepServing,
}

/// An instant in configuration: an HTTP-date (`Sun, 01 Jun 2027 00:00:00 GMT`, the `Sunset`
/// header's own form) or seconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Instant(pub SystemTime);

impl<'de> Deserialize<'de> for Instant {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(u64),
            Date(String),
        }
        match Raw::deserialize(deserializer)? {
            // An HTTP-date, the form a `Sunset` is sent in, ends with the year 9999.
            Raw::Seconds(seconds) if seconds <= 253_402_300_799 => Ok(Instant(
                SystemTime::UNIX_EPOCH + Duration::from_secs(seconds),
            )),
            Raw::Seconds(seconds) => Err(serde::de::Error::custom(format!(
                "{seconds} seconds since the epoch is after the year 9999"
            ))),
            Raw::Date(date) => httpdate::parse_http_date(&date).map(Instant).map_err(|_| {
                serde::de::Error::custom(format!(
                    "expected an HTTP-date like \"Sun, 01 Jun 2027 00:00:00 GMT\" or seconds since the epoch, found {date:?}"
                ))
            }),
        }
    }
}

fn header(field: &str, name: &str) -> Result<HeaderName, StageConfigError> {
    HeaderName::try_from(name).map_err(|_| StageConfigError::InvalidHeader {
        field: field.to_owned(),
        name: name.to_owned(),
    })
}

/// `""` turns the header off.
fn optional_header(field: &str, name: &str) -> Result<Option<HeaderName>, StageConfigError> {
    if name.is_empty() {
        Ok(None)
    } else {
        header(field, name).map(Some)
    }
}

impl StageConfig {
    /// A builder with the configured stages, each deployment served by what `service` gives for
    /// its name; add a clock or other settings, then build.
    pub fn builder<S: Clone + Send + Sync + 'static>(
        &self,
        mut service: impl FnMut(&str) -> Option<S>,
    ) -> Result<StageRouterBuilder<S>, StageConfigError> {
        let mut builder = StageRouter::builder();
        for (name, entry) in &self.stages {
            let deployment = entry.deployment.clone().unwrap_or_else(|| name.clone());
            let mut serve = |deployment: &str| {
                service(deployment).ok_or_else(|| StageConfigError::MissingService {
                    stage: name.clone(),
                    deployment: deployment.to_owned(),
                })
            };
            let mut spec =
                StageSpec::new(name.clone(), serve(&deployment)?).deployment(&deployment);
            for path in &entry.base_paths {
                spec = spec.base_path(path.clone());
            }
            if let Some(strip) = entry.strip_prefix {
                spec = spec.strip_prefix(strip);
            }
            for host in &entry.hosts {
                spec = spec.host(host.clone());
            }
            for version in &entry.versions {
                spec = spec.version(version.clone());
            }
            for (variable, value) in &entry.variables {
                spec = spec.variable(variable.clone(), value.clone());
            }
            if let Some(canary) = &entry.canary {
                let deployment = canary
                    .deployment
                    .clone()
                    .unwrap_or_else(|| format!("{name}-canary"));
                let mut built = Canary::new(serve(&deployment)?)
                    .deployment(deployment)
                    .percent(canary.percent);
                for (variable, value) in &canary.variables {
                    built = built.variable(variable.clone(), value.clone());
                }
                spec = spec.canary(built);
            }
            if let Some(at) = entry.deprecated_at {
                spec = spec.deprecated_at(at.0);
            }
            if let Some(at) = entry.sunset_at {
                spec = spec.sunset_at(at.0);
            }
            if let Some(successor) = &entry.successor {
                spec = spec.successor(successor.clone());
            }
            if let Some(after) = entry.after_sunset {
                spec = spec.after_sunset(match after {
                    AfterSunsetConfig::Refuse => AfterSunset::Refuse,
                    AfterSunsetConfig::KeepServing => AfterSunset::KeepServing,
                });
            }
            builder = builder.stage(spec);
        }
        if let Some(name) = &self.default_stage {
            builder = builder.default_stage(name.clone());
        }
        if let Some(names) = &self.version_headers {
            let names = names
                .iter()
                .map(|name| header("version_headers", name))
                .collect::<Result<Vec<_>, _>>()?;
            builder = builder.version_headers(names);
        }
        if let Some(vendor) = &self.media_type_vendor {
            builder = builder.media_type_vendor(vendor.clone());
        }
        if let Some(sticky) = &self.sticky_by {
            builder = match sticky {
                StickyConfig::PeerIp => builder.sticky_by(PeerIp),
                StickyConfig::Subject => builder.sticky_by(Subject),
                StickyConfig::ApiKey => builder.sticky_by(ApiKeyId),
                StickyConfig::Header(name) => {
                    builder.sticky_by(HeaderKey::from_name(header("sticky_by.header", name)?))
                }
                StickyConfig::Cookie(name) => builder.sticky_by(CookieKey::new(name.as_str())),
                StickyConfig::ClientIp(proxies) => {
                    let trusted = TrustedProxies::new(proxies.iter().map(String::as_str))
                        .map_err(|e| StageConfigError::TrustedProxies(e.to_string()))?;
                    builder.sticky_by(ClientIp::new(trusted))
                }
            };
        }
        if let Some(name) = &self.override_header {
            builder = builder.override_header(optional_header("override_header", name)?);
        }
        if let Some(scope) = &self.override_scope {
            builder = builder.override_scope(scope.clone());
        }
        if let Some(name) = &self.deployment_header {
            builder = builder.deployment_header(optional_header("deployment_header", name)?);
        }
        Ok(builder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_read_http_dates_and_epoch_seconds_and_refuse_the_rest() {
        let date: Instant =
            serde_json::from_value(serde_json::json!("Sun, 06 Nov 1994 08:49:37 GMT")).unwrap();
        assert_eq!(
            date.0,
            SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777)
        );
        let seconds: Instant = serde_json::from_value(serde_json::json!(784_111_777)).unwrap();
        assert_eq!(seconds, date);
        let error =
            serde_json::from_value::<Instant>(serde_json::json!("next tuesday")).unwrap_err();
        assert!(error.to_string().contains("HTTP-date"), "{error}");
    }

    #[test]
    fn a_deployment_without_a_service_is_named_in_the_error() {
        let config: StageConfig = serde_json::from_value(serde_json::json!({
            "stages": { "v2": { "canary": { "deployment": "v2-next", "percent": 5 } } }
        }))
        .unwrap();
        let service = |deployment: &str| (deployment == "v2").then_some(());
        let error = config.builder(service).unwrap_err().to_string();
        assert_eq!(error, "stages.v2: no service for deployment \"v2-next\"");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let error = serde_json::from_value::<StageConfig>(serde_json::json!({
            "stages": { "v1": { "base_path": "/v1" } }
        }))
        .unwrap_err();
        assert!(error.to_string().contains("base_path"), "{error}");
    }
}
