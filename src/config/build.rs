//! A configuration checked and turned into a gateway, reusing a running one's state.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::fmt;
use std::future::ready;
use std::sync::Arc;

use axum::body::Body;
use axum::response::IntoResponse;
use axum::routing::MethodFilter;
use axum::Router;
use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};

use super::error::Problem;
#[cfg(feature = "redis")]
use super::RedisStore;
use super::{AuthorizerConfig, ConfigError, GatewayConfig, IntegrationConfig, RouteConfig};
use crate::aggregate::HttpClient;
use crate::auth::jwt::JwtAuthorizer;
use crate::auth::{AuthConfig, CustomAuthorizer, KeysConfig};
use crate::core::{RouteTable, SharedClock};
use crate::gateway::{GatewayFuture, GatewayService, GatewayStep};
use crate::throttle::{Rule, DEFAULT_CAPACITY};
use crate::usage::{ApiKey, KeyStore, MemoryKeyStore, MemoryQuotaStore, DEFAULT_RETENTION_DAYS};
use crate::Gateway;

/// A handler as the gateway holds it: any service, boxed.
pub(crate) type Handler = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

fn boxed<S>(service: S) -> Handler
where
    S: Service<Request<Body>, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Response: IntoResponse,
    S::Future: Send + 'static,
{
    BoxCloneSyncService::new(service.map_response(IntoResponse::into_response))
}

/// What the application provides to a [`GatewayConfig`](super::GatewayConfig) by name: the
/// handlers routes and aggregate backends name, and custom authorizers.
///
/// ```
/// use axum::extract::Path;
/// use tollgate::config::Handlers;
///
/// async fn product(Path(id): Path<u32>) -> String {
///     format!("product {id}")
/// }
///
/// let handlers = Handlers::new()
///     .handler("catalog", || async { "[]" })
///     .handler("product", product);
/// # let _ = handlers;
/// ```
#[derive(Clone, Default)]
#[must_use]
pub struct Handlers {
    handlers: BTreeMap<String, Handler>,
    /// The names registered with `handler`: axum handlers, which read path parameters from
    /// axum's routing.
    axum_handlers: BTreeSet<String>,
    authorizers: BTreeMap<String, CustomAuthorizer>,
    clock: Option<SharedClock>,
}

