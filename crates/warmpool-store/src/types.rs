//! What the store hands out and takes in, besides the core's [`warmpool_core::model::Snapshot`].
//!
//! Ids are the store's own UUID v7 strings behind typed newtypes (the core's `PresetId` and `WorkspaceId`, and
//! `TemplateId`, `VersionId`, `BuildId` here). Records are plain data read in one query; they carry no behaviour
//! beyond small derivations that every caller would otherwise repeat ([`WorkspaceRecord::status`]). A build and
//! its provisioner job are one row, so a job is named by its [`BuildId`] ([`JobId`] is an alias).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use warmpool_core::ids::{PresetId, WorkspaceId};
use warmpool_core::model::{CreationFailures, JobStatus, PresetStatus, Transition};
use warmpool_core::template::{BuildDefinition, ParameterSpec, PoolSpec};

use warmpool_core::id_type;

id_type!(
    /// A template (one per name, for ever: deleting and re-applying a name revives the same template).
    TemplateId
);
id_type!(
    /// One immutable version of a template.
    VersionId
);
id_type!(
    /// A build, and its provisioner job.
    BuildId
);

/// A job is its build's job: the two share one row and one id.
pub type JobId = BuildId;

/// Who applied a template last: it decides what `serve` may mark deleted when a template leaves its config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppliedBy {
    /// The `serve` configuration file.
    Config,
    /// The API (`PUT /api/v1/templates/{name}`, `warmpool apply`).
    Api,
}

impl AppliedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            AppliedBy::Config => "config",
            AppliedBy::Api => "api",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<AppliedBy> {
        match text {
            "config" => Some(AppliedBy::Config),
            "api" => Some(AppliedBy::Api),
            _ => None,
        }
    }
}

/// What applying a template did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// A new template, with its first version `v1`.
    Created,
    /// The build definition changed: a new version was created and activated.
    NewVersion,
    /// The build definition is the active version's: pool settings, `max_workspaces` and `claim_build` were
    /// written in place (see [`ApplyResult::settings_changed`]).
    Unchanged,
}

/// The answer to an apply: the template as it now is.
#[derive(Debug, Clone, PartialEq)]
pub struct ApplyResult {
    pub outcome: ApplyOutcome,
    /// Something changed at all (a new template or version, or an in-place setting): the reconciler should tick.
    pub settings_changed: bool,
    pub template: TemplateInfo,
}

/// A template with its versions and their presets.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateInfo {
    pub id: TemplateId,
    pub name: String,
    /// Name of the active version (`v3`).
    pub active_version: Option<String>,
    pub max_workspaces: Option<u32>,
    pub claim_build: bool,
    pub applied_by: AppliedBy,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
    /// Oldest first.
    pub versions: Vec<VersionInfo>,
}

impl TemplateInfo {
    pub fn active(&self) -> Option<&VersionInfo> {
        self.versions.iter().find(|v| v.active)
    }
}

/// One version of a template.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionInfo {
    pub id: VersionId,
    pub number: u32,
    /// `v{number}`.
    pub name: String,
    pub active: bool,
    pub applied_by: AppliedBy,
    pub created_at: DateTime<Utc>,
    /// What this version builds (the stored canonical JSON, read back).
    pub definition: BuildDefinition,
    /// From the parameter table, in declaration order.
    pub parameters: Vec<ParameterSpec>,
    /// Ordered by name.
    pub presets: Vec<PresetInfo>,
}

/// One preset of one version, with its pool and its stored state.
#[derive(Debug, Clone, PartialEq)]
pub struct PresetInfo {
    pub id: PresetId,
    pub name: String,
    pub parameters: BTreeMap<String, String>,
    pub pool: PoolSpec,
    pub status: PresetStatus,
    pub invalidated_at: Option<DateTime<Utc>>,
    pub creation_failures: CreationFailures,
    /// The per-preset pause, kept by template and preset name across versions.
    pub paused: bool,
}

/// The latest build of a workspace, as mirrored on the workspace row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatestBuildRecord {
    pub id: BuildId,
    pub number: u64,
    pub transition: Transition,
    pub status: JobStatus,
    pub created_at: DateTime<Utc>,
    /// A worker has taken the job at least once.
    pub picked_up: bool,
}

/// A workspace's status, from its latest build only (SPEC section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkspaceStatus {
    Starting,
    Running,
    Stopping,
    Stopped,
    Deleting,
    Deleted,
    Failed,
    Canceling,
    Canceled,
}

impl WorkspaceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkspaceStatus::Starting => "starting",
            WorkspaceStatus::Running => "running",
            WorkspaceStatus::Stopping => "stopping",
            WorkspaceStatus::Stopped => "stopped",
            WorkspaceStatus::Deleting => "deleting",
            WorkspaceStatus::Deleted => "deleted",
            WorkspaceStatus::Failed => "failed",
            WorkspaceStatus::Canceling => "canceling",
            WorkspaceStatus::Canceled => "canceled",
        }
    }
}

