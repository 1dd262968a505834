use std::num::NonZeroU32;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::Counter;
use tollgate_core::{KeyExtractor, KeyScope, Rejection, RequestHead, RouteTable};

use crate::headers::ValueCache;
use crate::Rate;

/// One limit: a rate, a burst, what it counts by, and optionally which routes it covers.
///
/// ```
/// use tollgate_core::key::{ClientIp, Global};
/// use tollgate_core::{RouteTable, TrustedProxies};
/// use tollgate_throttle::{Rate, Rule};
///
/// // AWS-style tiers: everyone together, one hot route, and each client.
/// let global = Rule::new("global", Rate::per_second(10_000), Global).burst(5_000);
/// let search = Rule::new("search", "100/s".parse().unwrap(), Global)
///     .routes(RouteTable::new().with("GET /search", ()).unwrap());
/// let per_client = Rule::new("per-client", Rate::per_second(5), ClientIp::new(TrustedProxies::none()))
///     .burst(5);
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct Rule {
    pub(crate) name: Arc<str>,
    pub(crate) rate: Rate,
    pub(crate) burst: Option<u32>,
    pub(crate) extractor: Arc<dyn KeyExtractor>,
    /// The routes, each marked whether the rule covers it.
    pub(crate) routes: Option<RouteTable<bool>>,
    pub(crate) shadow: bool,
    pub(crate) on_missing_key: MissingKey,
    pub(crate) capacity: Option<usize>,
    /// Position in the layer's evaluation order, set when the layer is built.
    pub(crate) index: usize,
    pub(crate) counters: Arc<OnceLock<RuleCounters>>,
    pub(crate) ratelimit_values: Arc<ValueCache>,
    pub(crate) reports_remaining: bool,
    /// This rule's refusal, rendered once when the layer is built.
    pub(crate) refusal: Arc<Rejection>,
}

/// What a rule does with a request its extractor finds no key for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MissingKey {
    /// Refuse with the extractor's error: a 400 naming the missing header, a 401 for a missing
    /// principal or API key, a 500 when the server passes no peer address.
    #[default]
    Reject,
    /// Let the request past this rule (it still has to pass the others): for example a
    /// per-API-key rule that does not apply to anonymous requests.
    Skip,
}

#[derive(Debug)]
pub(crate) struct RuleCounters {
    pub(crate) allowed: Counter,
    pub(crate) limited: Counter,
}

impl Rule {
    /// A rule named `name` (it appears in `RateLimit` headers, logs and metrics) that allows
    /// `rate` per key of `extractor`. The burst defaults to the rate's requests per period,
    /// rounded up (`10/s` allows 10 at once).
    pub fn new(name: impl Into<Arc<str>>, rate: Rate, extractor: impl KeyExtractor) -> Self {
        Self::with_shared_extractor(name, rate, Arc::new(extractor))
    }

    /// [`Rule::new`] with an extractor chosen at run time (for example from configuration).
    pub fn with_shared_extractor(
        name: impl Into<Arc<str>>,
        rate: Rate,
        extractor: Arc<dyn KeyExtractor>,
    ) -> Self {
        Self {
            name: name.into(),
            rate,
            burst: None,
            extractor,
            routes: None,
            shadow: false,
            on_missing_key: MissingKey::default(),
            capacity: None,
            index: 0,
            counters: Arc::default(),
            ratelimit_values: Arc::default(),
            reports_remaining: true,
            refusal: Arc::new(Rejection::throttled(Duration::ZERO)),
        }
    }

    /// How many requests may arrive at once on a full allowance. `0` is refused at build time.
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    /// Applies the rule only to requests matching `routes`.
    pub fn routes(mut self, routes: RouteTable<()>) -> Self {
        let mut covered = RouteTable::new();
        for (route, ()) in routes.iter() {
            // Each was a valid route of a table without conflicts.
            let _ = covered.insert(route, true);
        }
        self.routes = Some(covered);
        self
    }

    /// Applies the rule to requests whose route, of all those in `routes`, is one marked
    /// `true`. The others are the application's routes the rule does not cover, listed so that
    /// a request a more specific route takes (`GET /items/special` beside a covered
    /// `GET /items/{id}`) is not counted, as the application would not route it there.
    pub fn routes_among(mut self, routes: RouteTable<bool>) -> Self {
        self.routes = Some(routes);
        self
    }

