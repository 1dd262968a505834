use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A sustained rate: `requests` per `period`.
///
/// Written as `"10/s"`, `"100/min"`, `"0.5/s"`, `"5000/h"`, `"1000/day"` or with a count of
/// units, `"100/10s"`; each means exactly what it says (`"0.5/s"` is one request every two
/// seconds). In code: [`Rate::per_second`] and friends, whose argument is always the number of
/// requests in the period.
///
/// ```
/// use std::time::Duration;
/// use tollgate_throttle::Rate;
///
/// let rate: Rate = "100/min".parse().unwrap();
/// assert_eq!(rate, Rate::per_minute(100));
/// assert_eq!(rate.interval(), Duration::from_millis(600));
/// assert_eq!("0.5/s".parse::<Rate>().unwrap().interval(), Duration::from_secs(2));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    requests: f64,
    period: Duration,
    interval: Duration,
}

/// Why a rate could not be built or parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid rate {input:?}: {reason}")]
pub struct RateError {
    input: String,
    reason: &'static str,
}

impl Rate {
    /// `requests` per second. A count of 0 is taken as 1: zero requests per period is a
    /// quota, not a rate.
    pub fn per_second(requests: u32) -> Self {
        Self::from_parts(f64::from(requests), Duration::from_secs(1))
    }

    /// `requests` per minute.
    pub fn per_minute(requests: u32) -> Self {
        Self::from_parts(f64::from(requests), Duration::from_secs(60))
    }

    /// `requests` per hour.
    pub fn per_hour(requests: u32) -> Self {
        Self::from_parts(f64::from(requests), Duration::from_secs(3600))
    }

    /// `requests` per day.
    pub fn per_day(requests: u32) -> Self {
        Self::from_parts(f64::from(requests), Duration::from_secs(86_400))
    }

    /// `requests` (fractions allowed) per `period`, a whole number of milliseconds.
    pub fn new(requests: f64, period: Duration) -> Result<Self, RateError> {
        let error = |reason| RateError {
            input: format!("{requests}/{period:?}"),
            reason,
        };
        if !(requests.is_finite() && requests > 0.0) {
            return Err(error("the number of requests must be a positive number"));
        }
        if period.is_zero() || period.subsec_nanos() % 1_000_000 != 0 {
            return Err(error(
                "the period must be a whole, non-zero number of milliseconds",
            ));
        }
        let interval = Duration::try_from_secs_f64(period.as_secs_f64() / requests)
            .map_err(|_| error("the time between requests is too long to count"))?;
        if interval.is_zero() {
            return Err(error("more than one request per nanosecond"));
        }
        Ok(Self {
            requests,
            period,
            interval,
        })
    }

    fn from_parts(requests: f64, period: Duration) -> Self {
        let requests = requests.max(1.0);
        Self {
            requests,
            period,
            // At most u32::MAX per second: at least 0.23 ns, so never more than 1 ns apart.
            interval: Duration::from_secs_f64(period.as_secs_f64() / requests)
                .max(Duration::from_nanos(1)),
        }
    }

