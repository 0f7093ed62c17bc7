//! The snapshot model: everything the planner knows about the world at one instant.
//!
//! A [`Snapshot`] is built either by the store (one consistent read of the database) or from the JSON that
//! `warmpool plan` reads (see [`crate::snapshot_json`]). It holds facts only: every derived quantity (running,
//! expired, in progress, backoff, hard limit) is computed by the planner, so the two sources cannot disagree on a
//! rule. Types here are already validated; constructing them from outside input goes through the JSON reader or the
//! store, which check every field.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::duration::Duration;
use crate::ids::{PresetId, WorkspaceId};
use crate::schedule::Scheduling;

/// The reserved owner of pooled (unclaimed) workspaces. No user can have this name.
pub const PREBUILDS_OWNER: &str = "prebuilds";

/// Largest `instances` a preset or schedule may ask for.
pub const MAX_INSTANCES: u32 = 1000;

/// Planner settings from `[reconciler]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannerConfig {
    pub backoff_interval: Duration,
    pub backoff_lookback: Duration,
    /// 0 disables the hard limit.
    pub failure_hard_limit: u32,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        PlannerConfig {
            backoff_interval: Duration::from_secs(60),
            backoff_lookback: Duration::from_secs(3600),
            failure_hard_limit: 3,
        }
    }
}

/// Site-wide settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Settings {
    pub reconciliation_paused: bool,
}

/// A preset's stored status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresetStatus {
    #[default]
    Healthy,
    HardLimited,
    ValidationFailed,
}

impl PresetStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PresetStatus::Healthy => "healthy",
            PresetStatus::HardLimited => "hard_limited",
            PresetStatus::ValidationFailed => "validation_failed",
        }
    }
}

/// The persisted creation-failure record of a preset (the seed's backoff, made durable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreationFailures {
    pub consecutive: u32,
    /// Set whenever `consecutive > 0`.
    pub last_failure_at: Option<DateTime<Utc>>,
}

/// One preset of one template version, with its pool settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PresetSnapshot {
    pub id: PresetId,
    pub template: String,
    pub template_version: Option<String>,
    pub preset: String,
    /// Its version is the template's active version and the template is not deleted.
    pub active: bool,
    /// `None`: no pool (unless `scheduling` is set, when it counts as 0 outside the schedules).
    pub instances: Option<u32>,
    /// `None` (or zero) means no TTL.
    pub ttl: Option<Duration>,
    pub invalidated_at: Option<DateTime<Utc>>,
    pub scheduling: Option<Scheduling>,
    pub status: PresetStatus,
    pub paused: bool,
    pub creation_failures: Option<CreationFailures>,
}

/// A build's transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transition {
    Start,
    Stop,
    Delete,
}

impl Transition {
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Start => "start",
            Transition::Stop => "stop",
            Transition::Delete => "delete",
        }
    }
}

/// The status of a build's job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    Canceling,
    Canceled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Canceling => "canceling",
            JobStatus::Canceled => "canceled",
        }
    }

    /// Pending or running: the build is in progress (`canceling` is not, as in Coder).
    pub fn in_progress(self) -> bool {
        matches!(self, JobStatus::Pending | JobStatus::Running)
    }
}

/// The latest build of a workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatestBuild {
    pub number: u64,
    pub transition: Transition,
    pub status: JobStatus,
    pub created_at: DateTime<Utc>,
    /// The build's template version is the template's active version.
    pub active_version: bool,
    /// A worker has taken the build's job.
    pub picked_up: bool,
}

/// A workspace, as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceSnapshot {
    pub id: WorkspaceId,
    pub owner: String,
    pub preset: PresetId,
    /// The workspace's creation time: the basis for TTL and for oldest-first order.
    pub created_at: DateTime<Utc>,
    pub ready: bool,
    pub latest_build: LatestBuild,
}

impl WorkspaceSnapshot {
    pub fn is_prebuild(&self) -> bool {
        self.owner == PREBUILDS_OWNER
    }

    /// Latest build is a `start` that succeeded.
    pub fn is_running(&self) -> bool {
        self.latest_build.transition == Transition::Start
            && self.latest_build.status == JobStatus::Succeeded
    }
}

/// Everything the planner decides from.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub now: DateTime<Utc>,
    pub config: PlannerConfig,
    pub settings: Settings,
    pub presets: Vec<PresetSnapshot>,
    pub workspaces: Vec<WorkspaceSnapshot>,
}
