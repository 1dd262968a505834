//! The decision for one request: key check, then plan throttle (or the route's override),
//! then quota. A store that answers at once keeps the whole decision synchronous; the first
//! store that must be waited for moves the rest of it into a boxed future.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method, Request};
use tollgate_core::ratelimit::{append_fields, reset_seconds, FieldList, RateLimitFields};
use tollgate_core::{AccessRecord, Clock, Key, Principal, Rejection, Stage};
use tollgate_throttle::{
    AllowedFields, Check, Outcome, StoreError as ThrottleStoreError, StoreFailure, ThrottleStore,
};

use crate::key::{ApiKey, Found, KeyStore, StoreError};
use crate::plans::{PlanState, Shared};
use crate::quota::{QuotaStore, Take};
use crate::secret::{key_id, KeyHash};
use crate::{Day, QuotaPeriod, Window};

/// The rest of a decision that waits for a store.
pub(crate) type Pending = Pin<Box<dyn Future<Output = Result<Pass, Box<Rejection>>> + Send>>;

pub(crate) enum Decision {
    Pass(Pass),
    Reject(Box<Rejection>),
    Wait(Pending),
}

/// An admitted request: its key, and the rate-limit fields for its response.
pub(crate) struct Pass {
    key: Arc<ApiKey>,
    pub(crate) fields: Option<RateLimitFields>,
}

impl Pass {
    /// Puts the key id and plan id on the request's [`Principal`], making one if an
    /// authorizer has not.
    #[inline]
    pub(crate) fn grant<B>(&self, request: &mut Request<B>) {
        let extensions = request.extensions_mut();
        match extensions.get_mut::<Principal>() {
            Some(principal) => {
                *principal = principal
                    .clone()
                    .with_api_key(self.key.id_shared().clone(), self.key.plan());
            }
            None => {
                extensions.insert(self.key.principal().clone());
            }
        }
        if let Some(record) = AccessRecord::of(request.extensions()) {
            record.note(|fields| fields.principal = request.extensions().get().cloned());
        }
    }
}

/// What the rest of a decision needs of the request once it is no longer borrowed.
struct Facts {
    hash: KeyHash,
    now: SystemTime,
    stage: Option<Stage>,
    method: Method,
    path: Box<str>,
    record: Option<AccessRecord>,
}

/// The rate-limit fields of one request.
struct Report {
    /// When the request was decided.
    now: SystemTime,
    /// The throttle rule that applied, the allowance left and the time until it is whole.
    throttle: Option<(usize, u32, Duration)>,
    /// The quota's limit, the window, and the units left in it.
    quota: Option<(u32, Window, u32)>,
}

impl Report {
    fn new(now: SystemTime) -> Self {
        Self {
            now,
            throttle: None,
            quota: None,
        }
    }
}

impl<K: KeyStore, Q: QuotaStore, T: ThrottleStore> Shared<K, Q, T> {
    #[inline]
    pub(crate) fn decide<B>(self: &Arc<Self>, request: &Request<B>) -> Decision {
        let Some(presented) = self.sources.iter().find_map(|source| source.find(request)) else {
            self.counters().missing.increment(1);
            tracing::debug!("tollgate usage: no API key");
            return Decision::Reject(Box::new(self.refusals.missing.clone()));
        };
        let Some(id) = key_id(presented) else {
            self.counters().invalid.increment(1);
            tracing::debug!("tollgate usage: the API key has no key id");
            return Decision::Reject(Box::new(self.refusals.invalid.clone()));
        };
        let hash = KeyHash::of(presented);
        let now = self.clock.system_time();
        let found = match self.keys.get(id) {
            Found::Ready(found) => found,
            Found::Pending(get) => {
                let facts = Facts {
                    hash,
                    now,
                    stage: request.extensions().get::<Stage>().cloned(),
                    method: request.method().clone(),
                    path: request.uri().path().into(),
                    record: AccessRecord::of(request.extensions()).cloned(),
                };
                return Decision::Wait(Box::pin(self.clone().after_get(facts, get)));
            }
        };
        let stage = request.extensions().get::<Stage>();
        let record = AccessRecord::of(request.extensions());
        let (key, plan) = match self.admit(found, &hash, now, stage, record) {
            Ok(admitted) => admitted,
            Err(rejection) => return Decision::Reject(rejection),
        };
        let mut report = Report::new(now);
        if let Some(rule) = self.rule_for(plan, request.method(), request.uri().path()) {
            match self.check_throttle(&key, rule) {
                Check::Ready(result) => {
                    if let Err(rejection) = self.after_throttle(plan, rule, result, &mut report) {
                        return Decision::Reject(rejection);
                    }
                }
                Check::Pending(check) => {
                    let future = self.clone().after_throttle_check(now, key, rule, check);
                    return Decision::Wait(Box::pin(future));
                }
            }
        }
        let (window, take) = self.take(&key, plan, now);
        match take {
            Found::Ready(result) => match self.after_take(plan, window, result, report) {
                Ok(fields) => Decision::Pass(Pass { key, fields }),
                Err(rejection) => Decision::Reject(rejection),
            },
            Found::Pending(take) => Decision::Wait(Box::pin(
                self.clone().after_quota_take(key, window, report, take),
            )),
        }
    }

