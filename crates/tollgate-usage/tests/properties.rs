//! Properties of the in-memory quota store: counts are exact. However the takes of several
//! keys interleave, and across period boundaries, each key is told `Taken` exactly
//! `min(N, L)` times per period for N takes against a limit L, numbered 1, 2, … in order, and
//! its daily usage counts exactly the units it took.
//!
//! Takes here are sequential; the store's tests race threads against it.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use tollgate_usage::{Day, Found, MemoryQuotaStore, QuotaPeriod, QuotaStore, Take, Window};

const KEYS: usize = 3;

fn take(store: &MemoryQuotaStore, key: &Arc<str>, limit: u32, window: &Window, day: Day) -> Take {
    match store.take(key, Some((limit, window)), day) {
        Found::Ready(Ok(take)) => take,
        _ => unreachable!("the memory store answers at once"),
    }
}

fn daily_usage(store: &MemoryQuotaStore, key: &str, day: Day) -> u64 {
    let mut future = std::pin::pin!(store.daily_usage(key, day, day));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(Ok(usage)) => usage.iter().map(|(_, units)| units).sum(),
        _ => unreachable!("the memory store answers at once"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn quota_admits_exactly_the_lesser_of_takes_and_limit(
        limit in 1u32..=50,
        takes in prop::collection::vec(0..KEYS, 0..200),
    ) {
        let store = MemoryQuotaStore::default();
        let keys: Vec<Arc<str>> = (0..KEYS).map(|k| Arc::from(format!("key-{k}"))).collect();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
        let window = QuotaPeriod::Month.window(at);
        let day = Day::of(at);

        let mut asked = [0u32; KEYS];
        let mut taken = [0u32; KEYS];
        for key in takes {
            asked[key] += 1;
            match take(&store, &keys[key], limit, &window, day) {
                Take::Taken { used } => {
                    taken[key] += 1;
                    prop_assert_eq!(used, taken[key], "units are numbered in order");
                }
                Take::Exhausted => prop_assert!(taken[key] >= limit, "refused under the limit"),
            }
        }
        for key in 0..KEYS {
            prop_assert_eq!(taken[key], asked[key].min(limit));
            prop_assert_eq!(daily_usage(&store, &keys[key], day), u64::from(taken[key]));
        }
    }

    #[test]
    fn each_period_admits_exactly_the_lesser_of_its_takes_and_the_limit(
        limit in 1u32..=20,
        // Per period: how many takes, and how far into it they fall.
        periods in prop::collection::vec((0u32..40, 0u64..3600), 1..6),
    ) {
        let store = MemoryQuotaStore::default();
        let key: Arc<str> = Arc::from("key");
        let period = QuotaPeriod::every(Duration::from_secs(3600)).expect("an hour");
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000 / 3600 * 3600);
        for (index, (takes, offset)) in periods.into_iter().enumerate() {
            let at = start + Duration::from_secs(index as u64 * 3600 + offset);
            let window = period.window(at);
            let taken = (0..takes)
                .filter(|_| take(&store, &key, limit, &window, Day::of(at)) != Take::Exhausted)
                .count();
            prop_assert_eq!(taken, takes.min(limit) as usize, "period {}", index);
        }
    }
}
