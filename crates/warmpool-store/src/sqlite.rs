//! The embedded SQLite store: one process, nothing to install.
//!
//! - One file database in WAL mode (`synchronous=NORMAL`, `foreign_keys=ON`, a busy timeout), migrated from
//!   `migrations/sqlite` at open (running them again is a no-op).
//! - `<database>.lock` is held with an exclusive lock for the store's life, so a second process fails at open
//!   with [`StoreError::Locked`] instead of corrupting the single-writer assumptions below.
//! - Writers are serialized twice: in process by an async mutex (so they queue in order instead of spinning in
//!   SQLite's busy handler), and by `BEGIN IMMEDIATE`, which takes SQLite's write lock up front so that a
//!   transaction never fails half-way upgrading a read lock. Readers (snapshots, listings) run beside the writer
//!   thanks to WAL; a snapshot is a deferred transaction, which in WAL mode reads one consistent state.
//! - The reconciliation lock is an in-process mutex: the lock file already keeps every other process out.
//!
//! The SQL and the row mapping are shared with PostgreSQL (`sql/common.rs`, included below); only the claim
//! differs here, as a few statements inside one `BEGIN IMMEDIATE` transaction instead of PostgreSQL's single
//! statement with `SKIP LOCKED`. Deliberately not supported: several processes on one database (use PostgreSQL).

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

type Db = sqlx::Sqlite;
type ThisStore = SqliteStore;
type ThisLock = SqliteReconcileLock;
const BACKEND: &str = "sqlite";

macro_rules! for_update {
    () => {
        ""
    };
}

macro_rules! skip_locked {
    () => {
        ""
    };
}

/// The SQLite store. Cheap to clone (shared state behind an `Arc`).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: SqlitePool,
    writer: Arc<Mutex<()>>,
    tick: Arc<Mutex<()>>,
    path: PathBuf,
    /// Held (locked) for the store's life; the OS releases it when the process ends.
    _lock_file: File,
}

/// A write transaction: the in-process writer lock, then `BEGIN IMMEDIATE`.
struct WriteTx {
    tx: Transaction<'static, Db>,
    _writer: OwnedMutexGuard<()>,
}

impl WriteTx {
    fn conn(&mut self) -> &mut sqlx::SqliteConnection {
        &mut self.tx
    }

    async fn commit(self) -> StoreResult<()> {
        self.tx.commit().await.db("committing")
    }
}

impl Inner {
    async fn begin_write(&self) -> StoreResult<WriteTx> {
        let writer = self.writer.clone().lock_owned().await;
        let tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .db("beginning a write transaction")?;
        Ok(WriteTx {
            tx,
            _writer: writer,
        })
    }
}

async fn begin_snapshot(conn: &mut DbConn) -> StoreResult<Transaction<'_, Db>> {
    conn.begin().await.db("beginning the snapshot transaction")
}

impl SqliteStore {
    /// Opens (creating if needed) the database file, takes its lock file and runs the migrations.
    pub async fn open(path: impl AsRef<Path>) -> StoreResult<SqliteStore> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                context: format!("could not create the directory {}", dir.display()),
                source,
            })?;
        }
        let mut lock_path = path.clone().into_os_string();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| StoreError::Io {
                context: format!("could not open the lock file {}", lock_path.display()),
                source,
            })?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    database: path,
                    lock: lock_path,
                });
            }
            Err(TryLockError::Error(source)) => {
                return Err(StoreError::Io {
                    context: format!("could not lock {}", lock_path.display()),
                    source,
                });
            }
        }
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(30))
            // The snapshot streams ~100k rows from SQLite's worker thread: a larger buffer cuts the hand-offs.
            .row_buffer_size(1024);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .db("opening the SQLite database")?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate {
                backend: BACKEND,
                source,
            })?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                pool,
                writer: Arc::new(Mutex::new(())),
                tick: Arc::new(Mutex::new(())),
                path,
                _lock_file: lock_file,
            }),
        })
    }

    /// Opens a `sqlite://PATH` (or `sqlite:PATH`) URL.
    pub async fn open_url(url: &str) -> StoreResult<SqliteStore> {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| {
                StoreError::Invalid(format!("database: {url:?} is not a sqlite: URL"))
            })?;
        let path = path.split('?').next().unwrap_or(path);
        SqliteStore::open(path).await
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs the migrations again (a no-op once they ran; start-up already ran them).
    pub async fn migrate(&self) -> StoreResult<()> {
        sqlx::migrate!("./migrations/sqlite")
            .run(&self.inner.pool)
            .await
            .map_err(|source| StoreError::Migrate {
                backend: BACKEND,
                source,
            })
    }

    /// The pool, for tests and benchmarks that inspect the schema.
    pub fn pool(&self) -> &SqlitePool {
        &self.inner.pool
    }

    /// Closes the pool (the lock file is released when the last clone is dropped).
    pub async fn close(&self) {
        self.inner.pool.close().await;
    }
}

/// The reconciliation lock of the SQLite store: one tick at a time in this (the only) process.
#[derive(Debug)]
pub struct SqliteReconcileLock {
    inner: Arc<Inner>,
    _guard: OwnedMutexGuard<()>,
}

