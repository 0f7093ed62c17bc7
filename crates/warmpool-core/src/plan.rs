//! The plan: the planner's decision as data.
//!
//! A plan is specific enough that the executor makes no choices: creates carry a count, deletes carry the ids
//! and a reason, and whatever a gate stops is kept as a held action with its reason, so an operator can see what
//! would happen and why it does not. The serde form is the JSON of `warmpool plan` and of the live plan endpoint.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ids::{PresetId, WorkspaceId};
use crate::model::PresetStatus;

/// The decision for every preset of a snapshot, in snapshot order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub presets: Vec<PresetPlan>,
}

impl Plan {
    pub fn preset(&self, id: &PresetId) -> Option<&PresetPlan> {
        self.presets.iter().find(|p| &p.id == id)
    }
}

/// The decision for one preset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresetPlan {
    pub id: PresetId,
    pub template: String,
    pub preset: String,
    pub state: PresetState,
    /// The preset's status after this plan.
    pub status: PresetStatus,
    /// To execute, in order.
    pub actions: Vec<Action>,
    /// Computed but stopped by a gate.
    pub held: Vec<HeldAction>,
}

impl PresetPlan {
    /// Nothing to execute and nothing held.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty() && self.held.is_empty()
    }

    /// The later end of the two backoffs that hold the preset (the failed-build backoff, executed or held under a
    /// pause, and the creation-failure backoff of a held create), if either does.
    pub fn backoff_until(&self) -> Option<DateTime<Utc>> {
        let db = self
            .actions
            .iter()
            .chain(self.held.iter().map(|h| &h.action))
            .filter_map(|a| match a {
                Action::Backoff { until } => Some(*until),
                _ => None,
            });
        let creation = self.held.iter().filter_map(|h| h.until);
        db.chain(creation).max()
    }
}

/// Where `desired` came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetSource {
    /// The preset's `instances` (no schedule active).
    Instances,
    /// A schedule, whose index is in `schedule_index`.
    Schedule,
    /// The preset has no pool (`instances` null, no scheduling).
    None,
    /// The preset is inactive: its pool is wound down.
    Inactive,
}

/// A preset's pool, counted from the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresetState {
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
    pub target_source: TargetSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_index: Option<u32>,
}

/// Why a prebuild is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeleteReason {
    Expired,
    Extraneous,
    Inactive,
}

impl DeleteReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeleteReason::Expired => "expired",
            DeleteReason::Extraneous => "extraneous",
            DeleteReason::Inactive => "inactive",
        }
    }
}

/// One thing for the executor to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Action {
    /// The DB-derived backoff holds the preset: nothing else is done for it until `until`.
    Backoff {
        #[serde(with = "timestamp")]
        until: DateTime<Utc>,
    },
    /// Cancel the pending first builds of an inactive version that no worker has taken.
    CancelPending,
    /// Delete these prebuilds, oldest first.
    Delete {
        workspaces: Vec<WorkspaceId>,
        reason: DeleteReason,
    },
    /// Create this many prebuilds.
    Create { count: u32 },
    /// Store the preset's new status.
    SetStatus { status: PresetStatus },
}

impl Action {
    /// The `type` tag, for logs and per-type counts.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Backoff { .. } => "backoff",
            Action::CancelPending => "cancel_pending",
            Action::Delete { .. } => "delete",
            Action::Create { .. } => "create",
            Action::SetStatus { .. } => "set_status",
        }
    }
}

/// Why an action is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldReason {
    Paused,
    CreationBackoff,
    HardLimited,
    ValidationFailed,
}

/// An action a gate stopped, with the first reason that applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldAction {
    pub action: Action,
    pub reason: HoldReason,
    /// For `creation_backoff`: when the hold ends.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "optional_timestamp"
    )]
    pub until: Option<DateTime<Utc>>,
}

/// Formats an instant as SPEC does: UTC, `Z`, a fractional part only when it is not zero.
pub fn format_timestamp(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

mod timestamp {
    use super::*;

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_timestamp(at))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.to_utc())
            .map_err(serde::de::Error::custom)
    }
}

mod optional_timestamp {
    use super::*;

    pub fn serialize<S: Serializer>(at: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match at {
            Some(at) => s.serialize_str(&format_timestamp(at)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| {
            DateTime::parse_from_rfc3339(&t)
                .map(|t| t.to_utc())
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}
