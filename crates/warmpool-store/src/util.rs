//! Backend-independent helpers: timestamps as Unix milliseconds, id minting, enum text forms, name suffixes.
//!
//! Timestamps are stored as BIGINT Unix milliseconds on both backends so that every comparison and every expiry
//! computation (ttl, invalidation, lease expiry, lookback) is plain integer arithmetic, identical on both. Ids are
//! UUID v7 built from the caller's `now` (so they sort by logical time under a manual clock) and random bits.

use chrono::{DateTime, Utc};
use warmpool_core::duration::Duration;
use warmpool_core::model::{JobStatus, PresetStatus, Transition};
use warmpool_core::schedule::{Cron, Schedule, Scheduling, parse_timezone};
use warmpool_core::template::PoolSpec;

use crate::error::StoreError;

/// Unix milliseconds of an instant.
pub(crate) fn ms(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

/// The instant of stored Unix milliseconds.
pub(crate) fn from_ms(millis: i64, what: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(millis)
        .ok_or_else(|| StoreError::corrupt(format!("{what}: timestamp {millis} out of range")))
}

pub(crate) fn opt_from_ms(
    millis: Option<i64>,
    what: &str,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    millis.map(|m| from_ms(m, what)).transpose()
}

/// A stored non-negative count.
pub(crate) fn to_u32(value: i64, what: &str) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| StoreError::corrupt(format!("{what}: {value} out of range")))
}

pub(crate) fn to_u64(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::corrupt(format!("{what}: {value} out of range")))
}

/// A new UUID v7 for `now`.
pub(crate) fn new_id(now: DateTime<Utc>) -> String {
    let random = uuid::Uuid::new_v4();
    let mut bytes = [0u8; 10];
    bytes.copy_from_slice(&random.as_bytes()[..10]);
    let millis = u64::try_from(ms(now)).unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(millis, &bytes)
        .into_uuid()
        .to_string()
}

/// A fresh lease token (UUID v4).
pub(crate) fn new_token() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// `n` random characters from `[a-z0-9]`.
pub(crate) fn random_suffix(n: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(n);
    while out.len() < n {
        for byte in uuid::Uuid::new_v4().as_bytes() {
            if out.len() == n {
                break;
            }
            out.push(char::from(ALPHABET[usize::from(*byte) % ALPHABET.len()]));
        }
    }
    out
}

/// How many rows each counter is spread over, so that concurrent events do not queue on one row lock.
pub(crate) const COUNTER_SHARDS: u8 = 16;

pub(crate) fn counter_shard() -> i64 {
    i64::from(uuid::Uuid::new_v4().as_bytes()[0] % COUNTER_SHARDS)
}

/// The name of a new prebuild: `<preset>-<8 random>`, within the 63-character name limit.
pub(crate) fn prebuild_name(preset: &str) -> String {
    let prefix: String = preset.chars().take(54).collect();
    format!("{prefix}-{}", random_suffix(8))
}

/// At most this much of a build's log is kept: its end.
pub(crate) const LOG_LIMIT: usize = 1 << 20;

pub(crate) fn log_tail(log: &str) -> &str {
    if log.len() <= LOG_LIMIT {
        return log;
    }
    let mut start = log.len() - LOG_LIMIT;
    while !log.is_char_boundary(start) {
        start += 1;
    }
    &log[start..]
}

pub(crate) fn parse_transition(text: &str) -> Result<Transition, StoreError> {
    match text {
        "start" => Ok(Transition::Start),
        "stop" => Ok(Transition::Stop),
        "delete" => Ok(Transition::Delete),
        other => Err(StoreError::corrupt(format!("unknown transition {other:?}"))),
    }
}

pub(crate) fn parse_job_status(text: &str) -> Result<JobStatus, StoreError> {
    match text {
        "pending" => Ok(JobStatus::Pending),
        "running" => Ok(JobStatus::Running),
        "succeeded" => Ok(JobStatus::Succeeded),
        "failed" => Ok(JobStatus::Failed),
        "canceling" => Ok(JobStatus::Canceling),
        "canceled" => Ok(JobStatus::Canceled),
        other => Err(StoreError::corrupt(format!("unknown job status {other:?}"))),
    }
}

