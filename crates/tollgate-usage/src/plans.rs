//! [`UsagePlans`]: the plans, the key store and the counters, shared by the layer and the
//! admin calls.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use hashbrown::HashMap;
use http::HeaderValue;
use tollgate_core::{Clock, Rejection, RouteTable, RouteTableError, SharedClock};
use tollgate_throttle::{
    index_rules, AllowedFields, MemoryStore, Rule, StoreFailure, ThrottleError, ThrottleStore,
};

use crate::decide::policy_values;
use crate::key::{ApiKey, KeyStore, MemoryKeyStore, StoreError};
use crate::quota::{MemoryQuotaStore, QuotaStore, DEFAULT_RETENTION_DAYS};
use crate::secret::{generate_id, is_valid_id, Secret};
use crate::{Day, KeySource, PlanThrottle, QuotaPeriod, UsageLayer, UsagePlan};

/// Keys per plan throttle rule whose allowance the in-memory throttle remembers by default.
pub const DEFAULT_THROTTLE_CAPACITY: usize = 100_000;

/// The longest range a usage report covers.
pub const MAX_REPORT_DAYS: u32 = 366;

/// Usage plans and API keys: the state behind a [`UsageLayer`] and the key lifecycle.
///
/// Cloning shares everything, so the layer, the admin router and the application's own code
/// see the same keys and counters.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use tollgate_throttle::Rate;
/// use tollgate_usage::{NewKey, QuotaPeriod, UsagePlan, UsagePlans};
///
/// let plans = UsagePlans::builder()
///     .plan(UsagePlan::new("basic").throttle(Rate::per_second(2), 2).quota(20, QuotaPeriod::Day))
///     .build()?;
/// let (key, secret) = plans.create_key(NewKey::new("basic").name("Acme")).await?;
/// assert!(secret.expose().starts_with("tg_"));
/// assert_eq!(plans.get_key(key.id()).await?.plan(), "basic");
/// let app = axum::Router::<()>::new().layer(plans.layer());
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub struct UsagePlans<K = MemoryKeyStore, Q = MemoryQuotaStore, T = MemoryStore> {
    pub(crate) shared: Arc<Shared<K, Q, T>>,
}

impl<K, Q, T> Clone for UsagePlans<K, Q, T> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<K, Q, T> fmt::Debug for UsagePlans<K, Q, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut plans: Vec<_> = self.shared.plans.keys().collect();
        plans.sort();
        f.debug_struct("UsagePlans")
            .field("plans", &plans)
            .field("sources", &self.shared.sources)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Shared<K, Q, T> {
    pub(crate) plans: HashMap<Arc<str>, PlanState, foldhash::fast::RandomState>,
    pub(crate) rules: Box<[Rule]>,
    /// `RateLimit-Policy` values by rule index, made with the rule's plan's quota.
    pub(crate) policies: Box<[[Option<HeaderValue>; 4]]>,
    pub(crate) keys: K,
    pub(crate) quotas: Q,
    pub(crate) throttle: T,
    pub(crate) sources: Box<[KeySource]>,
    pub(crate) clock: SharedClock,
    pub(crate) on_store_error: StoreFailure,
    pub(crate) allowed_fields: AllowedFields,
    pub(crate) refusals: Refusals,
    pub(crate) counters: OnceLock<Counters>,
}

/// A plan with what the layer needs of it made ready.
#[derive(Debug)]
pub(crate) struct PlanState {
    pub(crate) plan: UsagePlan,
    /// The plan throttle's rule, by index into `Shared::rules`.
    pub(crate) rule: Option<usize>,
    /// Route overrides: rule indices by route.
    /// Route overrides' rules; `None` for a route on the plan's own throttle.
    pub(crate) routes: RouteTable<Option<usize>>,
    pub(crate) throttled: Rejection,
    pub(crate) quota_exceeded: Rejection,
    /// `RateLimit-Policy` when no throttle rule applies: the quota's alone.
    pub(crate) quota_policy: [Option<HeaderValue>; 4],
}

/// The refusals that do not depend on the plan, rendered once.
#[derive(Debug)]
pub(crate) struct Refusals {
    pub(crate) missing: Rejection,
    pub(crate) invalid: Rejection,
    pub(crate) disabled: Rejection,
    pub(crate) expired: Rejection,
    pub(crate) stage: Rejection,
    pub(crate) no_plan: Rejection,
}

