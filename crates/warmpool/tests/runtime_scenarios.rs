//! Runtime scenario tests: the reconciler over a real store (SQLite and PostgreSQL), driven tick by tick with a
//! manual clock, with the test playing the provisioner (take a job, finish it as the scenario needs, or leave it
//! pending or running), or with the real build workers and exec provisioner where the scenario is about them.
//!
//! They port Coder's `enterprise/coderd/prebuilds/reconcile_test.go` (reference section 11.2) and add the seed's
//! persisted creation-failure backoff (SPEC section 2, difference 4). Where a SPEC difference changes a Coder
//! expectation, the test follows SPEC and says so.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use chrono::{TimeDelta, Utc};
use tokio_util::sync::CancellationToken;
use warmpool::clock::{Clock, SystemClock};
use warmpool::config::ReconcilerConfig;
use warmpool::reconciler::Reconciler;
use warmpool::worker::JobNotify;
use warmpool_core::duration::Duration;
use warmpool_core::ids::{PresetId, WorkspaceId};
use warmpool_core::model::{CreationFailures, JobStatus, PlannerConfig, PresetStatus, Transition};
use warmpool_core::plan::{Action, DeleteReason, HeldAction, HoldReason, TargetSource};
use warmpool_core::schedule::{Cron, Schedule, Scheduling, parse_timezone};
use warmpool_core::template::TemplateSpec;
use warmpool_store::{AppliedBy, ClaimRequest, CounterName, JobOutcome, StoreError};

use support::*;

scenarios!(
    no_pool_no_jobs,
    prebuild_reconciliation_matrix,
    presets_of_one_version_do_not_block_each_other,
    schedules_set_the_target,
    invalid_preset_builds_nothing,
    validation_failed_presets,
    prebuild_of_a_preset_made_invalid_is_deleted,
    hard_limited_preset_skips_creation,
    hard_limit_does_not_block_deletion_by_a_new_version,
    hard_limit_does_not_block_deletion_of_a_deleted_template,
    failed_build_backoff,
    pause_and_resume,
    cancel_pending_prebuilds,
    expired_prebuilds_multiple_actions,
    creation_backoff_on_a_full_quota_survives_a_restart,
    creation_backoff_on_an_injected_database_failure,
    every_refused_creation_attempt_counts,
    failing_builds_back_off_then_hit_the_hard_limit,
    lost_builds_run_again_on_their_own_workspace,
    failed_delete_is_retried_later,
    run_loop_ticks_at_start_up_and_every_interval,
    trigger_ticks_promptly_and_folds_a_burst,
);

/// Coder's defaults for the reconcile tests: backoff 1 min, lookback 1 h, hard limit 3.
fn default_planner() -> PlannerConfig {
    planner(mins(1), TimeDelta::hours(1), 3)
}

fn held(action: Action, reason: HoldReason) -> HeldAction {
    HeldAction {
        action,
        reason,
        until: None,
    }
}

// ----- TestNoReconciliationActionsIfNoPresets / ...IfNoPrebuilds -----

async fn no_pool_no_jobs<S: Backend>(db: Db<S>) {
    let env = Env::new(db, default_planner());
    env.apply(&template("bare", vec![])).await;
    env.apply(&template("nopool", vec![preset("p", None)]))
        .await;
    for _ in 0..3 {
        env.advance(secs(1));
        env.tick_ok().await;
    }
    assert!(env.workspaces("bare").await.is_empty());
    assert!(env.workspaces("nopool").await.is_empty());
    assert!(env.store.job_counts().await.unwrap().by_status.is_empty());
}

// ----- TestPrebuildReconciliation -----

#[derive(Debug, Clone, Copy)]
struct Combo {
    version_active: bool,
    template_deleted: bool,
    transition: Transition,
    status: JobStatus,
}

/// What happens to the existing prebuild over the cycles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Its builds stay as they were.
    Unchanged,
    /// It gets a `delete` build (2 builds, newest a pending delete).
    Deleted,
    /// Its pending first build is cancelled and the workspace deleted without running anything (SPEC section 2:
    /// cancelling pending jobs of inactive versions; Coder 2.16).
    Canceled,
}

/// The expectation for one combination, desired 1: how many new prebuilds, and the old prebuild's fate.
fn expectation(c: Combo) -> (usize, Fate) {
    use JobStatus::*;
    use Transition::*;
    let active = c.version_active && !c.template_deleted;
    if !active {
        // Scenarios 1, 7, 8, 10, 11: an inactive preset never creates; it deletes its running prebuild, and
        // cancels a first build that no worker took; everything else is left alone.
        let fate = match (c.transition, c.status) {
            (Start, Succeeded) => Fate::Deleted,
            (Start, Pending) => Fate::Canceled,
            _ => Fate::Unchanged,
        };
        return (0, fate);
    }
    let new = match (c.transition, c.status) {
        // Scenario 2: already running. Scenario 3: starting.
        (Start, Succeeded | Pending | Running) => 0,
        // A failed start is a failed build in the lookback window: the DB-derived backoff holds the preset for
        // the 8 cycles (they span 8 s of a 1 min backoff).
        (Start, Failed) => 0,
        // Scenarios 4 and 5, and a cancelled or canceling start (`canceling` is not in progress, as in Coder):
        // the preset has nothing running or starting.
        _ => 1,
    };
    // Scenarios 6, 7, 9, 10: an active preset at its target deletes nothing.
    (new, Fate::Unchanged)
}

struct Case {
    combo: Combo,
    name: String,
    preset: PresetId,
    antagonist: WorkspaceId,
    user: WorkspaceId,
    prebuild: Option<WorkspaceId>,
}

/// Finishes (or leaves) a taken job the way the combination needs.
async fn settle<S: Backend>(env: &Env<S>, job: &warmpool_store::AcquiredJob, status: JobStatus) {
    match status {
        JobStatus::Running => {}
        JobStatus::Canceling => env.force_canceling(job).await,
        JobStatus::Succeeded => env.finish(job, succeeded()).await,
        JobStatus::Failed => env.finish(job, failed()).await,
        JobStatus::Canceled => env.finish(job, JobOutcome::Canceled).await,
        JobStatus::Pending => unreachable!("pending jobs are never taken"),
    }
}

async fn queue<S: Backend>(env: &Env<S>, workspace: &WorkspaceId, transition: Transition) {
    match transition {
        Transition::Stop => {
            env.store
                .enqueue_build(workspace, Transition::Stop, env.now())
                .await
                .unwrap();
        }
        Transition::Delete => {
            env.store
                .delete_prebuild(workspace, env.now())
                .await
                .unwrap();
        }
        Transition::Start => unreachable!(),
    }
}

