//! Shared builders for the planner's integration tests.
//!
//! Scenario tests write snapshots as JSON, close to SPEC section 3, read them with
//! [`warmpool_core::snapshot_json::from_json`] (so every fixture also goes through the real reader), and compare
//! plans as `serde_json::Value`s. The helpers only fill in boilerplate (template name, build numbers, zero counts);
//! every comparison stays an exact equality of a whole plan entry.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};
use warmpool_core::plan::format_timestamp;
use warmpool_core::snapshot_json::from_json;
use warmpool_core::{Duration, Plan, Snapshot};

/// A Monday, noon UTC: the default `now` of the scenarios.
pub const NOW: &str = "2025-06-02T12:00:00Z";

/// Parses an RFC 3339 instant.
pub fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|err| panic!("bad timestamp {text:?}: {err}"))
        .to_utc()
}

/// Formats an instant as the plan does (UTC, `Z`, fractional part only when not zero).
pub fn ts(at: DateTime<Utc>) -> String {
    format_timestamp(&at)
}

fn delta(text: &str) -> TimeDelta {
    Duration::parse(text)
        .unwrap_or_else(|err| panic!("bad duration {text:?}: {err}"))
        .to_time_delta()
}

/// `base - d`, with `d` in SPEC's duration grammar (`"1h"`, `"5s1ms"`).
pub fn before(base: &str, d: &str) -> String {
    ts(at(base) - delta(d))
}

/// `base + d`, with `d` in SPEC's duration grammar.
pub fn after(base: &str, d: &str) -> String {
    ts(at(base) + delta(d))
}

/// Merges `extra` into `target`: objects key by key (recursively), anything else replaces.
pub fn merge(target: &mut Value, extra: Value) {
    match (target, extra) {
        (Value::Object(t), Value::Object(e)) => {
            for (k, v) in e {
                match t.get_mut(&k) {
                    Some(slot) if slot.is_object() && v.is_object() => merge(slot, v),
                    _ => {
                        t.insert(k, v);
                    }
                }
            }
        }
        (t, e) => *t = e,
    }
}

/// `value` with `extra` merged in.
pub fn with(mut value: Value, extra: Value) -> Value {
    merge(&mut value, extra);
    value
}

/// An active preset of template `devbox` whose preset name is its id, with `extra` merged in.
pub fn preset(id: &str, extra: Value) -> Value {
    with(
        json!({"id": id, "template": "devbox", "preset": id, "active": true}),
        extra,
    )
}

/// A prebuild (owner `prebuilds`) whose latest build has this transition and status and was created with the
/// workspace. `start` builds are build 1, `stop` and `delete` builds build 2.
pub fn workspace(
    id: &str,
    preset: &str,
    created_at: &str,
    transition: &str,
    status: &str,
) -> Value {
    let number = if transition == "start" { 1 } else { 2 };
    json!({
        "id": id, "owner": "prebuilds", "preset": preset, "created_at": created_at,
        "latest_build": {"number": number, "transition": transition, "status": status, "created_at": created_at}
    })
}

/// A running prebuild: latest build a succeeded `start` (ready by default).
pub fn running(id: &str, preset: &str, created_at: &str) -> Value {
    workspace(id, preset, created_at, "start", "succeeded")
}

/// A prebuild whose first `start` build, created at `build_at`, failed.
pub fn failed(id: &str, preset: &str, build_at: &str) -> Value {
    workspace(id, preset, build_at, "start", "failed")
}

/// A prebuild whose latest build (`transition`) is in progress (`running` job status).
pub fn in_progress(id: &str, preset: &str, created_at: &str, transition: &str) -> Value {
    workspace(id, preset, created_at, transition, "running")
}

/// A snapshot at `now`, with default config and settings.
pub fn snapshot(now: &str, presets: Vec<Value>, workspaces: Vec<Value>) -> Value {
    json!({"now": now, "presets": presets, "workspaces": workspaces})
}

/// Reads a JSON snapshot; a fixture that does not read is a broken test.
pub fn read(snapshot: &Value) -> Snapshot {
    from_json(&snapshot.to_string())
        .unwrap_or_else(|err| panic!("fixture does not read: {err}\n{snapshot:#}"))
}

/// Plans a JSON snapshot.
pub fn plan_typed(snapshot: &Value) -> Plan {
    warmpool_core::plan(&read(snapshot))
}

/// Plans a JSON snapshot and returns the plan as JSON.
pub fn plan_json(snapshot: &Value) -> Value {
    serde_json::to_value(plan_typed(snapshot)).unwrap()
}

/// The plan entry of preset `id`.
pub fn entry<'a>(plan: &'a Value, id: &str) -> &'a Value {
    plan["presets"]
        .as_array()
        .and_then(|presets| presets.iter().find(|p| p["id"] == id))
        .unwrap_or_else(|| panic!("no plan entry for preset {id:?} in {plan:#}"))
}

/// A full `state` object: zero counts and `target_source` `instances`, with `fields` merged in.
pub fn state(fields: Value) -> Value {
    with(
        json!({"desired": 0, "actual": 0, "eligible": 0, "expired": 0, "extraneous": 0,
               "starting": 0, "stopping": 0, "deleting": 0, "target_source": "instances"}),
        fields,
    )
}

/// Asserts that preset `id`'s plan entry equals `expected` exactly. `expected` holds `state` (expanded with
/// [`state`]), `actions`, and optionally `status` (default `healthy`) and `held` (default `[]`); `id`,
/// `template` (`devbox`) and `preset` (the id) are filled in unless given.
pub fn assert_entry(plan: &Value, id: &str, expected: Value) {
    let mut want = with(
        json!({"id": id, "template": "devbox", "preset": id, "status": "healthy", "held": []}),
        expected,
    );
    let st = want["state"].take();
    want["state"] = state(st);
    let got = entry(plan, id);
    assert_eq!(
        got,
        &want,
        "plan entry of {id:?} differs\n got: {}\nwant: {}",
        serde_json::to_string_pretty(got).unwrap(),
        serde_json::to_string_pretty(&want).unwrap()
    );
}

/// The `actions` of preset `id`.
pub fn actions<'a>(plan: &'a Value, id: &str) -> &'a Value {
    &entry(plan, id)["actions"]
}

/// The `held` list of preset `id`.
pub fn held<'a>(plan: &'a Value, id: &str) -> &'a Value {
    &entry(plan, id)["held"]
}
