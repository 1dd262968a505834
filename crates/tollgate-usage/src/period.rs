//! Quota periods: which window of time a request's usage counts against, and calendar days
//! for usage reports. Calendar periods are UTC, as in Amazon API Gateway usage plans.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use tollgate_core::HumanDuration;

const SECS_PER_DAY: u64 = 86_400;
/// 9999-12-31, the last day a `YYYY-MM-DD` string can name.
const LAST_DAY: u32 = 2_932_896;
/// 9999-12-31T23:59:59Z. Later times are clamped to it, and `Every` lengths kept within as
/// many seconds again, so that no window's end can overflow `SystemTime` on any platform.
const LAST_SECOND: u64 = (LAST_DAY as u64 + 1) * SECS_PER_DAY - 1;

/// A period, length or day that could not be read or does not exist.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeriodError {
    /// Neither `day`, `week`, `month` nor a duration.
    #[error(r#"expected "day", "week", "month" or a duration like "30d", found {0:?}"#)]
    UnknownPeriod(String),
    /// A fixed length that is zero, not whole seconds, or longer than ten thousand years.
    #[error(r#"expected a period length of whole seconds from "1s" to "2932897d", found {0:?}"#)]
    BadLength(String),
    /// A day not written `YYYY-MM-DD`.
    #[error(r#"expected a day like "2026-11-24", found {0:?}"#)]
    BadDay(String),
    /// A date missing from the calendar (such as February 29th in a common year) or outside
    /// 1970-01-01 to 9999-12-31.
    #[error("expected a calendar date from 1970-01-01 to 9999-12-31, found {0}")]
    NoSuchDay(String),
}

/// How long a quota lasts before it starts afresh. All calendar periods are UTC.
///
/// Written in configuration as `"day"`, `"week"` or `"month"` (any case, so AWS's `"DAY"`
/// works too), or as a duration such as `"30d"`, `"12h"` or `"90s"`.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use tollgate_usage::{Day, QuotaPeriod};
///
/// let period: QuotaPeriod = "MONTH".parse()?;
/// let at = UNIX_EPOCH + Duration::from_secs(1_795_478_400); // 2026-11-24T00:00:00Z
/// let window = period.window(at);
/// assert_eq!(Day::of(window.start).to_string(), "2026-11-01");
/// assert_eq!(Day::of(window.end).to_string(), "2026-12-01");
/// assert_eq!(window.remaining(at), Duration::from_secs(7 * 86_400));
/// # Ok::<(), tollgate_usage::PeriodError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuotaPeriod {
    /// A calendar day, from 00:00:00 UTC.
    Day,
    /// An ISO week, from Monday 00:00:00 UTC.
    Week,
    /// A calendar month, from the 1st at 00:00:00 UTC.
    Month,
    /// A fixed length (whole seconds, at least one), in windows aligned to the Unix epoch: a
    /// window starts at every multiple of the length since 1970-01-01T00:00:00Z.
    ///
    /// [`QuotaPeriod::every`] refuses bad lengths; one written here directly counts in whole
    /// seconds, at least one and at most ten thousand years.
    Every(Duration),
}

/// One period's window: which period it is and when it starts and ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// A number that grows by one from each period to the next: days since the epoch for
    /// `Day`, weeks since Monday 1969-12-29 for `Week`, months since January 1970 for `Month`,
    /// windows since the epoch for `Every`.
    pub index: u64,
    /// The first instant of the window.
    pub start: SystemTime,
    /// The first instant after the window (the next window's start).
    pub end: SystemTime,
}

impl QuotaPeriod {
    /// The window that holds `at`. Times before the Unix epoch count as the epoch, and times
    /// after 9999-12-31T23:59:59Z as that second.
    pub fn window(&self, at: SystemTime) -> Window {
        let secs = clamped_secs(at);
        let days = secs / SECS_PER_DAY;
        let (index, start, length_secs) = match *self {
            Self::Day => (days, since_epoch(days * SECS_PER_DAY), SECS_PER_DAY),
            Self::Week => {
                // 1970-01-01 was a Thursday, so week 0 starts three days before the epoch.
                let week = (days + 3) / 7;
                let start =
                    since_epoch(week * 7 * SECS_PER_DAY) - Duration::from_secs(3 * SECS_PER_DAY);
                (week, start, 7 * SECS_PER_DAY)
            }
            Self::Month => {
                let (year, month, _) = civil_from_days(days);
                let start = days_from_civil(year, month, 1) * SECS_PER_DAY;
                let length = u64::from(days_in_month(year, month)) * SECS_PER_DAY;
                let index = (year - 1970) * 12 + u64::from(month) - 1;
                (index, since_epoch(start), length)
            }
            Self::Every(length) => {
                let length = length.as_secs().clamp(1, LAST_SECOND + 1);
                let index = secs / length;
                (index, since_epoch(index * length), length)
            }
        };
        let end = start + Duration::from_secs(length_secs);
        Window { index, start, end }
    }

