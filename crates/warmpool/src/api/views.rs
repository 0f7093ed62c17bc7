//! The JSON shapes the API answers with (SPEC section 6). Sensitive parameter values never leave the server:
//! they are answered as `***`.

use serde_json::{Value, json};
use warmpool_core::plan::{Action, PresetPlan, format_timestamp};
use warmpool_store::{BuildRecord, TemplateInfo, WorkspaceRecord};

fn ts(at: &chrono::DateTime<chrono::Utc>) -> Value {
    Value::String(format_timestamp(at))
}

/// `{"id", "name", "owner", "template", "template_version", "preset", "status", "ready", "outputs",
/// "created_at", "claimed_at"}`; keys without a value are left out.
pub fn workspace(w: &WorkspaceRecord) -> Value {
    let mut v = json!({
        "id": w.id.as_str(),
        "name": w.name,
        "owner": w.owner,
        "template": w.template,
        "template_version": w.template_version,
        "status": w.status().as_str(),
        "ready": w.ready(),
        "created_at": ts(&w.created_at),
    });
    let map = v.as_object_mut();
    if let Some(map) = map {
        if let Some(preset) = &w.preset {
            map.insert("preset".into(), json!(preset));
        }
        if let Some(outputs) = &w.outputs {
            map.insert("outputs".into(), outputs.clone());
        }
        if let Some(at) = &w.claimed_at {
            map.insert("claimed_at".into(), ts(at));
        }
    }
    v
}

pub fn build(b: &BuildRecord) -> Value {
    let mut v = json!({
        "id": b.id.as_str(),
        "workspace_id": b.workspace_id.as_str(),
        "number": b.number,
        "transition": b.transition.as_str(),
        "status": b.status.as_str(),
        "template_version": b.template_version,
        "initiator": b.initiator,
        "is_prebuild": b.is_prebuild,
        "is_claim": b.is_claim,
        "created_at": ts(&b.created_at),
        "attempts": b.attempts,
    });
    if let Some(map) = v.as_object_mut() {
        if let Some(at) = &b.started_at {
            map.insert("started_at".into(), ts(at));
        }
        if let Some(at) = &b.completed_at {
            map.insert("completed_at".into(), ts(at));
        }
        if let Some(error) = &b.error {
            map.insert("error".into(), json!(error));
        }
        if let Some(at) = &b.not_before {
            map.insert("retry_at".into(), ts(at));
        }
    }
    v
}

pub fn template(t: &TemplateInfo) -> Value {
    let versions: Vec<Value> = t
        .versions
        .iter()
        .map(|v| {
            let sensitive: Vec<&str> = v
                .parameters
                .iter()
                .filter(|p| p.sensitive)
                .map(|p| p.name.as_str())
                .collect();
            let parameters: Vec<Value> = v
                .parameters
                .iter()
                .map(|p| {
                    let mut out =
                        json!({"name": p.name, "required": p.required, "sensitive": p.sensitive});
                    if let (Some(default), Some(map)) = (&p.default, out.as_object_mut()) {
                        let shown = if p.sensitive { "***" } else { default.as_str() };
                        map.insert("default".into(), json!(shown));
                    }
                    out
                })
                .collect();
            let presets: Vec<Value> = v
                .presets
                .iter()
                .map(|p| {
                    let values: serde_json::Map<String, Value> = p
                        .parameters
                        .iter()
                        .map(|(k, val)| {
                            let shown = if sensitive.contains(&k.as_str()) {
                                "***"
                            } else {
                                val.as_str()
                            };
                            (k.clone(), json!(shown))
                        })
                        .collect();
                    let mut out = json!({
                        "name": p.name,
                        "parameters": values,
                        "status": p.status.as_str(),
                        "paused": p.paused,
                    });
                    if let Some(map) = out.as_object_mut() {
                        if let Some(n) = p.pool.instances {
                            map.insert("instances".into(), json!(n));
                        }
                        if let Some(ttl) = p.pool.ttl {
                            map.insert("ttl".into(), json!(ttl.to_string()));
                        }
                        if let Some(s) = &p.pool.scheduling {
                            let schedules: Vec<Value> = s
                                .schedules()
                                .iter()
                                .map(|s| json!({"cron": s.cron_text, "instances": s.instances}))
                                .collect();
                            map.insert(
                                "scheduling".into(),
                                json!({"timezone": s.timezone().name(), "schedules": schedules}),
                            );
                        }
                        if let Some(at) = &p.invalidated_at {
                            map.insert("invalidated_at".into(), ts(at));
                        }
                    }
                    out
                })
                .collect();
            let mut out = json!({
                "name": v.name,
                "active": v.active,
                "applied_by": v.applied_by.as_str(),
                "created_at": ts(&v.created_at),
                "provisioner": v.definition.provisioner,
                "command": v.definition.command,
                "timeout": v.definition.timeout.to_string(),
                "parameters": parameters,
                "presets": presets,
            });
            if let (Some(revision), Some(map)) = (&v.definition.revision, out.as_object_mut()) {
                map.insert("revision".into(), json!(revision));
            }
            out
        })
        .collect();
    let mut out = json!({
        "name": t.name,
        "claim_build": t.claim_build,
        "applied_by": t.applied_by.as_str(),
        "created_at": ts(&t.created_at),
        "updated_at": ts(&t.updated_at),
        "deleted": t.deleted_at.is_some(),
        "versions": versions,
    });
    if let Some(map) = out.as_object_mut() {
        if let Some(active) = &t.active_version {
            map.insert("active_version".into(), json!(active));
        }
        if let Some(max) = t.max_workspaces {
            map.insert("max_workspaces".into(), json!(max));
        }
    }
    out
}

/// The later of the two backoffs of a plan entry, if any.
pub fn backoff_until(plan: &PresetPlan) -> Option<chrono::DateTime<chrono::Utc>> {
    let db = plan
        .actions
        .iter()
        .chain(plan.held.iter().map(|h| &h.action))
        .filter_map(|a| match a {
            Action::Backoff { until } => Some(*until),
            _ => None,
        });
    let creation = plan.held.iter().filter_map(|h| h.until);
    db.chain(creation).max()
}
