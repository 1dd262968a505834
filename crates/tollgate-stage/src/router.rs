use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use foldhash::HashMap;
use http::header::{ACCEPT, HOST};
use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue, Request, Response, Uri};
use tollgate_core::key::PeerIp;
use tollgate_core::{
    has_dot_segment, AccessRecord, BodyMode, Clock, InnerBody, KeyExtractor, Principal, Rejection,
    RequestHead, SharedClock, Stage, WrapBody,
};
use tower::{Service, ServiceExt};

use crate::future::{Extra, ResponseFuture};
use crate::spec::{
    AfterSunset, Canary, Deprecation, StageSpec, MAX_VARIABLES, MAX_VARIABLE_NAME,
    MAX_VARIABLE_VALUE,
};
use crate::sticky::{bucket, threshold};

/// The version headers read by default, in order.
pub const DEFAULT_VERSION_HEADERS: [&str; 2] = ["accept-version", "x-api-version"];

/// The conventional header that forces a side of a canary (`always` or `never`). No override
/// header is read unless [`StageRouterBuilder::override_header`] names one, this or another.
pub const DEFAULT_OVERRIDE_HEADER: &str = "x-canary";

/// The response header that names the deployment that served a request, by default.
pub const DEFAULT_DEPLOYMENT_HEADER: &str = "x-deployment";

/// Why a stage router could not be built, or a runtime change was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum StageError {
    /// The router has no stage.
    #[error("a stage router needs at least one stage")]
    NoStages,
    /// Two stages share a name.
    #[error("two stages are named {0:?}")]
    DuplicateStage(String),
    /// A stage or deployment name that cannot be sent in a header.
    #[error("invalid stage or deployment name {0:?}: expected 1 to 128 visible ASCII characters")]
    InvalidName(String),
    /// More variables than [`MAX_VARIABLES`].
    #[error("stage {stage:?} has {count} variables; at most {MAX_VARIABLES} are allowed")]
    TooManyVariables {
        /// The stage.
        stage: String,
        /// How many it has.
        count: usize,
    },
    /// A variable name that is empty, longer than [`MAX_VARIABLE_NAME`], or not made of
    /// `A-Z a-z 0-9 _`.
    #[error(
        "stage {stage:?}: invalid variable name {name:?}: expected 1 to {MAX_VARIABLE_NAME} characters of A-Z, a-z, 0-9 or _"
    )]
    VariableName {
        /// The stage.
        stage: String,
        /// The name.
        name: String,
    },
    /// A variable value longer than [`MAX_VARIABLE_VALUE`].
    #[error(
        "stage {stage:?}: variable {name:?} is {len} bytes long; at most {MAX_VARIABLE_VALUE} are allowed"
    )]
    VariableValue {
        /// The stage.
        stage: String,
        /// The variable.
        name: String,
        /// Its length.
        len: usize,
    },
    /// A canary percent outside 0.0 to 100.0.
    #[error("stage {stage:?}: canary percent {percent} is not between 0 and 100")]
    InvalidPercent {
        /// The stage.
        stage: String,
        /// The percent given.
        percent: f64,
    },
    /// A base path that does not start with `/`, ends with `/`, or holds a query.
    #[error("stage {stage:?}: invalid base path {path:?}: expected /segment[/segment...]")]
    InvalidBasePath {
        /// The stage.
        stage: String,
        /// The path given.
        path: String,
    },
    /// Two stages (or one stage twice) claim the same base path, host or version (`v2` and
    /// `2` are one version), or a canary has its stable deployment's name.
    #[error("{what} {value:?} is claimed by stage {first:?} and again by stage {second:?}")]
    Conflict {
        /// `base path`, `host`, `version` or `deployment`.
        what: &'static str,
        /// The value.
        value: String,
        /// The stage that claimed it first.
        first: String,
        /// The stage that claimed it again.
        second: String,
    },
    /// A host with a port or a path, or an empty host or version.
    #[error("stage {stage:?}: invalid {what} {value:?}: {expected}")]
    InvalidRule {
        /// The stage.
        stage: String,
        /// `host` or `version`.
        what: &'static str,
        /// The value given.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A successor URI that cannot be sent in a `Link` header.
    #[error("stage {stage:?}: invalid successor URI {uri:?}")]
    InvalidSuccessor {
        /// The stage.
        stage: String,
        /// The URI given.
        uri: String,
    },
    /// A sunset date outside the years 1970 to 9999, which an HTTP-date cannot state.
    #[error("stage {stage:?}: the sunset date must be between 1970 and 9999")]
    InvalidDate {
        /// The stage.
        stage: String,
    },
    /// The default stage, or a stage a handle was asked to change, does not exist.
    #[error("no stage is named {0:?}")]
    UnknownStage(String),
    /// The stage has no canary to change.
    #[error("stage {0:?} has no canary")]
    NoCanary(String),
}

/// Routes each request to a stage, and within it to the stable or canary deployment; see the
/// [crate docs](crate).
///
/// Clones share the stages and their runtime state.
#[must_use]
pub struct StageRouter<S, M = WrapBody> {
    shared: Arc<Shared<S>>,
    mode: M,
}

impl<S, M: Clone> Clone for StageRouter<S, M> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            mode: self.mode.clone(),
        }
    }
}

impl<S, M> fmt::Debug for StageRouter<S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.shared.stages.iter().map(|s| &*s.name).collect();
        f.debug_struct("StageRouter")
            .field("stages", &names)
            .finish_non_exhaustive()
    }
}

