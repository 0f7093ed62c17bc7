//! Documentation-only schemas for the OpenAPI document: the shapes of types that live in crates the API does not
//! own (the planner's plan and state in `warmpool-core`, the status names of `warmpool-core` and
//! `warmpool-store`, the reconciler's tick record), which cannot derive `ToSchema` where they are defined. Each
//! mirror is named after the type it describes, and the tests below serialize the real type and check that the
//! mirror has the same keys and names, so a change to one without the other fails here.
//!
//! Deliberately not used to serialize anything: the handlers answer the real types.

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::ToSchema;

/// A workspace's status, from its latest build only.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = WorkspaceStatus)]
pub enum WorkspaceStatusName {
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

/// A build's job status.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = JobStatus)]
pub enum JobStatusName {
    Pending,
    Running,
    Succeeded,
    Failed,
    Canceling,
    Canceled,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = Transition)]
pub enum TransitionName {
    Start,
    Stop,
    Delete,
}

/// A preset's status: `hard_limited` while its newest builds all failed, `validation_failed` until a new version.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = PresetStatus)]
pub enum PresetStatusName {
    Healthy,
    HardLimited,
    ValidationFailed,
}

/// Who applied a template last: the `serve` config file or the API.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = AppliedBy)]
pub enum AppliedByName {
    Config,
    Api,
}

/// Where `desired` came from.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = TargetSource)]
pub enum TargetSourceName {
    Instances,
    Schedule,
    None,
    Inactive,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = DeleteReason)]
pub enum DeleteReasonName {
    Expired,
    Extraneous,
    Inactive,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = HoldReason)]
pub enum HoldReasonName {
    Paused,
    CreationBackoff,
    HardLimited,
    ValidationFailed,
}

/// A preset's pool, counted from the snapshot (SPEC section 3).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = PresetState)]
pub struct PresetStateDoc {
    pub desired: u32,
    /// Running prebuilds, expired included.
    pub actual: u32,
    /// Running, unexpired and ready.
    pub eligible: u32,
    pub expired: u32,
    /// Running unexpired beyond `desired` (0 for an inactive preset).
    pub extraneous: u32,
    pub starting: u32,
    pub stopping: u32,
    pub deleting: u32,
    pub target_source: TargetSourceName,
    /// With `target_source` = `schedule`: the 0-based index of the active schedule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule_index: Option<u32>,
}

/// One action of a plan, executed in order.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
#[schema(as = Action)]
pub enum ActionDoc {
    /// The DB-derived backoff holds the preset until `until`.
    Backoff { until: String },
    /// Cancel the pending first builds of an inactive version that no worker has taken.
    CancelPending,
    /// Delete these prebuilds, oldest first.
    Delete {
        workspaces: Vec<String>,
        reason: DeleteReasonName,
    },
    /// Create this many prebuilds.
    Create { count: u32 },
    /// Store the preset's new status.
    SetStatus { status: PresetStatusName },
}

/// An action a gate stopped, with the first reason that applies.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = HeldAction)]
pub struct HeldActionDoc {
    pub action: ActionDoc,
    pub reason: HoldReasonName,
    /// For `creation_backoff`: when the hold ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

/// The planner's decision for one preset (SPEC section 3).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = PresetPlan)]
pub struct PresetPlanDoc {
    pub id: String,
    pub template: String,
    pub preset: String,
    pub state: PresetStateDoc,
    /// The preset's status after this plan.
    pub status: PresetStatusName,
    pub actions: Vec<ActionDoc>,
    pub held: Vec<HeldActionDoc>,
}

/// What one reconciliation tick of this replica did.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = TickStatus)]
pub struct TickStatusDoc {
    pub started_at: String,
    pub duration_ms: f64,
    /// This replica held the reconciliation lock (otherwise the tick did nothing).
    pub lock_acquired: bool,
    pub presets: u64,
    /// Per action type, how many prebuilds or writes.
    pub actions: BTreeMap<String, u64>,
    /// Actions the plan held (paused, backing off, limited).
    pub held: u64,
    pub errors: Vec<String>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::collections::BTreeSet;

    use chrono::TimeZone;
    use serde_json::Value;
    use utoipa::PartialSchema;
    use utoipa::openapi::{RefOr, Schema};
    use warmpool_core::ids::{PresetId, WorkspaceId};
    use warmpool_core::model::{JobStatus, PresetStatus, Transition};
    use warmpool_core::plan::{
        Action, DeleteReason, HeldAction, HoldReason, PresetPlan, PresetState, TargetSource,
    };
    use warmpool_store::{AppliedBy, WorkspaceStatus};

