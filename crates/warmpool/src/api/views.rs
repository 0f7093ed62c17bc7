//! The JSON shapes the API answers with (SPEC section 6), as typed structs: the handlers serialize these, and the
//! OpenAPI document takes its schemas from the same types, so the two cannot disagree. Keys without a value are
//! left out, never `null` (except in `/api/v1/status`, whose `null`s say "not yet"). Sensitive parameter values
//! never leave the server: they are answered as `***`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use warmpool_core::model::PresetStatus;
use warmpool_core::plan::{PresetPlan, PresetState, format_timestamp};
use warmpool_core::template::ProvisionerKind;
use warmpool_store::{BuildRecord, TemplateInfo, WorkspaceRecord};

use crate::reconciler::TickStatus;

use super::schemas::{
    AppliedByName, JobStatusName, PresetPlanDoc, PresetStateDoc, PresetStatusName, TickStatusDoc,
    TransitionName, WorkspaceStatusName,
};

fn ts(at: &chrono::DateTime<chrono::Utc>) -> String {
    format_timestamp(at)
}

/// A workspace, pooled (`owner` = `prebuilds`) or claimed. `status` follows the latest build only; `ready` is
/// `status == running`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Workspace {
    #[schema(example = "0197a3c2-5f10-7c3e-9d2a-8b1f4e6a7c90")]
    pub id: String,
    #[schema(example = "alice-small-k3x9q2")]
    pub name: String,
    #[schema(example = "alice")]
    pub owner: String,
    pub template: String,
    #[schema(example = "v1")]
    pub template_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    #[schema(value_type = WorkspaceStatusName)]
    pub status: String,
    pub ready: bool,
    /// The JSON object the latest successful `start` build wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub outputs: Option<Value>,
    /// RFC 3339, UTC.
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_at: Option<String>,
}

pub fn workspace(w: &WorkspaceRecord) -> Workspace {
    Workspace {
        id: w.id.as_str().to_owned(),
        name: w.name.clone(),
        owner: w.owner.clone(),
        template: w.template.clone(),
        template_version: w.template_version.clone(),
        preset: w.preset.clone(),
        status: w.status().as_str().to_owned(),
        ready: w.ready(),
        outputs: w.outputs.clone(),
        created_at: ts(&w.created_at),
        claimed_at: w.claimed_at.as_ref().map(ts),
    }
}

/// One build of a workspace (and its job).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Build {
    pub id: String,
    pub workspace_id: String,
    pub number: u64,
    #[schema(value_type = TransitionName)]
    pub transition: String,
    #[schema(value_type = JobStatusName)]
    pub status: String,
    pub template_version: String,
    /// The owner the build was queued for (`prebuilds` for the reconciler's builds).
    pub initiator: String,
    pub is_prebuild: bool,
    /// The `start` build that follows a claim of a `claim_build` template.
    pub is_claim: bool,
    pub created_at: String,
    /// Runs so far (a build whose worker was lost runs again).
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A failed delete waits for its retry until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<String>,
}

pub fn build(b: &BuildRecord) -> Build {
    Build {
        id: b.id.as_str().to_owned(),
        workspace_id: b.workspace_id.as_str().to_owned(),
        number: b.number,
        transition: b.transition.as_str().to_owned(),
        status: b.status.as_str().to_owned(),
        template_version: b.template_version.clone(),
        initiator: b.initiator.clone(),
        is_prebuild: b.is_prebuild,
        is_claim: b.is_claim,
        created_at: ts(&b.created_at),
        attempts: b.attempts,
        started_at: b.started_at.as_ref().map(ts),
        completed_at: b.completed_at.as_ref().map(ts),
        error: b.error.clone(),
        retry_at: b.not_before.as_ref().map(ts),
    }
}

/// A template with all its versions, oldest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Template {
    #[schema(example = "devbox")]
    pub name: String,
    pub claim_build: bool,
    #[schema(value_type = AppliedByName)]
    pub applied_by: String,
    pub created_at: String,
    pub updated_at: String,
    pub deleted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "v2")]
    pub active_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_workspaces: Option<u32>,
    pub versions: Vec<TemplateVersion>,
}

/// An immutable revision of a template's build definition.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TemplateVersion {
    #[schema(example = "v1")]
    pub name: String,
    pub active: bool,
    #[schema(value_type = AppliedByName)]
    pub applied_by: String,
    pub created_at: String,
    #[schema(value_type = String, example = "exec")]
    pub provisioner: ProvisionerKind,
    pub command: Vec<String>,
    #[schema(example = "30m")]
    pub timeout: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    pub parameters: Vec<TemplateParameter>,
    pub presets: Vec<TemplatePreset>,
}

/// A template parameter; a sensitive default is shown as `***`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TemplateParameter {
    pub name: String,
    pub required: bool,
    pub sensitive: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

