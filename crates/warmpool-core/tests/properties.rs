//! Property tests of the planner and of the snapshot JSON reader, over random snapshots built as model structs.
//!
//! The planner properties check what must hold for every snapshot (SPEC section 3): creates never exceed the
//! target, deletes only ever name running prebuilds of their own preset, a plan is well-formed (order, gates,
//! statuses), the plan equals SPEC's rules written out a second time in this file ([`spec_entry`]), a snapshot with
//! nothing to do plans nothing, a perfect executor reaches every pool's target within two ticks, and the order of
//! the workspaces does not matter. The reader properties check the JSON round trip and that no input makes the
//! reader (or the planner, on what it reads) panic.
//!
//! The number of cases follows `PROPTEST_CASES` (proptest's default configuration reads it); each case plans a
//! handful of presets and workspaces, so a property takes milliseconds per hundred cases.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Datelike, TimeDelta, TimeZone, Utc};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::Value;
use warmpool_core::model::{
    CreationFailures, JobStatus, LatestBuild, PlannerConfig, PresetSnapshot, PresetStatus,
    Settings, Transition, WorkspaceSnapshot,
};
use warmpool_core::plan::{
    Action, DeleteReason, HeldAction, HoldReason, PresetPlan, TargetSource, format_timestamp,
};
use warmpool_core::schedule::{Cron, Schedule, Scheduling};
use warmpool_core::snapshot_json::{from_json, to_json};
use warmpool_core::{Duration, PREBUILDS_OWNER, Plan, PresetId, Snapshot, WorkspaceId, plan};

// ---------------------------------------------------------------------------------------------------------------
// Generators.
// ---------------------------------------------------------------------------------------------------------------

fn base() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap()
}

/// Any millisecond of 2025 and early 2026: every weekday, both DST changes, all hours.
fn arb_now() -> impl Strategy<Value = DateTime<Utc>> {
    (0i64..400 * 86_400_000).prop_map(|ms| base() + TimeDelta::milliseconds(ms))
}

/// An instant around `now`: mostly whole minutes in the last 6 hours (so ties happen), sometimes seconds ago (recent
/// failures back off), any millisecond or nanosecond, or up to an hour ahead.
fn arb_near(now: DateTime<Utc>) -> BoxedStrategy<DateTime<Utc>> {
    prop_oneof![
        4 => (0i64..=360).prop_map(move |m| now - TimeDelta::minutes(m)),
        1 => (0i64..=300).prop_map(move |secs| now - TimeDelta::seconds(secs)),
        2 => (0i64..=6 * 3_600_000).prop_map(move |ms| now - TimeDelta::milliseconds(ms)),
        1 => (0i64..=6 * 3_600_000_000_000).prop_map(move |ns| now - TimeDelta::nanoseconds(ns)),
        1 => (0i64..=60).prop_map(move |m| now + TimeDelta::minutes(m)),
    ]
    .boxed()
}

fn arb_duration(choices: &'static [u64], max_ms: u64) -> BoxedStrategy<Duration> {
    prop_oneof![
        3 => select(choices).prop_map(Duration::from_millis),
        1 => (0..=max_ms).prop_map(Duration::from_millis),
    ]
    .boxed()
}

fn arb_config() -> impl Strategy<Value = PlannerConfig> {
    (
        arb_duration(&[0, 1_000, 30_000, 60_000, 300_000, 3_600_000], 3_600_000),
        arb_duration(&[0, 60_000, 3_600_000, 6 * 3_600_000], 8 * 3_600_000),
        0u32..=4,
    )
        .prop_map(
            |(backoff_interval, backoff_lookback, failure_hard_limit)| PlannerConfig {
                backoff_interval,
                backoff_lookback,
                failure_hard_limit,
            },
        )
}

/// Sets of schedules that do not overlap, in various time zones.
const SCHEDULE_SETS: &[(&str, &[&str])] = &[
    ("UTC", &["* 9-18 * * 1-5"]),
    (
        "UTC",
        &["* 6-10 * * 1-5", "* 12-16 * * 1-5", "* 18-22 * * 1-5"],
    ),
    ("Europe/Berlin", &["* 2 * * *", "* 8-12 * * 6,0"]),
    (
        "America/Los_Angeles",
        &["* 9-13 * * 1-5", "* 14-23 * * 1-5"],
    ),
    ("Asia/Kolkata", &["* * 1-15 * *"]),
    ("Australia/Lord_Howe", &["* 0-11 * * *"]),
    ("UTC", &[]),
];

fn scheduling(set: usize, instances: &[u32]) -> Scheduling {
    let (tz, crons) = SCHEDULE_SETS[set];
    let schedules = crons
        .iter()
        .zip(instances)
        .map(|(text, &instances)| Schedule {
            cron_text: (*text).to_owned(),
            cron: Cron::parse(text).unwrap(),
            instances,
        })
        .collect();
    Scheduling::new(tz.parse().unwrap(), schedules).unwrap()
}

fn arb_scheduling() -> impl Strategy<Value = Option<Scheduling>> {
    prop_oneof![
        2 => Just(None),
        1 => (0..SCHEDULE_SETS.len(), prop::collection::vec(0u32..=5, 3))
            .prop_map(|(set, instances)| Some(scheduling(set, &instances))),
    ]
}

fn arb_status() -> impl Strategy<Value = PresetStatus> {
    prop_oneof![
        4 => Just(PresetStatus::Healthy),
        1 => Just(PresetStatus::HardLimited),
        1 => Just(PresetStatus::ValidationFailed),
    ]
}

fn arb_creation_failures(now: DateTime<Utc>) -> impl Strategy<Value = Option<CreationFailures>> {
    prop_oneof![
        3 => Just(None),
        1 => Just(Some(CreationFailures { consecutive: 0, last_failure_at: None })),
        2 => (0u32..=4, arb_near(now)).prop_map(|(consecutive, at)| Some(CreationFailures {
            consecutive,
            last_failure_at: Some(at),
        })),
    ]
}