struct Shared<S> {
    stages: Box<[Slot<S>]>,
    /// Base paths, longest first.
    prefixes: Box<[(Box<str>, usize, bool)]>,
    hosts: HashMap<Box<str>, usize>,
    version_headers: Box<[HeaderName]>,
    /// Versions in their canonical form (see [`canonical_version`]).
    versions: HashMap<Box<str>, usize>,
    vendor: Option<Box<str>>,
    default: Option<usize>,
    sticky: Box<dyn KeyExtractor>,
    override_header: Option<HeaderName>,
    override_scope: Option<String>,
    deployment_header: Option<HeaderName>,
    clock: SharedClock,
    /// Requests no stage serves (a no-op without them: with a default stage).
    refused_no_stage: metrics::Counter,
}

/// A stage as the router holds it: its deployments can change at run time.
struct Slot<S> {
    name: Arc<str>,
    deployments: ArcSwap<Deployments<S>>,
    deprecation: Option<Arc<Deprecation>>,
    /// Requests refused after the sunset (a no-op when the stage cannot refuse any).
    refused_sunset: metrics::Counter,
}

/// A stage's deployments at one moment. A change builds a new one; requests in flight keep
/// the one they started with.
struct Deployments<S> {
    stable: Side<S>,
    canary: Option<Side<S>>,
    threshold: u64,
}

/// One deployment: its service, the `Stage` its requests carry, and what reports it.
struct Side<S> {
    service: S,
    stage: Stage,
    header: HeaderValue,
    served: metrics::Counter,
}

impl<S: Clone> Clone for Side<S> {
    fn clone(&self) -> Self {
        Self {
            service: self.service.clone(),
            stage: self.stage.clone(),
            header: self.header.clone(),
            served: self.served.clone(),
        }
    }
}

impl<S> StageRouter<S> {
    /// Starts building a router.
    pub fn builder() -> StageRouterBuilder<S> {
        StageRouterBuilder {
            stages: Vec::new(),
            default: None,
            version_headers: DEFAULT_VERSION_HEADERS
                .iter()
                .map(|name| HeaderName::from_static(name))
                .collect(),
            vendor: None,
            sticky: Box::new(PeerIp),
            override_header: None,
            override_scope: None,
            deployment_header: Some(HeaderName::from_static(DEFAULT_DEPLOYMENT_HEADER)),
            clock: SharedClock::default(),
        }
    }
}

impl<S, M> StageRouter<S, M> {
    /// A handle to change canaries at run time.
    pub fn handle(&self) -> StageHandle<S> {
        StageHandle {
            shared: self.shared.clone(),
        }
    }

    /// Keeps the inner services' body type, building refusals in it: for bodies made from
    /// bytes, such as axum's `Body`.
    pub fn keep_inner_body(self) -> StageRouter<S, InnerBody> {
        StageRouter {
            shared: self.shared,
            mode: InnerBody,
        }
    }
}

/// Builds a [`StageRouter`].
#[must_use]
pub struct StageRouterBuilder<S> {
    stages: Vec<StageSpec<S>>,
    default: Option<String>,
    version_headers: Vec<HeaderName>,
    vendor: Option<String>,
    sticky: Box<dyn KeyExtractor>,
    override_header: Option<HeaderName>,
    override_scope: Option<String>,
    deployment_header: Option<HeaderName>,
    clock: SharedClock,
}

impl<S> fmt::Debug for StageRouterBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StageRouterBuilder")
            .field("stages", &self.stages.len())
            .field("default", &self.default)
            .finish_non_exhaustive()
    }
}

impl<S> StageRouterBuilder<S> {
    /// This builder with every stage's deployments (and canaries) served by `map(service)`:
    /// for wrapping each deployment in the same layers after the stages are described.
    pub fn map_services<T>(self, mut map: impl FnMut(S) -> T) -> StageRouterBuilder<T> {
        StageRouterBuilder {
            stages: self
                .stages
                .into_iter()
                .map(|stage| stage.map_service(&mut map))
                .collect(),
            default: self.default,
            version_headers: self.version_headers,
            vendor: self.vendor,
            sticky: self.sticky,
            override_header: self.override_header,
            override_scope: self.override_scope,
            deployment_header: self.deployment_header,
            clock: self.clock,
        }
    }
}