pub(crate) fn parse_preset_status(text: &str) -> Result<PresetStatus, StoreError> {
    match text {
        "healthy" => Ok(PresetStatus::Healthy),
        "hard_limited" => Ok(PresetStatus::HardLimited),
        "validation_failed" => Ok(PresetStatus::ValidationFailed),
        other => Err(StoreError::corrupt(format!(
            "unknown preset status {other:?}"
        ))),
    }
}

/// Queue order (SPEC section 9): user jobs before prebuild jobs; deletes, then stops, then starts.
pub(crate) fn job_priority(is_prebuild: bool, transition: Transition) -> i64 {
    let base = if is_prebuild { 3 } else { 0 };
    base + match transition {
        Transition::Delete => 0,
        Transition::Stop => 1,
        Transition::Start => 2,
    }
}

/// A preset's pool from its stored columns and schedules (`(cron, instances)` in order).
pub(crate) fn pool_from_parts(
    instances: Option<i64>,
    ttl_ms: Option<i64>,
    timezone: Option<&str>,
    schedules: &[(String, i64)],
    what: &str,
) -> Result<PoolSpec, StoreError> {
    let instances = instances
        .map(|n| to_u32(n, &format!("{what}.instances")))
        .transpose()?;
    let ttl = ttl_ms
        .map(|n| to_u64(n, &format!("{what}.ttl")).map(Duration::from_millis))
        .transpose()?;
    let scheduling = match timezone {
        None => None,
        Some(tz) => {
            let tz = parse_timezone(tz)
                .map_err(|e| StoreError::corrupt(format!("{what}.scheduling: {e}")))?;
            let mut list = Vec::with_capacity(schedules.len());
            for (i, (cron_text, n)) in schedules.iter().enumerate() {
                let cron = Cron::parse(cron_text).map_err(|e| {
                    StoreError::corrupt(format!("{what}.scheduling.schedules[{i}].cron: {e}"))
                })?;
                list.push(Schedule {
                    cron_text: cron_text.clone(),
                    cron,
                    instances: to_u32(*n, &format!("{what}.scheduling.schedules[{i}].instances"))?,
                });
            }
            Some(
                Scheduling::new(tz, list)
                    .map_err(|e| StoreError::corrupt(format!("{what}.scheduling: {e}")))?,
            )
        }
    };
    Ok(PoolSpec {
        instances,
        ttl,
        scheduling,
    })
}

/// The earliest `created_at` of an unexpired prebuild at `now`: expired = created strictly before
/// `invalidated_at`, or older than a non-zero ttl.
pub(crate) fn unexpired_since(now: i64, ttl_ms: Option<i64>, invalidated_at: Option<i64>) -> i64 {
    let by_ttl = match ttl_ms {
        Some(ttl) if ttl > 0 => now.saturating_sub(ttl),
        _ => i64::MIN,
    };
    by_ttl.max(invalidated_at.unwrap_or(i64::MIN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_v7_and_ordered_by_time() {
        let a = new_id(DateTime::from_timestamp_millis(1_000).unwrap());
        let b = new_id(DateTime::from_timestamp_millis(2_000).unwrap());
        assert!(a < b);
        assert_eq!(uuid::Uuid::parse_str(&a).unwrap().get_version_num(), 7);
    }

    #[test]
    fn suffixes_and_names_fit_the_grammar() {
        let s = random_suffix(40);
        assert_eq!(s.len(), 40);
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
        let long = "a".repeat(63);
        assert!(prebuild_name(&long).len() <= 63);
    }

    #[test]
    fn log_tail_keeps_the_end_on_a_char_boundary() {
        let log = format!("é{}", "x".repeat(LOG_LIMIT));
        let tail = log_tail(&log);
        assert_eq!(tail.len(), LOG_LIMIT);
        assert!(tail.ends_with('x'));
    }

    #[test]
    fn priorities_follow_the_queue_order() {
        let order = [
            job_priority(false, Transition::Delete),
            job_priority(false, Transition::Stop),
            job_priority(false, Transition::Start),
            job_priority(true, Transition::Delete),
            job_priority(true, Transition::Stop),
            job_priority(true, Transition::Start),
        ];
        assert!(order.windows(2).all(|w| w[0] < w[1]));
    }
}