/// Strings for names: plain ones, or (`wild`) any printable text.
fn arb_name(wild: bool) -> BoxedStrategy<String> {
    if wild {
        "\\PC{0,8}".boxed()
    } else {
        select(&["devbox", "gpu", "small", "large"][..])
            .prop_map(str::to_owned)
            .boxed()
    }
}

/// A preset whose `id` is filled in by [`arb_snapshot`].
fn arb_preset(now: DateTime<Utc>, wild: bool) -> impl Strategy<Value = PresetSnapshot> {
    (
        (
            arb_name(wild),
            prop::option::of(arb_name(wild)),
            arb_name(wild),
            prop::bool::weighted(0.75),
            prop::option::weighted(0.8, 0u32..=5),
            prop::option::of(1u64..=4 * 3_600_000).prop_map(|ttl| ttl.map(Duration::from_millis)),
            prop::option::weighted(0.3, arb_near(now)),
        ),
        (
            arb_scheduling(),
            arb_status(),
            prop::bool::weighted(0.1),
            arb_creation_failures(now),
        ),
    )
        .prop_map(
            |(
                (template, template_version, preset, active, instances, ttl, invalidated_at),
                (scheduling, status, paused, creation_failures),
            )| PresetSnapshot {
                id: PresetId::new(""),
                template,
                template_version,
                preset,
                active,
                instances,
                ttl,
                invalidated_at,
                scheduling,
                status,
                paused,
                creation_failures,
            },
        )
}

fn arb_transition() -> impl Strategy<Value = Transition> {
    prop_oneof![
        3 => Just(Transition::Start),
        1 => Just(Transition::Stop),
        1 => Just(Transition::Delete),
    ]
}

fn arb_job_status() -> impl Strategy<Value = JobStatus> {
    prop_oneof![
        4 => Just(JobStatus::Succeeded),
        2 => Just(JobStatus::Failed),
        2 => Just(JobStatus::Pending),
        1 => Just(JobStatus::Running),
        1 => Just(JobStatus::Canceling),
        1 => Just(JobStatus::Canceled),
    ]
}

/// A workspace of preset number `.0` (its `id` and `preset` are filled in by [`arb_snapshot`]).
fn arb_workspace(
    now: DateTime<Utc>,
    presets: usize,
    wild: bool,
) -> impl Strategy<Value = (usize, WorkspaceSnapshot)> {
    let owner = if wild {
        prop_oneof![3 => Just(PREBUILDS_OWNER.to_owned()), 1 => "\\PC{1,8}"].boxed()
    } else {
        prop_oneof![
            6 => Just(PREBUILDS_OWNER.to_owned()),
            1 => Just("alice".to_owned()),
            1 => Just("bob".to_owned()),
        ]
        .boxed()
    };
    (
        (0..presets, owner, arb_near(now), any::<bool>()),
        (
            prop_oneof![3 => Just(1u64), 1 => 2u64..=5],
            arb_transition(),
            arb_job_status(),
            arb_near(now),
            // Usually as the JSON reader defaults them (the preset's `active`; picked up unless pending).
            prop::bool::weighted(0.15),
            prop::bool::weighted(0.2),
        ),
    )
        .prop_map(
            |(
                (preset, owner, created_at, ready),
                (number, transition, status, build_at, other_version, picked_up_flipped),
            )| {
                (
                    preset,
                    WorkspaceSnapshot {
                        id: WorkspaceId::new(""),
                        owner,
                        preset: PresetId::new(""),
                        created_at,
                        ready,
                        latest_build: LatestBuild {
                            number,
                            transition,
                            status,
                            created_at: build_at,
                            // Flipped against the preset's `active` in `arb_snapshot_with`.
                            active_version: other_version,
                            picked_up: (status != JobStatus::Pending) != picked_up_flipped,
                        },
                    },
                )
            },
        )
}

/// Random snapshots: 1-4 presets, 0-14 workspaces. With `wild`, names, ids and owners are any printable text.
fn arb_snapshot_with(wild: bool) -> impl Strategy<Value = Snapshot> {
    (arb_now(), 1usize..=4, 0usize..=14).prop_flat_map(move |(now, n_presets, n_workspaces)| {
        (
            arb_config(),
            prop::bool::weighted(0.1),
            prop::collection::vec(arb_preset(now, wild), n_presets),
            prop::collection::vec(arb_workspace(now, n_presets, wild), n_workspaces),
            prop::collection::vec(arb_name(wild), n_presets + n_workspaces),
        )
            .prop_map(move |(config, paused, mut presets, workspaces, names)| {
                // Ids are unique: an index, then (when wild) any text.
                let id = |i: usize, prefix: &str| {
                    if wild {
                        format!("{i}:{}", names[i])
                    } else {
                        format!("{prefix}{i}")
                    }
                };
                for (i, p) in presets.iter_mut().enumerate() {
                    p.id = PresetId::new(id(i, "p"));
                }
                let workspaces = workspaces
                    .into_iter()
                    .enumerate()
                    .map(|(i, (preset, mut w))| {
                        w.id = WorkspaceId::new(id(n_presets + i, "w"));
                        w.preset = presets[preset].id.clone();
                        w.latest_build.active_version =
                            presets[preset].active != w.latest_build.active_version;
                        w
                    })
                    .collect();
                Snapshot {
                    now,
                    config,
                    settings: Settings {
                        reconciliation_paused: paused,
                    },
                    presets,
                    workspaces,
                }
            })
    })
}

fn arb_snapshot() -> impl Strategy<Value = Snapshot> {
    arb_snapshot_with(false)
}

// ---------------------------------------------------------------------------------------------------------------
// An independent reading of SPEC section 3's definitions, to check the plan against.
// ---------------------------------------------------------------------------------------------------------------

fn prebuilds<'a>(s: &'a Snapshot, preset: &PresetId) -> Vec<&'a WorkspaceSnapshot> {
    s.workspaces
        .iter()
        .filter(|w| w.owner == PREBUILDS_OWNER && &w.preset == preset)
        .collect()
}

fn is_running(w: &WorkspaceSnapshot) -> bool {
    w.latest_build.transition == Transition::Start && w.latest_build.status == JobStatus::Succeeded
}