#[derive(Debug)]
pub(crate) struct Counters {
    pub(crate) allowed: metrics::Counter,
    pub(crate) missing: metrics::Counter,
    pub(crate) invalid: metrics::Counter,
    pub(crate) forbidden: metrics::Counter,
    pub(crate) throttled: metrics::Counter,
    pub(crate) quota_exceeded: metrics::Counter,
    pub(crate) store_error: metrics::Counter,
}

impl<K, Q, T> Shared<K, Q, T> {
    pub(crate) fn counters(&self) -> &Counters {
        self.counters.get_or_init(|| {
            let counter =
                |outcome: &'static str| metrics::counter!("tollgate_usage_requests_total", "outcome" => outcome);
            Counters {
                allowed: counter("allowed"),
                missing: counter("missing_key"),
                invalid: counter("invalid_key"),
                forbidden: counter("forbidden"),
                throttled: counter("throttled"),
                quota_exceeded: counter("quota_exceeded"),
                store_error: counter("store_error"),
            }
        })
    }
}

/// A usage plan setup that cannot work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UsageError {
    /// No plan was given.
    #[error("usage plans need at least one plan")]
    NoPlans,
    /// Two plans share an id.
    #[error("two plans have the id {0:?}; plan ids must be unique")]
    DuplicatePlan(String),
    /// A plan id that cannot name a plan.
    #[error(
        "invalid plan id {0:?}: expected 1 to 60 characters of A-Z, a-z, 0-9, '-', '_' or '.'"
    )]
    InvalidPlanId(String),
    /// A burst of zero.
    #[error("plan {0:?} has a throttle burst of 0; the burst must be at least 1")]
    ZeroBurst(String),
    /// A quota of zero.
    #[error("plan {0:?} has a quota of 0 requests; leave the quota out for none")]
    ZeroQuota(String),
    /// A route override that cannot be read.
    #[error("plan {plan:?}: {source}")]
    Route {
        /// The plan.
        plan: String,
        /// What is wrong with the route.
        source: RouteTableError,
    },
    /// A throttle the throttle machinery refuses.
    #[error(transparent)]
    Throttle(#[from] ThrottleError),
    /// No key source.
    #[error("usage plans need at least one key source")]
    NoKeySource,
    /// A key source header name that is not a valid header name.
    #[error("invalid key source header name {0:?}")]
    InvalidHeader(String),
    /// A key that cannot be loaded.
    #[error(transparent)]
    Key(#[from] crate::KeyError),
    /// A key given at build time names a plan that does not exist.
    #[error("key {key:?} is on plan {plan:?}, which is not defined")]
    UnknownPlan {
        /// The key's id.
        key: String,
        /// The plan it names.
        plan: String,
    },
}

/// Builds [`UsagePlans`].
#[must_use]
pub struct UsagePlansBuilder {
    plans: Vec<UsagePlan>,
    keys: Vec<ApiKey>,
    sources: Vec<KeySource>,
    clock: SharedClock,
    throttle_capacity: usize,
    retention_days: u32,
    on_store_error: StoreFailure,
    allowed_fields: AllowedFields,
}

impl fmt::Debug for UsagePlansBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsagePlansBuilder")
            .field("plans", &self.plans)
            .field("keys", &self.keys.len())
            .field("sources", &self.sources)
            .finish_non_exhaustive()
    }
}

impl Default for UsagePlansBuilder {
    fn default() -> Self {
        Self {
            plans: Vec::new(),
            keys: Vec::new(),
            sources: Vec::new(),
            clock: SharedClock::default(),
            throttle_capacity: DEFAULT_THROTTLE_CAPACITY,
            retention_days: DEFAULT_RETENTION_DAYS,
            on_store_error: StoreFailure::Allow,
            allowed_fields: AllowedFields::RateLimitAndPolicy,
        }
    }
}

impl UsagePlans {
    /// A builder with no plans, keys read from `x-api-key`, in-memory stores.
    pub fn builder() -> UsagePlansBuilder {
        UsagePlansBuilder::default()
    }
}

impl UsagePlansBuilder {
    /// Adds a plan.
    pub fn plan(mut self, plan: UsagePlan) -> Self {
        self.plans.push(plan);
        self
    }