/// Every combination of (version active?, template deleted?, latest transition, job status) at once, one
/// template each, desired 1, with Coder's antagonists (a stopped prebuild and a running user workspace of the
/// same preset), reconciled 8 times. Coder's "broken pubsub" dimension has no counterpart here (job notification
/// is in process and workers poll anyway).
async fn prebuild_reconciliation_matrix<S: Backend>(db: Db<S>) {
    use JobStatus::*;
    use Transition::*;
    let env = Env::new(db, default_planner());
    let mut combos = Vec::new();
    for version_active in [true, false] {
        for template_deleted in [false, true] {
            for transition in [Start, Stop, Delete] {
                for status in [Pending, Running, Canceling, Succeeded, Failed, Canceled] {
                    combos.push(Combo {
                        version_active,
                        template_deleted,
                        transition,
                        status,
                    });
                }
            }
        }
    }

    // Set-up, phase 1: everything that takes a job, one combination at a time, so that the only runnable job is
    // always the one the script means to take.
    let mut cases = Vec::new();
    for (i, &combo) in combos.iter().enumerate() {
        let name = format!("m{i}");
        env.apply(&template(&name, vec![preset("p", Some(1))]))
            .await;
        let preset_id = env.preset(&name, "p").await.id;
        let antagonist = env.ready_prebuild(&preset_id).await;
        queue(&env, &antagonist, Stop).await;
        let job = env.acquire_for(&antagonist).await;
        env.finish(&job, succeeded()).await;
        let (user, _) = env
            .store
            .create_workspace(
                &ClaimRequest {
                    template: name.clone(),
                    preset: "p".into(),
                    owner: "alice".into(),
                    name: format!("alice-{i}"),
                },
                env.now(),
            )
            .await
            .unwrap();
        let job = env.acquire_for(&user.id).await;
        env.finish(&job, succeeded()).await;
        let prebuild = match (combo.transition, combo.status) {
            (Start, Pending) => None,
            (Start, status) => {
                let created = env
                    .store
                    .create_prebuild(&preset_id, env.now())
                    .await
                    .unwrap();
                let job = env.acquire_for(&created.workspace.id).await;
                settle(&env, &job, status).await;
                Some(created.workspace.id)
            }
            (transition, status) => {
                let id = env.ready_prebuild(&preset_id).await;
                if status != Pending {
                    queue(&env, &id, transition).await;
                    let job = env.acquire_for(&id).await;
                    settle(&env, &job, status).await;
                }
                Some(id)
            }
        };
        cases.push(Case {
            combo,
            name,
            preset: preset_id,
            antagonist,
            user: user.id,
            prebuild,
        });
    }
    // Phase 2: the builds left pending, never taken by a worker.
    for case in &mut cases {
        if case.combo.status != Pending {
            continue;
        }
        match case.combo.transition {
            Start => {
                let created = env
                    .store
                    .create_prebuild(&case.preset, env.now())
                    .await
                    .unwrap();
                case.prebuild = Some(created.workspace.id);
            }
            transition => queue(&env, case.prebuild.as_ref().unwrap(), transition).await,
        }
    }
    // Phase 3: make versions inactive and templates deleted.
    for case in &cases {
        if !case.combo.version_active {
            let mut v2 = template(&case.name, vec![]);
            v2.revision = Some("2".into());
            env.apply(&v2).await;
        }
        if case.combo.template_deleted {
            env.store
                .delete_template(&case.name, env.now())
                .await
                .unwrap();
        }
    }
    let mut before = BTreeMap::new();
    for case in &cases {
        for id in [
            &case.antagonist,
            &case.user,
            case.prebuild.as_ref().unwrap(),
        ] {
            before.insert(id.clone(), shape(&env.builds(id).await));
        }
    }

    let mut first_tick_at = None;
    for cycle in 1..=8 {
        env.advance(secs(1));
        env.tick_ok().await;
        let first_tick_at = *first_tick_at.get_or_insert(env.now());
        for case in &cases {
            let (new, fate) = expectation(case.combo);
            let what = format!("{:?}, cycle {cycle}", case.combo);
            let prebuild = case.prebuild.as_ref().unwrap();
            let all = env.workspaces_of(&case.name, &case.preset).await;
            let created: Vec<_> = all
                .iter()
                .filter(|w| w.is_prebuild() && w.id != case.antagonist && &w.id != prebuild)
                .collect();
            assert_eq!(created.len(), new, "new prebuilds: {what}");
            for w in &created {
                assert_eq!(
                    shape(&env.builds(&w.id).await),
                    vec![(Start, Pending)],
                    "{what}"
                );
            }
            for id in [&case.antagonist, &case.user] {
                assert_eq!(
                    shape(&env.builds(id).await),
                    before[id],
                    "antagonist: {what}"
                );
            }
            let builds = env.builds(prebuild).await;
            match fate {
                Fate::Unchanged => assert_eq!(shape(&builds), before[prebuild], "{what}"),
                Fate::Deleted => assert_eq!(
                    shape(&builds),
                    vec![(Delete, Pending), (Start, Succeeded)],
                    "{what}"
                ),
                Fate::Canceled => {
                    assert_eq!(
                        shape(&builds),
                        vec![(Delete, Succeeded), (Start, Canceled)],
                        "{what}"
                    );
                    // Cancelled in the first cycle, completed at once, never run by a worker.
                    assert_eq!(builds[1].completed_at, Some(first_tick_at), "{what}");
                    assert_eq!(builds[0].completed_at, Some(first_tick_at), "{what}");
                    assert_eq!(builds[0].attempts, 0, "{what}");
                    assert_eq!(
                        env.workspace(prebuild).await.deleted_at,
                        Some(first_tick_at),
                        "{what}"
                    );
                }
            }
        }
    }
}

// ----- TestMultiplePresetsPerTemplateVersion -----

async fn presets_of_one_version_do_not_block_each_other<S: Backend>(db: Db<S>) {
    let env = Env::new(db, default_planner());
    env.apply(&template(
        "multi",
        vec![preset("p1", Some(4)), preset("p2", Some(10))],
    ))
    .await;
    let p1 = env.preset("multi", "p1").await.id;
    let p2 = env.preset("multi", "p2").await.id;
    let mut running = BTreeSet::new();
    for _ in 0..4 {
        let created = env.store.create_prebuild(&p1, env.now()).await.unwrap();
        env.acquire_for(&created.workspace.id).await;
        running.insert(created.workspace.id);
    }
    for cycle in 1..=8 {
        env.advance(secs(1));
        env.tick_ok().await;
        let of_p1: BTreeSet<_> = env
            .workspaces_of("multi", &p1)
            .await
            .into_iter()
            .map(|w| w.id)
            .collect();
        assert_eq!(of_p1, running, "cycle {cycle}: preset 1 is starting its 4");
        assert_eq!(
            env.workspaces_of("multi", &p2).await.len(),
            10,
            "cycle {cycle}: preset 2 is not blocked by preset 1's builds"
        );
    }
}

// ----- TestPrebuildScheduling -----

fn utc_schedules(schedules: &[(&str, u32)]) -> Scheduling {
    Scheduling::new(
        parse_timezone("UTC").unwrap(),
        schedules
            .iter()
            .map(|(cron, instances)| Schedule {
                cron_text: (*cron).into(),
                cron: Cron::parse(cron).unwrap(),
                instances: *instances,
            })
            .collect(),
    )
    .unwrap()
}