impl fmt::Debug for Handlers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handlers")
            .field("handlers", &self.handlers.keys().collect::<Vec<_>>())
            .field("authorizers", &self.authorizers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Handlers {
    /// None yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// An axum handler (an async function of extractors) under `name`. Path parameters are
    /// the template's: a handler of the route `GET /products/{id}` extracts `Path(id)`, and
    /// so does one an aggregate's backend calls with `path: /products/{id}`.
    pub fn handler<H, T>(mut self, name: impl Into<String>, handler: H) -> Self
    where
        H: axum::handler::Handler<T, ()>,
        T: 'static,
    {
        let name = name.into();
        self.axum_handlers.insert(name.clone());
        self.handlers.insert(name, boxed(handler.with_state(())));
        self
    }

    /// A tower service under `name`: cloneable, thread-safe, never failing, taking axum
    /// bodies. An axum `Router` is one, but under a route with path parameters axum hands it
    /// the route's parameters as well as its own (its `Path` extractors then fail): give such
    /// a route a handler, or the router a path without parameters.
    pub fn service<S>(mut self, name: impl Into<String>, service: S) -> Self
    where
        S: Service<Request<Body>, Error = Infallible> + Clone + Send + Sync + 'static,
        S::Response: IntoResponse,
        S::Future: Send + 'static,
    {
        let name = name.into();
        self.axum_handlers.remove(&name);
        self.handlers.insert(name, boxed(service));
        self
    }

    /// The handler named `name`, serving requests to `template` (a route's, or an aggregate
    /// backend's path): an axum handler behind a router of that one template, so that it
    /// finds the template's path parameters. A template axum's router would refuse (it
    /// panics) is served without one; its handler reads the URI instead.
    fn routed(&self, name: &str, template: &str) -> Option<Handler> {
        let handler = self.handlers.get(name)?.clone();
        let routable = template.starts_with('/')
            && template.contains('{')
            && whole_segment_template(template)
            && RouteTable::new().with(template, ()).is_ok();
        if !self.axum_handlers.contains(name) || !routable {
            return Some(handler);
        }
        Some(boxed(
            Router::new()
                .without_v07_checks()
                .route(template, axum::routing::any_service(handler)),
        ))
    }

    /// A custom authorizer `auth.authorizer: { custom: <name> }` names.
    pub fn authorizer(mut self, name: impl Into<String>, authorizer: CustomAuthorizer) -> Self {
        self.authorizers.insert(name.into(), authorizer);
        self
    }

    /// The clock of every layer (default: the system clock); tests pass a `ManualClock`.
    pub fn clock(mut self, clock: impl Into<SharedClock>) -> Self {
        self.clock = Some(clock.into());
        self
    }

    fn names(&self) -> String {
        if self.handlers.is_empty() {
            return "the application provides none".to_owned();
        }
        let names: Vec<_> = self.handlers.keys().map(|n| format!("{n:?}")).collect();
        format!("the application provides {}", names.join(", "))
    }
}

/// One deployment the stage router serves: its name, where it is configured, its variables.
struct Deployment {
    name: String,
    field: String,
    variables: BTreeMap<String, String>,
}

/// Every deployment the stages name (one unnamed deployment without stages).
fn deployments(config: &GatewayConfig) -> Vec<Deployment> {
    let Some(stages) = &config.stages else {
        return vec![Deployment {
            name: String::new(),
            field: String::new(),
            variables: BTreeMap::new(),
        }];
    };
    let mut out = Vec::new();
    for (stage, entry) in &stages.stages {
        out.push(Deployment {
            name: entry.deployment.clone().unwrap_or_else(|| stage.clone()),
            field: format!("stages.{stage}"),
            variables: entry.variables.clone(),
        });
        if let Some(canary) = &entry.canary {
            let mut variables = entry.variables.clone();
            variables.extend(canary.variables.clone());
            out.push(Deployment {
                name: canary
                    .deployment
                    .clone()
                    .unwrap_or_else(|| format!("{stage}-canary")),
                field: format!("stages.{stage}.canary"),
                variables,
            });
        }
    }
    out
}

const VARIABLE: &str = "${stageVariables.";

/// `text` with each `${stageVariables.NAME}` replaced by the variable's value.
fn substitute(text: &str, variables: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(VARIABLE) {
        out.push_str(&rest[..start]);
        let after = &rest[start + VARIABLE.len()..];
        let Some(end) = after.find('}') else {
            return Err(format!("unclosed \"{VARIABLE}\" in {text:?}"));
        };
        let name = &after[..end];
        match variables.get(name) {
            Some(value) => out.push_str(value),
            None => return Err(format!("stage variable {name:?} is not defined")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The integration with the deployment's variables in place: in a handler's name, an
/// upstream's URL, and an aggregate backend's URL or handler. Errors name the field.
fn for_deployment(
    integration: &IntegrationConfig,
    variables: &BTreeMap<String, String>,
) -> Result<IntegrationConfig, (String, String)> {
    let mut integration = integration.clone();
    match &mut integration {
        IntegrationConfig::Handler(name) => {
            *name = substitute(name, variables).map_err(|e| ("handler".to_owned(), e))?;
        }
        IntegrationConfig::Upstream(upstream) => {
            upstream.url =
                substitute(&upstream.url, variables).map_err(|e| ("upstream.url".to_owned(), e))?;
        }
        IntegrationConfig::Aggregate(aggregate) => {
            for (index, backend) in aggregate.backends.iter_mut().enumerate() {
                for (field, value) in [("url", &mut backend.url), ("service", &mut backend.service)]
                {
                    if let Some(value) = value {
                        *value = substitute(value, variables)
                            .map_err(|e| (format!("aggregate.backends[{index}].{field}"), e))?;
                    }
                }
            }
        }
        IntegrationConfig::Mock(_) => {}
    }
    Ok(integration)
}

/// Everything wrong with `config` that can be known without the application.
pub(super) fn problems(config: &GatewayConfig) -> Vec<Problem> {
    let mut problems = Vec::new();
    if let Some(header) = config.request_id.as_ref().and_then(|r| r.header.as_ref()) {
        if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
            problems.push(Problem::at(
                "request_id.header",
                format!("{header:?} is not a header name"),
            ));
        }
    }
    if let Some(Err(error)) = config.cors.as_ref().map(|cors| cors.build()) {
        problems.push(Problem::at("cors", error));
    }
    if let Some(Err(error)) = config.ip_filter.as_ref().map(|filter| filter.build()) {
        problems.push(Problem::at("ip_filter", error));
    }
    let plans = config.usage.as_ref().map(|usage| &usage.plans);
    let mut table = RouteTable::new();
    let deployments = deployments(config);
    for (index, route) in config.routes.iter().enumerate() {
        let at = |field: &str| format!("routes[{index}].{field}");
        match normalized(&route.route) {
            Err(error) => problems.push(Problem::at(at("route"), error)),
            Ok(text) => {
                if let Err(error) = table.insert(&text, ()) {
                    problems.push(Problem::at(at("route"), error));
                } else if method_filter(&text).is_err() {
                    problems.push(Problem::at(
                        at("route"),
                        format!("{:?}: the method is not one a route can serve", route.route),
                    ));
                } else if template(&text)
                    .split('/')
                    .any(|segment| segment.starts_with([':', '*']))
                {
                    problems.push(Problem::at(
                        at("route"),
                        format!(
                            "{:?}: write path parameters as {{id}} and {{*rest}}, not :id and *rest",
                            route.route
                        ),
                    ));
                } else if !whole_segment_template(template(&text)) {
                    problems.push(Problem::at(
                        at("route"),
                        format!(
                            "{:?}: a path parameter must be a whole segment, {{name}} (or \
                             {{*name}} at the end)",
                            route.route
                        ),
                    ));
                }
            }
        }
        if route.auth.is_some() && config.auth.is_none() {
            problems.push(Problem::at(
                at("auth"),
                "the route has a policy but there is no `auth` section with an authorizer",
            ));
        }
        if route.cache.is_some() && config.cache.is_none() {
            problems.push(Problem::at(
                at("cache"),
                "the route has a cache policy but there is no `cache` section",
            ));
        }
        if let Some(cache) = &config.cache {
            if route.cache.is_some() && mentions(cache.routes.keys(), &route.route) {
                problems.push(Problem::at(
                    at("cache"),
                    format!(
                        "cache.routes also has a policy for {:?}; keep one",
                        route.route
                    ),
                ));
            }
        }
        if let Some(validate) = &route.validate {
            problems.extend(
                validation_problems(validate)
                    .into_iter()
                    .map(|(field, error)| Problem::at(at(&format!("validate.{field}")), error)),
            );
        }
        if route.api_key && plans.is_none() {
            problems.push(Problem::at(
                at("api_key"),
                "the route needs an API key but there is no `usage` section with plans",
            ));
        }
        if !route.plan_throttles.is_empty() && !route.api_key {
            problems.push(Problem::at(
                at("plan_throttles"),
                "plan throttles apply to requests with an API key: set `api_key: true`",
            ));
        }
        for plan in route.plan_throttles.keys() {
            match plans.map(|plans| plans.get(plan)) {
                Some(None) => problems.push(Problem::at(
                    at(&format!("plan_throttles.{plan}")),
                    format!("no plan {plan:?} in usage.plans"),
                )),
                Some(Some(found)) if mentions(found.routes.keys(), &route.route) => {
                    problems.push(Problem::at(
                        at(&format!("plan_throttles.{plan}")),
                        format!(
                            "usage.plans.{plan}.routes also has a throttle for {:?}; keep one",
                            route.route
                        ),
                    ))
                }
                _ => {}
            }
        }
        for deployment in &deployments {
            if let Err((field, error)) = for_deployment(&route.integration, &deployment.variables) {
                let whose = if deployment.field.is_empty() {
                    "; there are no stages to define it".to_owned()
                } else {
                    format!(
                        " for deployment {:?} ({})",
                        deployment.name, deployment.field
                    )
                };
                problems.push(Problem::at(
                    at(&format!("integration.{field}")),
                    error + &whose,
                ));
            }
        }
    }
    if let Some(usage) = &config.usage {
        for (index, key) in usage.keys.iter().enumerate() {
            if !usage.plans.contains_key(&key.plan) {
                problems.push(Problem::at(
                    format!("usage.keys[{index}].plan"),
                    format!("no plan {:?} in usage.plans", key.plan),
                ));
            }
        }
        if let Some(stages) = &config.stages {
            for (index, key) in usage.keys.iter().enumerate() {
                for stage in key.stages.iter().flatten() {
                    if !stages.stages.contains_key(stage) {
                        problems.push(Problem::at(
                            format!("usage.keys[{index}].stages"),
                            format!("no stage {stage:?} in stages.stages"),
                        ));
                    }
                }
            }
            for (id, plan) in &usage.plans {
                for stage in plan.stages.iter().flatten() {
                    if !stages.stages.contains_key(stage) {
                        problems.push(Problem::at(
                            format!("usage.plans.{id}.stages"),
                            format!("no stage {stage:?} in stages.stages"),
                        ));
                    }
                }
            }
        }
    }
    #[cfg(feature = "redis")]
    if let (Some(redis), Some(throttle), Some(usage)) =
        (&config.redis, &config.throttle, &config.usage)
    {
        // In Redis a rule's state is found by its name alone.
        let shared = |store| redis.stores.contains(&store);
        if shared(RedisStore::Throttle) && shared(RedisStore::Usage) {
            for (index, rule) in throttle.rules.iter().enumerate() {
                if usage.plans.contains_key(&rule.name) {
                    problems.push(Problem::at(
                        format!("throttle.rules[{index}].name"),
                        format!(
                            "{:?} is also a plan's id; in Redis their limits would be one",
                            rule.name
                        ),
                    ));
                }
            }
        }
    }
    // A deployment's routes are built once, from its variables.
    let mut seen: BTreeMap<&str, &Deployment> = BTreeMap::new();
    for deployment in &deployments {
        match seen.get(deployment.name.as_str()) {
            Some(first) if first.variables != deployment.variables => {
                problems.push(Problem::at(
                    deployment.field.clone(),
                    format!(
                        "deployment {:?} is also {}'s, with other variables; give one of them another name",
                        deployment.name, first.field
                    ),
                ));
            }
            Some(_) => {}
            None => {
                seen.insert(&deployment.name, deployment);
            }
        }
    }
    if let Some(stages) = &config.stages {
        if let Some(default) = &stages.default_stage {
            if !stages.stages.contains_key(default) {
                problems.push(Problem::at(
                    "stages.default_stage",
                    format!("no stage {default:?} in stages.stages"),
                ));
            }
        }
    }
    problems
}

/// A route's text as the route tables write it, `METHOD /template` (`*` for any method), so
/// that every table and the dispatch read it alike.
pub(super) fn normalized(route: &str) -> Result<String, crate::core::RouteTableError> {
    let table = RouteTable::new().with(route, ())?;
    let text = table
        .iter()
        .next()
        .map_or_else(String::new, |(text, ())| text.to_owned());
    Ok(text)
}

/// Whether every parameter of `template` is a whole segment (`{id}`, or `{*rest}` last): what
/// axum's router accepts, where route tables accept more (`{name}.json`).
fn whole_segment_template(template: &str) -> bool {
    let segments: Vec<&str> = template.split('/').collect();
    segments.iter().enumerate().all(|(index, segment)| {
        if !segment.contains(['{', '}']) {
            return true;
        }
        let Some(name) = segment
            .strip_prefix('{')
            .and_then(|rest| rest.strip_suffix('}'))
        else {
            return false;
        };
        let name = match name.strip_prefix('*') {
            Some(rest) if index == segments.len() - 1 => rest,
            Some(_) => return false,
            None => name,
        };
        !name.is_empty() && !name.contains(['{', '}', '*'])
    })
}

/// Whether `routes` (as written in a section) has `route`, however each is spaced.
fn mentions<'a>(mut routes: impl Iterator<Item = &'a String>, route: &str) -> bool {
    let route = normalized(route).unwrap_or_else(|_| route.to_owned());
    routes.any(|other| normalized(other).is_ok_and(|other| other == route))
}

/// The axum method filter of a route's method (`*` or none: any).
fn method_filter(route: &str) -> Result<Option<MethodFilter>, ()> {
    let Some((method, _)) = route.split_once(' ') else {
        return Ok(None);
    };
    if method == "*" {
        return Ok(None);
    }
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| ())?;
    MethodFilter::try_from(method).map(Some).map_err(|_| ())
}

/// A route's path template.
fn template(route: &str) -> &str {
    route.split_once(' ').map_or(route, |(_, path)| path.trim())
}

/// A throttle rule name for a route's own throttle, of the characters rule names allow:
/// `GET /products/{id}/details` is `route:GET:products.id.details`.
fn rule_name(route: &str, taken: &BTreeSet<String>) -> String {
    let (method, path) = route.split_once(' ').unwrap_or(("*", route));
    let path: Vec<String> = path
        .split('/')
        .filter(|segment| !segment.is_empty())
        .map(|segment| {
            segment
                .chars()
                .filter(|c| !"{}*".contains(*c))
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "-_".contains(c) {
                        c
                    } else {
                        '.'
                    }
                })
                .collect()
        })
        .collect();
    let method = if method == "*" { "any" } else { method };
    let mut name: String = format!("route:{method}:{}", path.join("."))
        .chars()
        .take(56)
        .collect();
    let base = name.clone();
    let mut suffix = 2;
    while taken.contains(&name) {
        name = format!("{base}.{suffix}");
        suffix += 1;
    }
    name
}

