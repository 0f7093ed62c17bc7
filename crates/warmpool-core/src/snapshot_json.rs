//! The snapshot's JSON form: what `warmpool plan` reads, validated field by field.
//!
//! Reading happens in two passes. Serde, with `deny_unknown_fields` and `serde_path_to_error`, checks the shape
//! (types, required keys, unknown keys, enum values) and reports the path of the first bad field. A second pass
//! converts the raw values into the [`crate::model`] types, checking what serde cannot (timestamps, durations,
//! ranges, cron patterns, time zones, overlapping schedules, duplicate and unknown ids), again naming the path,
//! e.g. `presets[0].scheduling.schedules[1].cron: minute field must be *`. The first problem found is reported.
//! Nothing else is cross-checked: fields are taken as given. No input makes this panic.
//!
//! [`to_json`] writes a snapshot back in the same form, so a live snapshot can be saved and replayed with
//! `warmpool plan`.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::duration::Duration;
use crate::ids::{PresetId, WorkspaceId};
use crate::model::{
    CreationFailures, JobStatus, LatestBuild, MAX_INSTANCES, PlannerConfig, PresetSnapshot,
    PresetStatus, Settings, Snapshot, Transition, WorkspaceSnapshot,
};
use crate::plan::format_timestamp;
use crate::schedule::{Cron, Schedule, Scheduling, SchedulingError, parse_timezone};

/// A snapshot that could not be read: where, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", if path.is_empty() { String::new() } else { format!("{path}: ") })]
pub struct SnapshotError {
    /// The field path, e.g. `presets[0].ttl`; empty for the document as a whole.
    pub path: String,
    pub message: String,
}

