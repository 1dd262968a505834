//! The whole gateway from a configuration file (feature `config`): YAML, TOML or JSON,
//! checked before anything runs, and reloaded while it serves.
//!
//! A [`GatewayConfig`] describes what Amazon API Gateway, Kong or KrakenD describe in theirs:
//! routes (method and path) and their integrations — a handler of the application's, an HTTP
//! upstream, an aggregate of several backends, or a mock — the coarse throttle, the
//! authorizer, usage plans and API keys (as hashes), the cache, stages with their variables and
//! canaries, and per-route overrides of each. [`GatewayHandle`] builds it with the
//! application's named handlers ([`Handlers`]) and serves it; `reload` swaps in a new
//! configuration without dropping a request.
//!
//! ```yaml
//! throttle:
//!   rules:
//!     - { name: per-client, rate: 50/s, burst: 100, key: client-ip }
//! auth:
//!   authorizer:
//!     jwt:
//!       providers:
//!         - issuer: https://login.example.com/
//!           audiences: [shop]
//!           keys: { hmac_secret_env: SHOP_JWT_SECRET }
//! usage:
//!   plans:
//!     partner: { throttle: { rate: 10/s, burst: 20 }, quota: { limit: 10000, period: month } }
//!   keys:
//!     - { id: acme, plan: partner, created: "2026-11-01T00:00:00Z", hash: "sha256:…" }
//! cache:
//!   default: { ttl: 30s }
//! routes:
//!   - route: GET /products
//!     integration: { handler: catalog }
//!     auth: { anonymous: true }
//!     cache: { ttl: 5m, sharing: shared }
//!   - route: POST /orders
//!     integration: { upstream: { url: "http://orders.internal:8080" } }
//!     api_key: true
//!     plan_throttles: { partner: { rate: 1/s, burst: 5 } }
//! ```
//!
//! # Reading
//!
//! Unknown fields are refused, and every error names the field's path and, for errors found
//! while reading, the line: `gateway.yaml:12:12: routes[3].cache.ttl: expected a duration like
//! "30s", "5m" or "500ms", found "thirty"`. Durations read as `30s`, `5m`, `500ms`; rates as
//! `100/min`, `10/s`. Cross-references are checked when the configuration is read, not when a
//! request comes: a route naming an unknown plan, a key on an unknown plan, a canary variable
//! no deployment defines, a route that needs an authorizer that is not configured, two
//! routes with one method and path. The names the application provides (handlers, custom
//! authorizers) are checked when the gateway is built, before it serves.
//!
//! Secrets never need to be in the file: an HMAC key is read from an environment variable
//! (`hmac_secret_env`) or a file (`hmac_secret_file`), a Redis URL with its password from
//! either (`url: { env: REDIS_URL }`, `url: { file: secrets/redis-url }`), API keys are stored
//! as hashes. Relative paths of key and secret files are relative to the configuration file's
//! directory.
//!
//! # Several instances
//!
//! With the `redis` feature, a `redis` section puts the state several gateway instances
//! share in Redis: throttles, the usage plans' keys, quotas and plan throttles, and a second
//! cache level (`stores` picks which). Limits then hold across the instances, and a reload
//! keeps all of it, since it lives in Redis.
//!
//! ```yaml
//! redis:
//!   url: { env: REDIS_URL }
//!   prefix: shop
//!   local_fallback_instances: 4   # Redis down: enforce a quarter of each limit per instance
//! ```
//!
//! # The order of the steps
//!
//! Requests go through the stage router (when `stages` is set), then the request id
//! (`request_id`), the access log (`access_log`) and the metrics (`metrics`), the IP lists (`ip_filter`), CORS (`cors`: a preflight is answered here),
//! the throttle, the authorizer, the usage plan (on routes with `api_key: true`), request
//! validation (on routes with `validate`), the cache,
//! and the route's integration — the order of [`Gateway`](crate::Gateway), which this
//! builds.
//!
//! Every step looks the request up in the same route table as the dispatch to the
//! integration: routes of the request's method first, then `*` routes, a static segment before
//! a parameter. So a request is throttled, authorized, metered and cached by the route that
//! serves it, never by a wider template beside it (`GET /items/{id}` lends nothing to
//! `GET /items/special`). A path no route matches is a problem+json 404, after the throttle and
//! the authorizer (whose default policy applies to it); a path served only for other methods
//! is a 405 with `Allow`.
//!
//! # Reloading
//!
//! [`GatewayHandle::reload`] builds the new configuration beside the running one and swaps
//! them only if it is valid; requests already in flight finish on the configuration they
//! started with. State survives where the configuration did not change it: a throttle rule
//! or a plan with the same name, rate and burst keeps its clients' allowances, quota counts
//! are kept for every key, keys created at runtime stay, the cache keeps its entries while its
//! `max_bytes` is unchanged (purge what a changed policy must not serve), state in Redis
//! stays where it is, and an unchanged JWT authorizer whose keys are
//! fetched (JWKS, discovery) keeps them and its verified tokens; one with a secret or key
//! file reads the file again, so a reload picks up a rotated secret. [`GatewayHandle::watch`] reloads when the file changes.

