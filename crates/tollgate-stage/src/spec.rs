use std::time::SystemTime;

use http::HeaderValue;

/// The most variables a stage holds (Amazon API Gateway's bound).
pub const MAX_VARIABLES: usize = 100;

/// The longest variable name.
pub const MAX_VARIABLE_NAME: usize = 64;

/// The longest variable value.
pub const MAX_VARIABLE_VALUE: usize = 512;

/// One stage: the service that serves it, the rules that select it, its variables, an optional
/// canary, and its deprecation.
///
/// ```
/// use axum::{routing::get, Router};
/// use tollgate_stage::{Canary, StageSpec};
///
/// let v2: Router = Router::new().route("/orders", get(|| async { "v2" }));
/// let v2_next: Router = Router::new().route("/orders", get(|| async { "v2 next" }));
/// let v2 = StageSpec::new("v2", v2)
///     .base_path("/v2")
///     .host("v2.api.example.com")
///     .version("2")
///     .variable("orders_table", "orders_v2")
///     .canary(Canary::new(v2_next).percent(10.0).variable("orders_table", "orders_v2b"));
/// # let _ = v2;
/// ```
#[derive(Debug)]
#[must_use]
pub struct StageSpec<S> {
    pub(crate) name: String,
    pub(crate) service: S,
    pub(crate) deployment: Option<String>,
    pub(crate) base_paths: Vec<String>,
    pub(crate) strip_prefix: bool,
    pub(crate) hosts: Vec<String>,
    pub(crate) versions: Vec<String>,
    pub(crate) variables: Vec<(String, String)>,
    pub(crate) canary: Option<Canary<S>>,
    pub(crate) deprecation: Option<SystemTime>,
    pub(crate) sunset: Option<SystemTime>,
    pub(crate) successor: Option<String>,
    pub(crate) after_sunset: AfterSunset,
}

/// What a stage does after its sunset date.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AfterSunset {
    /// Answer 410 Gone with a problem document pointing to the successor. The default.
    #[default]
    Refuse,
    /// Keep serving, still with the `Sunset` header.
    KeepServing,
}

impl<S> StageSpec<S> {
    /// This stage with its deployment, and its canary's, served by `map(service)` instead:
    /// for wrapping every deployment in the same layers (as `tollgate::Gateway` does).
    pub fn map_service<T>(self, mut map: impl FnMut(S) -> T) -> StageSpec<T> {
        StageSpec {
            name: self.name,
            service: map(self.service),
            deployment: self.deployment,
            base_paths: self.base_paths,
            strip_prefix: self.strip_prefix,
            hosts: self.hosts,
            versions: self.versions,
            variables: self.variables,
            canary: self.canary.map(|canary| canary.map_service(&mut map)),
            deprecation: self.deprecation,
            sunset: self.sunset,
            successor: self.successor,
            after_sunset: self.after_sunset,
        }
    }

    /// A stage named `name` served by `service`.
    pub fn new(name: impl Into<String>, service: S) -> Self {
        Self {
            name: name.into(),
            service,
            deployment: None,
            base_paths: Vec::new(),
            strip_prefix: true,
            hosts: Vec::new(),
            versions: Vec::new(),
            variables: Vec::new(),
            canary: None,
            deprecation: None,
            sunset: None,
            successor: None,
            after_sunset: AfterSunset::Refuse,
        }
    }

    /// The name of the deployment the stage serves (default: the stage's name), as
    /// `X-Deployment` and [`Stage::deployment`](tollgate_core::Stage::deployment) report it.
    pub fn deployment(mut self, name: impl Into<String>) -> Self {
        self.deployment = Some(name.into());
        self
    }

    /// Selects the stage for paths under `prefix` (`/v1`, `/orders/v2`): the path itself or
    /// anything below it, by whole segments. The longest matching prefix of all stages wins.
    pub fn base_path(mut self, prefix: impl Into<String>) -> Self {
        self.base_paths.push(prefix.into());
        self
    }

