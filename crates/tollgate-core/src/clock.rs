use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

/// A time source for windows, TTLs and quota periods.
///
/// Layers take a [`SharedClock`] so tests can drive time with a [`ManualClock`] instead of
/// sleeping. [`SystemClock`] is the default.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Monotonic time elapsed since a fixed, arbitrary origin of this clock.
    fn now(&self) -> Duration;

    /// Wall-clock time, for calendar periods (quota resets) and expiry dates.
    fn system_time(&self) -> SystemTime;
}

/// The real clock: a TSC-backed monotonic clock (`quanta`) and the system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[inline]
    fn now(&self) -> Duration {
        static ORIGIN: OnceLock<quanta::Instant> = OnceLock::new();
        let origin = *ORIGIN.get_or_init(quanta::Instant::now);
        quanta::Instant::now().saturating_duration_since(origin)
    }

    fn system_time(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told to; clones share one time.
///
/// ```
/// use std::time::Duration;
/// use tollgate_core::{Clock, ManualClock};
///
/// let clock = ManualClock::new();
/// let handle = clock.clone();
/// handle.advance(Duration::from_secs(2));
/// assert_eq!(clock.now(), Duration::from_secs(2));
/// ```
#[derive(Clone, Debug)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
    epoch: SystemTime,
}

impl ManualClock {
    /// A clock at monotonic zero whose wall time starts at the Unix epoch.
    pub fn new() -> Self {
        Self::starting_at(SystemTime::UNIX_EPOCH)
    }

    /// A clock at monotonic zero whose wall time starts at `epoch`.
    pub fn starting_at(epoch: SystemTime) -> Self {
        Self {
            nanos: Arc::new(AtomicU64::new(0)),
            epoch,
        }
    }

    /// Moves time forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(by, Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }

    fn system_time(&self) -> SystemTime {
        self.epoch + self.now()
    }
}

/// A cheaply clonable handle to any [`Clock`].
#[derive(Clone, Debug)]
pub struct SharedClock(Arc<dyn Clock>);

impl SharedClock {
    /// Shares `clock`.
    pub fn new(clock: impl Clock) -> Self {
        Self(Arc::new(clock))
    }
}

impl Default for SharedClock {
    fn default() -> Self {
        Self::new(SystemClock)
    }
}

impl From<SystemClock> for SharedClock {
    fn from(clock: SystemClock) -> Self {
        Self::new(clock)
    }
}

impl From<ManualClock> for SharedClock {
    fn from(clock: ManualClock) -> Self {
        Self::new(clock)
    }
}

impl From<Arc<dyn Clock>> for SharedClock {
    fn from(clock: Arc<dyn Clock>) -> Self {
        Self(clock)
    }
}

impl Clock for SharedClock {
    #[inline]
    fn now(&self) -> Duration {
        self.0.now()
    }

    fn system_time(&self) -> SystemTime {
        self.0.system_time()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_is_monotonic() {
        let a = SystemClock.now();
        let b = SystemClock.now();
        assert!(b >= a);
    }

    #[test]
    fn manual_clock_clones_share_time_and_wall_time_follows() {
        let clock = ManualClock::new();
        let shared = SharedClock::from(clock.clone());
        clock.advance(Duration::from_millis(1500));
        assert_eq!(shared.now(), Duration::from_millis(1500));
        assert_eq!(
            shared.system_time(),
            SystemTime::UNIX_EPOCH + Duration::from_millis(1500)
        );
    }
}