/// Preset 1 has `2-4` ×2 and `6-8` ×3, preset 2 has `10-12` ×4 and `14-16` ×5, each with baseline 1, on Monday
/// 2 June 2025 UTC. Each time gets a template of its own (applied at that time, deleted after), which stands for
/// Coder's fresh database per time.
async fn schedules_set_the_target<S: Backend>(db: Db<S>) {
    let env = Env::new(db, default_planner());
    let times: [(i64, [usize; 2], [TargetSource; 2]); 5] = [
        (
            1,
            [1, 1],
            [TargetSource::Instances, TargetSource::Instances],
        ),
        (3, [2, 1], [TargetSource::Schedule, TargetSource::Instances]),
        (7, [3, 1], [TargetSource::Schedule, TargetSource::Instances]),
        (
            11,
            [1, 4],
            [TargetSource::Instances, TargetSource::Schedule],
        ),
        (
            15,
            [1, 5],
            [TargetSource::Instances, TargetSource::Schedule],
        ),
    ];
    for (hour, expected, sources) in times {
        env.set_now(t0() + TimeDelta::hours(hour));
        let name = format!("sched-{hour:02}");
        let mut p1 = preset("p1", Some(1));
        p1.pool.scheduling = Some(utc_schedules(&[("* 2-4 * * *", 2), ("* 6-8 * * *", 3)]));
        let mut p2 = preset("p2", Some(1));
        p2.pool.scheduling = Some(utc_schedules(&[("* 10-12 * * *", 4), ("* 14-16 * * *", 5)]));
        env.apply(&template(&name, vec![p1, p2])).await;
        env.tick_ok().await;
        for (i, preset_name) in ["p1", "p2"].into_iter().enumerate() {
            let id = env.preset(&name, preset_name).await.id;
            assert_eq!(
                env.workspaces_of(&name, &id).await.len(),
                expected[i],
                "{hour:02}:00 {preset_name}"
            );
            let plan = env.plan_of(&id);
            assert_eq!(plan.state.desired as usize, expected[i]);
            assert_eq!(plan.state.target_source, sources[i], "{hour:02}:00");
        }
        env.store.delete_template(&name, env.now()).await.unwrap();
    }
}

// ----- TestInvalidPreset -----

async fn invalid_preset_builds_nothing<S: Backend>(db: Db<S>) {
    let env = Env::new(db, default_planner());
    let mut spec = template("invalid", vec![preset("p", Some(1))]);
    spec.parameters.push(required("extra"));
    env.apply(&spec).await;
    let id = env.preset("invalid", "p").await.id;
    for cycle in 1..=8 {
        env.advance(secs(1));
        env.tick_ok().await;
        assert!(env.workspaces("invalid").await.is_empty(), "cycle {cycle}");
        assert_eq!(
            env.status_of("invalid", &id).await,
            PresetStatus::ValidationFailed
        );
        assert_eq!(
            env.plan_of(&id).held,
            vec![held(
                Action::Create { count: 1 },
                HoldReason::ValidationFailed
            )]
        );
    }
    assert!(env.store.job_counts().await.unwrap().by_status.is_empty());
}

// ----- TestValidationFailedPresets -----

/// A: already `validation_failed`, desired 2; B and C: a required parameter without a value, desired 1 and 3;
/// D: the database refuses its workspaces; E: a healthy control. Two cycles.
///
/// SPEC difference 4: D's refusal is a creation failure, so D holds creation after its first failure (one attempt
/// over the two cycles, `consecutive` 1) instead of retrying every cycle, and stays `healthy` as in Coder.
async fn validation_failed_presets<S: Backend>(db: Db<S>) {
    let env = Env::new(db, default_planner());
    let missing = |name: &str, instances| {
        let mut spec = template(name, vec![preset("p", Some(instances))]);
        spec.parameters.push(required("extra"));
        spec
    };
    env.apply(&template("vf-a", vec![preset("p", Some(2))]))
        .await;
    env.apply(&missing("vf-b", 1)).await;
    env.apply(&missing("vf-c", 3)).await;
    let d = env
        .apply(&template("vf-d", vec![preset("p", Some(1))]))
        .await;
    env.apply(&template("vf-e", vec![preset("p", Some(1))]))
        .await;
    let a = env.preset("vf-a", "p").await.id;
    env.store
        .set_preset_status(&a, PresetStatus::ValidationFailed, env.now())
        .await
        .unwrap();
    env.store.refuse_workspaces(Some(d.id.as_str())).await;

    let first = env.tick().await;
    assert!(
        first.errors.iter().any(|e| e.contains("injected failure")),
        "{:?}",
        first.errors
    );
    env.advance(secs(1));
    env.tick_ok().await;

    for name in ["vf-a", "vf-b", "vf-c"] {
        let p = env.preset(name, "p").await;
        assert_eq!(p.status, PresetStatus::ValidationFailed, "{name}");
        assert!(env.workspaces(name).await.is_empty(), "{name}");
    }
    let d = env.preset("vf-d", "p").await;
    assert_eq!(d.status, PresetStatus::Healthy);
    assert!(env.workspaces("vf-d").await.is_empty());
    assert_eq!(
        d.creation_failures,
        CreationFailures {
            consecutive: 1,
            last_failure_at: Some(t0())
        }
    );
    let e = env.preset("vf-e", "p").await;
    assert_eq!(e.status, PresetStatus::Healthy);
    assert_eq!(env.workspaces("vf-e").await.len(), 1);
}

// ----- TestDeletionOfPrebuiltWorkspaceWithInvalidPreset -----

async fn prebuild_of_a_preset_made_invalid_is_deleted<S: Backend>(db: Db<S>) {
    let env = Env::new(db, default_planner());
    env.apply(&template("inv-del", vec![preset("p", Some(1))]))
        .await;
    env.tick_ok().await;
    assert_eq!(env.finish_all(succeeded()).await, 1);
    let old = env.workspaces("inv-del").await[0].id.clone();

    let mut v2 = template("inv-del", vec![preset("p", Some(1))]);
    v2.parameters.push(required("extra"));
    let applied = env.apply(&v2).await;
    assert_eq!(applied.active_version.as_deref(), Some("v2"));
    let new_preset = env.preset("inv-del", "p").await;
    assert_eq!(new_preset.status, PresetStatus::ValidationFailed);

    env.advance(secs(1));
    env.tick_ok().await;
    assert_eq!(
        shape(&env.builds(&old).await),
        vec![
            (Transition::Delete, JobStatus::Pending),
            (Transition::Start, JobStatus::Succeeded)
        ]
    );
    assert!(
        env.workspaces_of("inv-del", &new_preset.id)
            .await
            .is_empty()
    );
    // The delete runs with the old version and the old preset's values, which the new version could not build.
    let job = env.acquire_for(&old).await;
    assert_eq!(job.template_version, "v1");
    let params: Vec<_> = job
        .parameters
        .iter()
        .map(|p| (p.name.as_str(), p.value.as_str()))
        .collect();
    assert_eq!(params, vec![("test", "test")]);
    env.finish(&job, succeeded()).await;
    assert!(env.workspace(&old).await.deleted_at.is_some());
    env.advance(secs(1));
    env.tick_ok().await;
    assert_eq!(env.workspaces("inv-del").await.len(), 1);
}

// ----- TestSkippingHardLimitedPresets -----