/// A workspace, pooled or claimed, live or deleted.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkspaceRecord {
    pub id: WorkspaceId,
    pub name: String,
    pub owner: String,
    pub template_id: TemplateId,
    pub template: String,
    /// The version of its latest build.
    pub template_version: String,
    pub preset_id: Option<PresetId>,
    pub preset: Option<String>,
    pub created_at: DateTime<Utc>,
    pub claimed_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
    /// The JSON object the latest successful `start` build wrote.
    pub outputs: Option<serde_json::Value>,
    pub latest_build: LatestBuildRecord,
}

impl WorkspaceRecord {
    pub fn is_prebuild(&self) -> bool {
        self.owner == warmpool_core::PREBUILDS_OWNER
    }

    /// SPEC section 6: `starting` (start pending/running), `running` (start succeeded), `stopping`, `stopped`,
    /// `deleting` (a delete pending, running, or failed and being retried), `deleted`, `failed` (the latest start
    /// or stop failed), `canceling`, `canceled`.
    pub fn status(&self) -> WorkspaceStatus {
        let b = &self.latest_build;
        match (b.transition, b.status) {
            (_, JobStatus::Canceling) => WorkspaceStatus::Canceling,
            (_, JobStatus::Canceled) => WorkspaceStatus::Canceled,
            (Transition::Delete, JobStatus::Succeeded) => WorkspaceStatus::Deleted,
            (Transition::Delete, _) => WorkspaceStatus::Deleting,
            (_, JobStatus::Failed) => WorkspaceStatus::Failed,
            (Transition::Start, JobStatus::Succeeded) => WorkspaceStatus::Running,
            (Transition::Start, _) => WorkspaceStatus::Starting,
            (Transition::Stop, JobStatus::Succeeded) => WorkspaceStatus::Stopped,
            (Transition::Stop, _) => WorkspaceStatus::Stopping,
        }
    }

    /// `status == running`.
    pub fn ready(&self) -> bool {
        self.status() == WorkspaceStatus::Running
    }
}

/// Which workspaces to list. Every filter is optional; deleted workspaces are left out unless asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkspaceFilter {
    pub owner: Option<String>,
    pub template: Option<String>,
    pub preset: Option<String>,
    pub include_deleted: bool,
}

/// One build (and its job).
#[derive(Debug, Clone, PartialEq)]
pub struct BuildRecord {
    pub id: BuildId,
    pub workspace_id: WorkspaceId,
    pub number: u64,
    pub transition: Transition,
    pub status: JobStatus,
    pub template_version: String,
    pub preset_id: Option<PresetId>,
    /// The owner the build was queued for (`prebuilds` for the reconciler's builds).
    pub initiator: String,
    pub is_prebuild: bool,
    /// The `start` build that follows a claim of a `claim_build` template.
    pub is_claim: bool,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// Runs so far (acquisitions of the job).
    pub attempts: u32,
    pub error: Option<String>,
    /// A failed delete waiting for its retry is pending until then.
    pub not_before: Option<DateTime<Utc>>,
}

/// A new prebuild: its workspace and its first build, committed together.
#[derive(Debug, Clone, PartialEq)]
pub struct CreatedPrebuild {
    pub workspace: WorkspaceRecord,
    pub build: BuildRecord,
}

/// A claim asks for the oldest ready, unexpired prebuild of the active version's preset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRequest {
    pub template: String,
    pub preset: String,
    pub owner: String,
    pub name: String,
}

/// The answer to a warm claim.
// One value per claim call, never stored in bulk: boxing the record would only cost callers a deref.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimOutcome {
    /// The workspace now belongs to the claimer; `build` is the `start` build of a `claim_build` template.
    Claimed {
        workspace: WorkspaceRecord,
        build: Option<BuildRecord>,
    },
    /// No ready, unexpired prebuild: `claim_missed` was recorded.
    PoolEmpty,
}

/// The lease under which a worker runs a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Random (UUID v4); completion and renewal must present it.
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

/// One parameter value as a build receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobParameter {
    pub name: String,
    pub value: String,
    /// Replaced by `***` in logs and answers.
    pub sensitive: bool,
}

/// A job taken from the queue, with everything its provisioner run needs.
#[derive(Debug, Clone, PartialEq)]
pub struct AcquiredJob {
    pub build: BuildRecord,
    pub workspace_name: String,
    /// The workspace's owner now (a claim build runs with the new owner).
    pub owner: String,
    pub template: String,
    pub template_version: String,
    pub preset: Option<String>,
    pub definition: BuildDefinition,
    /// The preset's values over the template's defaults, in the template's declaration order, then any value
    /// the preset sets for an undeclared name.
    pub parameters: Vec<JobParameter>,
    pub lease: Lease,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    /// Exit status 0; a `start` build's outputs object, if it wrote one.
    Succeeded {
        outputs: Option<serde_json::Value>,
    },
    Failed {
        error: String,
    },
    Canceled,
    /// A failed `delete` to be run again at `at` (SPEC section 5: deletes are retried until they succeed).
    RetryAt {
        error: String,
        at: DateTime<Utc>,
    },
}

