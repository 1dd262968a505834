//! A circuit breaker: once Redis has failed several calls in a row, calls stop going to it for
//! a while, so a dead Redis costs no time per request; then one probe at a time finds out
//! whether it is back.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use crate::connection::Redis;
use std::time::{Duration, Instant};

/// When the breaker opens and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker (default 3).
    pub failures: u32,
    /// How long it stays open before a probe is let through (default 1 s).
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures: 3,
            open_for: Duration::from_secs(1),
        }
    }
}

/// Whether a call may go to Redis now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Permit {
    /// Closed: go ahead.
    Call,
    /// Open, but this call is the probe that finds out whether Redis is back.
    Probe,
    /// Open: do not call.
    Refused,
}

#[derive(Debug)]
pub(crate) struct Breaker {
    config: BreakerConfig,
    store: &'static str,
    epoch: Instant,
    consecutive: AtomicU32,
    /// Microseconds after `epoch` until which the breaker is open; 0 when closed.
    open_until: AtomicU64,
    probing: AtomicBool,
}

/// A copy starts closed: state belongs to the store that observed the failures.
impl Clone for Breaker {
    fn clone(&self) -> Self {
        Self::new(self.config, self.store)
    }
}

impl Breaker {
    pub(crate) fn new(config: BreakerConfig, store: &'static str) -> Self {
        Self {
            config,
            store,
            epoch: Instant::now(),
            consecutive: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    pub(crate) fn permit(&self) -> Permit {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return Permit::Call;
        }
        if self.now() < until {
            return Permit::Refused;
        }
        // Half-open: one probe at a time; the others keep the fallback.
        match self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Permit::Probe,
            Err(_) => Permit::Refused,
        }
    }

    pub(crate) fn success(&self, permit: Permit) {
        self.consecutive.store(0, Ordering::Relaxed);
        if permit == Permit::Probe {
            self.open_until.store(0, Ordering::Release);
            self.probing.store(false, Ordering::Release);
            tracing::info!(
                store = self.store,
                "tollgate redis: Redis answers again; breaker closed"
            );
            transition(self.store, "closed");
        }
    }

    pub(crate) fn failure(&self, permit: Permit) {
        let failures = self
            .consecutive
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let open_for = u64::try_from(self.config.open_for.as_micros()).unwrap_or(u64::MAX);
        let until = self.now().saturating_add(open_for).max(1);
        let opened = if permit == Permit::Probe {
            // Only the probe's own failure reopens a breaker that is already open.
            self.open_until.store(until, Ordering::Release);
            self.probing.store(false, Ordering::Release);
            true
        } else {
            // Of concurrent failures, only the one that opens the breaker logs and counts.
            failures >= self.config.failures
                && self
                    .open_until
                    .compare_exchange(0, until, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
        };
        if opened {
            tracing::warn!(
                store = self.store,
                failures,
                open_for = ?self.config.open_for,
                "tollgate redis: Redis is failing; breaker open"
            );
            transition(self.store, "open");
        }
    }

    /// Settles a call that ended without an answer either way (its future was dropped): a
    /// probe counts as failed, so the breaker cannot stay half-open with no probe running.
    pub(crate) fn abandoned(&self, permit: Permit) {
        if permit == Permit::Probe {
            self.failure(permit);
        }
    }

    /// Whether calls are currently kept from Redis.
    pub(crate) fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }
}

/// A call the breaker let through: it hears how the call ended even if the call's future is
/// dropped before an answer (the client went away), so a dropped probe cannot leave the
/// breaker half-open for ever. Made before the call's future, so that a future dropped even
/// before its first poll still settles.
pub(crate) struct Guard {
    breaker: Arc<Breaker>,
    permit: Permit,
    settled: bool,
}

impl Breaker {
    /// A guard for one call, or `None` while the breaker keeps calls from Redis.
    pub(crate) fn guard(self: &Arc<Self>) -> Option<Guard> {
        match self.permit() {
            Permit::Refused => None,
            permit => Some(Guard {
                breaker: Arc::clone(self),
                permit,
                settled: false,
            }),
        }
    }
}

impl Guard {
    /// Runs `call` within the connection's timeout, telling the breaker (and the connection,
    /// which replaces itself once silent) how it went; a failure is described for logs and
    /// errors.
    pub(crate) async fn run<T>(
        mut self,
        redis: &Redis,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, String> {
        let timeout = redis.timeout;
        let result = match tokio::time::timeout(timeout, call).await {
            Ok(Ok(answer)) => {
                redis.answered();
                Ok(answer)
            }
            Ok(Err(error)) => {
                if error.is_timeout() {
                    redis.went_silent();
                }
                Err(error.to_string())
            }
            Err(_) => {
                redis.went_silent();
                Err(format!("no answer within {timeout:?}"))
            }
        };
        self.settled = true;
        match result {
            Ok(_) => self.breaker.success(self.permit),
            Err(_) => self.breaker.failure(self.permit),
        }
        result
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.settled {
            self.breaker.abandoned(self.permit);
        }
    }
}

fn transition(store: &'static str, to: &'static str) {
    metrics::counter!("tollgate_redis_breaker_transitions_total", "store" => store, "to" => to)
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_then_probes_one_at_a_time() {
        let breaker = Breaker::new(
            BreakerConfig {
                failures: 2,
                open_for: Duration::ZERO,
            },
            "test",
        );
        breaker.failure(breaker.permit());
        assert!(!breaker.is_open());
        breaker.failure(breaker.permit());
        assert!(breaker.is_open());
        // open_for is zero: the next call is the probe, and only it.
        let probe = breaker.permit();
        assert_eq!(probe, Permit::Probe);
        assert_eq!(breaker.permit(), Permit::Refused);
        breaker.success(probe);
        assert!(!breaker.is_open());
        assert_eq!(breaker.permit(), Permit::Call);
    }

    #[test]
    fn an_abandoned_probe_reopens_rather_than_blocking_every_later_probe() {
        let breaker = Breaker::new(
            BreakerConfig {
                failures: 1,
                open_for: Duration::ZERO,
            },
            "test",
        );
        breaker.failure(Permit::Call);
        let probe = breaker.permit();
        assert_eq!(probe, Permit::Probe);
        breaker.abandoned(probe);
        // Open again with a zero wait: the next call may probe.
        assert_eq!(breaker.permit(), Permit::Probe);
    }

    #[test]
    fn a_failed_probe_reopens() {
        let breaker = Breaker::new(
            BreakerConfig {
                failures: 1,
                open_for: Duration::from_secs(60),
            },
            "test",
        );
        breaker.failure(Permit::Call);
        assert_eq!(breaker.permit(), Permit::Refused);
        let reopened = Breaker::new(
            BreakerConfig {
                failures: 1,
                open_for: Duration::ZERO,
            },
            "test",
        );
        reopened.failure(Permit::Call);
        let probe = reopened.permit();
        reopened.failure(probe);
        assert!(reopened.is_open());
    }
}