/// One failed prebuild, backoff interval 0 and the clock 1 ms on, three cycles: limit 1 holds creation and marks
/// the preset `hard_limited`; with limit 2 a second prebuild is created. SPEC difference 9: the status is live, so
/// the same preset returns to `healthy` when the limit stops holding (Coder never resets it).
async fn hard_limited_preset_skips_creation<S: Backend>(db: Db<S>) {
    let mut env = Env::new(db, planner(TimeDelta::zero(), TimeDelta::hours(1), 1));
    env.apply(&template("hl", vec![preset("p", Some(1))])).await;
    let id = env.preset("hl", "p").await.id;
    let created = env.store.create_prebuild(&id, env.now()).await.unwrap();
    let job = env.acquire_for(&created.workspace.id).await;
    env.finish(&job, failed()).await;
    assert_eq!(env.status_of("hl", &id).await, PresetStatus::Healthy);
    env.advance(TimeDelta::milliseconds(1));
    for cycle in 1..=3 {
        env.tick_ok().await;
        assert_eq!(env.workspaces("hl").await.len(), 1, "cycle {cycle}");
        assert_eq!(env.status_of("hl", &id).await, PresetStatus::HardLimited);
        assert_eq!(
            env.plan_of(&id).held,
            vec![held(Action::Create { count: 1 }, HoldReason::HardLimited)]
        );
    }
    env.set_planner(planner(TimeDelta::zero(), TimeDelta::hours(1), 2));
    for cycle in 1..=3 {
        env.tick_ok().await;
        assert_eq!(env.workspaces("hl").await.len(), 2, "cycle {cycle}");
        assert_eq!(env.status_of("hl", &id).await, PresetStatus::Healthy);
    }
}

// ----- TestHardLimitedPresetShouldNotBlockDeletion -----

/// Desired 2; one prebuild succeeded and one, a second later, failed; limit 1. The preset is hard-limited and
/// creates nothing; then its version is replaced (or its template deleted) and its running prebuild is deleted
/// all the same.
async fn hard_limited_then<S: Backend>(db: Db<S>, wind_down: impl AsyncFnOnce(&Env<S>)) {
    let env = Env::new(db, planner(mins(1), TimeDelta::hours(1), 1));
    env.apply(&template("hld", vec![preset("p", Some(2))]))
        .await;
    let id = env.preset("hld", "p").await.id;
    let good = env.ready_prebuild(&id).await;
    env.advance(secs(1));
    let bad = env.store.create_prebuild(&id, env.now()).await.unwrap();
    let job = env.acquire_for(&bad.workspace.id).await;
    env.finish(&job, failed()).await;
    let bad = bad.workspace.id;
    // Past the DB-derived backoff of the one failure (1 × 1 min after the failed build).
    env.advance(secs(61));
    env.tick_ok().await;
    assert_eq!(env.status_of("hld", &id).await, PresetStatus::HardLimited);
    assert_eq!(env.workspaces("hld").await.len(), 2);
    assert_eq!(
        env.plan_of(&id).held,
        vec![held(Action::Create { count: 1 }, HoldReason::HardLimited)]
    );

    wind_down(&env).await;
    env.advance(secs(1));
    env.tick_ok().await;
    assert_eq!(
        shape(&env.builds(&good).await),
        vec![
            (Transition::Delete, JobStatus::Pending),
            (Transition::Start, JobStatus::Succeeded)
        ]
    );
    assert_eq!(
        shape(&env.builds(&bad).await),
        vec![(Transition::Start, JobStatus::Failed)]
    );
    let counts = env.store.job_counts().await.unwrap().by_status;
    assert_eq!(
        counts,
        BTreeMap::from([
            ("failed".to_owned(), 1),
            ("pending".to_owned(), 1),
            ("succeeded".to_owned(), 1)
        ])
    );
}

async fn hard_limit_does_not_block_deletion_by_a_new_version<S: Backend>(db: Db<S>) {
    hard_limited_then(db, async |env: &Env<S>| {
        let mut v2 = template("hld", vec![preset("p", None)]);
        v2.revision = Some("2".into());
        env.apply(&v2).await;
    })
    .await;
}

async fn hard_limit_does_not_block_deletion_of_a_deleted_template<S: Backend>(db: Db<S>) {
    hard_limited_then(db, async |env: &Env<S>| {
        env.store.delete_template("hld", env.now()).await.unwrap();
    })
    .await;
}

// ----- TestFailedBuildBackoff -----

/// Interval 1 min, lookback 20 h, desired 2.
async fn failed_build_backoff<S: Backend>(db: Db<S>) {
    let env = Env::new(db, planner(mins(1), TimeDelta::hours(20), 3));
    env.apply(&template("fbb", vec![preset("p", Some(2))]))
        .await;
    let id = env.preset("fbb", "p").await.id;
    env.tick_ok().await;
    assert_eq!(env.finish_all(failed()).await, 2);

    // Two failures: until = last failure + 2 × 1 min, the same at every tick inside the window (`now <= until`).
    let until = t0() + mins(2);
    for at in [t0() + secs(1), t0() + mins(1), until] {
        env.set_now(at);
        env.tick_ok().await;
        assert_eq!(env.plan_of(&id).actions, vec![Action::Backoff { until }]);
        assert_eq!(env.workspaces("fbb").await.len(), 2);
    }
    // Past it: the two are replaced.
    env.set_now(until + TimeDelta::milliseconds(1));
    let t1 = env.now();
    env.tick_ok().await;
    assert_eq!(env.plan_of(&id).actions, vec![Action::Create { count: 2 }]);
    assert_eq!(env.workspaces("fbb").await.len(), 4);
    // One of the new ones fails, one succeeds: three failures in the lookback, the newest at t1.
    let mut outcomes = vec![succeeded(), failed()];
    env.finish_each(|_| outcomes.pop().unwrap()).await;
    env.advance(secs(1));
    env.tick_ok().await;
    let plan = env.plan_of(&id);
    assert_eq!(
        plan.actions,
        vec![Action::Backoff {
            until: t1 + mins(3)
        }]
    );
    assert_eq!(plan.state.actual, 1);
    assert_eq!(env.workspaces("fbb").await.len(), 4);
}

// ----- TestReconciliationRespectsPauseSetting, and the per-preset pause (SPEC difference 6) -----

async fn pause_and_resume<S: Backend>(db: Db<S>) {
    let env = Env::new(db, default_planner());
    env.apply(&template("pause", vec![preset("p", Some(2))]))
        .await;
    let id = env.preset("pause", "p").await.id;
    let live = async |env: &Env<S>| {
        env.workspaces("pause")
            .await
            .into_iter()
            .filter(|w| w.deleted_at.is_none())
            .collect::<Vec<_>>()
    };

    env.tick_ok().await;
    let toggle = async |env: &Env<S>, global: bool, paused: bool| {
        if global {
            env.store
                .set_reconciliation_paused(paused, env.now())
                .await
                .unwrap();
        } else {
            env.store
                .set_preset_paused("pause", "p", paused, env.now())
                .await
                .unwrap();
        }
    };
    for global in [true, false] {
        assert_eq!(live(&env).await.len(), 2);
        env.finish_all(succeeded()).await;
        toggle(&env, global, true).await;
        for w in live(&env).await {
            env.store
                .enqueue_build(&w.id, Transition::Delete, env.now())
                .await
                .unwrap();
        }
        // Jobs already queued keep running while paused.
        assert_eq!(env.finish_all(succeeded()).await, 2);
        for _ in 0..2 {
            env.advance(secs(1));
            env.tick_ok().await;
            assert!(
                live(&env).await.is_empty(),
                "nothing is recreated while paused"
            );
            let plan = env.plan_of(&id);
            assert!(plan.actions.is_empty());
            assert_eq!(
                plan.held,
                vec![held(Action::Create { count: 2 }, HoldReason::Paused)]
            );
        }
        toggle(&env, global, false).await;
        env.advance(secs(1));
        env.tick_ok().await;
        assert_eq!(live(&env).await.len(), 2, "resumed: the pool is recreated");
    }
}

