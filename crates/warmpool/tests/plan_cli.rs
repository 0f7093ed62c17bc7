//! Black-box tests of `warmpool plan`: the real binary, JSON in, JSON out, exit statuses and error paths.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

fn warmpool() -> Command {
    Command::new(env!("CARGO_BIN_EXE_warmpool"))
}

fn plan_stdin(input: &[u8]) -> Output {
    let mut child = warmpool()
        .args(["plan", "--input", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// The SPEC's example snapshot, as a JSON value to mutate.
fn spec_input() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("spec-example-input.json")).unwrap())
        .unwrap()
}

#[test]
fn spec_example_prints_the_spec_output() {
    let out = warmpool()
        .args(["plan", "--input", &fixture("spec-example-input.json")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    let want: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("spec-example-output.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(got, want);
}

#[test]
fn reads_standard_input_by_default_and_with_dash() {
    let input = std::fs::read(fixture("spec-example-input.json")).unwrap();
    let with_dash = plan_stdin(&input);
    assert!(with_dash.status.success());
    let mut child = warmpool()
        .arg("plan")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let without = child.wait_with_output().unwrap();
    assert!(without.status.success());
    assert_eq!(with_dash.stdout, without.stdout);
}

#[test]
fn schedule_window_raises_the_target() {
    // 2025-06-02T08:00:00Z is Monday 10:00 in Berlin: inside `* 8-18 * * 1-5`.
    let mut input = spec_input();
    input["now"] = json!("2025-06-02T08:00:00Z");
    // Younger than the 3h TTL at that time.
    input["workspaces"][0]["created_at"] = json!("2025-06-02T07:00:00Z");
    let out = plan_stdin(input.to_string().as_bytes());
    assert!(out.status.success());
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let preset = &plan["presets"][0];
    assert_eq!(preset["state"]["desired"], 5);
    assert_eq!(preset["state"]["target_source"], "schedule");
    assert_eq!(preset["state"]["schedule_index"], 0);
    assert_eq!(preset["actions"], json!([{"type": "create", "count": 4}]));
}

/// Applies `edit` to the SPEC example and expects exit 2 with `path` in the message.
fn assert_refused(edit: impl FnOnce(&mut Value), path: &str) {
    let mut input = spec_input();
    edit(&mut input);
    assert_refused_text(&input.to_string(), path);
}

fn assert_refused_text(input: &str, path: &str) {
    let out = plan_stdin(input.as_bytes());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "input {input}\nstderr: {stderr}"
    );
    assert!(out.stdout.is_empty(), "nothing on stdout when refused");
    assert!(
        stderr.contains(path),
        "stderr {stderr:?} should name {path:?}"
    );
    assert_eq!(stderr.lines().count(), 1, "one error only: {stderr:?}");
}

#[test]
fn spec_error_example() {
    assert_refused(
        |v| {
            v["presets"][0]["scheduling"]["schedules"] = json!([
                {"cron": "* 8-11 * * 1-5", "instances": 5},
                {"cron": "0 12-18 * * 1-5", "instances": 3}
            ])
        },
        "presets[0].scheduling.schedules[1].cron: minute field must be *",
    );
}

#[test]
fn refuses_non_json_and_unreadable_files() {
    assert_refused_text("this is not json", "at line 1 column");
    assert_refused_text("", "EOF");
    assert_refused_text(
        "{\"now\": \"2025-06-02T03:00:00Z\", \"presets\": [], \"workspaces\": []} trailing",
        "trailing",
    );
    let out = warmpool()
        .args(["plan", "--input", "/nonexistent/snapshot.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/snapshot.json"));
    let dir = warmpool().args(["plan", "--input", "/"]).output().unwrap();
    assert_eq!(dir.status.code(), Some(2));
}

#[test]
fn refuses_missing_required_fields() {
    type Edit = dyn Fn(&mut Value);
    let cases: [(&Edit, &str); 11] = [
        (
            &|v| drop(v.as_object_mut().unwrap().remove("now")),
            "missing field `now`",
        ),
        (
            &|v| drop(v.as_object_mut().unwrap().remove("presets")),
            "missing field `presets`",
        ),
        (
            &|v| drop(v.as_object_mut().unwrap().remove("workspaces")),
            "missing field `workspaces`",
        ),
        (
            &|v| drop(v["presets"][0].as_object_mut().unwrap().remove("id")),
            "presets[0]: missing field `id`",
        ),
        (
            &|v| drop(v["presets"][0].as_object_mut().unwrap().remove("template")),
            "presets[0]: missing field `template`",
        ),
        (
            &|v| drop(v["presets"][0].as_object_mut().unwrap().remove("preset")),
            "presets[0]: missing field `preset`",
        ),
        (
            &|v| drop(v["presets"][0].as_object_mut().unwrap().remove("active")),
            "presets[0]: missing field `active`",
        ),
        (
            &|v| {
                drop(
                    v["workspaces"][0]
                        .as_object_mut()
                        .unwrap()
                        .remove("created_at"),
                )
            },
            "workspaces[0]: missing field `created_at`",
        ),
        (
            &|v| {
                drop(
                    v["workspaces"][0]
                        .as_object_mut()
                        .unwrap()
                        .remove("latest_build"),
                )
            },
            "workspaces[0]: missing field `latest_build`",
        ),
        (
            &|v| {
                drop(
                    v["workspaces"][0]["latest_build"]
                        .as_object_mut()
                        .unwrap()
                        .remove("number"),
                )
            },
            "workspaces[0].latest_build: missing field `number`",
        ),
        (
            &|v| {
                drop(
                    v["workspaces"][0]["latest_build"]
                        .as_object_mut()
                        .unwrap()
                        .remove("transition"),
                )
            },
            "workspaces[0].latest_build: missing field `transition`",
        ),
    ];
    for (edit, path) in cases {
        let mut input = spec_input();
        edit(&mut input);
        assert_refused_text(&input.to_string(), path);
    }
}

#[test]
fn refuses_unknown_keys_everywhere() {
    assert_refused(|v| v["extra"] = json!(1), "extra: unknown field `extra`");
    assert_refused(
        |v| v["config"]["interval"] = json!("30s"),
        "config.interval: unknown field `interval`",
    );
    assert_refused(
        |v| v["settings"]["paused"] = json!(true),
        "settings.paused: unknown field `paused`",
    );
    assert_refused(
        |v| v["presets"][0]["desired"] = json!(1),
        "presets[0].desired: unknown field `desired`",
    );
    assert_refused(
        |v| v["presets"][0]["scheduling"]["tz"] = json!("UTC"),
        "presets[0].scheduling.tz: unknown field `tz`",
    );
    assert_refused(
        |v| v["presets"][0]["scheduling"]["schedules"][0]["minute"] = json!(0),
        "presets[0].scheduling.schedules[0].minute: unknown field `minute`",
    );
    assert_refused(
        |v| v["presets"][0]["creation_failures"]["total"] = json!(0),
        "presets[0].creation_failures.total: unknown field `total`",
    );
    assert_refused(
        |v| v["workspaces"][0]["name"] = json!("x"),
        "workspaces[0].name: unknown field `name`",
    );
    assert_refused(
        |v| v["workspaces"][0]["latest_build"]["job"] = json!("x"),
        "workspaces[0].latest_build.job: unknown field `job`",
    );
}

#[test]
fn refuses_duplicate_and_unknown_ids() {
    assert_refused(
        |v| {
            let p = v["presets"][0].clone();
            v["presets"].as_array_mut().unwrap().push(p);
        },
        "presets[1].id: duplicate preset id \"p1\"",
    );
    assert_refused(
        |v| {
            let w = v["workspaces"][0].clone();
            v["workspaces"].as_array_mut().unwrap().push(w);
        },
        "workspaces[1].id: duplicate workspace id \"w1\"",
    );
    assert_refused(
        |v| v["workspaces"][0]["preset"] = json!("p9"),
        "workspaces[0].preset: unknown preset \"p9\"",
    );
    assert_refused(
        |v| v["presets"][0]["id"] = json!(""),
        "presets[0].id: must not be empty",
    );
    assert_refused(
        |v| v["workspaces"][0]["id"] = json!(""),
        "workspaces[0].id: must not be empty",
    );
}

#[test]
fn refuses_negative_and_out_of_range_counts() {
    assert_refused(
        |v| v["presets"][0]["instances"] = json!(-1),
        "presets[0].instances: must not be negative",
    );
    assert_refused(
        |v| v["presets"][0]["instances"] = json!(1001),
        "presets[0].instances: 1001 is out of range 0-1000",
    );
    assert_refused(
        |v| v["presets"][0]["scheduling"]["schedules"][0]["instances"] = json!(-5),
        "presets[0].scheduling.schedules[0].instances: must not be negative",
    );
    assert_refused(
        |v| v["presets"][0]["scheduling"]["schedules"][0]["instances"] = json!(5000),
        "presets[0].scheduling.schedules[0].instances: 5000 is out of range",
    );
    assert_refused(
        |v| v["presets"][0]["creation_failures"]["consecutive"] = json!(-1),
        "presets[0].creation_failures.consecutive: must not be negative",
    );
    assert_refused(
        |v| v["config"]["failure_hard_limit"] = json!(-3),
        "config.failure_hard_limit: must not be negative",
    );
    assert_refused(
        |v| v["workspaces"][0]["latest_build"]["number"] = json!(-1),
        "workspaces[0].latest_build.number: must not be negative",
    );
    assert_refused(
        |v| v["presets"][0]["instances"] = json!(1.5),
        "presets[0].instances: invalid type",
    );
}

#[test]
fn refuses_consecutive_failures_without_a_time() {
    assert_refused(
        |v| {
            v["presets"][0]["creation_failures"] =
                json!({"consecutive": 2, "last_failure_at": null})
        },
        "presets[0].creation_failures.last_failure_at: required when consecutive > 0",
    );
    assert_refused(
        |v| v["presets"][0]["creation_failures"] = json!({"consecutive": 1}),
        "presets[0].creation_failures.last_failure_at: required when consecutive > 0",
    );
}

#[test]
fn refuses_bad_schedules() {
    let schedules = "presets[0].scheduling.schedules";
    for (cron, message) in [
        ("0 8-18 * * 1-5", "minute field must be *"),
        ("* 8-18 * *", "expected 5 fields"),
        ("* 25 * * *", "hour field"),
        ("* 8 * * MON", "day-of-week field"),
        ("* 8 L * *", "day-of-month field"),
        ("* */2 * * *", "hour field"),
        ("* 8 * 13 *", "month field"),
    ] {
        assert_refused(
            |v| v["presets"][0]["scheduling"]["schedules"][0]["cron"] = json!(cron),
            &format!("{schedules}[0].cron: {message}"),
        );
    }
    assert_refused(
        |v| v["presets"][0]["scheduling"]["timezone"] = json!("Mars/Olympus_Mons"),
        "presets[0].scheduling.timezone: unknown time zone \"Mars/Olympus_Mons\"",
    );
    assert_refused(
        |v| {
            drop(
                v["presets"][0]["scheduling"]
                    .as_object_mut()
                    .unwrap()
                    .remove("timezone"),
            )
        },
        "presets[0].scheduling.timezone: required when schedules are given",
    );
    assert_refused(
        |v| {
            v["presets"][0]["scheduling"]["schedules"]
                .as_array_mut()
                .unwrap()
                .push(json!({"cron": "* 18-20 * * 5", "instances": 1}))
        },
        "presets[0].scheduling.schedules[1]: overlaps schedules[0]",
    );
}

#[test]
fn refuses_bad_timestamps_durations_and_enums() {
    assert_refused(
        |v| v["now"] = json!("yesterday"),
        "now: invalid RFC 3339 timestamp",
    );
    assert_refused(|v| v["now"] = json!(1_700_000_000), "now: invalid type");
    // Year 10000 in UTC cannot be written back as RFC 3339.
    assert_refused(
        |v| v["now"] = json!("9999-12-31T23:59:59-23:59"),
        "now: timestamp \"9999-12-31T23:59:59-23:59\" is outside years 0000-9999 in UTC",
    );
    assert_refused(
        |v| v["presets"][0]["ttl"] = json!("3 hours"),
        "presets[0].ttl: invalid duration",
    );
    assert_refused(
        |v| v["presets"][0]["ttl"] = json!("1w"),
        "presets[0].ttl: invalid duration",
    );
    assert_refused(
        |v| v["config"]["backoff_interval"] = json!("1m30"),
        "config.backoff_interval: invalid duration",
    );
    assert_refused(
        |v| v["config"]["backoff_lookback"] = json!(""),
        "config.backoff_lookback: empty duration",
    );
    assert_refused(
        |v| v["presets"][0]["invalidated_at"] = json!("2025-13-01T00:00:00Z"),
        "presets[0].invalidated_at: invalid RFC 3339 timestamp",
    );
    assert_refused(
        |v| v["workspaces"][0]["latest_build"]["created_at"] = json!("2025-06-02"),
        "workspaces[0].latest_build.created_at: invalid RFC 3339 timestamp",
    );
    assert_refused(
        |v| v["presets"][0]["status"] = json!("sick"),
        "presets[0].status: unknown variant `sick`",
    );
    assert_refused(
        |v| v["workspaces"][0]["latest_build"]["transition"] = json!("restart"),
        "workspaces[0].latest_build.transition: unknown variant `restart`",
    );
    assert_refused(
        |v| v["workspaces"][0]["latest_build"]["status"] = json!("done"),
        "workspaces[0].latest_build.status: unknown variant `done`",
    );
}

#[test]
fn optional_fields_take_their_defaults() {
    // The smallest valid snapshot: only the required fields.
    let input = json!({
        "now": "2025-06-02T03:00:00Z",
        "presets": [{"id": "p", "template": "t", "preset": "s", "active": true, "instances": 1}],
        "workspaces": [{"id": "w", "owner": "prebuilds", "preset": "p", "created_at": "2025-06-02T01:00:00Z",
                        "latest_build": {"number": 1, "transition": "start", "status": "succeeded",
                                         "created_at": "2025-06-02T01:00:00Z"}}]
    });
    let out = plan_stdin(input.to_string().as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        plan,
        json!({"presets": [{"id": "p", "template": "t", "preset": "s",
            "state": {"desired": 1, "actual": 1, "eligible": 1, "expired": 0, "extraneous": 0,
                      "starting": 0, "stopping": 0, "deleting": 0, "target_source": "instances"},
            "status": "healthy", "actions": [], "held": []}]})
    );
}

#[test]
fn output_timestamps_are_utc_with_z() {
    // A creation-failure hold: until = last_failure_at + 2 × 1m, given with an offset, printed in UTC.
    let mut input = spec_input();
    input["presets"][0]["creation_failures"] =
        json!({"consecutive": 2, "last_failure_at": "2025-06-02T04:59:30.5+02:00"});
    let out = plan_stdin(input.to_string().as_bytes());
    assert!(out.status.success());
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        plan["presets"][0]["held"],
        json!([{"action": {"type": "create", "count": 1}, "reason": "creation_backoff",
                "until": "2025-06-02T03:01:30.500Z"}])
    );
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_exit_0_or_2(input in proptest::collection::vec(any::<u8>(), 0..200)) {
            let out = plan_stdin(&input);
            prop_assert!(matches!(out.status.code(), Some(0 | 2)), "status {:?}", out.status);
        }

        #[test]
        fn mangled_spec_example_exits_0_or_2(key in "[a-z_]{1,16}", value in prop_oneof![
            Just(json!(null)), Just(json!(-1)), Just(json!("x")), Just(json!([])), Just(json!({})),
            Just(json!(1e300)), Just(json!(u64::MAX)), Just(json!(true))
        ], target in 0usize..6) {
            let mut input = spec_input();
            let slot = match target {
                0 => &mut input,
                1 => &mut input["presets"][0],
                2 => &mut input["presets"][0]["scheduling"],
                3 => &mut input["presets"][0]["scheduling"]["schedules"][0],
                4 => &mut input["workspaces"][0],
                _ => &mut input["workspaces"][0]["latest_build"],
            };
            slot[key.as_str()] = value;
            let out = plan_stdin(input.to_string().as_bytes());
            prop_assert!(matches!(out.status.code(), Some(0 | 2)), "status {:?}", out.status);
        }
    }
}
