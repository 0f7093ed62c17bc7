//! Test support (cargo feature `testing`): throw-away stores for the conformance suite and the benchmarks.
//!
//! - [`sqlite_store`]: a fresh SQLite database in its own temporary directory.
//! - [`pg`]: one throw-away PostgreSQL cluster per test process, started from the local server binaries, a
//!   migrated template database created once, and a fresh database per test (`CREATE DATABASE ... TEMPLATE`).
//!
//! Not for production use: nothing here is tuned for durability (the cluster runs with `fsync=off`).

pub mod pg;

use crate::error::StoreError;
use crate::sqlite::SqliteStore;

/// A SQLite store in a temporary directory, removed when the returned guard is dropped.
pub async fn sqlite_store() -> Result<(SqliteStore, tempfile::TempDir), StoreError> {
    let dir = tempfile::Builder::new()
        .prefix("warmpool-sqlite-")
        .tempdir()
        .map_err(|source| StoreError::Io {
            context: "could not create a temporary directory".into(),
            source,
        })?;
    let store = SqliteStore::open(dir.path().join("warmpool.db")).await?;
    Ok((store, dir))
}