// ----- TestCancelPendingPrebuilds (MultipleTemplates, with what must never be cancelled) -----

async fn cancel_pending_prebuilds<S: Backend>(db: Db<S>) {
    use JobStatus::*;
    use Transition::*;
    let env = Env::new(db, default_planner());
    env.apply(&template("cp-a", vec![preset("p", Some(5))]))
        .await;
    let a1 = env.preset("cp-a", "p").await.id;
    // What takes a job first, so that the jobs left pending are never taken.
    let mut running = Vec::new();
    for _ in 0..2 {
        let created = env.store.create_prebuild(&a1, env.now()).await.unwrap();
        env.acquire_for(&created.workspace.id).await;
        running.push(created.workspace.id);
    }
    let canceled_start = env.store.create_prebuild(&a1, env.now()).await.unwrap();
    let job = env.acquire_for(&canceled_start.workspace.id).await;
    env.finish(&job, JobOutcome::Canceled).await;
    let canceled_start = canceled_start.workspace.id;
    let succeeded_one = env.ready_prebuild(&a1).await;
    let stop_pending = env.ready_prebuild(&a1).await;
    let delete_pending = env.ready_prebuild(&a1).await;
    // Now what stays pending.
    let mut doomed = Vec::new();
    for _ in 0..3 {
        doomed.push(env.store.create_prebuild(&a1, env.now()).await.unwrap());
    }
    env.store
        .enqueue_build(&stop_pending, Stop, env.now())
        .await
        .unwrap();
    env.store
        .delete_prebuild(&delete_pending, env.now())
        .await
        .unwrap();
    let (user, _) = env
        .store
        .create_workspace(
            &ClaimRequest {
                template: "cp-a".into(),
                preset: "p".into(),
                owner: "alice".into(),
                name: "alice-1".into(),
            },
            env.now(),
        )
        .await
        .unwrap();
    // A v2 is active, with two pending prebuilds of its own.
    let mut a_v2 = template("cp-a", vec![preset("p", Some(2))]);
    a_v2.revision = Some("2".into());
    env.apply(&a_v2).await;
    let a2 = env.preset("cp-a", "p").await.id;
    let mut kept = Vec::new();
    for _ in 0..2 {
        kept.push(env.store.create_prebuild(&a2, env.now()).await.unwrap());
    }
    // B: v1 and v2 with two pending each, v3 active with one.
    for revision in ["1", "2", "3"] {
        let mut spec = template("cp-b", vec![preset("p", Some(1))]);
        spec.revision = Some(revision.into());
        env.apply(&spec).await;
        let p = env.preset("cp-b", "p").await.id;
        let n = if revision == "3" { 1 } else { 2 };
        for _ in 0..n {
            let created = env.store.create_prebuild(&p, env.now()).await.unwrap();
            if revision == "3" {
                kept.push(created);
            } else {
                doomed.push(created);
            }
        }
    }

    env.advance(mins(1));
    let now = env.now();
    let status = env.tick_ok().await;
    assert_eq!(status.actions.get("cancel_pending"), Some(&7));
    for created in &doomed {
        let id = &created.workspace.id;
        let builds = env.builds(id).await;
        assert_eq!(shape(&builds), vec![(Delete, Succeeded), (Start, Canceled)]);
        assert_eq!(builds[1].completed_at, Some(now));
        assert_eq!(builds[0].completed_at, Some(now));
        assert_eq!(builds[0].attempts, 0, "the orphan delete runs nothing");
        assert_eq!(env.workspace(id).await.deleted_at, Some(now));
    }
    for created in &kept {
        assert_eq!(
            shape(&env.builds(&created.workspace.id).await),
            vec![(Start, Pending)],
            "the active version's pending builds are kept"
        );
    }
    for id in &running {
        assert_eq!(shape(&env.builds(id).await), vec![(Start, Running)]);
    }
    assert_eq!(
        shape(&env.builds(&canceled_start).await),
        vec![(Start, Canceled)]
    );
    assert_eq!(
        shape(&env.builds(&stop_pending).await),
        vec![(Stop, Pending), (Start, Succeeded)]
    );
    assert_eq!(
        shape(&env.builds(&delete_pending).await),
        vec![(Delete, Pending), (Start, Succeeded)]
    );
    assert_eq!(shape(&env.builds(&user.id).await), vec![(Start, Pending)]);
    // The running prebuild of the inactive version is deleted (not cancelled).
    assert_eq!(
        shape(&env.builds(&succeeded_one).await),
        vec![(Delete, Pending), (Start, Succeeded)]
    );
    for id in running
        .iter()
        .chain([&canceled_start, &stop_pending, &delete_pending, &user.id])
    {
        assert!(env.workspace(id).await.deleted_at.is_none());
    }
}

// ----- TestExpiredPrebuildsMultipleActions -----

