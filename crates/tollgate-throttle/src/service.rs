use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use tollgate_core::ratelimit::{append_fields, RateLimitFields};
use tollgate_core::{BodyMode, Rejection, RequestHead, WrapBody};
use tower::Service;

use crate::future::ResponseFuture;
use crate::headers::Report;
use crate::store::{Check, CheckAll, Outcome, StoreError};
use crate::{AllowedFields, MissingKey, Rule, StoreFailure};

use crate::store::{MemoryStore, ThrottleStore};

/// The service a [`ThrottleLayer`](crate::ThrottleLayer) wraps around an inner service.
pub struct Throttle<S, St = MemoryStore, M = WrapBody> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared<St>>,
    pub(crate) mode: M,
}

impl<S: Clone, St, M: Clone> Clone for Throttle<S, St, M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            mode: self.mode.clone(),
        }
    }
}

impl<S: fmt::Debug, St, M> fmt::Debug for Throttle<S, St, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Throttle")
            .field("inner", &self.inner)
            .field("rules", &self.shared.rules)
            .finish_non_exhaustive()
    }
}

impl<S, St, M, ReqBody, ResBody> Service<Request<ReqBody>> for Throttle<S, St, M>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    St: ThrottleStore,
    M: BodyMode<ResBody>,
{
    type Response = Response<M::Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, St, M>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let mut report = Report::default();
        let step = self
            .shared
            .evaluate(&RequestHead::of(&request), 0, &mut report);
        match step {
            Step::Pass(headers) => ResponseFuture::inner(self.inner.call(request), headers),
            Step::Reject(rejection) => ResponseFuture::rejected(rejection),
            Step::Wait {
                check,
                rule,
                client,
            } => {
                // The ready service goes with the request; a clone takes its place here.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::waiting(
                    check,
                    inner,
                    request,
                    self.shared.clone(),
                    rule,
                    client,
                    report,
                )
            }
            Step::WaitAll { check, rules } => {
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::waiting_all(check, rules, inner, request, self.shared.clone())
            }
        }
    }
}

/// What every clone of a layer and its services shares.
pub(crate) struct Shared<St> {
    pub(crate) rules: Box<[Rule]>,
    pub(crate) store: St,
    pub(crate) allowed_fields: AllowedFields,
    pub(crate) on_store_error: StoreFailure,
    /// `RateLimit-Policy` of every enforced rule, and those rules' bits.
    pub(crate) all_policies: HeaderValue,
    pub(crate) enforced: u64,
}

/// What became of a request after some of its rules were checked.
pub(crate) enum Step<F> {
    /// Every applicable rule allowed it (or only shadow rules refused).
    Pass(Option<RateLimitFields>),
    /// A rule refused it. Boxed so the allowed path does not move a refusal's worth of bytes.
    Reject(Box<Rejection>),
    /// The rule at `rule` is being decided by a future; `client` is kept for the log.
    Wait {
        check: F,
        rule: usize,
        client: Option<IpAddr>,
    },
    /// Every applicable rule is being decided by one future (a store that batches); each
    /// rule's index and client address, in order.
    WaitAll {
        check: CheckAll,
        rules: Box<[(usize, Option<IpAddr>)]>,
    },
}

impl<St: ThrottleStore> Shared<St> {
    /// Checks the rules from index `from` on, narrowest first, stopping at the first refusal so
    /// that a refused request takes nothing from the wider (shared) budgets after it.
    #[inline]
    pub(crate) fn evaluate(
        &self,
        request: &RequestHead<'_>,
        from: usize,
        report: &mut Report,
    ) -> Step<St::Future> {
        if St::BATCHES && from == 0 {
            if let Some(step) = self.evaluate_together(request) {
                return step;
            }
        }
        for rule in self.rules.get(from..).unwrap_or_default() {
            if !rule.applies_to(request) {
                continue;
            }
            let key = match rule.extractor.extract(request) {
                Ok(key) => key,
                Err(error) => {
                    tracing::debug!(rule = %rule.name, %error, "tollgate throttle: no key for request");
                    match rule.on_missing_key {
                        MissingKey::Reject => return Step::Reject(Box::new(error.rejection())),
                        MissingKey::Skip => continue,
                    }
                }
            };
            match self.store.check(rule, &key) {
                Check::Ready(result) => {
                    if let Some(rejection) = self.decide(rule, key.as_ip(), result, report) {
                        return Step::Reject(Box::new(rejection));
                    }
                }
                Check::Pending(check) => {
                    return Step::Wait {
                        check,
                        rule: rule.index,
                        client: key.as_ip(),
                    }
                }
            }
        }
        self.pass(report)
    }

    /// Every applicable rule allowed the request: its fields, if any.
    #[inline]
    fn pass(&self, report: &mut Report) -> Step<St::Future> {
        Step::Pass(if report.is_empty() {
            None
        } else {
            let policy = (self.allowed_fields == AllowedFields::RateLimitAndPolicy)
                .then_some((&self.all_policies, self.enforced));
            std::mem::take(report).finish(&self.rules, policy)
        })
    }

