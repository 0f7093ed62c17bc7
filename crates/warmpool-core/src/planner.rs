//! The planner: snapshot in, plan out. Pure and synchronous; `now` comes from the snapshot.
//!
//! For each preset it classifies the preset's prebuilds (running, expired, eligible, in progress per transition,
//! pending on an inactive version), resolves the target (`instances`, a schedule, none, or 0 when inactive),
//! derives the two failure gates that Coder computes in SQL (the lookback backoff and the hard limit) from the
//! latest builds, and applies the ordered rules:
//!
//! 1. global pause, then preset pause: every computed action is held (`paused`);
//! 2. DB-derived backoff: only `backoff` (active presets only);
//! 3. inactive preset: `cancel_pending`, delete expired, delete the rest of its running prebuilds;
//! 4. active preset: delete expired, delete the oldest extraneous, create the deficit minus starting; the create is
//!    held by the creation-failure backoff, the hard limit or `validation_failed`, in that order.
//!
//! A `set_status` comes first whenever the computed status differs from the stored one, and is never held.
//! The planner performs no I/O and never reads a clock; the same code serves `warmpool plan` and the reconciler.

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};

use crate::duration::Duration;
use crate::model::{
    CreationFailures, JobStatus, PlannerConfig, PresetSnapshot, PresetStatus, Snapshot, Transition,
    WorkspaceSnapshot,
};
use crate::plan::{
    Action, DeleteReason, HeldAction, HoldReason, Plan, PresetPlan, PresetState, TargetSource,
};

/// Plans every preset of the snapshot, in snapshot order.
pub fn plan(snapshot: &Snapshot) -> Plan {
    let by_preset = prebuilds_by_preset(snapshot);
    let empty = Vec::new();
    let presets = snapshot
        .presets
        .iter()
        .map(|preset| {
            let prebuilds = by_preset.get(preset.id.as_str()).unwrap_or(&empty);
            plan_preset(snapshot, preset, prebuilds)
        })
        .collect();
    Plan { presets }
}

/// The prebuild-owned workspaces of each preset. Claimed workspaces are left out: they do not count.
fn prebuilds_by_preset(snapshot: &Snapshot) -> HashMap<&str, Vec<&WorkspaceSnapshot>> {
    let mut by_preset: HashMap<&str, Vec<&WorkspaceSnapshot>> =
        HashMap::with_capacity(snapshot.presets.len());
    for workspace in snapshot.workspaces.iter().filter(|w| w.is_prebuild()) {
        by_preset
            .entry(workspace.preset.as_str())
            .or_default()
            .push(workspace);
    }
    by_preset
}

/// `at + interval × n`, saturating at the last instant RFC 3339 can write (9999-12-31T23:59:59.999999999Z), so
/// that every `until` of a plan is a valid output timestamp (SPEC section 3) even for huge intervals.
fn add_times(at: DateTime<Utc>, interval: Duration, n: u64) -> DateTime<Utc> {
    let latest = DateTime::<Utc>::from_timestamp(253_402_300_799, 999_999_999)
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    let millis = interval.as_millis().saturating_mul(n);
    i64::try_from(millis)
        .ok()
        .and_then(TimeDelta::try_milliseconds)
        .and_then(|delta| at.checked_add_signed(delta))
        .map_or(latest, |until| until.min(latest))
}

/// A gate that holds an action: its reason and, for `creation_backoff`, when it ends.
type Hold = (HoldReason, Option<DateTime<Utc>>);

/// The preset's prebuilds, classified.
#[derive(Default)]
struct Classified<'a> {
    /// Running and unexpired, oldest first.
    running: Vec<&'a WorkspaceSnapshot>,
    /// Running and expired, oldest first.
    expired: Vec<&'a WorkspaceSnapshot>,
    eligible: u32,
    starting: u32,
    stopping: u32,
    deleting: u32,
    pending_inactive: u32,
    /// Latest build a `start` on the active version: the ranking for the backoff and the hard limit.
    candidates: Vec<&'a WorkspaceSnapshot>,
}

