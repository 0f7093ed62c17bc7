//! Prebuild schedules: a restricted cron dialect read as **time ranges** in a preset's time zone.
//!
//! A pattern has five fields, `minute hour day-of-month month day-of-week`. The minute field must be `*`; each other
//! field is `*`, a number, a range `a-b`, or a comma list of those (no steps, names, `?`, `L`, `W`, `#`). A schedule
//! is active at an instant when that instant's local time in the time zone matches the hour, day and month fields,
//! so `* 9-18 * * 1-5` covers 09:00:00–18:59:59 on weekdays. Day-of-month and day-of-week follow the usual cron rule:
//! both restricted, either matches; one of them `*`, the other decides.
//!
//! Each field is parsed into a bitset and matched against the local-time fields that chrono-tz gives for the
//! instant. This answers "is the schedule active now" directly, which stays right across DST gaps and overlaps (a
//! skipped local hour never matches, a repeated one matches twice); deriving it from a cron library's next firing
//! time would not. Nothing here reads the clock: the instant is an argument.

use chrono::{DateTime, Datelike, Timelike, Utc};
use chrono_tz::Tz;

/// Why a cron pattern was refused. The message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    #[error("expected 5 fields (minute hour day-of-month month day-of-week), found {0}")]
    FieldCount(usize),
    #[error("minute field must be *")]
    Minute,
    #[error("{field} field: {reason}")]
    Field { field: &'static str, reason: String },
}

/// One parsed field: a bitset of the values it matches, and whether it was written as `*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Field {
    bits: u64,
    star: bool,
}

impl Field {
    fn contains(self, value: u32) -> bool {
        value < 64 && self.bits & (1 << value) != 0
    }

    fn intersects(self, other: Field) -> bool {
        self.bits & other.bits != 0
    }

    fn parse(text: &str, name: &'static str, min: u32, max: u32) -> Result<Field, CronError> {
        let err = |reason: String| CronError::Field {
            field: name,
            reason,
        };
        if text == "*" {
            let bits = (min..=max).fold(0u64, |acc, v| acc | 1 << v);
            return Ok(Field { bits, star: true });
        }
        let mut bits = 0u64;
        for item in text.split(',') {
            if item.is_empty() {
                return Err(err(format!("empty item in {text:?}")));
            }
            let (lo, hi) = match item.split_once('-') {
                Some((a, b)) => (
                    parse_value(a, name, min, max)?,
                    parse_value(b, name, min, max)?,
                ),
                None => {
                    let v = parse_value(item, name, min, max)?;
                    (v, v)
                }
            };
            if lo > hi {
                return Err(err(format!("reversed range {item:?}")));
            }
            for v in lo..=hi {
                bits |= 1 << v;
            }
        }
        Ok(Field { bits, star: false })
    }
}

fn parse_value(text: &str, field: &'static str, min: u32, max: u32) -> Result<u32, CronError> {
    let err = |reason: String| CronError::Field { field, reason };
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(format!(
            "{text:?} is not a number (only *, numbers, ranges a-b and comma lists are allowed)"
        )));
    }
    match text.parse::<u32>() {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(err(format!("value {text} out of range {min}-{max}"))),
    }
}

/// A parsed cron pattern of the dialect described in the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    hours: Field,
    days_of_month: Field,
    months: Field,
    days_of_week: Field,
}

impl Cron {
    pub fn parse(text: &str) -> Result<Cron, CronError> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [minute, hour, dom, month, dow] = fields[..] else {
            return Err(CronError::FieldCount(fields.len()));
        };
        if minute != "*" {
            return Err(CronError::Minute);
        }
        Ok(Cron {
            hours: Field::parse(hour, "hour", 0, 23)?,
            days_of_month: Field::parse(dom, "day-of-month", 1, 31)?,
            months: Field::parse(month, "month", 1, 12)?,
            days_of_week: Field::parse(dow, "day-of-week", 0, 6)?,
        })
    }

    /// Whether the local wall-clock time `local` lies inside the pattern's range.
    pub fn matches_local<T: Datelike + Timelike>(&self, local: &T) -> bool {
        if !self.hours.contains(local.hour()) || !self.months.contains(local.month()) {
            return false;
        }
        let dom = self.days_of_month.contains(local.day());
        let dow = self
            .days_of_week
            .contains(local.weekday().num_days_from_sunday());
        if self.days_of_month.star || self.days_of_week.star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// Whether the pattern is active at `at`, read in time zone `tz`.
    pub fn is_active(&self, tz: Tz, at: DateTime<Utc>) -> bool {
        self.matches_local(&at.with_timezone(&tz))
    }

    /// Two patterns overlap when their months, their hours, and their days intersect. Days follow the matching
    /// rule (and Coder's validator): when either pattern leaves day-of-month as `*`, only the days of week are
    /// compared; else when either leaves day-of-week as `*`, only the days of month; else either intersecting is
    /// enough. So `* 9-18 * * 1-5` and `* 9-13 * * 6,0` do not overlap.
    pub fn overlaps(&self, other: &Cron) -> bool {
        let days = if self.days_of_month.star || other.days_of_month.star {
            self.days_of_week.intersects(other.days_of_week)
        } else if self.days_of_week.star || other.days_of_week.star {
            self.days_of_month.intersects(other.days_of_month)
        } else {
            self.days_of_month.intersects(other.days_of_month)
                || self.days_of_week.intersects(other.days_of_week)
        };
        days && self.months.intersects(other.months) && self.hours.intersects(other.hours)
    }
}

