//! The store benchmark: snapshot read and warm-claim throughput on SQLite and PostgreSQL, and pgbench's
//! simple-update on the same throw-away cluster for comparison.
//!
//! `cargo run --release -p warmpool-bench --bin store-bench [-- sqlite|postgres]`
//!
//! Seeds, with plain SQL so that both backends get identical data: 1,000 templates × 10 versions × 10 presets
//! (100,000 presets, the 10,000 of active versions with a pool of 10 and a 24 h TTL), 10 prebuilds per active
//! preset (100,000 live workspaces: latest builds ~95 % succeeded starts, 3 % failed, 1 % pending, 1 % running),
//! plus 20,000 deleted workspaces with two builds each (140,000 builds in all). Then:
//! - snapshot: `Store::snapshot`, 2 warm-up runs, then the median and range of 11;
//! - claims: 32 tasks claiming concurrently (each claim names a preset in rotation, so no pool runs dry) for a
//!   fixed number of claims; claims per second = successful claims / wall time;
//! - pgbench (PostgreSQL only): `pgbench -i -s 10`, then `pgbench -N -c 32 -j 2 -T 20` in another database of
//!   the same cluster.
//!
//! Figures go to standard output; `docs/performance.md` (section "Store") records them and the method. This is a
//! benchmark, not a test: it asserts nothing but that the seeded volume is what the snapshot returns.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use chrono::{DateTime, Utc};
use warmpool_core::model::PlannerConfig;
use warmpool_store::testing::pg;
use warmpool_store::{ClaimOutcome, ClaimRequest, PgStore, SqliteStore, Store};

const TEMPLATES: i64 = 1_000;
const VERSIONS: i64 = 10;
const PRESETS: i64 = 10;
const PREBUILDS: i64 = 10;
const DELETED: i64 = 20_000;
const CLAIMERS: usize = 32;
const CLAIMS: usize = 20_000;

/// Seeding time (Unix ms); the benchmark's `now` is an hour later, so no prebuild is expired.
const T0: i64 = 1_748_822_400_000;

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(T0 + 3_600_000).unwrap()
}

