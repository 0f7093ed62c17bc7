//! The planner's scenario tests: Coder's planner scenarios (reference section 11.1), the backoff numbers of
//! `TestFailedBuildBackoff` (3.1), the scheduled targets of 5.3, and warmpool's own rules (SPEC sections 2 and 3).
//!
//! Every snapshot is written as JSON and read with `from_json`; every assertion compares a whole plan entry (state,
//! status, actions with ids, held actions) exactly. Where a deliberate difference of SPEC section 2 changes Coder's
//! expectation, the test says so and names the difference ("difference N").
//!
//! Coder's planner tests use a backoff interval of 5 s; the ported ones do too ([`coder_config`]).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{Value, json};
use warmpool_core::plan::{Action, DeleteReason, HeldAction, HoldReason, PresetPlan};
use warmpool_core::{PresetId, WorkspaceId};

/// Coder's `preset_snapshot_test.go` runs with a 5 s backoff interval.
fn coder_config() -> Value {
    json!({"backoff_interval": "5s", "backoff_lookback": "1h", "failure_hard_limit": 3})
}

fn coder_snapshot(now: &str, presets: Vec<Value>, workspaces: Vec<Value>) -> Value {
    with(
        snapshot(now, presets, workspaces),
        json!({"config": coder_config()}),
    )
}

/// Coder's antagonists (reference section 11): a stopped prebuild of the preset and a running workspace of a
/// user. Neither may influence any outcome.
fn antagonists(prefix: &str, preset: &str) -> Vec<Value> {
    vec![
        workspace(
            &format!("{prefix}-stopped"),
            preset,
            &before(NOW, "3h"),
            "stop",
            "succeeded",
        ),
        with(
            running(&format!("{prefix}-user"), preset, &before(NOW, "3h")),
            json!({"owner": "alice"}),
        ),
    ]
}

fn delete(ids: &[&str], reason: &str) -> Value {
    json!({"type": "delete", "workspaces": ids, "reason": reason})
}

fn create(count: u32) -> Value {
    json!({"type": "create", "count": count})
}

fn backoff(until: &str) -> Value {
    json!({"type": "backoff", "until": until})
}

fn set_status(status: &str) -> Value {
    json!({"type": "set_status", "status": status})
}

// ---------------------------------------------------------------------------------------------------------------
// SPEC section 3's example.
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn spec_section_3_example() {
    let input = json!({
      "now": "2025-06-02T03:00:00Z",
      "config": {"backoff_interval": "1m", "backoff_lookback": "1h", "failure_hard_limit": 3},
      "settings": {"reconciliation_paused": false},
      "presets": [{
        "id": "p1", "template": "devbox", "template_version": "v2", "preset": "small",
        "active": true, "instances": 2, "ttl": "3h", "invalidated_at": null,
        "scheduling": {"timezone": "Europe/Berlin", "schedules": [{"cron": "* 8-18 * * 1-5", "instances": 5}]},
        "status": "healthy", "paused": false,
        "creation_failures": {"consecutive": 0, "last_failure_at": null}
      }],
      "workspaces": [{
        "id": "w1", "owner": "prebuilds", "preset": "p1", "created_at": "2025-06-02T01:00:00Z",
        "ready": true,
        "latest_build": {"number": 1, "transition": "start", "status": "succeeded",
                         "created_at": "2025-06-02T01:00:00Z", "active_version": true, "picked_up": true}
      }]
    });
    let want = json!({"presets": [{
      "id": "p1", "template": "devbox", "preset": "small",
      "state": {"desired": 2, "actual": 1, "eligible": 1, "expired": 0, "extraneous": 0,
                "starting": 0, "stopping": 0, "deleting": 0, "target_source": "instances"},
      "status": "healthy",
      "actions": [{"type": "create", "count": 1}],
      "held": []
    }]});
    assert_eq!(plan_json(&input), want);
}

// ---------------------------------------------------------------------------------------------------------------
// Coder's preset_snapshot_test.go (reference section 11.1), the planner scenarios.
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn coder_no_prebuilds() {
    // TestNoPrebuilds: an active preset with desired 0 has an all-zero state and no actions.
    let s = coder_snapshot(
        NOW,
        vec![preset("p", json!({"instances": 0}))],
        antagonists("a", "p"),
    );
    assert_entry(&plan_json(&s), "p", json!({"state": {}, "actions": []}));
}

#[test]
fn coder_net_new() {
    // TestNetNew.
    let s = coder_snapshot(
        NOW,
        vec![preset("p", json!({"instances": 1}))],
        antagonists("a", "p"),
    );
    assert_entry(
        &plan_json(&s),
        "p",
        json!({"state": {"desired": 1}, "actions": [create(1)]}),
    );
}

#[test]
fn coder_outdated_prebuilds() {
    // TestOutdatedPrebuilds: the old version's preset deletes its prebuild; the new one creates, not blocked by it.
    let mut workspaces = vec![running("w-old", "old", &before(NOW, "1h"))];
    workspaces.extend(antagonists("a", "new"));
    let s = coder_snapshot(
        NOW,
        vec![
            preset(
                "old",
                json!({"active": false, "template_version": "v1", "instances": 1}),
            ),
            preset("new", json!({"template_version": "v2", "instances": 1})),
        ],
        workspaces,
    );
    let plan = plan_json(&s);
    assert_entry(
        &plan,
        "old",
        json!({"state": {"actual": 1, "target_source": "inactive"},
               "actions": [delete(&["w-old"], "inactive")]}),
    );
    assert_entry(
        &plan,
        "new",
        json!({"state": {"desired": 1}, "actions": [create(1)]}),
    );
}

#[test]
fn coder_delete_outdated_prebuilds() {
    // TestDeleteOutdatedPrebuilds: an inactive preset with one running prebuild and one delete in progress deletes
    // the running one; the one already deleting is left alone.
    let s = coder_snapshot(
        NOW,
        vec![preset("old", json!({"active": false, "instances": 1}))],
        vec![
            running("w1", "old", &before(NOW, "2h")),
            in_progress("w2", "old", &before(NOW, "2h"), "delete"),
        ],
    );
    assert_entry(
        &plan_json(&s),
        "old",
        json!({"state": {"actual": 1, "deleting": 1, "target_source": "inactive"},
               "actions": [delete(&["w1"], "inactive")]}),
    );
}

#[test]
fn coder_cancel_pending_prebuilds_non_active_version() {
    // TestCancelPendingPrebuilds/CancelPendingPrebuildsNonActiveVersion: exactly [cancel_pending].
    // Reading: SPEC section 3 derives `starting` from the workspace list alone (latest build start pending or
    // running), so the two pending builds also count as starting here; Coder counts in-progress builds of the
    // active version only.
    let s = coder_snapshot(
        NOW,
        vec![preset("old", json!({"active": false, "instances": 2}))],
        vec![
            workspace("w1", "old", &before(NOW, "1m"), "start", "pending"),
            workspace("w2", "old", &before(NOW, "1m"), "start", "pending"),
        ],
    );
    assert_entry(
        &plan_json(&s),
        "old",
        json!({"state": {"starting": 2, "target_source": "inactive"},
               "actions": [{"type": "cancel_pending"}]}),
    );
}

#[test]
fn coder_not_cancel_pending_prebuilds_active_version() {
    // TestCancelPendingPrebuilds/NotCancelPendingPrebuildsActiveVersion: pending builds of an active preset are
    // never cancelled, even when they were queued for another version (cancelling is step 3, inactive presets).
    let s = coder_snapshot(
        NOW,
        vec![preset("p", json!({"instances": 0}))],
        vec![
            workspace("w1", "p", &before(NOW, "1m"), "start", "pending"),
            with(
                workspace("w2", "p", &before(NOW, "1m"), "start", "pending"),
                json!({"latest_build": {"active_version": false}}),
            ),
        ],
    );
    assert_entry(
        &plan_json(&s),
        "p",
        json!({"state": {"starting": 2}, "actions": []}),
    );
}

/// One row of reference table 2.19 (TestInProgressActions): the preset's counts and the expected actions.
struct InProgressRow {
    name: &'static str,
    desired: u32,
    running: u32,
    starting: u32,
    stopping: u32,
    deleting: u32,
    actions: Value,
}