impl<S: Clone + Send + Sync + 'static> StageRouterBuilder<S> {
    /// Adds a stage.
    pub fn stage(mut self, stage: StageSpec<S>) -> Self {
        self.stages.push(stage);
        self
    }

    /// The stage that serves requests no rule selects; without one they get 404.
    pub fn default_stage(mut self, name: impl Into<String>) -> Self {
        self.default = Some(name.into());
        self
    }

    /// The headers whose value names a version, in order (default `Accept-Version`, then
    /// `X-Api-Version`).
    pub fn version_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.version_headers = names.into_iter().collect();
        self
    }

    /// Reads versions from vendor media types in `Accept`: `application/vnd.<vendor>.<version>+json`
    /// or `application/vnd.<vendor>+json; version=<version>`.
    pub fn media_type_vendor(mut self, vendor: impl Into<String>) -> Self {
        self.vendor = Some(vendor.into());
        self
    }

    /// What keeps a client on one side of a canary (default: the connection's peer IP).
    /// Requests it finds no key for go to the stable side.
    ///
    /// Keys that layers put in the request — [`Subject`](tollgate_core::key::Subject) (the
    /// authorizer's principal), [`ApiKeyId`](tollgate_core::key::ApiKeyId) (the usage plan's
    /// key) — are only there when that layer runs before the router, as a layer around it;
    /// otherwise no request has a key and every client stays on the stable side.
    pub fn sticky_by(mut self, extractor: impl KeyExtractor) -> Self {
        self.sticky = Box::new(extractor);
        self
    }

    /// The header that forces a side of a canary (`always` or `never`), or `None` to allow no
    /// override. The default is `None`: otherwise any client could put itself on a canary.
    /// [`DEFAULT_OVERRIDE_HEADER`] (`X-Canary`) is the conventional name; pair it with
    /// [`override_scope`](Self::override_scope) unless every client may choose its side.
    ///
    /// ```
    /// use http::HeaderName;
    /// use tollgate_stage::{StageRouter, DEFAULT_OVERRIDE_HEADER};
    ///
    /// let builder = StageRouter::<axum::Router>::builder()
    ///     .override_header(Some(HeaderName::from_static(DEFAULT_OVERRIDE_HEADER)))
    ///     .override_scope("canary:test");
    /// # let _ = builder;
    /// ```
    pub fn override_header(mut self, name: Option<HeaderName>) -> Self {
        self.override_header = name;
        self
    }

    /// Honours the override header only for principals with `scope`. The [`Principal`] is
    /// read from the request, so the authorizer (or usage plan) must run before the router,
    /// as a layer around it; without one no request has the scope and none may force a side.
    /// It has no effect unless [`override_header`](Self::override_header) names a header.
    pub fn override_scope(mut self, scope: impl Into<String>) -> Self {
        self.override_scope = Some(scope.into());
        self
    }

    /// The response header that names the deployment (default `X-Deployment`), or `None`.
    pub fn deployment_header(mut self, name: Option<HeaderName>) -> Self {
        self.deployment_header = name;
        self
    }

    /// The clock that decides deprecation and sunset (default: the system clock).
    pub fn clock(mut self, clock: impl Into<SharedClock>) -> Self {
        self.clock = clock.into();
        self
    }

    /// Checks every stage and builds the router.
    pub fn build(self) -> Result<StageRouter<S>, StageError> {
        if self.stages.is_empty() {
            return Err(StageError::NoStages);
        }
        let mut slots = Vec::with_capacity(self.stages.len());
        let mut prefixes = Vec::new();
        let mut hosts = HashMap::default();
        let mut versions = HashMap::default();
        let names: Vec<String> = self.stages.iter().map(|s| s.name.clone()).collect();
        let conflict =
            |what: &'static str, value: &str, first: usize, second: usize| StageError::Conflict {
                what,
                value: value.to_owned(),
                first: names[first].clone(),
                second: names[second].clone(),
            };
        for (index, spec) in self.stages.into_iter().enumerate() {
            if slots.iter().any(|s: &Slot<S>| *s.name == *spec.name) {
                return Err(StageError::DuplicateStage(spec.name));
            }
            let stage = &spec.name;
            for path in &spec.base_paths {
                let valid = path.starts_with('/')
                    && (path.len() == 1 || !path.ends_with('/'))
                    && !path.contains(['?', '#']);
                if !valid {
                    return Err(StageError::InvalidBasePath {
                        stage: stage.clone(),
                        path: path.clone(),
                    });
                }
                let taken = prefixes
                    .iter()
                    .find(|(p, _, _): &&(Box<str>, usize, bool)| **p == **path);
                if let Some((_, first, _)) = taken {
                    return Err(conflict("base path", path, *first, index));
                }
                prefixes.push((path.as_str().into(), index, spec.strip_prefix));
            }
            for host in &spec.hosts {
                let bracketed = host.starts_with('[') && host.ends_with(']') && !host.contains('/');
                if host.is_empty() || (host.contains([':', '/']) && !bracketed) {
                    return Err(StageError::InvalidRule {
                        stage: stage.clone(),
                        what: "host",
                        value: host.clone(),
                        expected: "a host name without port or path (requests match on any port)",
                    });
                }
                let key = host.to_ascii_lowercase().into_boxed_str();
                if let Some(first) = hosts.insert(key, index) {
                    return Err(conflict("host", host, first, index));
                }
            }
            for version in &spec.versions {
                if version.trim().is_empty() || version.trim() != version {
                    return Err(StageError::InvalidRule {
                        stage: stage.clone(),
                        what: "version",
                        value: version.clone(),
                        expected: "a non-empty version without surrounding spaces",
                    });
                }
                let key = canonical_version(version).into();
                if let Some(first) = versions.insert(key, index) {
                    return Err(conflict("version", version, first, index));
                }
            }
            slots.push(slot(spec)?);
        }
        // Longest first: the first prefix that matches is the longest.
        prefixes.sort_by_key(|(prefix, _, _)| std::cmp::Reverse(prefix.len()));
        let default = match self.default {
            None => None,
            Some(name) => Some(
                slots
                    .iter()
                    .position(|s| *s.name == *name)
                    .ok_or(StageError::UnknownStage(name))?,
            ),
        };
        let refused_no_stage = match default {
            Some(_) => metrics::Counter::noop(),
            None => metrics::counter!(
                "tollgate_stage_refused_total",
                "reason" => "no_stage",
                "stage" => ""
            ),
        };
        Ok(StageRouter {
            mode: WrapBody,
            shared: Arc::new(Shared {
                stages: slots.into_boxed_slice(),
                prefixes: prefixes.into_boxed_slice(),
                hosts,
                version_headers: self.version_headers.into_boxed_slice(),
                versions,
                vendor: self.vendor.map(|v| v.to_ascii_lowercase().into_boxed_str()),
                default,
                sticky: self.sticky,
                override_header: self.override_header,
                override_scope: self.override_scope,
                deployment_header: self.deployment_header,
                clock: self.clock,
                refused_no_stage,
            }),
        })
    }
}

