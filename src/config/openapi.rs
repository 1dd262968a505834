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
    /// section's default policy), an API key where `api_key: true`, in the header the usage
    /// section reads; the refusals the throttle, the usage plan and validation add; the cache's
    /// headers on `GET` routes it keeps; and each stage as a server, at its first base path
    /// (relative, such as `/v1`) or host.
    ///
    /// Every operation answers `200` as far as the document says (a configuration does not
    /// say what its handlers answer): edit the built JSON to add others, or describe the
    /// routes in code with [`Operation`].
    ///
    /// Add servers and anything else to the returned builder, then
    /// [`build`](OpenApi::build) it. A route for any method is described for `GET`, `POST`,
    /// `PUT`, `PATCH` and `DELETE`. Routes behind a custom authorizer carry no security
    /// scheme: what it reads is the application's.
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
        if let Some(usage) = &self.usage {
            let header = usage
                .key_sources
                .iter()
                .find_map(|source| match source {
                    KeySourceConfig::Header(name) => Some(name.as_str()),
                    _ => None,
                })
                .or(usage.key_sources.is_empty().then_some("x-api-key"));
            if let Some(header) = header {
                document = document.api_key_header(header);
            }
        }
        if let Some(stages) = &self.stages {
            for (name, stage) in &stages.stages {
                let url = match (stage.base_paths.first(), stage.hosts.first()) {
                    (Some(path), _) => path.clone(),
                    (None, Some(host)) => format!("https://{host}"),
                    (None, None) => continue,
                };
                document = document.stage(name.clone(), url);
            }
        }
        let mut problems = Vec::new();
        for (index, route) in self.routes.iter().enumerate() {
            let text = normalized(&route.route).unwrap_or_else(|_| route.route.clone());
            let (method, path) = text.split_once(' ').unwrap_or(("*", text.as_str()));
            let mut operation = Operation::new();
            if let Some(auth) = &self.auth {
                let policy = route.auth.as_ref().unwrap_or(&auth.default);
                if jwt {
                    let scopes = policy.all_of().iter().chain(policy.any_of());
                    operation = operation.bearer(scopes.cloned());
                    if policy.is_anonymous() {
                        operation = operation.optional_auth();
                    }
                    if policy.any_of().len() > 1 {
                        operation = operation.description(format!(
                            "Needs a token with at least one of the scopes {}{}.",
                            policy.any_of().join(", "),
                            if policy.all_of().is_empty() {
                                String::new()
                            } else {
                                format!(", and all of {}", policy.all_of().join(", "))
                            }
                        ));
                    }
                }
            }
            if route.api_key && self.usage.is_some() {
                operation = operation.api_key();
            }
            if route.throttle.is_some() || self.throttle.is_some() {
                operation = operation.throttled();
            }
            if method == "GET" && self.cached(&text, route) {
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
            if method == "*" {
                for method in ANY_METHOD {
                    document = document.route(&format!("{method} {path}"), operation.clone());
                }
            } else {
                document = document.route(&text, operation);
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
