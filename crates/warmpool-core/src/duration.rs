//! Durations in warmpool's one grammar: one or more `<integer><unit>` groups, units in descending order and each
//! at most once, from `d`, `h`, `m`, `s`, `ms` (`"90s"`, `"1h30m"`, `"0s"`).
//!
//! The same parser serves the snapshot JSON, the configuration file and the API, so every surface accepts exactly
//! the same strings. It deliberately accepts nothing else: no spaces, no fractions, no `w`, no months, no empty
//! string. Values are kept in whole milliseconds; anything that would overflow is an error, never a wrap.

use std::fmt;
use std::str::FromStr;

use chrono::TimeDelta;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative span of time, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration {
    millis: u64,
}

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration (expected e.g. \"90s\" or \"1h30m\")")]
    Empty,
    #[error(
        "invalid duration {input:?}: {reason} (expected groups like \"1h30m\" from d, h, m, s, ms)"
    )]
    Invalid { input: String, reason: &'static str },
    #[error("duration {input:?} is too large")]
    Overflow { input: String },
}

/// The units, in the only order they may appear, with their length in milliseconds.
const UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// The largest duration accepted: what `chrono::TimeDelta` can hold in milliseconds, so conversions never fail.
const MAX_MILLIS: u64 = i64::MAX as u64 / 1_000;

impl Duration {
    pub const ZERO: Duration = Duration { millis: 0 };

    pub const fn from_millis(millis: u64) -> Self {
        Duration { millis }
    }

    pub const fn from_secs(secs: u64) -> Self {
        Duration {
            millis: secs * 1_000,
        }
    }

    pub const fn as_millis(self) -> u64 {
        self.millis
    }

    pub const fn is_zero(self) -> bool {
        self.millis == 0
    }

    /// As a `chrono::TimeDelta`, for arithmetic on timestamps.
    pub fn to_time_delta(self) -> TimeDelta {
        // MAX_MILLIS keeps every parsed value within range; saturate for values built by hand.
        TimeDelta::try_milliseconds(i64::try_from(self.millis).unwrap_or(i64::MAX))
            .unwrap_or(TimeDelta::MAX)
    }

    /// As a `std::time::Duration`, for timers at the edges.
    pub fn to_std(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.millis)
    }

    /// `self × n`, saturating.
    pub fn saturating_mul(self, n: u64) -> Duration {
        Duration {
            millis: self.millis.saturating_mul(n),
        }
    }

    /// Parses the grammar described in the module docs.
    pub fn parse(input: &str) -> Result<Duration, DurationError> {
        if input.is_empty() {
            return Err(DurationError::Empty);
        }
        let invalid = |reason| DurationError::Invalid {
            input: input.to_owned(),
            reason,
        };
        let bytes = input.as_bytes();
        let mut pos = 0;
        // Index into UNITS of the next unit allowed: enforces descending order, each unit at most once.
        let mut next_unit = 0;
        let mut total: u64 = 0;
        while pos < bytes.len() {
            let digits_start = pos;
            while pos < bytes.len() && bytes[pos].is_ascii_digit() {
                pos += 1;
            }
            if pos == digits_start {
                return Err(invalid("expected a number"));
            }
            let number: u64 =
                input[digits_start..pos]
                    .parse()
                    .map_err(|_| DurationError::Overflow {
                        input: input.to_owned(),
                    })?;
            let unit_start = pos;
            while pos < bytes.len() && bytes[pos].is_ascii_alphabetic() {
                pos += 1;
            }
            let unit = &input[unit_start..pos];
            if unit.is_empty() {
                return Err(invalid("missing unit"));
            }
            let Some(offset) = UNITS.iter().position(|(name, _)| *name == unit) else {
                return Err(invalid("unknown unit"));
            };
            if offset < next_unit {
                return Err(invalid(
                    "units must be in descending order, each at most once",
                ));
            }
            next_unit = offset + 1;
            total = number
                .checked_mul(UNITS[offset].1)
                .and_then(|ms| total.checked_add(ms))
                .filter(|ms| *ms <= MAX_MILLIS)
                .ok_or_else(|| DurationError::Overflow {
                    input: input.to_owned(),
                })?;
        }
        Ok(Duration { millis: total })
    }
}

impl FromStr for Duration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Duration::parse(s)
    }
}

/// The canonical form: the largest units first, zero groups left out, `"0s"` for zero.
impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.millis == 0 {
            return f.write_str("0s");
        }
        let mut rest = self.millis;
        for (name, len) in UNITS {
            let n = rest / len;
            rest %= len;
            if n > 0 {
                write!(f, "{n}{name}")?;
            }
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Duration::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_the_grammar() {
        let cases = [
            ("90s", 90_000),
            ("1h30m", 5_400_000),
            ("0s", 0),
            ("1d", 86_400_000),
            (
                "2d3h4m5s6ms",
                2 * 86_400_000 + 3 * 3_600_000 + 4 * 60_000 + 5_000 + 6,
            ),
            ("250ms", 250),
            ("1m1ms", 60_001),
            ("007s", 7_000),
        ];
        for (text, millis) in cases {
            assert_eq!(
                Duration::parse(text),
                Ok(Duration::from_millis(millis)),
                "{text}"
            );
        }
    }

    #[test]
    fn refuses_everything_else() {
        for text in [
            "", "s", "10", "1w", "1y", "1mo", "1 h", " 1h", "1h ", "1.5h", "-1s", "+1s", "30m1h",
            "1h1h", "1s1m", "1ms1s", "1H", "1hh", "1h30", "abc", "1µs", "1us", "1ns",
        ] {
            assert!(Duration::parse(text).is_err(), "{text:?} should be refused");
        }
    }

    #[test]
    fn refuses_overflow_instead_of_wrapping() {
        assert!(matches!(
            Duration::parse("99999999999999999999s"),
            Err(DurationError::Overflow { .. })
        ));
        assert!(matches!(
            Duration::parse("9999999999999999d"),
            Err(DurationError::Overflow { .. })
        ));
    }

    #[test]
    fn displays_canonically() {
        assert_eq!(Duration::parse("90s").unwrap().to_string(), "1m30s");
        assert_eq!(Duration::ZERO.to_string(), "0s");
        assert_eq!(Duration::parse("1d0h1ms").unwrap().to_string(), "1d1ms");
    }

    proptest! {
        #[test]
        fn display_round_trips(millis in 0u64..MAX_MILLIS) {
            let d = Duration::from_millis(millis);
            prop_assert_eq!(Duration::parse(&d.to_string()), Ok(d));
        }

        #[test]
        fn never_panics(text in "\\PC{0,24}") {
            let _ = Duration::parse(&text);
        }
    }
}