    /// Shadow mode: would-be refusals are counted and logged, and the request goes through.
    pub fn shadow(mut self, shadow: bool) -> Self {
        self.shadow = shadow;
        self
    }

    /// What to do with a request the rule's extractor finds no key for (default
    /// [`MissingKey::Reject`]). To count such requests under another key instead, give the
    /// rule a fallback extractor with [`KeyExtractorExt::or`](tollgate_core::KeyExtractorExt::or).
    pub fn on_missing_key(mut self, policy: MissingKey) -> Self {
        self.on_missing_key = policy;
        self
    }

    /// The most keys this rule remembers (overrides the layer's capacity).
    pub fn capacity(mut self, keys: usize) -> Self {
        self.capacity = Some(keys);
        self
    }

    /// The same rule with its rate and burst divided among `instances` gateways (never below
    /// one request): the share one instance enforces alone when a shared store is down.
    pub fn divided(&self, instances: u32) -> Rule {
        let instances = instances.max(1);
        let mut rule = self.clone();
        let per_instance = self.rate.requests() / f64::from(instances);
        if let Ok(rate) = Rate::new(per_instance.max(1.0), self.rate.period()) {
            rule.rate = rate;
        }
        rule.burst = Some((self.burst_size().get() / instances).max(1));
        rule
    }

    /// The rule's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The sustained rate.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// The burst size.
    pub fn burst_size(&self) -> NonZeroU32 {
        let burst = self
            .burst
            .unwrap_or_else(|| self.rate.requests().ceil() as u32);
        NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN)
    }

    /// Whether the rule is in shadow mode.
    pub fn is_shadow(&self) -> bool {
        self.shadow
    }

    /// What the rule counts by.
    pub fn extractor(&self) -> &dyn KeyExtractor {
        &*self.extractor
    }

    /// The time for a drained allowance to come back whole: `burst × interval` (saturating).
    pub fn refill_time(&self) -> Duration {
        self.checked_refill_time().unwrap_or(Duration::MAX)
    }

    pub(crate) fn checked_refill_time(&self) -> Option<Duration> {
        self.rate.interval().checked_mul(self.burst_size().get())
    }

    /// The rule's position in its layer's evaluation order; stores index their state by it.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Whether the layer reports this rule's remaining allowance on allowed responses. When it
    /// does not, an [`Outcome::Allowed`](crate::Outcome::Allowed)'s `remaining` and `reset` go
    /// unread and a store may skip computing them.
    pub fn reports_remaining(&self) -> bool {
        self.reports_remaining
    }

    /// A rule limited to some routes shares its budget no wider than those routes, whatever
    /// its key: a global key on `GET /search` is a per-route budget.
    pub(crate) fn scope(&self) -> KeyScope {
        match (self.extractor.scope(), &self.routes) {
            (KeyScope::Global, Some(_)) => KeyScope::Route,
            (scope, _) => scope,
        }
    }

    #[inline]
    pub(crate) fn applies_to(&self, request: &RequestHead<'_>) -> bool {
        self.routes.as_ref().is_none_or(|routes| {
            routes
                .at(request.method, request.uri.path())
                .is_some_and(|route| *route.value())
        })
    }

    #[inline]
    pub(crate) fn counters(&self) -> &RuleCounters {
        // Registered on the rule's first request rather than at build time, so a recorder
        // installed between building the layer and serving still sees the counts.
        self.counters.get_or_init(|| {
            let name = self.name.to_string();
            RuleCounters {
                allowed: metrics::counter!("tollgate_throttle_allowed_total", "rule" => name.clone()),
                limited: metrics::counter!(
                    "tollgate_throttle_limited_total",
                    "rule" => name,
                    "shadow" => if self.shadow { "true" } else { "false" }
                ),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_core::key::Global;

    #[test]
    fn a_divided_rule_keeps_each_instances_share_and_never_drops_below_one() {
        let rule = Rule::new("shared", Rate::per_second(100), Global).burst(10);
        let share = rule.divided(4);
        assert_eq!(share.rate().requests(), 25.0);
        assert_eq!(share.rate().period(), Duration::from_secs(1));
        assert_eq!(share.burst_size().get(), 2);
        assert_eq!(share.name(), "shared");
        let tiny = Rule::new("tiny", Rate::per_second(2), Global).divided(8);
        assert_eq!(tiny.rate().requests(), 1.0);
        assert_eq!(tiny.burst_size().get(), 1);
        assert_eq!(rule.divided(0).rate().requests(), 100.0);
    }
}
