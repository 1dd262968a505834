//! The IETF `RateLimit-Policy` and `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers-10,
//! structured-field lists), as every layer that limits requests writes them: the throttle's
//! rules, and a usage plan's throttle and quota.

use std::time::Duration;

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};

/// `RateLimit-Policy`: each policy's quota `q` per window of `w` seconds.
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`: each policy's remaining requests `r` and seconds `t` until it is whole again.
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// A response's `RateLimit-Policy` (when wanted) and `RateLimit` values.
pub type RateLimitFields = (Option<HeaderValue>, HeaderValue);

/// Adds `fields` to `headers`, after any a layer further in has added: a list field may be
/// split over several lines.
#[inline]
pub fn append_fields(headers: &mut HeaderMap, (policy, ratelimit): RateLimitFields) {
    if let Some(policy) = policy {
        headers.append(RATELIMIT_POLICY.clone(), policy);
    }
    headers.append(RATELIMIT.clone(), ratelimit);
}

/// Seconds until `reset`, rounded up: `t=0` would claim the allowance is whole already.
#[inline]
pub fn reset_seconds(reset: Duration) -> u64 {
    reset.as_secs() + u64::from(reset.subsec_nanos() > 0)
}

/// A structured-field list built on the stack, spilling to the heap only for long values, so
/// a header value costs one exact-size allocation.
///
/// ```
/// use tollgate_core::ratelimit::FieldList;
///
/// let mut field = FieldList::default();
/// field.item("basic", ("r", 1), ("t", 1));
/// field.item("quota", ("r", 19), ("t", 41_220));
/// assert_eq!(field.into_value().unwrap(), r#""basic";r=1;t=1, "quota";r=19;t=41220"#);
/// ```
#[derive(Debug)]
pub struct FieldList {
    len: usize,
    inline: [u8; 96],
    spill: Vec<u8>,
}

impl Default for FieldList {
    fn default() -> Self {
        Self {
            len: 0,
            inline: [0; 96],
            spill: Vec::new(),
        }
    }
}

impl FieldList {
    /// Whether no item has been added.
    pub fn is_empty(&self) -> bool {
        self.len == 0 && self.spill.is_empty()
    }

    /// Adds the item `"name";a=1;b=2` for `(a, 1)` and `(b, 2)`, after a `, ` when the list
    /// already holds one.
    #[inline]
    pub fn item(&mut self, name: &str, (a, first): (&str, u64), (b, second): (&str, u64)) {
        if !self.is_empty() {
            self.push(b", ");
        }
        let mut number = itoa::Buffer::new();
        self.push(b"\"");
        self.push(name.as_bytes());
        self.push(b"\";");
        self.push(a.as_bytes());
        self.push(b"=");
        self.push(number.format(first).as_bytes());
        self.push(b";");
        self.push(b.as_bytes());
        self.push(b"=");
        self.push(number.format(second).as_bytes());
    }

    // Always inlined: most parts are constants, whose copies then compile to a few moves.
    #[inline(always)]
    fn push(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        if self.spill.is_empty() && end <= self.inline.len() {
            self.inline[self.len..end].copy_from_slice(bytes);
            self.len = end;
        } else {
            if self.spill.is_empty() {
                self.spill.extend_from_slice(&self.inline[..self.len]);
            }
            self.spill.extend_from_slice(bytes);
        }
    }

    /// The list as a header value; `None` when empty or when a name is not visible ASCII.
    pub fn into_value(self) -> Option<HeaderValue> {
        if self.is_empty() {
            None
        } else if self.spill.is_empty() {
            HeaderValue::from_bytes(&self.inline[..self.len]).ok()
        } else {
            HeaderValue::from_maybe_shared(bytes::Bytes::from(self.spill)).ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_fields_spill_to_the_heap_intact() {
        let mut field = FieldList::default();
        let mut expected = Vec::new();
        for n in 0..5 {
            field.item("a-rather-long-rule-name", ("r", 100 + n), ("t", 60));
            expected.push(format!("\"a-rather-long-rule-name\";r={};t=60", 100 + n));
        }
        assert_eq!(field.into_value().unwrap(), expected.join(", ").as_str());
    }

    #[test]
    fn an_empty_list_is_no_value() {
        assert!(FieldList::default().into_value().is_none());
    }

    #[test]
    fn reset_rounds_up() {
        assert_eq!(reset_seconds(Duration::ZERO), 0);
        assert_eq!(reset_seconds(Duration::from_millis(200)), 1);
        assert_eq!(reset_seconds(Duration::from_millis(2000)), 2);
        assert_eq!(reset_seconds(Duration::from_millis(2001)), 3);
    }

    #[test]
    fn fields_are_appended_after_those_already_there() {
        let mut headers = HeaderMap::new();
        headers.insert(
            RATELIMIT.clone(),
            HeaderValue::from_static("\"inner\";r=1;t=1"),
        );
        append_fields(
            &mut headers,
            (
                Some(HeaderValue::from_static("\"outer\";q=2;w=1")),
                HeaderValue::from_static("\"outer\";r=0;t=1"),
            ),
        );
        let values: Vec<_> = headers.get_all(&RATELIMIT).iter().collect();
        assert_eq!(values, ["\"inner\";r=1;t=1", "\"outer\";r=0;t=1"]);
        assert_eq!(headers[&RATELIMIT_POLICY], "\"outer\";q=2;w=1");
    }
}
