//! warmpool's persistence: the [`Store`] trait, its SQLite ([`SqliteStore`], the embedded default) and
//! PostgreSQL ([`PgStore`], for several replicas) implementations, and their embedded migrations.
//!
//! # What is persisted, and why
//!
//! Everything a replica needs to take over from another, or a restarted process from itself, with nothing lost
//! that a claim or the reconciler committed:
//! - **templates, versions, parameters, presets** (with their pools, preset parameter values and schedules): the
//!   desired state. A version's build definition is stored as canonical JSON so that applying an unchanged
//!   template is recognized and changes nothing but the pool settings, in place;
//! - **per-preset state**: `status` (`healthy`, `hard_limited`, `validation_failed`), `invalidated_at`, and the
//!   creation-failure record (consecutive count and last failure time), persisted so that the backoff survives
//!   restarts and is shared by replicas; the per-preset pause is kept by template and preset *name*, so it
//!   survives new versions;
//! - **workspaces, builds and their jobs** (one row per build): the observed state and the job queue, with each
//!   workspace's latest build mirrored on its row, updated in the same transaction, so the snapshot and the claim
//!   never have to search for it. Leases (owner, random token, expiry, attempts) fence job results; the recorded
//!   process group lets a restarted single-process server kill what its predecessor left running;
//! - **claim events** (`claim_succeeded`, `claim_missed`, kept 7 days) and the **monotonic counters** of SPEC
//!   section 8, written in the same transaction as their event so that they agree across replicas and restarts;
//! - **claim idempotency keys** (24 h per owner), **settings** (the global pause) and **the last tick** (which
//!   replica reconciled, when, and what it did).
//!
//! Timestamps are BIGINT Unix milliseconds on both backends, written from the `now` every write is given (SQL
//! never reads a clock), so expiry arithmetic is identical on both and the two schemas match column for column.
//! Ids are UUID v7 strings minted by the store.
//!
//! # What this crate does not do
//!
//! Decide: every derived quantity (running, expired, in progress, backoff, hard limit) is computed by the planner
//! in `warmpool-core` from the facts of [`warmpool_core::model::Snapshot`]. Run builds, retry, or schedule ticks:
//! that is the runtime's job. Validate names and limits of the configuration grammar: the edges do, before a
//! [`warmpool_core::template::TemplateSpec`] exists.

mod any;
mod error;
pub mod postgres;
pub mod sqlite;
mod store;
mod types;
mod util;

#[cfg(feature = "testing")]
pub mod testing;

pub use any::{AnyReconcileLock, AnyStore};
pub use error::StoreError;
pub use postgres::{PgReconcileLock, PgStore, RECONCILE_LOCK_ID};
pub use sqlite::{SqliteReconcileLock, SqliteStore};
pub use store::{ReconcileLock, Store, StoreResult};
pub use types::*;