/// The state a built gateway keeps for the next build: what a reload carries over.
#[derive(Default)]
pub(crate) struct State {
    throttle: Option<Arc<crate::throttle::MemoryStore>>,
    plan_throttle: Option<Arc<crate::throttle::MemoryStore>>,
    keys: Option<Arc<MemoryKeyStore>>,
    quotas: Option<Arc<MemoryQuotaStore>>,
    /// The ids of the keys the configuration put in the memory key store.
    config_keys: BTreeSet<String>,
    /// The ids of the keys the configuration put in Redis.
    #[cfg(feature = "redis")]
    redis_config_keys: BTreeSet<String>,
    cache: Option<(u64, crate::cache::MemoryStore)>,
    /// The JWT authorizer and its configuration, as `Debug` writes it.
    jwt: Option<(String, Arc<JwtAuthorizer>)>,
    /// The usage plans, for key administration.
    pub(crate) plans: Option<ConfiguredPlans>,
    /// The Redis connection, by its settings, and the shared cache store on it.
    #[cfg(feature = "redis")]
    redis: Option<(String, crate::redis::Redis)>,
    #[cfg(feature = "redis")]
    redis_cache: Option<(String, u64, crate::redis::RedisCacheStore)>,
}

/// The usage plans a configuration builds, for key administration (create, rotate, revoke
/// keys, read usage; the `admin` feature's router takes either).
#[derive(Clone)]
#[non_exhaustive]
pub enum ConfiguredPlans {
    /// Keys, quotas and plan throttles in memory, shared with the configuration a reload
    /// builds.
    Memory(
        crate::usage::UsagePlans<
            Arc<MemoryKeyStore>,
            Arc<MemoryQuotaStore>,
            Arc<crate::throttle::MemoryStore>,
        >,
    ),
    /// Keys, quotas and plan throttles in Redis (a `redis` section with the `usage` store).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    Redis(
        crate::usage::UsagePlans<
            crate::redis::RedisKeyStore,
            crate::redis::RedisQuotaStore,
            crate::redis::RedisThrottleStore,
        >,
    ),
}

impl fmt::Debug for ConfiguredPlans {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfiguredPlans::Memory(_) => f.write_str("ConfiguredPlans::Memory"),
            #[cfg(feature = "redis")]
            ConfiguredPlans::Redis(_) => f.write_str("ConfiguredPlans::Redis"),
        }
    }
}

impl ConfiguredPlans {
    /// Makes a key on a plan; its plaintext is in the returned `Secret`, and nowhere else.
    ///
    /// # Errors
    ///
    /// As `UsagePlans::create_key`: an unknown plan, an id in use, a store failure.
    pub async fn create_key(
        &self,
        new: crate::usage::NewKey,
    ) -> Result<(ApiKey, crate::usage::Secret), crate::usage::AdminError> {
        match self {
            ConfiguredPlans::Memory(plans) => plans.create_key(new).await,
            #[cfg(feature = "redis")]
            ConfiguredPlans::Redis(plans) => plans.create_key(new).await,
        }
    }
}

/// Where the configuration's keys go once a build serves.
#[derive(Default)]
enum KeyTarget {
    #[default]
    None,
    Memory(Arc<MemoryKeyStore>),
    #[cfg(feature = "redis")]
    Redis(crate::redis::RedisKeyStore),
}

