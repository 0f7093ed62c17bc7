//! The store conformance suite: every test is written once, generic over [`Store`], and run on SQLite and on a
//! real PostgreSQL (a throw-away cluster; see `warmpool_store::testing::pg`).

// Tests: a failed expectation is a panic with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use warmpool_core::duration::Duration;
use warmpool_core::ids::{PresetId, WorkspaceId};
use warmpool_core::model::{
    CreationFailures, JobStatus, LatestBuild, PlannerConfig, PresetSnapshot, PresetStatus,
    Settings, Snapshot, Transition, WorkspaceSnapshot,
};
use warmpool_core::schedule::{Cron, Schedule, Scheduling, parse_timezone};
use warmpool_core::template::{ParameterSpec, PoolSpec, PresetSpec, ProvisionerKind, TemplateSpec};
use warmpool_store::*;

// ----- helpers -----

fn t(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_748_822_400 + secs, 0).unwrap() // 2025-06-02T00:00:00Z
}

fn berlin() -> Scheduling {
    Scheduling::new(
        parse_timezone("Europe/Berlin").unwrap(),
        vec![Schedule {
            cron_text: "* 8-18 * * 1-5".into(),
            cron: Cron::parse("* 8-18 * * 1-5").unwrap(),
            instances: 5,
        }],
    )
    .unwrap()
}

fn pool(instances: Option<u32>) -> PoolSpec {
    PoolSpec {
        instances,
        ttl: None,
        scheduling: None,
    }
}

fn preset(name: &str, pool: PoolSpec) -> PresetSpec {
    PresetSpec {
        name: name.into(),
        parameters: BTreeMap::from([("cpu".to_owned(), "2".to_owned())]),
        pool,
    }
}

fn template(name: &str, command: &str, presets: Vec<PresetSpec>) -> TemplateSpec {
    TemplateSpec {
        name: name.into(),
        provisioner: ProvisionerKind::Exec,
        command: vec![command.into()],
        timeout: Duration::from_secs(1800),
        revision: None,
        max_workspaces: None,
        claim_build: false,
        parameters: vec![
            ParameterSpec {
                name: "cpu".into(),
                required: true,
                default: None,
                sensitive: false,
            },
            ParameterSpec {
                name: "image".into(),
                required: false,
                default: Some("debian:12".into()),
                sensitive: false,
            },
            ParameterSpec {
                name: "token".into(),
                required: false,
                default: Some("s3cret".into()),
                sensitive: true,
            },
        ],
        presets,
    }
}

async fn active_preset_id<S: Store>(store: &S, template: &str, preset: &str) -> PresetId {
    store
        .active_preset(template, preset)
        .await
        .unwrap()
        .unwrap()
        .id
}

const LEASE: TimeDelta = TimeDelta::seconds(30);

/// Takes the next job and finishes it; answers it.
async fn run_next<S: Store>(store: &S, at: DateTime<Utc>, outcome: JobOutcome) -> AcquiredJob {
    let job = store
        .acquire_job("worker-1", LEASE, at)
        .await
        .unwrap()
        .expect("a job");
    store
        .complete_job(
            &job.build.id,
            &job.lease.token,
            &outcome,
            "log",
            at + TimeDelta::seconds(1),
        )
        .await
        .unwrap();
    job
}

fn ok() -> JobOutcome {
    JobOutcome::Succeeded { outputs: None }
}

/// A ready prebuild of `preset`, created at `at`.
async fn ready_prebuild<S: Store>(store: &S, preset: &PresetId, at: DateTime<Utc>) -> WorkspaceId {
    let created = store.create_prebuild(preset, at).await.unwrap();
    let job = run_next(store, at, ok()).await;
    assert_eq!(job.build.workspace_id, created.workspace.id);
    created.workspace.id
}

fn claim_request(template: &str, preset: &str, owner: &str, name: &str) -> ClaimRequest {
    ClaimRequest {
        template: template.into(),
        preset: preset.into(),
        owner: owner.into(),
        name: name.into(),
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (store, _dir) = warmpool_store::testing::sqlite_store().await.unwrap();
                    super::$name(store).await;
                }
            )*
        }
        mod pg {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(store) = warmpool_store::testing::pg::test_store(16).await.unwrap() else {
                        return;
                    };
                    super::$name(store).await;
                }
            )*
        }
    };
}

conformance!(
    template_apply_is_idempotent_and_versioned,
    snapshot_of_a_seeded_database,
    settings_and_preset_writes_round_trip,
    prebuild_lifecycle_round_trips,
    quota_refuses_creation,
    delete_after_claim_is_refused,
    cancel_pending_touches_only_what_coder_touches,
    fenced_completion_rejects_a_stale_token,
    expired_leases_are_found_and_requeued,
    queue_order_is_user_then_prebuild_delete_stop_start,
    claim_never_returns_a_bad_prebuild,
    claim_build_and_cold_claim,
    idempotency_keys,
    events_counters_ticks_and_pruning,
    reconciliation_lock_excludes_a_second_holder,
    concurrent_claims_hand_out_each_prebuild_once,
);

// ----- tests -----

async fn template_apply_is_idempotent_and_versioned<S: Store>(store: S) {
    let mut spec = template(
        "devbox",
        "./devbox.sh",
        vec![
            preset("small", pool(Some(2))),
            PresetSpec {
                name: "bare".into(),
                parameters: BTreeMap::new(),
                pool: pool(Some(1)),
            },
        ],
    );
    let first = store
        .apply_template(&spec, AppliedBy::Config, t(0))
        .await
        .unwrap();
    assert_eq!(first.outcome, ApplyOutcome::Created);
    assert!(first.settings_changed);
    assert_eq!(first.template.active_version.as_deref(), Some("v1"));
    let v1 = first.template.active().unwrap().clone();
    assert_eq!(v1.definition, spec.build_definition());
    assert_eq!(v1.parameters, spec.parameters);
    let small = v1.presets.iter().find(|p| p.name == "small").unwrap();
    assert_eq!(small.parameters, spec.presets[0].parameters);
    assert_eq!(small.status, PresetStatus::Healthy);
    // A required parameter without a value: the preset can never build.
    let bare = v1.presets.iter().find(|p| p.name == "bare").unwrap();
    assert_eq!(bare.status, PresetStatus::ValidationFailed);

    // The same again: nothing changes.
    let again = store
        .apply_template(&spec, AppliedBy::Config, t(10))
        .await
        .unwrap();
    assert_eq!(again.outcome, ApplyOutcome::Unchanged);
    assert!(!again.settings_changed);
    assert_eq!(again.template.versions.len(), 1);

    // Pool settings, quota and claim_build change in place.
    spec.presets[0].pool = PoolSpec {
        instances: Some(4),
        ttl: Some(Duration::from_secs(3600)),
        scheduling: Some(berlin()),
    };
    spec.max_workspaces = Some(10);
    spec.claim_build = true;
    let in_place = store
        .apply_template(&spec, AppliedBy::Api, t(20))
        .await
        .unwrap();
    assert_eq!(in_place.outcome, ApplyOutcome::Unchanged);
    assert!(in_place.settings_changed);
    assert_eq!(in_place.template.versions.len(), 1);
    assert_eq!(in_place.template.max_workspaces, Some(10));
    assert!(in_place.template.claim_build);
    assert_eq!(in_place.template.applied_by, AppliedBy::Api);
    let small_now = in_place
        .template
        .active()
        .unwrap()
        .presets
        .iter()
        .find(|p| p.name == "small")
        .unwrap()
        .clone();
    assert_eq!(small_now.id, small.id);
    assert_eq!(small_now.pool, spec.presets[0].pool);

    // A change to what is built: a new version, activated.
    spec.command = vec!["./devbox-2.sh".into()];
    let v2 = store
        .apply_template(&spec, AppliedBy::Api, t(30))
        .await
        .unwrap();
    assert_eq!(v2.outcome, ApplyOutcome::NewVersion);
    assert_eq!(v2.template.active_version.as_deref(), Some("v2"));
    assert_eq!(v2.template.versions.len(), 2);
    assert!(!v2.template.versions[0].active);
    let new_small = v2
        .template
        .active()
        .unwrap()
        .presets
        .iter()
        .find(|p| p.name == "small")
        .unwrap();
    assert_ne!(new_small.id, small.id);
    assert_eq!(new_small.pool, spec.presets[0].pool);

    // Preset parameter values are part of the build definition.
    spec.presets[0].parameters.insert("cpu".into(), "4".into());
    let v3 = store
        .apply_template(&spec, AppliedBy::Api, t(40))
        .await
        .unwrap();
    assert_eq!(v3.outcome, ApplyOutcome::NewVersion);
    assert_eq!(v3.template.active_version.as_deref(), Some("v3"));

    // Deleting, then applying again, revives the template.
    store.delete_template("devbox", t(50)).await.unwrap();
    let deleted = store.get_template("devbox").await.unwrap().unwrap();
    assert_eq!(deleted.deleted_at, Some(t(50)));
    assert!(
        store
            .active_preset("devbox", "small")
            .await
            .unwrap()
            .is_none()
    );
    let revived = store
        .apply_template(&spec, AppliedBy::Api, t(60))
        .await
        .unwrap();
    assert_eq!(revived.outcome, ApplyOutcome::Unchanged);
    assert!(revived.settings_changed);
    assert_eq!(revived.template.deleted_at, None);
    assert!(matches!(
        store.delete_template("nope", t(70)).await,
        Err(StoreError::NotFound { .. })
    ));
    let all = store.list_templates().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].versions.len(), 3);
}