    /// Loads a key into the in-memory key store built by [`build`](Self::build) (for
    /// example from a configuration file of hashes).
    pub fn key(mut self, key: ApiKey) -> Self {
        self.keys.push(key);
        self
    }

    /// Adds a place to read the API key from; the first call replaces the default
    /// (`x-api-key`), and sources are tried in the order added.
    pub fn key_source(mut self, source: KeySource) -> Self {
        self.sources.push(source);
        self
    }

    /// The clock for throttles, quota periods, expiry and rotation (default: the system clock).
    pub fn clock(mut self, clock: impl Into<SharedClock>) -> Self {
        self.clock = clock.into();
        self
    }

    /// Keys whose throttle allowance each in-memory plan rule remembers (default 100,000);
    /// beyond it, keys whose allowance is whole are forgotten first.
    pub fn throttle_capacity(mut self, keys: usize) -> Self {
        self.throttle_capacity = keys;
        self
    }

    /// Days of daily usage the in-memory quota store keeps per key (default 90).
    pub fn retention_days(mut self, days: u32) -> Self {
        self.retention_days = days;
        self
    }

    /// What to do when the throttle or quota store cannot answer (default: let the request
    /// through, so an outage of a shared store does not become an outage of the API). The key
    /// store always fails closed: a key that cannot be checked is refused with 503.
    pub fn on_store_error(mut self, policy: StoreFailure) -> Self {
        self.on_store_error = policy;
        self
    }

    /// Which rate-limit fields admitted responses carry (default: `RateLimit-Policy` and
    /// `RateLimit`, for the plan throttle and the quota). Refusals always carry both.
    pub fn allowed_fields(mut self, fields: AllowedFields) -> Self {
        self.allowed_fields = fields;
        self
    }

    /// Builds with in-memory keys, counters and throttle state.
    pub fn build(mut self) -> Result<UsagePlans, UsageError> {
        let keys = std::mem::take(&mut self.keys);
        for key in &keys {
            if !self.plans.iter().any(|plan| plan.id() == key.plan()) {
                return Err(UsageError::UnknownPlan {
                    key: key.id().to_owned(),
                    plan: key.plan().to_owned(),
                });
            }
        }
        let capacity = self.throttle_capacity;
        let quotas = MemoryQuotaStore::new(self.retention_days);
        self.build_with(MemoryKeyStore::with_keys(keys), quotas, |rules, clock| {
            MemoryStore::new(rules, capacity, clock.clone())
        })
    }