/// The seed, as statements both backends accept (recursive CTEs for series, `||` for text).
fn seed_sql() -> Vec<String> {
    let series = |name: &str, n: i64| {
        format!("{name}(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM {name} WHERE n < {n})")
    };
    // 36-character ids, like the store's UUIDs.
    let id = |kind: &str, expr: &str| format!("'0198f3c2-7a1b-7c3d-8e4f-{kind}' || {expr}");
    let status = "CASE WHEN (w % 100) < 95 THEN 'succeeded' WHEN (w % 100) < 98 THEN 'failed' \
                  WHEN (w % 100) < 99 THEN 'pending' ELSE 'running' END";
    let live = format!(
        "WITH RECURSIVE {}, {}, {}, x AS (SELECT tt.n AS t, pp.n AS p, ii.n AS i, \
           ((tt.n - 1) * {PRESETS} + (pp.n - 1)) * {PREBUILDS} + (ii.n - 1) AS w FROM t tt, p pp, i ii)",
        series("t", TEMPLATES),
        series("p", PRESETS),
        series("i", PREBUILDS)
    );
    vec![
        format!(
            "WITH RECURSIVE {} INSERT INTO templates (id, name, active_version_id, last_version_number, \
               max_workspaces, claim_build, applied_by, created_at, updated_at) \
             SELECT {}, 'template-' || n, NULL, {VERSIONS}, NULL, FALSE, 'config', {T0}, {T0} FROM t",
            series("t", TEMPLATES),
            id("t", "n")
        ),
        format!(
            "WITH RECURSIVE {}, {} INSERT INTO template_versions (id, template_id, number, name, definition, \
               applied_by, created_at) \
             SELECT {}, {}, v.n, 'v' || v.n, '{{}}', 'config', {T0} FROM t, v",
            series("t", TEMPLATES),
            series("v", VERSIONS),
            id("v", "t.n || '-' || v.n"),
            id("t", "t.n")
        ),
        format!(
            "UPDATE templates SET active_version_id = {} \
             WHERE active_version_id IS NULL",
            id("v", &format!("substr(name, 10) || '-{VERSIONS}'"))
        ),
        format!(
            "WITH RECURSIVE {}, {}, {} INSERT INTO presets (id, template_id, version_id, name, instances, ttl_ms, \
               scheduling_timezone, status, creation_failures, created_at, updated_at) \
             SELECT {}, {}, {}, 'preset-' || p.n, 10, 86400000, NULL, 'healthy', 0, {T0}, {T0} FROM t, v, p",
            series("t", TEMPLATES),
            series("v", VERSIONS),
            series("p", PRESETS),
            id("p", "t.n || '-' || v.n || '-' || p.n"),
            id("t", "t.n"),
            id("v", "t.n || '-' || v.n")
        ),
        format!(
            "{live} INSERT INTO workspaces (id, template_id, preset_id, owner, name, created_at, updated_at, \
               claimed_at, deleted_at, outputs, latest_build_id, latest_build_number, latest_transition, \
               latest_status, latest_build_created_at, latest_version_id, latest_picked_up) \
             SELECT {}, {}, {}, 'prebuilds', 'preset-' || p || '-' || w, {T0} + w, {T0} + w, NULL, NULL, NULL, \
                    {}, 1, 'start', {status}, {T0} + w, {}, CASE WHEN (w % 100) = 98 THEN FALSE ELSE TRUE END \
             FROM x",
            id("w", "w"),
            id("t", "t"),
            id("p", &format!("t || '-{VERSIONS}-' || p")),
            id("b", "w"),
            id("v", &format!("t || '-{VERSIONS}'"))
        ),
        format!(
            "{live} INSERT INTO builds (id, workspace_id, number, transition, version_id, preset_id, initiator, \
               is_prebuild, is_claim, created_at, status, priority, attempts, started_at, completed_at) \
             SELECT {}, {}, 1, 'start', {}, {}, 'prebuilds', TRUE, FALSE, {T0} + w, {status}, 5, \
                    CASE WHEN (w % 100) = 98 THEN 0 ELSE 1 END, {T0} + w, {T0} + w FROM x",
            id("b", "w"),
            id("w", "w"),
            id("v", &format!("t || '-{VERSIONS}'")),
            id("p", &format!("t || '-{VERSIONS}-' || p"))
        ),
        // History: deleted prebuilds of older versions, two builds each.
        format!(
            "WITH RECURSIVE {} INSERT INTO workspaces (id, template_id, preset_id, owner, name, created_at, \
               updated_at, claimed_at, deleted_at, outputs, latest_build_id, latest_build_number, latest_transition, \
               latest_status, latest_build_created_at, latest_version_id, latest_picked_up) \
             SELECT {}, {}, {}, 'prebuilds', 'old-' || n, {T0} - 100000 - n, {T0}, NULL, {T0}, NULL, {}, 2, \
                    'delete', 'succeeded', {T0}, {}, TRUE FROM d",
            series("d", DELETED),
            id("d", "n"),
            id("t", &format!("((n - 1) % {TEMPLATES} + 1)")),
            id("p", &format!("((n - 1) % {TEMPLATES} + 1) || '-1-1'")),
            id("e", "n"),
            id("v", &format!("((n - 1) % {TEMPLATES} + 1) || '-1'"))
        ),
        format!(
            "WITH RECURSIVE {}, k(n) AS (SELECT 1 UNION ALL SELECT 2) \
             INSERT INTO builds (id, workspace_id, number, transition, version_id, preset_id, initiator, is_prebuild, \
               is_claim, created_at, status, priority, attempts, started_at, completed_at) \
             SELECT CASE WHEN k.n = 1 THEN {} ELSE {} END, {}, k.n, CASE WHEN k.n = 1 THEN 'start' ELSE 'delete' END, \
                    {}, {}, 'prebuilds', TRUE, FALSE, {T0} - 100000 - d.n, 'succeeded', 5, 1, {T0}, {T0} FROM d, k",
            series("d", DELETED),
            id("f", "d.n"),
            id("e", "d.n"),
            id("d", "d.n"),
            id("v", &format!("((d.n - 1) % {TEMPLATES} + 1) || '-1'")),
            id("p", &format!("((d.n - 1) % {TEMPLATES} + 1) || '-1-1'"))
        ),
    ]
}

macro_rules! seed {
    ($pool:expr, $analyze:expr) => {{
        let started = Instant::now();
        for statement in seed_sql() {
            sqlx::query(sqlx::AssertSqlSafe(statement.clone()))
                .execute($pool)
                .await
                .unwrap_or_else(|e| panic!("{e}: {statement}"));
        }
        sqlx::query($analyze).execute($pool).await.unwrap();
        println!("  seeded in {:.1} s", started.elapsed().as_secs_f64());
    }};
}

async fn bench_snapshot<S: Store>(store: &S) {
    let config = PlannerConfig::default();
    for _ in 0..2 {
        store.snapshot(now(), config).await.unwrap();
    }
    let mut times = Vec::new();
    let mut shape = (0, 0);
    for _ in 0..11 {
        let started = Instant::now();
        let snapshot = store.snapshot(now(), config).await.unwrap();
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        shape = (snapshot.presets.len(), snapshot.workspaces.len());
    }
    assert_eq!(
        shape,
        (10_000, 100_000),
        "the snapshot holds the seeded volume"
    );
    times.sort_by(f64::total_cmp);
    println!(
        "  snapshot ({} presets, {} workspaces): median {:.1} ms (min {:.1}, max {:.1}, 11 warm runs)",
        shape.0, shape.1, times[5], times[0], times[10]
    );
}

