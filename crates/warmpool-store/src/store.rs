//! The `Store` trait: every read and write warmpool makes, as short transactions with `now` passed in.
//!
//! Invariants every implementation keeps:
//! - each write is one short transaction; none stays open while a build runs, and none reads a clock (`now` is
//!   an argument, stored as Unix milliseconds);
//! - a workspace's latest build is mirrored on its row in the same transaction as every build or job change;
//! - events and their counters are written in the same transaction;
//! - a claim is one conditional update that only ever hands out a ready, unexpired prebuild of an active preset;
//! - job results are fenced by the lease token: a stale token changes nothing and says so
//!   ([`StoreError::StaleLease`]).
//!
//! Methods return `impl Future + Send` so that the runtime can spawn them from generic code. The trait is not
//! object-safe; [`crate::AnyStore`] is the one concrete type the binary needs.
//!
//! Deliberately not here: deciding anything the planner decides (running, expired, backoff, hard limit are
//! derived from the snapshot's facts), retry policy (the runtime picks `RetryAt` times), and notifications.

use std::future::Future;

use chrono::{DateTime, Utc};
use warmpool_core::ids::{PresetId, WorkspaceId};
use warmpool_core::model::{PlannerConfig, PresetStatus, Settings, Snapshot, Transition};
use warmpool_core::template::TemplateSpec;

use crate::error::StoreError;
use crate::types::*;

/// Result alias for store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// The reconciliation lock, held for one tick (SPEC section 9): take it, read the snapshot through it, run the
/// tick's writes through the store, then [`ReconcileLock::release`] it.
pub trait ReconcileLock: Send {
    /// The snapshot, read after the lock was taken (on PostgreSQL in a read-only REPEATABLE READ transaction on
    /// the lock's own connection), so it sees everything the previous holder wrote.
    fn snapshot(
        &mut self,
        now: DateTime<Utc>,
        config: PlannerConfig,
    ) -> impl Future<Output = StoreResult<Snapshot>> + Send;

    /// Releases the lock. Dropping the lock without releasing it also releases it (on PostgreSQL by closing its
    /// connection).
    fn release(self) -> impl Future<Output = StoreResult<()>> + Send;
}

