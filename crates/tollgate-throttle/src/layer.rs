use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use tollgate_core::{InnerBody, Rejection, SharedClock, WrapBody};
use tower::Layer;

use crate::headers;
use crate::service::Shared;
use crate::store::{MemoryStore, ThrottleStore};
use crate::{Rule, Throttle};

/// Keys each rule remembers unless told otherwise: about 8 MB per rule for IP keys, plus the
/// header values of header keys (at most `MAX_KEY_BYTES` each).
pub const DEFAULT_CAPACITY: usize = 100_000;

/// The longest time a drained allowance may take to come back (burst × interval): governor
/// counts in u64 nanoseconds, which a few centuries overflow.
const MAX_REFILL: Duration = Duration::from_secs(100 * 365 * 86_400);

/// The most rules one layer holds.
pub const MAX_RULES: usize = 64;

/// What to do when the store cannot decide (a shared store that is unreachable).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreFailure {
    /// Let the request through and log it: an outage of the limiter does not take the API down.
    #[default]
    Allow,
    /// Refuse with 503 and `Retry-After: 1`.
    Reject,
}

/// Which rate-limit fields allowed responses carry. Refusals always carry both.
///
/// `RateLimit` (remaining requests and seconds until the allowance is whole) is what a client
/// paces itself by; `RateLimit-Policy` is the same on every response, so sending it on each
/// allowed one costs a header per response for no new information.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AllowedFields {
    /// No rate-limit fields on allowed responses.
    None,
    /// `RateLimit` only.
    #[default]
    RateLimit,
    /// `RateLimit` and `RateLimit-Policy`.
    RateLimitAndPolicy,
}

/// Why a throttle layer could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ThrottleError {
    /// The layer has no rules.
    #[error("a throttle layer needs at least one rule")]
    NoRules,
    /// More rules than [`MAX_RULES`].
    #[error("a throttle layer holds at most {MAX_RULES} rules, got {0}")]
    TooManyRules(usize),
    /// Two rules share a name.
    #[error("two rules are named {0:?}; rule names must be unique")]
    DuplicateRule(String),
    /// A rule name that cannot appear in a `RateLimit` header.
    #[error("invalid rule name {0:?}: expected 1 to 64 characters of A-Z, a-z, 0-9, '-', '_', '.' or ':'")]
    InvalidRuleName(String),
    /// A rule with burst 0, which would refuse everything.
    #[error("rule {0:?} has burst 0; the burst must be at least 1")]
    ZeroBurst(String),
    /// A rule that could remember no key, and so would limit nothing.
    #[error("rule {0:?} has capacity 0; it must remember at least one key")]
    ZeroCapacity(String),
    /// A rate whose allowance takes longer to come back than the limiter can count.
    #[error("rule {rule:?}: {reason}")]
    RateOutOfRange {
        /// The rule's name.
        rule: String,
        /// What is out of range.
        reason: &'static str,
    },
    /// A configuration value is invalid.
    #[error("invalid throttle configuration: {0}")]
    Config(String),
}

/// Throttles requests by rules; see the [crate docs](crate) for an example.
///
/// Clones share one set of limiters, so the limit holds across every connection and every
/// clone axum makes of the service.
///
/// `M` is how responses carry bodies: [`WrapBody`] by default, [`InnerBody`] after
/// [`ThrottleLayer::keep_inner_body`].
#[must_use]
pub struct ThrottleLayer<St = MemoryStore, M = WrapBody> {
    pub(crate) shared: Arc<Shared<St>>,
    mode: M,
}

impl<St, M: Clone> Clone for ThrottleLayer<St, M> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            mode: self.mode.clone(),
        }
    }
}

impl<St, M> fmt::Debug for ThrottleLayer<St, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThrottleLayer")
            .field("rules", &self.shared.rules)
            .finish_non_exhaustive()
    }
}

impl ThrottleLayer {
    /// Starts building a throttle layer.
    pub fn builder() -> ThrottleBuilder {
        ThrottleBuilder::default()
    }
}

impl<St, M> ThrottleLayer<St, M> {
    /// The rules in evaluation order: per-client rules first, then per-route, then global.
    pub fn rules(&self) -> &[Rule] {
        &self.shared.rules
    }

    /// Keeps the inner service's body type, building refusals in it: for inner bodies made
    /// from bytes, such as axum's `Body` and `Full<Bytes>`. Responses then pass through
    /// untouched, which under axum's `Router::layer` also spares axum boxing a wrapped body on
    /// every response.
    pub fn keep_inner_body(self) -> ThrottleLayer<St, InnerBody> {
        ThrottleLayer {
            shared: self.shared,
            mode: InnerBody,
        }
    }
}

impl<M> ThrottleLayer<MemoryStore, M> {
    /// How many keys the rule named `rule` remembers now, or `None` for an unknown rule.
    pub fn stored_keys(&self, rule: &str) -> Option<usize> {
        let rule = self.shared.rules.iter().find(|r| &*r.name == rule)?;
        Some(self.shared.store.stored_keys(rule.index))
    }
}

impl<S, St, M: Clone> Layer<S> for ThrottleLayer<St, M> {
    type Service = Throttle<S, St, M>;

    fn layer(&self, inner: S) -> Self::Service {
        Throttle {
            inner,
            shared: self.shared.clone(),
            mode: self.mode.clone(),
        }
    }
}

/// Builds a [`ThrottleLayer`].
#[derive(Debug)]
#[must_use]
pub struct ThrottleBuilder {
    rules: Vec<Rule>,
    capacity: usize,
    clock: SharedClock,
    allowed_fields: AllowedFields,
    on_store_error: StoreFailure,
}

