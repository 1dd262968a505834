//! Quota counting and daily usage: exact, atomic, per key.

use std::collections::VecDeque;
use std::future::{ready, Future, Ready};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::UNIX_EPOCH;

use dashmap::DashMap;

use crate::key::{Found, StoreError};
use crate::{Day, Window};

/// Days of usage history kept by default: as long as Amazon API Gateway keeps usage.
pub const DEFAULT_RETENTION_DAYS: u32 = 90;

/// The answer to one request for a unit of quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    /// The request took a unit; `used` units of the period are now spent, this one included.
    Taken {
        /// Units spent in the period, this one included.
        used: u32,
    },
    /// Every unit of the period is spent; the request took nothing.
    Exhausted,
}

/// Where quota counters and daily usage live: in memory ([`MemoryQuotaStore`]) or shared by
/// several gateway instances.
///
/// `take` is exact and atomic: under any concurrency, at most `limit` requests of a period
/// are told [`Take::Taken`], and each of them is counted once in its day's usage.
pub trait QuotaStore: Send + Sync + 'static {
    /// The future of a `take` that cannot answer at once.
    type Take: Future<Output = Result<Take, StoreError>> + Send + 'static;

    /// Takes one unit from key `key`'s allowance of `limit` in `window` (`quota` is
    /// `Some((limit, window))`; with `None` the request is only counted), and counts it in
    /// `day`'s usage.
    fn take(
        &self,
        key: &Arc<str>,
        quota: Option<(u32, &Window)>,
        day: Day,
    ) -> Found<Take, Self::Take>;

    /// Units key `key` took on each day from `from` to `to`, both included, for the days the
    /// store still remembers; days without use may be left out.
    fn daily_usage(
        &self,
        key: &str,
        from: Day,
        to: Day,
    ) -> impl Future<Output = Result<Vec<(Day, u64)>, StoreError>> + Send;

    /// Drops everything kept for key `key` (when it is revoked).
    fn forget(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// A shared store: the layer and its owner (a configuration reload that keeps the counts)
/// both hold it.
impl<Q: QuotaStore> QuotaStore for Arc<Q> {
    type Take = Q::Take;

    #[inline]
    fn take(
        &self,
        key: &Arc<str>,
        quota: Option<(u32, &Window)>,
        day: Day,
    ) -> Found<Take, Self::Take> {
        (**self).take(key, quota, day)
    }

    fn daily_usage(
        &self,
        key: &str,
        from: Day,
        to: Day,
    ) -> impl Future<Output = Result<Vec<(Day, u64)>, StoreError>> + Send {
        (**self).daily_usage(key, from, to)
    }

    fn forget(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).forget(key)
    }
}

/// Quota counters in memory: one atomic compare-and-swap per request for the quota and one
/// for the day's usage; the history of past days, up to the retention, per key.
///
/// Memory grows with the keys that are used: about 100 bytes per key plus 8 bytes per key
/// and day of history kept.
#[derive(Debug)]
pub struct MemoryQuotaStore {
    counters: DashMap<Arc<str>, Counter, foldhash::fast::RandomState>,
    retention_days: u32,
}

#[derive(Debug, Default)]
struct Counter {
    /// The period's start in seconds since the epoch (high 32 bits) and the units spent in
    /// it, packed so that one compare-and-swap both rolls the period over and counts.
    period: AtomicU64,
    /// The day's index and the units taken on it, packed likewise.
    today: AtomicU64,
    /// Past days and their units, oldest first.
    history: Mutex<VecDeque<(u32, u32)>>,
}

fn pack(index: u32, count: u32) -> u64 {
    (u64::from(index) << 32) | u64::from(count)
}

fn unpack(packed: u64) -> (u32, u32) {
    ((packed >> 32) as u32, packed as u32)
}

impl Default for MemoryQuotaStore {
    fn default() -> Self {
        Self::new(DEFAULT_RETENTION_DAYS)
    }
}

impl MemoryQuotaStore {
    /// A store that keeps `retention_days` days of usage history per key (at least one).
    pub fn new(retention_days: u32) -> Self {
        Self {
            counters: DashMap::default(),
            retention_days: retention_days.max(1),
        }
    }
}

impl Counter {
    #[inline]
    fn take(&self, quota: Option<(u32, &Window)>) -> Take {
        let Some((limit, window)) = quota else {
            return Take::Taken { used: 0 };
        };
        // Periods are told apart by their start in seconds since the epoch, not by their
        // index: indices of different period kinds (days, months) do not compare, and a key
        // moved to a plan with another period must still roll over. Seconds wrap in 2106;
        // the comparison below is wrapping.
        let want = window
            .start
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs() as u32);
        let mut current = self.period.load(Ordering::Acquire);
        loop {
            let (index, used) = unpack(current);
            // A request that read the clock a moment before another, which has already rolled
            // the period over, counts in the newer period.
            let (index, used) = if index.wrapping_sub(want) as i32 >= 0 && used > 0 {
                (index, used)
            } else {
                (want, 0)
            };
            if used >= limit {
                return Take::Exhausted;
            }
            match self.period.compare_exchange_weak(
                current,
                pack(index, used + 1),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Take::Taken { used: used + 1 },
                Err(actual) => current = actual,
            }
        }
    }

    #[inline]
    fn count_day(&self, day: Day, retention_days: u32) {
        let want = day.index();
        let mut current = self.today.load(Ordering::Acquire);
        loop {
            let (index, count) = unpack(current);
            let next = if index >= want {
                pack(index, count.saturating_add(1))
            } else {
                pack(want, 1)
            };
            match self.today.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    if index < want && count > 0 {
                        // Only the request whose swap replaced the old day files it away.
                        self.file_day(index, count, want, retention_days);
                    }
                    return;
                }
                Err(actual) => current = actual,
            }
        }
    }

    fn file_day(&self, index: u32, count: u32, today: u32, retention_days: u32) {
        let mut history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        history.push_back((index, count));
        let oldest = today.saturating_sub(retention_days - 1);
        while history.front().is_some_and(|&(day, _)| day < oldest) {
            history.pop_front();
        }
    }

    fn usage(&self, from: u32, to: u32, oldest: u32) -> Vec<(Day, u64)> {
        let history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        let (today, count) = unpack(self.today.load(Ordering::Acquire));
        history
            .iter()
            .copied()
            .chain((count > 0).then_some((today, count)))
            .filter(|&(day, _)| day >= from.max(oldest) && day <= to)
            .map(|(day, count)| (Day::from_index(day), u64::from(count)))
            .collect()
    }
}