    /// Builds with the given stores; `throttle` makes the throttle store from the plan rules.
    /// Keys added with [`key`](Self::key) are for the in-memory store and are ignored here.
    pub fn build_with<K, Q, T>(
        self,
        keys: K,
        quotas: Q,
        throttle: impl FnOnce(&[Rule], &SharedClock) -> T,
    ) -> Result<UsagePlans<K, Q, T>, UsageError>
    where
        K: KeyStore,
        Q: QuotaStore,
        T: ThrottleStore,
    {
        if self.plans.is_empty() {
            return Err(UsageError::NoPlans);
        }
        let sources = if self.sources.is_empty() {
            vec![KeySource::default()]
        } else {
            self.sources
        };
        let mut rules = Vec::new();
        let mut rule_plans = Vec::new();
        let mut plans = HashMap::with_hasher(foldhash::fast::RandomState::default());
        let mut seen = HashSet::new();
        for plan in self.plans {
            let id = plan.id.to_string();
            // Rule names are the plan id and a suffix, and rule names hold at most 64 bytes.
            let valid = (1..=60).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !valid {
                return Err(UsageError::InvalidPlanId(id));
            }
            if !seen.insert(id.clone()) {
                return Err(UsageError::DuplicatePlan(id));
            }
            if plan.quota.is_some_and(|quota| quota.limit == 0) {
                return Err(UsageError::ZeroQuota(id));
            }
            let mut rule_for = |name: String, throttle: PlanThrottle| {
                if throttle.burst == 0 {
                    return Err(UsageError::ZeroBurst(id.clone()));
                }
                rules.push(
                    Rule::new(name, throttle.rate, tollgate_core::key::ApiKeyId)
                        .burst(throttle.burst),
                );
                rule_plans.push((plan.id.clone(), plan.quota));
                Ok(rules.len() - 1)
            };
            let rule = plan
                .throttle
                .map(|throttle| rule_for(id.clone(), throttle))
                .transpose()?;
            let mut routes = RouteTable::new();
            for (route, throttle) in &plan.routes {
                let index = throttle
                    .map(|throttle| rule_for(route_rule_name(&id, route), throttle))
                    .transpose()?;
                routes
                    .insert(route, index)
                    .map_err(|source| UsageError::Route {
                        plan: id.clone(),
                        source,
                    })?;
            }
            let throttled = Rejection::throttled(Duration::ZERO)
                .with_detail(format!("the rate limit of usage plan \"{id}\" is exceeded"))
                .prerendered();
            let quota_exceeded = Rejection::quota_exceeded(Duration::ZERO)
                .with_detail(format!("the quota of usage plan \"{id}\" is used up"))
                .prerendered();
            let quota_policy = policy_values(&id, None, plan.quota);
            plans.insert(
                plan.id.clone(),
                PlanState {
                    plan,
                    rule,
                    routes,
                    throttled,
                    quota_exceeded,
                    quota_policy,
                },
            );
        }
        index_rules(&mut rules, self.throttle_capacity)?;
        let policies = rules
            .iter()
            .zip(&rule_plans)
            .map(|(rule, (plan, quota))| policy_values(plan, Some(rule), *quota))
            .collect();
        let throttle = throttle(&rules, &self.clock);
        let forbidden =
            |detail: &'static str| Rejection::forbidden().with_detail(detail).prerendered();
        Ok(UsagePlans {
            shared: Arc::new(Shared {
                plans,
                rules: rules.into_boxed_slice(),
                policies,
                keys,
                quotas,
                throttle,
                sources: sources.into_boxed_slice(),
                clock: self.clock,
                on_store_error: self.on_store_error,
                allowed_fields: self.allowed_fields,
                refusals: Refusals {
                    missing: Rejection::invalid_api_key()
                        .with_detail("an API key is required")
                        .prerendered(),
                    invalid: Rejection::invalid_api_key()
                        .with_detail("the API key is not valid")
                        .prerendered(),
                    disabled: forbidden("the API key is disabled"),
                    expired: forbidden("the API key has expired"),
                    stage: forbidden("the API key may not be used on this stage"),
                    no_plan: forbidden("the API key's usage plan is not available"),
                },
                counters: OnceLock::new(),
            }),
        })
    }
}

/// What a new key is made with; [`UsagePlans::create_key`] makes its id (unless given) and
/// secret.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[must_use]
pub struct NewKey {
    /// The key's id; a random one when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// A name for people.
    #[serde(default)]
    pub name: String,
    /// The plan's id.
    pub plan: String,
    /// When the key stops working.
    #[serde(default, with = "crate::time::rfc3339_option")]
    pub expires: Option<SystemTime>,
    /// The stages the key may be used on (default: every stage its plan allows).
    #[serde(default)]
    pub stages: Option<Vec<String>>,
    /// Whether the key works from the start (default `true`).
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
}

fn enabled_by_default() -> bool {
    true
}

impl NewKey {
    /// A key on plan `plan`.
    pub fn new(plan: impl Into<String>) -> Self {
        Self {
            plan: plan.into(),
            enabled: true,
            ..Self::default()
        }
    }

    /// With id `id` instead of a random one.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// With a name for people.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Expiring at `at`.
    pub fn expires(mut self, at: SystemTime) -> Self {
        self.expires = Some(at);
        self
    }

    /// Only on `stages`.
    pub fn stages<I: IntoIterator<Item = S>, S: Into<String>>(mut self, stages: I) -> Self {
        self.stages = Some(stages.into_iter().map(Into::into).collect());
        self
    }

    /// Disabled until enabled.
    pub fn disabled(mut self) -> Self {
        self.enabled = false;
        self
    }
}

/// A key lifecycle call that cannot be carried out.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// No key has this id.
    #[error("no API key has the id {0:?}")]
    UnknownKey(String),
    /// No plan has this id.
    #[error("no usage plan has the id {0:?}")]
    UnknownPlan(String),
    /// A key with this id exists.
    #[error("an API key with the id {0:?} exists already")]
    KeyExists(String),
    /// The id cannot name a key.
    #[error("invalid key id {0:?}: expected 1 to 64 characters of A-Z, a-z, 0-9, '-', '.' or '_', starting with a letter or digit")]
    InvalidId(String),
    /// A report range that runs backwards or is too long.
    #[error("invalid range {from}..{to}: expected from <= to and at most {MAX_REPORT_DAYS} days")]
    InvalidRange {
        /// The first day asked for.
        from: Day,
        /// The last day asked for.
        to: Day,
    },
    /// The operating system's random number generator failed.
    #[error("no randomness for a new key: {0}")]
    Random(getrandom::Error),
    /// A store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The name of plan `id`'s throttle on `route`: the plan id and a digest of the route, so
