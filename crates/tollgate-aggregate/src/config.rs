//! Aggregates, upstreams and mocks as configuration files describe them.

use std::collections::BTreeMap;

use http::{HeaderName, HeaderValue, Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;
use tollgate_core::{HumanDuration, TrustedProxies};

use crate::{
    Aggregate, AggregateBuilder, AggregateError, Backend, Collision, HttpClient, HttpUpstream,
    Merge, Mock, UpstreamError,
};

/// A configuration that cannot be built; the message names the field.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A backend has both `url` and `service`, or neither.
    #[error("backend {backend:?}: set exactly one of `url` (HTTP) and `service` (in-process)")]
    Location {
        /// The backend.
        backend: String,
    },
    /// No in-process service has the name a backend asks for.
    #[error("backend {backend:?}: no in-process service is named {service:?}")]
    UnknownService {
        /// The backend.
        backend: String,
        /// The service name it asks for.
        service: String,
    },
    /// A method is not a valid HTTP method.
    #[error("backend {backend:?}: invalid method {method:?}")]
    InvalidMethod {
        /// The backend.
        backend: String,
        /// The method as written.
        method: String,
    },
    /// A mock's status, header or body cannot be used.
    #[error("mock: {0}")]
    Mock(String),
    /// The aggregate's settings do not fit together.
    #[error(transparent)]
    Aggregate(#[from] AggregateError),
    /// The upstream's settings do not fit together.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

/// An [`Aggregate`] in configuration.
///
/// ```
/// use tollgate_aggregate::AggregateConfig;
///
/// let config: AggregateConfig = serde_json::from_value(serde_json::json!({
///     "route": "/products/{id}/details",
///     "deadline": "2s",
///     "collision": "error",
///     "errors_field": "errors",
///     "backends": [
///         { "name": "catalog", "url": "http://127.0.0.1:8081/products/{id}", "target": "data" },
///         { "name": "inventory", "url": "http://127.0.0.1:8082/stock/{catalog.data.sku}",
///           "timeout": "300ms", "group": "stock" },
///         { "name": "reviews", "service": "reviews", "path": "/reviews?product={id}",
///           "optional": true, "collection": "reviews",
///           "hedge": { "copies": 2, "delay": "50ms" } }
///     ]
/// })).unwrap();
///
/// let reviews = tollgate_aggregate::Mock::json(http::StatusCode::OK, &serde_json::json!([]));
/// let details = config
///     .build(|service| (service == "reviews").then(|| reviews.clone()))
///     .unwrap();
/// # let _ = details;
/// ```
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    /// The name in logs and metrics (default `aggregate`).
    #[serde(default)]
    pub name: Option<String>,
    /// The route template whose parameters fill `{name}` placeholders.
    #[serde(default)]
    pub route: Option<String>,
    /// The backends, in merge order.
    pub backends: Vec<BackendConfig>,
    /// `shallow` (default) or `deep`.
    #[serde(default)]
    pub merge: Merge,
    /// `first-wins` (default), `last-wins`, `collect` or `error`.
    #[serde(default)]
    pub collision: Collision,
    /// The whole call's deadline (default `10s`).
    #[serde(default)]
    pub deadline: Option<HumanDuration>,
    /// The field listing failed optional backends (default: none).
    #[serde(default)]
    pub errors_field: Option<String>,
    /// The backend whose status the aggregate answers with.
    #[serde(default)]
    pub status_from: Option<String>,
    /// The most calls at once (default: unlimited).
    #[serde(default)]
    pub concurrency_limit: Option<usize>,
    /// The client HTTP backends are called with (default: its own, with the defaults).
    #[serde(default)]
    pub client: Option<ClientConfig>,
}

/// One backend in configuration: `url` for HTTP, or `service` naming an in-process service.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// The backend's name: its placeholders' prefix and its label.
    pub name: String,
    /// An HTTP backend's URL template.
    #[serde(default)]
    pub url: Option<String>,
    /// An in-process service, by the name the application gives it.
    #[serde(default)]
    pub service: Option<String>,
    /// An in-process backend's path template (default `/`).
    #[serde(default)]
    pub path: Option<String>,
    /// The method (default `GET`).
    #[serde(default)]
    pub method: Option<String>,
    /// Whether the aggregate answers without it when it fails (default `false`: required).
    #[serde(default)]
    pub optional: bool,
    /// This backend's timeout.
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// Incoming headers passed on.
    #[serde(default)]
    pub forward_headers: Vec<String>,
    /// Principal claims sent as headers: `{ "sub": "x-user-id" }`.
    #[serde(default)]
    pub claim_headers: BTreeMap<String, String>,
    /// Whether the incoming query string is appended.
    #[serde(default)]
    pub forward_query: bool,
    /// A JSON body template.
    #[serde(default)]
    pub body: Option<Value>,
    /// The sub-object kept.
    #[serde(default)]
    pub target: Option<String>,
    /// Fields kept (dot paths).
    #[serde(default)]
    pub allow: Vec<String>,
    /// Fields removed (dot paths).
    #[serde(default)]
    pub deny: Vec<String>,
    /// Top-level renames: `{ "id": "product_id" }`.
    #[serde(default)]
    pub mapping: BTreeMap<String, String>,
    /// The key the response is wrapped under.
    #[serde(default)]
    pub group: Option<String>,
    /// The key a bare array is wrapped under (default `collection`).
    #[serde(default)]
    pub collection: Option<String>,
    /// Hedged copies of an idempotent call.
    #[serde(default)]
    pub hedge: Option<HedgeConfig>,
    /// The largest response body accepted, in bytes (default 10 MiB).
    #[serde(default)]
    pub max_body: Option<usize>,
}

