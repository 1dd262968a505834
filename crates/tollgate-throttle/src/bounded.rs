//! Bounded keyed state for governor's GCRA.
//!
//! governor's own keyed stores grow with every key until someone calls `retain_recent`, so a
//! flood of spoofed client keys would grow memory without limit. This store holds at most a
//! configured number of keys, counted across all shards, so a store sized for N active keys
//! remembers all N. When the store (or a key's shard, which may hold up to twice its even
//! share) is full, the shard first drops its keys whose allowance has fully come back — for
//! GCRA such a key is indistinguishable from an absent one, so nothing is lost — and only when
//! none has, its key closest to full (lowest theoretical arrival time), which then starts
//! afresh.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use governor::clock::Clock as GovernorClock;
use governor::nanos::Nanos;
use governor::state::StateStore;
use hashbrown::HashTable;
use tollgate_core::{Clock, Key, SharedClock};

/// Keys per shard before a shard is split further: small enough that the full-shard sweep
/// stays in the low microseconds, large enough that tiny capacities are not spread thin.
const KEYS_PER_SHARD: usize = 1024;
const MAX_SHARDS: usize = 1024;
/// How far past its even share a shard may fill while the store as a whole has room: keys do
/// not hash evenly, and a shard that evicted at its share would forget active keys early.
const SHARD_SLACK: usize = 2;

/// governor's view of a [`SharedClock`]: nanoseconds since the clock's origin.
#[derive(Clone, Debug)]
pub(crate) struct ClockAdapter(pub(crate) SharedClock);

impl GovernorClock for ClockAdapter {
    type Instant = Nanos;

    #[inline]
    fn now(&self) -> Nanos {
        Nanos::from(self.0.now())
    }
}

#[derive(Debug)]
struct Shard {
    table: HashTable<(Key, u64)>,
    /// The most keys this shard holds, whatever room the store has.
    limit: usize,
}

#[derive(Debug)]
pub(crate) struct BoundedInner {
    shards: Box<[Mutex<Shard>]>,
    shard_shift: u32,
    capacity: usize,
    /// Keys stored plus slots reserved for keys being stored: never above `capacity` for long,
    /// and the stored keys never above it at all.
    stored: AtomicUsize,
    hasher: foldhash::quality::RandomState,
    clock: SharedClock,
    /// The limiter's start in clock nanoseconds, or later; see [`BoundedState::set_start`].
    start: AtomicU64,
}

/// A capacity-bounded, sharded map from key to GCRA theoretical arrival time.
#[derive(Clone, Debug)]
pub(crate) struct BoundedState(Arc<BoundedInner>);

impl BoundedState {
    pub(crate) fn new(capacity: usize, clock: SharedClock) -> Self {
        let wanted = capacity.div_ceil(KEYS_PER_SHARD).clamp(1, MAX_SHARDS);
        let shard_count = wanted.next_power_of_two().min(MAX_SHARDS);
        let limit = capacity
            .div_ceil(shard_count)
            .saturating_mul(SHARD_SLACK)
            .min(capacity);
        let shards = (0..shard_count)
            .map(|_| {
                Mutex::new(Shard {
                    table: HashTable::new(),
                    limit,
                })
            })
            .collect();
        Self(Arc::new(BoundedInner {
            shards,
            shard_shift: shard_count.trailing_zeros(),
            capacity,
            stored: AtomicUsize::new(0),
            hasher: foldhash::quality::RandomState::default(),
            clock,
            start: AtomicU64::new(u64::MAX),
        }))
    }

    /// Claims room for one more key in the store, if there is any.
    fn reserve(&self) -> bool {
        let stored = &self.0.stored;
        if stored.fetch_add(1, Ordering::AcqRel) < self.0.capacity {
            return true;
        }
        stored.fetch_sub(1, Ordering::AcqRel);
        false
    }

    fn release(&self, keys: usize) {
        self.0.stored.fetch_sub(keys, Ordering::AcqRel);
    }