fn is_expired(preset: &PresetSnapshot, workspace: &WorkspaceSnapshot, now: DateTime<Utc>) -> bool {
    if preset
        .invalidated_at
        .is_some_and(|invalidated| workspace.created_at < invalidated)
    {
        return true;
    }
    match preset.ttl {
        Some(ttl) if !ttl.is_zero() => {
            now.signed_duration_since(workspace.created_at) > ttl.to_time_delta()
        }
        _ => false,
    }
}

fn classify<'a>(
    preset: &PresetSnapshot,
    prebuilds: &[&'a WorkspaceSnapshot],
    now: DateTime<Utc>,
) -> Classified<'a> {
    let mut c = Classified::default();
    for &workspace in prebuilds {
        let build = &workspace.latest_build;
        if workspace.is_running() {
            if is_expired(preset, workspace, now) {
                c.expired.push(workspace);
            } else {
                if workspace.ready {
                    c.eligible += 1;
                }
                c.running.push(workspace);
            }
        }
        if build.status.in_progress() {
            match build.transition {
                Transition::Start => c.starting += 1,
                Transition::Stop => c.stopping += 1,
                Transition::Delete => c.deleting += 1,
            }
        }
        if build.number == 1
            && build.transition == Transition::Start
            && build.status == JobStatus::Pending
            && !build.picked_up
            && !build.active_version
        {
            c.pending_inactive += 1;
        }
        if build.transition == Transition::Start && build.active_version {
            c.candidates.push(workspace);
        }
    }
    let oldest_first = |a: &&WorkspaceSnapshot, b: &&WorkspaceSnapshot| {
        (a.created_at, &a.id).cmp(&(b.created_at, &b.id))
    };
    c.running.sort_by(oldest_first);
    c.expired.sort_by(oldest_first);
    // Newest build first; ties: the larger id first.
    c.candidates.sort_by(|a, b| {
        (b.latest_build.created_at, &b.id).cmp(&(a.latest_build.created_at, &a.id))
    });
    c
}

/// The preset's target and where it came from.
fn resolve_target(preset: &PresetSnapshot, now: DateTime<Utc>) -> (u32, TargetSource, Option<u32>) {
    if !preset.active {
        return (0, TargetSource::Inactive, None);
    }
    if preset.instances.is_none() && preset.scheduling.is_none() {
        return (0, TargetSource::None, None);
    }
    if let Some((index, instances)) = preset.scheduling.as_ref().and_then(|s| s.active_at(now)) {
        return (
            instances,
            TargetSource::Schedule,
            Some(u32::try_from(index).unwrap_or(u32::MAX)),
        );
    }
    (preset.instances.unwrap_or(0), TargetSource::Instances, None)
}

/// The DB-derived backoff (Coder's `GetPresetsBackoff`): among the newest `desired` candidates, those that failed
/// within the lookback; `until = newest of them + (all failed candidates within the lookback) × interval`.
/// Returns `until` while `now <= until`.
fn db_backoff(
    candidates: &[&WorkspaceSnapshot],
    desired: u32,
    config: &PlannerConfig,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let lookback_start = now
        .checked_sub_signed(config.backoff_lookback.to_time_delta())
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let failed_in_window = |w: &&&WorkspaceSnapshot| {
        w.latest_build.status == JobStatus::Failed && w.latest_build.created_at >= lookback_start
    };
    let last_failure = candidates
        .iter()
        .take(desired as usize)
        .filter(failed_in_window)
        .map(|w| w.latest_build.created_at)
        .max()?;
    let failed = candidates.iter().filter(failed_in_window).count() as u64;
    let until = add_times(last_failure, config.backoff_interval, failed);
    (now <= until).then_some(until)
}

/// The hard limit (Coder's `GetPresetsAtFailureLimit`): the newest `limit` candidates all failed.
fn hard_limited(candidates: &[&WorkspaceSnapshot], limit: u32) -> bool {
    let limit = limit as usize;
    limit > 0
        && candidates.len() >= limit
        && candidates[..limit]
            .iter()
            .all(|w| w.latest_build.status == JobStatus::Failed)
}

