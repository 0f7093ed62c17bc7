//! The PostgreSQL store, for several replicas.
//!
//! - Migrated from `migrations/postgres` at connect (sqlx takes an advisory lock while migrating, so replicas
//!   starting together do not race; running them again is a no-op).
//! - Writes are short READ COMMITTED transactions through the pool. Row locks make them safe beside other
//!   replicas: creating a workspace locks its template's row first (so the `max_workspaces` count cannot be
//!   overrun by concurrent creators), builds lock their workspace's row, and the claim and the job queue take
//!   their row with `FOR UPDATE SKIP LOCKED`, so concurrent claimers and workers never wait for each other and
//!   never get the same row.
//! - The warm claim is one statement: it finds the active preset, checks the name, locks the oldest ready,
//!   unexpired prebuild (an index probe on `workspaces_ready_prebuilds`), moves it to the owner, and writes the
//!   claim event and its counter. A `claim_build` template adds its `start` build in the same transaction.
//! - The reconciliation lock (SPEC section 9) is `pg_try_advisory_lock(RECONCILE_LOCK_ID)` on a connection taken
//!   from the pool for the tick; the snapshot is read in `BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY` on that
//!   same connection after the lock is held, and `pg_advisory_unlock` releases it after the tick's writes. A lock
//!   dropped without release closes its connection, which releases the lock too.
//!
//! - The snapshot's pass over the live prebuilds is `COPY (SELECT ...) TO STDOUT`, parsed here: 100,000 rows
//!   arrive as text in a fraction of the time the driver takes to decode as many result rows. Connections run
//!   with `jit=off`.
//!
//! The rest of the SQL and the row mapping are shared with SQLite (`sql/common.rs`, included below).
//! Deliberately absent: any use of `now()` (time is an input) and long transactions.

use std::sync::Arc;

use futures_util::TryStreamExt;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres, Transaction};

type Db = Postgres;
type ThisStore = PgStore;
type ThisLock = PgReconcileLock;
const BACKEND: &str = "postgres";

/// The advisory lock id of the reconciler (SPEC section 9): "warmpool" in ASCII. Never reuse it for anything
/// else.
pub const RECONCILE_LOCK_ID: i64 = 0x7761_726d_706f_6f6c;

macro_rules! for_update {
    () => {
        " FOR UPDATE"
    };
}

macro_rules! skip_locked {
    () => {
        " FOR UPDATE SKIP LOCKED"
    };
}

/// The PostgreSQL store. Cheap to clone (shared state behind an `Arc`).
#[derive(Debug, Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: PgPool,
}

struct WriteTx {
    tx: Transaction<'static, Db>,
}

impl WriteTx {
    fn conn(&mut self) -> &mut sqlx::PgConnection {
        &mut self.tx
    }

    async fn commit(self) -> StoreResult<()> {
        self.tx.commit().await.db("committing")
    }
}

impl Inner {
    async fn begin_write(&self) -> StoreResult<WriteTx> {
        let tx = self
            .pool
            .begin()
            .await
            .db("beginning a write transaction")?;
        Ok(WriteTx { tx })
    }
}

async fn begin_snapshot(conn: &mut DbConn) -> StoreResult<Transaction<'_, Db>> {
    conn.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .db("beginning the snapshot transaction")
}

impl PgStore {
    /// Connects to `postgres://...` with a pool of up to `max_connections` and runs the migrations.
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<PgStore> {
        let options: PgConnectOptions = url
            .parse()
            .map_err(|_| StoreError::Invalid(format!("database: {url:?} is not a postgres URL")))?;
        PgStore::connect_with(options, max_connections).await
    }

    pub async fn connect_with(
        options: PgConnectOptions,
        max_connections: u32,
    ) -> StoreResult<PgStore> {
        // JIT compilation costs hundreds of milliseconds on the snapshot's large scans and never pays off for
        // warmpool's short queries.
        let options = options.options([("jit", "off")]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .connect_with(options)
            .await
            .db("connecting to PostgreSQL")?;
        let store = PgStore {
            inner: Arc::new(Inner { pool }),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Runs the migrations (a no-op once they ran; connecting already ran them).
    pub async fn migrate(&self) -> StoreResult<()> {
        MIGRATOR
            .run(&self.inner.pool)
            .await
            .map_err(|source| StoreError::Migrate {
                backend: BACKEND,
                source,
            })
    }

    /// The pool, for tests and benchmarks that inspect the schema.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    pub async fn close(&self) {
        self.inner.pool.close().await;
    }

    /// Wakes job workers of every replica that `LISTEN`s on [`JOBS_CHANNEL`] (after a commit that queued a
    /// job). Workers poll anyway; this only shortens the wait.
    pub async fn notify_jobs(&self) -> StoreResult<()> {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(JOBS_CHANNEL)
            .execute(&self.inner.pool)
            .await
            .db("notifying job workers")?;
        Ok(())
    }
}

/// The `LISTEN/NOTIFY` channel [`PgStore::notify_jobs`] uses.
pub const JOBS_CHANNEL: &str = "warmpool_jobs";

/// The migrations, embedded.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The reconciliation lock of the PostgreSQL store: a session-level advisory lock held on `conn`.
#[derive(Debug)]
pub struct PgReconcileLock {
    conn: Option<PoolConnection<Postgres>>,
}

impl PgReconcileLock {
    async fn snapshot_impl(
        &mut self,
        now: chrono::DateTime<chrono::Utc>,
        config: PlannerConfig,
    ) -> StoreResult<Snapshot> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(StoreError::Invalid(
                "the reconciliation lock was released".into(),
            ));
        };
        snapshot_on(conn, now, config).await
    }

