use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use governor::clock::Clock as _;
use governor::middleware::{NoOpMiddleware, StateInformationMiddleware};
use governor::nanos::Nanos;
use governor::{Quota, RateLimiter};
use tollgate_core::{Key, SharedClock};

use crate::bounded::{BoundedState, ClockAdapter};
use crate::Rule;

/// The result of taking one request's allowance under a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The request conforms; its allowance was taken.
    Allowed {
        /// Requests that could still be made right now.
        remaining: u32,
        /// Time until the allowance is whole again.
        reset: Duration,
    },
    /// The request does not conform; nothing was taken.
    Limited {
        /// Time until one request would conform.
        retry_after: Duration,
        /// Time until the allowance is whole again.
        reset: Duration,
    },
}

/// A store could not decide (for example, Redis is unreachable).
#[derive(Debug, thiserror::Error)]
#[error("throttle store failed: {0}")]
pub struct StoreError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// A decision available at once, or one still on its way.
#[derive(Debug)]
pub enum Check<F> {
    /// Decided without waiting (the in-memory store always is).
    Ready(Result<Outcome, StoreError>),
    /// Decided by a future (a round trip to a shared store).
    Pending(F),
}

/// Where rule state lives: the seam a shared backend (Redis) implements with the same
/// semantics as [`MemoryStore`] — GCRA per rule and key, where a refused request takes nothing.
///
/// [`Check::Ready`] lets an in-process store answer without a future, a box or an allocation,
/// so the in-memory hot path pays nothing for this seam.
pub trait ThrottleStore: Send + Sync + 'static {
    /// The future of a decision that needs to wait.
    type Future: Future<Output = Result<Outcome, StoreError>> + Send + 'static;

    /// Takes one request's allowance for `key` under `rule`, if it conforms.
    fn check(&self, rule: &Rule, key: &Key) -> Check<Self::Future>;

    /// Whether the layer should offer [`check_all`](Self::check_all) the rules of a request
    /// that several rules apply to: `true` for a store where each check is a round trip.
    const BATCHES: bool = false;

    /// Decides several rules of one request together, in their order, as [`check`](Self::check)
    /// one after the other would: each rule's allowance is taken in turn, up to and including
    /// the first rule that limits and is not in shadow mode, and no rule after it is touched.
    /// The outcomes are those of the rules decided, in order.
    ///
    /// `None` (the default) when the store cannot: the layer then checks rule by rule.
    fn check_all(&self, checks: &[(&Rule, &Key)]) -> Option<CheckAll> {
        let _ = checks;
        None
    }
}

/// A shared store: the layer and its owner (a reload that carries state over) both hold it.
impl<T: ThrottleStore> ThrottleStore for Arc<T> {
    type Future = T::Future;

    const BATCHES: bool = T::BATCHES;

    #[inline]
    fn check(&self, rule: &Rule, key: &Key) -> Check<Self::Future> {
        (**self).check(rule, key)
    }

    fn check_all(&self, checks: &[(&Rule, &Key)]) -> Option<CheckAll> {
        (**self).check_all(checks)
    }
}

/// The decisions of [`ThrottleStore::check_all`]: one round trip for the rules of a request.
pub type CheckAll = Pin<Box<dyn Future<Output = Result<Vec<Outcome>, StoreError>> + Send>>;

/// The future type of a store that never waits; it cannot be constructed.
#[derive(Debug)]
pub struct NeverPending(Infallible);

impl Future for NeverPending {
    type Output = Result<Outcome, StoreError>;

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        match self.0 {}
    }
}

/// governor's limiter, with the state snapshot (and its division) only where the remaining
/// allowance is reported.
#[derive(Debug)]
enum Limiter {
    Reporting(RateLimiter<Key, BoundedState, ClockAdapter, StateInformationMiddleware>),
    Silent(RateLimiter<Key, BoundedState, ClockAdapter, NoOpMiddleware<Nanos>>),
}

#[derive(Debug)]
struct RuleState {
    limiter: Limiter,
    state: BoundedState,
    interval: Duration,
    burst: u32,
    /// What a rule must match for a rebuilt store to carry this state over.
    identity: RuleIdentity,
}

/// A rule as far as its state is concerned: a rule with the same name, rate, burst, capacity,
/// covered routes and reporting keeps its state when a store is rebuilt from another.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RuleIdentity {
    name: Box<str>,
    interval: Duration,
    burst: u32,
    capacity: usize,
    routes: Option<Vec<Box<str>>>,
    reports_remaining: bool,
}