    async fn after_get(self: Arc<Self>, facts: Facts, get: K::Get) -> Result<Pass, Box<Rejection>> {
        let (key, plan) = self.admit(
            get.await,
            &facts.hash,
            facts.now,
            facts.stage.as_ref(),
            facts.record.as_ref(),
        )?;
        let mut report = Report::new(facts.now);
        if let Some(rule) = self.rule_for(plan, &facts.method, &facts.path) {
            let result = match self.check_throttle(&key, rule) {
                Check::Ready(result) => result,
                Check::Pending(check) => check.await,
            };
            self.after_throttle(plan, rule, result, &mut report)?;
        }
        let (window, take) = self.take(&key, plan, facts.now);
        let fields = self.after_take(plan, window, take.settle().await, report)?;
        Ok(Pass { key, fields })
    }

    async fn after_throttle_check(
        self: Arc<Self>,
        now: SystemTime,
        key: Arc<ApiKey>,
        rule: usize,
        check: T::Future,
    ) -> Result<Pass, Box<Rejection>> {
        let plan = self.plan_of(&key)?;
        let mut report = Report::new(now);
        self.after_throttle(plan, rule, check.await, &mut report)?;
        let (window, take) = self.take(&key, plan, now);
        let fields = self.after_take(plan, window, take.settle().await, report)?;
        Ok(Pass { key, fields })
    }

    async fn after_quota_take(
        self: Arc<Self>,
        key: Arc<ApiKey>,
        window: Option<Window>,
        report: Report,
        take: Q::Take,
    ) -> Result<Pass, Box<Rejection>> {
        let plan = self.plan_of(&key)?;
        let fields = self.after_take(plan, window, take.await, report)?;
        Ok(Pass { key, fields })
    }