/// Puts `keys` in `store` and removes `removed` from it; a store that fails is logged (the
/// keys are then as they were, and the next reload puts them again).
async fn sync_keys<K: KeyStore>(store: &K, keys: Vec<ApiKey>, removed: Vec<String>) {
    for key in keys {
        if let Err(error) = store.put(key).await {
            tracing::warn!(error = %error, "tollgate: a configured API key was not stored");
        }
    }
    for id in removed {
        if let Err(error) = store.remove(&id).await {
            tracing::warn!(error = %error, key = %id, "tollgate: a key the configuration dropped was not removed");
        }
    }
}

/// A gateway built from a configuration, not yet serving.
pub(crate) struct Built {
    pub(crate) gateway: Gateway,
    pub(crate) service: GatewayService,
    pub(crate) state: State,
    /// Keys to put in the key store once the build is adopted, and ids to remove.
    keys: Vec<ApiKey>,
    removed: Vec<String>,
    key_target: KeyTarget,
}

impl Built {
    /// Makes the configuration's keys the store's, now that this build serves: keys it
    /// lists are put, keys the previous configuration listed and this one does not are
    /// removed, keys made at runtime stay.
    pub(crate) async fn adopt_keys(&mut self) {
        let keys = std::mem::take(&mut self.keys);
        let removed = std::mem::take(&mut self.removed);
        match std::mem::take(&mut self.key_target) {
            KeyTarget::None => {}
            KeyTarget::Memory(store) => sync_keys(&store, keys, removed).await,
            #[cfg(feature = "redis")]
            KeyTarget::Redis(store) => sync_keys(&store, keys, removed).await,
        }
    }
}

/// A step that runs only for requests to some routes: the usage plans on routes with
/// `api_key: true`.
struct OnRoutes {
    /// Every route, marked whether the step runs for it.
    routes: Arc<RouteTable<bool>>,
    step: Arc<dyn GatewayStep>,
}

impl GatewayStep for OnRoutes {
    fn wrap(&self, inner: GatewayService) -> GatewayService {
        let with_step = self.step.wrap(inner.clone());
        let routes = self.routes.clone();
        GatewayService::from_fn(move |request: Request<Body>| -> GatewayFuture {
            let service = if routes
                .at(request.method(), request.uri().path())
                .is_some_and(|route| *route.value())
            {
                &with_step
            } else {
                &inner
            };
            service.clone().call(request)
        })
    }
}

/// What is wrong with a route's `validate`, by field below it.
fn validation_problems(validate: &super::ValidateConfig) -> Vec<(String, String)> {
    use super::QueryType;
    let mut problems = Vec::new();
    for (index, header) in validate.headers.iter().enumerate() {
        if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
            problems.push((
                format!("headers[{index}]"),
                format!("{header:?} is not a header name"),
            ));
        }
    }
    for (name, param) in &validate.query {
        let at = format!("query.{name}");
        if param.one_of.is_some() && param.kind != QueryType::String {
            problems.push((at.clone(), "`enum` is for string parameters".to_owned()));
        }
        if param.one_of.as_ref().is_some_and(Vec::is_empty) {
            problems.push((at.clone(), "`enum` lists no value".to_owned()));
        }
        if (param.min.is_some() || param.max.is_some()) && param.kind != QueryType::Integer {
            problems.push((
                at.clone(),
                "`min` and `max` are for integer parameters".to_owned(),
            ));
        }
        if let (Some(min), Some(max)) = (param.min, param.max) {
            if min > max {
                problems.push((at, format!("`min` ({min}) is more than `max` ({max})")));
            }
        }
    }
    if let Some(body) = &validate.body {
        if body.schema.is_some() && body.schema_file.is_some() {
            problems.push((
                "body".to_owned(),
                "give `schema` or `schema_file`, not both".to_owned(),
            ));
        }
        if body.max_bytes == Some(0) {
            problems.push((
                "body.max_bytes".to_owned(),
                "must be more than 0".to_owned(),
            ));
        }
        // Compiled as the layer compiles it; a schema file is read only when the gateway is
        // built, so its schema is judged then.
        if let Some(schema) = &body.schema {
            let compiled = crate::validate::ValidateLayer::builder()
                .route(
                    "POST /",
                    crate::validate::Validation::new().body(schema.clone()),
                )
                .build();
            if let Err(crate::validate::ValidateError::InvalidSchema { reason, .. }) = compiled {
                problems.push((
                    "body.schema".to_owned(),
                    format!("not a valid JSON Schema: {reason}"),
                ));
            }
        }
    }
    problems
}

/// The request validation a route's `validate` describes, its schema file read.
pub(super) fn validation(
    validate: &super::ValidateConfig,
) -> Result<crate::validate::Validation, String> {
    use super::QueryType;
    use crate::validate::{QueryParam, Validation};
    let mut validation = Validation::new();
    for header in &validate.headers {
        validation = validation.header(header);
    }
    for (name, param) in &validate.query {
        let mut query = match (param.kind, &param.one_of) {
            (_, Some(values)) => QueryParam::one_of(values.iter().cloned()),
            (QueryType::String, None) => QueryParam::string(),
            (QueryType::Integer, None) => QueryParam::integer(),
            (QueryType::Boolean, None) => QueryParam::boolean(),
        };
        if let Some(min) = param.min {
            query = query.min(min);
        }
        if let Some(max) = param.max {
            query = query.max(max);
        }
        if param.required {
            query = query.required();
        }
        validation = validation.query(name.clone(), query);
    }
    if let Some(body) = &validate.body {
        let schema = match (&body.schema, &body.schema_file) {
            (Some(schema), _) => Some(schema.clone()),
            (None, Some(file)) => {
                let text = std::fs::read(file)
                    .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
                Some(
                    serde_json::from_slice::<serde_json::Value>(&text)
                        .map_err(|e| format!("{} is not JSON: {e}", file.display()))?,
                )
            }
            (None, None) => None,
        };
        if let Some(schema) = schema {
            validation = validation.body(schema);
        }
        if let Some(limit) = body.max_bytes {
            validation = validation.max_body_bytes(limit);
        }
    }
    Ok(validation)
}

fn fail(path: impl Into<String>, error: impl fmt::Display) -> ConfigError {
    ConfigError::one(path, error)
}

/// `config` with every route written as the route tables write it (validated already).
fn with_normalized_routes(config: &GatewayConfig) -> GatewayConfig {
    let mut config = config.clone();
    for route in &mut config.routes {
        if let Ok(text) = normalized(&route.route) {
            route.route = text;
        }
    }
    config
}

/// Every route of `routes`, marked by `pick`.
fn marked(routes: &[RouteConfig], pick: impl Fn(&RouteConfig) -> bool) -> RouteTable<bool> {
    let mut table = RouteTable::new();
    for route in routes {
        // Validated: every route inserts.
        let _ = table.insert(&route.route, pick(route));
    }
    table
}

