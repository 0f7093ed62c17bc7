//! The store's one error type.
//!
//! Callers branch on the variants that carry a meaning for them (`QuotaExceeded`, `NotPrebuild`, `StaleLease`,
//! `NotFound`, `Conflict`, `NameTaken`, `Inactive`, `Locked`); everything the database itself refused is
//! `Database`, with a context naming the operation. Display never repeats the source: log the whole chain with
//! [`std::error::Error::source`].

use std::path::PathBuf;

use warmpool_core::ids::{PresetId, WorkspaceId};

use crate::types::BuildId;

/// Everything a store operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The named thing does not exist (or no longer does: a deleted workspace, a template without an active
    /// version).
    #[error("{what} not found")]
    NotFound { what: String },
    /// The template's `max_workspaces` quota of live workspaces is full.
    #[error("template {template} already has its maximum of {max} live workspaces")]
    QuotaExceeded { template: String, max: u32 },
    /// A prebuild operation on a workspace whose owner is no longer `prebuilds` (it was claimed).
    #[error("workspace {0} is no longer a prebuild (it was probably claimed)")]
    NotPrebuild(WorkspaceId),
    /// The workspace already has a build in progress (pending, running or canceling).
    #[error("workspace {0} already has a build in progress")]
    Conflict(WorkspaceId),
    /// Another live workspace of the owner has the name.
    #[error("owner {owner} already has a live workspace named {name}")]
    NameTaken { owner: String, name: String },
    /// The job's lease is no longer held with this token (it expired and was requeued, or the job finished):
    /// nothing was changed.
    #[error("job {0} is no longer leased with this token; nothing was changed")]
    StaleLease(BuildId),
    /// The preset is not on its template's active version (or the template is deleted).
    #[error("preset {0} is not on its template's active version")]
    Inactive(PresetId),
    /// A value the store was given cannot be stored (the message names it).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// Another process holds the SQLite database's lock file.
    #[error(
        "database {} is in use by another warmpool process (lock file {} is held)",
        database.display(),
        lock.display()
    )]
    Locked { database: PathBuf, lock: PathBuf },
    /// A stored value could not be read back (the message names it).
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// The database refused an operation.
    #[error("{context}")]
    Database {
        context: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// Running the embedded migrations failed.
    #[error("could not migrate the {backend} database")]
    Migrate {
        backend: &'static str,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// A file the store needs (the SQLite lock file) could not be used.
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    pub(crate) fn not_found(what: impl Into<String>) -> StoreError {
        StoreError::NotFound { what: what.into() }
    }

    pub(crate) fn corrupt(what: impl Into<String>) -> StoreError {
        StoreError::Corrupt(what.into())
    }
}

/// `.db("doing x")` on a sqlx result: wraps the error with the operation's name.
pub(crate) trait DbContext<T> {
    fn db(self, context: &'static str) -> Result<T, StoreError>;
}

impl<T> DbContext<T> for Result<T, sqlx::Error> {
    fn db(self, context: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Database { context, source })
    }
}

/// Whether a database error is a unique-constraint violation (both backends).
pub(crate) fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(e) if e.is_unique_violation())
}