/// Checks a stage's names, variables and canary, and makes its deployments.
fn slot<S>(spec: StageSpec<S>) -> Result<Slot<S>, StageError> {
    let name: Arc<str> = spec.name.as_str().into();
    check_variables(&spec.name, &spec.variables)?;
    let stable_deployment = spec.deployment.unwrap_or_else(|| spec.name.clone());
    let variables = spec.variables.iter().map(|(n, v)| (n.as_str(), v.as_str()));
    let stable = side(&name, &stable_deployment, spec.service, variables)?;
    let (canary, threshold) = match spec.canary {
        None => (None, 0),
        Some(canary) => {
            let Canary {
                service,
                deployment,
                percent,
                variables,
            } = canary;
            let plan = CanaryPlan {
                deployment: deployment.as_deref(),
                percent,
                variables: &variables,
            };
            let side = canary_side(&name, &stable, service, &plan)?;
            (Some(side), threshold(percent))
        }
    };
    let deprecation = deprecation(
        &spec.name,
        spec.deprecation,
        spec.sunset,
        spec.successor,
        spec.after_sunset,
    )?;
    let can_refuse = deprecation
        .as_ref()
        .is_some_and(|d| d.sunset.is_some() && d.after_sunset == AfterSunset::Refuse);
    let refused_sunset = if can_refuse {
        metrics::counter!(
            "tollgate_stage_refused_total",
            "reason" => "sunset",
            "stage" => spec.name.clone()
        )
    } else {
        metrics::Counter::noop()
    };
    Ok(Slot {
        name,
        deployments: ArcSwap::from_pointee(Deployments {
            stable,
            canary,
            threshold,
        }),
        deprecation,
        refused_sunset,
    })
}

/// A canary's settings, apart from its service.
struct CanaryPlan<'a> {
    deployment: Option<&'a str>,
    percent: f64,
    variables: &'a [(String, String)],
}

/// Checks a canary against its stage's stable deployment and makes its side, with the stable
/// deployment's variables under the canary's own. The same checks at build and at run time.
fn canary_side<S>(
    stage: &Arc<str>,
    stable: &Side<S>,
    service: S,
    plan: &CanaryPlan<'_>,
) -> Result<Side<S>, StageError> {
    if !(0.0..=100.0).contains(&plan.percent) {
        return Err(StageError::InvalidPercent {
            stage: stage.to_string(),
            percent: plan.percent,
        });
    }
    check_variables(stage, plan.variables)?;
    let deployment = match plan.deployment {
        Some(name) => name.to_owned(),
        None => format!("{stage}-canary"),
    };
    if deployment == stable.stage.deployment() {
        return Err(StageError::Conflict {
            what: "deployment",
            value: deployment,
            first: stage.to_string(),
            second: stage.to_string(),
        });
    }
    let own = plan.variables.iter().map(|(n, v)| (n.as_str(), v.as_str()));
    side(
        stage,
        &deployment,
        service,
        stable.stage.variables().chain(own),
    )
}

fn check_variables(stage: &str, variables: &[(String, String)]) -> Result<(), StageError> {
    if variables.len() > MAX_VARIABLES {
        return Err(StageError::TooManyVariables {
            stage: stage.to_owned(),
            count: variables.len(),
        });
    }
    for (name, value) in variables {
        let valid = (1..=MAX_VARIABLE_NAME).contains(&name.len())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(StageError::VariableName {
                stage: stage.to_owned(),
                name: name.clone(),
            });
        }
        if value.len() > MAX_VARIABLE_VALUE {
            return Err(StageError::VariableValue {
                stage: stage.to_owned(),
                name: name.clone(),
                len: value.len(),
            });
        }
    }
    Ok(())
}

/// 1 to 128 visible ASCII characters: a header value takes more (spaces, obs-text), but a
/// client reading `X-Deployment` as a string would not.
fn valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_graphic())
}

/// A deployment of `stage`, with `variables` (a later one replaces an earlier one's value).
fn side<'a, S>(
    stage: &Arc<str>,
    deployment: &str,
    service: S,
    variables: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Side<S>, StageError> {
    let header = HeaderValue::from_str(deployment)
        .ok()
        .filter(|_| valid_name(deployment))
        .ok_or_else(|| StageError::InvalidName(deployment.to_owned()))?;
    if !valid_name(stage) {
        return Err(StageError::InvalidName(stage.to_string()));
    }
    let mut merged: Vec<(&str, &str)> = Vec::new();
    for (name, value) in variables {
        match merged.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => merged.push((name, value)),
        }
    }
    if merged.len() > MAX_VARIABLES {
        return Err(StageError::TooManyVariables {
            stage: stage.to_string(),
            count: merged.len(),
        });
    }
    let mut ext = Stage::new(stage.clone()).with_deployment(deployment);
    for (name, value) in merged {
        ext = ext.with_variable(name, value);
    }
    let served = metrics::counter!(
        "tollgate_stage_requests_total",
        "stage" => stage.to_string(),
        "deployment" => deployment.to_owned()
    );
    Ok(Side {
        service,
        stage: ext,
        header,
        served,
    })
}