/// An [`HttpClient`] in configuration: `{ "connect_timeout": "2s", "http2": true }`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// How long a TCP connect may take (default `5s`).
    #[serde(default)]
    pub connect_timeout: Option<HumanDuration>,
    /// How long an idle pooled connection is kept (default `90s`).
    #[serde(default)]
    pub idle_timeout: Option<HumanDuration>,
    /// Speak HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1.
    #[serde(default)]
    pub http2: bool,
}

impl ClientConfig {
    /// Builds the client.
    pub fn build(&self) -> HttpClient {
        let mut builder = HttpClient::builder();
        if let Some(timeout) = self.connect_timeout {
            builder = builder.connect_timeout(timeout.0);
        }
        if let Some(timeout) = self.idle_timeout {
            builder = builder.idle_timeout(timeout.0);
        }
        if self.http2 {
            builder = builder.http2_prior_knowledge();
        }
        builder.build()
    }
}

/// Hedging in configuration: `{ "copies": 2, "delay": "50ms" }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HedgeConfig {
    /// How many copies at most, the first included.
    pub copies: u32,
    /// How long to wait for an answer before the next copy.
    pub delay: HumanDuration,
}

impl AggregateConfig {
    /// Builds the aggregate. `service` returns the in-process service for a backend's
    /// `service` name (any [`Backend::service`]-compatible service; return `None` for names
    /// the application does not know).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the backend and field.
    pub fn build<F, S, B>(&self, service: F) -> Result<Aggregate, ConfigError>
    where
        F: FnMut(&str) -> Option<S>,
        S: tower::Service<
                http::Request<http_body_util::Full<bytes::Bytes>>,
                Response = http::Response<B>,
            > + Clone
            + Send
            + Sync
            + 'static,
        S::Error: Into<crate::BoxError>,
        S::Future: Send + 'static,
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<crate::BoxError>,
    {
        Ok(self.builder(service, None)?.build()?)
    }