async fn snapshot_of_a_seeded_database<S: Store>(store: S) {
    let mut alpha = template(
        "alpha",
        "./a1",
        vec![
            preset(
                "small",
                PoolSpec {
                    instances: Some(2),
                    ttl: Some(Duration::from_secs(3 * 3600)),
                    scheduling: Some(berlin()),
                },
            ),
            preset("nopool", pool(None)),
        ],
    );
    store
        .apply_template(&alpha, AppliedBy::Config, t(0))
        .await
        .unwrap();
    let beta = template("beta", "./b", vec![preset("big", pool(Some(1)))]);
    store
        .apply_template(&beta, AppliedBy::Config, t(0))
        .await
        .unwrap();
    let gamma = template(
        "gamma",
        "./g",
        vec![preset(
            "solo",
            PoolSpec {
                instances: None,
                ttl: None,
                scheduling: Some(berlin()),
            },
        )],
    );
    store
        .apply_template(&gamma, AppliedBy::Config, t(0))
        .await
        .unwrap();
    let v1_small = active_preset_id(&store, "alpha", "small").await;
    let beta_big = active_preset_id(&store, "beta", "big").await;
    let gamma_solo = active_preset_id(&store, "gamma", "solo").await;

    let w1 = ready_prebuild(&store, &v1_small, t(10)).await;
    let w2 = store
        .create_prebuild(&v1_small, t(30))
        .await
        .unwrap()
        .workspace
        .id;
    run_next(
        &store,
        t(31),
        JobOutcome::Failed {
            error: "boom".into(),
        },
    )
    .await;

    alpha.command = vec!["./a2".into()];
    alpha.presets[0].pool = pool(Some(1));
    store
        .apply_template(&alpha, AppliedBy::Config, t(100))
        .await
        .unwrap();
    let v2_small = active_preset_id(&store, "alpha", "small").await;
    assert_ne!(v1_small, v2_small);

    let w5 = ready_prebuild(&store, &v2_small, t(300)).await;
    let claimed = store
        .claim(&claim_request("alpha", "small", "alice", "alice-1"), t(400))
        .await
        .unwrap();
    assert!(matches!(&claimed, ClaimOutcome::Claimed { workspace, .. } if workspace.id == w5));
    let w7 = ready_prebuild(&store, &v2_small, t(1000)).await;
    store.delete_prebuild(&w7, t(1100)).await.unwrap();
    run_next(&store, t(1101), ok()).await;
    let w6 = ready_prebuild(&store, &beta_big, t(1200)).await;
    let w4 = store
        .create_prebuild(&v2_small, t(1400))
        .await
        .unwrap()
        .workspace
        .id;
    let job = store
        .acquire_job("worker-1", LEASE, t(1401))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.build.workspace_id, w4);
    let w8 = store
        .create_prebuild(&beta_big, t(1500))
        .await
        .unwrap()
        .workspace
        .id;
    store.delete_template("beta", t(1600)).await.unwrap();

    store
        .set_reconciliation_paused(true, t(1700))
        .await
        .unwrap();
    store
        .set_preset_paused("alpha", "small", true, t(1700))
        .await
        .unwrap();
    store
        .set_preset_status(&v2_small, PresetStatus::HardLimited, t(1700))
        .await
        .unwrap();
    store
        .record_creation_failure(&v2_small, t(1750))
        .await
        .unwrap();
    store
        .record_creation_failure(&v2_small, t(1800))
        .await
        .unwrap();
    assert_eq!(
        store
            .invalidate_preset("alpha", "small", t(1900))
            .await
            .unwrap(),
        0
    );

    let config = PlannerConfig::default();
    let snapshot = store.snapshot(t(2000), config).await.unwrap();

    let preset_snapshot =
        |id: &PresetId, template: &str, version: &str, name: &str, active: bool| PresetSnapshot {
            id: id.clone(),
            template: template.into(),
            template_version: Some(version.into()),
            preset: name.into(),
            active,
            instances: None,
            ttl: None,
            invalidated_at: None,
            scheduling: None,
            status: PresetStatus::Healthy,
            paused: false,
            creation_failures: None,
        };
    let presets = vec![
        PresetSnapshot {
            instances: Some(2),
            ttl: Some(Duration::from_secs(3 * 3600)),
            scheduling: Some(berlin()),
            paused: true,
            ..preset_snapshot(&v1_small, "alpha", "v1", "small", false)
        },
        PresetSnapshot {
            instances: Some(1),
            invalidated_at: Some(t(1900)),
            status: PresetStatus::HardLimited,
            paused: true,
            creation_failures: Some(CreationFailures {
                consecutive: 2,
                last_failure_at: Some(t(1800)),
            }),
            ..preset_snapshot(&v2_small, "alpha", "v2", "small", true)
        },
        PresetSnapshot {
            instances: Some(1),
            ..preset_snapshot(&beta_big, "beta", "v1", "big", false)
        },
        PresetSnapshot {
            scheduling: Some(berlin()),
            ..preset_snapshot(&gamma_solo, "gamma", "v1", "solo", true)
        },
    ];
    let ws = |id: &WorkspaceId,
              preset: &PresetId,
              created: i64,
              status: JobStatus,
              active: bool,
              picked: bool| {
        WorkspaceSnapshot {
            id: id.clone(),
            owner: "prebuilds".into(),
            preset: preset.clone(),
            created_at: t(created),
            ready: status == JobStatus::Succeeded,
            latest_build: LatestBuild {
                number: 1,
                transition: Transition::Start,
                status,
                created_at: t(created),
                active_version: active,
                picked_up: picked,
            },
        }
    };
    let mut workspaces = vec![
        ws(&w1, &v1_small, 10, JobStatus::Succeeded, false, true),
        ws(&w2, &v1_small, 30, JobStatus::Failed, false, true),
        ws(&w6, &beta_big, 1200, JobStatus::Succeeded, false, true),
        ws(&w4, &v2_small, 1400, JobStatus::Running, true, true),
        ws(&w8, &beta_big, 1500, JobStatus::Pending, false, false),
    ];
    workspaces.sort_by(|a, b| a.id.cmp(&b.id));
    let expected = Snapshot {
        now: t(2000),
        config,
        settings: Settings {
            reconciliation_paused: true,
        },
        presets,
        workspaces,
    };
    assert_eq!(snapshot, expected);

    // The lock's snapshot is the same.
    let mut lock = store.try_lock_reconciliation().await.unwrap().unwrap();
    assert_eq!(lock.snapshot(t(2000), config).await.unwrap(), expected);
    lock.release().await.unwrap();

    // And the planner accepts it.
    let plan = warmpool_core::plan(&expected);
    assert_eq!(plan.presets.len(), 4);
}