/// The headers a stage's responses carry for its deprecation, made once.
fn deprecation(
    stage: &str,
    deprecated: Option<SystemTime>,
    sunset: Option<SystemTime>,
    successor: Option<String>,
    after_sunset: AfterSunset,
) -> Result<Option<Arc<Deprecation>>, StageError> {
    let link = match &successor {
        None => None,
        Some(uri) => Some(
            HeaderValue::try_from(format!("<{uri}>; rel=\"successor-version\""))
                .ok()
                .filter(|_| !uri.contains(['<', '>']) && uri.parse::<Uri>().is_ok())
                .ok_or_else(|| StageError::InvalidSuccessor {
                    stage: stage.to_owned(),
                    uri: uri.clone(),
                })?,
        ),
    };
    let sunset = match sunset {
        None => None,
        // An HTTP-date spans the years 1970 to 9999.
        Some(at) if at < SystemTime::UNIX_EPOCH || at > last_http_date() => {
            return Err(StageError::InvalidDate {
                stage: stage.to_owned(),
            })
        }
        // RFC 8594: an HTTP-date.
        Some(at) => HeaderValue::try_from(httpdate::fmt_http_date(at))
            .ok()
            .map(|value| (at, value)),
    };
    let found = Deprecation {
        // RFC 9745: a Structured Field Date, `@` and (signed) seconds since the epoch.
        deprecation: deprecated.and_then(|at| {
            let seconds = match at.duration_since(SystemTime::UNIX_EPOCH) {
                Ok(after) => i128::from(after.as_secs()),
                Err(before) => -i128::from(before.duration().as_secs()),
            };
            HeaderValue::try_from(format!("@{seconds}")).ok()
        }),
        sunset,
        link,
        successor,
        after_sunset,
    };
    Ok((!found.is_empty()).then(|| Arc::new(found)))
}

/// The last instant an HTTP-date can name: 9999-12-31T23:59:59Z.
fn last_http_date() -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(253_402_300_799)
}

/// What the selection rules chose.
struct Chosen {
    stage: usize,
    /// The length of a base path to strip.
    strip: Option<usize>,
}

impl<S> Shared<S> {
    /// The stage of a request, by the rules in the documented order.
    fn select(&self, uri: &Uri, headers: &http::HeaderMap) -> Option<Chosen> {
        let path = uri.path();
        for (prefix, stage, strip) in self.prefixes.iter() {
            let under = path.starts_with(&**prefix)
                && (path.len() == prefix.len()
                    || prefix.len() == 1
                    || path.as_bytes()[prefix.len()] == b'/');
            if under {
                let strip = (*strip && prefix.len() > 1).then_some(prefix.len());
                return Some(Chosen {
                    stage: *stage,
                    strip,
                });
            }
        }
        if !self.hosts.is_empty() {
            let host = uri
                .host()
                .or_else(|| headers.get(HOST)?.to_str().ok().map(without_port));
            if let Some(host) = host {
                // `api.example.com.` is the same name, fully qualified.
                let host = host.strip_suffix('.').unwrap_or(host);
                let found = if host.bytes().any(|b| b.is_ascii_uppercase()) {
                    self.hosts.get(&*host.to_ascii_lowercase())
                } else {
                    self.hosts.get(host)
                };
                if let Some(&stage) = found {
                    return Some(Chosen { stage, strip: None });
                }
            }
        }
        if !self.versions.is_empty() {
            for name in self.version_headers.iter() {
                let version = headers.get(name).and_then(|v| v.to_str().ok());
                if let Some(stage) = version.and_then(|v| self.version(v.trim())) {
                    return Some(Chosen { stage, strip: None });
                }
            }
            if let Some(vendor) = &self.vendor {
                // The client's most preferred range that names a stage (RFC 9110 §12.4.2);
                // the first on a tie.
                let mut best: Option<(usize, f32)> = None;
                for accept in headers.get_all(ACCEPT) {
                    let Ok(accept) = accept.to_str() else {
                        continue;
                    };
                    for range in accept.split(',') {
                        let Some((version, q)) = media_type_choice(range, vendor) else {
                            continue;
                        };
                        if let Some(stage) = self.version(version) {
                            if best.is_none_or(|(_, best_q)| q > best_q) {
                                best = Some((stage, q));
                            }
                        }
                    }
                }
                if let Some((stage, _)) = best {
                    return Some(Chosen { stage, strip: None });
                }
            }
        }
        self.default.map(|stage| Chosen { stage, strip: None })
    }
}

impl<S> Shared<S> {
    /// The stage of a version: `v2` and `2` name the same one, whichever was configured.
    fn version(&self, version: &str) -> Option<usize> {
        self.versions.get(canonical_version(version)).copied()
    }
}

/// The form versions are stored and looked up in, without allocating: a leading `v` or `V`
/// before a digit is dropped, so `v2`, `V2` and `2` are one version (`vnext` stays `vnext`).
fn canonical_version(version: &str) -> &str {
    match version.as_bytes() {
        [b'v' | b'V', digit, ..] if digit.is_ascii_digit() => &version[1..],
        _ => version,
    }
}