/// warmpool's persistence. See the crate docs for what is stored and why.
pub trait Store: Send + Sync + 'static {
    type Lock: ReconcileLock;

    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;

    /// The database answers (for `/readyz`).
    fn ping(&self) -> impl Future<Output = StoreResult<()>> + Send;

    // ----- reconciliation -----

    /// Tries to become the reconciler for one tick: `None` when another replica (or another tick of this
    /// process) holds the lock.
    fn try_lock_reconciliation(
        &self,
    ) -> impl Future<Output = StoreResult<Option<Self::Lock>>> + Send;

    /// A consistent snapshot without the lock (gauges, the plan endpoint).
    fn snapshot(
        &self,
        now: DateTime<Utc>,
        config: PlannerConfig,
    ) -> impl Future<Output = StoreResult<Snapshot>> + Send;

    /// Records the tick this replica just ran, for `/api/v1/status` on every replica.
    fn record_tick(&self, tick: &TickRecord) -> impl Future<Output = StoreResult<()>> + Send;

    /// The last tick any replica recorded.
    fn last_tick(&self) -> impl Future<Output = StoreResult<Option<TickRecord>>> + Send;

    // ----- templates -----

    /// Applies a template: a new version (activated) when its build definition differs from the active
    /// version's, otherwise the pool settings, `max_workspaces` and `claim_build` in place. Re-applying a deleted
    /// template revives it.
    fn apply_template(
        &self,
        spec: &TemplateSpec,
        applied_by: AppliedBy,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<ApplyResult>> + Send;

    /// Marks a template deleted (its presets become inactive, so the reconciler deletes its prebuilds).
    fn delete_template(
        &self,
        name: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Every template (deleted ones too), with versions and presets, ordered by name.
    fn list_templates(&self) -> impl Future<Output = StoreResult<Vec<TemplateInfo>>> + Send;

    fn get_template(
        &self,
        name: &str,
    ) -> impl Future<Output = StoreResult<Option<TemplateInfo>>> + Send;

    // ----- presets and settings -----

    /// The active version's preset of a template, by names (`None`: no such active preset).
    fn active_preset(
        &self,
        template: &str,
        preset: &str,
    ) -> impl Future<Output = StoreResult<Option<PresetInfo>>> + Send;

    /// The per-preset pause, kept by names across versions.
    fn set_preset_paused(
        &self,
        template: &str,
        preset: &str,
        paused: bool,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Expires every current prebuild of the active version's preset; answers how many running prebuilds
    /// became expired by it.
    fn invalidate_preset(
        &self,
        template: &str,
        preset: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<u64>> + Send;

    fn set_preset_status(
        &self,
        preset: &PresetId,
        status: PresetStatus,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// One more consecutive creation failure, stamped `now`.
    fn record_creation_failure(
        &self,
        preset: &PresetId,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Clears the creation-failure record ([`Store::create_prebuild`] already does it in its own transaction).
    fn record_creation_success(
        &self,
        preset: &PresetId,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    fn settings(&self) -> impl Future<Output = StoreResult<Settings>> + Send;

    fn set_reconciliation_paused(
        &self,
        paused: bool,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    // ----- prebuilds -----

    /// A new prebuild of an active preset: workspace, build #1 (`start`) and its job together, refused with
    /// `QuotaExceeded` when the template's quota is full and `Inactive` when the preset is not active any more.
    /// Clears the preset's creation-failure record and counts `prebuilds_created`.
    fn create_prebuild(
        &self,
        preset: &PresetId,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<CreatedPrebuild>> + Send;

    /// Queues a `delete` build of a prebuild; `NotPrebuild` once it was claimed, `Conflict` while a build is in
    /// progress.
    fn delete_prebuild(
        &self,
        workspace: &WorkspaceId,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<BuildRecord>> + Send;

    /// Cancels the preset's first builds that are still pending on an inactive version and that no worker ever
    /// took (the criteria are in the UPDATE itself), and deletes their workspaces without running anything.
    /// Answers the workspaces affected.
    fn cancel_pending_prebuilds(
        &self,
        preset: &PresetId,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<Vec<WorkspaceId>>> + Send;

    // ----- claims and user workspaces -----

    /// The warm claim: the oldest ready, unexpired prebuild of the active version's preset moves to the owner
    /// in one conditional update, with `claim_succeeded` (or `claim_missed`) and its counter. `NotFound` when the
    /// template has no such active preset, `NameTaken` when the owner already has a live workspace of the name.
    fn claim(
        &self,
        request: &ClaimRequest,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<ClaimOutcome>> + Send;

    /// The cold claim: a new workspace of the active version's preset for the owner, with a `start` build
    /// (quota-checked).
    fn create_workspace(
        &self,
        request: &ClaimRequest,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<(WorkspaceRecord, BuildRecord)>> + Send;

    /// Queues a user build (`start`, `stop`, `delete`) of a live workspace; `Conflict` while one is in progress.
    fn enqueue_build(
        &self,
        workspace: &WorkspaceId,
        transition: Transition,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<BuildRecord>> + Send;

    fn get_workspace(
        &self,
        id: &WorkspaceId,
    ) -> impl Future<Output = StoreResult<Option<WorkspaceRecord>>> + Send;

    /// Ordered by creation, oldest first.
    fn list_workspaces(
        &self,
        filter: &WorkspaceFilter,
    ) -> impl Future<Output = StoreResult<Vec<WorkspaceRecord>>> + Send;

    /// Newest first.
    fn list_builds(
        &self,
        workspace: &WorkspaceId,
    ) -> impl Future<Output = StoreResult<Vec<BuildRecord>>> + Send;

    fn get_build(
        &self,
        id: &BuildId,
    ) -> impl Future<Output = StoreResult<Option<BuildRecord>>> + Send;

    /// The build's stored log (the last 1 MiB).
    fn build_log(&self, id: &BuildId) -> impl Future<Output = StoreResult<Option<String>>> + Send;

    // ----- the job queue -----

    /// Takes the oldest runnable job (user jobs before prebuild jobs; deletes, stops, starts) under a fresh
    /// lease of `lease` length, and counts the run.
    fn acquire_job(
        &self,
        worker: &str,
        lease: chrono::TimeDelta,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<Option<AcquiredJob>>> + Send;

    /// Extends a lease; `StaleLease` when the token is not the current one (the worker must kill its build).
    fn renew_lease(
        &self,
        job: &JobId,
        token: &str,
        lease: chrono::TimeDelta,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<DateTime<Utc>>> + Send;

    /// Records the process group a run started (fenced by the token).
    fn record_job_process(
        &self,
        job: &JobId,
        token: &str,
        process: &ProcessRecord,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Finishes a job with the current token only; `StaleLease` changes nothing. The log is kept (its last
    /// 1 MiB).
    fn complete_job(
        &self,
        job: &JobId,
        token: &str,
        outcome: &JobOutcome,
        log: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Running jobs whose lease expired before `now`.
    fn expired_leases(
        &self,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<Vec<ExpiredLease>>> + Send;

    /// Puts an expired job back in the queue, or fails a `start`/`stop` that has run [`MAX_RUNS`] times.
    fn requeue_expired(
        &self,
        job: &JobId,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<RequeueOutcome>> + Send;

    /// Expires every running lease at once (SQLite start-up: the previous process is gone); answers how many.
    fn expire_all_leases(
        &self,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<u64>> + Send;

    fn job_counts(&self) -> impl Future<Output = StoreResult<JobCounts>> + Send;

    // ----- metrics, events, idempotency -----

    /// Every counter series, summed.
    fn counters(&self) -> impl Future<Output = StoreResult<Vec<CounterValue>>> + Send;

    /// Claim events at or after `since`, oldest first.
    fn claim_events(
        &self,
        since: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<Vec<ClaimEvent>>> + Send;

    /// Claims an idempotency key for a request (keys live 24 h per owner).
    fn idempotency_begin(
        &self,
        owner: &str,
        key: &str,
        request: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<IdempotencyBegin>> + Send;

    /// Stores the answer to replay.
    fn idempotency_finish(
        &self,
        owner: &str,
        key: &str,
        status: u16,
        body: &serde_json::Value,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Forgets an in-flight key whose answer is not kept (an error other than 2xx or 409).
    fn idempotency_release(
        &self,
        owner: &str,
        key: &str,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Drops claim events older than 7 days and idempotency keys older than 24 h.
    fn prune(&self, now: DateTime<Utc>) -> impl Future<Output = StoreResult<()>> + Send;

    // ----- notifications -----

    /// Every webhook's last notified state, per preset.
    fn notification_states(
        &self,
    ) -> impl Future<Output = StoreResult<Vec<NotificationState>>> + Send;

    /// Stores new states and queues their payloads, all in one transaction.
    fn record_notifications(
        &self,
        changes: &[NotificationChange],
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Takes up to `limit` payloads due at `now` that nobody holds, under a lease of `lease`, oldest first.
    fn take_notifications(
        &self,
        now: DateTime<Utc>,
        lease: chrono::TimeDelta,
        limit: u32,
    ) -> impl Future<Output = StoreResult<Vec<PendingNotification>>> + Send;

    /// Records how a delivery attempt ended.
    fn finish_notification(
        &self,
        id: &str,
        outcome: &DeliveryOutcome,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<()>> + Send;
}