    /// Whether the matched base path is removed before the stage's service sees the request
    /// (default: yes, as axum's `nest` does).
    pub fn strip_prefix(mut self, strip: bool) -> Self {
        self.strip_prefix = strip;
        self
    }

    /// Selects the stage for requests to `host` (`v2.api.example.com`; any port).
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.hosts.push(host.into());
        self
    }

    /// Selects the stage when a version header (`Accept-Version`, `X-Api-Version`, or the ones
    /// the router names) or the `Accept` media type carries `version`.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.versions.push(version.into());
        self
    }

    /// A stage variable, which the stage's service reads from the request's
    /// [`Stage`](tollgate_core::Stage).
    pub fn variable(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.variables.push((name.into(), value.into()));
        self
    }

    /// A canary deployment beside the stable one.
    pub fn canary(mut self, canary: Canary<S>) -> Self {
        self.canary = Some(canary);
        self
    }

    /// When the stage is (or was) deprecated: responses carry `Deprecation` (RFC 9745).
    pub fn deprecated_at(mut self, at: SystemTime) -> Self {
        self.deprecation = Some(at);
        self
    }

    /// When the stage is retired: responses carry `Sunset` (RFC 8594), and after it the stage
    /// answers 410 Gone unless told to [keep serving](AfterSunset::KeepServing).
    pub fn sunset_at(mut self, at: SystemTime) -> Self {
        self.sunset = Some(at);
        self
    }

    /// The successor version's URI: responses carry `Link: <uri>; rel="successor-version"`,
    /// and the 410 after the sunset points to it.
    pub fn successor(mut self, uri: impl Into<String>) -> Self {
        self.successor = Some(uri.into());
        self
    }

    /// What the stage does after its sunset (default [`AfterSunset::Refuse`]).
    pub fn after_sunset(mut self, after: AfterSunset) -> Self {
        self.after_sunset = after;
        self
    }
}

/// A canary: another deployment of a stage that a sticky share of clients is sent to.
#[derive(Debug)]
#[must_use]
pub struct Canary<S> {
    pub(crate) service: S,
    pub(crate) deployment: Option<String>,
    pub(crate) percent: f64,
    pub(crate) variables: Vec<(String, String)>,
}

impl<S> Canary<S> {
    /// This canary served by `map(service)` instead, with everything else as it is.
    pub fn map_service<T>(self, map: impl FnOnce(S) -> T) -> Canary<T> {
        Canary {
            service: map(self.service),
            deployment: self.deployment,
            percent: self.percent,
            variables: self.variables,
        }
    }

    /// A canary served by `service`, at 0 % until told otherwise.
    pub fn new(service: S) -> Self {
        Self {
            service,
            deployment: None,
            percent: 0.0,
            variables: Vec::new(),
        }
    }

    /// The canary deployment's name (default: `<stage>-canary`).
    pub fn deployment(mut self, name: impl Into<String>) -> Self {
        self.deployment = Some(name.into());
        self
    }

    /// The share of clients sent to the canary, from 0.0 to 100.0 (fractions allowed, down to
    /// 0.0001 %).
    pub fn percent(mut self, percent: f64) -> Self {
        self.percent = percent;
        self
    }

    /// A variable that replaces (or adds to) the stage's on the canary.
    pub fn variable(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.variables.push((name.into(), value.into()));
        self
    }
}

/// The headers a deprecated or retiring stage's responses carry, made once.
#[derive(Clone, Debug, Default)]
pub(crate) struct Deprecation {
    pub(crate) deprecation: Option<HeaderValue>,
    pub(crate) sunset: Option<(SystemTime, HeaderValue)>,
    pub(crate) link: Option<HeaderValue>,
    pub(crate) successor: Option<String>,
    pub(crate) after_sunset: AfterSunset,
}

impl Deprecation {
    pub(crate) fn is_empty(&self) -> bool {
        self.deprecation.is_none() && self.sunset.is_none() && self.link.is_none()
    }
}
