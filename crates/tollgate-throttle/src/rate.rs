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
}

/// Why a rate could not be built or parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid rate {input:?}: {reason}")]
pub struct RateError {
    input: String,
    reason: &'static str,
}

impl Rate {
    /// `requests` per second.
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

    /// `requests` (fractions allowed) per `period`.
    pub fn new(requests: f64, period: Duration) -> Result<Self, RateError> {
        let error = |reason| RateError {
            input: format!("{requests}/{period:?}"),
            reason,
        };
        if !(requests.is_finite() && requests > 0.0) {
            return Err(error("the number of requests must be a positive number"));
        }
        if period.is_zero() {
            return Err(error("the period must be longer than zero"));
        }
        let rate = Self { requests, period };
        if rate.interval().is_zero() {
            return Err(error("more than one request per nanosecond"));
        }
        Ok(rate)
    }

    fn from_parts(requests: f64, period: Duration) -> Self {
        // per_* take u32 counts; 0 would mean "never", which is a quota of zero, not a rate.
        Self {
            requests: requests.max(1.0),
            period,
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
        Duration::from_secs_f64(self.period.as_secs_f64() / self.requests)
    }

    /// The rate as an integer quota per whole-second window, `(q, w)`, for `RateLimit-Policy`.
    pub(crate) fn quota_window(&self) -> (u64, u64) {
        let period = self.period.as_secs_f64();
        if self.requests.fract() == 0.0 && self.period.subsec_nanos() == 0 && period >= 1.0 {
            return (self.requests as u64, period as u64);
        }
        let per_second = self.requests / period;
        if per_second >= 1.0 {
            (per_second.round() as u64, 1)
        } else {
            (1, (1.0 / per_second).round().max(1.0) as u64)
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
        let unit_secs = match unit {
            "s" | "sec" | "second" | "seconds" => 1,
            "m" | "min" | "minute" | "minutes" => 60,
            "h" | "hour" | "hours" => 3600,
            "d" | "day" | "days" => 86_400,
            _ => return Err(error("the period's unit must be s, min, h or day")),
        };
        let period = Duration::from_secs(multiplier.saturating_mul(unit_secs));
        Rate::new(requests, period).map_err(|e| RateError {
            input: input.to_owned(),
            reason: e.reason,
        })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.period.as_secs();
        let (count, unit) = match secs {
            86_400 => (1, "day"),
            3600 => (1, "h"),
            60 => (1, "min"),
            _ if self.period.subsec_nanos() == 0 && secs % 86_400 == 0 => (secs / 86_400, "day"),
            _ if self.period.subsec_nanos() == 0 && secs % 3600 == 0 => (secs / 3600, "h"),
            _ if self.period.subsec_nanos() == 0 && secs % 60 == 0 => (secs / 60, "min"),
            _ => (secs, "s"),
        };
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
    }

    #[test]
    fn policy_window_is_integer() {
        assert_eq!(Rate::per_second(5).quota_window(), (5, 1));
        assert_eq!(Rate::per_minute(100).quota_window(), (100, 60));
        assert_eq!("0.5/s".parse::<Rate>().unwrap().quota_window(), (1, 2));
        assert_eq!("2.5/s".parse::<Rate>().unwrap().quota_window(), (3, 1));
    }
}
