//! Properties of the GCRA store on a manual clock, for arbitrary rates, bursts and request
//! times: it never admits more than `burst + elapsed / interval` requests in any window, and
//! it never refuses a request that the rate allows.
//!
//! The interval is `Rate::interval()`, the time one request's allowance takes to come back:
//! the rate the store enforces, `period / requests` to the nanosecond.

use std::time::Duration;

use proptest::prelude::*;
use tollgate_core::key::Global;
use tollgate_core::{Clock, Key, ManualClock, SharedClock};
use tollgate_throttle::{index_rules, Check, MemoryStore, Outcome, Rate, Rule, ThrottleStore};

const CAPACITY: usize = 16;

/// A rate of 0.1 to 1000 requests per period of 1 ms to 1 min.
fn rate() -> impl Strategy<Value = Rate> {
    (1u32..=10_000, 1u64..=60_000).prop_filter_map("a countable rate", |(tenths, millis)| {
        Rate::new(f64::from(tenths) / 10.0, Duration::from_millis(millis)).ok()
    })
}

/// Gaps between requests as multiples of the interval: bunched, about one interval, or idle.
fn gaps() -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(prop_oneof![Just(0.0), 0.0..0.5, 0.5..1.5, 1.5..20.0], 1..64)
}

struct Run {
    store: MemoryStore,
    rule: Rule,
    clock: ManualClock,
}

impl Run {
    fn new(rate: Rate, burst: u32) -> Self {
        let mut rules = vec![Rule::new("property", rate, Global).burst(burst)];
        index_rules(&mut rules, CAPACITY).expect("a valid rule");
        let clock = ManualClock::new();
        let store = MemoryStore::new(&rules, CAPACITY, SharedClock::new(clock.clone()));
        let rule = rules.pop().expect("one rule");
        Self { store, rule, clock }
    }

    fn now(&self) -> Duration {
        self.clock.now()
    }

    fn check(&self) -> Outcome {
        let Check::Ready(outcome) = self.store.check(&self.rule, &Key::global()) else {
            unreachable!("the memory store decides at once");
        };
        outcome.expect("the memory store does not fail")
    }
}

fn nanos(duration: Duration) -> u128 {
    duration.as_nanos()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn gcra_never_admits_more_than_burst_plus_rate_times_elapsed(
        rate in rate(),
        burst in 1u32..=20,
        gaps in gaps(),
    ) {
        let run = Run::new(rate, burst);
        let interval = nanos(rate.interval());
        // The enforced interval is the declared one, to the nanosecond.
        let declared = rate.period().as_secs_f64() * 1e9 / rate.requests();
        prop_assert!((interval as f64 - declared).abs() <= 1.0 + declared * 1e-12);

        let mut times = Vec::with_capacity(gaps.len());
        let mut admitted = Vec::with_capacity(gaps.len());
        for gap in gaps {
            run.clock.advance(Duration::from_nanos((interval as f64 * gap) as u64));
            times.push(nanos(run.now()));
            admitted.push(matches!(run.check(), Outcome::Allowed { .. }));
        }
        // Every window [t_i, t_j] between two requests, the one from the first request included.
        for i in 0..times.len() {
            let mut count = 0u128;
            for j in i..times.len() {
                count += u128::from(admitted[j]);
                let allowed = u128::from(burst) + (times[j] - times[i]) / interval;
                prop_assert!(
                    count <= allowed,
                    "{count} admitted in {} ns from request {i} to {j}; at most {allowed} \
                     (burst {burst}, interval {interval} ns)",
                    times[j] - times[i],
                );
            }
        }
    }

    #[test]
    fn gcra_admits_every_request_spaced_by_at_least_one_interval(
        rate in rate(),
        burst in 1u32..=20,
        extra in prop::collection::vec(0.0f64..3.0, 1..64),
    ) {
        let run = Run::new(rate, burst);
        let interval = rate.interval();
        for (n, extra) in extra.into_iter().enumerate() {
            prop_assert!(
                matches!(run.check(), Outcome::Allowed { .. }),
                "request {n} refused although one interval passed since the last",
            );
            run.clock.advance(interval + interval.mul_f64(extra));
        }
    }

    #[test]
    fn a_refused_request_that_waits_its_retry_after_is_admitted(
        rate in rate(),
        burst in 1u32..=20,
        gaps in gaps(),
    ) {
        let run = Run::new(rate, burst);
        let interval = rate.interval();
        for gap in gaps {
            run.clock.advance(interval.mul_f64(gap));
            if let Outcome::Limited { retry_after, .. } = run.check() {
                prop_assert!(retry_after <= interval, "retry after {retry_after:?}");
                run.clock.advance(retry_after);
                prop_assert!(
                    matches!(run.check(), Outcome::Allowed { .. }),
                    "refused again after waiting {:?}",
                    retry_after,
                );
            }
        }
    }
}