#[test]
fn coder_in_progress_actions() {
    // Running prebuilds are r0 (oldest) .. rN; in-progress ones s*, t* (stop), d* (delete).
    let rows = [
        InProgressRow {
            name: "start: short",
            desired: 1,
            running: 0,
            starting: 1,
            stopping: 0,
            deleting: 0,
            actions: json!([]),
        },
        InProgressRow {
            name: "start: balanced",
            desired: 2,
            running: 1,
            starting: 1,
            stopping: 0,
            deleting: 0,
            actions: json!([]),
        },
        InProgressRow {
            // When the start finishes, the oldest becomes extraneous (next tick).
            name: "start: extraneous",
            desired: 2,
            running: 2,
            starting: 1,
            stopping: 0,
            deleting: 0,
            actions: json!([]),
        },
        InProgressRow {
            name: "stop: short",
            desired: 1,
            running: 0,
            starting: 0,
            stopping: 1,
            deleting: 0,
            actions: json!([create(1)]),
        },
        InProgressRow {
            name: "stop: balanced",
            desired: 3,
            running: 2,
            starting: 0,
            stopping: 1,
            deleting: 0,
            actions: json!([create(1)]),
        },
        InProgressRow {
            name: "stop: extraneous",
            desired: 3,
            running: 3,
            starting: 0,
            stopping: 1,
            deleting: 0,
            actions: json!([]),
        },
        InProgressRow {
            name: "delete: short",
            desired: 1,
            running: 0,
            starting: 0,
            stopping: 0,
            deleting: 1,
            actions: json!([create(1)]),
        },
        InProgressRow {
            name: "delete: balanced",
            desired: 2,
            running: 1,
            starting: 0,
            stopping: 0,
            deleting: 1,
            actions: json!([create(1)]),
        },
        InProgressRow {
            name: "delete: extraneous",
            desired: 2,
            running: 2,
            starting: 0,
            stopping: 0,
            deleting: 1,
            actions: json!([]),
        },
        InProgressRow {
            name: "start inhibits create",
            desired: 3,
            running: 1,
            starting: 2,
            stopping: 0,
            deleting: 0,
            actions: json!([]),
        },
        InProgressRow {
            // Deletions in progress do not inhibit deleting the extraneous ones: one delete of the 2 oldest.
            name: "delete does not inhibit extraneous",
            desired: 3,
            running: 5,
            starting: 0,
            stopping: 0,
            deleting: 2,
            actions: json!([delete(&["r0", "r1"], "extraneous")]),
        },
    ];
    for row in rows {
        let mut workspaces = Vec::new();
        for i in 0..row.running {
            let age = format!("{}h", 10 - i);
            workspaces.push(running(&format!("r{i}"), "p", &before(NOW, &age)));
        }
        for i in 0..row.starting {
            // Both pending and running jobs are in progress.
            let status = if i % 2 == 0 { "pending" } else { "running" };
            workspaces.push(workspace(
                &format!("s{i}"),
                "p",
                &before(NOW, "1m"),
                "start",
                status,
            ));
        }
        for i in 0..row.stopping {
            workspaces.push(in_progress(
                &format!("t{i}"),
                "p",
                &before(NOW, "20h"),
                "stop",
            ));
        }
        for i in 0..row.deleting {
            workspaces.push(in_progress(
                &format!("d{i}"),
                "p",
                &before(NOW, "20h"),
                "delete",
            ));
        }
        workspaces.extend(antagonists("a", "p"));
        let s = coder_snapshot(
            NOW,
            vec![preset("p", json!({"instances": row.desired}))],
            workspaces,
        );
        let got = plan_json(&s);
        let want_state = state(json!({
            "desired": row.desired, "actual": row.running, "eligible": row.running,
            "extraneous": row.running.saturating_sub(row.desired),
            "starting": row.starting, "stopping": row.stopping, "deleting": row.deleting,
        }));
        assert_eq!(entry(&got, "p")["state"], want_state, "{}", row.name);
        assert_eq!(actions(&got, "p"), &row.actions, "{}", row.name);
        assert_eq!(held(&got, "p"), &json!([]), "{}", row.name);
    }
}

#[test]
fn coder_extraneous() {
    // TestExtraneous: desired 1, two running an hour apart: the older is deleted.
    let s = coder_snapshot(
        NOW,
        vec![preset("p", json!({"instances": 1}))],
        vec![
            running("new", "p", NOW),
            running("old", "p", &before(NOW, "1h")),
        ],
    );
    assert_entry(
        &plan_json(&s),
        "p",
        json!({"state": {"desired": 1, "actual": 2, "eligible": 2, "extraneous": 1},
               "actions": [delete(&["old"], "extraneous")]}),
    );
}

#[test]
fn coder_expired_prebuilds() {
    // TestExpiredPrebuilds (7 cases). TTL 5 s. Coder computes age with the wall clock and so builds fixtures from
    // real time; warmpool uses the snapshot's `now` (difference 1), so fixed timestamps are enough.
    struct Case {
        name: &'static str,
        desired: u32,
        invalidated_at: Option<String>,
        workspaces: Vec<Value>,
        state: Value,
        actions: Value,
    }
    let fresh = |id: &str| running(id, "p", &before(NOW, "1s"));
    let stale = |id: &str, age: &str| running(id, "p", &before(NOW, age));
    let cases = vec![
        Case {
            name: "no expired",
            desired: 2,
            invalidated_at: None,
            workspaces: vec![fresh("r1"), stale("r2", "5s")],
            state: json!({"desired": 2, "actual": 2, "eligible": 2}),
            actions: json!([]),
        },
        Case {
            name: "one of two expired",
            desired: 2,
            invalidated_at: None,
            workspaces: vec![fresh("r1"), stale("e1", "6s")],
            state: json!({"desired": 2, "actual": 2, "eligible": 1, "expired": 1}),
            actions: json!([delete(&["e1"], "expired"), create(1)]),
        },
        Case {
            name: "all expired",
            desired: 2,
            invalidated_at: None,
            workspaces: vec![stale("e2", "10s"), stale("e1", "1h")],
            state: json!({"desired": 2, "actual": 2, "expired": 2}),
            actions: json!([delete(&["e1", "e2"], "expired"), create(2)]),
        },
        Case {
            name: "four running, two expired, desired 2",
            desired: 2,
            invalidated_at: None,
            workspaces: vec![
                fresh("r1"),
                fresh("r2"),
                stale("e1", "7s"),
                stale("e2", "8s"),
            ],
            state: json!({"desired": 2, "actual": 4, "eligible": 2, "expired": 2}),
            actions: json!([delete(&["e2", "e1"], "expired")]),
        },
        Case {
            name: "four running, one expired, desired 2",
            desired: 2,
            invalidated_at: None,
            workspaces: vec![
                stale("r1", "1s"),
                stale("r2", "2s"),
                stale("r3", "3s"),
                stale("e1", "9s"),
            ],
            state: json!({"desired": 2, "actual": 4, "eligible": 3, "expired": 1, "extraneous": 1}),
            actions: json!([delete(&["e1"], "expired"), delete(&["r3"], "extraneous")]),
        },
        Case {
            name: "invalidated, both created before",
            desired: 2,
            invalidated_at: Some(before(NOW, "1s")),
            workspaces: vec![stale("e1", "3s"), stale("e2", "2s")],
            state: json!({"desired": 2, "actual": 2, "expired": 2}),
            actions: json!([delete(&["e1", "e2"], "expired"), create(2)]),
        },
        Case {
            name: "invalidated, one created after",
            desired: 2,
            invalidated_at: Some(before(NOW, "2s")),
            workspaces: vec![stale("e1", "3s"), fresh("r1")],
            state: json!({"desired": 2, "actual": 2, "eligible": 1, "expired": 1}),
            actions: json!([delete(&["e1"], "expired"), create(1)]),
        },
    ];
    for case in cases {
        let s = coder_snapshot(
            NOW,
            vec![preset(
                "p",
                json!({"instances": case.desired, "ttl": "5s", "invalidated_at": case.invalidated_at}),
            )],
            case.workspaces,
        );
        let got = plan_json(&s);
        assert_eq!(
            entry(&got, "p")["state"],
            state(case.state),
            "{}",
            case.name
        );
        assert_eq!(actions(&got, "p"), &case.actions, "{}", case.name);
        assert_eq!(held(&got, "p"), &json!([]), "{}", case.name);
    }
}

#[test]
fn expiry_boundaries_use_the_snapshot_clock() {
    // Difference 1: one clock. `now` is in 2020, years before any wall clock running this test: were the wall
    // clock used for TTL, every prebuild below would be expired.
    let now = "2020-01-01T00:00:00Z";
    let s = snapshot(
        now,
        vec![preset("p", json!({"instances": 3, "ttl": "1h"}))],
        vec![
            running("young", "p", &before(now, "59m")),
            // Age exactly the TTL: not expired (strictly greater).
            running("exact", "p", &before(now, "1h")),
            running("over", "p", &before(now, "1h1ms")),
        ],
    );
    let plan = plan_json(&s);
    assert_entry(
        &plan,
        "p",
        json!({"state": {"desired": 3, "actual": 3, "eligible": 2, "expired": 1},
               "actions": [delete(&["over"], "expired"), create(1)]}),
    );
    // The invalidation boundary: created exactly at `invalidated_at` is not expired (strictly before).
    let s = snapshot(
        now,
        vec![preset(
            "p",
            json!({"instances": 2, "invalidated_at": before(now, "2h")}),
        )],
        vec![
            running("at-inv", "p", &before(now, "2h")),
            running("before-inv", "p", &before(now, "2h1ms")),
        ],
    );
    assert_entry(
        &plan_json(&s),
        "p",
        json!({"state": {"desired": 2, "actual": 2, "eligible": 1, "expired": 1},
               "actions": [delete(&["before-inv"], "expired"), create(1)]}),
    );
}

#[test]
fn eligible_counts_only_ready_prebuilds() {
    // `ready` defaults to true for a running prebuild; one explicitly not ready still counts as running (actual,
    // and against the deficit) but is not eligible for a claim.
    let s = snapshot(
        NOW,
        vec![preset("p", json!({"instances": 2}))],
        vec![
            running("ready", "p", &before(NOW, "1h")),
            with(
                running("not-ready", "p", &before(NOW, "1h")),
                json!({"ready": false}),
            ),
        ],
    );
    assert_entry(
        &plan_json(&s),
        "p",
        json!({"state": {"desired": 2, "actual": 2, "eligible": 1}, "actions": []}),
    );
}

#[test]
fn coder_deprecated() {
    // TestDeprecated: in warmpool a deprecated or deleted template's presets are simply inactive.
    let mut workspaces = vec![running("w1", "p", &before(NOW, "1h"))];
    workspaces.extend(antagonists("a", "p"));
    let s = coder_snapshot(
        NOW,
        vec![preset("p", json!({"active": false, "instances": 1}))],
        workspaces,
    );
    assert_entry(
        &plan_json(&s),
        "p",
        json!({"state": {"actual": 1, "target_source": "inactive"},
               "actions": [delete(&["w1"], "inactive")]}),
    );
}

#[test]
fn coder_latest_build_failed() {
    // TestLatestBuildFailed: "current" has a failure at `now` (Coder's backoff row with NumFailed 1, here derived
    // from the failed latest build, SPEC section 3); "other" has one ready prebuild.
    let presets = vec![
        preset("current", json!({"instances": 1})),
        preset("other", json!({"instances": 1})),
    ];
    let workspaces = vec![
        failed("c1", "current", NOW),
        running("o1", "other", &before(NOW, "1h")),
    ];
    let other = json!({"state": {"desired": 1, "actual": 1, "eligible": 1}, "actions": []});

    let plan = plan_json(&coder_snapshot(NOW, presets.clone(), workspaces.clone()));
    assert_entry(
        &plan,
        "current",
        json!({"state": {"desired": 1}, "actions": [backoff("2025-06-02T12:00:05Z")]}),
    );
    assert_entry(&plan, "other", other.clone());

    // At `until` itself the preset still backs off (`now <= until`).
    let plan = plan_json(&coder_snapshot(
        "2025-06-02T12:00:05Z",
        presets.clone(),
        workspaces.clone(),
    ));
    assert_eq!(
        actions(&plan, "current"),
        &json!([backoff("2025-06-02T12:00:05Z")])
    );

    // Coder advances the clock by 5 s + 1 µs: the backoff is over, one is created.
    let plan = plan_json(&coder_snapshot(
        "2025-06-02T12:00:05.000001Z",
        presets,
        workspaces,
    ));
    assert_entry(
        &plan,
        "current",
        json!({"state": {"desired": 1}, "actions": [create(1)]}),
    );
    assert_entry(&plan, "other", other);
}