/// a route's throttle keeps its name — and its state in a store that outlives a rebuild, or in
/// Redis — whatever other routes are added or removed. Rule names hold 64 bytes: a long plan
/// id is cut to make room for the digest.
fn route_rule_name(id: &str, route: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(route.trim().as_bytes());
    let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}:{hex}", &id[..id.len().min(55)])
}

/// One day of a key's usage report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DailyUsage {
    /// The day (UTC).
    pub day: Day,
    /// Requests that took a unit of quota that day.
    pub used: u64,
    /// Units of quota left at the end of that day, for the key's current plan; `None` when the
    /// plan has no quota, or its period does not start at a day boundary.
    pub remaining: Option<u64>,
}

/// A key's usage per day, like Amazon API Gateway's `GetUsage`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct UsageReport {
    /// The key's id.
    pub key: String,
    /// The key's current plan.
    pub plan: String,
    /// The first day reported.
    pub from: Day,
    /// The last day reported.
    pub to: Day,
    /// Each day from `from` to `to`.
    pub days: Vec<DailyUsage>,
}

impl<K: KeyStore, Q: QuotaStore, T: ThrottleStore> UsagePlans<K, Q, T> {
    /// The layer that enforces these plans.
    pub fn layer(&self) -> UsageLayer<K, Q, T> {
        UsageLayer::new(self.shared.clone())
    }

    /// The plan with id `id`.
    pub fn plan(&self, id: &str) -> Option<&UsagePlan> {
        self.shared.plans.get(id).map(|state| &state.plan)
    }

    /// Every plan, in no particular order.
    pub fn plans(&self) -> impl Iterator<Item = &UsagePlan> {
        self.shared.plans.values().map(|state| &state.plan)
    }

    /// Makes a key; its plaintext is in the returned [`Secret`], and nowhere else.
    pub async fn create_key(&self, new: NewKey) -> Result<(ApiKey, Secret), AdminError> {
        self.known_plan(&new.plan)?;
        let id = match new.id {
            Some(id) if is_valid_id(&id) => id,
            Some(id) => return Err(AdminError::InvalidId(id)),
            None => generate_id().map_err(AdminError::Random)?,
        };
        let secret = Secret::generate(&id).map_err(AdminError::Random)?;
        let key = ApiKey::new(id.as_str(), new.plan, secret.hash(), self.now())
            .map_err(|_| AdminError::InvalidId(id.clone()))?
            .with_name(new.name)
            .with_enabled(new.enabled)
            .with_expiry(new.expires)
            .with_stages(new.stages);
        if !self.shared.keys.insert(key.clone()).await? {
            return Err(AdminError::KeyExists(id));
        }
        tracing::info!(key = %key.id(), plan = %key.plan(), "tollgate usage: key created");
        Ok((key, secret))
    }

    /// The key with id `id`.
    pub async fn get_key(&self, id: &str) -> Result<Arc<ApiKey>, AdminError> {
        self.shared
            .keys
            .get(id)
            .settle()
            .await?
            .ok_or_else(|| AdminError::UnknownKey(id.to_owned()))
    }