    /// The key step: the key exists, the presented secret is its own, and it may be used now
    /// and on this stage.
    #[inline]
    fn admit(
        &self,
        found: Result<Option<Arc<ApiKey>>, StoreError>,
        presented: &KeyHash,
        now: SystemTime,
        stage: Option<&Stage>,
        record: Option<&AccessRecord>,
    ) -> Result<(Arc<ApiKey>, &PlanState), Box<Rejection>> {
        let counters = self.counters();
        let key = match found {
            Ok(Some(key)) if key.verify(presented, now) => key,
            Ok(_) => {
                counters.invalid.increment(1);
                tracing::debug!("tollgate usage: unknown API key");
                return Err(Box::new(self.refusals.invalid.clone()));
            }
            Err(error) => {
                counters.store_error.increment(1);
                tracing::warn!(%error, "tollgate usage: key store failed; refusing");
                return Err(Box::new(Rejection::unavailable(Duration::from_secs(1))));
            }
        };
        if let Some(record) = record {
            record.note(|fields| {
                fields.api_key_id = Some(key.id_shared().clone());
                fields.usage_plan = Some(key.plan().into());
            });
        }
        let refuse = |rejection: &Rejection, reason: &'static str| {
            counters.forbidden.increment(1);
            tracing::debug!(key = %key.id(), reason, "tollgate usage: key refused");
            Box::new(rejection.clone())
        };
        if !key.enabled() {
            return Err(refuse(&self.refusals.disabled, "disabled"));
        }
        if key.expires().is_some_and(|expires| now >= expires) {
            return Err(refuse(&self.refusals.expired, "expired"));
        }
        let Some(plan) = self.plans.get(key.plan()) else {
            tracing::warn!(key = %key.id(), plan = %key.plan(), "tollgate usage: key names an unknown plan");
            return Err(refuse(&self.refusals.no_plan, "unknown plan"));
        };
        let allowed = |stages: Option<&[String]>| {
            stages.is_none_or(|stages| {
                stage.is_some_and(|stage| stages.iter().any(|s| s == stage.name()))
            })
        };
        if !allowed(key.stages()) || !allowed(plan.plan.allowed_stages()) {
            return Err(refuse(&self.refusals.stage, "stage not allowed"));
        }
        Ok((key, plan))
    }

    fn plan_of(&self, key: &ApiKey) -> Result<&PlanState, Box<Rejection>> {
        self.plans
            .get(key.plan())
            .ok_or_else(|| Box::new(self.refusals.no_plan.clone()))
    }

    /// The throttle rule for this request: the route's override, or the plan's throttle.
    #[inline]
    fn rule_for(&self, plan: &PlanState, method: &Method, path: &str) -> Option<usize> {
        match plan.routes.at(method, path) {
            Some(route) => route.value().or(plan.rule),
            None => plan.rule,
        }
    }

    #[inline]
    fn check_throttle(&self, key: &ApiKey, rule: usize) -> Check<T::Future> {
        // `rule` is an index the builder made into `rules`.
        let rule = &self.rules[rule];
        self.throttle
            .check(rule, &Key::api_key(key.id_shared().clone()))
    }

    #[inline]
    fn after_throttle(
        &self,
        plan: &PlanState,
        rule: usize,
        result: Result<Outcome, ThrottleStoreError>,
        report: &mut Report,
    ) -> Result<(), Box<Rejection>> {
        match result {
            Ok(Outcome::Allowed { remaining, reset }) => {
                report.throttle = Some((rule, remaining, reset));
                Ok(())
            }
            Ok(Outcome::Limited { retry_after, reset }) => {
                self.counters().throttled.increment(1);
                tracing::debug!(plan = %plan.plan.id(), ?retry_after, "tollgate usage: throttled");
                report.throttle = Some((rule, 0, reset));
                let mut rejection = plan.throttled.clone().with_retry_after(retry_after);
                self.attach(rejection.headers_mut(), plan, report);
                Err(Box::new(rejection))
            }
            Err(error) => self.store_failed(&error),
        }
    }

    /// Takes a unit of the plan's quota (or only counts the request, without one).
    #[inline]
    fn take(
        &self,
        key: &ApiKey,
        plan: &PlanState,
        now: SystemTime,
    ) -> (Option<Window>, Found<Take, Q::Take>) {
        let window = plan.plan.quota.map(|quota| quota.period.window(now));
        let quota = plan
            .plan
            .quota
            .zip(window.as_ref())
            .map(|(quota, window)| (quota.limit, window));
        let take = self.quotas.take(key.id_shared(), quota, Day::of(now));
        (window, take)
    }

    #[inline]
    fn after_take(
        &self,
        plan: &PlanState,
        window: Option<Window>,
        result: Result<Take, StoreError>,
        mut report: Report,
    ) -> Result<Option<RateLimitFields>, Box<Rejection>> {
        let limit = plan.plan.quota.map(|quota| quota.limit);
        match (result, limit.zip(window)) {
            (Ok(Take::Taken { used }), quota) => {
                self.counters().allowed.increment(1);
                report.quota =
                    quota.map(|(limit, window)| (limit, window, limit.saturating_sub(used)));
                Ok(self.allowed_fields(plan, &report))
            }
            (Ok(Take::Exhausted), Some((limit, window))) => {
                self.counters().quota_exceeded.increment(1);
                let reset = window.remaining(report.now);
                tracing::debug!(plan = %plan.plan.id(), ?reset, "tollgate usage: quota exceeded");
                report.quota = Some((limit, window, 0));
                let mut rejection = plan.quota_exceeded.clone().with_retry_after(reset);
                self.attach(rejection.headers_mut(), plan, &report);
                Err(Box::new(rejection))
            }
            (Ok(Take::Exhausted), None) => Ok(self.allowed_fields(plan, &report)),
            (Err(error), _) => self
                .store_failed(&error)
                .map(|()| self.allowed_fields(plan, &report)),
        }
    }

    fn store_failed(&self, error: &dyn std::error::Error) -> Result<(), Box<Rejection>> {
        self.counters().store_error.increment(1);
        tracing::warn!(%error, policy = ?self.on_store_error, "tollgate usage: throttle or quota store failed");
        match self.on_store_error {
            StoreFailure::Allow => Ok(()),
            StoreFailure::Reject => Err(Box::new(Rejection::unavailable(Duration::from_secs(1)))),
        }
    }

    /// The fields an admitted response carries, as [`AllowedFields`] chooses.
    #[inline]
    fn allowed_fields(&self, plan: &PlanState, report: &Report) -> Option<RateLimitFields> {
        match self.allowed_fields {
            AllowedFields::None => None,
            AllowedFields::RateLimit => self
                .fields(plan, report)
                .map(|(_, ratelimit)| (None, ratelimit)),
            AllowedFields::RateLimitAndPolicy => self
                .fields(plan, report)
                .map(|(policy, ratelimit)| (Some(policy), ratelimit)),
        }
    }

    fn attach(&self, headers: &mut http::HeaderMap, plan: &PlanState, report: &Report) {
        if let Some((policy, ratelimit)) = self.fields(plan, report) {
            append_fields(headers, (Some(policy), ratelimit));
        }
    }

    /// `RateLimit-Policy` (made ahead, by the builder) and `RateLimit` for the plan's
    /// throttle (named after the plan) and its quota (named `quota`), e.g.
    /// `"basic";q=2;w=1, "quota";q=20;w=86400` and `"basic";r=1;t=1, "quota";r=19;t=41220`.
    #[inline]
    fn fields(&self, plan: &PlanState, report: &Report) -> Option<(HeaderValue, HeaderValue)> {
        let slot = match (plan.plan.quota, report.quota) {
            (Some(quota), Some((_, window, _))) => policy_slot(quota.period, &window),
            _ => 0,
        };
        let policy = match report.throttle {
            Some((rule, ..)) => self.policies.get(rule)?[slot].clone()?,
            None => plan.quota_policy[slot].clone()?,
        };
        let mut ratelimit = FieldList::default();
        if let Some((_, remaining, reset)) = report.throttle {
            let (r, t) = (u64::from(remaining), reset_seconds(reset));
            ratelimit.item(plan.plan.id(), ("r", r), ("t", t));
        }
        if let Some((_, window, remaining)) = report.quota {
            let t = reset_seconds(window.remaining(report.now));
            ratelimit.item("quota", ("r", u64::from(remaining)), ("t", t));
        }
        Some((policy, ratelimit.into_value()?))
    }
}