    /// The applicable rules of a request offered to the store at once; `None` when fewer than
    /// two apply, when a rule that refuses requests without its key finds none (rule by rule,
    /// the rules before it are decided first, and one of them may refuse differently), or when
    /// the store declines: the rules are then checked one by one.
    fn evaluate_together(&self, request: &RequestHead<'_>) -> Option<Step<St::Future>> {
        let mut keyed = Vec::with_capacity(self.rules.len());
        for rule in &*self.rules {
            if !rule.applies_to(request) {
                continue;
            }
            match rule.extractor.extract(request) {
                Ok(key) => keyed.push((rule, key)),
                Err(_) => match rule.on_missing_key {
                    MissingKey::Reject => return None,
                    // Logged when the rules are applied one by one; here it is only left out.
                    MissingKey::Skip => continue,
                },
            }
        }
        if keyed.len() < 2 {
            return None;
        }
        let checks: Vec<(&Rule, &tollgate_core::Key)> =
            keyed.iter().map(|(rule, key)| (*rule, key)).collect();
        let check = self.store.check_all(&checks)?;
        let rules = keyed
            .iter()
            .map(|(rule, key)| (rule.index, key.as_ip()))
            .collect();
        Some(Step::WaitAll { check, rules })
    }

    /// Applies the outcomes of rules decided together. The store must have decided every rule,
    /// or stopped at one that refuses; any other answer is a store failure, so that no rule is
    /// skipped unnoticed.
    pub(crate) fn decide_all(
        &self,
        rules: &[(usize, Option<IpAddr>)],
        result: Result<Vec<Outcome>, StoreError>,
        report: &mut Report,
    ) -> Step<St::Future> {
        let error = match result {
            Ok(outcomes) if outcomes.len() <= rules.len() => {
                let decided = outcomes.len();
                for (&(index, client), outcome) in rules.iter().zip(outcomes) {
                    let Some(rule) = self.rules.get(index) else {
                        continue;
                    };
                    if let Some(rejection) = self.decide(rule, client, Ok(outcome), report) {
                        return Step::Reject(Box::new(rejection));
                    }
                }
                if decided == rules.len() {
                    return self.pass(report);
                }
                StoreError(
                    format!(
                        "the store decided {decided} of {} rules and refused none",
                        rules.len()
                    )
                    .into(),
                )
            }
            Ok(outcomes) => StoreError(
                format!(
                    "the store answered {} decisions for {} rules",
                    outcomes.len(),
                    rules.len()
                )
                .into(),
            ),
            Err(error) => error,
        };
        // The store failed once for all of them: its policy applies once.
        let first = rules
            .first()
            .and_then(|&(index, client)| Some((self.rules.get(index)?, client)));
        if let Some((rule, client)) = first {
            if let Some(rejection) = self.decide(rule, client, Err(error), report) {
                return Step::Reject(Box::new(rejection));
            }
        }
        self.pass(report)
    }

    /// Applies one rule's outcome; returns the refusal if the request must stop here.
    #[inline]
    pub(crate) fn decide(
        &self,
        rule: &Rule,
        client: Option<IpAddr>,
        result: Result<Outcome, StoreError>,
        report: &mut Report,
    ) -> Option<Rejection> {
        match result {
            Ok(Outcome::Allowed { remaining, reset }) => {
                rule.counters().allowed.increment(1);
                tracing::trace!(rule = %rule.name, remaining, "tollgate throttle: allowed");
                if self.allowed_fields != AllowedFields::None {
                    report.push(&self.rules, rule, remaining, reset);
                }
                None
            }
            Ok(Outcome::Limited { retry_after, reset }) => {
                rule.counters().limited.increment(1);
                // Only IP keys are logged: other keys may be credentials a user chose to key by.
                let client = client.map(tracing::field::display);
                if rule.shadow {
                    tracing::info!(rule = %rule.name, client, ?retry_after, "tollgate throttle: would limit (shadow)");
                    return None;
                }
                tracing::info!(rule = %rule.name, client, ?retry_after, "tollgate throttle: limited");
                report.push(&self.rules, rule, 0, reset);
                let mut rejection = Rejection::clone(&rule.refusal).with_retry_after(retry_after);
                let all = Some((&self.all_policies, self.enforced));
                if let Some(fields) = std::mem::take(report).finish(&self.rules, all) {
                    append_fields(rejection.headers_mut(), fields);
                }
                Some(rejection)
            }
            Err(error) => {
                if store_warning_due() {
                    tracing::warn!(rule = %rule.name, %error, policy = ?self.on_store_error, "tollgate throttle: store failed");
                } else {
                    tracing::debug!(rule = %rule.name, %error, policy = ?self.on_store_error, "tollgate throttle: store failed");
                }
                match self.on_store_error {
                    StoreFailure::Allow => None,
                    StoreFailure::Reject => Some(Rejection::unavailable(Duration::from_secs(1))),
                }
            }
        }
    }
}

/// Whether a store failure should be a warning: at most one a second. During an outage every
/// request fails alike, and a shared store logs its own transitions, so one line a second says
/// it all where thousands would drown the log.
fn store_warning_due() -> bool {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(u64::MAX);
    let second = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    LAST.swap(second, std::sync::atomic::Ordering::Relaxed) != second
}