#[test]
fn coder_multiple_presets_per_template_version() {
    // TestMultiplePresetsPerTemplateVersion: presets of one version do not block each other.
    let s = coder_snapshot(
        NOW,
        vec![
            preset("p1", json!({"template_version": "v1", "instances": 1})),
            preset("p2", json!({"template_version": "v1", "instances": 1})),
        ],
        vec![in_progress("s1", "p1", &before(NOW, "1m"), "start")],
    );
    let plan = plan_json(&s);
    assert_entry(
        &plan,
        "p1",
        json!({"state": {"desired": 1, "starting": 1}, "actions": []}),
    );
    assert_entry(
        &plan,
        "p2",
        json!({"state": {"desired": 1}, "actions": [create(1)]}),
    );
}

#[test]
fn coder_prebuild_scheduling() {
    // TestPrebuildScheduling: two presets with two schedules each, baseline 1, Monday 2 June 2025 UTC.
    let presets = vec![
        preset(
            "p1",
            json!({"instances": 1, "scheduling": {"timezone": "UTC", "schedules": [
                {"cron": "* 2-4 * * 1-5", "instances": 2}, {"cron": "* 6-8 * * 1-5", "instances": 3}]}}),
        ),
        preset(
            "p2",
            json!({"instances": 1, "scheduling": {"timezone": "UTC", "schedules": [
                {"cron": "* 10-12 * * 1-5", "instances": 4}, {"cron": "* 14-16 * * 1-5", "instances": 5}]}}),
        ),
    ];
    // (hour, [(p1 desired, schedule index), (p2 desired, schedule index)]).
    let times = [
        (1, [(1, None), (1, None)]),
        (3, [(2, Some(0)), (1, None)]),
        (7, [(3, Some(1)), (1, None)]),
        (11, [(1, None), (4, Some(0))]),
        (15, [(1, None), (5, Some(1))]),
    ];
    for (hour, targets) in times {
        let now = format!("2025-06-02T{hour:02}:00:00Z");
        let plan = plan_json(&coder_snapshot(&now, presets.clone(), vec![]));
        for (id, (desired, index)) in ["p1", "p2"].into_iter().zip(targets) {
            let mut st = json!({"desired": desired});
            match index {
                Some(i) => merge(
                    &mut st,
                    json!({"target_source": "schedule", "schedule_index": i}),
                ),
                None => merge(&mut st, json!({"target_source": "instances"})),
            }
            assert_entry(
                &plan,
                id,
                json!({"state": st, "actions": [create(desired)]}),
            );
        }
    }
}

/// TestCanSkipReconciliation's 11 cases, as "the plan is empty / has these actions".
mod can_skip_reconciliation {
    use super::*;

    fn inactive(extra: Value) -> Value {
        preset("p", with(json!({"active": false, "instances": 1}), extra))
    }

    #[test]
    fn inactive_with_nothing_is_empty() {
        let plan = plan_json(&coder_snapshot(NOW, vec![inactive(json!({}))], vec![]));
        assert_entry(
            &plan,
            "p",
            json!({"state": {"target_source": "inactive"}, "actions": []}),
        );
    }

    #[test]
    fn inactive_with_running_deletes() {
        let plan = plan_json(&coder_snapshot(
            NOW,
            vec![inactive(json!({}))],
            vec![running("w1", "p", &before(NOW, "1h"))],
        ));
        assert_entry(
            &plan,
            "p",
            json!({"state": {"actual": 1, "target_source": "inactive"},
                   "actions": [delete(&["w1"], "inactive")]}),
        );
    }

    #[test]
    fn inactive_with_pending_cancels() {
        let pending = (1..=3)
            .map(|i| {
                workspace(
                    &format!("w{i}"),
                    "p",
                    &before(NOW, "1m"),
                    "start",
                    "pending",
                )
            })
            .collect();
        let plan = plan_json(&coder_snapshot(NOW, vec![inactive(json!({}))], pending));
        assert_entry(
            &plan,
            "p",
            json!({"state": {"starting": 3, "target_source": "inactive"},
                   "actions": [{"type": "cancel_pending"}]}),
        );
    }

    #[test]
    fn inactive_with_backoff_is_empty() {
        // Coder: 3 failures a minute ago with interval 5 min give [Backoff]. Difference 8: an inactive preset is
        // never backed off, and its failed prebuilds are left alone, so the plan is empty. The failed builds are
        // even marked as on the active version (a deleted template): only the preset's inactivity decides.
        let failures = (1..=3)
            .map(|i| {
                with(
                    failed(&format!("f{i}"), "p", &before(NOW, "1m")),
                    json!({"latest_build": {"active_version": true}}),
                )
            })
            .collect();
        let s = with(
            coder_snapshot(NOW, vec![inactive(json!({}))], failures),
            json!({"config": {"backoff_interval": "5m"}}),
        );
        assert_entry(
            &plan_json(&s),
            "p",
            json!({"state": {"target_source": "inactive"}, "actions": []}),
        );
    }

    #[test]
    fn inactive_deleted_or_deprecated_with_nothing_is_empty() {
        // Deleted template and deprecated template are both `active: false` in warmpool: one case each in Coder.
        for template_version in ["deleted-template", "deprecated-template"] {
            let plan = plan_json(&coder_snapshot(
                NOW,
                vec![inactive(json!({"template_version": template_version}))],
                antagonists("a", "p"),
            ));
            assert_entry(
                &plan,
                "p",
                json!({"state": {"target_source": "inactive"}, "actions": []}),
            );
        }
    }

    #[test]
    fn inactive_hard_limited_with_nothing_is_empty() {
        // The stored status of an inactive preset is carried unchanged: no set_status either.
        let plan = plan_json(&coder_snapshot(
            NOW,
            vec![inactive(json!({"status": "hard_limited"}))],
            vec![],
        ));
        assert_entry(
            &plan,
            "p",
            json!({"state": {"target_source": "inactive"}, "status": "hard_limited", "actions": []}),
        );
    }

    #[test]
    fn active_at_desired_is_empty() {
        let plan = plan_json(&coder_snapshot(
            NOW,
            vec![preset("p", json!({"instances": 1}))],
            vec![running("w1", "p", &before(NOW, "1h"))],
        ));
        assert_entry(
            &plan,
            "p",
            json!({"state": {"desired": 1, "actual": 1, "eligible": 1}, "actions": []}),
        );
    }

    #[test]
    fn active_with_none_creates() {
        let plan = plan_json(&coder_snapshot(
            NOW,
            vec![preset("p", json!({"instances": 1}))],
            vec![],
        ));
        assert_entry(
            &plan,
            "p",
            json!({"state": {"desired": 1}, "actions": [create(1)]}),
        );
    }

    #[test]
    fn active_with_backoff_backs_off() {
        // 3 failures a minute ago, interval 5 min: until = now - 1m + 3 × 5m. The hard limit is off here, so that
        // only the backoff shows (the hard limit with a backoff is covered below).
        let failures = (1..=3)
            .map(|i| failed(&format!("f{i}"), "p", &before(NOW, "1m")))
            .collect();
        let s = with(
            coder_snapshot(NOW, vec![preset("p", json!({"instances": 1}))], failures),
            json!({"config": {"backoff_interval": "5m", "failure_hard_limit": 0}}),
        );
        assert_entry(
            &plan_json(&s),
            "p",
            json!({"state": {"desired": 1}, "actions": [backoff("2025-06-02T12:14:00Z")]}),
        );
    }