/// A `Host` header's host: `api.example.com:8080` → `api.example.com`, `[::1]:80` → `[::1]`.
fn without_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') => {
            name
        }
        _ => host,
    }
}

/// The version a vendor media range names and the range's weight (`q`, 1 by default):
/// `application/vnd.acme.v2+json` names `v2`, `application/vnd.acme+json; version=2` names `2`,
/// and a range with `q=0` refuses its type, so it names nothing.
fn media_type_choice<'a>(range: &'a str, vendor: &str) -> Option<(&'a str, f32)> {
    let mut parts = range.split(';');
    let media = parts.next()?.trim();
    let q = range
        .split(';')
        .skip(1)
        .find_map(|param| {
            let (name, value) = param.split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("q")
                .then(|| value.trim().parse::<f32>().unwrap_or(0.0))
        })
        .unwrap_or(1.0);
    if q.is_nan() || q <= 0.0 {
        return None;
    }
    media_type_named(media, parts, vendor).map(|version| (version, q))
}

fn media_type_named<'a>(
    media: &'a str,
    mut parts: std::str::Split<'a, char>,
    vendor: &str,
) -> Option<&'a str> {
    let (kind, subtype) = media.split_once('/')?;
    if !kind.eq_ignore_ascii_case("application") {
        return None;
    }
    let subtype = subtype.split_once('+').map_or(subtype, |(s, _)| s);
    let tree = subtype
        .get(..4)
        .filter(|p| p.eq_ignore_ascii_case("vnd."))
        .map(|p| &subtype[p.len()..])?;
    let rest = tree
        .get(..vendor.len())
        .filter(|v| v.eq_ignore_ascii_case(vendor))?;
    let after = &tree[rest.len()..];
    if let Some(version) = after.strip_prefix('.') {
        return (!version.is_empty()).then_some(version);
    }
    if !after.is_empty() {
        return None;
    }
    parts.find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("version")
            .then(|| value.trim().trim_matches('"'))
            .filter(|v| !v.is_empty())
    })
}

/// The request's URI with its first `len` path bytes removed (`/v1/orders` → `/orders`).
fn stripped(uri: &Uri, len: usize) -> Option<Uri> {
    let rest = &uri.path()[len..];
    let rest = if rest.is_empty() { "/" } else { rest };
    let query = uri.query();
    let mut path_and_query = String::with_capacity(rest.len() + query.map_or(0, |q| q.len() + 1));
    path_and_query.push_str(rest);
    if let Some(query) = query {
        path_and_query.push('?');
        path_and_query.push_str(query);
    }
    let path_and_query = PathAndQuery::try_from(path_and_query).ok()?;
    if uri.scheme().is_none() && uri.authority().is_none() {
        // Origin form, as a server receives requests: the path and query are the whole URI.
        return Some(Uri::from(path_and_query));
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query);
    Uri::from_parts(parts).ok()
}

impl<S, M, ReqBody, ResBody> Service<Request<ReqBody>> for StageRouter<S, M>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + Sync + 'static,
    M: BodyMode<ResBody>,
{
    type Response = Response<M::Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S, Request<ReqBody>, M, ResBody>;

    /// Always ready: the stage's service is readied in the response future, once the request
    /// has chosen it.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let shared = &*self.shared;
        if has_dot_segment(request.uri().path()) {
            // `/v1/../v2/x` would be routed as v1 and resolved as v2 by whatever sits behind
            // the stage: refused rather than guessed.
            return ResponseFuture::rejected(M::refuse(Rejection::bad_request(
                "the path must not hold `.` or `..` segments",
            )));
        }
        let Some(chosen) = shared.select(request.uri(), request.headers()) else {
            shared.refused_no_stage.increment(1);
            tracing::debug!(
                path = request.uri().path(),
                "no stage serves the request: 404"
            );
            return ResponseFuture::rejected(M::refuse(
                Rejection::not_found().with_detail("no stage serves this request"),
            ));
        };
        let slot = &shared.stages[chosen.stage];
        if let Some(deprecation) = &slot.deprecation {
            if let Some((sunset, _)) = &deprecation.sunset {
                if deprecation.after_sunset == AfterSunset::Refuse
                    && shared.clock.system_time() >= *sunset
                {
                    slot.refused_sunset.increment(1);
                    tracing::debug!(stage = %slot.name, "the stage is past its sunset: 410");
                    return ResponseFuture::rejected(M::refuse(gone(&slot.name, deprecation)));
                }
            }
        }
        let deployments = slot.deployments.load();
        let canary = match &deployments.canary {
            None => false,
            Some(_) => match self.forced(&request) {
                Some(side) => side,
                None => shared
                    .sticky
                    .extract(&RequestHead::of(&request))
                    .is_ok_and(|key| bucket(&slot.name, &key) < deployments.threshold),
            },
        };
        let side = match (&deployments.canary, canary) {
            (Some(canary), true) => canary,
            _ => &deployments.stable,
        };
        side.served.increment(1);
        tracing::trace!(stage = %slot.name, deployment = ?side.header, "stage chosen");
        if let Some(len) = chosen.strip {
            if let Some(uri) = stripped(request.uri(), len) {
                let original = std::mem::replace(request.uri_mut(), uri);
                #[cfg(feature = "axum")]
                if request
                    .extensions()
                    .get::<axum::extract::OriginalUri>()
                    .is_none()
                {
                    request
                        .extensions_mut()
                        .insert(axum::extract::OriginalUri(original));
                }
                #[cfg(not(feature = "axum"))]
                drop(original);
            }
        }
        AccessRecord::update(request.extensions(), |fields| {
            fields.stage = Some(side.stage.clone());
        });
        request.extensions_mut().insert(side.stage.clone());
        let extra = Extra {
            deployment: shared
                .deployment_header
                .clone()
                .map(|name| (name, side.header.clone())),
            deprecation: slot.deprecation.clone(),
        };
        // Most services are ready at once (axum's `Router` always is): calling now spares the
        // future the request and the service. One that is not is readied in the future, where
        // polling it again registers the task's waker.
        let mut service = side.service.clone();
        match service.poll_ready(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => ResponseFuture::called(service.call(request), extra),
            Poll::Ready(Err(error)) => ResponseFuture::failed(error),
            Poll::Pending => ResponseFuture::readying(service.oneshot(request), extra),
        }
    }
}