/// A preset of a version: its parameter values (sensitive ones as `***`) and its pool.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TemplatePreset {
    pub name: String,
    pub parameters: BTreeMap<String, String>,
    #[schema(value_type = PresetStatusName)]
    pub status: String,
    pub paused: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling: Option<SchedulingView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalidated_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SchedulingView {
    #[schema(example = "Europe/Berlin")]
    pub timezone: String,
    pub schedules: Vec<ScheduleView>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ScheduleView {
    #[schema(example = "* 8-18 * * 1-5")]
    pub cron: String,
    pub instances: u32,
}

pub fn template(t: &TemplateInfo) -> Template {
    let versions = t
        .versions
        .iter()
        .map(|v| {
            let sensitive: Vec<&str> = v
                .parameters
                .iter()
                .filter(|p| p.sensitive)
                .map(|p| p.name.as_str())
                .collect();
            let parameters = v
                .parameters
                .iter()
                .map(|p| TemplateParameter {
                    name: p.name.clone(),
                    required: p.required,
                    sensitive: p.sensitive,
                    default: p.default.as_ref().map(|d| {
                        if p.sensitive {
                            "***".to_owned()
                        } else {
                            d.clone()
                        }
                    }),
                })
                .collect();
            let presets = v
                .presets
                .iter()
                .map(|p| TemplatePreset {
                    name: p.name.clone(),
                    parameters: p
                        .parameters
                        .iter()
                        .map(|(k, val)| {
                            let shown = if sensitive.contains(&k.as_str()) {
                                "***".to_owned()
                            } else {
                                val.clone()
                            };
                            (k.clone(), shown)
                        })
                        .collect(),
                    status: p.status.as_str().to_owned(),
                    paused: p.paused,
                    instances: p.pool.instances,
                    ttl: p.pool.ttl.map(|ttl| ttl.to_string()),
                    scheduling: p.pool.scheduling.as_ref().map(|s| SchedulingView {
                        timezone: s.timezone().name().to_owned(),
                        schedules: s
                            .schedules()
                            .iter()
                            .map(|s| ScheduleView {
                                cron: s.cron_text.clone(),
                                instances: s.instances,
                            })
                            .collect(),
                    }),
                    invalidated_at: p.invalidated_at.as_ref().map(ts),
                })
                .collect();
            TemplateVersion {
                name: v.name.clone(),
                active: v.active,
                applied_by: v.applied_by.as_str().to_owned(),
                created_at: ts(&v.created_at),
                provisioner: v.definition.provisioner,
                command: v.definition.command.clone(),
                timeout: v.definition.timeout.to_string(),
                revision: v.definition.revision.clone(),
                parameters,
                presets,
            }
        })
        .collect();
    Template {
        name: t.name.clone(),
        claim_build: t.claim_build,
        applied_by: t.applied_by.as_str().to_owned(),
        created_at: ts(&t.created_at),
        updated_at: ts(&t.updated_at),
        deleted: t.deleted_at.is_some(),
        active_version: t.active_version.clone(),
        max_workspaces: t.max_workspaces,
        versions,
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TemplateList {
    pub templates: Vec<Template>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WorkspaceList {
    pub workspaces: Vec<Workspace>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BuildList {
    /// Newest first.
    pub builds: Vec<Build>,
}

/// The answer to a claim: 201 with `warm: true` (a prebuild was handed over; with `claim_build`, `build` is
/// the `start` build that follows with the new owner), or 202 with `warm: false` and the cold `start` build.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ClaimAnswer {
    pub workspace: Workspace,
    pub warm: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,
}

/// A queued build (start, stop, delete).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Queued {
    pub build: Build,
}

/// One preset's pool: `state` as in the plan, `backoff_until` the later of the two backoffs.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PresetPool {
    pub template: String,
    pub preset: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_version: Option<String>,
    pub active: bool,
    #[schema(value_type = PresetStateDoc)]
    pub state: PresetState,
    #[schema(value_type = PresetStatusName)]
    pub status: PresetStatus,
    pub paused: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_until: Option<String>,
}

/// `{"presets": [the preset's plan entry]}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PlanAnswer {
    #[schema(value_type = Vec<PresetPlanDoc>)]
    pub presets: Vec<PresetPlan>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PresetList {
    pub presets: Vec<PresetPool>,
}

/// `{"reconciliation_paused": bool}`: the global pause.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub reconciliation_paused: bool,
}

/// `{"paused": bool}`: one preset's pause, kept by template and preset name across versions.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PresetSettings {
    pub paused: bool,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PresetSettingsAnswer {
    pub template: String,
    pub preset: String,
    pub paused: bool,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Invalidated {
    /// How many running prebuilds became expired.
    pub invalidated: u64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Deleted {
    /// The template marked deleted.
    pub deleted: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Triggered {
    pub triggered: bool,
}

/// The reconciler and the job queue, as this replica sees them.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Status {
    pub replica_id: String,
    /// The replica that ran the last tick (any replica); `null` before the first.
    pub last_tick_replica: Option<String>,
    /// This replica's last ticks, newest first.
    #[schema(value_type = Vec<TickStatusDoc>)]
    pub ticks: Vec<TickStatus>,
    pub jobs: JobsView,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobsView {
    /// Job status → count, for every status that has a job.
    pub by_status: BTreeMap<String, u64>,
    /// `null` when nothing is pending.
    pub oldest_pending_age_seconds: Option<f64>,
    /// Delete jobs waiting for a retry after a failure: prebuilds that could not be deleted yet.
    pub failing_deletes: u64,
}

/// Every error: `{"code", "message"}`; a 400's message names the field.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    #[schema(example = "bad_request")]
    pub code: String,
    #[schema(example = "presets[0].ttl: invalid duration \"1w\"")]
    pub message: String,
}
