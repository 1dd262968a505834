//! The OpenAPI document of a configuration's routes.

use super::build::{normalized, validation};
use super::{AuthorizerConfig, ConfigError, GatewayConfig, Problem};
use crate::openapi::{OpenApi, Operation};
use crate::usage::KeySourceConfig;

/// The methods a route for any method (`* /path`) is described with.
const ANY_METHOD: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

impl GatewayConfig {
    /// An OpenAPI 3.1 document of the configuration's routes (feature `openapi`), for client
    /// SDK generators: the route's path and query parameters, headers and JSON body schema
    /// from its `validate`; bearer JWT security with the route's scopes (or the `auth`
    /// section's default policy: `any_of` as one requirement per scope, see
    /// [`Operation::bearer_any_of`]); an API key where `api_key: true`, where the usage
    /// section reads it (its first header or query key source; none when it reads the key
    /// only from the authorizer); the refusals the throttle, the usage plan and validation
    /// add; the cache's headers on `GET` routes it keeps.
    ///
    /// Each stage with a base path or a host is a server, at its first base path (relative,
    /// such as `/v1`) or host, and every operation is restricted to those stages
    /// ([`Operation::stages`]), so servers added to the returned builder do not take their
    /// place. A stage selected only by a version header, a media type or as the default gets
    /// no server: a client cannot reach it by URL alone.
    ///
    /// Every operation answers `200` as far as the document says (a configuration does not
    /// say what its handlers answer): edit the built JSON to add others, or describe the
    /// routes in code with [`Operation`].
    ///
    /// Add servers and anything else to the returned builder, then
    /// [`build`](OpenApi::build) it. A route for any method is described for `GET`, `POST`,
    /// `PUT`, `PATCH` and `DELETE`, less those a route of their own serves at the same path.
    /// Routes behind a custom authorizer carry no security scheme: what it reads is the
    /// application's.
    ///
    /// # Errors
    ///
    /// A route's `validate.body.schema_file` cannot be read, or the configuration is not
    /// valid.
    pub fn openapi(
        &self,
        title: impl Into<String>,
        version: impl Into<String>,
    ) -> Result<OpenApi, ConfigError> {
        self.validate()?;
        let mut document = OpenApi::new(title, version);
        let jwt = matches!(
            self.auth.as_ref().map(|auth| &auth.authorizer),
            Some(AuthorizerConfig::Jwt(_))
        );
        if jwt {
            document = document.bearer_jwt();
        }
        // Where a client sends its key: the first header or query source, `x-api-key` when
        // none is given; none when the key comes from the authorizer only.
        let default_source = KeySourceConfig::Header("x-api-key".to_owned());
        let key_source = self.usage.as_ref().and_then(|usage| {
            usage
                .key_sources
                .iter()
                .find(|source| {
                    matches!(
                        source,
                        KeySourceConfig::Header(_) | KeySourceConfig::Query(_)
                    )
                })
                .or(usage.key_sources.is_empty().then_some(&default_source))
        });
        match key_source {
            Some(KeySourceConfig::Header(name)) => document = document.api_key_header(name),
            Some(KeySourceConfig::Query(name)) => document = document.api_key_query(name),
            _ => {}
        }
        let mut stages = Vec::new();
        if let Some(config) = &self.stages {
            for (name, stage) in &config.stages {
                let url = match (stage.base_paths.first(), stage.hosts.first()) {
                    (Some(path), _) => path.clone(),
                    (None, Some(host)) => format!("https://{host}"),
                    (None, None) => continue,
                };
                document = document.stage(name.clone(), url);
                stages.push(name.clone());
            }
        }
        let texts: Vec<String> = self
            .routes
            .iter()
            .map(|route| normalized(&route.route).unwrap_or_else(|_| route.route.clone()))
            .collect();
        let mut problems = Vec::new();
        for (index, (route, text)) in self.routes.iter().zip(&texts).enumerate() {
            let (method, path) = text.split_once(' ').unwrap_or(("*", text.as_str()));
            let mut operation = Operation::new();
            if let Some(auth) = &self.auth {
                let policy = route.auth.as_ref().unwrap_or(&auth.default);
                if jwt {
                    operation = operation.bearer_any_of(policy.all_of(), policy.any_of());
                    if policy.is_anonymous() {
                        operation = operation.optional_auth();
                    }
                }
            }
            if route.api_key && self.usage.is_some() {
                // Without a scheme the key is the authorizer's to find; its plan still
                // throttles.
                operation = if key_source.is_some() {
                    operation.api_key()
                } else {
                    operation.throttled()
                };
            }
            if route.throttle.is_some() || self.throttle.is_some() {
                operation = operation.throttled();
            }
            if method == "GET" && self.cached(text, route) {
                operation = operation.cached();
            }
            if let Some(validate) = &route.validate {
                match validation(validate) {
                    Ok(validation) => operation = operation.validation(&validation),
                    Err(error) => problems.push(Problem::at(
                        format!("routes[{index}].validate.body.schema_file"),
                        error,
                    )),
                }
            }
            if !stages.is_empty() {
                operation = operation.stages(&stages);
            }
            if method == "*" {
                // A method with a route of its own at this path is described by that route.
                let own = |method: &str| texts.iter().any(|t| *t == format!("{method} {path}"));
                for method in ANY_METHOD.into_iter().filter(|method| !own(method)) {
                    document = document.route(&format!("{method} {path}"), operation.clone());
                }
            } else {
                document = document.route(text, operation);
            }
        }
        if problems.is_empty() {
            Ok(document)
        } else {
            Err(ConfigError::new(problems))
        }
    }

    /// Whether the cache keeps answers of `route` (written as `text`): its own policy, the
    /// `cache` section's for it, then the section's default, over the cache's (on).
    fn cached(&self, text: &str, route: &super::RouteConfig) -> bool {
        let Some(cache) = &self.cache else {
            return false;
        };
        let listed = cache
            .routes
            .iter()
            .find(|(listed, _)| normalized(listed).is_ok_and(|listed| listed == text))
            .and_then(|(_, policy)| policy.enabled);
        route
            .cache
            .as_ref()
            .and_then(|policy| policy.enabled)
            .or(listed)
            .or(cache.default.enabled)
            .unwrap_or(true)
    }
}