    /// The aggregate's builder, to add what configuration cannot say, sending HTTP backends
    /// through `client` when given (a shared pool) instead of the configured `client`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the backend and field.
    pub fn builder<F, S, B>(
        &self,
        mut service: F,
        client: Option<HttpClient>,
    ) -> Result<AggregateBuilder, ConfigError>
    where
        F: FnMut(&str) -> Option<S>,
        S: tower::Service<
                http::Request<http_body_util::Full<bytes::Bytes>>,
                Response = http::Response<B>,
            > + Clone
            + Send
            + Sync
            + 'static,
        S::Error: Into<crate::BoxError>,
        S::Future: Send + 'static,
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<crate::BoxError>,
    {
        let mut builder = Aggregate::builder()
            .merge(self.merge)
            .collision(self.collision);
        if let Some(name) = &self.name {
            builder = builder.name(name.clone());
        }
        if let Some(route) = &self.route {
            builder = builder.route(route.clone());
        }
        if let Some(deadline) = self.deadline {
            builder = builder.deadline(deadline.0);
        }
        if let Some(field) = &self.errors_field {
            builder = builder.errors_field(field.clone());
        }
        if let Some(backend) = &self.status_from {
            builder = builder.status_from(backend.clone());
        }
        if let Some(limit) = self.concurrency_limit {
            builder = builder.concurrency_limit(limit);
        }
        if let Some(client) = client.or_else(|| self.client.as_ref().map(ClientConfig::build)) {
            builder = builder.client(client);
        }
        let mut local = |service_name: &str, name: String| {
            service(service_name).map(|found| Backend::service(name, found))
        };
        for entry in &self.backends {
            builder = builder.backend(entry.backend(&mut local)?);
        }
        Ok(builder)
    }
}

impl BackendConfig {
    /// The backend; `local(service, name)` makes the in-process backend `name` from the
    /// application's service of that name.
    fn backend(
        &self,
        local: &mut dyn FnMut(&str, String) -> Option<Backend>,
    ) -> Result<Backend, ConfigError> {
        let mut backend = match (&self.url, &self.service) {
            (Some(url), None) => Backend::http(self.name.clone(), url.clone()),
            (None, Some(name)) => {
                let backend =
                    local(name, self.name.clone()).ok_or_else(|| ConfigError::UnknownService {
                        backend: self.name.clone(),
                        service: name.clone(),
                    })?;
                match &self.path {
                    Some(path) => backend.path(path.clone()),
                    None => backend,
                }
            }
            _ => {
                return Err(ConfigError::Location {
                    backend: self.name.clone(),
                })
            }
        };
        if let Some(method) = &self.method {
            let parsed =
                Method::from_bytes(method.to_ascii_uppercase().as_bytes()).map_err(|_| {
                    ConfigError::InvalidMethod {
                        backend: self.name.clone(),
                        method: method.clone(),
                    }
                })?;
            backend = backend.method(parsed);
        }
        if self.optional {
            backend = backend.optional();
        }
        if let Some(timeout) = self.timeout {
            backend = backend.timeout(timeout.0);
        }
        backend = backend
            .forward_headers(self.forward_headers.iter().cloned())
            .forward_query(self.forward_query)
            .allow(self.allow.iter().cloned())
            .deny(self.deny.iter().cloned())
            .mapping(
                self.mapping
                    .iter()
                    .map(|(from, to)| (from.clone(), to.clone())),
            );
        for (claim, header) in &self.claim_headers {
            backend = backend.claim_header(claim.clone(), header.clone());
        }
        if let Some(body) = &self.body {
            backend = backend.body(body.clone());
        }
        if let Some(target) = &self.target {
            backend = backend.target(target.clone());
        }
        if let Some(group) = &self.group {
            backend = backend.group(group.clone());
        }
        if let Some(collection) = &self.collection {
            backend = backend.collection(collection.clone());
        }
        if let Some(hedge) = &self.hedge {
            backend = backend.hedge(hedge.copies, hedge.delay.0);
        }
        if let Some(max) = self.max_body {
            backend = backend.max_body(max);
        }
        Ok(backend)
    }
}