mod build;
mod error;
#[cfg(feature = "openapi")]
mod openapi;
mod reload;

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

pub use build::{ConfiguredPlans, Handlers};
pub use error::{ConfigError, Problem};
pub use reload::{GatewayHandle, GatewayHandleLayer, Watcher};

use crate::aggregate::{AggregateConfig, MockConfig, UpstreamConfig};
use crate::auth::{JwtConfig, RoutePolicy};
use crate::cache::{CacheConfig, PolicyConfig};
use crate::stage::StageConfig;
use crate::throttle::{KeyConfig, Rate, ThrottleConfig};
use crate::usage::UsageConfig;

/// A whole gateway as a configuration file describes it; see the [module](self) for an
/// example. Every section is optional.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Request ids, the first step: `{}` for `x-request-id`, or `{ header: x-correlation-id }`.
    /// Kept when the client sent one, a UUID otherwise, passed to the integration (and an
    /// HTTP upstream) and echoed in every response.
    #[serde(default)]
    pub request_id: Option<RequestIdConfig>,
    /// The access log, after the request id: one `tracing` event per request (target
    /// `tollgate::access`; [`observe`](crate::observe) lists the fields). `{}` takes the TCP
    /// peer for the client; `{ trusted_proxies: [...], forwarded_header: forwarded }` reads
    /// the client behind your proxies.
    #[serde(default)]
    pub access_log: Option<AccessLogConfig>,
    /// Request metrics through the `metrics` facade (`tollgate_requests_total{method, route,
    /// status, decision}`, `tollgate_request_duration_seconds{method, route, status}`), after
    /// the access log (default `false`).
    #[serde(default)]
    pub metrics: bool,
    /// CORS, answered right after the IP lists (a browser's preflight is never throttled,
    /// authorized or counted): `{ allow_origins: [...], allow_methods: [...], ... }`.
    #[serde(default)]
    pub cors: Option<crate::access::CorsConfig>,
    /// IP allow and deny lists by CIDR, on the client's address behind the trusted proxies;
    /// a refused client gets 403 before CORS and the throttle.
    #[serde(default)]
    pub ip_filter: Option<crate::access::IpFilterConfig>,
    /// The coarse throttle's rules (per client IP, global, by header): the first step.
    /// Routes add their own rules with `throttle`.
    #[serde(default)]
    pub throttle: Option<ThrottleConfig>,
    /// The authorizer and the policy of routes that set none.
    #[serde(default)]
    pub auth: Option<AuthSection>,
    /// Usage plans, API keys (hashes) and where keys are read; routes with `api_key: true`
    /// need a key on a plan.
    #[serde(default)]
    pub usage: Option<UsageConfig>,
    /// The response cache: its default policy and bounds. Routes override the policy with
    /// `cache`.
    #[serde(default)]
    pub cache: Option<CacheConfig>,
    /// Stages, their variables and canaries. Every deployment serves the same routes; a
    /// route's integration can name `${stageVariables.NAME}` to differ between them.
    #[serde(default)]
    pub stages: Option<StageConfig>,
    /// The routes. With none, the gateway is a layer for the application's own router
    /// ([`GatewayHandle::layer`]), and usage plans apply to every request.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Redis (or Valkey) for the state several instances share: throttles, usage plans'
    /// keys, quotas and plan throttles, and a shared cache level (feature `redis`).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    #[serde(default)]
    pub redis: Option<RedisSection>,
}

