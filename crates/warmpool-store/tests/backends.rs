//! Backend-specific guarantees: both schemas have the same tables and columns, migrations are safe to run
//! twice, the SQLite lock file keeps a second process out, and the PostgreSQL advisory lock excludes another
//! replica's connection.

// Tests: a failed expectation is a panic with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;

use sqlx::Row;
use warmpool_store::testing::{pg, sqlite_store};
use warmpool_store::{RECONCILE_LOCK_ID, SqliteStore, Store, StoreError};

/// (table, column, type, not null), normalized.
type Columns = BTreeSet<(String, String, String, bool)>;

async fn sqlite_columns(store: &SqliteStore) -> Columns {
    let rows = sqlx::query(
        "SELECT m.name AS t, c.name AS c, c.type AS ty, c.\"notnull\" AS nn, c.pk AS pk \
         FROM sqlite_master m JOIN pragma_table_info(m.name) c \
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name <> '_sqlx_migrations'",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    rows.iter()
        .map(|r| {
            let not_null: i64 = r.get("nn");
            let pk: i64 = r.get("pk");
            (
                r.get::<String, _>("t"),
                r.get::<String, _>("c"),
                r.get::<String, _>("ty").to_lowercase(),
                not_null == 1 || pk > 0,
            )
        })
        .collect()
}

#[tokio::test]
async fn both_schemas_have_the_same_tables_and_columns() {
    let (sqlite, _dir) = sqlite_store().await.unwrap();
    let lite = sqlite_columns(&sqlite).await;
    assert!(lite.len() > 50, "the SQLite schema was read");
    let Some(pg) = pg::test_store(2).await.unwrap() else {
        return;
    };
    let rows = sqlx::query(
        "SELECT table_name::text AS t, column_name::text AS c, data_type::text AS ty, is_nullable::text AS nullable \
         FROM information_schema.columns WHERE table_schema = 'public' AND table_name <> '_sqlx_migrations'",
    )
    .fetch_all(pg.pool())
    .await
    .unwrap();
    let postgres: Columns = rows
        .iter()
        .map(|r| {
            (
                r.get::<String, _>("t"),
                r.get::<String, _>("c"),
                r.get::<String, _>("ty").to_lowercase(),
                r.get::<String, _>("nullable") == "NO",
            )
        })
        .collect();
    let only_sqlite: Vec<_> = lite.difference(&postgres).collect();
    let only_pg: Vec<_> = postgres.difference(&lite).collect();
    assert!(
        only_sqlite.is_empty() && only_pg.is_empty(),
        "only in SQLite: {only_sqlite:?}\nonly in PostgreSQL: {only_pg:?}"
    );
}

#[tokio::test]
async fn migrations_are_safe_to_run_twice() {
    let (sqlite, dir) = sqlite_store().await.unwrap();
    sqlite.migrate().await.unwrap();
    sqlite.migrate().await.unwrap();
    // Reopening the same file (after the first store is gone) migrates again without harm.
    let path = sqlite.path().to_path_buf();
    sqlite.close().await;
    drop(sqlite);
    let reopened = SqliteStore::open(&path).await.unwrap();
    reopened.ping().await.unwrap();
    drop(dir);
    if let Some(pg) = pg::test_store(2).await.unwrap() {
        pg.migrate().await.unwrap();
        pg.migrate().await.unwrap();
        pg.ping().await.unwrap();
    }
}

#[tokio::test]
async fn a_second_sqlite_opener_is_refused() {
    let (store, _dir) = sqlite_store().await.unwrap();
    match SqliteStore::open(store.path()).await {
        Err(err @ StoreError::Locked { .. }) => {
            let message = err.to_string();
            assert!(
                message.contains("in use by another warmpool process"),
                "{message}"
            );
            assert!(message.contains(".lock"), "{message}");
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    // The first store is unaffected.
    store.ping().await.unwrap();
}

#[tokio::test]
async fn the_advisory_lock_excludes_another_replica() {
    let Some(replica_a) = pg::test_store(2).await.unwrap() else {
        return;
    };
    let lock = replica_a
        .try_lock_reconciliation()
        .await
        .unwrap()
        .expect("free");
    // Another replica (another pool on the same database) cannot take it...
    let mut other = replica_a.pool().acquire().await.unwrap();
    let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(RECONCILE_LOCK_ID)
        .fetch_one(&mut *other)
        .await
        .unwrap();
    assert!(!taken);
    // ...until it is released.
    warmpool_store::ReconcileLock::release(lock).await.unwrap();
    let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(RECONCILE_LOCK_ID)
        .fetch_one(&mut *other)
        .await
        .unwrap();
    assert!(taken);
    assert!(replica_a.try_lock_reconciliation().await.unwrap().is_none());
    let _: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
        .bind(RECONCILE_LOCK_ID)
        .fetch_one(&mut *other)
        .await
        .unwrap();
}