    /// Records when the limiter started, read after governor's `RateLimiter::new` took its own
    /// start: ours is then never earlier, so "now" for eviction is never later than governor's
    /// and a key is only dropped when it is surely idle.
    pub(crate) fn set_start(&self) {
        let now = Nanos::from(self.0.clock.now()).as_u64();
        self.0.start.store(now, Ordering::Relaxed);
    }

    /// The number of keys held.
    pub(crate) fn len(&self) -> usize {
        self.0.shards.iter().map(|s| lock(s).table.len()).sum()
    }

    #[inline]
    fn shard(&self, hash: u64) -> &Mutex<Shard> {
        // Bits 32.. pick the shard: hashbrown uses the low bits for the bucket and the top
        // seven for its control bytes, so the shard choice does not skew either.
        let index = if self.0.shard_shift == 0 {
            0
        } else {
            ((hash >> 32) as usize) & ((1 << self.0.shard_shift) - 1)
        };
        &self.0.shards[index]
    }

    fn elapsed(&self) -> u64 {
        let now = Nanos::from(self.0.clock.now()).as_u64();
        now.saturating_sub(self.0.start.load(Ordering::Relaxed))
    }
}

fn lock(shard: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    // A panic while holding the lock cannot leave a half-written u64 behind.
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shard {
    /// Makes room in this shard: drops every idle key, or else the one closest to idle.
    /// Returns how many keys went.
    fn evict(&mut self, now: u64, hasher: &foldhash::quality::RandomState) -> usize {
        let before = self.table.len();
        let mut oldest = u64::MAX;
        self.table.retain(|(_, tat)| {
            oldest = oldest.min(*tat);
            *tat > now
        });
        if self.table.len() < before {
            return before - self.table.len();
        }
        let Some(hash) = self
            .table
            .iter()
            .find(|(_, tat)| *tat == oldest)
            .map(|(key, _)| hasher.hash_one(key))
        else {
            return 0;
        };
        match self.table.find_entry(hash, |(_, tat)| *tat == oldest) {
            Ok(entry) => {
                entry.remove();
                1
            }
            Err(_) => 0,
        }
    }
}

impl StateStore for BoundedState {
    type Key = Key;

    #[inline]
    fn measure_and_replace<T, F, E>(&self, key: &Key, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let hasher = &self.0.hasher;
        let hash = hasher.hash_one(key);
        let mut shard = lock(self.shard(hash));
        if let Some((_, tat)) = shard.table.find_mut(hash, |(k, _)| k == key) {
            let (outcome, next) = f(Some(Nanos::new(*tat)))?;
            *tat = next.as_u64();
            return Ok(outcome);
        }
        let (outcome, next) = f(None)?;
        if self.reserve() {
            if shard.table.len() >= shard.limit {
                let freed = shard.evict(self.elapsed(), hasher);
                self.release(freed);
            }
        } else {
            // The store is full: make room in this key's shard, then claim it.
            let freed = shard.evict(self.elapsed(), hasher);
            self.release(freed);
            if !self.reserve() {
                // Nothing to drop here, or another shard took the room first: the key is
                // decided as new and not remembered, as if it had been evicted at once.
                return Ok(outcome);
            }
        }
        shard
            .table
            .insert_unique(hash, (key.detached(), next.as_u64()), |(k, _)| {
                hasher.hash_one(k)
            });
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};
    use std::num::NonZeroU32;
    use std::time::Duration;

    use governor::middleware::NoOpMiddleware;
    use governor::{Quota, RateLimiter};

    type Limiter = RateLimiter<Key, BoundedState, ClockAdapter, NoOpMiddleware<Nanos>>;
    use tollgate_core::ManualClock;

    fn limiter(capacity: usize, burst: u32, clock: &ManualClock) -> (Limiter, BoundedState) {
        let state = BoundedState::new(capacity, clock.clone().into());
        let quota = Quota::with_period(Duration::from_secs(1))
            .unwrap()
            .allow_burst(NonZeroU32::new(burst).unwrap());
        let limiter = Limiter::new(quota, state.clone(), ClockAdapter(clock.clone().into()));
        state.set_start();
        (limiter, state)
    }

    fn ip_key(n: u32) -> Key {
        Key::ip(IpAddr::V4(Ipv4Addr::from(n)))
    }

    #[test]
    fn never_holds_more_keys_than_capacity() {
        let clock = ManualClock::new();
        let (limiter, state) = limiter(1000, 5, &clock);
        for n in 0..20_000 {
            limiter.check_key(&ip_key(n)).unwrap();
            assert!(state.len() <= 1000);
        }
        assert_eq!(state.len(), 1000);
    }

    #[test]
    fn a_full_store_drops_idle_keys_first_and_keeps_active_ones() {
        let clock = ManualClock::new();
        let (limiter, state) = limiter(64, 2, &clock);
        let hot = ip_key(u32::MAX);
        limiter.check_key(&hot).unwrap();
        limiter.check_key(&hot).unwrap();
        // 63 keys fill the store at t = 0; their allowance is whole again at t = 1 s.
        for n in 0..63 {
            limiter.check_key(&ip_key(n)).unwrap();
        }
        assert_eq!(state.len(), 64);
        // At t = 1.5 s they are idle, the hot key (drained to t = 2 s) is not.
        clock.advance(Duration::from_millis(1500));
        limiter.check_key(&ip_key(1000)).unwrap();
        assert_eq!(
            state.len(),
            2,
            "idle keys should all have gone, the hot one stayed"
        );
        assert!(limiter.check_key(&hot).is_ok());
        assert!(
            limiter.check_key(&hot).is_err(),
            "the hot key lost its state"
        );
    }

    #[test]
    fn a_full_store_of_active_keys_drops_the_one_closest_to_idle() {
        let clock = ManualClock::new();
        let (limiter, state) = limiter(4, 1, &clock);
        for n in 0..4 {
            limiter.check_key(&ip_key(n)).unwrap();
            clock.advance(Duration::from_millis(100));
        }
        // Key 0 has the earliest arrival time; a fifth key pushes it out, and only it.
        limiter.check_key(&ip_key(4)).unwrap();
        assert_eq!(state.len(), 4);
        assert!(
            limiter.check_key(&ip_key(0)).is_ok(),
            "key 0 was evicted, so it is fresh"
        );
        for n in 2..5 {
            assert!(
                limiter.check_key(&ip_key(n)).is_err(),
                "key {n} lost its state"
            );
        }
    }

    #[test]
    fn a_store_sized_for_its_active_keys_remembers_every_one() {
        let clock = ManualClock::new();
        let (limiter, state) = limiter(10_000, 1, &clock);
        for n in 0..10_000 {
            limiter.check_key(&ip_key(n)).unwrap();
        }
        assert_eq!(state.len(), 10_000);
        let forgotten = (0..10_000)
            .filter(|&n| limiter.check_key(&ip_key(n)).is_ok())
            .count();
        assert_eq!(
            forgotten, 0,
            "active keys were evicted while the store had room"
        );
    }

    #[test]
    fn concurrent_inserts_never_overfill_and_the_count_stays_exact() {
        let clock = ManualClock::new();
        let (limiter, state) = limiter(3_000, 1, &clock);
        let limiter = Arc::new(limiter);
        let threads: Vec<_> = (0..4u32)
            .map(|t| {
                let limiter = limiter.clone();
                std::thread::spawn(move || {
                    for n in 0..20_000 {
                        let _ = limiter.check_key(&ip_key(t * 1_000_000 + n));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let stored = state.len();
        assert!(stored <= 3_000, "{stored}");
        assert_eq!(state.0.stored.load(Ordering::Acquire), stored);
    }

    #[test]
    fn no_shard_may_hold_more_than_the_store() {
        for capacity in [1, 7, 1023, 1025, 10_000, 1_000_000] {
            let state = BoundedState::new(capacity, SharedClock::default());
            assert!(state.0.shards.iter().all(|s| lock(s).limit <= capacity));
            assert!(state.0.shards.iter().all(|s| lock(s).limit >= 1));
        }
    }
}