    async fn release_impl(mut self) -> StoreResult<()> {
        let Some(mut conn) = self.conn.take() else {
            return Ok(());
        };
        let unlocked = sqlx::query_scalar::<_, bool>("SELECT pg_advisory_unlock($1)")
            .bind(RECONCILE_LOCK_ID)
            .fetch_one(&mut *conn)
            .await;
        match unlocked {
            Ok(true) => Ok(()),
            Ok(false) => {
                conn.close_on_drop();
                Err(StoreError::Invalid(
                    "the reconciliation lock was not held by its connection".into(),
                ))
            }
            Err(source) => {
                // Closing the connection releases the lock server-side.
                conn.close_on_drop();
                Err(StoreError::Database {
                    context: "releasing the reconciliation lock",
                    source,
                })
            }
        }
    }
}

impl Drop for PgReconcileLock {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.as_mut() {
            // Never hand a connection that still holds the session lock back to the pool.
            conn.close_on_drop();
        }
    }
}

async fn try_lock_impl(inner: &Arc<Inner>) -> StoreResult<Option<PgReconcileLock>> {
    let mut conn = inner.pool.acquire().await.db("connecting")?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(RECONCILE_LOCK_ID)
        .fetch_one(&mut *conn)
        .await
        .db("taking the reconciliation lock")?;
    Ok(locked.then_some(PgReconcileLock { conn: Some(conn) }))
}

/// The warm claim in one statement (see the module docs).
const CLAIM: &str = "\
WITH p AS (
    SELECT p.id AS preset_id, p.name AS preset_name, t.id AS template_id, t.name AS template_name,
           v.name AS version_name, p.version_id, t.claim_build, p.ttl_ms, p.invalidated_at
    FROM templates t
    JOIN presets p ON p.version_id = t.active_version_id
    JOIN template_versions v ON v.id = p.version_id
    WHERE t.name = $1 AND p.name = $2 AND t.deleted_at IS NULL
),
taken AS (
    SELECT 1 FROM workspaces WHERE owner = $3 AND name = $4 AND deleted_at IS NULL
),
target AS (
    SELECT w.id FROM workspaces w, p
    WHERE w.preset_id = p.preset_id AND w.owner = 'prebuilds' AND w.deleted_at IS NULL
      AND w.latest_transition = 'start' AND w.latest_status = 'succeeded'
      AND w.latest_version_id = p.version_id
      AND (p.invalidated_at IS NULL OR w.created_at >= p.invalidated_at)
      AND (COALESCE(p.ttl_ms, 0) = 0 OR w.created_at >= $5 - p.ttl_ms)
      AND NOT EXISTS (SELECT 1 FROM taken)
    ORDER BY w.created_at, w.id
    LIMIT 1
    FOR UPDATE OF w SKIP LOCKED
),
claimed AS (
    UPDATE workspaces w SET owner = $3, name = $4, claimed_at = $5, updated_at = $5
    FROM target WHERE w.id = target.id AND w.owner = 'prebuilds'
    RETURNING w.*
),
event AS (
    INSERT INTO claim_events (id, preset_id, template_name, preset_name, kind, created_at)
    SELECT $6, p.preset_id, p.template_name, p.preset_name,
           CASE WHEN EXISTS (SELECT 1 FROM claimed) THEN 'claim_succeeded' ELSE 'claim_missed' END, $5
    FROM p WHERE NOT EXISTS (SELECT 1 FROM taken)
),
counter AS (
    INSERT INTO metric_counters (name, template_name, preset_name, shard, value)
    SELECT CASE WHEN EXISTS (SELECT 1 FROM claimed) THEN 'prebuilds_claimed' ELSE 'claims_missed' END,
           p.template_name, p.preset_name, $7, 1
    FROM p WHERE NOT EXISTS (SELECT 1 FROM taken)
    ON CONFLICT (name, template_name, preset_name, shard) DO UPDATE SET value = metric_counters.value + 1
)
SELECT p.claim_build, EXISTS (SELECT 1 FROM taken) AS taken,
       c.id, c.name, c.owner, c.template_id, p.template_name, p.version_name, c.preset_id, p.preset_name,
       c.created_at, c.claimed_at, c.deleted_at, c.outputs, c.latest_build_id, c.latest_build_number,
       c.latest_transition, c.latest_status, c.latest_build_created_at, c.latest_picked_up
FROM p LEFT JOIN claimed c ON TRUE";

