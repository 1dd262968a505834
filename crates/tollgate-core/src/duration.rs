//! Durations as people write them in configuration files: `500ms`, `30s`, `5m`, `1h`, `1d`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{de, Deserialize, Deserializer};

/// A [`Duration`] written as a whole number and a unit: `ms`, `s`, `m` (or `min`), `h`, `d`.
/// `0` alone is zero.
///
/// ```
/// use std::time::Duration;
/// use tollgate_core::HumanDuration;
///
/// assert_eq!("30s".parse::<HumanDuration>().unwrap().0, Duration::from_secs(30));
/// assert_eq!("5m".parse::<HumanDuration>().unwrap().0, Duration::from_secs(300));
/// let error = "thirty".parse::<HumanDuration>().unwrap_err();
/// assert_eq!(error.to_string(), r#"expected a duration like "30s", "5m" or "500ms", found "thirty""#);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

/// A duration that could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(r#"expected a duration like "30s", "5m" or "500ms", found {0:?}"#)]
pub struct DurationError(String);

impl FromStr for HumanDuration {
    type Err = DurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let text = input.trim();
        if text == "0" {
            return Ok(Self(Duration::ZERO));
        }
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| DurationError(input.to_owned()))?;
        let (number, unit) = text.split_at(split);
        let number: u64 = number
            .parse()
            .map_err(|_| DurationError(input.to_owned()))?;
        let unit_secs = match unit.trim() {
            "ms" => return Ok(Self(Duration::from_millis(number))),
            "s" => 1,
            "m" | "min" => 60,
            "h" => 3_600,
            "d" => 86_400,
            _ => return Err(DurationError(input.to_owned())),
        };
        number
            .checked_mul(unit_secs)
            .map(|secs| Self(Duration::from_secs(secs)))
            .ok_or_else(|| DurationError(input.to_owned()))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() != 0 {
            return write!(f, "{}ms", d.as_millis());
        }
        let secs = d.as_secs();
        match secs {
            0 => f.write_str("0"),
            s if s % 86_400 == 0 => write!(f, "{}d", s / 86_400),
            s if s % 3_600 == 0 => write!(f, "{}h", s / 3_600),
            s if s % 60 == 0 => write!(f, "{}m", s / 60),
            s => write!(f, "{s}s"),
        }
    }
}

impl From<HumanDuration> for Duration {
    fn from(value: HumanDuration) -> Self {
        value.0
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_read_as_written_and_print_back() {
        for (text, secs) in [
            ("500ms", 0),
            ("30s", 30),
            ("5m", 300),
            ("10min", 600),
            ("1h", 3600),
            ("1d", 86_400),
            ("0", 0),
        ] {
            let parsed: HumanDuration = text.parse().unwrap();
            assert_eq!(parsed.0.as_secs(), secs, "{text}");
        }
        assert_eq!("90s".parse::<HumanDuration>().unwrap().to_string(), "90s");
        assert_eq!("120s".parse::<HumanDuration>().unwrap().to_string(), "2m");
        assert_eq!(
            "1500ms".parse::<HumanDuration>().unwrap().to_string(),
            "1500ms"
        );
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        for text in [
            "",
            "s",
            "30",
            "30x",
            "-5s",
            "1.5s",
            "99999999999999999999d",
            "18446744073709551615d",
        ] {
            assert!(text.parse::<HumanDuration>().is_err(), "{text}");
        }
    }
}