/// One schedule: while its pattern is active, the pool's target is `instances`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub cron_text: String,
    pub cron: Cron,
    pub instances: u32,
}

/// A preset's schedules and the time zone they are read in. Construct it with [`Scheduling::new`], which
/// rejects overlapping schedules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scheduling {
    timezone: Tz,
    schedules: Vec<Schedule>,
}

/// Why a set of schedules was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedulingError {
    #[error("unknown time zone {0:?}")]
    UnknownTimeZone(String),
    /// `index` overlaps the earlier schedule `other`.
    #[error("overlaps schedules[{other}]")]
    Overlap { index: usize, other: usize },
}

/// Parses an IANA time zone name.
pub fn parse_timezone(name: &str) -> Result<Tz, SchedulingError> {
    name.parse::<Tz>()
        .map_err(|_| SchedulingError::UnknownTimeZone(name.to_owned()))
}

impl Scheduling {
    pub fn new(timezone: Tz, schedules: Vec<Schedule>) -> Result<Scheduling, SchedulingError> {
        for (index, schedule) in schedules.iter().enumerate() {
            if let Some(other) = schedules[..index]
                .iter()
                .position(|earlier| earlier.cron.overlaps(&schedule.cron))
            {
                return Err(SchedulingError::Overlap { index, other });
            }
        }
        Ok(Scheduling {
            timezone,
            schedules,
        })
    }

    pub fn timezone(&self) -> Tz {
        self.timezone
    }

    pub fn schedules(&self) -> &[Schedule] {
        &self.schedules
    }