/// An [`HttpUpstream`] in configuration.
///
/// ```
/// let config: tollgate_aggregate::UpstreamConfig = serde_json::from_value(serde_json::json!({
///     "url": "http://127.0.0.1:8081/internal",
///     "strip_prefix": "/api",
///     "timeout": "5s",
///     "claim_headers": { "sub": "x-user-id" },
///     "trusted_proxies": ["10.0.0.0/8"],
///     "client": { "connect_timeout": "2s", "http2": false }
/// })).unwrap();
/// let upstream = config.build(None).unwrap();
/// # let _ = upstream;
/// ```
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The base URL, `http://host[:port][/path]`.
    pub url: String,
    /// A path prefix removed before forwarding.
    #[serde(default)]
    pub strip_prefix: Option<String>,
    /// A path prefix replaced before forwarding: `{ "from": "/api", "to": "/v1" }`.
    #[serde(default)]
    pub replace_prefix: Option<PrefixConfig>,
    /// A route and the target path it is rewritten to: `{ "route": "/pets/{id}", "target":
    /// "/animals/{id}" }`.
    #[serde(default)]
    pub rewrite: Option<RewriteConfig>,
    /// The only request headers forwarded (default: all end-to-end headers).
    #[serde(default)]
    pub forward_headers: Option<Vec<String>>,
    /// Principal claims sent as headers: `{ "sub": "x-user-id" }`.
    #[serde(default)]
    pub claim_headers: BTreeMap<String, String>,
    /// Proxies whose forwarding headers are believed and extended.
    #[serde(default)]
    pub trusted_proxies: TrustedProxies,
    /// How long the exchange may go without progress (default `30s`): each uploaded chunk
    /// restarts it, then it bounds the wait for the response head.
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// A bound on the whole exchange, bodies included (default none).
    #[serde(default)]
    pub total_timeout: Option<HumanDuration>,
    /// Whether the client's `Host` is sent instead of the upstream's.
    #[serde(default)]
    pub preserve_host: bool,
    /// `http` (default) or `https`: how clients reach this gateway.
    #[serde(default)]
    pub forwarded_proto: Option<String>,
    /// The client the upstream is called with (default: its own, with the defaults).
    #[serde(default)]
    pub client: Option<ClientConfig>,
}

/// A prefix replacement in configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixConfig {
    /// The prefix removed.
    pub from: String,
    /// The prefix put in its place.
    pub to: String,
}

/// A templated rewrite in configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteConfig {
    /// The route template matched (`/pets/{id}`).
    pub route: String,
    /// The upstream path template (`/animals/{id}`).
    pub target: String,
}

impl UpstreamConfig {
    /// Builds the upstream, sending through `client` when given (a shared pool) instead of the
    /// configured `client`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field; setting more than one of `strip_prefix`,
    /// `replace_prefix` and `rewrite` is one.
    pub fn build(&self, client: Option<HttpClient>) -> Result<HttpUpstream, ConfigError> {
        let mut builder = HttpUpstream::builder(self.url.clone())
            .trusted_proxies(self.trusted_proxies.clone())
            .preserve_host(self.preserve_host);
        let rewrites = usize::from(self.strip_prefix.is_some())
            + usize::from(self.replace_prefix.is_some())
            + usize::from(self.rewrite.is_some());
        if rewrites > 1 {
            return Err(UpstreamError::InvalidTemplate(
                "set at most one of strip_prefix, replace_prefix and rewrite".to_owned(),
            )
            .into());
        }
        if let Some(prefix) = &self.strip_prefix {
            builder = builder.strip_prefix(prefix.clone());
        }
        if let Some(prefix) = &self.replace_prefix {
            builder = builder.replace_prefix(prefix.from.clone(), prefix.to.clone());
        }
        if let Some(rewrite) = &self.rewrite {
            builder = builder.route(rewrite.route.clone(), rewrite.target.clone());
        }
        if let Some(names) = &self.forward_headers {
            builder = builder.forward_headers(names.iter().cloned());
        }
        for (claim, header) in &self.claim_headers {
            builder = builder.claim_header(claim.clone(), header.clone());
        }
        if let Some(timeout) = self.timeout {
            builder = builder.timeout(timeout.0);
        }
        if let Some(timeout) = self.total_timeout {
            builder = builder.total_timeout(timeout.0);
        }
        if let Some(proto) = &self.forwarded_proto {
            builder = builder.forwarded_proto(proto.clone());
        }
        if let Some(client) = client.or_else(|| self.client.as_ref().map(ClientConfig::build)) {
            builder = builder.client(client);
        }
        Ok(builder.build()?)
    }
}