async fn bench_claims<S: Store>(store: Arc<S>) {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for claimer in 0..CLAIMERS {
        let store = store.clone();
        let next = next.clone();
        tasks.spawn(async move {
            let (mut claimed, mut missed) = (0usize, 0usize);
            let mut latencies = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= CLAIMS {
                    break;
                }
                // Rotate over the presets so that no pool runs dry.
                let preset = n % usize::try_from(TEMPLATES * PRESETS).unwrap();
                let request = ClaimRequest {
                    template: format!("template-{}", preset / 10 + 1),
                    preset: format!("preset-{}", preset % 10 + 1),
                    owner: format!("bench-{claimer}"),
                    name: format!("claim-{n}"),
                };
                let one = Instant::now();
                match store.claim(&request, now()).await.unwrap() {
                    ClaimOutcome::Claimed { .. } => claimed += 1,
                    ClaimOutcome::PoolEmpty => missed += 1,
                }
                latencies.push(one.elapsed().as_secs_f64() * 1000.0);
            }
            (claimed, missed, latencies)
        });
    }
    let (mut claimed, mut missed, mut latencies) = (0, 0, Vec::new());
    while let Some(result) = tasks.join_next().await {
        let (c, m, l) = result.unwrap();
        claimed += c;
        missed += m;
        latencies.extend(l);
    }
    let secs = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let p = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q) as usize];
    println!(
        "  claims: {CLAIMERS} concurrent claimers, {claimed} claimed + {missed} pool empty in {secs:.2} s = \
         {:.0} claims/s (latency p50 {:.2} ms, p99 {:.2} ms)",
        claimed as f64 / secs,
        p(0.5),
        p(0.99)
    );
}

fn pgbench(cluster: &pg::Cluster) {
    let sock = cluster.socket_dir().display().to_string();
    let port = cluster.port().to_string();
    let base = |cmd: &mut std::process::Command| {
        cmd.args(["-h", &sock, "-p", &port, "-U", "postgres"]);
    };
    let mut createdb = std::process::Command::new(cluster.bin_dir().join("createdb"));
    base(&mut createdb);
    assert!(createdb.arg("pgbench").status().unwrap().success());
    let mut init = std::process::Command::new(cluster.bin_dir().join("pgbench"));
    base(&mut init);
    let out = init
        .args(["-i", "-s", "10", "-q", "pgbench"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut run = std::process::Command::new(cluster.bin_dir().join("pgbench"));
    base(&mut run);
    let out = run
        .args(["-N", "-c", "32", "-j", "2", "-T", "20", "pgbench"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text
        .lines()
        .filter(|l| l.starts_with("tps") || l.contains("latency average"))
    {
        println!("  pgbench -N -c 32 -j 2 -T 20 (scale 10): {line}");
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let which = std::env::args().nth(1);
    let want = |name: &str| which.as_deref().is_none_or(|w| w == name);
    if want("sqlite") {
        println!("SQLite");
        let dir = tempfile_dir();
        let store = SqliteStore::open(dir.join("bench.db")).await.unwrap();
        seed!(store.pool(), "ANALYZE");
        bench_snapshot(&store).await;
        bench_claims(Arc::new(store.clone())).await;
        store.close().await;
        std::fs::remove_dir_all(&dir).ok();
    }
    if want("postgres") || which.as_deref() == Some("diagnose") {
        println!("PostgreSQL");
        let Some((_, options)) = pg::test_database().await.unwrap() else {
            println!("  skipped: no PostgreSQL server binaries");
            return;
        };
        let store = PgStore::connect_with(options, 40).await.unwrap();
        seed!(store.pool(), "VACUUM ANALYZE");
        if which.as_deref() == Some("diagnose") {
            diagnose(&store).await;
        }
        bench_snapshot(&store).await;
        bench_claims(Arc::new(store.clone())).await;
        store.close().await;
        if let Some(cluster) = pg::cluster().unwrap() {
            pgbench(cluster);
        }
    }
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("warmpool-store-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Where the PostgreSQL snapshot's time goes (diagnostic: `store-bench diagnose`).
async fn diagnose(store: &PgStore) {
    // The snapshot's prebuild query (crates/warmpool-store/src/sql/common.rs, SNAPSHOT_WORKSPACES).
    const WORKSPACES: &str = "SELECT w.id, w.preset_id, w.created_at, w.latest_build_number, \
            w.latest_transition, w.latest_status, w.latest_build_created_at, w.latest_picked_up \
     FROM workspaces w WHERE w.owner = 'prebuilds' AND w.deleted_at IS NULL AND w.preset_id IS NOT NULL";
    for _ in 0..3 {
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "EXPLAIN (ANALYZE, TIMING OFF) {WORKSPACES}"
        )))
        .fetch_all(store.pool())
        .await
        .unwrap();
        println!("  server: {}", plan.last().unwrap());
        let started = Instant::now();
        let rows = sqlx::query(WORKSPACES)
            .fetch_all(store.pool())
            .await
            .unwrap();
        println!(
            "  fetch_all {} rows: {:.1} ms",
            rows.len(),
            started.elapsed().as_secs_f64() * 1000.0
        );
        let started = Instant::now();
        let mut n = 0usize;
        for row in &rows {
            use sqlx::Row;
            let a: String = row.get(0);
            let b: String = row.get(1);
            n += a.len() + b.len();
        }
        println!(
            "  decode ids: {:.1} ms ({n})",
            started.elapsed().as_secs_f64() * 1000.0
        );
    }
}