    /// A fixed-length period. A length that is zero, has a fraction of a second or is longer
    /// than ten thousand years is refused.
    pub fn every(length: Duration) -> Result<Self, PeriodError> {
        let secs = length.as_secs();
        if length.subsec_nanos() != 0 || secs == 0 || secs > LAST_SECOND + 1 {
            return Err(PeriodError::BadLength(HumanDuration(length).to_string()));
        }
        Ok(Self::Every(length))
    }
}

impl FromStr for QuotaPeriod {
    type Err = PeriodError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let text = input.trim();
        match text.to_ascii_lowercase().as_str() {
            "day" => return Ok(Self::Day),
            "week" => return Ok(Self::Week),
            "month" => return Ok(Self::Month),
            _ => {}
        }
        let length = text
            .parse::<HumanDuration>()
            .map_err(|_| PeriodError::UnknownPeriod(input.to_owned()))?;
        // Name the length as the user wrote it, not as `every` would print it back.
        Self::every(length.0).map_err(|_| PeriodError::BadLength(input.to_owned()))
    }
}

impl fmt::Display for QuotaPeriod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Day => f.write_str("day"),
            Self::Week => f.write_str("week"),
            Self::Month => f.write_str("month"),
            Self::Every(length) => HumanDuration(*length).fmt(f),
        }
    }
}

impl Window {
    /// How long the window lasts, from its start to its end.
    pub fn length(&self) -> Duration {
        self.remaining(self.start)
    }

    /// How long from `at` until the window ends; zero once it has.
    pub fn remaining(&self, at: SystemTime) -> Duration {
        self.end.duration_since(at).unwrap_or(Duration::ZERO)
    }
}

/// A calendar day in UTC, written `YYYY-MM-DD`, from 1970-01-01 to 9999-12-31.
// Kept within those years, so the casts between day counts and years below are exact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(/* days since 1970-01-01 */ u32);

impl Day {
    /// The day that holds `at`. Times before the Unix epoch count as 1970-01-01, and times
    /// after 9999 as 9999-12-31.
    pub fn of(at: SystemTime) -> Day {
        Day((clamped_secs(at) / SECS_PER_DAY) as u32)
    }

    /// The day this many days after 1970-01-01, or 9999-12-31 if that is later.
    pub fn from_index(days_since_epoch: u32) -> Day {
        Day(days_since_epoch.min(LAST_DAY))
    }

    /// Days since 1970-01-01.
    pub fn index(self) -> u32 {
        self.0
    }

    /// The day with this year, month (1 to 12) and day of the month (from 1), if the calendar
    /// has it and it lies between 1970-01-01 and 9999-12-31.
    pub fn from_ymd(year: i32, month: u32, day: u32) -> Result<Day, PeriodError> {
        if !(1970..=9999).contains(&year) || day == 0 || day > days_in_month(year as u64, month) {
            let found = format!("{year:04}-{month:02}-{day:02}");
            return Err(PeriodError::NoSuchDay(found));
        }
        Ok(Day(days_from_civil(year as u64, month, day) as u32))
    }

    /// The year, month (1 to 12) and day of the month (from 1).
    pub fn ymd(self) -> (i32, u32, u32) {
        let (year, month, day) = civil_from_days(u64::from(self.0));
        (year as i32, month, day)
    }

    /// 00:00:00 UTC of this day.
    pub fn start(self) -> SystemTime {
        since_epoch(u64::from(self.0) * SECS_PER_DAY)
    }

    /// The day after, or 9999-12-31 again on that day.
    pub fn next(self) -> Day {
        Day::from_index(self.0.saturating_add(1))
    }
}