/// TTL 3 h, desired 2, prebuilds 1 s apart: (running, expired) = (2, 0), (2, 1), (2, 2), (4, 2), (4, 1). The
/// expired and the oldest extraneous get delete builds, the others stay start-only, and the expected number of
/// new prebuilds is created in the same tick. One template per case, one tick for all. SPEC difference 1: age is
/// measured against the snapshot's `now` (the manual clock), where Coder uses the wall clock.
async fn expired_prebuilds_multiple_actions<S: Backend>(db: Db<S>) {
    let env = Env::new(db, default_planner());
    let ttl = TimeDelta::hours(3);
    let now = t0() + TimeDelta::hours(4);
    // (template, prebuilds, expired, deleted as expired, deleted as extraneous, created)
    let cases: [(&str, usize, usize, usize, usize); 5] = [
        ("exp-a", 2, 0, 0, 0),
        ("exp-b", 2, 1, 0, 1),
        ("exp-c", 2, 2, 0, 2),
        ("exp-d", 4, 2, 0, 0),
        ("exp-e", 4, 1, 1, 0),
    ];
    let mut made = Vec::new();
    for &(name, n, expired, _, _) in &cases {
        env.apply(&template(name, vec![with_ttl(preset("p", Some(2)), ttl)]))
            .await;
        let id = env.preset(name, "p").await.id;
        let mut workspaces = Vec::new();
        for j in 0..n {
            // Workspace j is expired iff j < expired: its age at `now` is 3 h + (expired - j) s - 0.5 s.
            let created_at =
                now - ttl - secs(expired as i64 - j as i64) + TimeDelta::milliseconds(500);
            let created = env.store.create_prebuild(&id, created_at).await.unwrap();
            workspaces.push(created.workspace.id);
        }
        made.push((id, workspaces));
    }
    env.set_now(now);
    env.finish_all(succeeded()).await;
    env.tick_ok().await;

    for (&(name, n, expired, extraneous, create), (id, workspaces)) in cases.iter().zip(&made) {
        let plan = env.plan_of(id);
        assert_eq!(plan.state.expired as usize, expired, "{name}");
        assert_eq!(plan.state.extraneous as usize, extraneous, "{name}");
        let mut expected = Vec::new();
        if expired > 0 {
            expected.push(Action::Delete {
                workspaces: workspaces[..expired].to_vec(),
                reason: DeleteReason::Expired,
            });
        }
        if extraneous > 0 {
            expected.push(Action::Delete {
                workspaces: workspaces[expired..expired + extraneous].to_vec(),
                reason: DeleteReason::Extraneous,
            });
        }
        if create > 0 {
            expected.push(Action::Create {
                count: create as u32,
            });
        }
        assert_eq!(plan.actions, expected, "{name}");
        for (j, w) in workspaces.iter().enumerate() {
            let want = if j < expired + extraneous {
                vec![
                    (Transition::Delete, JobStatus::Pending),
                    (Transition::Start, JobStatus::Succeeded),
                ]
            } else {
                vec![(Transition::Start, JobStatus::Succeeded)]
            };
            assert_eq!(shape(&env.builds(w).await), want, "{name} workspace {j}");
        }
        let all = env.workspaces_of(name, id).await;
        assert_eq!(all.len(), n + create, "{name}: new prebuilds");
    }
}

// ----- the seed's creation-failure backoff, persisted (SPEC section 2, difference 4) -----

fn failures(consecutive: u32, at: chrono::DateTime<Utc>) -> CreationFailures {
    CreationFailures {
        consecutive,
        last_failure_at: Some(at),
    }
}

fn no_failures() -> CreationFailures {
    CreationFailures {
        consecutive: 0,
        last_failure_at: None,
    }
}

/// Instances 2 on a template whose `max_workspaces = 1` is full after the first prebuild: each refused creation
/// adds one to the record, and creation is held for 1×, 2×, 3× the interval after successive failures; the record
/// survives a restart; freeing quota lets the creation at the end of the hold succeed, which clears the record.
async fn creation_backoff_on_a_full_quota_survives_a_restart<S: Backend>(db: Db<S>) {
    let interval = mins(1);
    let mut env = Env::new(db, planner(interval, TimeDelta::hours(1), 3));
    let mut spec = template("quota", vec![preset("p", Some(2))]);
    spec.max_workspaces = Some(1);
    env.apply(&spec).await;
    let id = env.preset("quota", "p").await.id;

    let first = env.tick().await;
    assert_eq!(first.actions.get("create"), Some(&1));
    assert!(
        first.errors.iter().any(|e| e.contains("maximum of 1")),
        "{:?}",
        first.errors
    );
    let mut last = env.now();
    assert_eq!(
        env.preset("quota", "p").await.creation_failures,
        failures(1, last)
    );

    for consecutive in 1..=3u32 {
        let until = last + interval * consecutive as i32;
        env.set_now(until - TimeDelta::milliseconds(1));
        if consecutive == 3 {
            // The service restarts while creation is held: the record is in the database.
            env = env.restart().await;
            assert_eq!(
                env.preset("quota", "p").await.creation_failures,
                failures(3, last)
            );
        }
        let status = env.tick_ok().await;
        assert_eq!(status.actions.get("create"), None);
        assert_eq!(
            env.plan_of(&id).held,
            vec![HeldAction {
                action: Action::Create { count: 1 },
                reason: HoldReason::CreationBackoff,
                until: Some(until),
            }],
            "held for {consecutive} × the interval"
        );
        assert_eq!(env.workspaces("quota").await.len(), 1);
        if consecutive == 3 {
            break;
        }
        env.set_now(until);
        let status = env.tick().await;
        assert_eq!(status.errors.len(), 1, "{:?}", status.errors);
        last = until;
        assert_eq!(
            env.preset("quota", "p").await.creation_failures,
            failures(consecutive + 1, last)
        );
        assert_eq!(env.preset("quota", "p").await.status, PresetStatus::Healthy);
    }

    // Free the quota (in place); the hold still runs to its end.
    spec.max_workspaces = Some(2);
    env.apply(&spec).await;
    env.tick_ok().await;
    assert_eq!(env.workspaces("quota").await.len(), 1);
    env.set_now(last + interval * 3);
    let status = env.tick_ok().await;
    assert_eq!(status.actions.get("create"), Some(&1));
    assert_eq!(env.workspaces("quota").await.len(), 2);
    assert_eq!(
        env.preset("quota", "p").await.creation_failures,
        no_failures()
    );
}

/// The database refuses the creating transaction (a trigger raising an error on the workspace insert): the same
/// record and the same holds, the preset stays `healthy`, and the first creation after the database recovers
/// clears the record.
async fn creation_backoff_on_an_injected_database_failure<S: Backend>(db: Db<S>) {
    let interval = mins(1);
    let env = Env::new(db, planner(interval, TimeDelta::hours(1), 3));
    env.apply(&template("inject", vec![preset("p", Some(1))]))
        .await;
    let id = env.preset("inject", "p").await.id;
    env.store.refuse_workspaces(None).await;

    let status = env.tick().await;
    assert!(
        status.errors.iter().any(|e| e.contains("injected failure")),
        "{:?}",
        status.errors
    );
    assert_eq!(
        env.preset("inject", "p").await.creation_failures,
        failures(1, t0())
    );
    env.set_now(t0() + interval - TimeDelta::milliseconds(1));
    env.tick_ok().await;
    assert_eq!(env.plan_of(&id).held[0].reason, HoldReason::CreationBackoff);
    env.set_now(t0() + interval);
    assert_eq!(env.tick().await.errors.len(), 1);
    let second = env.now();
    assert_eq!(
        env.preset("inject", "p").await.creation_failures,
        failures(2, second)
    );

    env.store.accept_workspaces().await;
    env.set_now(second + interval * 2 - TimeDelta::milliseconds(1));
    env.tick_ok().await;
    assert_eq!(env.plan_of(&id).held[0].until, Some(second + interval * 2));
    assert!(env.workspaces("inject").await.is_empty());
    env.set_now(second + interval * 2);
    env.tick_ok().await;
    assert_eq!(env.workspaces("inject").await.len(), 1);
    let p = env.preset("inject", "p").await;
    assert_eq!(p.creation_failures, no_failures());
    assert_eq!(p.status, PresetStatus::Healthy);
}

