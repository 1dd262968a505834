//! The rules' `RateLimit-Policy` and `RateLimit` fields, built with
//! [`tollgate_core::ratelimit`].

use std::sync::OnceLock;
use std::time::Duration;

use http::HeaderValue;
use tollgate_core::ratelimit::{reset_seconds, FieldList, RateLimitFields};

use crate::Rule;

/// `"name";q=5;w=1` for `rule`.
pub(crate) fn policy_item(rule: &Rule) -> String {
    let (quota, window) = rule.rate.quota_window();
    format!("\"{}\";q={quota};w={window}", rule.name)
}

/// The largest table of ready-made `RateLimit` values a rule keeps: (burst + 1) × (refill
/// seconds + 1) entries of at most a few dozen bytes each.
const MAX_CACHED_VALUES: u64 = 4096;

/// Ready-made `RateLimit` values of one rule for each `(r, t)` pair, made on first use.
///
/// A request that meets one rule (the common case) then clones a value instead of formatting,
/// validating and allocating one.
#[derive(Debug, Default)]
pub(crate) struct ValueCache {
    width: u64,
    values: Box<[OnceLock<HeaderValue>]>,
}

impl ValueCache {
    pub(crate) fn for_rule(rule: &Rule) -> Self {
        let burst = u64::from(rule.burst_size().get());
        let width = reset_seconds(rule.refill_time()) + 1;
        let size = (burst + 1).saturating_mul(width);
        if size > MAX_CACHED_VALUES {
            return Self::default();
        }
        Self {
            width,
            values: (0..size).map(|_| OnceLock::new()).collect(),
        }
    }

    fn value(&self, rule: &Rule, remaining: u32, reset: u64) -> Option<HeaderValue> {
        let make = || {
            let mut field = FieldList::default();
            push_item(&mut field, rule, remaining, reset);
            field.into_value()
        };
        if reset >= self.width {
            return make();
        }
        let index = usize::try_from(u64::from(remaining) * self.width + reset).ok()?;
        match self.values.get(index) {
            Some(cell) => match cell.get() {
                Some(value) => Some(value.clone()),
                None => {
                    let value = make()?;
                    Some(cell.get_or_init(|| value).clone())
                }
            },
            None => make(),
        }
    }
}

fn push_item(field: &mut FieldList, rule: &Rule, remaining: u32, reset: u64) {
    field.item(&rule.name, ("r", u64::from(remaining)), ("t", reset));
}

/// The rate-limit fields of one request, built as its rules are checked.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// Bit `i` set when the rule at index `i` was reported (a layer holds at most 64 rules).
    applied: u64,
    /// The only item so far, as `(rule index, r, t)`: served from the rule's cache.
    single: Option<(usize, u32, u64)>,
    /// The items once there are several.
    several: Option<FieldList>,
}

impl Report {
    pub(crate) fn is_empty(&self) -> bool {
        self.applied == 0
    }

    #[inline]
    pub(crate) fn push(&mut self, rules: &[Rule], rule: &Rule, remaining: u32, reset: Duration) {
        if rule.shadow {
            return;
        }
        self.applied |= 1 << rule.index;
        let reset = reset_seconds(reset);
        if self.applied.count_ones() == 1 {
            self.single = Some((rule.index, remaining, reset));
            return;
        }
        self.spill(rules, rule, remaining, reset);
    }

    /// Moves to the formatted list once a second rule reports.
    #[cold]
    fn spill(&mut self, rules: &[Rule], rule: &Rule, remaining: u32, reset: u64) {
        let field = self.several.get_or_insert_with(FieldList::default);
        if let Some((index, first_remaining, first_reset)) = self.single.take() {
            if let Some(first) = rules.get(index) {
                push_item(field, first, first_remaining, first_reset);
            }
        }
        push_item(field, rule, remaining, reset);
    }

    /// `(RateLimit-Policy, RateLimit)`, or `None` when no reported rule applied. `policy`, when
    /// the policy field is wanted, is the field of every enforced rule and those rules' bits.
    pub(crate) fn finish(
        self,
        rules: &[Rule],
        policy: Option<(&HeaderValue, u64)>,
    ) -> Option<RateLimitFields> {
        if self.applied == 0 {
            return None;
        }
        let policy = match policy {
            None => None,
            Some((all, enforced)) if self.applied == enforced => Some(all.clone()),
            Some(_) => {
                let items: Vec<String> = rules
                    .iter()
                    .filter(|r| self.applied & (1 << r.index) != 0)
                    .map(policy_item)
                    .collect();
                Some(HeaderValue::try_from(items.join(", ")).ok()?)
            }
        };
        let ratelimit = match self.single {
            Some((index, remaining, reset)) => {
                let rule = rules.get(index)?;
                rule.ratelimit_values.value(rule, remaining, reset)?
            }
            None => self.several?.into_value()?,
        };
        Some((policy, ratelimit))
    }
}