/// A secret: written inline (`"redis://:pw@host"`, for development), or read from an
/// environment variable (`{ env: REDIS_URL }`) or a file (`{ file: /run/secrets/redis }`,
/// without its trailing newline) when the gateway is built, so it need not be in the file.
#[derive(Clone)]
pub enum Secret {
    /// The value itself.
    Inline(String),
    /// An environment variable's value.
    Env {
        /// The variable.
        env: String,
    },
    /// A file's contents.
    File {
        /// The file; relative to the configuration file's directory when read with
        /// [`GatewayConfig::from_file`].
        file: std::path::PathBuf,
    },
}

/// A string, `{ env: NAME }` or `{ file: path }`; any other field is refused.
impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "snake_case", deny_unknown_fields)]
        enum Source {
            Env(String),
            File(std::path::PathBuf),
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Inline(String),
            Source(Source),
        }
        match Raw::deserialize(deserializer) {
            Ok(Raw::Inline(value)) => Ok(Secret::Inline(value)),
            Ok(Raw::Source(Source::Env(env))) => Ok(Secret::Env { env }),
            Ok(Raw::Source(Source::File(file))) => Ok(Secret::File { file }),
            Err(_) => Err(serde::de::Error::custom(
                "expected a string, { env: NAME } or { file: path }",
            )),
        }
    }
}

/// Never the value: a logged configuration leaks no secret.
impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Inline(_) => f.write_str("Secret(<inline>)"),
            Secret::Env { env } => write!(f, "Secret(env {env:?})"),
            Secret::File { file } => write!(f, "Secret(file {:?})", file.display()),
        }
    }
}

impl Secret {
    /// The secret's value.
    ///
    /// # Errors
    ///
    /// The variable is not set, or the file cannot be read; the message names which.
    pub fn reveal(&self) -> Result<String, String> {
        match self {
            Secret::Inline(value) => Ok(value.clone()),
            Secret::Env { env } => {
                std::env::var(env).map_err(|_| format!("environment variable {env:?} is not set"))
            }
            Secret::File { file } => std::fs::read_to_string(file)
                .map(|text| text.trim_end_matches(['\n', '\r']).to_owned())
                .map_err(|error| format!("cannot read {:?}: {error}", file.display())),
        }
    }
}

/// Redis for the state several gateway instances share.
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSection {
    /// `redis://host:6379/0`, with a password (`redis://:password@host`) best read from the
    /// environment or a file.
    pub url: Secret,
    /// The prefix of every key, so several gateways can share one Redis (default `tollgate`).
    #[serde(default)]
    pub prefix: Option<String>,
    /// How long one call may take before it counts as a failure (default `50ms`).
    #[serde(default)]
    pub timeout: Option<crate::core::HumanDuration>,
    /// A secret mixed into the hashes that name client keys in Redis; the same on every
    /// instance.
    #[serde(default)]
    pub key_secret: Option<Secret>,
    /// Which state lives in Redis: `throttle`, `usage`, `cache` (default: all three).
    #[serde(default = "all_stores")]
    pub stores: Vec<RedisStore>,
    /// When Redis cannot answer, keep enforcing throttles and quotas in memory with each
    /// limit divided by this many instances (default: none; the layers' `on_store_error`
    /// decides, which admits by default).
    #[serde(default)]
    pub local_fallback_instances: Option<u32>,
    /// Keys this instance has seen that it may still accept while Redis is down (default 0:
    /// a key that cannot be looked up is refused with 503).
    #[serde(default)]
    pub remember_keys: Option<usize>,
}

/// State that can live in Redis.
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisStore {
    /// The coarse throttle's and the routes' rules.
    Throttle,
    /// API keys, quotas and plan throttles.
    Usage,
    /// The cache's shared second level.
    Cache,
}

#[cfg(feature = "redis")]
fn all_stores() -> Vec<RedisStore> {
    vec![RedisStore::Throttle, RedisStore::Usage, RedisStore::Cache]
}

/// Request ids: which header carries them.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestIdConfig {
    /// The header (default `x-request-id`).
    #[serde(default)]
    pub header: Option<String>,
}