/// As in the seed, every refused attempt of a tick counts, not only the first: a quota filled by a user's
/// workspace refuses both prebuilds of a `create 2`, so the record holds creation for 2 × the interval.
async fn every_refused_creation_attempt_counts<S: Backend>(db: Db<S>) {
    let interval = mins(1);
    let env = Env::new(db, planner(interval, TimeDelta::hours(1), 3));
    let mut spec = template("quota-all", vec![preset("p", Some(2))]);
    spec.max_workspaces = Some(1);
    env.apply(&spec).await;
    let id = env.preset("quota-all", "p").await.id;
    env.store
        .create_workspace(
            &ClaimRequest {
                template: "quota-all".into(),
                preset: "p".into(),
                owner: "alice".into(),
                name: "alice-1".into(),
            },
            env.now(),
        )
        .await
        .unwrap();
    let status = env.tick().await;
    assert_eq!(status.errors.len(), 2, "{:?}", status.errors);
    assert_eq!(
        env.preset("quota-all", "p").await.creation_failures,
        failures(2, t0())
    );
    env.set_now(t0() + interval * 2 - TimeDelta::milliseconds(1));
    env.tick_ok().await;
    assert_eq!(env.plan_of(&id).held[0].until, Some(t0() + interval * 2));
}

// ----- the DB-derived backoff and the hard limit, with the real workers and exec provisioner -----

fn script(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_string_lossy().into_owned()
}

fn exec_template(name: &str, command: Vec<String>, instances: u32) -> TemplateSpec {
    let mut spec = template(name, vec![preset("p", Some(instances))]);
    spec.command = command;
    spec.timeout = Duration::from_secs(60);
    spec
}

/// Start builds always fail; instances 1, hard limit 3, backoff 1 min. Ticks every 10 s of the manual clock, each
/// followed by the workers running whatever was queued: exactly 3 attempts, the second at least 1 × and the third
/// at least 2 × the interval after the one before; then `hard_limited` and nothing more, while deleting the
/// failed prebuilds still works. With them gone the limit no longer holds (SPEC difference 9) and building resumes.
async fn failing_builds_back_off_then_hit_the_hard_limit<S: Backend>(db: Db<S>) {
    let interval = mins(1);
    let env = Env::new(db, planner(interval, TimeDelta::hours(1), 3));
    let dir = tempfile::tempdir().unwrap();
    let command = script(
        dir.path(),
        "fail-start.sh",
        r#"case "$WARMPOOL_TRANSITION" in start) echo "cannot build"; exit 1;; *) exit 0;; esac"#,
    );
    env.apply(&exec_template("flaky", vec!["/bin/sh".into(), command], 1))
        .await;
    let id = env.preset("flaky", "p").await.id;
    let workers = env.workers(dir.path().join("data"));

    let run_queued = async || {
        let mut n = 0;
        while let Some(job) = env.acquire().await {
            workers.run_job(job).await;
            n += 1;
        }
        n
    };
    let start_builds = async || {
        let mut builds = Vec::new();
        for w in env.workspaces_of("flaky", &id).await {
            builds.extend(
                env.builds(&w.id)
                    .await
                    .into_iter()
                    .filter(|b| b.transition == Transition::Start),
            );
        }
        builds.sort_by_key(|b| b.created_at);
        builds
    };

    // 30 minutes of 10-second steps.
    for _ in 0..180 {
        env.tick_ok().await;
        run_queued().await;
        env.advance(secs(10));
    }
    let builds = start_builds().await;
    assert_eq!(builds.len(), 3, "exactly 3 attempts");
    assert!(builds.iter().all(|b| b.status == JobStatus::Failed));
    assert!(builds[1].created_at - builds[0].created_at >= interval);
    assert!(builds[2].created_at - builds[1].created_at >= interval * 2);
    assert_eq!(env.status_of("flaky", &id).await, PresetStatus::HardLimited);
    assert_eq!(
        env.store
            .counters()
            .await
            .unwrap()
            .iter()
            .find(|c| c.name == CounterName::PrebuildsFailed)
            .map(|c| c.value),
        Some(3)
    );

    // Deleting the failed prebuilds works while the preset is hard-limited.
    for w in env.workspaces_of("flaky", &id).await {
        env.store
            .enqueue_build(&w.id, Transition::Delete, env.now())
            .await
            .unwrap();
    }
    assert_eq!(run_queued().await, 3);
    for w in env.workspaces_of("flaky", &id).await {
        assert!(w.deleted_at.is_some(), "{w:?}");
        assert_eq!(env.builds(&w.id).await[0].status, JobStatus::Succeeded);
    }
    env.tick_ok().await;
    assert_eq!(env.status_of("flaky", &id).await, PresetStatus::Healthy);
    assert_eq!(start_builds().await.len(), 4);
}

// ----- workers: lost leases and delete retries -----

/// A build whose worker is lost (its lease expires) runs again on its own workspace, never on a new one; after 3
/// lost runs the build fails like any other.
async fn lost_builds_run_again_on_their_own_workspace<S: Backend>(db: Db<S>) {
    let env = Env::new(db, default_planner());
    let dir = tempfile::tempdir().unwrap();
    let command = script(dir.path(), "ok.sh", "exit 0");
    env.apply(&exec_template(
        "lost",
        vec!["/bin/sh".into(), command.clone()],
        1,
    ))
    .await;
    let workers = env.workers(dir.path().join("data"));
    env.tick_ok().await;
    let workspace = env.workspaces("lost").await[0].id.clone();

    // The first worker takes the job and is never heard of again.
    let lost = env.acquire_for(&workspace).await;
    env.advance(LEASE + secs(1));
    assert_eq!(workers.sweep_expired().await, 1);
    env.tick_ok().await;
    assert_eq!(env.workspaces("lost").await.len(), 1, "no second workspace");
    // Its result, should it come back, is refused.
    let stale = env
        .store
        .complete_job(
            &lost.build.id,
            &lost.lease.token,
            &succeeded(),
            "",
            env.now(),
        )
        .await;
    assert!(matches!(stale, Err(StoreError::StaleLease(_))), "{stale:?}");
    // The next worker runs it on the same workspace.
    let again = env.acquire_for(&workspace).await;
    assert_eq!(again.build.id, lost.build.id);
    assert_eq!(again.build.attempts, 2);
    workers.run_job(again).await;
    let builds = env.builds(&workspace).await;
    assert_eq!(
        shape(&builds),
        vec![(Transition::Start, JobStatus::Succeeded)]
    );
    env.tick_ok().await;
    assert_eq!(env.workspaces("lost").await.len(), 1);

    // Three lost runs: the build fails, and counts as a failed prebuild.
    env.apply(&exec_template("lost3", vec!["/bin/sh".into(), command], 1))
        .await;
    env.tick_ok().await;
    let workspace = env.workspaces("lost3").await[0].id.clone();
    for run in 1..=3 {
        let job = env.acquire_for(&workspace).await;
        assert_eq!(job.build.attempts, run);
        env.advance(LEASE + secs(1));
        let requeued = workers.sweep_expired().await;
        assert_eq!(requeued, if run < 3 { 1 } else { 0 });
        if run < 3 {
            env.tick_ok().await;
            assert_eq!(
                env.workspaces("lost3").await.len(),
                1,
                "no second workspace"
            );
        }
    }
    let builds = env.builds(&workspace).await;
    assert_eq!(shape(&builds), vec![(Transition::Start, JobStatus::Failed)]);
    assert!(builds[0].error.as_deref().unwrap_or("").contains("lost"));
    let failed_lost3 = env
        .store
        .counters()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.name == CounterName::PrebuildsFailed && c.template == "lost3")
        .map(|c| c.value);
    assert_eq!(failed_lost3, Some(1));
}