impl RuleIdentity {
    fn of(rule: &Rule, default_capacity: usize) -> Self {
        Self {
            name: rule.name().into(),
            interval: rule.rate.interval(),
            burst: rule.burst_size().get(),
            capacity: rule.capacity.unwrap_or(default_capacity),
            // The routes it covers: routes listed only to be told apart may come and go.
            routes: rule.routes.as_ref().map(|routes| {
                routes
                    .iter()
                    .filter(|(_, covered)| **covered)
                    .map(|(route, _)| route.into())
                    .collect()
            }),
            reports_remaining: rule.reports_remaining(),
        }
    }
}

/// In-process rule state: governor's GCRA over a capacity-bounded keyed map per rule.
#[derive(Debug)]
pub struct MemoryStore {
    rules: Box<[Arc<RuleState>]>,
    clock: ClockAdapter,
}

impl MemoryStore {
    /// State for `rules` (in their layer order), each holding at most its capacity of keys.
    pub fn new(rules: &[Rule], default_capacity: usize, clock: SharedClock) -> Self {
        Self::carrying_over(rules, default_capacity, clock, None)
    }

    /// State for `rules` as [`new`](Self::new) makes it, except that a rule `previous` also
    /// has — the same name, rate, burst, capacity, covered routes and reporting; the key it counts by
    /// is not compared — keeps the state it has
    /// there, shared from then on: what a configuration reload uses, so that clients do not
    /// get a fresh allowance because an unrelated rule changed. `previous` should read the
    /// same clock.
    pub fn carrying_over(
        rules: &[Rule],
        default_capacity: usize,
        clock: SharedClock,
        previous: Option<&MemoryStore>,
    ) -> Self {
        let clock = ClockAdapter(clock);
        let rules = rules
            .iter()
            .map(|rule| {
                let identity = RuleIdentity::of(rule, default_capacity);
                let kept = previous.and_then(|previous| {
                    previous
                        .rules
                        .iter()
                        .find(|state| state.identity == identity)
                });
                if let Some(kept) = kept {
                    return kept.clone();
                }
                let state = BoundedState::new(identity.capacity, clock.0.clone());
                let interval = rule.rate.interval();
                let burst = rule.burst_size();
                // `Rate` guarantees a non-zero interval, so `with_period` always succeeds.
                let quota = Quota::with_period(interval)
                    .unwrap_or(Quota::per_second(burst))
                    .allow_burst(burst);
                let silent = RateLimiter::<Key, _, _, NoOpMiddleware<Nanos>>::new(
                    quota,
                    state.clone(),
                    clock.clone(),
                );
                let limiter = if rule.reports_remaining() {
                    Limiter::Reporting(silent.with_middleware::<StateInformationMiddleware>())
                } else {
                    Limiter::Silent(silent)
                };
                state.set_start();
                Arc::new(RuleState {
                    limiter,
                    state,
                    interval,
                    burst: burst.get(),
                    identity,
                })
            })
            .collect();
        Self { rules, clock }
    }

    /// The number of keys the rule at `index` currently remembers.
    pub fn stored_keys(&self, index: usize) -> usize {
        self.rules.get(index).map_or(0, |rule| rule.state.len())
    }
}

impl ThrottleStore for MemoryStore {
    type Future = NeverPending;

    #[inline]
    fn check(&self, rule: &Rule, key: &Key) -> Check<NeverPending> {
        let Some(state) = self.rules.get(rule.index) else {
            return Check::Ready(Err(StoreError(
                format!("rule {:?} is not part of this store", rule.name()).into(),
            )));
        };
        let decision = match &state.limiter {
            Limiter::Reporting(limiter) => limiter
                .check_key(key)
                .map(|snapshot| snapshot.remaining_burst_capacity()),
            Limiter::Silent(limiter) => limiter.check_key(key).map(|()| 0),
        };
        let outcome = match decision {
            Ok(remaining) => Outcome::Allowed {
                remaining,
                reset: state
                    .interval
                    .saturating_mul(state.burst.saturating_sub(remaining)),
            },
            Err(not_until) => {
                let retry_after = not_until.wait_time_from(self.clock.now());
                Outcome::Limited {
                    retry_after,
                    reset: retry_after
                        .saturating_add(state.interval.saturating_mul(state.burst - 1)),
                }
            }
        };
        Check::Ready(Ok(outcome))
    }
}