/// Builds `config` with the application's `handlers`, carrying `previous`'s state over.
/// Nothing `previous` serves changes until the result is adopted (keys included).
pub(crate) async fn build(
    config: &GatewayConfig,
    handlers: &Handlers,
    previous: Option<&State>,
) -> Result<Built, ConfigError> {
    config.validate()?;
    let config = &with_normalized_routes(config);
    let empty = State::default();
    let previous = previous.unwrap_or(&empty);
    let mut state = State::default();
    let mut gateway = Gateway::builder();
    #[cfg(feature = "redis")]
    let redis = connect(config, previous, &mut state)?;

    // 0. Request ids, CORS and the IP lists, before everything else.
    if let Some(request_id) = &config.request_id {
        let header = request_id.header.as_deref().unwrap_or("x-request-id");
        let header = http::HeaderName::from_bytes(header.as_bytes())
            .map_err(|_| fail("request_id.header", "not a header name"))?;
        gateway = gateway.request_id_header(header);
    }
    if let Some(log) = &config.access_log {
        let client_ip =
            crate::key::ClientIp::new(log.trusted_proxies.clone()).header(log.forwarded_header);
        let mut layer = crate::observe::AccessLogLayer::new().client_ip(client_ip);
        if let Some(header) = config.request_id.as_ref().and_then(|r| r.header.as_deref()) {
            if let Ok(header) = http::HeaderName::from_bytes(header.as_bytes()) {
                layer = layer.request_id_header(header);
            }
        }
        gateway = gateway.access_log(layer);
    }
    if config.metrics {
        gateway = gateway.metrics();
    }
    if (config.metrics || config.access_log.is_some()) && !config.routes.is_empty() {
        let mut routes = RouteTable::new();
        for route in &config.routes {
            // Validated already: every route is one the table takes.
            let _ = routes.insert(&route.route, ());
        }
        gateway = gateway.route_note(Arc::new(routes));
    }
    if let Some(cors) = &config.cors {
        gateway = gateway.cors(cors.build().map_err(|e| fail("cors", e))?);
    }
    if let Some(filter) = &config.ip_filter {
        gateway = gateway.ip_filter(filter.build().map_err(|e| fail("ip_filter", e))?);
    }

    // 1. The coarse throttle, with the routes' own rules. A route's rule covers its route and
    // no other, even where another route's template also matches (a more specific route
    // beside it): the rule lists every route, its own marked.
    let throttle = config.throttle.clone().unwrap_or_default();
    let mut taken: BTreeSet<String> = throttle.rules.iter().map(|r| r.name.clone()).collect();
    let mut route_rules = Vec::new();
    for (index, route) in config.routes.iter().enumerate() {
        if let Some(own) = &route.throttle {
            let name = rule_name(&route.route, &taken);
            taken.insert(name.clone());
            let key = throttle
                .key_extractor(&own.key)
                .map_err(|e| fail(format!("routes[{index}].throttle.key"), e))?;
            let mut rule = Rule::with_shared_extractor(name, own.rate, key)
                .routes_among(marked(&config.routes, |other| other.route == route.route));
            if let Some(burst) = own.burst {
                rule = rule.burst(burst);
            }
            route_rules.push(rule);
        }
    }
    if !throttle.rules.is_empty() || !route_rules.is_empty() {
        let capacity = throttle.capacity.unwrap_or(DEFAULT_CAPACITY);
        let mut builder = throttle.builder().map_err(|e| fail("throttle", e))?;
        for rule in route_rules {
            builder = builder.rule(rule);
        }
        if let Some(clock) = &handlers.clock {
            builder = builder.clock(clock.clone());
        }
        #[cfg(feature = "redis")]
        let in_redis = redis.for_store(RedisStore::Throttle);
        #[cfg(not(feature = "redis"))]
        let in_redis: Option<()> = None;
        match in_redis {
            #[cfg(feature = "redis")]
            Some((redis, policy)) => {
                let layer = builder
                    .build_with_store(|rules, clock| {
                        crate::redis::RedisThrottleStore::new(redis.clone(), rules, clock)
                            .on_failure(policy)
                    })
                    .map_err(|e| fail("throttle", e))?;
                // The memory store is kept for a later configuration without Redis.
                state.throttle = previous.throttle.clone();
                gateway = gateway.throttle(layer);
            }
            _ => {
                let mut store = None;
                let layer = builder
                    .build_with_store(|rules, clock| {
                        let made = Arc::new(crate::throttle::MemoryStore::carrying_over(
                            rules,
                            capacity,
                            clock.clone(),
                            previous.throttle.as_deref(),
                        ));
                        store = Some(made.clone());
                        made
                    })
                    .map_err(|e| fail("throttle", e))?;
                state.throttle = store;
                gateway = gateway.throttle(layer);
            }
        }
    } else {
        // Kept for a later configuration that throttles again.
        state.throttle = previous.throttle.clone();
    }

    // 2. The authorizer, with the routes' policies.
    if let Some(auth) = &config.auth {
        // Every route, with its policy or the default: a request is judged by the route that
        // serves it, never by another whose template also matches.
        let mut routes = RouteTable::new();
        for (index, route) in config.routes.iter().enumerate() {
            let policy = route.auth.clone().unwrap_or_else(|| auth.default.clone());
            routes
                .insert(&route.route, policy)
                .map_err(|e| fail(format!("routes[{index}].route"), e))?;
        }
        let policies = AuthConfig {
            routes,
            default: auth.default.clone(),
            claim_headers: auth.claim_headers.clone(),
        };
        gateway = match &auth.authorizer {
            AuthorizerConfig::Jwt(jwt) => {
                // Kept only when its keys are fetched (JWKS, discovery), which it refreshes
                // itself: a secret or key file may have new contents under the same name.
                let described = format!("{jwt:?}");
                let fetched = jwt.providers.iter().all(|provider| {
                    matches!(
                        provider.keys,
                        KeysConfig::JwksUrl(_) | KeysConfig::Discovery
                    )
                });
                let authorizer = match &previous.jwt {
                    Some((was, authorizer)) if fetched && *was == described => authorizer.clone(),
                    _ => Arc::new(
                        jwt.clone()
                            .build()
                            .map_err(|e| fail("auth.authorizer.jwt", e))?,
                    ),
                };
                state.jwt = Some((described, authorizer.clone()));
                gateway.authorizer(policies.build(authorizer).map_err(|e| fail("auth", e))?)
            }
            AuthorizerConfig::Custom(name) => {
                let authorizer = handlers.authorizers.get(name).cloned().ok_or_else(|| {
                    fail(
                        "auth.authorizer.custom",
                        format!("the application provides no custom authorizer named {name:?}"),
                    )
                })?;
                gateway.authorizer(policies.build(authorizer).map_err(|e| fail("auth", e))?)
            }
        };
    }

    // 3. Usage plans, on the routes that need a key (every request when there are no routes).
    // Without a `usage` section the stores are kept, unused, for a later configuration
    // (keys made at runtime and quota counts are not lost to a reload that drops plans).
    let mut keys = Vec::new();
    let mut removed = Vec::new();
    let mut key_target = KeyTarget::None;
    state.keys = previous.keys.clone();
    state.quotas = previous.quotas.clone();
    state.plan_throttle = previous.plan_throttle.clone();
    state.config_keys = previous.config_keys.clone();
    #[cfg(feature = "redis")]
    {
        state.redis_config_keys = previous.redis_config_keys.clone();
    }
    if let Some(usage) = &config.usage {
        let mut usage = usage.clone();
        let records = std::mem::take(&mut usage.keys);
        for plan in usage.plans.values_mut() {
            plan.routes = std::mem::take(&mut plan.routes)
                .into_iter()
                .map(|(route, throttle)| (normalized(&route).unwrap_or(route), throttle))
                .collect();
        }
        for route in &config.routes {
            for (plan, throttle) in &route.plan_throttles {
                if let Some(plan) = usage.plans.get_mut(plan) {
                    plan.routes.insert(route.route.clone(), *throttle);
                }
            }
        }
        // The routes without an override keep the plan's throttle, even where an override's
        // template also matches them.
        for plan in usage.plans.values_mut() {
            if plan.routes.is_empty() {
                continue;
            }
            let others: Vec<String> = config
                .routes
                .iter()
                .map(|route| route.route.clone())
                .filter(|route| !plan.routes.contains_key(route))
                .collect();
            plan.other_routes.extend(others);
        }
        let capacity = usage
            .throttle_capacity
            .unwrap_or(crate::usage::DEFAULT_THROTTLE_CAPACITY);
        let retention = usage.retention_days.unwrap_or(DEFAULT_RETENTION_DAYS);
        let mut builder = usage.builder().map_err(|e| fail("usage", e))?;
        if let Some(clock) = &handlers.clock {
            builder = builder.clock(clock.clone());
        }
        #[cfg(feature = "redis")]
        let in_redis = redis.for_store(RedisStore::Usage);
        #[cfg(not(feature = "redis"))]
        let in_redis: Option<()> = None;
        let step: Arc<dyn GatewayStep> = match in_redis {
            #[cfg(feature = "redis")]
            Some((redis, policy)) => {
                let mut key_store = crate::redis::RedisKeyStore::new(redis.clone());
                if let Some(keys) = config.redis.as_ref().and_then(|r| r.remember_keys) {
                    key_store = key_store.remember_keys(keys);
                }
                let quotas = crate::redis::RedisQuotaStore::new(redis.clone())
                    .retention_days(retention)
                    .on_failure(policy);
                let plans = builder
                    .build_with(key_store.clone(), quotas, |rules, clock| {
                        crate::redis::RedisThrottleStore::new(redis.clone(), rules, clock)
                            .on_failure(policy)
                    })
                    .map_err(|e| fail("usage", e))?;
                key_target = KeyTarget::Redis(key_store);
                state.plans = Some(ConfiguredPlans::Redis(plans.clone()));
                Arc::new(plans.layer().keep_inner_body())
            }
            _ => {
                let key_store = previous.keys.clone().unwrap_or_default();
                // The counts are worth more than a changed retention, which applies from a
                // restart.
                let quotas = previous
                    .quotas
                    .clone()
                    .unwrap_or_else(|| Arc::new(MemoryQuotaStore::new(retention)));
                let mut plan_store = None;
                let plans = builder
                    .build_with(key_store.clone(), quotas.clone(), |rules, clock| {
                        let made = Arc::new(crate::throttle::MemoryStore::carrying_over(
                            rules,
                            capacity,
                            clock.clone(),
                            previous.plan_throttle.as_deref(),
                        ));
                        plan_store = Some(made.clone());
                        made
                    })
                    .map_err(|e| fail("usage", e))?;
                key_target = KeyTarget::Memory(key_store.clone());
                state.keys = Some(key_store);
                state.quotas = Some(quotas);
                state.plan_throttle = plan_store;
                state.plans = Some(ConfiguredPlans::Memory(plans.clone()));
                Arc::new(plans.layer().keep_inner_body())
            }
        };
        let mut listed = BTreeSet::new();
        for (index, record) in records.into_iter().enumerate() {
            let key =
                ApiKey::try_from(record).map_err(|e| fail(format!("usage.keys[{index}]"), e))?;
            listed.insert(key.id().to_owned());
            keys.push(key);
        }
        // Each store remembers the keys the configuration put in it, so a key dropped while
        // the other store served is still removed from this one.
        let (before, now) = match key_target {
            #[cfg(feature = "redis")]
            KeyTarget::Redis(_) => (&previous.redis_config_keys, &mut state.redis_config_keys),
            _ => (&previous.config_keys, &mut state.config_keys),
        };
        removed = before.difference(&listed).cloned().collect();
        *now = listed;
        if config.routes.is_empty() {
            gateway = gateway.usage_step(step);
        } else {
            let routes = marked(&config.routes, |route| route.api_key);
            if config.routes.iter().any(|route| route.api_key) {
                gateway = gateway.usage_step(Arc::new(OnRoutes {
                    routes: Arc::new(routes),
                    step,
                }));
            }
        }
    }

    // 4. The cache, with the routes' policies.
    if let Some(cache) = &config.cache {
        let mut cache = cache.clone();
        // The section's routes, written as the route tables write them, then every route:
        // a request takes the policy of the route that serves it.
        cache.routes = cache
            .routes
            .into_iter()
            .map(|(route, policy)| (normalized(&route).unwrap_or(route), policy))
            .collect();
        for route in &config.routes {
            let policy = route.cache.clone().unwrap_or_default();
            cache.routes.entry(route.route.clone()).or_insert(policy);
        }
        let max_bytes = cache.max_bytes.unwrap_or(crate::cache::DEFAULT_MAX_BYTES);
        if max_bytes == 0 {
            return Err(fail("cache.max_bytes", "must be more than 0"));
        }
        let mut builder = cache.builder().map_err(|e| fail("cache", e))?;
        if let Some(clock) = &handlers.clock {
            builder = builder.clock(clock.clone());
        }
        #[cfg(feature = "redis")]
        let in_redis = redis.for_store(RedisStore::Cache);
        #[cfg(not(feature = "redis"))]
        let in_redis: Option<()> = None;
        match in_redis {
            #[cfg(feature = "redis")]
            Some((connection, _)) => {
                let store = match &previous.redis_cache {
                    Some((described, bytes, store))
                        if *described == redis.described && *bytes == max_bytes =>
                    {
                        store.clone()
                    }
                    _ => {
                        crate::redis::RedisCacheStore::with_max_bytes(connection.clone(), max_bytes)
                    }
                };
                let layer = builder
                    .build_with(store.clone())
                    .map_err(|e| fail("cache", e))?;
                state.redis_cache = Some((redis.described.clone(), max_bytes, store));
                state.cache = previous.cache.clone();
                gateway = gateway.cache(layer);
            }
            _ => {
                let store = match &previous.cache {
                    Some((bytes, store)) if *bytes == max_bytes => store.clone(),
                    _ => crate::cache::MemoryStore::new(max_bytes),
                };
                let layer = builder
                    .build_with(store.clone())
                    .map_err(|e| fail("cache", e))?;
                state.cache = Some((max_bytes, store));
                gateway = gateway.cache(layer);
            }
        }
    } else {
        state.cache = previous.cache.clone();
    }

    // 5. Request validation, before the cache: a request the route refuses is never
    // answered from it. Every route is in the table (most with nothing to check), so a
    // request is judged by the route that serves it, never by a wider template beside it.
    if config.routes.iter().any(|route| route.validate.is_some()) {
        use crate::validate::{ValidateError, ValidateLayer, Validation};
        let mut checks = Vec::with_capacity(config.routes.len());
        for (index, route) in config.routes.iter().enumerate() {
            checks.push(match &route.validate {
                Some(validate) => validation(validate)
                    .map_err(|e| fail(format!("routes[{index}].validate.body.schema_file"), e))?,
                None => Validation::new(),
            });
        }
        let builder = config
            .routes
            .iter()
            .zip(&checks)
            .fold(ValidateLayer::builder(), |builder, (route, checks)| {
                builder.route(&route.route, checks.clone())
            });
        let layer = builder.build().map_err(|error| {
            // Placed at the first route whose checks fail on their own (a schema file's
            // schema, which only now is read); else the routes conflict.
            let placed = config.routes.iter().zip(&checks).enumerate().find_map(
                |(index, (route, checks))| {
                    let error = ValidateLayer::builder()
                        .route(&route.route, checks.clone())
                        .build()
                        .err()?;
                    let body = route.validate.as_ref().and_then(|v| v.body.as_ref());
                    let field = match (&error, body) {
                        (ValidateError::InvalidSchema { .. }, Some(body))
                            if body.schema_file.is_some() =>
                        {
                            "validate.body.schema_file"
                        }
                        (ValidateError::InvalidSchema { .. }, _) => "validate.body.schema",
                        _ => "validate",
                    };
                    Some(fail(format!("routes[{index}].{field}"), error))
                },
            );
            placed.unwrap_or_else(|| fail("routes", error))
        })?;
        gateway = gateway.validate(layer);
    }

    let gateway = gateway.build();

    // 6. The routes of each deployment, and the stages in front.
    let client = HttpClient::builder().build();
    let mut routers = BTreeMap::new();
    for deployment in deployments(config) {
        if routers.contains_key(&deployment.name) {
            continue;
        }
        let router = routes(&config.routes, &deployment, handlers, &client)?;
        routers.insert(deployment.name, router);
    }
    let service = match &config.stages {
        // Without stages there is one deployment, unnamed.
        None => gateway.wrap(routers.remove("").expect("one deployment without stages")),
        Some(stages) => {
            let mut builder = stages
                .builder(|deployment| routers.get(deployment).cloned())
                .map_err(|e| fail("stages", e))?;
            if let Some(clock) = &handlers.clock {
                builder = builder.clock(clock.clone());
            }
            // Request ids, the access log and the metrics go in front of the stage router: they
            // see the requests it refuses, and the paths as the client sent them.
            let (observing, steps) = gateway.split_observing();
            let router = steps.stages(builder).map_err(|e| fail("stages", e))?;
            observing.wrap(router)
        }
    };
    Ok(Built {
        gateway,
        service,
        state,
        keys,
        removed,
        key_target,
    })
}