impl QuotaStore for MemoryQuotaStore {
    type Take = Ready<Result<Take, StoreError>>;

    #[inline]
    fn take(
        &self,
        key: &Arc<str>,
        quota: Option<(u32, &Window)>,
        day: Day,
    ) -> Found<Take, Self::Take> {
        let run = |counter: &Counter| {
            let take = counter.take(quota);
            if take != Take::Exhausted {
                counter.count_day(day, self.retention_days);
            }
            take
        };
        let take = match self.counters.get(&**key) {
            Some(counter) => run(&counter),
            None => run(&self.counters.entry(key.clone()).or_default()),
        };
        Found::Ready(Ok(take))
    }

    fn daily_usage(
        &self,
        key: &str,
        from: Day,
        to: Day,
    ) -> impl Future<Output = Result<Vec<(Day, u64)>, StoreError>> + Send {
        let usage = self.counters.get(key).map_or_else(Vec::new, |counter| {
            let (today, _) = unpack(counter.today.load(Ordering::Acquire));
            let oldest = today.saturating_sub(self.retention_days - 1);
            counter.usage(from.index(), to.index(), oldest)
        });
        ready(Ok(usage))
    }

    fn forget(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.counters.remove(key);
        ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::QuotaPeriod;

    fn taken(found: Found<Take, Ready<Result<Take, StoreError>>>) -> Take {
        match found {
            Found::Ready(Ok(take)) => take,
            _ => panic!("the memory store answers at once"),
        }
    }

    fn usage(store: &MemoryQuotaStore, key: &str, from: Day, to: Day) -> Vec<(Day, u64)> {
        let mut future = std::pin::pin!(store.daily_usage(key, from, to));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match future.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(Ok(usage)) => usage,
            _ => panic!("the memory store answers at once"),
        }
    }

    #[test]
    fn threads_racing_across_midnight_count_every_request_on_its_own_day() {
        let store = Arc::new(MemoryQuotaStore::new(30));
        let key: Arc<str> = "k".into();
        let monday = Day::from_ymd(2026, 11, 23).unwrap();
        let tuesday = monday.next();
        let threads: Vec<_> = (0..4)
            .map(|thread| {
                let (store, key) = (store.clone(), key.clone());
                std::thread::spawn(move || {
                    // Half the threads are still on Monday while the others have moved on.
                    for n in 0..10_000 {
                        let day = if thread % 2 == 0 && n < 5_000 {
                            monday
                        } else {
                            tuesday
                        };
                        taken(store.take(&key, None, day));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        // A Monday request that arrives after Tuesday has begun counts on Tuesday: no request
        // is lost or counted twice, and Monday never gains one after it was filed away.
        let counted = usage(&store, "k", monday, tuesday);
        let on = |day: Day| {
            counted
                .iter()
                .find(|&&(d, _)| d == day)
                .map_or(0, |&(_, n)| n)
        };
        assert_eq!(on(monday) + on(tuesday), 40_000, "{counted:?}");
        assert!(on(monday) <= 10_000, "{counted:?}");
        assert!(on(tuesday) >= 30_000, "{counted:?}");
    }

    #[test]
    fn a_quota_admits_exactly_its_limit_from_many_threads() {
        let store = Arc::new(MemoryQuotaStore::default());
        let key: Arc<str> = "k".into();
        let at = Day::from_ymd(2026, 11, 24).unwrap().start();
        let window = QuotaPeriod::Day.window(at);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (store, key) = (store.clone(), key.clone());
                std::thread::spawn(move || {
                    (0..5_000)
                        .filter(|_| {
                            let take = taken(store.take(&key, Some((7_000, &window)), Day::of(at)));
                            take != Take::Exhausted
                        })
                        .count()
                })
            })
            .collect();
        let admitted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(admitted, 7_000);
        let day = Day::of(at);
        assert_eq!(usage(&store, "k", day, day), vec![(day, 7_000)]);
        // The next window starts afresh.
        let next = QuotaPeriod::Day.window(at + Duration::from_secs(86_400));
        let take = taken(store.take(&key, Some((7_000, &next)), day.next()));
        assert_eq!(take, Take::Taken { used: 1 });
    }

    #[test]
    fn history_older_than_the_retention_is_dropped() {
        let store = MemoryQuotaStore::new(3);
        let key: Arc<str> = "k".into();
        let first = Day::from_ymd(2026, 11, 1).unwrap();
        let mut day = first;
        for _ in 0..10 {
            taken(store.take(&key, None, day));
            day = day.next();
        }
        let last = Day::from_index(day.index() - 1);
        let kept = usage(&store, "k", first, last);
        let days: Vec<Day> = kept.iter().map(|&(day, _)| day).collect();
        assert_eq!(
            days,
            (last.index() - 2..=last.index())
                .map(Day::from_index)
                .collect::<Vec<_>>()
        );
    }
}