    /// The number of requests per period.
    pub fn requests(&self) -> f64 {
        self.requests
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The time one request's allowance takes to come back: `period / requests`.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The rate as an integer quota `q` per window of `w` whole seconds, for
    /// `RateLimit-Policy`: exact where a window of up to a day makes it so (`2.5/s` is 5 per
    /// 2 s), otherwise rounded so as never to promise more than the rate allows.
    pub fn quota_window(&self) -> (u64, u64) {
        let period = self.period.as_secs_f64();
        if self.requests.fract() == 0.0 && self.period.subsec_nanos() == 0 && period >= 1.0 {
            return (self.requests as u64, period as u64);
        }
        let per_second = self.requests / period;
        for window in 1..=86_400u64 {
            let quota = per_second * window as f64;
            if quota >= 1.0 && (quota - quota.round()).abs() < 1e-9 {
                return (quota.round() as u64, window);
            }
        }
        if per_second >= 1.0 {
            (per_second.floor() as u64, 1)
        } else {
            (1, (1.0 / per_second).ceil() as u64)
        }
    }
}

impl FromStr for Rate {
    type Err = RateError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let error = |reason| RateError {
            input: input.to_owned(),
            reason,
        };
        let (count, per) = input
            .split_once('/')
            .ok_or_else(|| error("expected <requests>/<period>, such as 10/s, 100/min or 0.5/s"))?;
        let requests: f64 = count
            .trim()
            .parse()
            .map_err(|_| error("the number of requests is not a number"))?;
        let per = per.trim();
        let digits = per.find(|c: char| !c.is_ascii_digit()).unwrap_or(per.len());
        let (multiplier, unit) = per.split_at(digits);
        let multiplier: u64 = if multiplier.is_empty() {
            1
        } else {
            multiplier
                .parse()
                .map_err(|_| error("the period's count is not a whole number"))?
        };
        let unit_millis = match unit {
            "ms" => 1,
            "s" | "sec" | "second" | "seconds" => 1000,
            "m" | "min" | "minute" | "minutes" => 60_000,
            "h" | "hour" | "hours" => 3_600_000,
            "d" | "day" | "days" => 86_400_000,
            _ => return Err(error("the period's unit must be ms, s, min, h or day")),
        };
        let period = Duration::from_millis(multiplier.saturating_mul(unit_millis));
        Rate::new(requests, period).map_err(|e| RateError {
            input: input.to_owned(),
            reason: e.reason,
        })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Periods are whole milliseconds (Rate::new and the parser see to it); pick the
        // largest unit that divides the period.
        let millis = self.period.as_millis();
        let (count, unit) = [
            (86_400_000, "day"),
            (3_600_000, "h"),
            (60_000, "min"),
            (1000, "s"),
        ]
        .into_iter()
        .find(|(size, _)| millis % size == 0)
        .map_or((millis, "ms"), |(size, unit)| (millis / size, unit));
        write!(f, "{}/", self.requests)?;
        if count != 1 {
            write!(f, "{count}")?;
        }
        f.write_str(unit)
    }
}

impl<'de> serde::Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_mean_what_they_say() {
        let cases = [
            ("10/s", Duration::from_millis(100)),
            ("100/min", Duration::from_millis(600)),
            ("0.5/s", Duration::from_secs(2)),
            ("5000/h", Duration::from_millis(720)),
            ("1/day", Duration::from_secs(86_400)),
            ("100/10s", Duration::from_millis(100)),
        ];
        for (text, interval) in cases {
            assert_eq!(text.parse::<Rate>().unwrap().interval(), interval, "{text}");
        }
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "10/s", "100/min", "0.5/s", "5000/h", "1000/day", "100/10s", "3/5min",
        ] {
            let rate: Rate = text.parse().unwrap();
            assert_eq!(rate.to_string(), text);
            assert_eq!(rate.to_string().parse::<Rate>().unwrap(), rate);
        }
    }

    #[test]
    fn bad_rates_say_what_was_expected() {
        let error = "ten/s".parse::<Rate>().unwrap_err().to_string();
        assert_eq!(
            error,
            r#"invalid rate "ten/s": the number of requests is not a number"#
        );
        assert!("10"
            .parse::<Rate>()
            .unwrap_err()
            .to_string()
            .contains("expected <requests>/<period>"));
        assert!("10/fortnight"
            .parse::<Rate>()
            .unwrap_err()
            .to_string()
            .contains("unit"));
        assert!("0/s".parse::<Rate>().is_err());
        assert!("-1/s".parse::<Rate>().is_err());
        assert!("NaN/s".parse::<Rate>().is_err());
        assert!("10/0s".parse::<Rate>().is_err());
        assert!("1e-300/s"
            .parse::<Rate>()
            .unwrap_err()
            .to_string()
            .contains("too long"));
        assert!(Rate::new(1.0, Duration::from_nanos(1500)).is_err());
    }

    #[test]
    fn per_constructors_never_give_a_zero_interval() {
        assert_eq!(Rate::per_second(0), Rate::per_second(1));
        assert_eq!(
            Rate::per_second(u32::MAX).interval(),
            Duration::from_nanos(1)
        );
    }

    #[test]
    fn policy_window_states_the_rate_exactly() {
        let window = |text: &str| text.parse::<Rate>().unwrap().quota_window();
        assert_eq!(window("5/s"), (5, 1));
        assert_eq!(window("100/min"), (100, 60));
        assert_eq!(window("0.5/s"), (1, 2));
        assert_eq!(window("2.5/s"), (5, 2));
        assert_eq!(window("0.3/s"), (3, 10));
        assert_eq!(window("1/500ms"), (2, 1));
    }
}