    use super::*;
    use crate::reconciler::TickStatus;

    fn properties<T: PartialSchema>() -> BTreeSet<String> {
        match T::schema() {
            RefOr::T(Schema::Object(object)) => object.properties.keys().cloned().collect(),
            other => panic!(
                "not an object schema: {}",
                serde_json::to_string(&other).unwrap()
            ),
        }
    }

    fn keys(value: &impl serde::Serialize) -> BTreeSet<String> {
        match serde_json::to_value(value).unwrap() {
            Value::Object(map) => map.keys().cloned().collect(),
            other => panic!("not an object: {other}"),
        }
    }

    fn names<T: PartialSchema>() -> BTreeSet<String> {
        match T::schema() {
            RefOr::T(Schema::Object(object)) => object
                .enum_values
                .unwrap_or_default()
                .into_iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect(),
            other => panic!(
                "not an enum schema: {}",
                serde_json::to_string(&other).unwrap()
            ),
        }
    }

    fn serialized<T: serde::Serialize>(values: &[T]) -> BTreeSet<String> {
        values
            .iter()
            .map(|v| {
                serde_json::to_value(v)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    fn state() -> PresetState {
        PresetState {
            desired: 5,
            actual: 1,
            eligible: 1,
            expired: 0,
            extraneous: 0,
            starting: 0,
            stopping: 0,
            deleting: 0,
            target_source: TargetSource::Schedule,
            schedule_index: Some(0),
        }
    }

    #[test]
    fn the_plan_mirrors_have_the_keys_of_the_real_types() {
        assert_eq!(properties::<PresetStateDoc>(), keys(&state()));
        let until = chrono::Utc.with_ymd_and_hms(2025, 6, 2, 3, 0, 0).unwrap();
        let plan = PresetPlan {
            id: PresetId::new("p1"),
            template: "devbox".into(),
            preset: "small".into(),
            state: state(),
            status: PresetStatus::Healthy,
            actions: vec![Action::Delete {
                workspaces: vec![WorkspaceId::new("w1")],
                reason: DeleteReason::Expired,
            }],
            held: vec![HeldAction {
                action: Action::Create { count: 4 },
                reason: HoldReason::CreationBackoff,
                until: Some(until),
            }],
        };
        assert_eq!(properties::<PresetPlanDoc>(), keys(&plan));
        assert_eq!(properties::<HeldActionDoc>(), keys(&plan.held[0]));
        let tick = TickStatus {
            started_at: until,
            duration_ms: 1.5,
            lock_acquired: true,
            presets: 1,
            actions: BTreeMap::new(),
            held: 0,
            errors: vec![],
        };
        assert_eq!(properties::<TickStatusDoc>(), keys(&tick));
    }

    #[test]
    fn the_name_mirrors_list_every_name_of_the_real_enums() {
        use WorkspaceStatus as W;
        assert_eq!(
            names::<WorkspaceStatusName>(),
            serialized(&[
                W::Starting,
                W::Running,
                W::Stopping,
                W::Stopped,
                W::Deleting,
                W::Deleted,
                W::Failed,
                W::Canceling,
                W::Canceled
            ])
        );
        use JobStatus as J;
        assert_eq!(
            names::<JobStatusName>(),
            serialized(&[
                J::Pending,
                J::Running,
                J::Succeeded,
                J::Failed,
                J::Canceling,
                J::Canceled
            ])
        );
        assert_eq!(
            names::<TransitionName>(),
            serialized(&[Transition::Start, Transition::Stop, Transition::Delete])
        );
        assert_eq!(
            names::<PresetStatusName>(),
            serialized(&[
                PresetStatus::Healthy,
                PresetStatus::HardLimited,
                PresetStatus::ValidationFailed
            ])
        );
        assert_eq!(
            names::<AppliedByName>(),
            serialized(&[AppliedBy::Config, AppliedBy::Api])
        );
        assert_eq!(
            names::<TargetSourceName>(),
            serialized(&[
                TargetSource::Instances,
                TargetSource::Schedule,
                TargetSource::None,
                TargetSource::Inactive
            ])
        );
        assert_eq!(
            names::<DeleteReasonName>(),
            serialized(&[
                DeleteReason::Expired,
                DeleteReason::Extraneous,
                DeleteReason::Inactive
            ])
        );
        assert_eq!(
            names::<HoldReasonName>(),
            serialized(&[
                HoldReason::Paused,
                HoldReason::CreationBackoff,
                HoldReason::HardLimited,
                HoldReason::ValidationFailed
            ])
        );
    }
}
