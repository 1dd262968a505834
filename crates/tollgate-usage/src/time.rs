//! Instants written as RFC 3339 UTC timestamps (`2026-11-24T09:30:00Z`), in configuration
//! files and admin responses.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Deserializer, Serializer};

use crate::Day;

/// `at` as `YYYY-MM-DDTHH:MM:SSZ` (whole seconds; times before 1970 print as the epoch).
pub(crate) fn format(at: SystemTime) -> String {
    let day = Day::of(at);
    let (year, month, date) = day.ymd();
    let secs = at.duration_since(day.start()).unwrap_or_default().as_secs();
    format!(
        "{year:04}-{month:02}-{date:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Reads `YYYY-MM-DDTHH:MM:SSZ` (a `+00:00` offset and fractional seconds are accepted too).
pub(crate) fn parse(text: &str) -> Option<SystemTime> {
    let (date, time) = text.split_once(['T', 't'])?;
    let day: Day = date.parse().ok()?;
    let time = time
        .strip_suffix(['Z', 'z'])
        .or_else(|| time.strip_suffix("+00:00"))?;
    let (clock, fraction) = match time.split_once('.') {
        Some((clock, fraction)) => (clock, Some(fraction)),
        None => (time, None),
    };
    let mut parts = clock.split(':');
    let mut field = |max: u64| -> Option<u64> {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        part.parse().ok().filter(|value| *value <= max)
    };
    let (hours, minutes, seconds) = (field(23)?, field(59)?, field(59)?);
    if parts.next().is_some() {
        return None;
    }
    let nanos = match fraction {
        Some(digits)
            if (1..=9).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) =>
        {
            format!("{digits:0<9}").parse::<u32>().ok()?
        }
        Some(_) => return None,
        None => 0,
    };
    let since_midnight = Duration::new(hours * 3600 + minutes * 60 + seconds, nanos);
    day.start().checked_add(since_midnight)
}

/// Serde for a required instant.
pub(crate) mod rfc3339 {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        at: &SystemTime,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format(*at))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format_args!(
                r#"expected a UTC time like "2026-11-24T09:30:00Z", found {text:?}"#
            ))
        })
    }
}

/// Serde for an optional instant.
pub(crate) mod rfc3339_option {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        at: &Option<SystemTime>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match at {
            Some(at) => serializer.serialize_some(&format(*at)),
            None => serializer.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        #[derive(Deserialize)]
        struct Wrapped(#[serde(with = "super::rfc3339")] SystemTime);
        Ok(Option::<Wrapped>::deserialize(deserializer)?.map(|Wrapped(at)| at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn timestamps_round_trip_through_text() {
        // date -u -d -d 2026-11-24T10:10:00Z +%s → 1795515000
        let at = UNIX_EPOCH + Duration::from_secs(1_795_515_000);
        assert_eq!(format(at), "2026-11-24T10:10:00Z");
        assert_eq!(parse("2026-11-24T10:10:00Z"), Some(at));
        assert_eq!(parse("2026-11-24T10:10:00+00:00"), Some(at));
        assert_eq!(
            parse("2026-11-24T10:10:00.25Z"),
            Some(at + Duration::from_millis(250))
        );
    }

    #[test]
    fn malformed_timestamps_are_refused() {
        for bad in [
            "2026-11-24",
            "2026-11-24T10:10:00",
            "2026-11-24T10:10:00+02:00",
            "2026-11-24T24:00:00Z",
            "2026-11-24T10:60:00Z",
            "2026-11-24T1:10:00Z",
            "2026-11-24T10:10:00:00Z",
            "2026-11-24T10:10:00.Z",
            "2026-02-30T10:10:00Z",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