/// A [`Mock`] in configuration: a status, headers, and a body that is either text or JSON.
///
/// ```
/// let config: tollgate_aggregate::MockConfig = serde_json::from_value(serde_json::json!({
///     "status": 200,
///     "headers": { "cache-control": "max-age=60" },
///     "json": { "status": "ok" }
/// })).unwrap();
/// let mock = config.build().unwrap();
/// # let _ = mock;
/// ```
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MockConfig {
    /// The status (default 200).
    #[serde(default)]
    pub status: Option<u16>,
    /// Response headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A text body.
    #[serde(default)]
    pub body: Option<String>,
    /// A JSON body, sent as `application/json` (instead of `body`).
    #[serde(default)]
    pub json: Option<Value>,
}

impl MockConfig {
    /// Builds the mock.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Mock`] for a status outside 100–999, an invalid header, or both `body`
    /// and `json`.
    pub fn build(&self) -> Result<Mock, ConfigError> {
        let status = StatusCode::from_u16(self.status.unwrap_or(200))
            .map_err(|_| ConfigError::Mock(format!("invalid status {:?}", self.status)))?;
        let mut mock = match (&self.body, &self.json) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Mock(
                    "set `body` or `json`, not both".to_owned(),
                ))
            }
            (_, Some(json)) => Mock::json(status, json),
            (Some(body), None) => Mock::new(status).body(body.clone()),
            (None, None) => Mock::new(status),
        };
        for (name, value) in &self.headers {
            let name = HeaderName::try_from(name.as_str())
                .map_err(|_| ConfigError::Mock(format!("invalid header name {name:?}")))?;
            let value = HeaderValue::try_from(value.as_str())
                .map_err(|_| ConfigError::Mock(format!("invalid value for header {name}")))?;
            mock = mock.header(name, value);
        }
        Ok(mock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn no_services(_: &str) -> Option<Mock> {
        None
    }

    #[test]
    fn unknown_fields_are_refused() {
        let error = serde_json::from_value::<AggregateConfig>(json!({
            "backends": [{ "name": "a", "url": "http://h/x", "targte": "data" }]
        }))
        .unwrap_err();
        assert!(
            error.to_string().contains("unknown field `targte`"),
            "{error}"
        );
    }

    #[test]
    fn a_backend_needs_exactly_one_location() {
        for backend in [
            json!({"name": "a"}),
            json!({"name": "a", "url": "http://h/x", "service": "s"}),
        ] {
            let config: AggregateConfig =
                serde_json::from_value(json!({ "backends": [backend] })).unwrap();
            let error = config.build(no_services).unwrap_err();
            assert!(matches!(error, ConfigError::Location { .. }), "{error}");
        }
    }

    #[test]
    fn an_unknown_service_is_named() {
        let config: AggregateConfig =
            serde_json::from_value(json!({ "backends": [{ "name": "a", "service": "ghost" }] }))
                .unwrap();
        let error = config.build(no_services).unwrap_err().to_string();
        assert_eq!(
            error,
            "backend \"a\": no in-process service is named \"ghost\""
        );
    }

    #[test]
    fn bad_durations_name_what_was_expected() {
        let error = serde_json::from_value::<AggregateConfig>(json!({
            "deadline": "thirty", "backends": []
        }))
        .unwrap_err();
        assert!(error.to_string().contains("expected a duration"), "{error}");
    }

    #[test]
    fn upstream_rewrites_are_exclusive() {
        let config: UpstreamConfig = serde_json::from_value(json!({
            "url": "http://h", "strip_prefix": "/a", "replace_prefix": {"from": "/a", "to": "/b"}
        }))
        .unwrap();
        assert!(config.build(None).is_err());
    }

    #[test]
    fn mocks_refuse_two_bodies_and_bad_statuses() {
        for value in [json!({"body": "x", "json": {}}), json!({"status": 1000})] {
            let config: MockConfig = serde_json::from_value(value).unwrap();
            assert!(config.build().is_err());
        }
    }
}
