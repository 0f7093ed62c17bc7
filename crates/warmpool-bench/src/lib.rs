//! Benchmarks for warmpool (criterion, in `benches/`). This crate is a workspace member left out of
//! `default-members`, so `cargo test` and `cargo clippy` never build criterion.
//!
//! [`synthetic_snapshot`] builds the volume of `docs/performance.md`: a given number of presets, each with a pool
//! of prebuilds whose latest builds are ~95 % succeeded, 3 % failed, 2 % pending or running, with TTLs, schedules,
//! invalidations and claimed workspaces mixed in, so every branch of the planner runs.

use chrono::{DateTime, TimeDelta, Utc};
use warmpool_core::duration::Duration;
use warmpool_core::ids::{PresetId, WorkspaceId};
use warmpool_core::model::{
    JobStatus, LatestBuild, PlannerConfig, PresetSnapshot, PresetStatus, Settings, Snapshot,
    Transition, WorkspaceSnapshot,
};
use warmpool_core::schedule::{Cron, Schedule, Scheduling};

/// A deterministic snapshot of `presets` presets with `per_preset` workspaces each.
pub fn synthetic_snapshot(presets: usize, per_preset: usize) -> Snapshot {
    let now: DateTime<Utc> = DateTime::from_timestamp(1_748_833_200, 0).unwrap_or_default(); // 2025-06-02T03:00:00Z
    let berlin: chrono_tz::Tz = chrono_tz::Europe::Berlin;
    let mut snapshot = Snapshot {
        now,
        config: PlannerConfig::default(),
        settings: Settings::default(),
        presets: Vec::with_capacity(presets),
        workspaces: Vec::with_capacity(presets * per_preset),
    };
    let mut n: u64 = 0;
    for p in 0..presets {
        let id = PresetId::new(format!("preset-{p:06}"));
        // Every tenth preset is on an inactive version; every fifth has a schedule; every third a TTL.
        let active = !p.is_multiple_of(10);
        let scheduling = p.is_multiple_of(5).then(|| {
            let cron = |text: &str| Cron::parse(text).ok();
            let schedules = [("* 8-18 * * 1-5", 12), ("* 9-13 * * 6,0", 4)]
                .into_iter()
                .filter_map(|(text, instances)| {
                    cron(text).map(|cron| Schedule {
                        cron_text: text.to_owned(),
                        cron,
                        instances,
                    })
                })
                .collect();
            Scheduling::new(berlin, schedules).ok()
        });
        snapshot.presets.push(PresetSnapshot {
            id: id.clone(),
            template: format!("template-{:04}", p / 10),
            template_version: Some(format!("v{}", 1 + p % 3)),
            preset: format!("preset-{}", p % 10),
            active,
            instances: Some(per_preset as u32),
            ttl: p.is_multiple_of(3).then(|| Duration::from_secs(6 * 3600)),
            invalidated_at: p.is_multiple_of(7).then(|| now - TimeDelta::minutes(90)),
            scheduling: scheduling.flatten(),
            status: PresetStatus::Healthy,
            paused: false,
            creation_failures: None,
        });
        for w in 0..per_preset {
            n += 1;
            let created_at = now - TimeDelta::minutes((n % 600) as i64 + 1);
            let (transition, status) = match n % 100 {
                0..=2 => (Transition::Start, JobStatus::Failed),
                3 => (Transition::Start, JobStatus::Pending),
                4 => (Transition::Delete, JobStatus::Running),
                _ => (Transition::Start, JobStatus::Succeeded),
            };
            snapshot.workspaces.push(WorkspaceSnapshot {
                id: WorkspaceId::new(format!("ws-{n:08}")),
                owner: if w == per_preset - 1 && p.is_multiple_of(4) {
                    "alice".to_owned()
                } else {
                    "prebuilds".to_owned()
                },
                preset: id.clone(),
                created_at,
                ready: status == JobStatus::Succeeded && !n.is_multiple_of(50),
                latest_build: LatestBuild {
                    number: 1,
                    transition,
                    status,
                    created_at,
                    active_version: active,
                    picked_up: status != JobStatus::Pending,
                },
            });
        }
    }
    snapshot
}