/// The seed's creation-failure backoff: held while `now < last_failure_at + consecutive × interval`.
fn creation_backoff(
    failures: Option<&CreationFailures>,
    interval: Duration,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let failures = failures.filter(|f| f.consecutive > 0)?;
    let until = add_times(
        failures.last_failure_at?,
        interval,
        u64::from(failures.consecutive),
    );
    (now < until).then_some(until)
}

fn delete(workspaces: &[&WorkspaceSnapshot], reason: DeleteReason) -> Option<Action> {
    (!workspaces.is_empty()).then(|| Action::Delete {
        workspaces: workspaces.iter().map(|w| w.id.clone()).collect(),
        reason,
    })
}

fn plan_preset(
    snapshot: &Snapshot,
    preset: &PresetSnapshot,
    prebuilds: &[&WorkspaceSnapshot],
) -> PresetPlan {
    let now = snapshot.now;
    let config = &snapshot.config;
    let c = classify(preset, prebuilds, now);
    let (desired, target_source, schedule_index) = resolve_target(preset, now);
    let has_pool = preset.active && target_source != TargetSource::None;
    let running = c.running.len() as u32;

    let state = PresetState {
        desired,
        actual: running + c.expired.len() as u32,
        eligible: if preset.active { c.eligible } else { 0 },
        expired: c.expired.len() as u32,
        extraneous: if preset.active {
            running.saturating_sub(desired)
        } else {
            0
        },
        starting: c.starting,
        stopping: c.stopping,
        deleting: c.deleting,
        target_source,
        schedule_index,
    };

    let backoff = has_pool
        .then(|| db_backoff(&c.candidates, desired, config, now))
        .flatten();
    let limited = has_pool && hard_limited(&c.candidates, config.failure_hard_limit);

    let status = if preset.status == PresetStatus::ValidationFailed {
        PresetStatus::ValidationFailed
    } else if !preset.active {
        preset.status
    } else if limited {
        PresetStatus::HardLimited
    } else {
        PresetStatus::Healthy
    };

    // The rules' actions (steps 2-4), each with the gate that holds it, if any.
    let mut computed: Vec<(Action, Option<Hold>)> = Vec::new();
    if let Some(until) = backoff {
        computed.push((Action::Backoff { until }, None));
    } else if !preset.active {
        if c.pending_inactive > 0 {
            computed.push((Action::CancelPending, None));
        }
        computed.extend(delete(&c.expired, DeleteReason::Expired).map(|a| (a, None)));
        computed.extend(delete(&c.running, DeleteReason::Inactive).map(|a| (a, None)));
    } else {
        computed.extend(delete(&c.expired, DeleteReason::Expired).map(|a| (a, None)));
        computed.extend(
            delete(
                &c.running[..state.extraneous as usize],
                DeleteReason::Extraneous,
            )
            .map(|a| (a, None)),
        );
        let count = desired.saturating_sub(running).saturating_sub(c.starting);
        if count > 0 {
            let hold = if let Some(until) = creation_backoff(
                preset.creation_failures.as_ref(),
                config.backoff_interval,
                now,
            ) {
                Some((HoldReason::CreationBackoff, Some(until)))
            } else if limited {
                Some((HoldReason::HardLimited, None))
            } else if status == PresetStatus::ValidationFailed {
                Some((HoldReason::ValidationFailed, None))
            } else {
                None
            };
            computed.push((Action::Create { count }, hold));
        }
    }

    let paused = snapshot.settings.reconciliation_paused || preset.paused;
    let mut actions = Vec::new();
    let mut held = Vec::new();
    if status != preset.status {
        actions.push(Action::SetStatus { status });
    }
    for (action, hold) in computed {
        match (paused, hold) {
            (true, _) => held.push(HeldAction {
                action,
                reason: HoldReason::Paused,
                until: None,
            }),
            (false, Some((reason, until))) => held.push(HeldAction {
                action,
                reason,
                until,
            }),
            (false, None) => actions.push(action),
        }
    }

    PresetPlan {
        id: preset.id.clone(),
        template: preset.template.clone(),
        preset: preset.preset.clone(),
        state,
        status,
        actions,
        held,
    }
}