/// 405 as problem+json, with the route's methods in `Allow` (`HEAD` with `GET`).
fn method_not_allowed(methods: &[Method]) -> Response<Body> {
    let mut allow: Vec<&str> = methods.iter().map(Method::as_str).collect();
    if methods.contains(&Method::GET) && !methods.contains(&Method::HEAD) {
        allow.push("HEAD");
    }
    let rejection = crate::Rejection::new(
        http::StatusCode::METHOD_NOT_ALLOWED,
        crate::ProblemType::MethodNotAllowed,
    )
    .with_detail("the route does not serve this method");
    let rejection = match http::HeaderValue::from_str(&allow.join(", ")) {
        Ok(value) => rejection.with_header(http::header::ALLOW, value),
        Err(_) => rejection,
    };
    rejection.into_response_with(Body::from)
}

/// The Redis connection a configuration asks for, and what it is used for.
#[cfg(feature = "redis")]
struct RedisUse {
    /// The connection's settings, secrets included (kept in memory only), to tell whether a
    /// reload can keep the connection.
    described: String,
    connection: Option<crate::redis::Redis>,
    stores: Vec<RedisStore>,
    policy: crate::redis::FailurePolicy,
}

#[cfg(feature = "redis")]
impl RedisUse {
    /// The connection and failure policy when `store` lives in Redis.
    fn for_store(
        &self,
        store: RedisStore,
    ) -> Option<(&crate::redis::Redis, crate::redis::FailurePolicy)> {
        let connection = self.connection.as_ref()?;
        self.stores
            .contains(&store)
            .then_some((connection, self.policy))
    }
}