impl<S, M> StageRouter<S, M> {
    /// The side the override header forces, if it is present and allowed.
    fn forced<B>(&self, request: &Request<B>) -> Option<bool> {
        let name = self.shared.override_header.as_ref()?;
        let value = request.headers().get(name)?.as_bytes();
        let side = if value.eq_ignore_ascii_case(b"always") {
            true
        } else if value.eq_ignore_ascii_case(b"never") {
            false
        } else {
            return None;
        };
        if let Some(scope) = &self.shared.override_scope {
            let allowed = request
                .extensions()
                .get::<Principal>()
                .is_some_and(|p| p.has_scope(scope));
            if !allowed {
                return None;
            }
        }
        Some(side)
    }
}

/// The 410 of a stage after its sunset.
fn gone(stage: &str, deprecation: &Deprecation) -> Rejection {
    let detail = match &deprecation.successor {
        Some(successor) => format!("API version {stage} was retired; use {successor}"),
        None => format!("API version {stage} was retired"),
    };
    let mut rejection = Rejection::gone().with_detail(detail);
    if let Some(link) = &deprecation.link {
        rejection = rejection.with_header(http::header::LINK, link.clone());
    }
    if let Some((_, sunset)) = &deprecation.sunset {
        rejection = rejection.with_header(HeaderName::from_static("sunset"), sunset.clone());
    }
    rejection
}

/// Changes canaries at run time: the next request sees the change; requests in flight finish
/// on the deployment they started with.
pub struct StageHandle<S> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for StageHandle<S> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<S> fmt::Debug for StageHandle<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StageHandle").finish_non_exhaustive()
    }
}

impl<S: Clone> StageHandle<S> {
    fn slot(&self, stage: &str) -> Result<&Slot<S>, StageError> {
        self.shared
            .stages
            .iter()
            .find(|s| &*s.name == stage)
            .ok_or_else(|| StageError::UnknownStage(stage.to_owned()))
    }

    /// Sends `percent` of the stage's clients to its canary. Raising it only moves clients
    /// from stable to canary; lowering it only moves them back.
    pub fn set_percent(&self, stage: &str, percent: f64) -> Result<(), StageError> {
        if !(0.0..=100.0).contains(&percent) {
            return Err(StageError::InvalidPercent {
                stage: stage.to_owned(),
                percent,
            });
        }
        self.change(stage, |current| match &current.canary {
            Some(canary) => Ok(Deployments {
                stable: current.stable.clone(),
                canary: Some(canary.clone()),
                threshold: threshold(percent),
            }),
            None => Err(StageError::NoCanary(stage.to_owned())),
        })?;
        tracing::info!(stage, percent, "canary percent set");
        Ok(())
    }

    /// The stage's canary percent now (0 without a canary).
    pub fn percent(&self, stage: &str) -> Result<f64, StageError> {
        let deployments = self.slot(stage)?.deployments.load();
        Ok(match deployments.canary {
            Some(_) => deployments.threshold as f64 / (crate::sticky::BUCKETS as f64 / 100.0),
            None => 0.0,
        })
    }

    /// Starts a canary on the stage, replacing the one it has, if any: the next rollout after a
    /// [`promote`](Self::promote) or a [`rollback`](Self::rollback), without a new router.
    ///
    /// The canary is checked as at build time (its percent, its variables, its deployment's
    /// name), and its variables replace or add to those of the stage's stable deployment now.
    /// Its deployment must not have the stable deployment's name: after a promotion the stable
    /// deployment keeps the canary's (by default `<stage>-canary`), so the next canary needs a
    /// name of its own, such as a release.
    ///
    /// ```
    /// use axum::{routing::get, Router};
    /// use tollgate_stage::{Canary, StageRouter, StageSpec};
    ///
    /// # fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let release = |body: &'static str| -> Router {
    ///     Router::new().route("/orders", get(move || async move { body }))
    /// };
    /// let stages = StageRouter::builder()
    ///     .stage(StageSpec::new("v2", release("2.0")).base_path("/v2"))
    ///     .build()?;
    /// let handle = stages.handle();
    ///
    /// handle.start_canary("v2", Canary::new(release("2.1")).deployment("v2-2.1").percent(5.0))?;
    /// handle.promote("v2")?;
    /// handle.start_canary("v2", Canary::new(release("2.2")).deployment("v2-2.2").percent(5.0))?;
    /// assert_eq!(
    ///     handle.deployments("v2")?,
    ///     ("v2-2.1".to_owned(), Some("v2-2.2".to_owned()))
    /// );
    /// # Ok(()) }
    /// # run().unwrap();
    /// ```
    pub fn start_canary(&self, stage: &str, canary: Canary<S>) -> Result<(), StageError> {
        let Canary {
            service,
            deployment,
            percent,
            variables,
        } = canary;
        let plan = CanaryPlan {
            deployment: deployment.as_deref(),
            percent,
            variables: &variables,
        };
        let slot = self.slot(stage)?;
        let mut started = None;
        self.change(stage, |current| {
            // Checked against the stable deployment it will run beside, which a concurrent
            // promotion may have just replaced.
            let canary = canary_side(&slot.name, &current.stable, service.clone(), &plan)?;
            started = Some(canary.stage.deployment().to_owned());
            Ok(Deployments {
                stable: current.stable.clone(),
                canary: Some(canary),
                threshold: threshold(percent),
            })
        })?;
        let deployment = started.unwrap_or_default();
        tracing::info!(stage, deployment, percent, "canary started");
        Ok(())
    }