    /// The first schedule active at `at`: its index and its `instances`.
    pub fn active_at(&self, at: DateTime<Utc>) -> Option<(usize, u32)> {
        if self.schedules.is_empty() {
            return None;
        }
        let local = at.with_timezone(&self.timezone);
        self.schedules
            .iter()
            .position(|s| s.cron.matches_local(&local))
            .map(|i| (i, self.schedules[i].instances))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn cron(text: &str) -> Cron {
        Cron::parse(text).unwrap()
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    fn schedule(text: &str, instances: u32) -> Schedule {
        Schedule {
            cron_text: text.to_owned(),
            cron: cron(text),
            instances,
        }
    }

    /// The scheduled target with a baseline, as the planner resolves it.
    fn target(scheduling: &Scheduling, baseline: u32, now: &str) -> u32 {
        scheduling
            .active_at(at(now))
            .map_or(baseline, |(_, instances)| instances)
    }

    #[test]
    fn matches_cron_as_a_range() {
        // TestMatchesCron.
        let c = cron("* 9-18 * * 1-5");
        assert!(!c.is_active(Tz::UTC, at("2025-06-02T08:59:59Z")));
        assert!(c.is_active(Tz::UTC, at("2025-06-02T09:00:00Z")));
        assert!(c.is_active(Tz::UTC, at("2025-06-02T18:59:59Z")));
        assert!(!c.is_active(Tz::UTC, at("2025-06-02T19:00:00Z")));
    }

    #[test]
    fn business_hours_target() {
        // Coder's TestCalculateDesiredInstances, `* 9-18 * * 1-5` ×3 with baseline 1 (2025-06-02 is a Monday).
        let s = Scheduling::new(Tz::UTC, vec![schedule("* 9-18 * * 1-5", 3)]).unwrap();
        for (now, want) in [
            ("2025-06-02T08:59:59Z", 1),
            ("2025-06-02T09:00:00Z", 3),
            ("2025-06-02T09:01:00Z", 3),
            ("2025-06-02T14:00:00Z", 3),
            ("2025-06-02T18:00:00Z", 3),
            ("2025-06-02T18:59:59Z", 3),
            ("2025-06-02T19:00:00Z", 1),
            ("2025-06-02T19:01:00Z", 1),
            ("2025-06-02T02:00:00Z", 1),
            ("2025-06-07T14:00:00Z", 1),
            ("2025-06-08T14:00:00Z", 1),
            // Inputs in any offset are converted: 05:00 at -04:00 is 09:00 UTC.
            ("2025-06-02T05:00:00-04:00", 3),
        ] {
            assert_eq!(target(&s, 1, now), want, "{now}");
        }
    }

    #[test]
    fn three_daily_windows() {
        let s = Scheduling::new(
            Tz::UTC,
            vec![
                schedule("* 6-10 * * 1-5", 2),
                schedule("* 12-16 * * 1-5", 3),
                schedule("* 18-22 * * 1-5", 4),
            ],
        )
        .unwrap();
        for (hour, want) in [(5, 1), (8, 2), (11, 1), (14, 3), (20, 4), (23, 1)] {
            let now = format!("2025-06-02T{hour:02}:00:00Z");
            assert_eq!(target(&s, 1, &now), want, "{now}");
        }
    }

    #[test]
    fn weekday_and_weekend() {
        let s = Scheduling::new(
            Tz::UTC,
            vec![schedule("* 9-18 * * 1-5", 2), schedule("* 9-13 * * 6,0", 3)],
        )
        .unwrap();
        assert_eq!(target(&s, 1, "2025-06-02T14:00:00Z"), 2); // Monday
        assert_eq!(target(&s, 1, "2025-06-07T10:00:00Z"), 3); // Saturday
        assert_eq!(target(&s, 1, "2025-06-07T14:00:00Z"), 1);
    }

    #[test]
    fn los_angeles_time_zone() {
        // `* 9-13 * * 1-5` in America/Los_Angeles (UTC-7 in June), UTC inputs.
        let s = Scheduling::new(
            "America/Los_Angeles".parse().unwrap(),
            vec![schedule("* 9-13 * * 1-5", 3)],
        )
        .unwrap();
        for (now, want) in [
            ("2025-06-02T15:00:00Z", 1),
            ("2025-06-02T16:00:00Z", 3),
            ("2025-06-02T20:59:00Z", 3),
            ("2025-06-02T21:00:00Z", 1),
            ("2025-06-02T23:00:00Z", 1),
        ] {
            assert_eq!(target(&s, 1, now), want, "{now}");
        }
    }

    #[test]
    fn dst_gap_and_overlap_in_berlin() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let c = cron("* 2 * * *");
        // 2025-03-30: 02:00 local is skipped; 01:30Z is 03:30 local.
        assert!(!c.is_active(berlin, at("2025-03-30T01:30:00Z")));
        assert!(!c.is_active(berlin, at("2025-03-30T00:59:59Z")));
        // 2025-10-26: 02:00-02:59 local happens twice, at 00:xxZ (CEST) and 01:xxZ (CET).
        assert!(c.is_active(berlin, at("2025-10-26T00:30:00Z")));
        assert!(c.is_active(berlin, at("2025-10-26T01:30:00Z")));
        assert!(!c.is_active(berlin, at("2025-10-26T02:00:00Z")));
    }

    #[test]
    fn day_of_month_and_day_of_week() {
        // Both restricted: either matches. 2025-06-01 is a Sunday, 2025-06-15 a Sunday, 2025-06-02 a Monday.
        let both = cron("* * 15 * 1");
        assert!(both.is_active(Tz::UTC, at("2025-06-15T10:00:00Z")));
        assert!(both.is_active(Tz::UTC, at("2025-06-02T10:00:00Z")));
        assert!(!both.is_active(Tz::UTC, at("2025-06-03T10:00:00Z")));
        // One is *: the other decides.
        let dom_only = cron("* * 15 * *");
        assert!(dom_only.is_active(Tz::UTC, at("2025-06-15T10:00:00Z")));
        assert!(!dom_only.is_active(Tz::UTC, at("2025-06-02T10:00:00Z")));
        let dow_only = cron("* * * * 0");
        assert!(dow_only.is_active(Tz::UTC, at("2025-06-01T10:00:00Z")));
        assert!(!dow_only.is_active(Tz::UTC, at("2025-06-02T10:00:00Z")));
        // Months.
        let june = cron("* * * 6 *");
        assert!(june.is_active(
            Tz::UTC,
            Utc.with_ymd_and_hms(2025, 6, 30, 23, 0, 0).unwrap()
        ));
        assert!(!june.is_active(Tz::UTC, Utc.with_ymd_and_hms(2025, 7, 1, 0, 0, 0).unwrap()));
    }

    #[test]
    fn refuses_bad_patterns() {
        let cases = [
            ("0 9 * * *", CronError::Minute),
            ("*/5 9 * * *", CronError::Minute),
            ("* 9 * *", CronError::FieldCount(4)),
            ("* 9 * * * *", CronError::FieldCount(6)),
            ("", CronError::FieldCount(0)),
        ];
        for (text, want) in cases {
            assert_eq!(Cron::parse(text), Err(want), "{text:?}");
        }
        for (text, field) in [
            ("* 24 * * *", "hour"),
            ("* 9-8 * * *", "hour"),
            ("* */2 * * *", "hour"),
            ("* 1,,2 * * *", "hour"),
            ("* 9 0 * *", "day-of-month"),
            ("* 9 32 * *", "day-of-month"),
            ("* 9 L * *", "day-of-month"),
            ("* 9 ? * *", "day-of-month"),
            ("* 9 * 0 *", "month"),
            ("* 9 * 13 *", "month"),
            ("* 9 * JAN *", "month"),
            ("* 9 * * 7", "day-of-week"),
            ("* 9 * * MON", "day-of-week"),
            ("* 9 * * 1#2", "day-of-week"),
            ("* 9 * * 1W", "day-of-week"),
            ("* -1 * * *", "hour"),
            ("* 9- * * *", "hour"),
        ] {
            match Cron::parse(text) {
                Err(CronError::Field { field: got, .. }) => assert_eq!(got, field, "{text:?}"),
                other => panic!("{text:?}: expected a {field} error, got {other:?}"),
            }
        }
    }

    #[test]
    fn overlap_rule() {
        let overlapping = [
            ("* 9-12 * * 1-5", "* 12-14 * * 1-5"),
            ("* 9 * * *", "* 9 * * 3"),
            ("* 9 1 * 1", "* 9 2 * 1"), // days of week intersect
            ("* 9 1 * 1", "* 9 1 * 2"), // days of month intersect
            ("* 9 * 1-6 *", "* 9 * 6-12 *"),
            ("* 9 15 * *", "* 9 * * 1"), // the 15th can be a Monday
        ];
        for (a, b) in overlapping {
            assert!(cron(a).overlaps(&cron(b)), "{a} / {b}");
            let err = Scheduling::new(Tz::UTC, vec![schedule(a, 1), schedule(b, 2)]).unwrap_err();
            assert_eq!(err, SchedulingError::Overlap { index: 1, other: 0 });
        }
        let disjoint = [
            ("* 9-11 * * 1-5", "* 12-14 * * 1-5"),
            ("* 9 * * 1-5", "* 9 * * 0,6"),
            ("* 9 * 1-6 *", "* 9 * 7-12 *"),
            ("* 9 1 * 1", "* 9 2 * 2"),
            ("* 9 1 * *", "* 9 2 * *"),
            ("* 9-18 * * 1-5", "* 9-13 * * 6,0"),
        ];
        for (a, b) in disjoint {
            assert!(!cron(a).overlaps(&cron(b)), "{a} / {b}");
        }
    }

    #[test]
    fn unknown_time_zone() {
        assert_eq!(
            parse_timezone("Mars/Olympus_Mons"),
            Err(SchedulingError::UnknownTimeZone("Mars/Olympus_Mons".into()))
        );
        assert!(parse_timezone("Europe/Berlin").is_ok());
    }

    proptest! {
        #[test]
        fn parse_never_panics(text in "[ *0-9,\\-a-zA-Z#?/]{0,30}") {
            let _ = Cron::parse(&text);
        }

        #[test]
        fn hour_range_matches_exactly_its_hours(lo in 0u32..24, len in 0u32..24, secs in 0i64..(86_400 * 7)) {
            let hi = (lo + len).min(23);
            let c = Cron::parse(&format!("* {lo}-{hi} * * *")).unwrap();
            let t = Utc.with_ymd_and_hms(2025, 6, 2, 0, 0, 0).unwrap() + chrono::TimeDelta::seconds(secs);
            prop_assert_eq!(c.is_active(Tz::UTC, t), (lo..=hi).contains(&t.hour()));
        }
    }
}
