use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;
use moka::Expiry;
use tollgate_core::Principal;

/// Verified tokens, by the whole token: the map hashes it and then compares it in full, so a
/// hash collision can never hand one caller another's principal.
pub(crate) struct TokenCache {
    entries: Cache<Arc<[u8]>, Entry, foldhash::fast::RandomState>,
    ttl: Duration,
}

#[derive(Clone)]
struct Entry {
    principal: Principal,
    /// When the entry stops being used, on the authorizer's monotonic clock: the earlier of
    /// the TTL and the token's `exp`. (Monotonic, as reading it is cheaper than wall time.)
    until: Duration,
    /// How long moka keeps the entry, for reclaiming memory; `until` is what decides.
    keep: Duration,
}

struct KeepFor;

impl Expiry<Arc<[u8]>, Entry> for KeepFor {
    fn expire_after_create(&self, _: &Arc<[u8]>, entry: &Entry, _: Instant) -> Option<Duration> {
        Some(entry.keep)
    }
}

impl TokenCache {
    pub(crate) fn new(capacity: u64, ttl: Duration) -> Self {
        Self {
            entries: Cache::builder()
                .max_capacity(capacity)
                .expire_after(KeepFor)
                .build_with_hasher(foldhash::fast::RandomState::default()),
            ttl,
        }
    }

    /// The principal of a token verified before, if its entry is still good at `now`.
    #[inline]
    pub(crate) fn get(&self, token: &[u8], now: Duration) -> Option<Principal> {
        let entry = self.entries.get(token)?;
        if now >= entry.until {
            self.entries.invalidate(token);
            return None;
        }
        Some(entry.principal)
    }

    /// Remembers a verified token until the earlier of the TTL and its `exp` (seconds since
    /// the epoch, compared with `wall`, the wall-clock time now): a cached token never
    /// outlives its expiry. `now` is the monotonic time now.
    pub(crate) fn insert(
        &self,
        token: &[u8],
        principal: &Principal,
        exp: u64,
        wall: Duration,
        now: Duration,
    ) {
        let left = Duration::from_secs(exp).saturating_sub(wall);
        let keep = self.ttl.min(left);
        if keep.is_zero() {
            return;
        }
        let until = now + keep;
        self.entries.insert(
            Arc::from(token),
            Entry {
                principal: principal.clone(),
                until,
                keep,
            },
        );
    }

    #[cfg(test)]
    pub(crate) fn run_pending_tasks(&self) {
        self.entries.run_pending_tasks();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> u64 {
        self.entries.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal() -> Principal {
        Principal::builder().subject("u").build()
    }

    #[test]
    fn an_entry_ends_at_the_tokens_exp_even_when_the_ttl_is_longer() {
        let cache = TokenCache::new(100, Duration::from_secs(300));
        let now = Duration::from_secs(1_000);
        cache.insert(b"t", &principal(), 1_010, now, now);
        assert!(cache.get(b"t", now + Duration::from_secs(9)).is_some());
        assert!(cache.get(b"t", Duration::from_secs(1_010)).is_none());
    }

    #[test]
    fn an_entry_ends_at_the_ttl_when_the_token_lives_longer() {
        let cache = TokenCache::new(100, Duration::from_secs(60));
        let now = Duration::from_secs(1_000);
        cache.insert(b"t", &principal(), 10_000, now, now);
        assert!(cache.get(b"t", now + Duration::from_secs(59)).is_some());
        assert!(cache.get(b"t", now + Duration::from_secs(60)).is_none());
    }

    #[test]
    fn expired_tokens_and_a_zero_ttl_are_not_stored() {
        let cache = TokenCache::new(100, Duration::from_secs(60));
        cache.insert(
            b"old",
            &principal(),
            999,
            Duration::from_secs(1_000),
            Duration::from_secs(1_000),
        );
        let off = TokenCache::new(100, Duration::ZERO);
        off.insert(
            b"t",
            &principal(),
            10_000,
            Duration::from_secs(1_000),
            Duration::from_secs(1_000),
        );
        cache.run_pending_tasks();
        off.run_pending_tasks();
        assert_eq!((cache.len(), off.len()), (0, 0));
    }

    #[test]
    fn lookups_compare_the_whole_token() {
        let cache = TokenCache::new(100, Duration::from_secs(60));
        let now = Duration::from_secs(1_000);
        cache.insert(b"token-a", &principal(), 10_000, now, now);
        assert!(cache.get(b"token-b", now).is_none());
        assert!(cache.get(b"token-a", now).is_some());
    }
}