async fn claim_impl(
    inner: &Inner,
    request: &ClaimRequest,
    now_dt: chrono::DateTime<chrono::Utc>,
) -> StoreResult<ClaimOutcome> {
    let mut tx = inner.begin_write().await?;
    let row = sqlx::query(CLAIM)
        .bind(&request.template)
        .bind(&request.preset)
        .bind(&request.owner)
        .bind(&request.name)
        .bind(ms(now_dt))
        .bind(new_id(now_dt))
        .bind(counter_shard())
        .fetch_optional(tx.conn())
        .await;
    let row = match row {
        Err(e) if is_unique_violation(&e) => {
            return Err(StoreError::NameTaken {
                owner: request.owner.clone(),
                name: request.name.clone(),
            });
        }
        other => other.db("claiming a prebuild")?,
    };
    let Some(row) = row else {
        return Err(StoreError::not_found(format!(
            "preset {}/{}",
            request.template, request.preset
        )));
    };
    if col::<bool>(&row, "taken")? {
        return Err(StoreError::NameTaken {
            owner: request.owner.clone(),
            name: request.name.clone(),
        });
    }
    let claimed: Option<String> = col(&row, "id")?;
    let Some(id) = claimed else {
        tx.commit().await?;
        return Ok(ClaimOutcome::PoolEmpty);
    };
    let mut workspace = workspace_from_row(&row)?;
    let build = if col::<bool>(&row, "claim_build")? {
        let build = insert_claim_build(tx.conn(), &id, &request.owner, now_dt).await?;
        workspace = must_load_workspace(tx.conn(), &id).await?;
        Some(build)
    } else {
        None
    };
    tx.commit().await?;
    Ok(ClaimOutcome::Claimed { workspace, build })
}

/// The snapshot's live prebuilds through `COPY (SELECT ...) TO STDOUT`: the same rows as
/// [`SNAPSHOT_WORKSPACES`] in PostgreSQL's text format, parsed here. At 100,000 rows this costs a fraction of
/// decoding as many result rows, and it reads the same REPEATABLE READ snapshot as the rest of the transaction.
async fn read_prebuilds(conn: &mut DbConn) -> StoreResult<Vec<WorkspaceSnapshot>> {
    let statement = format!("COPY ({SNAPSHOT_WORKSPACES}) TO STDOUT");
    let mut stream = conn
        .copy_out_raw(&statement)
        .await
        .db("reading prebuilds")?;
    let mut workspaces = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.try_next().await.db("reading prebuilds")? {
        pending.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(end) = pending[start..].iter().position(|b| *b == b'\n') {
            workspaces.push(parse_copy_prebuild(&pending[start..start + end])?);
            start += end + 1;
        }
        pending.drain(..start);
    }
    if !pending.is_empty() {
        return Err(StoreError::corrupt("prebuild rows: truncated COPY output"));
    }
    Ok(workspaces)
}

/// One line of [`SNAPSHOT_WORKSPACES`] in COPY text format: tab-separated, booleans `t`/`f`. The columns are
/// ids, integers and enum words, none NULL and none needing escapes.
fn parse_copy_prebuild(line: &[u8]) -> StoreResult<WorkspaceSnapshot> {
    let text =
        std::str::from_utf8(line).map_err(|_| StoreError::corrupt("prebuild row: not UTF-8"))?;
    let mut fields = text.split('\t');
    let mut next = |what: &str| {
        fields
            .next()
            .filter(|f| *f != "\\N" && !f.contains('\\'))
            .ok_or_else(|| StoreError::corrupt(format!("prebuild row: bad {what} in {text:?}")))
    };
    let int = |value: &str, what: &str| {
        value
            .parse::<i64>()
            .map_err(|_| StoreError::corrupt(format!("prebuild row: bad {what} {value:?}")))
    };
    let id = next("id")?;
    let preset = next("preset_id")?;
    let created_at = int(next("created_at")?, "created_at")?;
    let number = int(next("latest_build_number")?, "latest_build_number")?;
    let transition = parse_transition(next("latest_transition")?)?;
    let status = parse_job_status(next("latest_status")?)?;
    let build_created_at = int(next("latest_build_created_at")?, "latest_build_created_at")?;
    let picked_up = match next("latest_picked_up")? {
        "t" => true,
        "f" => false,
        other => {
            return Err(StoreError::corrupt(format!(
                "prebuild row: bad latest_picked_up {other:?}"
            )));
        }
    };
    Ok(WorkspaceSnapshot {
        id: WorkspaceId::new(id),
        owner: PREBUILDS_OWNER.to_owned(),
        preset: PresetId::new(preset),
        created_at: from_ms(created_at, "workspace created_at")?,
        ready: transition == Transition::Start && status == JobStatus::Succeeded,
        latest_build: LatestBuild {
            number: to_u64(number, "build number")?,
            transition,
            status,
            created_at: from_ms(build_created_at, "build created_at")?,
            // Set from the preset once the presets are known (see SNAPSHOT_WORKSPACES).
            active_version: false,
            picked_up,
        },
    })
}

include!("sql/common.rs");
