//! The planner at volume: 10,000 presets and 100,000 workspaces. `plan` measures planning alone from parsed
//! structures; `parse` measures reading the same snapshot from JSON (what `warmpool plan` adds).

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use warmpool_bench::synthetic_snapshot;
use warmpool_core::snapshot_json;

fn planner(c: &mut Criterion) {
    let snapshot = synthetic_snapshot(10_000, 10);
    let json = snapshot_json::to_json(&snapshot).to_string();
    eprintln!(
        "snapshot: {} presets, {} workspaces, {} bytes of JSON",
        snapshot.presets.len(),
        snapshot.workspaces.len(),
        json.len()
    );
    let mut group = c.benchmark_group("planner_10k_presets_100k_workspaces");
    group.sample_size(20);
    group.bench_function("plan", |b| {
        b.iter(|| warmpool_core::plan(black_box(&snapshot)))
    });
    group.bench_function("parse_json", |b| {
        b.iter(|| snapshot_json::from_json(black_box(&json)).map(|s| s.workspaces.len()))
    });
    group.finish();
}

criterion_group!(benches, planner);
criterion_main!(benches);