impl FromStr for Day {
    type Err = PeriodError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let bytes = input.as_bytes();
        let dash_or_digit = |(at, byte): (usize, &u8)| match at {
            4 | 7 => *byte == b'-',
            _ => byte.is_ascii_digit(),
        };
        if bytes.len() != 10 || !bytes.iter().enumerate().all(dash_or_digit) {
            return Err(PeriodError::BadDay(input.to_owned()));
        }
        let number = |from: usize, to: usize| {
            (bytes[from..to].iter()).fold(0, |n, digit| n * 10 + u32::from(digit - b'0'))
        };
        Day::from_ymd(number(0, 4) as i32, number(5, 7), number(8, 10))
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (year, month, day) = self.ymd();
        write!(f, "{year:04}-{month:02}-{day:02}")
    }
}

/// Configuration writes both types as the strings that `Display` prints and `FromStr` reads.
macro_rules! serde_as_string {
    ($($type:ty),*) => {$(
        impl Serialize for $type {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                String::deserialize(deserializer)?.parse().map_err(de::Error::custom)
            }
        }
    )*};
}

serde_as_string!(QuotaPeriod, Day);

/// Whole seconds since the epoch, kept within 1970-01-01 to the end of 9999.
fn clamped_secs(at: SystemTime) -> u64 {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    since.as_secs().min(LAST_SECOND)
}