impl SnapshotError {
    fn at(path: impl Into<String>, message: impl Into<String>) -> Self {
        SnapshotError {
            path: path.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSnapshot {
    now: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    config: Option<RawConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    settings: Option<RawSettings>,
    presets: Vec<RawPreset>,
    workspaces: Vec<RawWorkspace>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    backoff_interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    backoff_lookback: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failure_hard_limit: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reconciliation_paused: Option<bool>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPreset {
    id: String,
    template: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    template_version: Option<String>,
    preset: String,
    active: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    instances: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ttl: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    invalidated_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scheduling: Option<RawScheduling>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<PresetStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    paused: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    creation_failures: Option<RawCreationFailures>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScheduling {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timezone: Option<String>,
    #[serde(default)]
    schedules: Vec<RawSchedule>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    cron: String,
    instances: i64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCreationFailures {
    #[serde(default)]
    consecutive: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_failure_at: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkspace {
    id: String,
    owner: String,
    preset: String,
    created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ready: Option<bool>,
    latest_build: RawBuild,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBuild {
    number: i64,
    transition: Transition,
    status: JobStatus,
    created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    active_version: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    picked_up: Option<bool>,
}

/// Reads a snapshot from JSON text.
pub fn from_json(text: &str) -> Result<Snapshot, SnapshotError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let raw: RawSnapshot = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        // serde_json appends " at line L column C"; keep it, it helps find the spot in a large file.
        let path = if path == "." { String::new() } else { path };
        SnapshotError::at(path, inner.to_string())
    })?;
    de.end()
        .map_err(|err| SnapshotError::at("", err.to_string()))?;
    convert(raw)
}

fn timestamp(path: &str, text: &str) -> Result<DateTime<Utc>, SnapshotError> {
    let at = DateTime::parse_from_rfc3339(text)
        .map(|t| t.to_utc())
        .map_err(|err| {
            SnapshotError::at(path, format!("invalid RFC 3339 timestamp {text:?}: {err}"))
        })?;
    // Output is UTC RFC 3339, which has four-digit years: refuse instants it could not write back.
    if !(0..=9999).contains(&chrono::Datelike::year(&at)) {
        return Err(SnapshotError::at(
            path,
            format!("timestamp {text:?} is outside years 0000-9999 in UTC"),
        ));
    }
    Ok(at)
}

fn duration(path: &str, text: &str) -> Result<Duration, SnapshotError> {
    Duration::parse(text).map_err(|err| SnapshotError::at(path, err.to_string()))
}

fn count(path: &str, value: i64, max: Option<u32>) -> Result<u32, SnapshotError> {
    if value < 0 {
        return Err(SnapshotError::at(
            path,
            format!("must not be negative, got {value}"),
        ));
    }
    match (u32::try_from(value), max) {
        (Ok(v), Some(max)) if v <= max => Ok(v),
        (Ok(v), None) => Ok(v),
        _ => Err(SnapshotError::at(
            path,
            format!("{value} is out of range 0-{}", max.unwrap_or(u32::MAX)),
        )),
    }
}

fn non_empty(path: &str, text: &str) -> Result<(), SnapshotError> {
    if text.is_empty() {
        Err(SnapshotError::at(path, "must not be empty"))
    } else {
        Ok(())
    }
}

fn convert(raw: RawSnapshot) -> Result<Snapshot, SnapshotError> {
    let now = timestamp("now", &raw.now)?;
    let mut config = PlannerConfig::default();
    if let Some(c) = raw.config {
        if let Some(text) = &c.backoff_interval {
            config.backoff_interval = duration("config.backoff_interval", text)?;
        }
        if let Some(text) = &c.backoff_lookback {
            config.backoff_lookback = duration("config.backoff_lookback", text)?;
        }
        if let Some(limit) = c.failure_hard_limit {
            config.failure_hard_limit = count("config.failure_hard_limit", limit, None)?;
        }
    }
    let settings = Settings {
        reconciliation_paused: raw
            .settings
            .and_then(|s| s.reconciliation_paused)
            .unwrap_or(false),
    };

    let mut preset_ids = HashSet::with_capacity(raw.presets.len());
    let mut presets = Vec::with_capacity(raw.presets.len());
    for (i, p) in raw.presets.into_iter().enumerate() {
        let path = format!("presets[{i}]");
        let preset = convert_preset(&path, p)?;
        if !preset_ids.insert(preset.id.clone()) {
            return Err(SnapshotError::at(
                format!("{path}.id"),
                format!("duplicate preset id {:?}", preset.id.as_str()),
            ));
        }
        presets.push(preset);
    }
    let active_by_id: std::collections::HashMap<&PresetId, bool> =
        presets.iter().map(|p| (&p.id, p.active)).collect();

    let mut workspace_ids = HashSet::with_capacity(raw.workspaces.len());
    let mut workspaces = Vec::with_capacity(raw.workspaces.len());
    for (i, w) in raw.workspaces.into_iter().enumerate() {
        let path = format!("workspaces[{i}]");
        non_empty(&format!("{path}.id"), &w.id)?;
        non_empty(&format!("{path}.owner"), &w.owner)?;
        let preset = PresetId::new(w.preset);
        let Some(&preset_active) = active_by_id.get(&preset) else {
            return Err(SnapshotError::at(
                format!("{path}.preset"),
                format!("unknown preset {:?}", preset.as_str()),
            ));
        };
        let b = w.latest_build;
        let bpath = format!("{path}.latest_build");
        if b.number < 0 {
            return Err(SnapshotError::at(
                format!("{bpath}.number"),
                format!("must not be negative, got {}", b.number),
            ));
        }
        let latest_build = LatestBuild {
            number: b.number as u64,
            transition: b.transition,
            status: b.status,
            created_at: timestamp(&format!("{bpath}.created_at"), &b.created_at)?,
            active_version: b.active_version.unwrap_or(preset_active),
            picked_up: b.picked_up.unwrap_or(b.status != JobStatus::Pending),
        };
        let running = latest_build.transition == Transition::Start
            && latest_build.status == JobStatus::Succeeded;
        let workspace = WorkspaceSnapshot {
            id: WorkspaceId::new(w.id),
            owner: w.owner,
            preset,
            created_at: timestamp(&format!("{path}.created_at"), &w.created_at)?,
            ready: w.ready.unwrap_or(running),
            latest_build,
        };
        if !workspace_ids.insert(workspace.id.clone()) {
            return Err(SnapshotError::at(
                format!("{path}.id"),
                format!("duplicate workspace id {:?}", workspace.id.as_str()),
            ));
        }
        workspaces.push(workspace);
    }

    Ok(Snapshot {
        now,
        config,
        settings,
        presets,
        workspaces,
    })
}

fn convert_preset(path: &str, p: RawPreset) -> Result<PresetSnapshot, SnapshotError> {
    non_empty(&format!("{path}.id"), &p.id)?;
    let instances = p
        .instances
        .map(|n| count(&format!("{path}.instances"), n, Some(MAX_INSTANCES)))
        .transpose()?;
    let ttl = p
        .ttl
        .map(|t| duration(&format!("{path}.ttl"), &t))
        .transpose()?
        .filter(|t| !t.is_zero());
    let invalidated_at = p
        .invalidated_at
        .map(|t| timestamp(&format!("{path}.invalidated_at"), &t))
        .transpose()?;
    let scheduling = p
        .scheduling
        .map(|s| convert_scheduling(&format!("{path}.scheduling"), s))
        .transpose()?;
    let creation_failures = p
        .creation_failures
        .map(|f| {
            let fpath = format!("{path}.creation_failures");
            let consecutive = count(&format!("{fpath}.consecutive"), f.consecutive, None)?;
            let last_failure_at = f
                .last_failure_at
                .map(|t| timestamp(&format!("{fpath}.last_failure_at"), &t))
                .transpose()?;
            if consecutive > 0 && last_failure_at.is_none() {
                return Err(SnapshotError::at(
                    format!("{fpath}.last_failure_at"),
                    "required when consecutive > 0",
                ));
            }
            Ok(CreationFailures {
                consecutive,
                last_failure_at,
            })
        })
        .transpose()?;
    Ok(PresetSnapshot {
        id: PresetId::new(p.id),
        template: p.template,
        template_version: p.template_version,
        preset: p.preset,
        active: p.active,
        instances,
        ttl,
        invalidated_at,
        scheduling,
        status: p.status.unwrap_or_default(),
        paused: p.paused.unwrap_or(false),
        creation_failures,
    })
}

fn convert_scheduling(path: &str, s: RawScheduling) -> Result<Scheduling, SnapshotError> {
    let mut schedules = Vec::with_capacity(s.schedules.len());
    for (i, raw) in s.schedules.into_iter().enumerate() {
        let spath = format!("{path}.schedules[{i}]");
        let cron = Cron::parse(&raw.cron)
            .map_err(|err| SnapshotError::at(format!("{spath}.cron"), err.to_string()))?;
        let instances = count(
            &format!("{spath}.instances"),
            raw.instances,
            Some(MAX_INSTANCES),
        )?;
        schedules.push(Schedule {
            cron_text: raw.cron,
            cron,
            instances,
        });
    }
    let timezone = match s.timezone.as_deref() {
        Some(name) if !name.is_empty() => parse_timezone(name)
            .map_err(|err| SnapshotError::at(format!("{path}.timezone"), err.to_string()))?,
        _ if schedules.is_empty() => chrono_tz::Tz::UTC,
        _ => {
            return Err(SnapshotError::at(
                format!("{path}.timezone"),
                "required when schedules are given",
            ));
        }
    };
    Scheduling::new(timezone, schedules).map_err(|err| match err {
        SchedulingError::Overlap { index, .. } => {
            SnapshotError::at(format!("{path}.schedules[{index}]"), err.to_string())
        }
        SchedulingError::UnknownTimeZone(_) => {
            SnapshotError::at(format!("{path}.timezone"), err.to_string())
        }
    })
}

/// Writes a snapshot in the JSON form [`from_json`] reads. Every field is written explicitly.
pub fn to_json(snapshot: &Snapshot) -> serde_json::Value {
    let raw = RawSnapshot {
        now: format_timestamp(&snapshot.now),
        config: Some(RawConfig {
            backoff_interval: Some(snapshot.config.backoff_interval.to_string()),
            backoff_lookback: Some(snapshot.config.backoff_lookback.to_string()),
            failure_hard_limit: Some(i64::from(snapshot.config.failure_hard_limit)),
        }),
        settings: Some(RawSettings {
            reconciliation_paused: Some(snapshot.settings.reconciliation_paused),
        }),
        presets: snapshot
            .presets
            .iter()
            .map(|p| RawPreset {
                id: p.id.to_string(),
                template: p.template.clone(),
                template_version: p.template_version.clone(),
                preset: p.preset.clone(),
                active: p.active,
                instances: p.instances.map(i64::from),
                ttl: p.ttl.map(|t| t.to_string()),
                invalidated_at: p.invalidated_at.as_ref().map(format_timestamp),
                scheduling: p.scheduling.as_ref().map(|s| RawScheduling {
                    timezone: Some(s.timezone().name().to_owned()),
                    schedules: s
                        .schedules()
                        .iter()
                        .map(|s| RawSchedule {
                            cron: s.cron_text.clone(),
                            instances: i64::from(s.instances),
                        })
                        .collect(),
                }),
                status: Some(p.status),
                paused: Some(p.paused),
                creation_failures: p.creation_failures.map(|f| RawCreationFailures {
                    consecutive: i64::from(f.consecutive),
                    last_failure_at: f.last_failure_at.as_ref().map(format_timestamp),
                }),
            })
            .collect(),
        workspaces: snapshot
            .workspaces
            .iter()
            .map(|w| RawWorkspace {
                id: w.id.to_string(),
                owner: w.owner.clone(),
                preset: w.preset.to_string(),
                created_at: format_timestamp(&w.created_at),
                ready: Some(w.ready),
                latest_build: RawBuild {
                    number: i64::try_from(w.latest_build.number).unwrap_or(i64::MAX),
                    transition: w.latest_build.transition,
                    status: w.latest_build.status,
                    created_at: format_timestamp(&w.latest_build.created_at),
                    active_version: Some(w.latest_build.active_version),
                    picked_up: Some(w.latest_build.picked_up),
                },
            })
            .collect(),
    };
    serde_json::to_value(raw).unwrap_or(serde_json::Value::Null)
}