/// Which of a plan's ready-made `RateLimit-Policy` values fits `window`: calendar months
/// last 28 to 31 days, so a monthly quota's `w` takes one of four values; every other period
/// has one.
#[inline]
fn policy_slot(period: QuotaPeriod, window: &Window) -> usize {
    if period != QuotaPeriod::Month {
        return 0;
    }
    let days = window.length().as_secs() / 86_400;
    usize::try_from(days.saturating_sub(28)).map_or(0, |slot| slot.min(3))
}

/// The `RateLimit-Policy` values of a throttle rule (`None` for none) together with a quota,
/// one per slot of [`policy_slot`].
pub(crate) fn policy_values(
    plan: &str,
    throttle: Option<&tollgate_throttle::Rule>,
    quota: Option<crate::Quota>,
) -> [Option<HeaderValue>; 4] {
    let value = |quota_length: Option<u64>| {
        let mut field = FieldList::default();
        if let Some(rule) = throttle {
            let (q, w) = rule.rate().quota_window();
            field.item(plan, ("q", q), ("w", w));
        }
        if let (Some(quota), Some(w)) = (quota, quota_length) {
            field.item("quota", ("q", u64::from(quota.limit)), ("w", w));
        }
        field.into_value()
    };
    match quota.map(|quota| quota.period) {
        Some(QuotaPeriod::Month) => [28, 29, 30, 31].map(|days| value(Some(days * 86_400))),
        Some(period) => {
            let length = period.window(std::time::UNIX_EPOCH).length().as_secs();
            [value(Some(length)), None, None, None]
        }
        None => [value(None), None, None, None],
    }
}
