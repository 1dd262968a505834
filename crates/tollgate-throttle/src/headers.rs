//! The IETF `RateLimit-Policy` and `RateLimit` fields
//! (draft-ietf-httpapi-ratelimit-headers-10, structured-field lists).

use std::time::Duration;

use http::header::HeaderName;
use http::HeaderValue;

use crate::Rule;

/// `RateLimit-Policy`: each applied rule's quota `q` per window `w` seconds.
pub(crate) static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`: each applied rule's remaining requests `r` and seconds `t` until whole again.
pub(crate) static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// `"name";q=5;w=1` for `rule`.
pub(crate) fn policy_item(rule: &Rule) -> String {
    let (quota, window) = rule.rate.quota_window();
    format!("\"{}\";q={quota};w={window}", rule.name)
}

/// Seconds until `reset`, rounded up: `t=0` would claim the allowance is whole already.
fn reset_seconds(reset: Duration) -> u64 {
    reset.as_secs() + u64::from(reset.subsec_nanos() > 0)
}

/// The rate-limit fields of one request, built as its rules are checked.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// Bit `i` set when the rule at index `i` was reported (a layer holds at most 64 rules).
    applied: u64,
    ratelimit: String,
}

impl Report {
    pub(crate) fn push(&mut self, rule: &Rule, remaining: u32, reset: Duration) {
        if rule.shadow {
            return;
        }
        self.applied |= 1 << rule.index;
        if !self.ratelimit.is_empty() {
            self.ratelimit.push_str(", ");
        }
        self.ratelimit.push('"');
        self.ratelimit.push_str(&rule.name);
        self.ratelimit.push_str("\";r=");
        self.ratelimit
            .push_str(itoa::Buffer::new().format(remaining));
        self.ratelimit.push_str(";t=");
        self.ratelimit
            .push_str(itoa::Buffer::new().format(reset_seconds(reset)));
    }

    /// `(RateLimit-Policy, RateLimit)`, or `None` when no reported rule applied.
    /// `all` is the policy field of every enforced rule, `enforced` their bits.
    pub(crate) fn finish(
        self,
        rules: &[Rule],
        all: &HeaderValue,
        enforced: u64,
    ) -> Option<(HeaderValue, HeaderValue)> {
        if self.ratelimit.is_empty() {
            return None;
        }
        let policy = if self.applied == enforced {
            all.clone()
        } else {
            let items: Vec<String> = rules
                .iter()
                .filter(|r| self.applied & (1 << r.index) != 0)
                .map(policy_item)
                .collect();
            HeaderValue::try_from(items.join(", ")).ok()?
        };
        let ratelimit = HeaderValue::try_from(self.ratelimit).ok()?;
        Some((policy, ratelimit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_rounds_up() {
        assert_eq!(reset_seconds(Duration::ZERO), 0);
        assert_eq!(reset_seconds(Duration::from_millis(200)), 1);
        assert_eq!(reset_seconds(Duration::from_millis(2000)), 2);
        assert_eq!(reset_seconds(Duration::from_millis(2001)), 3);
    }
}