/// Connects (lazily: a gateway starts while Redis is down, its stores following their
/// failure policies) to the configuration's Redis, or keeps the previous connection when its
/// settings are the same.
#[cfg(feature = "redis")]
fn connect(
    config: &GatewayConfig,
    previous: &State,
    state: &mut State,
) -> Result<RedisUse, ConfigError> {
    let Some(section) = &config.redis else {
        return Ok(RedisUse {
            described: String::new(),
            connection: None,
            stores: Vec::new(),
            policy: crate::redis::FailurePolicy::Report,
        });
    };
    let url = section.url.reveal().map_err(|e| fail("redis.url", e))?;
    let key_secret = match &section.key_secret {
        Some(secret) => Some(secret.reveal().map_err(|e| fail("redis.key_secret", e))?),
        None => None,
    };
    let described = format!(
        "{url}\n{:?}\n{:?}\n{key_secret:?}",
        section.prefix, section.timeout
    );
    let connection = match &previous.redis {
        Some((was, connection)) if *was == described => connection.clone(),
        _ => {
            let mut settings = crate::redis::RedisConfig::new(url);
            if let Some(prefix) = &section.prefix {
                settings = settings.prefix(prefix.clone());
            }
            if let Some(timeout) = section.timeout {
                settings = settings.timeout(timeout.0);
            }
            if let Some(secret) = &key_secret {
                settings = settings.key_secret(secret);
            }
            // The error names what is wrong with the URL, never the URL (nor its password).
            settings.connect_lazy().map_err(|e| {
                fail(
                    "redis.url",
                    format!("not a usable Redis URL ({:?})", e.kind()),
                )
            })?
        }
    };
    state.redis = Some((described.clone(), connection.clone()));
    let policy = match section.local_fallback_instances {
        Some(instances) => crate::redis::FailurePolicy::LocalFallback {
            instances: instances.max(1),
        },
        None => crate::redis::FailurePolicy::Report,
    };
    Ok(RedisUse {
        described,
        connection: Some(connection),
        stores: section.stores.clone(),
        policy,
    })
}