/// The `access_log` section.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// Proxies whose forwarding headers name the client (default: none, the TCP peer is the
    /// client).
    #[serde(default)]
    pub trusted_proxies: crate::TrustedProxies,
    /// The forwarding header those proxies write (default `x-forwarded-for`).
    #[serde(default)]
    pub forwarded_header: crate::ForwardedHeader,
}

/// The authorizer and the policy of routes that set none.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// `{ jwt: { providers: [...] } }` or `{ custom: <name> }`, a custom authorizer the
    /// application provides under that name ([`Handlers::authorizer`]).
    pub authorizer: AuthorizerConfig,
    /// The policy of routes without their own `auth` (default: credentials required).
    #[serde(default)]
    pub default: RoutePolicy,
    /// Claims copied into request headers for the integration, `claim: header`.
    #[serde(default)]
    pub claim_headers: BTreeMap<String, String>,
}

/// Which authorizer verifies callers.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthorizerConfig {
    /// The JWT authorizer: issuers, audiences, keys (JWKS URLs, discovery, PEM files, an HMAC
    /// secret from the environment or a file).
    Jwt(JwtConfig),
    /// A custom authorizer the application provides under this name.
    Custom(String),
}

/// One route: a method and path template, what serves it, and its overrides.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// `"GET /products/{id}"`: a method (or `*` for any) and a path template whose `{name}`
    /// segments are parameters.
    pub route: String,
    /// What serves the route.
    pub integration: IntegrationConfig,
    /// The route's authorization policy (default: the `auth` section's): `{ anonymous: true }`,
    /// `{ any_of: [scope, ...] }`, `{ all_of: [scope, ...] }`.
    #[serde(default)]
    pub auth: Option<RoutePolicy>,
    /// Fields of the cache policy that differ from the `cache` section's default.
    #[serde(default)]
    pub cache: Option<PolicyConfig>,
    /// A throttle of the route's own (AWS's per-method throttling), by default one budget
    /// for all callers.
    #[serde(default)]
    pub throttle: Option<RouteThrottle>,
    /// Whether callers need an API key on a usage plan (default `false`).
    #[serde(default)]
    pub api_key: bool,
    /// Plan throttles that differ on this route, by plan id.
    #[serde(default)]
    pub plan_throttles: BTreeMap<String, crate::usage::ThrottleConfig>,
    /// What the route requires of a request (Amazon API Gateway's method request
    /// validation): headers, typed query parameters and a JSON Schema for the body, checked
    /// before the integration is called; a failure is a 400 listing every violation.
    #[serde(default)]
    pub validate: Option<ValidateConfig>,
}

/// A route's request validation.
///
/// ```yaml
/// validate:
///   headers: [x-client-id]
///   query:
///     limit: { type: integer, min: 1, max: 100 }
///     express: { type: boolean }
///     sort: { enum: [price, name], required: true }
///   body:
///     schema_file: order.schema.json     # or schema: { type: object, ... }
///     max_bytes: 65536
/// ```
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateConfig {
    /// Headers the request must carry.
    #[serde(default)]
    pub headers: Vec<String>,
    /// Query parameters, by name.
    #[serde(default)]
    pub query: BTreeMap<String, QueryParamConfig>,
    /// The request body: a JSON Schema it must satisfy, and its size limit.
    #[serde(default)]
    pub body: Option<BodyConfig>,
}

/// A query parameter: its type and whether it must be present.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryParamConfig {
    /// `string` (the default), `integer` or `boolean` (`true` or `false`).
    #[serde(default, rename = "type")]
    pub kind: QueryType,
    /// The values allowed (a string parameter only).
    #[serde(default, rename = "enum")]
    pub one_of: Option<Vec<String>>,
    /// The least value (an integer parameter only).
    #[serde(default)]
    pub min: Option<i64>,
    /// The greatest value (an integer parameter only).
    #[serde(default)]
    pub max: Option<i64>,
    /// Whether the request must carry it (default `false`).
    #[serde(default)]
    pub required: bool,
}

/// The type of a query parameter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryType {
    /// Any text.
    #[default]
    String,
    /// A whole number.
    Integer,
    /// `true` or `false`.
    Boolean,
}