    /// Up to `limit` keys whose ids sort after `after` (from the first when `None`), by id.
    pub async fn list_keys(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Arc<ApiKey>>, AdminError> {
        Ok(self.shared.keys.list(after, limit).await?)
    }

    /// Enables or disables a key, from its next request on.
    pub async fn set_enabled(&self, id: &str, enabled: bool) -> Result<Arc<ApiKey>, AdminError> {
        self.change(id, |key| key.clone().with_enabled(enabled))
            .await
    }

    /// Moves a key to plan `plan`. What the key spent since the new plan's current period
    /// began stays spent (a move from a daily to a monthly quota keeps today's use); when
    /// the new period began after the old one (monthly to daily), the count starts afresh.
    pub async fn change_plan(&self, id: &str, plan: &str) -> Result<Arc<ApiKey>, AdminError> {
        self.known_plan(plan)?;
        self.change(id, |key| key.clone().with_plan(plan)).await
    }

    /// Gives a key a new secret. The old one keeps working for `grace`, then only the new one
    /// does; a rotation inside the grace period of another ends the older secret at once.
    pub async fn rotate(
        &self,
        id: &str,
        grace: Duration,
    ) -> Result<(Arc<ApiKey>, Secret), AdminError> {
        let secret = Secret::generate(id).map_err(AdminError::Random)?;
        // A grace past any real deadline is a grace without end; a century stands for it.
        let grace = grace.min(Duration::from_secs(100 * 365 * 86_400));
        let until = self.now().checked_add(grace).unwrap_or_else(|| self.now());
        let hash = secret.hash();
        let key = self
            .change(id, |key| key.clone().with_rotated_secret(hash, until))
            .await?;
        Ok((key, secret))
    }

    /// Revokes a key: it is deleted, with its usage history, and refused from its next
    /// request on as an unknown key.
    pub async fn revoke(&self, id: &str) -> Result<(), AdminError> {
        if !self.shared.keys.remove(id).await? {
            return Err(AdminError::UnknownKey(id.to_owned()));
        }
        self.shared.quotas.forget(id).await?;
        tracing::info!(key = %id, "tollgate usage: key revoked");
        Ok(())
    }

    /// The key's usage on each day from `from` to `to` (both included, at most 366 days).
    pub async fn usage(&self, id: &str, from: Day, to: Day) -> Result<UsageReport, AdminError> {
        if from > to || to.index() - from.index() >= MAX_REPORT_DAYS {
            return Err(AdminError::InvalidRange { from, to });
        }
        let key = self.get_key(id).await?;
        let quota = self
            .shared
            .plans
            .get(key.plan())
            .and_then(|state| state.plan.quota)
            .filter(|quota| starts_on_day_boundaries(quota.period));
        // A period that began before `from` has spent units on earlier days too.
        let first = quota.map_or(from, |quota| {
            Day::of(quota.period.window(from.start()).start)
        });
        let used = self.shared.quotas.daily_usage(id, first, to).await?;
        let used_on = |day: Day| {
            used.iter()
                .find(|(d, _)| *d == day)
                .map_or(0, |&(_, count)| count)
        };
        let mut days = Vec::new();
        let mut day = from;
        loop {
            let remaining = quota.map(|quota| {
                let start = Day::of(quota.period.window(day.start()).start);
                let spent: u64 = used
                    .iter()
                    .filter(|(d, _)| *d >= start && *d <= day)
                    .map(|&(_, count)| count)
                    .sum();
                u64::from(quota.limit).saturating_sub(spent)
            });
            days.push(DailyUsage {
                day,
                used: used_on(day),
                remaining,
            });
            if day >= to {
                break;
            }
            day = day.next();
        }
        Ok(UsageReport {
            key: key.id().to_owned(),
            plan: key.plan().to_owned(),
            from,
            to,
            days,
        })
    }

    fn known_plan(&self, plan: &str) -> Result<(), AdminError> {
        if self.shared.plans.contains_key(plan) {
            Ok(())
        } else {
            Err(AdminError::UnknownPlan(plan.to_owned()))
        }
    }

    async fn change(
        &self,
        id: &str,
        edit: impl Fn(&ApiKey) -> ApiKey + Send,
    ) -> Result<Arc<ApiKey>, AdminError> {
        let key = self
            .shared
            .keys
            .update(id, edit)
            .await?
            .ok_or_else(|| AdminError::UnknownKey(id.to_owned()))?;
        tracing::info!(key = %id, enabled = key.enabled(), plan = %key.plan(), "tollgate usage: key changed");
        Ok(key)
    }

    fn now(&self) -> SystemTime {
        self.shared.clock.system_time()
    }
}

/// Whether each of `period`'s windows starts at a UTC midnight, so a day's usage belongs to
/// exactly one window.
fn starts_on_day_boundaries(period: QuotaPeriod) -> bool {
    match period {
        QuotaPeriod::Day | QuotaPeriod::Week | QuotaPeriod::Month => true,
        QuotaPeriod::Every(length) => length.as_secs() % 86_400 == 0,
    }
}