fn is_expired(p: &PresetSnapshot, w: &WorkspaceSnapshot, now: DateTime<Utc>) -> bool {
    let invalidated = p.invalidated_at.is_some_and(|at| w.created_at < at);
    let too_old = p
        .ttl
        .is_some_and(|ttl| !ttl.is_zero() && now - w.created_at > ttl.to_time_delta());
    is_running(w) && (invalidated || too_old)
}

fn is_pending_inactive(w: &WorkspaceSnapshot) -> bool {
    let b = &w.latest_build;
    b.number == 1
        && b.transition == Transition::Start
        && b.status == JobStatus::Pending
        && !b.picked_up
        && !b.active_version
}

fn is_failed_candidate(w: &WorkspaceSnapshot) -> bool {
    let b = &w.latest_build;
    b.transition == Transition::Start && b.active_version && b.status == JobStatus::Failed
}

fn has_pool(p: &PresetSnapshot) -> bool {
    p.active && (p.instances.is_some() || p.scheduling.is_some())
}

/// The target: 0 for an inactive preset or one without a pool, else the first active schedule or `instances`.
fn desired(p: &PresetSnapshot, now: DateTime<Utc>) -> u32 {
    if !has_pool(p) {
        return 0;
    }
    p.scheduling
        .as_ref()
        .and_then(|s| s.active_at(now))
        .map_or(p.instances.unwrap_or(0), |(_, instances)| instances)
}

fn running_unexpired(s: &Snapshot, p: &PresetSnapshot) -> u32 {
    prebuilds(s, &p.id)
        .into_iter()
        .filter(|w| is_running(w) && !is_expired(p, w, s.now))
        .count() as u32
}

fn paused(s: &Snapshot, p: &PresetSnapshot) -> bool {
    s.settings.reconciliation_paused || p.paused
}

/// "Nothing to do" for a preset (a sufficient condition, checked against the plan):
/// - no prebuild whose latest build is a failed `start` on the active version (so no DB backoff, no hard limit);
/// - inactive: no running prebuild (expired or not) and no first build pending on an inactive version;
/// - active without a pool: no running prebuild, and the stored status is `healthy` or `validation_failed`;
/// - active with a pool: no expired prebuild, running unexpired == desired, and the stored status is `healthy` or
///   `validation_failed` (what the planner computes when nothing is hard-limited).
///
/// Pause, creation failures and in-progress builds do not matter: with nothing computed, nothing is held.
fn nothing_to_do(s: &Snapshot, p: &PresetSnapshot) -> bool {
    let ws = prebuilds(s, &p.id);
    if ws.iter().any(|w| is_failed_candidate(w)) {
        return false;
    }
    let running = ws.iter().filter(|w| is_running(w)).count() as u32;
    let expired = ws.iter().filter(|w| is_expired(p, w, s.now)).count() as u32;
    let status_kept = matches!(
        p.status,
        PresetStatus::Healthy | PresetStatus::ValidationFailed
    );
    if !p.active {
        running == 0 && !ws.iter().any(|w| is_pending_inactive(w))
    } else if !has_pool(p) {
        running == 0 && status_kept
    } else {
        expired == 0 && running == desired(p, s.now) && status_kept
    }
}

/// The DB-derived backoff's and the hard limit's candidates: prebuilds whose latest build is a `start` on the active
/// version, newest build first, ties by the larger id first.
fn candidates<'a>(s: &'a Snapshot, p: &PresetSnapshot) -> Vec<&'a WorkspaceSnapshot> {
    let mut c: Vec<_> = prebuilds(s, &p.id)
        .into_iter()
        .filter(|w| w.latest_build.transition == Transition::Start && w.latest_build.active_version)
        .collect();
    c.sort_by(|a, b| {
        b.latest_build
            .created_at
            .cmp(&a.latest_build.created_at)
            .then_with(|| b.id.as_str().as_bytes().cmp(a.id.as_str().as_bytes()))
    });
    c
}

fn plus(at: DateTime<Utc>, interval: Duration, n: u64) -> DateTime<Utc> {
    // The generators keep this small: intervals of at most an hour, at most 14 workspaces.
    at + TimeDelta::milliseconds(i64::try_from(interval.as_millis() * n).unwrap())
}

fn spec_db_backoff(s: &Snapshot, p: &PresetSnapshot) -> Option<DateTime<Utc>> {
    if !has_pool(p) {
        return None;
    }
    let window_start = s.now - s.config.backoff_lookback.to_time_delta();
    let c = candidates(s, p);
    let in_window = |w: &WorkspaceSnapshot| {
        w.latest_build.status == JobStatus::Failed && w.latest_build.created_at >= window_start
    };
    let newest = desired(p, s.now) as usize;
    let last = c
        .iter()
        .take(newest)
        .filter(|w| in_window(w))
        .map(|w| w.latest_build.created_at)
        .max()?;
    let failures = c.iter().filter(|w| in_window(w)).count() as u64;
    let until = plus(last, s.config.backoff_interval, failures);
    (s.now <= until).then_some(until)
}

fn spec_hard_limited(s: &Snapshot, p: &PresetSnapshot) -> bool {
    let limit = s.config.failure_hard_limit as usize;
    let c = candidates(s, p);
    has_pool(p)
        && limit > 0
        && c.len() >= limit
        && c.iter()
            .take(limit)
            .all(|w| w.latest_build.status == JobStatus::Failed)
}

fn spec_creation_backoff(s: &Snapshot, p: &PresetSnapshot) -> Option<DateTime<Utc>> {
    let f = p.creation_failures?;
    if f.consecutive == 0 {
        return None;
    }
    let until = plus(
        f.last_failure_at?,
        s.config.backoff_interval,
        u64::from(f.consecutive),
    );
    (s.now < until).then_some(until)
}

fn oldest_first(mut ws: Vec<&WorkspaceSnapshot>) -> Vec<WorkspaceId> {
    ws.sort_by(|a, b| {
        a.created_at
            .cmp(&b.created_at)
            .then_with(|| a.id.as_str().as_bytes().cmp(b.id.as_str().as_bytes()))
    });
    ws.into_iter().map(|w| w.id.clone()).collect()
}