/// A route's request body.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodyConfig {
    /// The JSON Schema (draft 2020-12 unless it names its own `$schema`), inline.
    #[serde(default)]
    pub schema: Option<serde_json::Value>,
    /// The JSON Schema in a file; relative to the configuration file's directory when read
    /// with [`GatewayConfig::from_file`].
    #[serde(default)]
    pub schema_file: Option<std::path::PathBuf>,
    /// The largest body accepted, in bytes (default 1 MiB with a schema); a larger one is
    /// refused with 413 before it is read.
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

/// What serves a route.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum IntegrationConfig {
    /// A handler of the application's, by the name it was given ([`Handlers::handler`]).
    Handler(String),
    /// An HTTP upstream the request is proxied to.
    Upstream(UpstreamConfig),
    /// Several backends called at once and merged into one JSON answer; a backend's
    /// `service` names one of the application's handlers.
    Aggregate(AggregateConfig),
    /// A fixed answer.
    Mock(MockConfig),
}

/// A route's own throttle: `{ rate: 100/s, burst: 50 }`, counted by `key` (default
/// `global`: one budget for everyone, as Amazon API Gateway's method throttling).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteThrottle {
    /// The sustained rate.
    pub rate: Rate,
    /// The burst (default: the rate's requests per period).
    #[serde(default)]
    pub burst: Option<u32>,
    /// What the budget is counted by: `global`, `client-ip`, `peer-ip`, `subject`, `api-key`
    /// or `{ header: name }`.
    #[serde(default = "global")]
    pub key: KeyConfig,
}

fn global() -> KeyConfig {
    KeyConfig::Global
}

/// A configuration file's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// YAML (`.yaml`, `.yml`).
    Yaml,
    /// TOML (`.toml`).
    Toml,
    /// JSON (`.json`).
    Json,
}

impl Format {
    /// The format a file's extension names.
    pub fn of(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "yaml" | "yml" => Some(Format::Yaml),
            "toml" => Some(Format::Toml),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

impl GatewayConfig {
    /// Reads and checks a configuration file; its extension names the format (`.yaml`,
    /// `.yml`, `.toml`, `.json`). Errors carry the file's name.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let result = match Format::of(path) {
            None => Err(ConfigError::one(
                "",
                "unknown format: expected a .yaml, .yml, .toml or .json file",
            )),
            Some(format) => match std::fs::read_to_string(path) {
                Ok(text) => Self::parse(&text, format).map(|mut config| {
                    config.resolve_paths(path.parent().unwrap_or(Path::new("")));
                    config
                }),
                Err(error) => Err(ConfigError::one(
                    "",
                    format!("cannot read the file: {error}"),
                )),
            },
        };
        result.map_err(|error| error.in_file(path))
    }

    /// Makes the relative paths of key and secret files relative to `base` (the
    /// configuration file's directory), as [`from_file`](Self::from_file) does.
    pub fn resolve_paths(&mut self, base: &Path) {
        for route in &mut self.routes {
            let file = route.validate.as_mut().and_then(|validate| {
                validate
                    .body
                    .as_mut()
                    .and_then(|body| body.schema_file.as_mut())
            });
            if let Some(file) = file.filter(|file| file.is_relative()) {
                *file = base.join(&*file);
            }
        }
        #[cfg(feature = "redis")]
        if let Some(redis) = &mut self.redis {
            for secret in std::iter::once(&mut redis.url).chain(redis.key_secret.as_mut()) {
                if let Secret::File { file } = secret {
                    if file.is_relative() {
                        *file = base.join(&*file);
                    }
                }
            }
        }
        let Some(AuthSection {
            authorizer: AuthorizerConfig::Jwt(jwt),
            ..
        }) = &mut self.auth
        else {
            return;
        };
        for provider in &mut jwt.providers {
            use crate::auth::KeysConfig::*;
            if let HmacSecretFile(path) | RsaPemFile(path) | EcPemFile(path) | EdPemFile(path)
            | JwkSetFile(path) = &mut provider.keys
            {
                if path.is_relative() {
                    *path = base.join(&*path);
                }
            }
        }
    }

    /// Reads and checks a configuration in `format`.
    pub fn parse(text: &str, format: Format) -> Result<Self, ConfigError> {
        let config = match format {
            Format::Yaml => read::yaml(text)?,
            Format::Toml => read::toml(text)?,
            Format::Json => read::json(text)?,
        };
        config.validate()?;
        Ok(config)
    }