/// A failed delete is put back in the queue for `delete_retry` later, runs again then, and the prebuild goes.
async fn failed_delete_is_retried_later<S: Backend>(db: Db<S>) {
    let env = Env::new(db, default_planner());
    let dir = tempfile::tempdir().unwrap();
    let command = script(
        dir.path(),
        "flaky-delete.sh",
        r#"if [ "$WARMPOOL_TRANSITION" = delete ] && [ ! -e tried ]; then touch tried; echo "not yet"; exit 1; fi"#,
    );
    let mut spec = exec_template("del-retry", vec!["/bin/sh".into(), command], 1);
    env.apply(&spec).await;
    let workers = env.workers(dir.path().join("data"));
    env.tick_ok().await;
    let job = env.acquire().await.unwrap();
    let workspace = job.build.workspace_id.clone();
    workers.run_job(job).await;
    assert!(env.workspace(&workspace).await.ready());

    // The pool shrinks to 0 in place: the prebuild is extraneous.
    spec.presets[0].pool.instances = Some(0);
    env.apply(&spec).await;
    env.tick_ok().await;
    let job = env.acquire_for(&workspace).await;
    assert_eq!(job.build.transition, Transition::Delete);
    workers.run_job(job).await;
    let delete = env.builds(&workspace).await.remove(0);
    assert_eq!(delete.status, JobStatus::Pending);
    assert_eq!(delete.not_before, Some(env.now() + secs(30)));
    assert!(delete.error.as_deref().unwrap_or("").contains("exit"));
    assert_eq!(env.store.job_counts().await.unwrap().failing_deletes, 1);

    env.advance(secs(29));
    assert!(env.acquire().await.is_none(), "not before its retry time");
    env.advance(secs(1));
    let job = env.acquire_for(&workspace).await;
    assert_eq!(job.build.attempts, 2);
    workers.run_job(job).await;
    let w = env.workspace(&workspace).await;
    assert!(w.deleted_at.is_some());
    assert!(
        !dir.path()
            .join("data/workspaces")
            .join(workspace.as_str())
            .exists()
    );
}

// ----- TestRunLoop (SPEC difference 5: a tick at start-up, then every interval, and on triggers) -----

fn run_config(interval: StdDuration) -> ReconcilerConfig {
    ReconcilerConfig {
        interval: Duration::from_millis(interval.as_millis() as u64),
        planner: default_planner(),
        preset_concurrency: 5,
    }
}

/// Waits (a liveness guard, not a timing assertion) until `done` holds.
async fn eventually(what: &str, guard: StdDuration, mut done: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !done().await {
        assert!(start.elapsed() < guard, "timed out waiting for {what}");
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    }
}

/// Interval 1 s, presets 4 (4 starting) and 10: the start-up tick creates exactly the 10; a template applied later
/// (without a trigger) is filled by an interval tick; ticks start at least an interval apart.
async fn run_loop_ticks_at_start_up_and_every_interval<S: Backend>(db: Db<S>) {
    let env = Env::new(db, default_planner());
    let store = Arc::clone(&env.store);
    env.apply(&template(
        "loop",
        vec![preset("p1", Some(4)), preset("p2", Some(10))],
    ))
    .await;
    let p1 = env.preset("loop", "p1").await.id;
    let p2 = env.preset("loop", "p2").await.id;
    for _ in 0..4 {
        let created = store.create_prebuild(&p1, env.now()).await.unwrap();
        env.acquire_for(&created.workspace.id).await;
    }
    let reconciler = Arc::new(Reconciler::new(
        Arc::clone(&store),
        Arc::new(SystemClock) as Arc<dyn Clock>,
        run_config(StdDuration::from_secs(1)),
        "loop-replica".into(),
        JobNotify::default(),
    ));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(Arc::clone(&reconciler).run(shutdown.clone()));

    eventually(
        "the start-up tick",
        StdDuration::from_secs(10),
        async || !reconciler.history().is_empty(),
    )
    .await;
    let first = reconciler.history().pop().unwrap();
    assert_eq!(first.actions.get("create"), Some(&10), "{first:?}");
    assert_eq!(env.workspaces_of("loop", &p1).await.len(), 4);
    assert_eq!(env.workspaces_of("loop", &p2).await.len(), 10);

    store
        .apply_template(
            &template("loop-2", vec![preset("p3", Some(5))]),
            AppliedBy::Api,
            SystemClock.now(),
        )
        .await
        .unwrap();
    eventually(
        "an interval tick to fill the new preset",
        StdDuration::from_secs(15),
        async || env.workspaces("loop-2").await.len() == 5,
    )
    .await;
    assert_eq!(env.workspaces_of("loop", &p2).await.len(), 10);
    shutdown.cancel();
    tokio::time::timeout(StdDuration::from_secs(10), task)
        .await
        .expect("the loop stops on shutdown")
        .unwrap();

    // Oldest first: every tick started at least an interval (less a little clock slack) after the one before.
    let mut history = reconciler.history();
    history.reverse();
    assert!(history.len() >= 2, "{history:?}");
    for pair in history.windows(2) {
        let gap = pair[1].started_at - pair[0].started_at;
        assert!(gap >= TimeDelta::milliseconds(900), "{gap:?}");
    }
}

/// Interval 1 h, so that every tick after the start-up one comes from a trigger: none without one; a burst of
/// triggers gives one tick promptly (within a second by SPEC; the guard here is generous), not several.
async fn trigger_ticks_promptly_and_folds_a_burst<S: Backend>(db: Db<S>) {
    let env = Env::new(db, default_planner());
    let store = Arc::clone(&env.store);
    let reconciler = Arc::new(Reconciler::new(
        Arc::clone(&store),
        Arc::new(SystemClock) as Arc<dyn Clock>,
        run_config(StdDuration::from_secs(3600)),
        "trigger-replica".into(),
        JobNotify::default(),
    ));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(Arc::clone(&reconciler).run(shutdown.clone()));
    eventually(
        "the start-up tick",
        StdDuration::from_secs(10),
        async || !reconciler.history().is_empty(),
    )
    .await;
    tokio::time::sleep(StdDuration::from_millis(1200)).await;
    assert_eq!(reconciler.history().len(), 1, "no tick without a trigger");

    store
        .apply_template(
            &template("burst", vec![preset("p", Some(3))]),
            AppliedBy::Api,
            SystemClock.now(),
        )
        .await
        .unwrap();
    let trigger = reconciler.trigger();
    for _ in 0..5 {
        trigger.fire();
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
    eventually(
        "the triggered tick",
        StdDuration::from_secs(5),
        async || reconciler.history().len() >= 2,
    )
    .await;
    assert_eq!(env.workspaces("burst").await.len(), 3);
    // The burst was folded into that one tick: no second one follows it.
    tokio::time::sleep(StdDuration::from_millis(700)).await;
    assert_eq!(reconciler.history().len(), 2, "{:?}", reconciler.history());
    shutdown.cancel();
    tokio::time::timeout(StdDuration::from_secs(10), task)
        .await
        .expect("the loop stops on shutdown")
        .unwrap();
}