async fn settings_and_preset_writes_round_trip<S: Store>(store: S) {
    let spec = template("devbox", "./d", vec![preset("small", pool(Some(3)))]);
    store
        .apply_template(&spec, AppliedBy::Config, t(0))
        .await
        .unwrap();
    let id = active_preset_id(&store, "devbox", "small").await;

    assert_eq!(store.settings().await.unwrap(), Settings::default());
    store.set_reconciliation_paused(true, t(1)).await.unwrap();
    assert!(store.settings().await.unwrap().reconciliation_paused);
    store.set_reconciliation_paused(false, t(2)).await.unwrap();
    assert!(!store.settings().await.unwrap().reconciliation_paused);

    store
        .set_preset_paused("devbox", "small", true, t(3))
        .await
        .unwrap();
    assert!(
        store
            .active_preset("devbox", "small")
            .await
            .unwrap()
            .unwrap()
            .paused
    );
    assert!(matches!(
        store.set_preset_paused("devbox", "nope", true, t(3)).await,
        Err(StoreError::NotFound { .. })
    ));

    store
        .set_preset_status(&id, PresetStatus::ValidationFailed, t(4))
        .await
        .unwrap();
    assert_eq!(
        store
            .active_preset("devbox", "small")
            .await
            .unwrap()
            .unwrap()
            .status,
        PresetStatus::ValidationFailed
    );
    assert!(matches!(
        store
            .set_preset_status(&PresetId::new("missing"), PresetStatus::Healthy, t(4))
            .await,
        Err(StoreError::NotFound { .. })
    ));

    store.record_creation_failure(&id, t(5)).await.unwrap();
    store.record_creation_failure(&id, t(6)).await.unwrap();
    let failures = store
        .active_preset("devbox", "small")
        .await
        .unwrap()
        .unwrap()
        .creation_failures;
    assert_eq!(
        failures,
        CreationFailures {
            consecutive: 2,
            last_failure_at: Some(t(6))
        }
    );
    store.record_creation_success(&id, t(7)).await.unwrap();
    let failures = store
        .active_preset("devbox", "small")
        .await
        .unwrap()
        .unwrap()
        .creation_failures;
    assert_eq!(
        failures,
        CreationFailures {
            consecutive: 0,
            last_failure_at: None
        }
    );
    // A successful creation clears the record in its own transaction.
    store.record_creation_failure(&id, t(8)).await.unwrap();
    store.create_prebuild(&id, t(9)).await.unwrap();
    let failures = store
        .active_preset("devbox", "small")
        .await
        .unwrap()
        .unwrap()
        .creation_failures;
    assert_eq!(failures.consecutive, 0);
    run_next(&store, t(10), ok()).await;

    // Invalidation counts the running prebuilds that it expires, and only those.
    ready_prebuild(&store, &id, t(20)).await;
    store.create_prebuild(&id, t(30)).await.unwrap(); // pending: not counted
    assert_eq!(
        store
            .invalidate_preset("devbox", "small", t(100))
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store
            .invalidate_preset("devbox", "small", t(200))
            .await
            .unwrap(),
        0
    );
    let info = store
        .active_preset("devbox", "small")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.invalidated_at, Some(t(200)));
    assert!(matches!(
        store.invalidate_preset("devbox", "nope", t(200)).await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn prebuild_lifecycle_round_trips<S: Store>(store: S) {
    let spec = template("devbox", "./d", vec![preset("small", pool(Some(3)))]);
    store
        .apply_template(&spec, AppliedBy::Config, t(0))
        .await
        .unwrap();
    let id = active_preset_id(&store, "devbox", "small").await;

    let created = store.create_prebuild(&id, t(10)).await.unwrap();
    assert_eq!(created.workspace.owner, "prebuilds");
    assert_eq!(created.workspace.template, "devbox");
    assert_eq!(created.workspace.template_version, "v1");
    assert_eq!(created.workspace.preset.as_deref(), Some("small"));
    assert_eq!(created.workspace.status(), WorkspaceStatus::Starting);
    assert_eq!(created.build.number, 1);
    assert_eq!(created.build.status, JobStatus::Pending);
    assert!(created.build.is_prebuild);
    assert_eq!(
        store
            .get_workspace(&created.workspace.id)
            .await
            .unwrap()
            .unwrap(),
        created.workspace
    );
    assert_eq!(
        store.get_build(&created.build.id).await.unwrap().unwrap(),
        created.build
    );

    let job = store
        .acquire_job("w1", LEASE, t(11))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.build.id, created.build.id);
    assert_eq!(job.build.status, JobStatus::Running);
    assert_eq!(job.build.attempts, 1);
    assert_eq!(job.owner, "prebuilds");
    assert_eq!(job.template_version, "v1");
    assert_eq!(job.definition, spec.build_definition());
    assert_eq!(
        job.parameters,
        vec![
            JobParameter {
                name: "cpu".into(),
                value: "2".into(),
                sensitive: false
            },
            JobParameter {
                name: "image".into(),
                value: "debian:12".into(),
                sensitive: false
            },
            JobParameter {
                name: "token".into(),
                value: "s3cret".into(),
                sensitive: true
            },
        ]
    );
    assert_eq!(job.lease.expires_at, t(41));
    let process = ProcessRecord {
        pgid: 4242,
        boot_id: "boot".into(),
        start_time: 99,
    };
    store
        .record_job_process(&job.build.id, &job.lease.token, &process)
        .await
        .unwrap();
    let outputs = serde_json::json!({"url": "http://x"});
    store
        .complete_job(
            &job.build.id,
            &job.lease.token,
            &JobOutcome::Succeeded {
                outputs: Some(outputs.clone()),
            },
            "hello\n",
            t(20),
        )
        .await
        .unwrap();
    let ws = store
        .get_workspace(&created.workspace.id)
        .await
        .unwrap()
        .unwrap();
    assert!(ws.ready());
    assert_eq!(ws.outputs, Some(outputs));
    assert!(ws.latest_build.picked_up);
    assert_eq!(
        store.build_log(&created.build.id).await.unwrap().as_deref(),
        Some("hello\n")
    );
    let build = store.get_build(&created.build.id).await.unwrap().unwrap();
    assert_eq!(build.status, JobStatus::Succeeded);
    assert_eq!(build.started_at, Some(t(11)));
    assert_eq!(build.completed_at, Some(t(20)));

    // User builds: stop, then a conflicting one while it is pending.
    let stop = store
        .enqueue_build(&ws.id, Transition::Stop, t(30))
        .await
        .unwrap();
    assert_eq!(stop.number, 2);
    assert_eq!(stop.transition, Transition::Stop);
    assert!(matches!(
        store.enqueue_build(&ws.id, Transition::Start, t(31)).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.delete_prebuild(&ws.id, t(31)).await,
        Err(StoreError::Conflict(_))
    ));
    run_next(&store, t(32), ok()).await;
    assert_eq!(
        store.get_workspace(&ws.id).await.unwrap().unwrap().status(),
        WorkspaceStatus::Stopped
    );

    // Delete: the workspace is gone once the delete succeeds.
    let delete = store.delete_prebuild(&ws.id, t(40)).await.unwrap();
    assert_eq!(delete.number, 3);
    assert_eq!(delete.transition, Transition::Delete);
    assert_eq!(
        store.get_workspace(&ws.id).await.unwrap().unwrap().status(),
        WorkspaceStatus::Deleting
    );
    run_next(&store, t(41), ok()).await;
    let gone = store.get_workspace(&ws.id).await.unwrap().unwrap();
    assert_eq!(gone.status(), WorkspaceStatus::Deleted);
    assert_eq!(gone.deleted_at, Some(t(42)));
    assert!(matches!(
        store.delete_prebuild(&ws.id, t(50)).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.enqueue_build(&ws.id, Transition::Start, t(50)).await,
        Err(StoreError::NotFound { .. })
    ));
    let builds = store.list_builds(&ws.id).await.unwrap();
    assert_eq!(
        builds.iter().map(|b| b.number).collect::<Vec<_>>(),
        vec![3, 2, 1]
    );
    assert!(
        store
            .list_workspaces(&WorkspaceFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
    let all = store
        .list_workspaces(&WorkspaceFilter {
            include_deleted: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 1);

    // A prebuild whose first build fails counts as failed.
    store.create_prebuild(&id, t(60)).await.unwrap();
    run_next(
        &store,
        t(61),
        JobOutcome::Failed {
            error: "exit 1".into(),
        },
    )
    .await;
    let failed = store
        .list_workspaces(&WorkspaceFilter {
            preset: Some("small".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].status(), WorkspaceStatus::Failed);
    let counters: BTreeMap<CounterName, u64> = store
        .counters()
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.name, c.value))
        .collect();
    assert_eq!(counters.get(&CounterName::PrebuildsCreated), Some(&2));
    assert_eq!(counters.get(&CounterName::PrebuildsFailed), Some(&1));

    // Unknown and inactive presets.
    assert!(matches!(
        store
            .create_prebuild(&PresetId::new("missing"), t(70))
            .await,
        Err(StoreError::NotFound { .. })
    ));
    let mut v2 = spec.clone();
    v2.command = vec!["./d2".into()];
    store
        .apply_template(&v2, AppliedBy::Config, t(80))
        .await
        .unwrap();
    assert!(matches!(
        store.create_prebuild(&id, t(90)).await,
        Err(StoreError::Inactive(_))
    ));
}

async fn quota_refuses_creation<S: Store>(store: S) {
    let mut spec = template("devbox", "./d", vec![preset("small", pool(Some(3)))]);
    spec.max_workspaces = Some(2);
    store
        .apply_template(&spec, AppliedBy::Config, t(0))
        .await
        .unwrap();
    let id = active_preset_id(&store, "devbox", "small").await;
    store.create_prebuild(&id, t(1)).await.unwrap();
    store
        .create_workspace(&claim_request("devbox", "small", "bob", "bob-1"), t(2))
        .await
        .unwrap();
    assert!(matches!(
        store.create_prebuild(&id, t(3)).await,
        Err(StoreError::QuotaExceeded { max: 2, .. })
    ));
    assert!(matches!(
        store
            .create_workspace(&claim_request("devbox", "small", "bob", "bob-2"), t(3))
            .await,
        Err(StoreError::QuotaExceeded { .. })
    ));
    // Nothing of the refused attempts was written.
    assert_eq!(
        store
            .list_workspaces(&WorkspaceFilter::default())
            .await
            .unwrap()
            .len(),
        2
    );
}

async fn delete_after_claim_is_refused<S: Store>(store: S) {
    let spec = template("devbox", "./d", vec![preset("small", pool(Some(1)))]);
    store
        .apply_template(&spec, AppliedBy::Config, t(0))
        .await
        .unwrap();
    let id = active_preset_id(&store, "devbox", "small").await;
    let ws = ready_prebuild(&store, &id, t(1)).await;
    // The reconciler's snapshot still lists it as a prebuild...
    let snapshot = store
        .snapshot(t(5), PlannerConfig::default())
        .await
        .unwrap();
    assert_eq!(snapshot.workspaces.len(), 1);
    // ...a claim takes it...
    let claimed = store
        .claim(&claim_request("devbox", "small", "alice", "mine"), t(6))
        .await
        .unwrap();
    assert!(matches!(claimed, ClaimOutcome::Claimed { .. }));
    // ...and the reconciler's delete is refused.
    assert!(
        matches!(store.delete_prebuild(&ws, t(7)).await, Err(StoreError::NotPrebuild(w)) if w == ws)
    );
    let after = store.get_workspace(&ws).await.unwrap().unwrap();
    assert_eq!(after.owner, "alice");
    assert_eq!(after.latest_build.number, 1);
}

async fn cancel_pending_touches_only_what_coder_touches<S: Store>(store: S) {
    let mut a = template("alpha", "./a1", vec![preset("small", pool(Some(10)))]);
    store
        .apply_template(&a, AppliedBy::Config, t(0))
        .await
        .unwrap();
    let b = template("beta", "./b1", vec![preset("small", pool(Some(10)))]);
    store
        .apply_template(&b, AppliedBy::Config, t(0))
        .await
        .unwrap();
    let a1 = active_preset_id(&store, "alpha", "small").await;
    let b1 = active_preset_id(&store, "beta", "small").await;

    // On alpha v1: two ready prebuilds (to queue a delete and a stop on later),
    let ready_a = ready_prebuild(&store, &a1, t(10)).await;
    let ready_c = ready_prebuild(&store, &a1, t(11)).await;
    // a running prebuild (picked up by a worker),
    let picked = store
        .create_prebuild(&a1, t(12))
        .await
        .unwrap()
        .workspace
        .id;
    let picked_job = store.acquire_job("w", LEASE, t(12)).await.unwrap().unwrap();
    assert_eq!(picked_job.build.workspace_id, picked);
    // a prebuild picked up, lost with its worker and requeued (pending again, but a worker had it),
    let requeued = store
        .create_prebuild(&a1, t(13))
        .await
        .unwrap()
        .workspace
        .id;
    let lost = store.acquire_job("w", LEASE, t(13)).await.unwrap().unwrap();
    assert_eq!(lost.build.workspace_id, requeued);
    assert_eq!(
        store.requeue_expired(&lost.build.id, t(44)).await.unwrap(),
        RequeueOutcome::Requeued
    );
    // a pending delete (a delete transition) and a pending stop (build #2),
    store.delete_prebuild(&ready_a, t(18)).await.unwrap();
    store
        .enqueue_build(&ready_c, Transition::Stop, t(20))
        .await
        .unwrap();
    // a user's workspace with a pending first build,
    let (user_ws, _) = store
        .create_workspace(&claim_request("alpha", "small", "carol", "c1"), t(21))
        .await
        .unwrap();
    // and two untouched pending first builds: the ones to cancel.
    let pending_1 = store
        .create_prebuild(&a1, t(22))
        .await
        .unwrap()
        .workspace
        .id;
    let pending_2 = store
        .create_prebuild(&a1, t(23))
        .await
        .unwrap()
        .workspace
        .id;
    // Beta v1 (another template) has a pending first build too.
    let beta_pending = store
        .create_prebuild(&b1, t(24))
        .await
        .unwrap()
        .workspace
        .id;

    // Nothing is cancelled while alpha v1 is the active version.
    assert!(
        store
            .cancel_pending_prebuilds(&a1, t(30))
            .await
            .unwrap()
            .is_empty()
    );

    a.command = vec!["./a2".into()];
    store
        .apply_template(&a, AppliedBy::Config, t(40))
        .await
        .unwrap();
    let a2 = active_preset_id(&store, "alpha", "small").await;
    let active_pending = store
        .create_prebuild(&a2, t(41))
        .await
        .unwrap()
        .workspace
        .id;

    let before: BTreeMap<WorkspaceId, WorkspaceRecord> = store
        .list_workspaces(&WorkspaceFilter {
            include_deleted: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|w| (w.id.clone(), w))
        .collect();

    let mut expected = vec![pending_1.clone(), pending_2.clone()];
    expected.sort();
    assert_eq!(
        store.cancel_pending_prebuilds(&a1, t(50)).await.unwrap(),
        expected
    );
    // Cancelling again finds nothing; the active version's preset and another template's are not touched.
    assert!(
        store
            .cancel_pending_prebuilds(&a1, t(51))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .cancel_pending_prebuilds(&a2, t(51))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .cancel_pending_prebuilds(&b1, t(51))
            .await
            .unwrap()
            .is_empty()
    );

    for id in &expected {
        let ws = store.get_workspace(id).await.unwrap().unwrap();
        assert_eq!(ws.deleted_at, Some(t(50)));
        assert_eq!(ws.latest_build.number, 2);
        assert_eq!(ws.latest_build.transition, Transition::Delete);
        assert_eq!(ws.latest_build.status, JobStatus::Succeeded);
        assert!(!ws.latest_build.picked_up);
        let builds = store.list_builds(id).await.unwrap();
        assert_eq!(builds[0].completed_at, Some(t(50)));
        assert_eq!(builds[1].status, JobStatus::Canceled);
        assert_eq!(builds[1].completed_at, Some(t(50)));
        assert_eq!(builds[1].attempts, 0);
    }
    let after = store
        .list_workspaces(&WorkspaceFilter {
            include_deleted: true,
            ..Default::default()
        })
        .await
        .unwrap();
    for ws in after {
        if expected.contains(&ws.id) {
            continue;
        }
        assert_eq!(Some(&ws), before.get(&ws.id), "{} was touched", ws.id);
    }
    for untouched in [
        &picked,
        &requeued,
        &ready_a,
        &ready_c,
        &user_ws.id,
        &beta_pending,
        &active_pending,
    ] {
        assert!(before.contains_key(untouched));
    }

    // A deleted template's pending first builds are cancelled too (its presets are inactive).
    store.delete_template("beta", t(60)).await.unwrap();
    assert_eq!(
        store.cancel_pending_prebuilds(&b1, t(61)).await.unwrap(),
        vec![beta_pending]
    );
}

async fn fenced_completion_rejects_a_stale_token<S: Store>(store: S) {
    let spec = template("devbox", "./d", vec![preset("small", pool(Some(1)))]);
    store
        .apply_template(&spec, AppliedBy::Config, t(0))
        .await
        .unwrap();
    let id = active_preset_id(&store, "devbox", "small").await;
    let created = store.create_prebuild(&id, t(1)).await.unwrap();
    let first = store.acquire_job("w1", LEASE, t(2)).await.unwrap().unwrap();

    // A wrong token changes nothing.
    let wrong = "00000000-0000-4000-8000-000000000000";
    assert!(matches!(
        store
            .complete_job(&first.build.id, wrong, &ok(), "", t(3))
            .await,
        Err(StoreError::StaleLease(_))
    ));
    assert!(matches!(
        store.renew_lease(&first.build.id, wrong, LEASE, t(3)).await,
        Err(StoreError::StaleLease(_))
    ));
    assert_eq!(
        store
            .get_build(&created.build.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        JobStatus::Running
    );

    // The lease is lost: the job runs again under a new token, and the old worker's result is refused.
    assert_eq!(
        store.requeue_expired(&first.build.id, t(33)).await.unwrap(),
        RequeueOutcome::Requeued
    );
    let second = store
        .acquire_job("w2", LEASE, t(34))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.build.id, first.build.id);
    assert_eq!(second.build.attempts, 2);
    assert_ne!(second.lease.token, first.lease.token);
    assert!(matches!(
        store
            .complete_job(
                &first.build.id,
                &first.lease.token,
                &JobOutcome::Failed {
                    error: "late".into()
                },
                "old",
                t(35)
            )
            .await,
        Err(StoreError::StaleLease(_))
    ));
    assert!(matches!(
        store
            .record_job_process(
                &first.build.id,
                &first.lease.token,
                &ProcessRecord {
                    pgid: 1,
                    boot_id: "b".into(),
                    start_time: 1
                }
            )
            .await,
        Err(StoreError::StaleLease(_))
    ));
    let renewed = store
        .renew_lease(&second.build.id, &second.lease.token, LEASE, t(40))
        .await
        .unwrap();
    assert_eq!(renewed, t(70));
    store
        .complete_job(&second.build.id, &second.lease.token, &ok(), "new", t(41))
        .await
        .unwrap();
    assert_eq!(
        store.build_log(&second.build.id).await.unwrap().as_deref(),
        Some("new")
    );
    // Finished: the token is spent.
    assert!(matches!(
        store
            .complete_job(&second.build.id, &second.lease.token, &ok(), "", t(42))
            .await,
        Err(StoreError::StaleLease(_))
    ));
    assert!(
        store
            .get_workspace(&created.workspace.id)
            .await
            .unwrap()
            .unwrap()
            .ready()
    );
}

async fn expired_leases_are_found_and_requeued<S: Store>(store: S) {
    let spec = template("devbox", "./d", vec![preset("small", pool(Some(2)))]);
    store
        .apply_template(&spec, AppliedBy::Config, t(0))
        .await
        .unwrap();
    let id = active_preset_id(&store, "devbox", "small").await;
    let created = store.create_prebuild(&id, t(1)).await.unwrap();

    for run in 1..=3u32 {
        let now = t(i64::from(run) * 100);
        let job = store.acquire_job("w1", LEASE, now).await.unwrap().unwrap();
        assert_eq!(job.build.attempts, run);
        let process = ProcessRecord {
            pgid: 7,
            boot_id: "boot-1".into(),
            start_time: 5,
        };
        store
            .record_job_process(&job.build.id, &job.lease.token, &process)
            .await
            .unwrap();
        // Not expired at its expiry instant...
        assert!(store.expired_leases(now + LEASE).await.unwrap().is_empty());
        assert_eq!(
            store
                .requeue_expired(&job.build.id, now + LEASE)
                .await
                .unwrap(),
            RequeueOutcome::NotExpired
        );
        // ...expired just after.
        let later = now + LEASE + TimeDelta::milliseconds(1);
        let expired = store.expired_leases(later).await.unwrap();
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].build_id, job.build.id);
        assert_eq!(expired[0].workspace_id, created.workspace.id);
        assert_eq!(expired[0].attempts, run);
        assert_eq!(expired[0].lease_owner.as_deref(), Some("w1"));
        assert_eq!(expired[0].lease_expires_at, now + LEASE);
        assert_eq!(expired[0].process.as_ref(), Some(&process));
        let outcome = store.requeue_expired(&job.build.id, later).await.unwrap();
        if run < 3 {
            assert_eq!(outcome, RequeueOutcome::Requeued);
            assert_eq!(
                store
                    .get_build(&job.build.id)
                    .await
                    .unwrap()
                    .unwrap()
                    .status,
                JobStatus::Pending
            );
        } else {
            // A start that lost its worker three times fails like any other failed build.
            assert_eq!(outcome, RequeueOutcome::Failed);
            let build = store.get_build(&job.build.id).await.unwrap().unwrap();
            assert_eq!(build.status, JobStatus::Failed);
            assert!(build.error.is_some());
            assert_eq!(
                store
                    .get_workspace(&created.workspace.id)
                    .await
                    .unwrap()
                    .unwrap()
                    .status(),
                WorkspaceStatus::Failed
            );
        }
    }
    assert!(
        store
            .acquire_job("w1", LEASE, t(1000))
            .await
            .unwrap()
            .is_none()
    );

    // A delete is requeued however often its worker is lost.
    let other = ready_prebuild(&store, &id, t(1100)).await;
    store.delete_prebuild(&other, t(1200)).await.unwrap();
    for run in 0..4 {
        let now = t(1300 + run * 100);
        let job = store.acquire_job("w1", LEASE, now).await.unwrap().unwrap();
        assert_eq!(job.build.transition, Transition::Delete);
        // The single-process start-up path: expire everything at once.
        assert_eq!(
            store
                .expire_all_leases(now + TimeDelta::seconds(1))
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            store
                .expired_leases(now + TimeDelta::seconds(1))
                .await
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            store
                .requeue_expired(&job.build.id, now + TimeDelta::seconds(1))
                .await
                .unwrap(),
            RequeueOutcome::Requeued
        );
    }
    // A failed delete retried later waits for its time.
    let job = store
        .acquire_job("w1", LEASE, t(2000))
        .await
        .unwrap()
        .unwrap();
    store
        .complete_job(
            &job.build.id,
            &job.lease.token,
            &JobOutcome::RetryAt {
                error: "busy".into(),
                at: t(2100),
            },
            "",
            t(2001),
        )
        .await
        .unwrap();
    assert_eq!(
        store.get_workspace(&other).await.unwrap().unwrap().status(),
        WorkspaceStatus::Deleting
    );
    assert_eq!(store.job_counts().await.unwrap().failing_deletes, 1);
    assert!(
        store
            .acquire_job("w1", LEASE, t(2099))
            .await
            .unwrap()
            .is_none()
    );
    let retry = store
        .acquire_job("w1", LEASE, t(2100))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(retry.build.id, job.build.id);
}

async fn queue_order_is_user_then_prebuild_delete_stop_start<S: Store>(store: S) {
    let spec = template("devbox", "./d", vec![preset("small", pool(Some(5)))]);
    store
        .apply_template(&spec, AppliedBy::Config, t(0))
        .await
        .unwrap();
    let id = active_preset_id(&store, "devbox", "small").await;
    // Ready workspaces to queue builds on.
    let p1 = ready_prebuild(&store, &id, t(1)).await;
    let p2 = ready_prebuild(&store, &id, t(2)).await;
    let (u1, _) = store
        .create_workspace(&claim_request("devbox", "small", "u", "u1"), t(3))
        .await
        .unwrap();
    run_next(&store, t(3), ok()).await;
    let (u2, _) = store
        .create_workspace(&claim_request("devbox", "small", "u", "u2"), t(4))
        .await
        .unwrap();
    run_next(&store, t(4), ok()).await;

    // Queued oldest first, in the reverse of the acquisition order.
    let prebuild_start = store.create_prebuild(&id, t(10)).await.unwrap().build.id;
    let prebuild_delete = store.delete_prebuild(&p1, t(11)).await.unwrap().id;
    let user_start_ws = store
        .create_workspace(&claim_request("devbox", "small", "u", "u3"), t(12))
        .await
        .unwrap();
    let user_start = user_start_ws.1.id;
    let user_stop = store
        .enqueue_build(&u1.id, Transition::Stop, t(13))
        .await
        .unwrap()
        .id;
    let user_delete = store
        .enqueue_build(&u2.id, Transition::Delete, t(14))
        .await
        .unwrap()
        .id;
    // A user build on a prebuild (an operator's stop) is a user job.
    let user_stop_on_prebuild = store
        .enqueue_build(&p2, Transition::Stop, t(15))
        .await
        .unwrap()
        .id;

    let mut order = Vec::new();
    while let Some(job) = store.acquire_job("w", LEASE, t(20)).await.unwrap() {
        order.push(job.build.id);
    }
    assert_eq!(
        order,
        vec![
            user_delete,
            user_stop,
            user_stop_on_prebuild,
            user_start,
            prebuild_delete,
            prebuild_start
        ]
    );
    let counts = store.job_counts().await.unwrap();
    assert_eq!(counts.by_status.get("running"), Some(&6));
    assert_eq!(counts.oldest_pending_at, None);
}

async fn claim_never_returns_a_bad_prebuild<S: Store>(store: S) {
    let mut spec = template(
        "devbox",
        "./d1",
        vec![preset(
            "small",
            PoolSpec {
                instances: Some(5),
                ttl: Some(Duration::from_secs(3600)),
                scheduling: None,
            },
        )],
    );
    store
        .apply_template(&spec, AppliedBy::Config, t(0))
        .await
        .unwrap();
    let v1 = active_preset_id(&store, "devbox", "small").await;
    // An inactive version's ready prebuild.
    let old = ready_prebuild(&store, &v1, t(10)).await;
    spec.command = vec!["./d2".into()];
    store
        .apply_template(&spec, AppliedBy::Config, t(20))
        .await
        .unwrap();
    let v2 = active_preset_id(&store, "devbox", "small").await;

    let now = t(10_000);
    // Expired by ttl (older than an hour at `now`).
    let too_old = ready_prebuild(&store, &v2, now - TimeDelta::seconds(3601)).await;
    // Expired by invalidation.
    let invalidated = ready_prebuild(&store, &v2, now - TimeDelta::seconds(1800)).await;
    store
        .invalidate_preset("devbox", "small", now - TimeDelta::seconds(1000))
        .await
        .unwrap();
    // Failed, and still starting.
    store
        .create_prebuild(&v2, now - TimeDelta::seconds(900))
        .await
        .unwrap();
    run_next(
        &store,
        now - TimeDelta::seconds(900),
        JobOutcome::Failed { error: "x".into() },
    )
    .await;
    let starting = store
        .create_prebuild(&v2, now - TimeDelta::seconds(800))
        .await
        .unwrap()
        .workspace
        .id;
    // Stopped.
    let stopped =
        ready_prebuild_with_pending(&store, &v2, now - TimeDelta::seconds(700), &starting).await;
    store
        .enqueue_build(&stopped, Transition::Stop, now - TimeDelta::seconds(600))
        .await
        .unwrap();
    // (the stop is a user job: it runs before any prebuild job)
    let stop = run_next(&store, now - TimeDelta::seconds(600), ok()).await;
    assert_eq!(stop.build.transition, Transition::Stop);

    let request = claim_request("devbox", "small", "alice", "a1");
    assert_eq!(
        store.claim(&request, now).await.unwrap(),
        ClaimOutcome::PoolEmpty
    );

    // Two good ones: the oldest is claimed, once.
    let good_old =
        ready_prebuild_with_pending(&store, &v2, now - TimeDelta::seconds(500), &starting).await;
    let good_new =
        ready_prebuild_with_pending(&store, &v2, now - TimeDelta::seconds(400), &starting).await;
    let ClaimOutcome::Claimed { workspace, build } = store.claim(&request, now).await.unwrap()
    else {
        panic!("expected a claim");
    };
    assert_eq!(workspace.id, good_old);
    assert_eq!(workspace.owner, "alice");
    assert_eq!(workspace.name, "a1");
    assert_eq!(workspace.claimed_at, Some(now));
    assert_eq!(workspace.template_version, "v2");
    assert!(workspace.ready());
    assert!(build.is_none());
    assert_eq!(
        store.get_workspace(&good_old).await.unwrap().unwrap(),
        workspace
    );
    // The name is now taken for alice, not for bob.
    assert!(matches!(
        store.claim(&request, now).await,
        Err(StoreError::NameTaken { .. })
    ));
    let bob = claim_request("devbox", "small", "bob", "a1");
    let ClaimOutcome::Claimed { workspace, .. } = store.claim(&bob, now).await.unwrap() else {
        panic!("expected a claim");
    };
    assert_eq!(workspace.id, good_new);
    // Already claimed prebuilds are not handed out again.
    assert_eq!(
        store
            .claim(&claim_request("devbox", "small", "carol", "c"), now)
            .await
            .unwrap(),
        ClaimOutcome::PoolEmpty
    );
    for bad in [&old, &too_old, &invalidated, &starting, &stopped] {
        assert_eq!(
            store.get_workspace(bad).await.unwrap().unwrap().owner,
            "prebuilds"
        );
    }
    // Unknown presets, the reserved owner, deleted templates.
    assert!(matches!(
        store
            .claim(&claim_request("devbox", "nope", "a", "b"), now)
            .await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store
            .claim(&claim_request("devbox", "small", "prebuilds", "b"), now)
            .await,
        Err(StoreError::Invalid(_))
    ));
    let spare =
        ready_prebuild_with_pending(&store, &v2, now - TimeDelta::seconds(100), &starting).await;
    store.delete_template("devbox", now).await.unwrap();
    assert!(matches!(
        store
            .claim(&claim_request("devbox", "small", "dave", "d"), now)
            .await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(
        store.get_workspace(&spare).await.unwrap().unwrap().owner,
        "prebuilds"
    );
    // Events: two misses and two claims, all at `now` (name-taken and not-found answers record nothing).
    let events = store.claim_events(t(0)).await.unwrap();
    let count = |kind| events.iter().filter(|e| e.kind == kind).count();
    assert_eq!(events.len(), 4);
    assert_eq!(count(ClaimEventKind::ClaimMissed), 2);
    assert_eq!(count(ClaimEventKind::ClaimSucceeded), 2);
    assert!(events.iter().all(|e| e.at == now && e.preset_id == v2));
}

/// A ready prebuild created while `pending` (an older, never-run job) sits in the queue: the pending job is
/// skipped by running the new one through a fresh acquisition after parking the old one with a retry time.
async fn ready_prebuild_with_pending<S: Store>(
    store: &S,
    preset: &PresetId,
    at: DateTime<Utc>,
    pending: &WorkspaceId,
) -> WorkspaceId {
    let created = store.create_prebuild(preset, at).await.unwrap();
    loop {
        let job = store
            .acquire_job("worker-1", LEASE, at)
            .await
            .unwrap()
            .expect("a job");
        if &job.build.workspace_id == pending {
            // Leave the pending one running under its lease: it stays "starting".
            continue;
        }
        assert_eq!(job.build.workspace_id, created.workspace.id);
        store
            .complete_job(&job.build.id, &job.lease.token, &ok(), "", at)
            .await
            .unwrap();
        return created.workspace.id;
    }
}

async fn claim_build_and_cold_claim<S: Store>(store: S) {
    let mut spec = template("devbox", "./d", vec![preset("small", pool(Some(1)))]);
    spec.claim_build = true;
    store
        .apply_template(&spec, AppliedBy::Config, t(0))
        .await
        .unwrap();
    let id = active_preset_id(&store, "devbox", "small").await;
    let ws = ready_prebuild(&store, &id, t(1)).await;
    let ClaimOutcome::Claimed { workspace, build } = store
        .claim(&claim_request("devbox", "small", "alice", "a1"), t(5))
        .await
        .unwrap()
    else {
        panic!("expected a claim");
    };
    assert_eq!(workspace.id, ws);
    let build = build.expect("a claim build");
    assert_eq!(build.number, 2);
    assert_eq!(build.transition, Transition::Start);
    assert!(build.is_claim);
    assert!(!build.is_prebuild);
    assert_eq!(build.initiator, "alice");
    assert_eq!(workspace.latest_build.id, build.id);
    assert_eq!(workspace.status(), WorkspaceStatus::Starting);
    let job = store.acquire_job("w", LEASE, t(6)).await.unwrap().unwrap();
    assert_eq!(job.build.id, build.id);
    assert_eq!(job.owner, "alice");
    assert_eq!(job.workspace_name, "a1");

    // Cold: a new workspace for the user, built with the preset's parameters.
    assert_eq!(
        store
            .claim(&claim_request("devbox", "small", "bob", "b1"), t(7))
            .await
            .unwrap(),
        ClaimOutcome::PoolEmpty
    );
    let (cold, first) = store
        .create_workspace(&claim_request("devbox", "small", "bob", "b1"), t(8))
        .await
        .unwrap();
    assert_eq!(cold.owner, "bob");
    assert_eq!(cold.name, "b1");
    assert_eq!(first.number, 1);
    assert!(!first.is_prebuild);
    assert!(matches!(
        store
            .create_workspace(&claim_request("devbox", "small", "bob", "b1"), t(9))
            .await,
        Err(StoreError::NameTaken { .. })
    ));
    assert!(matches!(
        store
            .create_workspace(&claim_request("devbox", "small", "prebuilds", "x"), t(9))
            .await,
        Err(StoreError::Invalid(_))
    ));
    let job = store.acquire_job("w", LEASE, t(10)).await.unwrap().unwrap();
    assert_eq!(job.build.id, first.id);
    assert_eq!(
        job.parameters[0],
        JobParameter {
            name: "cpu".into(),
            value: "2".into(),
            sensitive: false
        }
    );
    let mine = store
        .list_workspaces(&WorkspaceFilter {
            owner: Some("bob".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(mine.len(), 1);
    let by_template = store
        .list_workspaces(&WorkspaceFilter {
            template: Some("devbox".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_template.len(), 2);
}

async fn idempotency_keys<S: Store>(store: S) {
    let body = serde_json::json!({"template": "devbox", "preset": "small", "n": 1});
    let same_body_reordered: serde_json::Value =
        serde_json::from_str(r#"{"n":1,"preset":"small","template":"devbox"}"#).unwrap();
    assert_eq!(
        store
            .idempotency_begin("alice", "k1", &body, t(0))
            .await
            .unwrap(),
        IdempotencyBegin::Started
    );
    assert_eq!(
        store
            .idempotency_begin("alice", "k1", &body, t(1))
            .await
            .unwrap(),
        IdempotencyBegin::InFlight
    );
    let answer = serde_json::json!({"workspace": {"id": "w"}, "warm": true});
    store
        .idempotency_finish("alice", "k1", 201, &answer)
        .await
        .unwrap();
    assert_eq!(
        store
            .idempotency_begin("alice", "k1", &same_body_reordered, t(2))
            .await
            .unwrap(),
        IdempotencyBegin::Replay {
            status: 201,
            body: answer.clone()
        }
    );
    let other = serde_json::json!({"template": "devbox", "preset": "big"});
    assert_eq!(
        store
            .idempotency_begin("alice", "k1", &other, t(3))
            .await
            .unwrap(),
        IdempotencyBegin::Conflict
    );
    // Keys are per owner.
    assert_eq!(
        store
            .idempotency_begin("bob", "k1", &other, t(3))
            .await
            .unwrap(),
        IdempotencyBegin::Started
    );
    // A released key (an answer that is not kept) can be used again.
    store.idempotency_release("bob", "k1").await.unwrap();
    assert_eq!(
        store
            .idempotency_begin("bob", "k1", &body, t(4))
            .await
            .unwrap(),
        IdempotencyBegin::Started
    );
    // After 24 h the key is new again.
    let later = t(24 * 3600 + 1);
    assert_eq!(
        store
            .idempotency_begin("alice", "k1", &other, later)
            .await
            .unwrap(),
        IdempotencyBegin::Started
    );
    assert!(matches!(
        store
            .idempotency_finish("alice", "nope", 200, &answer)
            .await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn events_counters_ticks_and_pruning<S: Store>(store: S) {
    let spec = template("devbox", "./d", vec![preset("small", pool(Some(1)))]);
    store
        .apply_template(&spec, AppliedBy::Config, t(0))
        .await
        .unwrap();
    let id = active_preset_id(&store, "devbox", "small").await;
    for i in 0..20 {
        store
            .claim(
                &claim_request("devbox", "small", "alice", &format!("a{i}")),
                t(i),
            )
            .await
            .unwrap();
    }
    ready_prebuild(&store, &id, t(100)).await;
    store
        .claim(&claim_request("devbox", "small", "alice", "got"), t(200))
        .await
        .unwrap();
    let counters = store.counters().await.unwrap();
    let value = |name| counters.iter().find(|c| c.name == name).map(|c| c.value);
    assert_eq!(value(CounterName::ClaimsMissed), Some(20));
    assert_eq!(value(CounterName::PrebuildsClaimed), Some(1));
    assert_eq!(value(CounterName::PrebuildsCreated), Some(1));
    assert_eq!(value(CounterName::PrebuildsFailed), None);
    assert!(
        counters
            .iter()
            .all(|c| c.template == "devbox" && c.preset == "small")
    );
    let events = store.claim_events(t(10)).await.unwrap();
    assert_eq!(events.len(), 11);
    assert_eq!(events[0].at, t(10));
    assert_eq!(events.last().unwrap().kind, ClaimEventKind::ClaimSucceeded);
    assert_eq!(events[0].preset_id, id);

    // Events are kept 7 days; counters for ever.
    store.prune(t(7 * 24 * 3600 + 15)).await.unwrap();
    let events = store.claim_events(t(0)).await.unwrap();
    assert_eq!(events.len(), 5 + 1);
    assert_eq!(store.counters().await.unwrap(), counters);

    assert_eq!(store.last_tick().await.unwrap(), None);
    let tick = TickRecord {
        replica_id: "replica-a".into(),
        started_at: t(1),
        finished_at: t(2),
        summary: serde_json::json!({"actions": {"create": 2}}),
    };
    store.record_tick(&tick).await.unwrap();
    assert_eq!(store.last_tick().await.unwrap(), Some(tick));
    let next = TickRecord {
        replica_id: "replica-b".into(),
        started_at: t(3),
        finished_at: t(4),
        summary: serde_json::json!({}),
    };
    store.record_tick(&next).await.unwrap();
    assert_eq!(store.last_tick().await.unwrap(), Some(next));
    store.ping().await.unwrap();
}

async fn reconciliation_lock_excludes_a_second_holder<S: Store>(store: S) {
    let lock = store
        .try_lock_reconciliation()
        .await
        .unwrap()
        .expect("the lock is free");
    assert!(store.try_lock_reconciliation().await.unwrap().is_none());
    lock.release().await.unwrap();
    let again = store
        .try_lock_reconciliation()
        .await
        .unwrap()
        .expect("released");
    // Dropping the lock releases it as well.
    drop(again);
    let mut third = None;
    for _ in 0..50 {
        third = store.try_lock_reconciliation().await.unwrap();
        if third.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut third = third.expect("a dropped lock is released");
    // Writes go on while the lock is held, and the lock's snapshot sees them.
    store.set_reconciliation_paused(true, t(1)).await.unwrap();
    assert!(
        third
            .snapshot(t(2), PlannerConfig::default())
            .await
            .unwrap()
            .settings
            .reconciliation_paused
    );
    third.release().await.unwrap();
}

async fn concurrent_claims_hand_out_each_prebuild_once<S: Store>(store: S) {
    const PREBUILDS: usize = 1000;
    const CLAIMERS: usize = 64;
    let spec = template("devbox", "./d", vec![preset("small", pool(Some(1000)))]);
    store
        .apply_template(&spec, AppliedBy::Config, t(0))
        .await
        .unwrap();
    let id = active_preset_id(&store, "devbox", "small").await;
    let mut ids = HashSet::new();
    for i in 0..PREBUILDS {
        let at = t(1) + TimeDelta::milliseconds(i64::try_from(i).unwrap());
        ids.insert(store.create_prebuild(&id, at).await.unwrap().workspace.id);
    }
    let mut acquired = 0;
    while let Some(job) = store.acquire_job("w", LEASE, t(10)).await.unwrap() {
        store
            .complete_job(&job.build.id, &job.lease.token, &ok(), "", t(11))
            .await
            .unwrap();
        acquired += 1;
    }
    assert_eq!(acquired, PREBUILDS);

    let store = Arc::new(store);
    let mut tasks = tokio::task::JoinSet::new();
    for claimer in 0..CLAIMERS {
        let store = store.clone();
        tasks.spawn(async move {
            let mut mine = Vec::new();
            let mut misses = 0;
            for n in 0.. {
                let request = claim_request(
                    "devbox",
                    "small",
                    &format!("user-{claimer}"),
                    &format!("ws-{n}"),
                );
                match store.claim(&request, t(100)).await.unwrap() {
                    ClaimOutcome::Claimed { workspace, .. } => mine.push(workspace.id),
                    ClaimOutcome::PoolEmpty => {
                        misses += 1;
                        break;
                    }
                }
            }
            (mine, misses)
        });
    }
    let mut claimed = Vec::new();
    let mut misses = 0;
    while let Some(result) = tasks.join_next().await {
        let (mine, missed) = result.unwrap();
        claimed.extend(mine);
        misses += missed;
    }
    let distinct: BTreeSet<&WorkspaceId> = claimed.iter().collect();
    assert_eq!(claimed.len(), PREBUILDS, "every prebuild claimed");
    assert_eq!(distinct.len(), PREBUILDS, "no prebuild claimed twice");
    assert!(claimed.iter().all(|w| ids.contains(w)));
    assert_eq!(misses, CLAIMERS);
    assert_eq!(
        store
            .claim(&claim_request("devbox", "small", "late", "l"), t(101))
            .await
            .unwrap(),
        ClaimOutcome::PoolEmpty
    );
    let counters = store.counters().await.unwrap();
    let value = |name| counters.iter().find(|c| c.name == name).map(|c| c.value);
    assert_eq!(value(CounterName::PrebuildsClaimed), Some(PREBUILDS as u64));
    assert_eq!(value(CounterName::ClaimsMissed), Some(CLAIMERS as u64 + 1));
    let prebuilds = store
        .snapshot(t(102), PlannerConfig::default())
        .await
        .unwrap()
        .workspaces;
    assert!(prebuilds.is_empty());
}