    /// Reads and checks a YAML configuration.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        Self::parse(text, Format::Yaml)
    }

    /// Reads and checks a TOML configuration.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::parse(text, Format::Toml)
    }

    /// Reads and checks a JSON configuration.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        Self::parse(text, Format::Json)
    }

    /// Checks what can be checked without the application: routes that parse, do not repeat
    /// and can be served, and every cross-reference (plans, stages, stage variables, the
    /// sections a route's overrides need). The `from_*` readers call it; call it yourself on
    /// a configuration built in code. Building can still fail on what only the application
    /// and the machine know: handlers and custom authorizers by name, secrets, key files.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = build::problems(self);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::new(problems))
        }
    }
}

/// The three readers, each giving the field path of a type error and the line of a syntax
/// error (and of a type error, where the format knows it).
mod read {
    use super::{ConfigError, GatewayConfig, Problem};

    fn problem(
        path: String,
        line: Option<usize>,
        column: Option<usize>,
        message: String,
    ) -> ConfigError {
        // serde_path_to_error writes `?` for a map key it could not read: the path ends at
        // the map.
        let mut trimmed = path.as_str();
        while let Some(rest) = trimmed
            .strip_suffix(".?")
            .or_else(|| trimmed.strip_suffix('?'))
        {
            trimmed = rest;
        }
        let path = if trimmed == "." {
            String::new()
        } else {
            trimmed.to_owned()
        };
        ConfigError::new(vec![Problem {
            path,
            line,
            column,
            message,
        }])
    }

    pub(super) fn yaml(text: &str) -> Result<GatewayConfig, ConfigError> {
        let mut options = serde_saphyr::options::Options::default();
        options.with_snippet = false;
        // The error goes back through serde-saphyr, which gives it its location; the path
        // is kept aside.
        let mut path = String::new();
        let outcome = serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
            serde_path_to_error::deserialize::<_, GatewayConfig>(de).map_err(|error| {
                path = error.path().to_string();
                error.into_inner()
            })
        });
        let error = match outcome {
            Ok(config) => return Ok(config),
            Err(error) => error,
        };
        let location = error.location().filter(|l| l.line() > 0);
        let message = saphyr_message(&error);
        Err(problem(
            path,
            location.map(|l| l.line() as usize),
            location.map(|l| l.column() as usize),
            message,
        ))
    }

    /// The error's message without the location serde-saphyr appends (we print our own).
    fn saphyr_message(error: &serde_saphyr::Error) -> String {
        let text = error.without_snippet().to_string();
        let text = text.lines().next().unwrap_or_default().trim();
        match text.rfind(" at line ") {
            Some(at) => text[..at].to_owned(),
            None => text.to_owned(),
        }
    }

    pub(super) fn toml(text: &str) -> Result<GatewayConfig, ConfigError> {
        let deserializer = match toml::Deserializer::parse(text) {
            Ok(deserializer) => deserializer,
            Err(error) => return Err(toml_problem(text, String::new(), &error)),
        };
        serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let path = error.path().to_string();
            toml_problem(text, path, error.inner())
        })
    }

    fn toml_problem(text: &str, path: String, error: &toml::de::Error) -> ConfigError {
        let (line, column) = match error.span() {
            Some(span) => {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
                (Some(line), Some(column))
            }
            None => (None, None),
        };
        problem(path, line, column, error.message().trim().to_owned())
    }

    pub(super) fn json(text: &str) -> Result<GatewayConfig, ConfigError> {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let config = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
            let path = error.path().to_string();
            let inner = error.into_inner();
            let (line, column) = (inner.line(), inner.column());
            let message = inner.to_string();
            let message = match message.rfind(" at line ") {
                Some(at) => message[..at].to_owned(),
                None => message,
            };
            problem(
                path,
                Some(line).filter(|&l| l > 0),
                Some(column).filter(|&c| c > 0),
                message,
            )
        })?;
        deserializer.end().map_err(|error| {
            problem(
                String::new(),
                Some(error.line()),
                Some(error.column()),
                "trailing characters after the configuration".to_owned(),
            )
        })?;
        Ok(config)
    }
}