/// The process group a job's run started, recorded so that a restarted single-process server can kill it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessRecord {
    pub pgid: i64,
    pub boot_id: String,
    pub start_time: i64,
}

/// A running job whose lease expired: its worker is presumed lost.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpiredLease {
    pub build_id: BuildId,
    pub workspace_id: WorkspaceId,
    pub transition: Transition,
    pub attempts: u32,
    pub lease_owner: Option<String>,
    pub lease_expires_at: DateTime<Utc>,
    pub process: Option<ProcessRecord>,
}

/// What requeueing an expired job did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequeueOutcome {
    /// Pending again.
    Requeued,
    /// A `start` or `stop` that has already run [`MAX_RUNS`] times: failed.
    Failed,
    /// Its lease is not expired (renewed or finished in the meantime): nothing changed.
    NotExpired,
}

/// A `start` or `stop` runs at most this many times in all when its worker keeps getting lost.
pub const MAX_RUNS: u32 = 3;

/// Queue figures for `/api/v1/status` and `warmpool_jobs{status}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobCounts {
    /// Status name → count, for every status that has a job.
    pub by_status: BTreeMap<String, u64>,
    pub oldest_pending_at: Option<DateTime<Utc>>,
    /// Delete jobs waiting for a retry after a failure.
    pub failing_deletes: u64,
}

/// The monotonic counters of SPEC section 8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CounterName {
    PrebuildsCreated,
    PrebuildsFailed,
    PrebuildsClaimed,
    ClaimsMissed,
}

impl CounterName {
    pub fn as_str(self) -> &'static str {
        match self {
            CounterName::PrebuildsCreated => "prebuilds_created",
            CounterName::PrebuildsFailed => "prebuilds_failed",
            CounterName::PrebuildsClaimed => "prebuilds_claimed",
            CounterName::ClaimsMissed => "claims_missed",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<CounterName> {
        [
            CounterName::PrebuildsCreated,
            CounterName::PrebuildsFailed,
            CounterName::PrebuildsClaimed,
            CounterName::ClaimsMissed,
        ]
        .into_iter()
        .find(|c| c.as_str() == text)
    }
}

/// One counter series at scrape time.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CounterValue {
    pub name: CounterName,
    pub template: String,
    pub preset: String,
    pub value: u64,
}

/// A claim event kind (kept 7 days).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClaimEventKind {
    ClaimSucceeded,
    ClaimMissed,
}

impl ClaimEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimEventKind::ClaimSucceeded => "claim_succeeded",
            ClaimEventKind::ClaimMissed => "claim_missed",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<ClaimEventKind> {
        match text {
            "claim_succeeded" => Some(ClaimEventKind::ClaimSucceeded),
            "claim_missed" => Some(ClaimEventKind::ClaimMissed),
            _ => None,
        }
    }
}

/// One recorded claim event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimEvent {
    pub preset_id: PresetId,
    pub template: String,
    pub preset: String,
    pub kind: ClaimEventKind,
    pub at: DateTime<Utc>,
}

/// What starting an idempotent request found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyBegin {
    /// The key is new (or its record expired): the caller runs the request, then finishes or releases the key.
    Started,
    /// The first request with this key is still running: wait and ask again.
    InFlight,
    /// The same key and body were answered before: answer this again.
    Replay {
        status: u16,
        body: serde_json::Value,
    },
    /// The key was used with a different body.
    Conflict,
}

/// The last reconciliation tick, whichever replica ran it.
#[derive(Debug, Clone, PartialEq)]
pub struct TickRecord {
    pub replica_id: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub summary: serde_json::Value,
}

/// The last state notified for one webhook and preset (an opaque JSON document of the notifier's).
#[derive(Debug, Clone, PartialEq)]
pub struct NotificationState {
    pub webhook: String,
    pub template: String,
    pub preset: String,
    pub state: serde_json::Value,
}

/// A new state for one webhook and preset, and the payloads its change sends (possibly none).
#[derive(Debug, Clone, PartialEq)]
pub struct NotificationChange {
    pub webhook: String,
    pub template: String,
    pub preset: String,
    pub state: serde_json::Value,
    pub payloads: Vec<serde_json::Value>,
}

/// A payload taken from the outbox for delivery, under a short lease.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingNotification {
    pub id: String,
    pub webhook: String,
    pub payload: serde_json::Value,
    /// Delivery attempts before this one.
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
}

/// How a delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Delivered,
    /// Failed; try again at `at`.
    RetryAt {
        at: DateTime<Utc>,
        error: String,
    },
    /// Failed for the last time.
    GaveUp {
        error: String,
    },
}
