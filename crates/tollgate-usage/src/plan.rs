//! Usage plans: what a key's holder may spend, how fast and how much.

use std::sync::Arc;

use tollgate_throttle::Rate;

use crate::QuotaPeriod;

/// A rate with a burst: the plan throttle, or a route's override of it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlanThrottle {
    /// The steady rate (`2/s`, `100/min`).
    pub rate: Rate,
    /// How many requests may arrive at once after a quiet spell (at least 1).
    pub burst: u32,
}

/// How many requests a key may make per period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Requests per period.
    pub limit: u32,
    /// The period: a UTC day, ISO week, calendar month or fixed length.
    pub period: QuotaPeriod,
}

/// A usage plan, as Amazon API Gateway has them: a throttle, a quota, per-route throttle
/// overrides and the stages it may be used on. Every API key is on one plan.
///
/// ```
/// use tollgate_throttle::Rate;
/// use tollgate_usage::{QuotaPeriod, UsagePlan};
///
/// let basic = UsagePlan::new("basic")
///     .name("Basic")
///     .throttle(Rate::per_second(2), 2)
///     .quota(20, QuotaPeriod::Day)
///     .route_throttle("POST /reports", Rate::per_minute(1), 1);
/// assert_eq!(basic.id(), "basic");
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct UsagePlan {
    pub(crate) id: Arc<str>,
    pub(crate) name: String,
    pub(crate) throttle: Option<PlanThrottle>,
    pub(crate) quota: Option<Quota>,
    /// Route overrides; `None` for a route that keeps the plan's own throttle.
    pub(crate) routes: Vec<(String, Option<PlanThrottle>)>,
    pub(crate) stages: Option<Arc<[String]>>,
}

impl UsagePlan {
    /// A plan with id `id` (1 to 64 characters of `A-Z a-z 0-9 - _ .`): no throttle, no quota,
    /// every stage.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self {
            id: id.into(),
            name: String::new(),
            throttle: None,
            quota: None,
            routes: Vec::new(),
            stages: None,
        }
    }

    /// A name for people.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Requests at `rate`, with up to `burst` at once, per key.
    pub fn throttle(mut self, rate: Rate, burst: u32) -> Self {
        self.throttle = Some(PlanThrottle { rate, burst });
        self
    }

    /// At most `limit` requests per `period`, per key.
    pub fn quota(mut self, limit: u32, period: QuotaPeriod) -> Self {
        self.quota = Some(Quota { limit, period });
        self
    }

    /// On `route` (`GET /search`, `POST /orders/{id}/refunds`), requests at `rate` with up to
    /// `burst` at once, per key, instead of the plan's throttle. The route keeps its own
    /// allowance, apart from the plan's.
    pub fn route_throttle(mut self, route: impl Into<String>, rate: Rate, burst: u32) -> Self {
        self.routes
            .push((route.into(), Some(PlanThrottle { rate, burst })));
        self
    }

    /// `route` keeps the plan's own throttle: a route of the application listed so that a
    /// request it takes (`GET /items/special`) is not counted under another route's override
    /// whose template also matches it (`GET /items/{id}`).
    pub fn plan_throttle_route(mut self, route: impl Into<String>) -> Self {
        self.routes.push((route.into(), None));
        self
    }

    /// Only on these stages (by [`Stage`](tollgate_core::Stage) name); a request on another
    /// stage, or on none, is refused with 403.
    pub fn stages<I, S>(mut self, stages: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.stages = Some(stages.into_iter().map(Into::into).collect());
        self
    }

    /// The plan's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The plan's name.
    pub fn display_name(&self) -> &str {
        &self.name
    }

    /// The plan's throttle.
    pub fn plan_throttle(&self) -> Option<PlanThrottle> {
        self.throttle
    }

    /// The plan's quota.
    pub fn plan_quota(&self) -> Option<Quota> {
        self.quota
    }

    /// The stages the plan may be used on; `None` for all.
    pub fn allowed_stages(&self) -> Option<&[String]> {
        self.stages.as_deref()
    }
}