impl Default for ThrottleBuilder {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            capacity: DEFAULT_CAPACITY,
            clock: SharedClock::default(),
            allowed_fields: AllowedFields::default(),
            on_store_error: StoreFailure::default(),
        }
    }
}

impl ThrottleBuilder {
    /// Adds a rule. A request must pass every rule that applies to it.
    pub fn rule(mut self, rule: Rule) -> Self {
        self.rules.push(rule);
        self
    }

    /// The most keys each rule remembers (default [`DEFAULT_CAPACITY`]); past it, idle keys are
    /// dropped first.
    pub fn capacity(mut self, keys: usize) -> Self {
        self.capacity = keys;
        self
    }

    /// The clock (default: the system clock). Tests pass a `ManualClock`.
    pub fn clock(mut self, clock: impl Into<SharedClock>) -> Self {
        self.clock = clock.into();
        self
    }

    /// Which rate-limit fields allowed responses carry (default [`AllowedFields::RateLimit`]).
    /// Refusals always carry `RateLimit` and `RateLimit-Policy`.
    pub fn allowed_fields(mut self, fields: AllowedFields) -> Self {
        self.allowed_fields = fields;
        self
    }

    /// What to do when the store cannot decide (default [`StoreFailure::Allow`]).
    pub fn on_store_error(mut self, policy: StoreFailure) -> Self {
        self.on_store_error = policy;
        self
    }

    /// Builds the layer with in-memory state.
    pub fn build(self) -> Result<ThrottleLayer, ThrottleError> {
        let capacity = self.capacity;
        self.build_with_store(|rules, clock| MemoryStore::new(rules, capacity, clock.clone()))
    }

    /// Builds the layer with state in a store made by `make` from the final, ordered rules.
    pub fn build_with_store<St: ThrottleStore>(
        mut self,
        make: impl FnOnce(&[Rule], &SharedClock) -> St,
    ) -> Result<ThrottleLayer<St>, ThrottleError> {
        if self.rules.is_empty() {
            return Err(ThrottleError::NoRules);
        }
        if self.rules.len() > MAX_RULES {
            return Err(ThrottleError::TooManyRules(self.rules.len()));
        }
        validate(&self.rules, self.capacity)?;
        // Narrowest budgets first: a request its own client's rule refuses never reaches, and
        // so never spends, the budgets everyone shares.
        self.rules.sort_by_key(Rule::scope);
        let mut enforced = 0;
        for (index, rule) in self.rules.iter_mut().enumerate() {
            rule.index = index;
            rule.reports_remaining = self.allowed_fields != AllowedFields::None && !rule.shadow;
            rule.refusal = Arc::new(
                Rejection::throttled(Duration::ZERO)
                    .with_detail(format!("rate limit \"{}\" exceeded", rule.name))
                    .prerendered(),
            );
            rule.ratelimit_values = Arc::new(headers::ValueCache::for_rule(rule));
            if !rule.shadow {
                enforced |= 1 << index;
            }
        }
        let all_policies = self
            .rules
            .iter()
            .filter(|r| !r.shadow)
            .map(headers::policy_item)
            .collect::<Vec<_>>()
            .join(", ");
        let all_policies = HeaderValue::try_from(all_policies)
            .map_err(|_| ThrottleError::Config("rule names must be visible ASCII".into()))?;
        let store = make(&self.rules, &self.clock);
        Ok(ThrottleLayer {
            mode: WrapBody,
            shared: Arc::new(Shared {
                rules: self.rules.into_boxed_slice(),
                store,
                allowed_fields: self.allowed_fields,
                on_store_error: self.on_store_error,
                all_policies,
                enforced,
            }),
        })
    }
}

/// Checks rules as [`ThrottleBuilder::build`] does: valid and unique names, a burst and a
/// capacity of at least one, and a refill time the clock can count.
fn validate(rules: &[Rule], default_capacity: usize) -> Result<(), ThrottleError> {
    let mut names = HashSet::new();
    for rule in rules {
        let valid = (1..=64).contains(&rule.name.len())
            && rule
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
        if !valid {
            return Err(ThrottleError::InvalidRuleName(rule.name.to_string()));
        }
        if !names.insert(rule.name.clone()) {
            return Err(ThrottleError::DuplicateRule(rule.name.to_string()));
        }
        if rule.burst == Some(0) {
            return Err(ThrottleError::ZeroBurst(rule.name.to_string()));
        }
        if rule.capacity.unwrap_or(default_capacity) == 0 {
            return Err(ThrottleError::ZeroCapacity(rule.name.to_string()));
        }
        if rule
            .checked_refill_time()
            .is_none_or(|refill| refill > MAX_REFILL)
        {
            return Err(ThrottleError::RateOutOfRange {
                rule: rule.name.to_string(),
                reason: "burst × interval must be at most 100 years",
            });
        }
    }
    Ok(())
}

/// Checks `rules` as [`ThrottleBuilder::build`] does and numbers them in order, for a
/// [`ThrottleStore`] that serves a layer other than [`ThrottleLayer`].
///
/// The usage-plan layer keeps its plan throttles this way, so one GCRA implementation (and one
/// store seam, in memory or shared) serves both layers. A store made with
/// [`MemoryStore::new`] from the numbered rules then checks each of them by its index.
pub fn index_rules(rules: &mut [Rule], default_capacity: usize) -> Result<(), ThrottleError> {
    validate(rules, default_capacity)?;
    for (index, rule) in rules.iter_mut().enumerate() {
        rule.index = index;
    }
    Ok(())
}