    /// Makes the canary the stage's stable deployment, for every client.
    pub fn promote(&self, stage: &str) -> Result<(), StageError> {
        self.change(stage, |current| match &current.canary {
            Some(canary) => Ok(Deployments {
                stable: canary.clone(),
                canary: None,
                threshold: 0,
            }),
            None => Err(StageError::NoCanary(stage.to_owned())),
        })?;
        tracing::info!(stage, "canary promoted");
        Ok(())
    }

    /// Drops the canary: every client goes back to the stable deployment.
    pub fn rollback(&self, stage: &str) -> Result<(), StageError> {
        self.change(stage, |current| match &current.canary {
            Some(_) => Ok(Deployments {
                stable: current.stable.clone(),
                canary: None,
                threshold: 0,
            }),
            None => Err(StageError::NoCanary(stage.to_owned())),
        })?;
        tracing::info!(stage, "canary rolled back");
        Ok(())
    }

    /// Replaces the stage's deployments with `next` of the current ones, or changes nothing if
    /// it refuses.
    fn change(
        &self,
        stage: &str,
        mut next: impl FnMut(&Deployments<S>) -> Result<Deployments<S>, StageError>,
    ) -> Result<(), StageError> {
        let slot = self.slot(stage)?;
        let mut outcome = Ok(());
        slot.deployments.rcu(|current| match next(current) {
            Ok(deployments) => {
                outcome = Ok(());
                Arc::new(deployments)
            }
            Err(error) => {
                outcome = Err(error);
                Arc::clone(current)
            }
        });
        outcome
    }

    /// The deployment names of the stage now: the stable one, and the canary's if any.
    pub fn deployments(&self, stage: &str) -> Result<(String, Option<String>), StageError> {
        let deployments = self.slot(stage)?.deployments.load();
        let name = |side: &Side<S>| side.stage.deployment().to_owned();
        Ok((
            name(&deployments.stable),
            deployments.canary.as_ref().map(name),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_media_types_name_versions_both_ways() {
        let v = |range| media_type_choice(range, "acme").map(|(version, _)| version);
        assert_eq!(v("application/vnd.acme.v2+json"), Some("v2"));
        assert_eq!(v("application/vnd.acme+json; version=2"), Some("2"));
        assert_eq!(v("Application/VND.ACME.v3+json;q=0.9"), Some("v3"));
        assert_eq!(v("application/vnd.acmecorp.v2+json"), None);
        assert_eq!(v("application/json"), None);
        assert_eq!(v("application/vnd.acme+json"), None);
        assert_eq!(v("text/vnd.acme.v2"), None);
        assert_eq!(v("application/vnd.acme.v2+json;q=0"), None);
    }

    #[test]
    fn the_most_preferred_media_range_wins() {
        assert_eq!(
            media_type_choice("application/vnd.acme.v1+json;q=0.1", "acme"),
            Some(("v1", 0.1))
        );
        assert_eq!(
            media_type_choice("application/vnd.acme.v2+json", "acme"),
            Some(("v2", 1.0))
        );
    }

    #[test]
    fn stripping_keeps_the_query_and_leaves_at_least_a_slash() {
        let uri: Uri = "/v1/orders?page=2".parse().unwrap();
        assert_eq!(stripped(&uri, 3).unwrap(), "/orders?page=2");
        let uri: Uri = "/v1".parse().unwrap();
        assert_eq!(stripped(&uri, 3).unwrap(), "/");
        let uri: Uri = "http://api.example.com/v1/x".parse().unwrap();
        assert_eq!(stripped(&uri, 3).unwrap(), "http://api.example.com/x");
        let uri: Uri = "http://api.example.com/v1?page=2".parse().unwrap();
        assert_eq!(stripped(&uri, 3).unwrap(), "http://api.example.com/?page=2");
    }

    #[test]
    fn a_leading_v_before_a_digit_is_not_part_of_a_version() {
        assert_eq!(canonical_version("v2"), "2");
        assert_eq!(canonical_version("V2.1"), "2.1");
        assert_eq!(canonical_version("2"), "2");
        assert_eq!(canonical_version("vnext"), "vnext");
        assert_eq!(canonical_version("v"), "v");
        assert_eq!(canonical_version("vv2"), "vv2");
        assert_eq!(canonical_version(""), "");
    }
}
