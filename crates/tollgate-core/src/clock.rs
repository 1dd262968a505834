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
///
/// Every `SystemClock` shares one origin, so their readings compare.
#[derive(Clone, Debug)]
pub struct SystemClock {
    // An owned quanta clock reads the TSC directly; `quanta::Instant::now()` would first check
    // a thread-local override on every call.
    clock: quanta::Clock,
    origin: quanta::Instant,
}

impl SystemClock {
    /// The system clock (calibrated once per process).
    pub fn new() -> Self {
        static SYSTEM: OnceLock<SystemClock> = OnceLock::new();
        SYSTEM
            .get_or_init(|| {
                let clock = quanta::Clock::new();
                let origin = clock.now();
                SystemClock { clock, origin }
            })
            .clone()
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    #[inline]
    fn now(&self) -> Duration {
        self.clock.now().saturating_duration_since(self.origin)
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
///
/// The system clock is read without dynamic dispatch: it is on every request's path.
#[derive(Clone, Debug)]
pub struct SharedClock(Source);

#[derive(Clone, Debug)]
enum Source {
    System(SystemClock),
    Other(Arc<dyn Clock>),
}

impl SharedClock {
    /// Shares `clock`.
    pub fn new(clock: impl Clock) -> Self {
        Self(Source::Other(Arc::new(clock)))
    }
}

impl Default for SharedClock {
    fn default() -> Self {
        Self(Source::System(SystemClock::new()))
    }
}

impl From<SystemClock> for SharedClock {
    fn from(clock: SystemClock) -> Self {
        Self(Source::System(clock))
    }
}

impl From<ManualClock> for SharedClock {
    fn from(clock: ManualClock) -> Self {
        Self::new(clock)
    }
}

impl From<Arc<dyn Clock>> for SharedClock {
    fn from(clock: Arc<dyn Clock>) -> Self {
        Self(Source::Other(clock))
    }
}

impl Clock for SharedClock {
    #[inline]
    fn now(&self) -> Duration {
        match &self.0 {
            Source::System(clock) => clock.now(),
            Source::Other(clock) => clock.now(),
        }
    }

    fn system_time(&self) -> SystemTime {
        match &self.0 {
            Source::System(clock) => clock.system_time(),
            Source::Other(clock) => clock.system_time(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_is_monotonic() {
        let a = SystemClock::new().now();
        let b = SharedClock::default().now();
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