fn since_epoch(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

// The calendar arithmetic is Howard Hinnant's `days_from_civil` and `civil_from_days`
// (https://howardhinnant.github.io/date_algorithms.html), written out here because a calendar
// crate would be a whole dependency for three functions. Nothing here comes before 1970, so
// it uses unsigned numbers and skips the algorithms' handling of negative eras.

fn days_in_month(year: u64, month: u32) -> u32 {
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days from 1970-01-01 to a date (in 1970 or later) of the Gregorian calendar.
fn days_from_civil(year: u64, month: u32, day: u32) -> u64 {
    // Years are counted from March, so that the leap day is the last day of the year.
    let year = if month <= 2 { year - 1 } else { year };
    let (era, year_of_era) = (year / 400, year % 400);
    let month_from_march = (u64::from(month) + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + u64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date (year, month, day) this many days after 1970-01-01.
fn civil_from_days(days_since_epoch: u64) -> (u64, u32, u32) {
    let days = days_since_epoch + 719_468;
    let (era, day_of_era) = (days / 146_097, days % 146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    // Both are small (1..=31 and 1..=12), so the narrowing casts are exact.
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = ((month_from_march + 2) % 12 + 1) as u32;
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn utc(y: u64, m: u32, d: u32, hh: u64, mm: u64, ss: u64) -> SystemTime {
        since_epoch(days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss)
    }

    #[test]
    fn test_clock_agrees_with_known_unix_timestamps() {
        // Each checked with `date -u -d @<secs>`.
        for ((y, m, d), secs) in [
            ((1970, 1, 1), 0),
            ((2000, 3, 1), 951_868_800),
            ((2026, 11, 24), 1_795_478_400),
            ((2100, 3, 1), 4_107_542_400),
            ((9999, 12, 31), 253_402_214_400),
        ] {
            assert_eq!(utc(y, m, d, 0, 0, 0), since_epoch(secs), "{y}-{m}-{d}");
        }
    }

    #[test]
    fn day_window_runs_from_utc_midnight_to_the_next() {
        let at = utc(2026, 11, 24, 23, 59, 59);
        let today = QuotaPeriod::Day.window(at);
        let tomorrow = QuotaPeriod::Day.window(at + Duration::from_secs(1));
        assert_eq!(today.start, since_epoch(1_795_478_400));
        assert_eq!(tomorrow.start, today.end);
        assert_eq!(tomorrow.index, today.index + 1);
        assert_eq!(today.length(), DAY);
        assert_eq!(today.remaining(at), Duration::from_secs(1));
        assert_eq!(today.remaining(tomorrow.end), Duration::ZERO);
    }

    #[test]
    fn week_window_starts_monday_midnight_utc() {
        let monday = QuotaPeriod::Week.window(utc(2026, 11, 23, 0, 0, 0));
        let sunday = QuotaPeriod::Week.window(utc(2026, 11, 29, 23, 59, 59));
        let next = QuotaPeriod::Week.window(utc(2026, 11, 30, 0, 0, 0));
        assert_eq!((monday.start, sunday), (since_epoch(1_795_392_000), monday));
        assert_eq!(next.start, since_epoch(1_795_996_800));
        assert_eq!((next.start, next.index), (monday.end, monday.index + 1));
        let first = QuotaPeriod::Week.window(UNIX_EPOCH);
        assert_eq!((first.index, first.start), (0, UNIX_EPOCH - 3 * DAY));
    }

    #[test]
    fn month_windows_follow_the_calendar_and_leap_years() {
        let months = [(2026, 1, 31), (2026, 2, 28), (2028, 2, 29), (2100, 2, 28)];
        for (y, m, days) in months.into_iter().chain([(2000, 2, 29), (2026, 4, 30)]) {
            let window = QuotaPeriod::Month.window(utc(y, m, 15, 12, 0, 0));
            assert_eq!(window.start, utc(y, m, 1, 0, 0, 0), "{y}-{m}");
            assert_eq!(window.length(), days * DAY, "{y}-{m}");
        }
        // 2028-02-01 and 2028-03-01, from `date -u`.
        let february = QuotaPeriod::Month.window(since_epoch(1_832_976_000));
        assert_eq!(february.end, since_epoch(1_835_481_600));
    }

    #[test]
    fn december_rolls_over_to_january_of_the_next_year() {
        let december = QuotaPeriod::Month.window(utc(2026, 12, 31, 23, 59, 59));
        let january = QuotaPeriod::Month.window(utc(2027, 1, 1, 0, 0, 0));
        assert_eq!(january.index, december.index + 1);
        assert_eq!(january.start, since_epoch(1_798_761_600));
        assert_eq!(december.end, january.start);
        assert_eq!(Day::of(january.start).ymd(), (2027, 1, 1));
        assert_eq!(QuotaPeriod::Month.window(UNIX_EPOCH).index, 0);
    }

    #[test]
    fn fixed_length_windows_align_to_the_epoch() {
        let at = utc(2026, 11, 24, 13, 7, 42);
        for length in [30 * DAY, Duration::from_secs(90)] {
            let period = QuotaPeriod::every(length).expect("whole seconds");
            let window = period.window(at);
            let index = u32::try_from(window.index).expect("a small index");
            assert_eq!(window.start, UNIX_EPOCH + length * index);
            assert!(window.start <= at && at < window.end);
            assert_eq!(window.length(), length);
            let next = period.window(window.end);
            assert_eq!((next.index, next.start), (window.index + 1, window.end));
        }
    }

    #[test]
    fn times_outside_1970_to_9999_are_clamped() {
        let before = UNIX_EPOCH - Duration::from_secs(12_345);
        for period in [QuotaPeriod::Day, QuotaPeriod::Week, QuotaPeriod::Month] {
            assert_eq!(period.window(before), period.window(UNIX_EPOCH));
        }
        assert_eq!(Day::of(before), Day::from_index(0));
        let (last, far_future) = (Day::from_ymd(9999, 12, 31), since_epoch(u64::MAX / 4));
        assert_eq!(Ok(Day::of(far_future)), last);
        assert_eq!(Ok(Day::from_index(u32::MAX).next()), last);
        let longest = QuotaPeriod::Every(Duration::MAX).window(far_future);
        assert_eq!(longest.index, 0);
    }

    #[test]
    fn periods_read_and_print_back() {
        let secs = Duration::from_secs;
        for (text, period, printed) in [
            ("day", QuotaPeriod::Day, "day"),
            ("WEEK", QuotaPeriod::Week, "week"),
            ("Month", QuotaPeriod::Month, "month"),
            ("30d", QuotaPeriod::Every(30 * DAY), "30d"),
            ("12h", QuotaPeriod::Every(secs(43_200)), "12h"),
            ("90s", QuotaPeriod::Every(secs(90)), "90s"),
            ("300s", QuotaPeriod::Every(secs(300)), "5m"),
        ] {
            assert_eq!(text.parse(), Ok(period), "{text}");
            assert_eq!(period.to_string(), printed);
            assert_eq!(printed.parse(), Ok(period));
        }
        let error = "fortnight"
            .parse::<QuotaPeriod>()
            .map_err(|e| e.to_string());
        let expected =
            r#"expected "day", "week", "month" or a duration like "30d", found "fortnight""#;
        assert_eq!(error, Err(expected.into()));
    }

    #[test]
    fn fixed_lengths_must_be_whole_positive_seconds() {
        for text in ["0s", "0", "500ms", "1500ms"] {
            let error = text.parse::<QuotaPeriod>();
            assert_eq!(error, Err(PeriodError::BadLength(text.into())));
        }
        for length in [Duration::ZERO, Duration::from_millis(1500), Duration::MAX] {
            assert!(QuotaPeriod::every(length).is_err(), "{length:?}");
        }
        // Built directly instead, a zero length counts as one second rather than dividing by zero.
        let window = QuotaPeriod::Every(Duration::ZERO).window(UNIX_EPOCH);
        assert_eq!(window.length(), Duration::from_secs(1));
        let error = "500ms".parse::<QuotaPeriod>().map_err(|e| e.to_string());
        let expected =
            r#"expected a period length of whole seconds from "1s" to "2932897d", found "500ms""#;
        assert_eq!(error, Err(expected.into()));
    }

    #[test]
    fn days_read_and_print_as_iso_dates() {
        let day: Day = "2026-11-24".parse().expect("a day");
        assert_eq!(day.start(), since_epoch(1_795_478_400));
        assert_eq!(
            (day.ymd(), day.to_string()),
            ((2026, 11, 24), "2026-11-24".into())
        );
        let malformed = "24/11/2026|2026-11-4|2026-11-24T00:00Z| 2026-11-24|+026-11-24|2026-1é-2|";
        for text in malformed.split('|') {
            assert_eq!(text.parse::<Day>(), Err(PeriodError::BadDay(text.into())));
        }
        let error = "24/11/2026".parse::<Day>().map_err(|e| e.to_string());
        let expected = r#"expected a day like "2026-11-24", found "24/11/2026""#;
        assert_eq!(error, Err(expected.into()));
    }

    #[test]
    fn dates_missing_from_the_calendar_are_refused() {
        let missing =
            "2026-02-29 2026-13-01 2026-04-31 2026-00-10 2026-01-00 1969-12-31 2100-02-29";
        for text in missing.split(' ') {
            let error = text.parse::<Day>();
            assert_eq!(error, Err(PeriodError::NoSuchDay(text.into())));
        }
        assert!(Day::from_ymd(2028, 2, 29).is_ok() && Day::from_ymd(-1, 1, 1).is_err());
        let error = Day::from_ymd(2026, 2, 29).map_err(|e| e.to_string());
        let expected = "expected a calendar date from 1970-01-01 to 9999-12-31, found 2026-02-29";
        assert_eq!(error, Err(expected.into()));
    }

    #[test]
    fn periods_and_days_are_strings_in_config() {
        let period: QuotaPeriod = serde_json::from_str(r#""MONTH""#).expect("AWS spelling");
        let day: Day = serde_json::from_str(r#""2026-11-24""#).expect("a day");
        assert_eq!((period, day.ymd()), (QuotaPeriod::Month, (2026, 11, 24)));
        let written = serde_json::to_string(&(QuotaPeriod::Every(30 * DAY), day)).expect("json");
        assert_eq!(written, r#"["30d","2026-11-24"]"#);
        let error = serde_json::from_str::<QuotaPeriod>(r#""fortnight""#).expect_err("unknown");
        assert!(
            error.to_string().contains(r#"found "fortnight""#),
            "{error}"
        );
        assert!(serde_json::from_str::<Day>(r#""24/11/2026""#).is_err());
    }

    #[test]
    fn days_agree_with_day_windows_and_the_calendar() {
        // The first eight years, and the turn of 2100 (a century that is not a leap year).
        for index in (0..3000).chain(47_482..49_000) {
            let day = Day::from_index(index);
            let (y, m, d) = day.ymd();
            assert_eq!(Day::from_ymd(y, m, d), Ok(day));
            assert_eq!(day.to_string().parse(), Ok(day));
            let window = QuotaPeriod::Day.window(day.start() + Duration::from_secs(43_200));
            assert_eq!((window.index, window.start), (index.into(), day.start()));
            assert_eq!(window.end, day.next().start());
            assert_eq!(Day::of(window.end - Duration::from_nanos(1)), day);
            // The next date follows from this one by the month-length table alone.
            let next = if d < days_in_month(y as u64, m) {
                (y, m, d + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
            assert_eq!(day.next().ymd(), next);
            let month_start = QuotaPeriod::Month.window(day.start()).start;
            assert_eq!(month_start == day.start(), d == 1);
        }
    }
}