    #[test]
    fn active_hard_limited_holds_create() {
        // Coder plans Create and skips it while executing; warmpool puts the create in `held` (hard_limited) and
        // stores the live status first (difference 9). The failures are older than the lookback: no DB backoff.
        let failures = (1..=3)
            .map(|i| failed(&format!("f{i}"), "p", &before(NOW, &format!("{}h", i + 1))))
            .collect();
        let s = coder_snapshot(NOW, vec![preset("p", json!({"instances": 1}))], failures);
        assert_entry(
            &plan_json(&s),
            "p",
            json!({"state": {"desired": 1}, "status": "hard_limited",
                   "actions": [set_status("hard_limited")],
                   "held": [{"action": create(1), "reason": "hard_limited"}]}),
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// TestFailedBuildBackoff (reference section 3.1) and the DB-derived backoff's boundaries.
// ---------------------------------------------------------------------------------------------------------------

fn backoff_snapshot(now: &str, workspaces: Vec<Value>) -> Value {
    with(
        snapshot(now, vec![preset("p", json!({"instances": 2}))], workspaces),
        json!({"config": {"backoff_interval": "1m", "backoff_lookback": "20h", "failure_hard_limit": 3}}),
    )
}

#[test]
fn failed_build_backoff_sequence() {
    // Two failures: until = the last failure + 2 × 1 min.
    let failures = vec![
        failed("f1", "p", "2025-06-02T10:00:00Z"),
        failed("f2", "p", "2025-06-02T10:00:10Z"),
    ];
    for now in [
        "2025-06-02T10:00:20Z",
        // A later tick inside the window gives the same until.
        "2025-06-02T10:01:30Z",
        // `now == until` still backs off.
        "2025-06-02T10:02:10Z",
    ] {
        let plan = plan_json(&backoff_snapshot(now, failures.clone()));
        assert_entry(
            &plan,
            "p",
            json!({"state": {"desired": 2}, "actions": [backoff("2025-06-02T10:02:10Z")]}),
        );
    }
    // `until + 1 ms`: the backoff has passed, both are created.
    let plan = plan_json(&backoff_snapshot(
        "2025-06-02T10:02:10.001Z",
        failures.clone(),
    ));
    assert_entry(
        &plan,
        "p",
        json!({"state": {"desired": 2}, "actions": [create(2)]}),
    );

    // Of the two new prebuilds one failed and one succeeded: 3 failures in the window (all of them count, not only
    // the newest `desired`), the newest failure is among the newest 2 candidates: until = 10:02:11 + 3 × 1 min.
    // Actual 1, and nothing but the backoff (no create).
    let mut workspaces = failures;
    workspaces.push(failed("f3", "p", "2025-06-02T10:02:11Z"));
    workspaces.push(running("s1", "p", "2025-06-02T10:02:12Z"));
    let plan = plan_json(&backoff_snapshot("2025-06-02T10:02:20Z", workspaces));
    assert_entry(
        &plan,
        "p",
        json!({"state": {"desired": 2, "actual": 1, "eligible": 1},
               "actions": [backoff("2025-06-02T10:05:11Z")]}),
    );
}

#[test]
fn backoff_ends_when_successes_push_failures_out_of_the_newest_desired() {
    // Desired 1: the newest candidate succeeded, so the failure a second earlier is not among the newest 1 and the
    // preset does not back off although a failure lies in the window.
    let s = with(
        snapshot(
            NOW,
            vec![preset("p", json!({"instances": 1}))],
            vec![
                failed("f1", "p", &before(NOW, "2s")),
                running("s1", "p", &before(NOW, "1s")),
            ],
        ),
        json!({"config": {"backoff_interval": "10m"}}),
    );
    assert_entry(
        &plan_json(&s),
        "p",
        json!({"state": {"desired": 1, "actual": 1, "eligible": 1}, "actions": []}),
    );
}

#[test]
fn backoff_lookback_boundary_is_inclusive() {
    let s = |failure_at: String| {
        with(
            snapshot(
                NOW,
                vec![preset("p", json!({"instances": 1}))],
                vec![failed("f1", "p", &failure_at)],
            ),
            json!({"config": {"backoff_interval": "2h", "backoff_lookback": "1h"}}),
        )
    };
    // Exactly `now - lookback`: counts (`>=`), until = failure + 2h.
    let plan = plan_json(&s(before(NOW, "1h")));
    assert_eq!(
        actions(&plan, "p"),
        &json!([backoff("2025-06-02T13:00:00Z")])
    );
    // One millisecond older: outside the window, no backoff.
    let plan = plan_json(&s(before(NOW, "1h1ms")));
    assert_eq!(actions(&plan, "p"), &json!([create(1)]));
}

#[test]
fn failures_older_than_the_lookback_do_not_count() {
    // Desired 3: the newest 3 candidates are one recent failure and two failures older than the lookback. Only the
    // recent one counts: until = (now - 1m) + 1 × 5m. Were the old ones counted, until would be now + 14m.
    let s = with(
        snapshot(
            NOW,
            vec![preset("p", json!({"instances": 3}))],
            vec![
                failed("recent", "p", &before(NOW, "1m")),
                failed("old1", "p", &before(NOW, "2h")),
                failed("old2", "p", &before(NOW, "3h")),
            ],
        ),
        json!({"config": {"backoff_interval": "5m", "backoff_lookback": "1h", "failure_hard_limit": 0}}),
    );
    assert_eq!(
        actions(&plan_json(&s), "p"),
        &json!([backoff("2025-06-02T12:04:00Z")])
    );
    // With only old failures there is no backoff at all.
    let s = with(
        snapshot(
            NOW,
            vec![preset("p", json!({"instances": 3}))],
            vec![
                failed("old1", "p", &before(NOW, "2h")),
                failed("old2", "p", &before(NOW, "3h")),
            ],
        ),
        json!({"config": {"backoff_interval": "5m", "backoff_lookback": "1h", "failure_hard_limit": 0}}),
    );
    assert_eq!(actions(&plan_json(&s), "p"), &json!([create(3)]));
}

#[test]
fn backoff_candidates_rank_by_build_time_then_larger_id() {
    // Desired 1 and two candidates built at the same instant: the lexicographically larger id ranks first.
    let build_at = before(NOW, "10s");
    let s = |failed_id: &str, ok_id: &str| {
        with(
            snapshot(
                NOW,
                vec![preset("p", json!({"instances": 1}))],
                vec![
                    failed(failed_id, "p", &build_at),
                    running(ok_id, "p", &build_at),
                ],
            ),
            json!({"config": {"backoff_interval": "1m"}}),
        )
    };
    // "b" failed and ranks first: backoff until build_at + 1 × 1m.
    assert_eq!(
        actions(&plan_json(&s("b", "a")), "p"),
        &json!([backoff("2025-06-02T12:00:50Z")])
    );
    // "b" succeeded and ranks first: the failure is not among the newest 1.
    assert_eq!(actions(&plan_json(&s("a", "b")), "p"), &json!([]));
    // The rank is by the latest build's time, not the workspace's: "a" was created long ago but built last.
    let s = with(
        snapshot(
            NOW,
            vec![preset("p", json!({"instances": 1}))],
            vec![
                with(
                    failed("a", "p", &before(NOW, "5s")),
                    json!({"created_at": before(NOW, "5h")}),
                ),
                running("b", "p", &before(NOW, "10s")),
            ],
        ),
        json!({"config": {"backoff_interval": "1m"}}),
    );
    assert_eq!(
        actions(&plan_json(&s), "p"),
        &json!([backoff("2025-06-02T12:00:55Z")])
    );
}

#[test]
fn only_start_builds_of_the_active_version_are_candidates() {
    // A failed stop, a failed start of another version, and a failed claimed workspace do not back off.
    let s = with(
        snapshot(
            NOW,
            vec![preset("p", json!({"instances": 1}))],
            vec![
                workspace("stop", "p", &before(NOW, "1s"), "stop", "failed"),
                with(
                    failed("old-version", "p", &before(NOW, "1s")),
                    json!({"latest_build": {"active_version": false}}),
                ),
                with(
                    failed("claimed", "p", &before(NOW, "1s")),
                    json!({"owner": "alice"}),
                ),
            ],
        ),
        json!({"config": {"backoff_interval": "1h", "failure_hard_limit": 1}}),
    );
    assert_entry(
        &plan_json(&s),
        "p",
        json!({"state": {"desired": 1}, "actions": [create(1)]}),
    );
}

#[test]
fn db_backoff_stops_every_other_action() {
    // Rule 0: a backoff suppresses deletes of expired and extraneous prebuilds too.
    let s = with(
        snapshot(
            NOW,
            vec![preset("p", json!({"instances": 1, "ttl": "1h"}))],
            vec![
                running("expired", "p", &before(NOW, "2h")),
                running("r1", "p", &before(NOW, "30m")),
                running("r2", "p", &before(NOW, "20m")),
                failed("f1", "p", &before(NOW, "10s")),
            ],
        ),
        json!({"config": {"backoff_interval": "1m"}}),
    );
    assert_entry(
        &plan_json(&s),
        "p",
        json!({"state": {"desired": 1, "actual": 3, "eligible": 2, "expired": 1, "extraneous": 1},
               "actions": [backoff("2025-06-02T12:00:50Z")]}),
    );
}

#[test]
fn until_stays_an_rfc_3339_timestamp() {
    // SPEC section 3: output timestamps are RFC 3339. A valid but huge interval (100000000d, about 274 000 years)
    // puts `until` past the year 9999, which RFC 3339 cannot write; the planner clamps it to the last instant it
    // can (a hold that long is a hold for good).
    let s = with(
        snapshot(
            NOW,
            vec![
                preset("db", json!({"instances": 1})),
                preset(
                    "seed",
                    json!({"instances": 1, "creation_failures": {"consecutive": 1, "last_failure_at": NOW}}),
                ),
            ],
            vec![failed("f1", "db", &before(NOW, "1m"))],
        ),
        json!({"config": {"backoff_interval": "100000000d"}}),
    );
    let plan = plan_json(&s);
    assert_entry(
        &plan,
        "db",
        json!({"state": {"desired": 1}, "actions": [backoff("9999-12-31T23:59:59.999999999Z")]}),
    );
    assert_entry(
        &plan,
        "seed",
        json!({"state": {"desired": 1}, "actions": [],
               "held": [{"action": create(1), "reason": "creation_backoff",
                         "until": "9999-12-31T23:59:59.999999999Z"}]}),
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Scheduled targets (reference section 5.3, SPEC section 3) through the planner.
// ---------------------------------------------------------------------------------------------------------------

/// Plans one preset with baseline `instances` and `schedules` in `tz` at `now`; returns its state.
fn scheduled_state(tz: &str, schedules: Value, now: &str) -> Value {
    let s = snapshot(
        now,
        vec![preset(
            "p",
            json!({"instances": 1, "scheduling": {"timezone": tz, "schedules": schedules}}),
        )],
        vec![],
    );
    let plan = plan_json(&s);
    let desired = entry(&plan, "p")["state"]["desired"].as_u64().unwrap();
    // No prebuilds: the whole target is created.
    assert_eq!(
        actions(&plan, "p"),
        &json!([create(desired as u32)]),
        "{now}"
    );
    entry(&plan, "p")["state"].clone()
}

/// The expected state for a target from schedule `index` (or from the baseline).
fn target(desired: u32, index: Option<u32>) -> Value {
    match index {
        Some(i) => {
            state(json!({"desired": desired, "target_source": "schedule", "schedule_index": i}))
        }
        None => state(json!({"desired": desired})),
    }
}

#[test]
fn schedule_business_hours() {
    let schedules = json!([{"cron": "* 9-18 * * 1-5", "instances": 3}]);
    for (now, desired, index) in [
        ("2025-06-02T08:59:59Z", 1, None),
        ("2025-06-02T09:00:00Z", 3, Some(0)),
        ("2025-06-02T09:01:00Z", 3, Some(0)),
        ("2025-06-02T14:00:00Z", 3, Some(0)),
        ("2025-06-02T18:00:00Z", 3, Some(0)),
        ("2025-06-02T18:59:59Z", 3, Some(0)),
        ("2025-06-02T18:59:59.999Z", 3, Some(0)),
        ("2025-06-02T19:00:00Z", 1, None),
        ("2025-06-02T19:01:00Z", 1, None),
        ("2025-06-02T02:00:00Z", 1, None),
        ("2025-06-07T14:00:00Z", 1, None), // Saturday
        ("2025-06-08T14:00:00Z", 1, None), // Sunday
        // Inputs in any offset are converted: 05:00 at -04:00 is 09:00 UTC.
        ("2025-06-02T05:00:00-04:00", 3, Some(0)),
    ] {
        assert_eq!(
            scheduled_state("UTC", schedules.clone(), now),
            target(desired, index),
            "{now}"
        );
    }
}

#[test]
fn schedule_three_daily_windows() {
    let schedules = json!([
        {"cron": "* 6-10 * * 1-5", "instances": 2},
        {"cron": "* 12-16 * * 1-5", "instances": 3},
        {"cron": "* 18-22 * * 1-5", "instances": 4},
    ]);
    for (hour, desired, index) in [
        (5, 1, None),
        (8, 2, Some(0)),
        (11, 1, None),
        (14, 3, Some(1)),
        (20, 4, Some(2)),
        (23, 1, None),
    ] {
        let now = format!("2025-06-02T{hour:02}:00:00Z");
        assert_eq!(
            scheduled_state("UTC", schedules.clone(), &now),
            target(desired, index),
            "{now}"
        );
    }
}

#[test]
fn schedule_weekday_and_weekend() {
    let schedules = json!([
        {"cron": "* 9-18 * * 1-5", "instances": 2},
        {"cron": "* 9-13 * * 6,0", "instances": 3},
    ]);
    for (now, desired, index) in [
        ("2025-06-02T14:00:00Z", 2, Some(0)), // Monday
        ("2025-06-07T10:00:00Z", 3, Some(1)), // Saturday
        ("2025-06-08T10:00:00Z", 3, Some(1)), // Sunday
        ("2025-06-07T14:00:00Z", 1, None),
    ] {
        assert_eq!(
            scheduled_state("UTC", schedules.clone(), now),
            target(desired, index),
            "{now}"
        );
    }
}

#[test]
fn schedule_los_angeles() {
    // `* 9-13 * * 1-5` in America/Los_Angeles (UTC-7 in June), UTC inputs.
    let schedules = json!([{"cron": "* 9-13 * * 1-5", "instances": 3}]);
    for (now, desired, index) in [
        ("2025-06-02T15:00:00Z", 1, None),
        ("2025-06-02T15:59:59Z", 1, None),
        ("2025-06-02T16:00:00Z", 3, Some(0)),
        ("2025-06-02T20:59:00Z", 3, Some(0)),
        ("2025-06-02T21:00:00Z", 1, None),
        ("2025-06-02T23:00:00Z", 1, None),
        // Saturday 7 June, 09:30 local: the hour matches, the weekday does not.
        ("2025-06-07T16:30:00Z", 1, None),
        ("2025-06-06T20:30:00Z", 3, Some(0)), // Friday 13:30 local
        // In January Los Angeles is UTC-8: 17:00Z is 09:00 local (Friday 3 January 2025).
        ("2025-01-03T16:59:59Z", 1, None),
        ("2025-01-03T17:00:00Z", 3, Some(0)),
    ] {
        assert_eq!(
            scheduled_state("America/Los_Angeles", schedules.clone(), now),
            target(desired, index),
            "{now}"
        );
    }
}

#[test]
fn schedule_dst_in_berlin() {
    // SPEC section 3: `* 2 * * *` in Europe/Berlin is not active at 2025-03-30T01:30:00Z (local 03:30, the 02:00
    // hour was skipped) and is active at both 2025-10-26T00:30:00Z and 01:30:00Z (local 02:30 twice).
    let schedules = json!([{"cron": "* 2 * * *", "instances": 4}]);
    for (now, desired, index) in [
        ("2025-03-30T00:59:59Z", 1, None), // local 01:59:59 CET
        ("2025-03-30T01:00:00Z", 1, None), // local 03:00 CEST
        ("2025-03-30T01:30:00Z", 1, None),
        ("2025-10-25T23:59:59Z", 1, None), // local 01:59:59 CEST
        ("2025-10-26T00:00:00Z", 4, Some(0)),
        ("2025-10-26T00:30:00Z", 4, Some(0)), // local 02:30 CEST
        ("2025-10-26T01:30:00Z", 4, Some(0)), // local 02:30 CET
        ("2025-10-26T01:59:59Z", 4, Some(0)),
        ("2025-10-26T02:00:00Z", 1, None), // local 03:00 CET
        // The day before, the hour is there once: 00:xxZ is 02:xx CEST.
        ("2025-10-25T00:30:00Z", 4, Some(0)),
        ("2025-10-25T01:30:00Z", 1, None),
    ] {
        assert_eq!(
            scheduled_state("Europe/Berlin", schedules.clone(), now),
            target(desired, index),
            "{now}"
        );
    }
    // Business hours follow the local clock across the change: 07:00Z is 08:00 CET on Friday 28 March and 09:00
    // CEST on Monday 31 March.
    let schedules = json!([{"cron": "* 9-18 * * 1-5", "instances": 5}]);
    for (now, desired, index) in [
        ("2025-03-28T07:00:00Z", 1, None),
        ("2025-03-28T08:00:00Z", 5, Some(0)),
        ("2025-03-28T17:59:59Z", 5, Some(0)),
        ("2025-03-28T18:00:00Z", 1, None),
        ("2025-03-31T07:00:00Z", 5, Some(0)),
        ("2025-03-31T16:59:59Z", 5, Some(0)),
        ("2025-03-31T17:00:00Z", 1, None),
    ] {
        assert_eq!(
            scheduled_state("Europe/Berlin", schedules.clone(), now),
            target(desired, index),
            "{now}"
        );
    }
}

#[test]
fn schedule_day_of_month_and_day_of_week() {
    // Both restricted: either matches (15 June 2025 is a Sunday; 2 June a Monday; 3 June a Tuesday).
    let schedules = json!([{"cron": "* * 15 * 1", "instances": 2}]);
    for (now, desired, index) in [
        ("2025-06-15T10:00:00Z", 2, Some(0)),
        ("2025-06-02T10:00:00Z", 2, Some(0)),
        ("2025-06-03T10:00:00Z", 1, None),
    ] {
        assert_eq!(
            scheduled_state("UTC", schedules.clone(), now),
            target(desired, index),
            "{now}"
        );
    }
}

#[test]
fn schedule_with_null_instances_counts_zero_outside() {
    // SPEC: with `scheduling`, a null `instances` counts as 0 outside the schedules. Reading: the preset has a
    // pool, so its source outside the schedules is `instances` (desired 0), not `none` (which means no pool), and
    // its running prebuilds there are extraneous.
    let preset = preset(
        "p",
        json!({"scheduling": {"timezone": "UTC", "schedules": [{"cron": "* 9-18 * * 1-5", "instances": 2}]}}),
    );
    let workspaces = vec![
        running("w1", "p", &before(NOW, "2h")),
        running("w2", "p", &before(NOW, "1h")),
    ];
    let plan = plan_json(&snapshot(
        "2025-06-02T20:00:00Z",
        vec![preset.clone()],
        workspaces.clone(),
    ));
    assert_entry(
        &plan,
        "p",
        json!({"state": {"desired": 0, "actual": 2, "eligible": 2, "extraneous": 2},
               "actions": [delete(&["w1", "w2"], "extraneous")]}),
    );
    let plan = plan_json(&snapshot(NOW, vec![preset], workspaces));
    assert_entry(
        &plan,
        "p",
        json!({"state": {"desired": 2, "actual": 2, "eligible": 2, "target_source": "schedule",
                         "schedule_index": 0},
               "actions": []}),
    );
}

#[test]
fn schedule_scales_down_oldest_first() {
    // Leaving a schedule's window makes the surplus extraneous; the oldest go first.
    let p = preset(
        "p",
        json!({"instances": 1, "scheduling": {"timezone": "UTC", "schedules": [{"cron": "* 9-18 * * 1-5", "instances": 3}]}}),
    );
    let workspaces = vec![
        running("c", "p", "2025-06-02T09:30:00Z"),
        running("a", "p", "2025-06-02T09:10:00Z"),
        running("b", "p", "2025-06-02T09:20:00Z"),
    ];
    let plan = plan_json(&snapshot(
        "2025-06-02T19:00:00Z",
        vec![p.clone()],
        workspaces.clone(),
    ));
    assert_entry(
        &plan,
        "p",
        json!({"state": {"desired": 1, "actual": 3, "eligible": 3, "extraneous": 2},
               "actions": [delete(&["a", "b"], "extraneous")]}),
    );
    let plan = plan_json(&snapshot("2025-06-02T18:59:59Z", vec![p], workspaces));
    assert_eq!(actions(&plan, "p"), &json!([]));
}

// ---------------------------------------------------------------------------------------------------------------
// The creation-failure backoff (the seed; difference 4).
// ---------------------------------------------------------------------------------------------------------------

fn creation_snapshot(now: &str, failures: Value, workspaces: Vec<Value>, extra: Value) -> Value {
    with(
        snapshot(
            now,
            vec![preset(
                "p",
                with(
                    json!({"instances": 2, "creation_failures": failures}),
                    extra,
                ),
            )],
            workspaces,
        ),
        json!({"config": {"backoff_interval": "1m"}}),
    )
}

#[test]
fn creation_backoff_holds_create_until_last_failure_plus_consecutive_intervals() {
    // consecutive 3, last failure a minute ago, interval 1m: until = 11:59 + 3m = 12:02.
    let failures = json!({"consecutive": 3, "last_failure_at": before(NOW, "1m")});
    let plan = plan_json(&creation_snapshot(NOW, failures, vec![], json!({})));
    assert_entry(
        &plan,
        "p",
        json!({"state": {"desired": 2}, "actions": [],
               "held": [{"action": create(2), "reason": "creation_backoff", "until": "2025-06-02T12:02:00Z"}]}),
    );
}

#[test]
fn creation_backoff_is_released_exactly_at_until() {
    // Strictly before, as the seed's `Before`: held at `until - 1ms`, released at `until`.
    let failures = json!({"consecutive": 2, "last_failure_at": "2025-06-02T12:00:00Z"});
    let plan = plan_json(&creation_snapshot(
        "2025-06-02T12:01:59.999Z",
        failures.clone(),
        vec![],
        json!({}),
    ));
    assert_eq!(actions(&plan, "p"), &json!([]));
    assert_eq!(
        held(&plan, "p"),
        &json!([{"action": create(2), "reason": "creation_backoff", "until": "2025-06-02T12:02:00Z"}])
    );
    let plan = plan_json(&creation_snapshot(
        "2025-06-02T12:02:00Z",
        failures,
        vec![],
        json!({}),
    ));
    assert_entry(
        &plan,
        "p",
        json!({"state": {"desired": 2}, "actions": [create(2)]}),
    );
}

#[test]
fn creation_backoff_does_not_hold_deletes() {
    let failures = json!({"consecutive": 5, "last_failure_at": before(NOW, "10s")});
    // Expired: deleted while the replacement is held.
    let plan = plan_json(&creation_snapshot(
        NOW,
        failures.clone(),
        vec![
            running("expired", "p", &before(NOW, "2h")),
            running("r1", "p", &before(NOW, "10m")),
        ],
        json!({"ttl": "1h"}),
    ));
    assert_entry(
        &plan,
        "p",
        json!({"state": {"desired": 2, "actual": 2, "eligible": 1, "expired": 1},
               "actions": [delete(&["expired"], "expired")],
               "held": [{"action": create(1), "reason": "creation_backoff", "until": "2025-06-02T12:04:50Z"}]}),
    );
    // Extraneous: deleted; nothing to create, so nothing held.
    let plan = plan_json(&creation_snapshot(
        NOW,
        failures,
        vec![
            running("r1", "p", &before(NOW, "30m")),
            running("r2", "p", &before(NOW, "20m")),
            running("r3", "p", &before(NOW, "10m")),
        ],
        json!({}),
    ));
    assert_entry(
        &plan,
        "p",
        json!({"state": {"desired": 2, "actual": 3, "eligible": 3, "extraneous": 1},
               "actions": [delete(&["r1"], "extraneous")]}),
    );
}

#[test]
fn cleared_creation_failures_do_not_hold() {
    // A successful creation clears the record: consecutive 0 (with or without a stamp) or no record at all.
    for failures in [
        json!({"consecutive": 0, "last_failure_at": NOW}),
        json!({"consecutive": 0, "last_failure_at": null}),
        json!({"consecutive": 0}),
        json!(null),
    ] {
        let plan = plan_json(&creation_snapshot(NOW, failures.clone(), vec![], json!({})));
        assert_entry(
            &plan,
            "p",
            json!({"state": {"desired": 2}, "actions": [create(2)]}),
        );
    }
}

#[test]
fn creation_failure_with_a_server_error_holds_and_stays_healthy() {
    // Difference 4: Coder's TestValidationFailedPresets preset D (creation fails with a server error) retries every
    // tick; warmpool holds creation after its first failure, and the preset stays healthy.
    let failures = json!({"consecutive": 1, "last_failure_at": before(NOW, "10s")});
    let plan = plan_json(&creation_snapshot(NOW, failures, vec![], json!({})));
    assert_entry(
        &plan,
        "p",
        json!({"state": {"desired": 2}, "status": "healthy", "actions": [],
               "held": [{"action": create(2), "reason": "creation_backoff", "until": "2025-06-02T12:00:50Z"}]}),
    );
}

#[test]
fn db_backoff_wins_over_the_creation_backoff() {
    // Under a DB backoff nothing else is computed, so the create (and its creation_backoff hold) is not listed.
    let failures = json!({"consecutive": 3, "last_failure_at": before(NOW, "10s")});
    let plan = plan_json(&creation_snapshot(
        NOW,
        failures,
        vec![failed("f1", "p", &before(NOW, "5s"))],
        json!({}),
    ));
    assert_entry(
        &plan,
        "p",
        json!({"state": {"desired": 2}, "actions": [backoff("2025-06-02T12:00:55Z")]}),
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Gates: hold order, set_status, held shape.
// ---------------------------------------------------------------------------------------------------------------

/// A preset needing 1 create, with the hard limit reached by one failure older than the lookback (no DB backoff).
fn gated(extra: Value, paused_globally: bool, limited: bool) -> Value {
    let mut workspaces = vec![];
    if limited {
        workspaces.push(failed("f1", "p", &before(NOW, "2h")));
    }
    with(
        snapshot(
            NOW,
            vec![preset("p", with(json!({"instances": 1}), extra))],
            workspaces,
        ),
        json!({"config": {"backoff_interval": "1m", "backoff_lookback": "1h", "failure_hard_limit": 1},
               "settings": {"reconciliation_paused": paused_globally}}),
    )
}

#[test]
fn hold_order_paused_then_creation_backoff_then_hard_limited_then_validation_failed() {
    let backing_off = json!({"creation_failures": {"consecutive": 1, "last_failure_at": NOW}});
    let vf = json!({"status": "validation_failed"});
    let all = with(
        with(backing_off.clone(), vf.clone()),
        json!({"paused": true}),
    );
    let cases = [
        // All four: paused wins, no `until`.
        (
            gated(all.clone(), false, true),
            json!({"action": create(1), "reason": "paused"}),
        ),
        (
            gated(with(backing_off.clone(), vf.clone()), true, true),
            json!({"action": create(1), "reason": "paused"}),
        ),
        // Creation backoff, hard limit and validation_failed: creation_backoff, with `until`.
        (
            gated(with(backing_off.clone(), vf.clone()), false, true),
            json!({"action": create(1), "reason": "creation_backoff", "until": "2025-06-02T12:01:00Z"}),
        ),
        // Hard limit and validation_failed: hard_limited (the status stays validation_failed).
        (
            gated(vf.clone(), false, true),
            json!({"action": create(1), "reason": "hard_limited"}),
        ),
        (
            gated(vf.clone(), false, false),
            json!({"action": create(1), "reason": "validation_failed"}),
        ),
    ];
    for (s, want) in cases {
        let plan = plan_json(&s);
        assert_entry(
            &plan,
            "p",
            json!({"state": {"desired": 1}, "status": "validation_failed", "actions": [],
                   "held": [want]}),
        );
    }
}

#[test]
fn set_status_comes_first_and_is_never_held() {
    // Under the global pause and under the preset's pause: the live hard limit is stored, the create is held.
    for (paused_globally, extra) in [(true, json!({})), (false, json!({"paused": true}))] {
        let plan = plan_json(&gated(extra, paused_globally, true));
        assert_entry(
            &plan,
            "p",
            json!({"state": {"desired": 1}, "status": "hard_limited",
                   "actions": [set_status("hard_limited")],
                   "held": [{"action": create(1), "reason": "paused"}]}),
        );
    }
    // Under a DB backoff, with the status leaving hard_limited (one recent failure, limit 3: not limited).
    let s = with(
        snapshot(
            NOW,
            vec![preset(
                "p",
                json!({"instances": 1, "status": "hard_limited"}),
            )],
            vec![failed("f1", "p", &before(NOW, "10s"))],
        ),
        json!({"config": {"backoff_interval": "1m", "failure_hard_limit": 3}}),
    );
    assert_entry(
        &plan_json(&s),
        "p",
        json!({"state": {"desired": 1},
               "actions": [set_status("healthy"), backoff("2025-06-02T12:00:50Z")]}),
    );
    // Under a DB backoff, entering hard_limited (3 recent failures, limit 3).
    let failures: Vec<Value> = (1..=3)
        .map(|i| failed(&format!("f{i}"), "p", &before(NOW, &format!("{i}s"))))
        .collect();
    let s = with(
        snapshot(
            NOW,
            vec![preset("p", json!({"instances": 1}))],
            failures.clone(),
        ),
        json!({"config": {"backoff_interval": "1m", "failure_hard_limit": 3}}),
    );
    assert_entry(
        &plan_json(&s),
        "p",
        json!({"state": {"desired": 1}, "status": "hard_limited",
               "actions": [set_status("hard_limited"), backoff("2025-06-02T12:02:59Z")]}),
    );
    // Under the pause and a DB backoff: the backoff itself is held.
    let s = with(
        snapshot(NOW, vec![preset("p", json!({"instances": 1}))], failures),
        json!({"config": {"backoff_interval": "1m", "failure_hard_limit": 3},
               "settings": {"reconciliation_paused": true}}),
    );
    assert_entry(
        &plan_json(&s),
        "p",
        json!({"state": {"desired": 1}, "status": "hard_limited",
               "actions": [set_status("hard_limited")],
               "held": [{"action": backoff("2025-06-02T12:02:59Z"), "reason": "paused"}]}),
    );
}

#[test]
fn pause_holds_every_computed_action_in_order() {
    // Global pause: an inactive preset's cancel and deletes, an active preset's deletes and create, all held.
    let s = with(
        snapshot(
            NOW,
            vec![
                preset("old", json!({"active": false, "ttl": "1h"})),
                preset("p", json!({"instances": 2, "ttl": "1h"})),
            ],
            vec![
                workspace("pending", "old", &before(NOW, "1m"), "start", "pending"),
                running("old-r", "old", &before(NOW, "10m")),
                running("old-e", "old", &before(NOW, "3h")),
                running("p-e", "p", &before(NOW, "3h")),
                running("p-r", "p", &before(NOW, "10m")),
            ],
        ),
        json!({"settings": {"reconciliation_paused": true}}),
    );
    let plan = plan_json(&s);
    assert_entry(
        &plan,
        "old",
        json!({"state": {"actual": 2, "expired": 1, "starting": 1, "target_source": "inactive"},
               "actions": [],
               "held": [{"action": {"type": "cancel_pending"}, "reason": "paused"},
                        {"action": delete(&["old-e"], "expired"), "reason": "paused"},
                        {"action": delete(&["old-r"], "inactive"), "reason": "paused"}]}),
    );
    assert_entry(
        &plan,
        "p",
        json!({"state": {"desired": 2, "actual": 2, "eligible": 1, "expired": 1},
               "actions": [],
               "held": [{"action": delete(&["p-e"], "expired"), "reason": "paused"},
                        {"action": create(1), "reason": "paused"}]}),
    );
}

#[test]
fn per_preset_pause() {
    // Difference 6: pausing one preset holds only that preset's actions.
    let s = snapshot(
        NOW,
        vec![
            preset("paused", json!({"instances": 1, "paused": true})),
            preset("live", json!({"instances": 1})),
        ],
        vec![],
    );
    let plan = plan_json(&s);
    assert_entry(
        &plan,
        "paused",
        json!({"state": {"desired": 1}, "actions": [],
               "held": [{"action": create(1), "reason": "paused"}]}),
    );
    assert_entry(
        &plan,
        "live",
        json!({"state": {"desired": 1}, "actions": [create(1)]}),
    );
}

#[test]
fn held_entries_have_the_spec_shape() {
    let plan = plan_typed(&gated(
        json!({"creation_failures": {"consecutive": 2, "last_failure_at": NOW}}),
        false,
        false,
    ));
    let p = plan.preset(&PresetId::new("p")).unwrap();
    assert_eq!(
        p.held,
        vec![HeldAction {
            action: Action::Create { count: 1 },
            reason: HoldReason::CreationBackoff,
            until: Some(at("2025-06-02T12:02:00Z")),
        }]
    );
    // The exact JSON: `until` only for creation_backoff, no null keys.
    assert_eq!(
        serde_json::to_string(&p.held).unwrap(),
        r#"[{"action":{"type":"create","count":1},"reason":"creation_backoff","until":"2025-06-02T12:02:00Z"}]"#
    );
    let plan = plan_typed(&gated(json!({}), false, true));
    let p = plan.preset(&PresetId::new("p")).unwrap();
    assert_eq!(
        serde_json::to_string(&p.held).unwrap(),
        r#"[{"action":{"type":"create","count":1},"reason":"hard_limited"}]"#
    );
    // A plan reads back as the same typed value.
    let back: PresetPlan = serde_json::from_value(serde_json::to_value(p).unwrap()).unwrap();
    assert_eq!(&back, p);
}

// ---------------------------------------------------------------------------------------------------------------
// Pools, owners, order.
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn no_pool_without_instances_or_scheduling() {
    // `instances: null` without scheduling: target_source none, desired 0, its prebuilds extraneous, and neither
    // backed off (recent failures) nor hard-limited (limit 1 reached); a stored hard_limited returns to healthy.
    let s = with(
        snapshot(
            NOW,
            vec![preset("p", json!({"status": "hard_limited"}))],
            vec![
                running("w2", "p", &before(NOW, "1h")),
                running("w1", "p", &before(NOW, "2h")),
                failed("f1", "p", &before(NOW, "1s")),
            ],
        ),
        json!({"config": {"backoff_interval": "1h", "failure_hard_limit": 1}}),
    );
    assert_entry(
        &plan_json(&s),
        "p",
        json!({"state": {"actual": 2, "eligible": 2, "extraneous": 2, "target_source": "none"},
               "actions": [set_status("healthy"), delete(&["w1", "w2"], "extraneous")]}),
    );
}

#[test]
fn claimed_workspaces_are_ignored() {
    // Claimed workspaces of every kind: not counted, not deleted, not backoff or hard-limit candidates, not
    // cancelled.
    let claimed = |w: Value| with(w, json!({"owner": "alice"}));
    let s = with(
        snapshot(
            NOW,
            vec![
                preset("p", json!({"instances": 1, "ttl": "1h"})),
                preset("old", json!({"active": false})),
            ],
            vec![
                claimed(running("c-run", "p", &before(NOW, "10m"))),
                claimed(running("c-exp", "p", &before(NOW, "2h"))),
                claimed(failed("c-f1", "p", &before(NOW, "1s"))),
                claimed(in_progress("c-start", "p", NOW, "start")),
                claimed(running("c-old", "old", &before(NOW, "10m"))),
                claimed(workspace("c-pend", "old", NOW, "start", "pending")),
            ],
        ),
        json!({"config": {"backoff_interval": "1h", "failure_hard_limit": 1}}),
    );
    let plan = plan_json(&s);
    assert_entry(
        &plan,
        "p",
        json!({"state": {"desired": 1}, "actions": [create(1)]}),
    );
    assert_entry(
        &plan,
        "old",
        json!({"state": {"target_source": "inactive"}, "actions": []}),
    );
}

#[test]
fn delete_ids_are_oldest_first_then_by_id_bytes() {
    // Ties on created_at are broken by id compared as bytes: "B" < "a", "w10" < "w9".
    let t0 = before(NOW, "3h");
    let t1 = before(NOW, "2h");
    let t2 = before(NOW, "4h");
    let ids_at = [
        ("w9", &t1),
        ("a", &t0),
        ("w10", &t1),
        ("B", &t0),
        ("z", &t2),
    ];
    let order = ["z", "B", "a", "w10", "w9"];
    // Inactive: all of them.
    let ws = ids_at.iter().map(|(id, t)| running(id, "old", t)).collect();
    let plan = plan_json(&snapshot(
        NOW,
        vec![preset("old", json!({"active": false}))],
        ws,
    ));
    assert_eq!(actions(&plan, "old"), &json!([delete(&order, "inactive")]));
    // Expired (invalidated): all of them.
    let ws = ids_at.iter().map(|(id, t)| running(id, "p", t)).collect();
    let plan = plan_json(&snapshot(
        NOW,
        vec![preset("p", json!({"instances": 0, "invalidated_at": NOW}))],
        ws,
    ));
    assert_eq!(actions(&plan, "p"), &json!([delete(&order, "expired")]));
    // Extraneous: the 4 oldest of 5, desired 1.
    let ws = ids_at.iter().map(|(id, t)| running(id, "p", t)).collect();
    let plan = plan_json(&snapshot(
        NOW,
        vec![preset("p", json!({"instances": 1}))],
        ws,
    ));
    assert_eq!(
        actions(&plan, "p"),
        &json!([delete(&order[..4], "extraneous")])
    );
    // Typed: the same ids as WorkspaceIds with the reason.
    let ws = ids_at.iter().map(|(id, t)| running(id, "p", t)).collect();
    let typed = plan_typed(&snapshot(
        NOW,
        vec![preset("p", json!({"instances": 3}))],
        ws,
    ));
    assert_eq!(
        typed.presets[0].actions,
        vec![Action::Delete {
            workspaces: vec![WorkspaceId::new("z"), WorkspaceId::new("B")],
            reason: DeleteReason::Extraneous,
        }]
    );
}

#[test]
fn inactive_presets_delete_their_expired_prebuilds() {
    // Difference 2: Coder leaks an inactive preset's expired prebuilds; warmpool deletes them (reason expired),
    // then the rest of its running ones (inactive). Failed, stopped and in-progress prebuilds are left alone.
    let s = snapshot(
        NOW,
        vec![preset(
            "old",
            json!({"active": false, "instances": 2, "ttl": "1h", "invalidated_at": before(NOW, "30m")}),
        )],
        vec![
            workspace("pending", "old", &before(NOW, "1m"), "start", "pending"),
            running("fresh", "old", &before(NOW, "10m")),
            running("ttl", "old", &before(NOW, "2h")),
            running("inv", "old", &before(NOW, "40m")),
            failed("failed", "old", &before(NOW, "5m")),
            workspace("stopped", "old", &before(NOW, "5h"), "stop", "succeeded"),
            in_progress("stopping", "old", &before(NOW, "5h"), "stop"),
            in_progress("deleting", "old", &before(NOW, "5h"), "delete"),
            workspace("canceled", "old", &before(NOW, "5h"), "start", "canceled"),
        ],
    );
    assert_entry(
        &plan_json(&s),
        "old",
        json!({"state": {"actual": 3, "expired": 2, "starting": 1, "stopping": 1, "deleting": 1,
                         "target_source": "inactive"},
               "actions": [{"type": "cancel_pending"}, delete(&["ttl", "inv"], "expired"),
                           delete(&["fresh"], "inactive")]}),
    );
}

#[test]
fn only_first_pending_start_builds_that_no_worker_took_are_cancelled() {
    // "Pending on an inactive version": build 1, start, pending, not picked up, not on the active version.
    let s = |w: Value| snapshot(NOW, vec![preset("old", json!({"active": false}))], vec![w]);
    let pending = workspace("w", "old", NOW, "start", "pending");
    for (w, cancels) in [
        (pending.clone(), true),
        (
            with(pending.clone(), json!({"latest_build": {"number": 2}})),
            false,
        ),
        (
            with(
                pending.clone(),
                json!({"latest_build": {"picked_up": true}}),
            ),
            false,
        ),
        (
            with(
                pending.clone(),
                json!({"latest_build": {"active_version": true}}),
            ),
            false,
        ),
        (
            with(
                pending.clone(),
                json!({"latest_build": {"status": "running"}}),
            ),
            false,
        ),
        (
            with(pending, json!({"latest_build": {"transition": "stop"}})),
            false,
        ),
    ] {
        let want = if cancels {
            json!([{"type": "cancel_pending"}])
        } else {
            json!([])
        };
        assert_eq!(actions(&plan_json(&s(w.clone())), "old"), &want, "{w}");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Status: hard limit (live), validation_failed, inactive.
// ---------------------------------------------------------------------------------------------------------------

fn limit_snapshot(limit: u32, status: &str, workspaces: Vec<Value>) -> Value {
    with(
        snapshot(
            NOW,
            vec![preset(
                "p",
                json!({"instances": 2, "ttl": "1h", "status": status}),
            )],
            workspaces,
        ),
        // A zero backoff interval: the failures below (a minute or more old) never back off.
        json!({"config": {"backoff_interval": "0s", "backoff_lookback": "1h", "failure_hard_limit": limit}}),
    )
}

#[test]
fn coder_hard_limit_cases() {
    // Reference 7.1: one failed prebuild with limit 1 is hard-limited, nothing is created, status hard_limited.
    let ws = vec![failed("f1", "p", &before(NOW, "1m"))];
    assert_entry(
        &plan_json(&limit_snapshot(1, "healthy", ws.clone())),
        "p",
        json!({"state": {"desired": 2}, "status": "hard_limited",
               "actions": [set_status("hard_limited")],
               "held": [{"action": create(2), "reason": "hard_limited"}]}),
    );
    // Limit 2: not limited, created, healthy.
    assert_entry(
        &plan_json(&limit_snapshot(2, "healthy", ws)),
        "p",
        json!({"state": {"desired": 2}, "actions": [create(2)]}),
    );
}

#[test]
fn hard_limit_does_not_block_deletion() {
    // TestHardLimitedPresetShouldNotBlockDeletion: expired prebuilds are still deleted.
    let ws = vec![
        running("expired", "p", &before(NOW, "3h")),
        failed("f1", "p", &before(NOW, "1m")),
        failed("f2", "p", &before(NOW, "2m")),
    ];
    assert_entry(
        &plan_json(&limit_snapshot(2, "hard_limited", ws)),
        "p",
        json!({"state": {"desired": 2, "actual": 1, "expired": 1}, "status": "hard_limited",
               "actions": [delete(&["expired"], "expired")],
               "held": [{"action": create(2), "reason": "hard_limited"}]}),
    );
}

#[test]
fn hard_limit_is_live() {
    // Difference 9: the stored hard_limited returns to healthy once the newest `failure_hard_limit` candidates are
    // no longer all failed (here a manual build of an older workspace succeeded after the failures).
    let ws = vec![
        failed("f1", "p", &before(NOW, "3m")),
        failed("f2", "p", &before(NOW, "2m")),
        running("ok", "p", &before(NOW, "1m")),
    ];
    assert_entry(
        &plan_json(&limit_snapshot(2, "hard_limited", ws)),
        "p",
        json!({"state": {"desired": 2, "actual": 1, "eligible": 1},
               "actions": [set_status("healthy"), create(1)]}),
    );
    // Fewer candidates than the limit: not limited either (an admin deleted failed prebuilds).
    let ws = vec![failed("f2", "p", &before(NOW, "2m"))];
    assert_entry(
        &plan_json(&limit_snapshot(2, "hard_limited", ws)),
        "p",
        json!({"state": {"desired": 2}, "actions": [set_status("healthy"), create(2)]}),
    );
    // The newest two failed although an older one succeeded: limited, stays hard_limited (no set_status).
    let ws = vec![
        running("ok", "p", &before(NOW, "3m")),
        failed("f1", "p", &before(NOW, "2m")),
        failed("f2", "p", &before(NOW, "1m")),
    ];
    assert_entry(
        &plan_json(&limit_snapshot(2, "hard_limited", ws)),
        "p",
        json!({"state": {"desired": 2, "actual": 1, "eligible": 1}, "status": "hard_limited",
               "actions": [], "held": [{"action": create(1), "reason": "hard_limited"}]}),
    );
}

#[test]
fn failure_hard_limit_zero_disables_it() {
    let ws = (1..=5)
        .map(|i| failed(&format!("f{i}"), "p", &before(NOW, &format!("{i}m"))))
        .collect::<Vec<_>>();
    assert_entry(
        &plan_json(&limit_snapshot(0, "healthy", ws.clone())),
        "p",
        json!({"state": {"desired": 2}, "actions": [create(2)]}),
    );
    assert_entry(
        &plan_json(&limit_snapshot(0, "hard_limited", ws)),
        "p",
        json!({"state": {"desired": 2}, "actions": [set_status("healthy"), create(2)]}),
    );
}

#[test]
fn validation_failed_wins_and_holds_creates_but_not_deletes() {
    // validation_failed holds only the create: the expired prebuild is deleted.
    let ws = vec![
        running("expired", "p", &before(NOW, "3h")),
        running("r1", "p", &before(NOW, "10m")),
    ];
    assert_entry(
        &plan_json(&limit_snapshot(1, "validation_failed", ws)),
        "p",
        json!({"state": {"desired": 2, "actual": 2, "eligible": 1, "expired": 1},
               "status": "validation_failed",
               "actions": [delete(&["expired"], "expired")],
               "held": [{"action": create(1), "reason": "validation_failed"}]}),
    );
    // Extraneous deletes are not held either, and the status stays validation_failed (no set_status) even while
    // the hard limit holds (the newest candidate, f1, failed; limit 1).
    let ws = vec![
        running("r1", "p", &before(NOW, "30m")),
        running("r2", "p", &before(NOW, "20m")),
        running("r3", "p", &before(NOW, "10m")),
        failed("f1", "p", &before(NOW, "1m")),
    ];
    assert_entry(
        &plan_json(&limit_snapshot(1, "validation_failed", ws)),
        "p",
        json!({"state": {"desired": 2, "actual": 3, "eligible": 3, "extraneous": 1},
               "status": "validation_failed",
               "actions": [delete(&["r1"], "extraneous")]}),
    );
}

#[test]
fn inactive_preset_keeps_its_input_status() {
    // Whatever the failures say (limit 1 reached on the active version's builds), an inactive preset's status is
    // carried unchanged, and it is never hard-limited or backed off (difference 8).
    for status in ["healthy", "hard_limited", "validation_failed"] {
        let s = with(
            snapshot(
                NOW,
                vec![preset("old", json!({"active": false, "status": status}))],
                vec![
                    with(
                        failed("f1", "old", &before(NOW, "1s")),
                        json!({"latest_build": {"active_version": true}}),
                    ),
                    running("r1", "old", &before(NOW, "1h")),
                ],
            ),
            json!({"config": {"backoff_interval": "1h", "failure_hard_limit": 1}}),
        );
        assert_entry(
            &plan_json(&s),
            "old",
            json!({"state": {"actual": 1, "target_source": "inactive"}, "status": status,
                   "actions": [delete(&["r1"], "inactive")]}),
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Other deliberate differences.
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn backoff_ranks_against_the_scheduled_target() {
    // Difference 7: base instances 0, a schedule raises the target to 2 (Monday noon). The two newest candidates
    // failed recently: the preset backs off. Coder ranks against the base 0 and would never back off.
    let scheduling =
        json!({"timezone": "UTC", "schedules": [{"cron": "* 9-18 * * 1-5", "instances": 2}]});
    let s = with(
        snapshot(
            NOW,
            vec![preset(
                "p",
                json!({"instances": 0, "scheduling": scheduling}),
            )],
            vec![
                failed("f1", "p", &before(NOW, "20s")),
                failed("f2", "p", &before(NOW, "10s")),
            ],
        ),
        json!({"config": {"backoff_interval": "1m", "failure_hard_limit": 0}}),
    );
    assert_entry(
        &plan_json(&s),
        "p",
        json!({"state": {"desired": 2, "target_source": "schedule", "schedule_index": 0},
               "actions": [backoff("2025-06-02T12:01:50Z")]}),
    );
    // And the other way: base 2, a schedule lowers the target to 1. The newest candidate succeeded, so the failure
    // second in rank does not back off (Coder, ranking against 2, would).
    let scheduling =
        json!({"timezone": "UTC", "schedules": [{"cron": "* 9-18 * * 1-5", "instances": 1}]});
    let s = with(
        snapshot(
            NOW,
            vec![preset(
                "p",
                json!({"instances": 2, "scheduling": scheduling}),
            )],
            vec![
                failed("f1", "p", &before(NOW, "20s")),
                running("ok", "p", &before(NOW, "10s")),
            ],
        ),
        json!({"config": {"backoff_interval": "1m", "failure_hard_limit": 0}}),
    );
    assert_entry(
        &plan_json(&s),
        "p",
        json!({"state": {"desired": 1, "actual": 1, "eligible": 1, "target_source": "schedule",
                         "schedule_index": 0},
               "actions": []}),
    );
}

#[test]
fn backoff_and_hard_limit_apply_to_active_presets_only() {
    // Difference 8. Coder can back off a deprecated template's active version; in warmpool that preset is inactive,
    // so it is only wound down: its running prebuild is deleted despite the recent failures on the active version.
    let s = with(
        snapshot(
            NOW,
            vec![preset("p", json!({"active": false, "instances": 2}))],
            vec![
                with(
                    failed("f1", "p", &before(NOW, "10s")),
                    json!({"latest_build": {"active_version": true}}),
                ),
                with(
                    failed("f2", "p", &before(NOW, "5s")),
                    json!({"latest_build": {"active_version": true}}),
                ),
                with(
                    running("r1", "p", &before(NOW, "1h")),
                    json!({"latest_build": {"active_version": true}}),
                ),
            ],
        ),
        json!({"config": {"backoff_interval": "1h", "failure_hard_limit": 2}}),
    );
    assert_entry(
        &plan_json(&s),
        "p",
        json!({"state": {"actual": 1, "target_source": "inactive"},
               "actions": [delete(&["r1"], "inactive")]}),
    );
}

#[test]
fn pool_settings_are_taken_as_given() {
    // Difference 10 (pool settings change in place): the planner keeps a resized pool's prebuilds and removes only
    // the surplus, oldest first; a new TTL expires only the prebuilds older than it. Nothing is deleted as
    // `inactive`: the preset stays the same active preset.
    let ws = vec![
        running("r1", "p", &before(NOW, "3h")),
        running("r2", "p", &before(NOW, "2h")),
        running("r3", "p", &before(NOW, "1h")),
    ];
    let plan = plan_json(&snapshot(
        NOW,
        vec![preset("p", json!({"instances": 2}))],
        ws.clone(),
    ));
    assert_eq!(actions(&plan, "p"), &json!([delete(&["r1"], "extraneous")]));
    let plan = plan_json(&snapshot(
        NOW,
        vec![preset("p", json!({"instances": 3, "ttl": "150m"}))],
        ws,
    ));
    assert_eq!(
        actions(&plan, "p"),
        &json!([delete(&["r1"], "expired"), create(1)])
    );
}

#[test]
fn plan_lists_presets_in_input_order() {
    let ids = ["zeta", "alpha", "mid"];
    let s = snapshot(
        NOW,
        ids.iter()
            .map(|id| preset(id, json!({"instances": 1})))
            .collect(),
        vec![],
    );
    let plan = plan_json(&s);
    let got: Vec<&str> = plan["presets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, ids);
}