/// SPEC section 3's rules written out on their own, from the definitions above: the status, the actions and the
/// held actions of one preset.
fn spec_entry(s: &Snapshot, p: &PresetSnapshot) -> (PresetStatus, Vec<Action>, Vec<HeldAction>) {
    let ws = prebuilds(s, &p.id);
    let (expired, unexpired): (Vec<&WorkspaceSnapshot>, Vec<&WorkspaceSnapshot>) = ws
        .iter()
        .copied()
        .filter(|w| is_running(w))
        .partition(|w| is_expired(p, w, s.now));
    let target = desired(p, s.now) as usize;
    let limited = spec_hard_limited(s, p);
    let status = if p.status == PresetStatus::ValidationFailed {
        PresetStatus::ValidationFailed
    } else if !p.active {
        p.status
    } else if limited {
        PresetStatus::HardLimited
    } else {
        PresetStatus::Healthy
    };

    type Hold = Option<(HoldReason, Option<DateTime<Utc>>)>;
    let mut computed: Vec<(Action, Hold)> = Vec::new();
    let delete = |ids: Vec<WorkspaceId>, reason| {
        (!ids.is_empty()).then_some((
            Action::Delete {
                workspaces: ids,
                reason,
            },
            None,
        ))
    };
    if let Some(until) = spec_db_backoff(s, p) {
        computed.push((Action::Backoff { until }, None));
    } else if !p.active {
        if ws.iter().any(|w| is_pending_inactive(w)) {
            computed.push((Action::CancelPending, None));
        }
        computed.extend(delete(oldest_first(expired), DeleteReason::Expired));
        computed.extend(delete(oldest_first(unexpired), DeleteReason::Inactive));
    } else {
        let running = unexpired.len();
        computed.extend(delete(oldest_first(expired), DeleteReason::Expired));
        let surplus = running.saturating_sub(target);
        let mut extraneous = oldest_first(unexpired);
        extraneous.truncate(surplus);
        computed.extend(delete(extraneous, DeleteReason::Extraneous));
        let starting = ws
            .iter()
            .filter(|w| {
                w.latest_build.transition == Transition::Start
                    && w.latest_build.status.in_progress()
            })
            .count();
        let count = target.saturating_sub(running).saturating_sub(starting);
        if count > 0 {
            let hold = if let Some(until) = spec_creation_backoff(s, p) {
                Some((HoldReason::CreationBackoff, Some(until)))
            } else if limited {
                Some((HoldReason::HardLimited, None))
            } else if status == PresetStatus::ValidationFailed {
                Some((HoldReason::ValidationFailed, None))
            } else {
                None
            };
            computed.push((
                Action::Create {
                    count: count as u32,
                },
                hold,
            ));
        }
    }

    let mut actions = Vec::new();
    let mut held = Vec::new();
    if status != p.status {
        actions.push(Action::SetStatus { status });
    }
    for (action, hold) in computed {
        if paused(s, p) {
            held.push(HeldAction {
                action,
                reason: HoldReason::Paused,
                until: None,
            });
        } else if let Some((reason, until)) = hold {
            held.push(HeldAction {
                action,
                reason,
                until,
            });
        } else {
            actions.push(action);
        }
    }
    (status, actions, held)
}

fn all_actions(pp: &PresetPlan) -> impl Iterator<Item = &Action> {
    pp.actions.iter().chain(pp.held.iter().map(|h| &h.action))
}