impl SqliteReconcileLock {
    async fn snapshot_impl(
        &mut self,
        now: chrono::DateTime<chrono::Utc>,
        config: PlannerConfig,
    ) -> StoreResult<Snapshot> {
        let mut conn = self.inner.pool.acquire().await.db("connecting")?;
        snapshot_on(&mut conn, now, config).await
    }

    async fn release_impl(self) -> StoreResult<()> {
        Ok(())
    }
}

async fn try_lock_impl(inner: &Arc<Inner>) -> StoreResult<Option<SqliteReconcileLock>> {
    Ok(inner
        .tick
        .clone()
        .try_lock_owned()
        .ok()
        .map(|guard| SqliteReconcileLock {
            inner: inner.clone(),
            _guard: guard,
        }))
}

/// The warm claim as a few statements in one `BEGIN IMMEDIATE` transaction (SQLite has one writer, so no row
/// lock is needed: nothing else writes between the choice and the update).
async fn claim_impl(
    inner: &Inner,
    request: &ClaimRequest,
    now_dt: chrono::DateTime<chrono::Utc>,
) -> StoreResult<ClaimOutcome> {
    let now = ms(now_dt);
    let mut tx = inner.begin_write().await?;
    let Some(active) = resolve_active_preset(tx.conn(), &request.template, &request.preset).await?
    else {
        return Err(StoreError::not_found(format!(
            "preset {}/{}",
            request.template, request.preset
        )));
    };
    if name_taken(tx.conn(), &request.owner, &request.name).await? {
        return Err(StoreError::NameTaken {
            owner: request.owner.clone(),
            name: request.name.clone(),
        });
    }
    let since = unexpired_since(now, active.ttl_ms, active.invalidated_at);
    let claimed: Option<String> = sqlx::query_scalar(
        "UPDATE workspaces SET owner = $1, name = $2, claimed_at = $3, updated_at = $3 \
         WHERE owner = 'prebuilds' AND id = ( \
             SELECT id FROM workspaces \
             WHERE preset_id = $4 AND owner = 'prebuilds' AND deleted_at IS NULL \
               AND latest_transition = 'start' AND latest_status = 'succeeded' \
               AND latest_version_id = $5 AND created_at >= $6 \
             ORDER BY created_at, id LIMIT 1) \
         RETURNING id",
    )
    .bind(&request.owner)
    .bind(&request.name)
    .bind(now)
    .bind(&active.preset_id)
    .bind(&active.version_id)
    .bind(since)
    .fetch_optional(tx.conn())
    .await
    .db("claiming a prebuild")?;
    let Some(id) = claimed else {
        record_claim_event(tx.conn(), &active, ClaimEventKind::ClaimMissed, now, now_dt).await?;
        tx.commit().await?;
        return Ok(ClaimOutcome::PoolEmpty);
    };
    record_claim_event(
        tx.conn(),
        &active,
        ClaimEventKind::ClaimSucceeded,
        now,
        now_dt,
    )
    .await?;
    let build = if active.claim_build {
        Some(insert_claim_build(tx.conn(), &id, &request.owner, now_dt).await?)
    } else {
        None
    };
    let workspace = must_load_workspace(tx.conn(), &id).await?;
    tx.commit().await?;
    Ok(ClaimOutcome::Claimed { workspace, build })
}

/// One row of `SNAPSHOT_WORKSPACES`.
fn snapshot_workspace(row: &DbRow) -> StoreResult<WorkspaceSnapshot> {
    let transition: &str = row.try_get(4).db("reading a prebuild")?;
    let status: &str = row.try_get(5).db("reading a prebuild")?;
    let transition = parse_transition(transition)?;
    let status = parse_job_status(status)?;
    let number: i64 = row.try_get(3).db("reading a prebuild")?;
    Ok(WorkspaceSnapshot {
        id: WorkspaceId::new(row.try_get::<String, _>(0).db("reading a prebuild")?),
        owner: PREBUILDS_OWNER.to_owned(),
        preset: PresetId::new(row.try_get::<String, _>(1).db("reading a prebuild")?),
        created_at: from_ms(
            row.try_get(2).db("reading a prebuild")?,
            "workspace created_at",
        )?,
        ready: transition == Transition::Start && status == JobStatus::Succeeded,
        latest_build: LatestBuild {
            number: to_u64(number, "build number")?,
            transition,
            status,
            created_at: from_ms(row.try_get(6).db("reading a prebuild")?, "build created_at")?,
            // Set from the preset once the presets are known (see SNAPSHOT_WORKSPACES).
            active_version: false,
            picked_up: row.try_get(7).db("reading a prebuild")?,
        },
    })
}

/// The snapshot's live prebuilds, decoded as SQLite's worker thread hands them over.
async fn read_prebuilds(conn: &mut DbConn) -> StoreResult<Vec<WorkspaceSnapshot>> {
    let mut workspaces = Vec::new();
    let mut rows = sqlx::query(SNAPSHOT_WORKSPACES).fetch(&mut *conn);
    while let Some(row) = rows.try_next().await.db("reading prebuilds")? {
        workspaces.push(snapshot_workspace(&row)?);
    }
    Ok(workspaces)
}

include!("sql/common.rs");