/// The routes of one deployment, dispatched by the same route table the gateway's steps
/// consult, so a request is judged (authorized, throttled, cached) by the route that serves
/// it. A path with routes for other methods is a problem+json 405 with `Allow`; a path with
/// none a problem+json 404.
fn routes(
    routes: &[RouteConfig],
    deployment: &Deployment,
    handlers: &Handlers,
    client: &HttpClient,
) -> Result<Handler, ConfigError> {
    // Deployments other than the only one are named in errors.
    let whose = if deployment.field.is_empty() {
        String::new()
    } else {
        format!(" (deployment {:?}, {})", deployment.name, deployment.field)
    };
    let mut table = RouteTable::new();
    let mut methods: BTreeMap<&str, Vec<Method>> = BTreeMap::new();
    for (index, route) in routes.iter().enumerate() {
        let at = |field: &str| format!("routes[{index}].integration.{field}");
        let integration = for_deployment(&route.integration, &deployment.variables)
            .map_err(|(field, error)| fail(at(&field), error))?;
        let path = template(&route.route);
        let service: Handler = match integration {
            IntegrationConfig::Handler(name) => handlers.routed(&name, path).ok_or_else(|| {
                fail(
                    at("handler"),
                    format!("no handler named {name:?}{whose}; {}", handlers.names()),
                )
            })?,
            IntegrationConfig::Upstream(upstream) => boxed(
                upstream
                    .build(Some(client.clone()))
                    .map_err(|e| fail(at("upstream"), e))?,
            ),
            IntegrationConfig::Aggregate(mut aggregate) => {
                if aggregate.route.is_none() {
                    aggregate.route = Some(path.to_owned());
                }
                // The builder asks for the in-process backends' services in their order.
                let mut paths = aggregate
                    .backends
                    .iter()
                    .filter(|backend| backend.service.is_some())
                    .map(|backend| backend.path.clone())
                    .collect::<Vec<_>>()
                    .into_iter();
                let local = |name: &str| {
                    let path = paths.next().flatten();
                    let template = path.as_deref().unwrap_or("/");
                    let template = template.split('?').next().unwrap_or("/");
                    handlers.routed(name, template).map(|handler| {
                        handler.map_request(|request: Request<Full<Bytes>>| request.map(Body::new))
                    })
                };
                let built = aggregate
                    .builder(local, Some(client.clone()))
                    .and_then(|builder| Ok(builder.build()?))
                    .map_err(|e| fail(at("aggregate"), e))?;
                boxed(built)
            }
            IntegrationConfig::Mock(mock) => boxed(mock.build().map_err(|e| fail(at("mock"), e))?),
        };
        table
            .insert(&route.route, service)
            .map_err(|e| fail(format!("routes[{index}].route"), e))?;
        let method = route
            .route
            .split_once(' ')
            .map_or("*", |(method, _)| method);
        methods.entry(path).or_default().extend(
            Method::from_bytes(method.as_bytes())
                .ok()
                .filter(|_| method != "*"),
        );
    }
    // The methods each template is served for, to answer 405 on the others.
    let mut allowed = RouteTable::new();
    for (path, methods) in methods {
        // Templates of the same shape (`/p/{id}`, `/p/{name}`) conflict here: the first
        // stands for both.
        let _ = allowed.insert(path, methods);
    }
    let dispatch = Arc::new(Dispatch {
        routes: table,
        allowed,
    });
    Ok(boxed(tower::service_fn(move |request: Request<Body>| {
        dispatch.call(request)
    })))
}

/// A deployment's routes and, by template, the methods they serve.
struct Dispatch {
    routes: RouteTable<Handler>,
    allowed: RouteTable<Vec<Method>>,
}

impl Dispatch {
    fn call(
        &self,
        request: Request<Body>,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<Body>, Infallible>> + Send>,
    > {
        let (method, path) = (request.method(), request.uri().path());
        if let Some(route) = self.routes.at(method, path) {
            return Box::pin(route.value().clone().oneshot(request));
        }
        let response = match self.allowed.at(method, path) {
            // Every method of an any-method route is served, so these are method routes.
            Some(template) if !template.value().is_empty() => method_not_allowed(template.value()),
            _ => crate::Rejection::not_found()
                .with_detail("no route matches the request")
                .into_response_with(Body::from),
        };
        Box::pin(ready(Ok(response)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variables(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn stage_variables_are_substituted_and_unknown_ones_named() {
        let vars = variables(&[("orders", "v2"), ("host", "orders.internal")]);
        assert_eq!(
            substitute("orders-${stageVariables.orders}", &vars).unwrap(),
            "orders-v2"
        );
        assert_eq!(
            substitute(
                "http://${stageVariables.host}:8080/${stageVariables.orders}",
                &vars
            )
            .unwrap(),
            "http://orders.internal:8080/v2"
        );
        assert_eq!(substitute("plain", &vars).unwrap(), "plain");
        let error = substitute("x-${stageVariables.missing}", &vars).unwrap_err();
        assert_eq!(error, "stage variable \"missing\" is not defined");
        let error = substitute("x-${stageVariables.orders", &vars).unwrap_err();
        assert!(error.starts_with("unclosed"), "{error}");
    }

    #[test]
    fn route_rule_names_are_valid_rule_names_and_do_not_collide() {
        let mut taken = BTreeSet::new();
        let name = rule_name("GET /products/{id}/details", &taken);
        assert_eq!(name, "route:GET:products.id.details");
        taken.insert(name);
        assert_eq!(
            rule_name("* /files/{*rest}", &taken),
            "route:any:files.rest"
        );
        // `/products/id/details` makes the same name: it gets a suffix.
        assert_eq!(
            rule_name("GET /products/id/details", &taken),
            "route:GET:products.id.details.2"
        );
        let long = format!("GET /{}", "segment/".repeat(20));
        let name = rule_name(&long, &taken);
        assert!(name.len() <= 64, "{name}");
        let layer = crate::throttle::ThrottleLayer::builder()
            .rule(crate::throttle::Rule::new(
                name,
                crate::throttle::Rate::per_second(1),
                crate::key::Global,
            ))
            .build();
        assert!(layer.is_ok(), "{:?}", layer.err());
    }

    #[test]
    fn routes_are_written_one_way_and_parameters_are_whole_segments() {
        assert_eq!(normalized("GET\t/x").unwrap(), "GET /x");
        assert_eq!(normalized("  POST   /orders ").unwrap(), "POST /orders");
        assert_eq!(normalized("/any").unwrap(), "* /any");
        assert!(whole_segment_template("/products/{id}/details"));
        assert!(whole_segment_template("/files/{*rest}"));
        assert!(whole_segment_template("/plain/path"));
        assert!(!whole_segment_template("/files/{name}.json"));
        assert!(!whole_segment_template("/files/{*rest}/more"));
        assert!(!whole_segment_template("/{}"));
        assert!(!whole_segment_template("/{{literal}}"));
    }

    #[test]
    fn methods_map_to_axum_filters_and_any() {
        assert_eq!(method_filter("GET /a"), Ok(Some(MethodFilter::GET)));
        assert_eq!(method_filter("* /a"), Ok(None));
        assert_eq!(method_filter("/a"), Ok(None));
        assert_eq!(method_filter("BREW /a"), Err(()));
        assert_eq!(template("POST  /orders"), "/orders");
    }
}