/// The rank of an action kind in SPEC's order (set_status first).
fn rank(action: &Action) -> u8 {
    match action {
        Action::SetStatus { .. } => 0,
        Action::Backoff { .. } => 1,
        Action::CancelPending => 2,
        Action::Delete {
            reason: DeleteReason::Expired,
            ..
        } => 3,
        Action::Delete { .. } => 4,
        Action::Create { .. } => 5,
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Checks shared by the properties.
// ---------------------------------------------------------------------------------------------------------------

fn check_creates(s: &Snapshot, plan: &Plan) -> Result<(), TestCaseError> {
    for (p, pp) in s.presets.iter().zip(&plan.presets) {
        let want = desired(p, s.now);
        prop_assert_eq!(pp.state.desired, want, "desired of {}", p.id);
        for action in all_actions(pp) {
            if let Action::Create { count } = *action {
                prop_assert!(p.active, "create for inactive {}", p.id);
                prop_assert!(count > 0, "empty create for {}", p.id);
                prop_assert!(
                    count <= want,
                    "create {} > desired {} for {}",
                    count,
                    want,
                    p.id
                );
                // The deficit exactly: desired - running unexpired - starting.
                prop_assert_eq!(
                    count + running_unexpired(s, p) + pp.state.starting,
                    want,
                    "create count of {}",
                    p.id
                );
            }
        }
    }
    Ok(())
}

fn check_deletes(s: &Snapshot, plan: &Plan) -> Result<(), TestCaseError> {
    let by_id: HashMap<&WorkspaceId, &WorkspaceSnapshot> =
        s.workspaces.iter().map(|w| (&w.id, w)).collect();
    let mut seen = HashSet::new();
    for (p, pp) in s.presets.iter().zip(&plan.presets) {
        for action in all_actions(pp) {
            let Action::Delete { workspaces, reason } = action else {
                continue;
            };
            prop_assert!(!workspaces.is_empty(), "empty delete for {}", p.id);
            let mut previous: Option<&WorkspaceSnapshot> = None;
            for id in workspaces {
                let w = by_id.get(id).copied();
                prop_assert!(w.is_some(), "delete of unknown {}", id);
                let w = w.unwrap();
                prop_assert_eq!(&w.owner, PREBUILDS_OWNER, "delete of claimed {}", id);
                prop_assert_eq!(&w.preset, &p.id, "delete of {} by another preset", id);
                prop_assert!(
                    !w.latest_build.status.in_progress(),
                    "delete of in-progress {}",
                    id
                );
                prop_assert!(is_running(w), "delete of not running {}", id);
                prop_assert!(seen.insert(id.clone()), "{} deleted twice", id);
                let expired = is_expired(p, w, s.now);
                match reason {
                    DeleteReason::Expired => prop_assert!(expired, "{} not expired", id),
                    DeleteReason::Extraneous => {
                        prop_assert!(p.active && !expired, "{} not extraneous", id)
                    }
                    DeleteReason::Inactive => {
                        prop_assert!(!p.active && !expired, "{} not inactive", id)
                    }
                }
                if let Some(prev) = previous {
                    prop_assert!(
                        (prev.created_at, &prev.id) < (w.created_at, &w.id),
                        "delete ids out of order: {} before {}",
                        prev.id,
                        id
                    );
                }
                previous = Some(w);
            }
        }
    }
    Ok(())
}

fn check_well_formed(s: &Snapshot, plan: &Plan) -> Result<(), TestCaseError> {
    prop_assert_eq!(plan.presets.len(), s.presets.len());
    for (p, pp) in s.presets.iter().zip(&plan.presets) {
        prop_assert_eq!(&pp.id, &p.id);
        prop_assert_eq!(&pp.template, &p.template);
        prop_assert_eq!(&pp.preset, &p.preset);

        let ws = prebuilds(s, &p.id);
        let st = &pp.state;
        let running = ws.iter().filter(|w| is_running(w)).count() as u32;
        let expired = ws.iter().filter(|w| is_expired(p, w, s.now)).count() as u32;
        prop_assert_eq!(st.actual, running);
        prop_assert_eq!(st.expired, expired);
        let in_progress = |t: Transition| {
            ws.iter()
                .filter(|w| w.latest_build.transition == t && w.latest_build.status.in_progress())
                .count() as u32
        };
        prop_assert_eq!(st.starting, in_progress(Transition::Start));
        prop_assert_eq!(st.stopping, in_progress(Transition::Stop));
        prop_assert_eq!(st.deleting, in_progress(Transition::Delete));
        if p.active {
            let eligible = ws
                .iter()
                .filter(|w| is_running(w) && !is_expired(p, w, s.now) && w.ready)
                .count() as u32;
            prop_assert_eq!(st.eligible, eligible);
            prop_assert_eq!(
                st.extraneous,
                (running - expired).saturating_sub(st.desired)
            );
        } else {
            prop_assert_eq!((st.eligible, st.extraneous), (0, 0));
            prop_assert_eq!(st.target_source, TargetSource::Inactive);
        }
        if p.active && !has_pool(p) {
            prop_assert_eq!(st.target_source, TargetSource::None);
        }
        prop_assert_eq!(
            st.schedule_index.is_some(),
            st.target_source == TargetSource::Schedule
        );

        // Status: validation_failed wins; an inactive preset keeps its input.
        if p.status == PresetStatus::ValidationFailed {
            prop_assert_eq!(pp.status, PresetStatus::ValidationFailed);
        }
        if !p.active || !has_pool(p) {
            prop_assert!(pp.status == p.status || pp.status == PresetStatus::Healthy);
        }
        if !p.active {
            prop_assert_eq!(pp.status, p.status);
        }
        // set_status: exactly when the status changes, first, once, never held.
        let set_status: Vec<_> = pp
            .actions
            .iter()
            .enumerate()
            .filter(|(_, a)| matches!(a, Action::SetStatus { .. }))
            .collect();
        if pp.status == p.status {
            prop_assert!(set_status.is_empty());
        } else {
            let want = Action::SetStatus { status: pp.status };
            prop_assert_eq!(set_status, vec![(0, &want)]);
        }
        prop_assert!(
            !pp.held
                .iter()
                .any(|h| matches!(h.action, Action::SetStatus { .. })),
            "held set_status: {:?}",
            pp.held
        );

        // Order: by kind, as SPEC lists them; actions and held each in that order.
        for list in [
            pp.actions.iter().collect::<Vec<_>>(),
            pp.held.iter().map(|h| &h.action).collect(),
        ] {
            prop_assert!(
                list.windows(2).all(|w| rank(w[0]) < rank(w[1])),
                "out of order: {:?}",
                list
            );
        }
        // A backoff stands alone (after a set_status), and only for an active preset with a pool.
        if all_actions(pp).any(|a| matches!(a, Action::Backoff { .. })) {
            prop_assert!(has_pool(p));
            let others = all_actions(pp)
                .filter(|a| !matches!(a, Action::Backoff { .. } | Action::SetStatus { .. }))
                .count();
            prop_assert_eq!(others, 0);
        }
        if all_actions(pp).any(|a| matches!(a, Action::CancelPending)) {
            prop_assert!(!p.active && ws.iter().any(|w| is_pending_inactive(w)));
        }
        // Pause: nothing but a set_status is executed, and everything held is held for the pause.
        if paused(s, p) {
            prop_assert!(
                pp.actions
                    .iter()
                    .all(|a| matches!(a, Action::SetStatus { .. })),
                "paused but executes {:?}",
                pp.actions
            );
            prop_assert!(pp.held.iter().all(|h| h.reason == HoldReason::Paused));
        }
        // Only creates are held for other reasons; `until` exactly for creation_backoff, and in the future.
        for h in &pp.held {
            if h.reason != HoldReason::Paused {
                prop_assert!(
                    matches!(h.action, Action::Create { .. }),
                    "held for {:?}: {:?}",
                    h.reason,
                    h.action
                );
            }
            prop_assert_eq!(h.until.is_some(), h.reason == HoldReason::CreationBackoff);
            if let Some(until) = h.until {
                prop_assert!(s.now < until);
            }
            if h.reason == HoldReason::ValidationFailed {
                prop_assert_eq!(pp.status, PresetStatus::ValidationFailed);
            }
            if h.reason == HoldReason::HardLimited {
                prop_assert!(config_limit(s) > 0 && has_pool(p));
            }
        }
        if let Some(Action::Backoff { until }) = all_actions(pp).find(|a| a.kind() == "backoff") {
            prop_assert!(s.now <= *until);
        }
    }
    Ok(())
}

fn config_limit(s: &Snapshot) -> u32 {
    s.config.failure_hard_limit
}

// ---------------------------------------------------------------------------------------------------------------
// Transformations: a snapshot with nothing to do, and one a perfect executor can settle.
// ---------------------------------------------------------------------------------------------------------------

/// Makes every preset of `s` quiet: removes running prebuilds, cancels first builds pending on inactive versions,
/// turns failed start candidates into canceled builds, keeps stored statuses the planner would compute, and gives
/// each active pool exactly `desired` running, unexpired prebuilds (created at most `spread` ms apart, never
/// before `invalidated_at` nor beyond the TTL).
fn quieten(mut s: Snapshot, spread: &[u32]) -> Snapshot {
    let now = s.now;
    let active: HashMap<PresetId, bool> =
        s.presets.iter().map(|p| (p.id.clone(), p.active)).collect();
    s.workspaces.retain(|w| !(w.is_prebuild() && is_running(w)));
    for w in s.workspaces.iter_mut().filter(|w| w.is_prebuild()) {
        if is_failed_candidate(w) || (!active[&w.preset] && is_pending_inactive(w)) {
            w.latest_build.status = JobStatus::Canceled;
        }
    }
    let mut added = Vec::new();
    for p in s.presets.iter_mut().filter(|p| p.active) {
        if p.status == PresetStatus::HardLimited {
            p.status = PresetStatus::Healthy;
        }
        if p.invalidated_at.is_some_and(|at| at > now) {
            p.invalidated_at = Some(now);
        }
        let mut earliest = now - TimeDelta::hours(6);
        if let Some(at) = p.invalidated_at {
            earliest = earliest.max(at);
        }
        if let Some(ttl) = p.ttl {
            earliest = earliest.max(now - ttl.to_time_delta());
        }
        for i in 0..desired(p, now) {
            let back = spread.get(i as usize).copied().unwrap_or(0);
            let created_at = (now - TimeDelta::milliseconds(i64::from(back))).max(earliest);
            added.push(new_prebuild(
                format!("quiet-{}-{i}", p.id),
                p.id.clone(),
                created_at,
            ));
        }
    }
    s.workspaces.extend(added);
    s
}

fn new_prebuild(id: String, preset: PresetId, at: DateTime<Utc>) -> WorkspaceSnapshot {
    WorkspaceSnapshot {
        id: WorkspaceId::new(id),
        owner: PREBUILDS_OWNER.to_owned(),
        preset,
        created_at: at,
        ready: true,
        latest_build: LatestBuild {
            number: 1,
            transition: Transition::Start,
            status: JobStatus::Succeeded,
            created_at: at,
            active_version: true,
            picked_up: true,
        },
    }
}

/// Removes every reason for a gate: no pause, no hard limit (`failure_hard_limit` 0), no creation backoff, no
/// `validation_failed` on active presets, failures only before the lookback (no DB backoff), and
/// `invalidated_at <= now` (so a prebuild created at `now` is not expired).
fn ungated(mut s: Snapshot) -> Snapshot {
    let now = s.now;
    s.settings.reconciliation_paused = false;
    s.config.failure_hard_limit = 0;
    for p in &mut s.presets {
        p.paused = false;
        if p.active {
            p.creation_failures = None;
            if p.status == PresetStatus::ValidationFailed {
                p.status = PresetStatus::Healthy;
            }
        }
        if p.invalidated_at.is_some_and(|at| at > now) {
            p.invalidated_at = Some(now);
        }
    }
    let window_start = now - s.config.backoff_lookback.to_time_delta();
    for w in &mut s.workspaces {
        if w.latest_build.status == JobStatus::Failed && w.latest_build.created_at >= window_start {
            w.latest_build.created_at = window_start - TimeDelta::milliseconds(1);
        }
    }
    s
}

/// A perfect executor at the snapshot's `now`: the plan's actions succeed (a create is a running prebuild created
/// at `now`; a delete removes the workspace; a cancel cancels the pending first builds; a status is stored), then
/// every build still in progress finishes (start: running and ready; stop: stopped; delete: gone).
fn execute(s: &Snapshot, plan: &Plan, tick: u32) -> Snapshot {
    let mut next = s.clone();
    let mut removed = HashSet::new();
    let mut cancelled = HashSet::new();
    let mut created = Vec::new();
    for (p, pp) in next.presets.iter_mut().zip(&plan.presets) {
        for action in &pp.actions {
            match action {
                Action::SetStatus { status } => p.status = *status,
                Action::CancelPending => {
                    cancelled.insert(p.id.clone());
                }
                Action::Delete { workspaces, .. } => removed.extend(workspaces.iter().cloned()),
                Action::Create { count } => {
                    for i in 0..*count {
                        created.push(new_prebuild(
                            format!("t{tick}-{}-{i}", p.id),
                            p.id.clone(),
                            s.now,
                        ));
                    }
                }
                Action::Backoff { .. } => {}
            }
        }
    }
    next.workspaces.retain(|w| !removed.contains(&w.id));
    for w in &mut next.workspaces {
        if w.is_prebuild() && cancelled.contains(&w.preset) && is_pending_inactive(w) {
            w.latest_build.status = JobStatus::Canceled;
        }
        if w.latest_build.status.in_progress() {
            w.latest_build.status = JobStatus::Succeeded;
            w.latest_build.picked_up = true;
            if w.latest_build.transition == Transition::Start {
                w.ready = true;
            }
        }
    }
    next.workspaces.retain(|w| {
        !(w.latest_build.transition == Transition::Delete
            && w.latest_build.status == JobStatus::Succeeded)
    });
    next.workspaces.extend(created);
    next
}

// ---------------------------------------------------------------------------------------------------------------
// JSON: arbitrary values and mutations of valid snapshots.
// ---------------------------------------------------------------------------------------------------------------

/// Keys the reader knows, so that random objects often look like (parts of) snapshots.
const KEYS: &[&str] = &[
    "now",
    "config",
    "settings",
    "presets",
    "workspaces",
    "backoff_interval",
    "backoff_lookback",
    "failure_hard_limit",
    "reconciliation_paused",
    "id",
    "template",
    "template_version",
    "preset",
    "active",
    "instances",
    "ttl",
    "invalidated_at",
    "scheduling",
    "timezone",
    "schedules",
    "cron",
    "status",
    "paused",
    "creation_failures",
    "consecutive",
    "last_failure_at",
    "owner",
    "created_at",
    "ready",
    "latest_build",
    "number",
    "transition",
    "active_version",
    "picked_up",
];

/// Values at the edges of what the reader accepts.
const NASTY_STRINGS: &[&str] = &[
    "",
    "prebuilds",
    "p0",
    "w0",
    "start",
    "stop",
    "delete",
    "pending",
    "running",
    "succeeded",
    "failed",
    "canceling",
    "canceled",
    "healthy",
    "hard_limited",
    "validation_failed",
    "0s",
    "1ms",
    "90s",
    "1h30m",
    "-1s",
    "1 h",
    "1w",
    "1m1h",
    "99999999999999999999d",
    "100000000d",
    "106751991167d",
    "2025-06-02T12:00:00Z",
    "2025-06-02T12:00:00.123456789+14:00",
    "0000-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999999Z",
    "9999-12-31T23:59:59-23:59",
    "+275760-09-13T00:00:00Z",
    "2025-02-30T00:00:00Z",
    "2025-06-02 12:00:00",
    "* 9-18 * * 1-5",
    "* 2 * * *",
    "0 9 * * *",
    "* 24 * * *",
    "* 9-8 * * *",
    "* * * * 7",
    "* 1,,2 * * *",
    "*",
    "UTC",
    "Europe/Berlin",
    "Mars/Olympus_Mons",
    "\u{0}",
    "é",
];

fn arb_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        select(
            &[
                0i64,
                1,
                2,
                3,
                -1,
                1000,
                1001,
                u32::MAX as i64,
                i64::MAX,
                i64::MIN
            ][..]
        )
        .prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        Just(Value::from(u64::MAX)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        select(NASTY_STRINGS).prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::String),
    ]
}

fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![4 => select(KEYS).prop_map(str::to_owned), 1 => "\\PC{0,6}"]
}

fn arb_value() -> impl Strategy<Value = Value> {
    arb_leaf().prop_recursive(5, 96, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((arb_key(), inner), 0..7)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

#[derive(Debug, Clone)]
enum Segment {
    Key(String),
    Index(usize),
}

fn paths(value: &Value, prefix: &mut Vec<Segment>, out: &mut Vec<Vec<Segment>>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                prefix.push(Segment::Key(k.clone()));
                out.push(prefix.clone());
                paths(v, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                prefix.push(Segment::Index(i));
                out.push(prefix.clone());
                paths(v, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Remove,
    Replace(Value),
    /// Copies an array element next to itself (duplicate ids) or an object entry under another key.
    Duplicate(String),
    Rename(String),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => Just(Mutation::Remove),
        4 => arb_leaf().prop_map(Mutation::Replace),
        1 => arb_value().prop_map(Mutation::Replace),
        1 => arb_key().prop_map(Mutation::Duplicate),
        1 => arb_key().prop_map(Mutation::Rename),
    ]
}

fn mutate(value: &mut Value, pick: usize, mutation: &Mutation) {
    let mut all = Vec::new();
    paths(value, &mut Vec::new(), &mut all);
    if all.is_empty() {
        *value = match mutation {
            Mutation::Replace(v) => v.clone(),
            _ => Value::Null,
        };
        return;
    }
    let path = &all[pick % all.len()];
    let (last, parents) = path.split_last().unwrap();
    let mut parent = &mut *value;
    for segment in parents {
        parent = match segment {
            Segment::Key(k) => &mut parent[k.as_str()],
            Segment::Index(i) => &mut parent[*i],
        };
    }
    match (parent, last) {
        (Value::Object(map), Segment::Key(k)) => match mutation {
            Mutation::Remove => {
                map.remove(k);
            }
            Mutation::Replace(v) => {
                map.insert(k.clone(), v.clone());
            }
            Mutation::Duplicate(other) => {
                let copy = map[k].clone();
                map.insert(other.clone(), copy);
            }
            Mutation::Rename(other) => {
                if let Some(v) = map.remove(k) {
                    map.insert(other.clone(), v);
                }
            }
        },
        (Value::Array(items), Segment::Index(i)) => match mutation {
            Mutation::Remove => {
                items.remove(*i);
            }
            Mutation::Replace(v) => items[*i] = v.clone(),
            Mutation::Duplicate(_) | Mutation::Rename(_) => {
                let copy = items[*i].clone();
                items.insert(*i, copy);
            }
        },
        _ => unreachable!("paths only lead to object keys and array indexes"),
    }
}

/// Every instant of a snapshot.
fn instants(s: &Snapshot) -> impl Iterator<Item = DateTime<Utc>> + '_ {
    let presets = s.presets.iter().flat_map(|p| {
        p.invalidated_at
            .into_iter()
            .chain(p.creation_failures.and_then(|f| f.last_failure_at))
    });
    let workspaces = s
        .workspaces
        .iter()
        .flat_map(|w| [w.created_at, w.latest_build.created_at]);
    std::iter::once(s.now).chain(presets).chain(workspaces)
}

/// Reads `text`; when it reads, plans it and writes both back. None of it may panic.
fn read_and_plan(text: &str) -> Result<(), TestCaseError> {
    match from_json(text) {
        Ok(snapshot) => {
            let plan = plan(&snapshot);
            prop_assert_eq!(plan.presets.len(), snapshot.presets.len());
            serde_json::to_string(&plan).unwrap();
            // Every instant of the plan is written as RFC 3339 (SPEC section 3).
            for pp in &plan.presets {
                let untils = all_actions(pp)
                    .filter_map(|a| match a {
                        Action::Backoff { until } => Some(*until),
                        _ => None,
                    })
                    .chain(pp.held.iter().filter_map(|h| h.until));
                for until in untils {
                    let text = format_timestamp(&until);
                    prop_assert!(
                        DateTime::parse_from_rfc3339(&text).is_ok(),
                        "until {}",
                        text
                    );
                }
            }
            // What was read is written back readably: instants outside years 0000-9999 in UTC are refused.
            prop_assert!(instants(&snapshot).all(|t| (0..=9999).contains(&t.year())));
            let again = from_json(&to_json(&snapshot).to_string());
            prop_assert!(again.is_ok(), "written snapshot does not read: {:?}", again);
        }
        Err(err) => prop_assert!(!err.message.is_empty()),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// The properties.
// ---------------------------------------------------------------------------------------------------------------

proptest! {
    #[test]
    fn never_creates_more_than_desired(s in arb_snapshot()) {
        check_creates(&s, &plan(&s))?;
    }

    #[test]
    fn deletes_only_running_prebuilds_of_the_preset(s in arb_snapshot()) {
        check_deletes(&s, &plan(&s))?;
    }

    #[test]
    fn plans_are_well_formed(s in arb_snapshot()) {
        check_well_formed(&s, &plan(&s))?;
    }

    #[test]
    fn plan_follows_the_spec_rules_written_out(s in arb_snapshot()) {
        let plan = plan(&s);
        for (p, pp) in s.presets.iter().zip(&plan.presets) {
            let (status, actions, held) = spec_entry(&s, p);
            prop_assert_eq!(pp.status, status, "status of {}", p.id);
            prop_assert_eq!(&pp.actions, &actions, "actions of {}", p.id);
            prop_assert_eq!(&pp.held, &held, "held of {}", p.id);
        }
    }

    #[test]
    fn nothing_to_do_plans_nothing(s in arb_snapshot()) {
        let plan = plan(&s);
        for (p, pp) in s.presets.iter().zip(&plan.presets) {
            if nothing_to_do(&s, p) {
                prop_assert!(pp.is_empty(), "{} has nothing to do but plans {:?}", p.id, pp);
            }
        }
    }

    #[test]
    fn quiet_snapshots_plan_nothing(
        s in arb_snapshot(),
        spread in prop::collection::vec(0u32..=3_600_000, 0..6),
    ) {
        let s = quieten(s, &spread);
        let plan = plan(&s);
        for (p, pp) in s.presets.iter().zip(&plan.presets) {
            prop_assert!(nothing_to_do(&s, p), "quieten left work for {}", p.id);
            prop_assert!(pp.is_empty(), "{} is quiet but plans {:?}", p.id, pp);
        }
        check_well_formed(&s, &plan)?;
    }

    #[test]
    fn perfect_executor_reaches_every_target_within_two_ticks(s in arb_snapshot()) {
        let mut s = ungated(s);
        for tick in 1..=2 {
            let plan = plan(&s);
            check_creates(&s, &plan)?;
            check_deletes(&s, &plan)?;
            for pp in &plan.presets {
                prop_assert!(pp.held.is_empty(), "tick {}: {} holds {:?}", tick, pp.id, pp.held);
                prop_assert!(
                    !pp.actions.iter().any(|a| matches!(a, Action::Backoff { .. })),
                    "tick {}: {} backs off",
                    tick,
                    pp.id
                );
            }
            s = execute(&s, &plan, tick);
        }
        for p in &s.presets {
            // Active pools reach their target; inactive presets and presets without a pool reach 0.
            prop_assert_eq!(running_unexpired(&s, p), desired(p, s.now), "preset {}", p.id);
            let expired = prebuilds(&s, &p.id).into_iter().filter(|w| is_expired(p, w, s.now)).count();
            prop_assert_eq!(expired, 0, "preset {}", p.id);
        }
        // And then it is settled: the next plan is empty.
        let plan = plan(&s);
        for pp in &plan.presets {
            prop_assert!(pp.is_empty(), "tick 3: {} plans {:?}", pp.id, pp);
        }
    }

    #[test]
    fn plan_does_not_depend_on_workspace_order(
        (s, shuffled) in arb_snapshot().prop_flat_map(|s| {
            let workspaces = s.workspaces.clone();
            (Just(s), Just(workspaces).prop_shuffle())
        }),
    ) {
        let mut other = s.clone();
        other.workspaces = shuffled;
        prop_assert_eq!(plan(&s), plan(&other));
    }

    #[test]
    fn snapshot_json_round_trips(s in arb_snapshot_with(true)) {
        let text = to_json(&s).to_string();
        let back = from_json(&text);
        prop_assert_eq!(back.as_ref(), Ok(&s), "{}", text);
        // The plan's JSON reads back as the same plan.
        let plan = plan(&s);
        let again: Plan = serde_json::from_value(serde_json::to_value(&plan).unwrap()).unwrap();
        prop_assert_eq!(again, plan);
    }

    #[test]
    fn from_json_never_panics_on_arbitrary_values(value in arb_value()) {
        read_and_plan(&value.to_string())?;
    }

    #[test]
    fn from_json_never_panics_on_arbitrary_snapshot_shapes(
        now in arb_leaf(),
        config in arb_value(),
        presets in prop::collection::vec(prop::collection::vec((arb_key(), arb_value()), 0..8), 0..3),
        workspaces in prop::collection::vec(prop::collection::vec((arb_key(), arb_value()), 0..8), 0..3),
    ) {
        let object = |kv: Vec<(String, Value)>| Value::Object(kv.into_iter().collect());
        let value = serde_json::json!({
            "now": now,
            "config": config,
            "presets": presets.into_iter().map(object).collect::<Vec<_>>(),
            "workspaces": workspaces.into_iter().map(object).collect::<Vec<_>>(),
        });
        read_and_plan(&value.to_string())?;
    }

    #[test]
    fn from_json_never_panics_on_mutated_snapshots(
        s in arb_snapshot(),
        mutations in prop::collection::vec((any::<usize>(), arb_mutation()), 1..4),
    ) {
        let mut value = to_json(&s);
        for (pick, mutation) in &mutations {
            mutate(&mut value, *pick, mutation);
        }
        read_and_plan(&value.to_string())?;
    }

    #[test]
    fn from_json_refuses_truncated_text(s in arb_snapshot(), cut in any::<prop::sample::Index>()) {
        let text = to_json(&s).to_string();
        let mut at = cut.index(text.len());
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        prop_assert!(from_json(&text[..at]).is_err());
    }

    #[test]
    fn from_json_never_panics_on_any_text(text in "\\PC{0,64}") {
        read_and_plan(&text)?;
    }
}
