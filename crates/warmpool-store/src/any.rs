//! `AnyStore`: the one concrete store type the binary uses, chosen at start-up from the database URL.
//!
//! `Store` uses `impl Future` methods, so it is not object-safe; an enum keeps the binary free of generics (and
//! of compiling the server twice) while each call still dispatches to a concrete backend. It adds nothing else.

use chrono::{DateTime, TimeDelta, Utc};
use warmpool_core::ids::{PresetId, WorkspaceId};
use warmpool_core::model::{PlannerConfig, PresetStatus, Settings, Snapshot, Transition};
use warmpool_core::template::TemplateSpec;

use crate::error::StoreError;
use crate::postgres::{PgReconcileLock, PgStore};
use crate::sqlite::{SqliteReconcileLock, SqliteStore};
use crate::store::{ReconcileLock, Store, StoreResult};
use crate::types::*;

/// A SQLite or a PostgreSQL store.
#[derive(Debug, Clone)]
pub enum AnyStore {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl AnyStore {
    /// Opens `sqlite://PATH` (or `sqlite:PATH`) or connects to `postgres://...` / `postgresql://...` (a pool of
    /// `max_connections`), running the migrations.
    pub async fn open(url: &str, max_connections: u32) -> StoreResult<AnyStore> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(AnyStore::Postgres(
                PgStore::connect(url, max_connections).await?,
            ))
        } else if url.starts_with("sqlite:") {
            Ok(AnyStore::Sqlite(SqliteStore::open_url(url).await?))
        } else {
            Err(StoreError::Invalid(format!(
                "database: {url:?} is neither a sqlite: nor a postgres:// URL"
            )))
        }
    }
}

impl AnyStore {
    /// Wakes job workers after a commit that queued a job: `NOTIFY` on PostgreSQL (other replicas' workers
    /// `LISTEN` on [`crate::postgres::JOBS_CHANNEL`]); nothing on SQLite, whose only process knows already.
    pub async fn notify_jobs(&self) -> StoreResult<()> {
        match self {
            AnyStore::Sqlite(_) => Ok(()),
            AnyStore::Postgres(s) => s.notify_jobs().await,
        }
    }
}

/// The reconciliation lock of an [`AnyStore`].
#[derive(Debug)]
pub enum AnyReconcileLock {
    Sqlite(SqliteReconcileLock),
    Postgres(PgReconcileLock),
}

impl ReconcileLock for AnyReconcileLock {
    async fn snapshot(
        &mut self,
        now: DateTime<Utc>,
        config: PlannerConfig,
    ) -> StoreResult<Snapshot> {
        match self {
            AnyReconcileLock::Sqlite(l) => l.snapshot(now, config).await,
            AnyReconcileLock::Postgres(l) => l.snapshot(now, config).await,
        }
    }

    async fn release(self) -> StoreResult<()> {
        match self {
            AnyReconcileLock::Sqlite(l) => l.release().await,
            AnyReconcileLock::Postgres(l) => l.release().await,
        }
    }
}

impl Store for AnyStore {
    type Lock = AnyReconcileLock;

    fn backend(&self) -> &'static str {
        match self {
            AnyStore::Sqlite(s) => s.backend(),
            AnyStore::Postgres(s) => s.backend(),
        }
    }

    async fn try_lock_reconciliation(&self) -> StoreResult<Option<AnyReconcileLock>> {
        match self {
            AnyStore::Sqlite(s) => Ok(s
                .try_lock_reconciliation()
                .await?
                .map(AnyReconcileLock::Sqlite)),
            AnyStore::Postgres(s) => Ok(s
                .try_lock_reconciliation()
                .await?
                .map(AnyReconcileLock::Postgres)),
        }
    }

    async fn ping(&self) -> StoreResult<()> {
        match self {
            AnyStore::Sqlite(s) => s.ping().await,
            AnyStore::Postgres(s) => s.ping().await,
        }
    }

    async fn snapshot(&self, now: DateTime<Utc>, config: PlannerConfig) -> StoreResult<Snapshot> {
        match self {
            AnyStore::Sqlite(s) => s.snapshot(now, config).await,
            AnyStore::Postgres(s) => s.snapshot(now, config).await,
        }
    }

    async fn record_tick(&self, tick: &TickRecord) -> StoreResult<()> {
        match self {
            AnyStore::Sqlite(s) => s.record_tick(tick).await,
            AnyStore::Postgres(s) => s.record_tick(tick).await,
        }
    }

    async fn last_tick(&self) -> StoreResult<Option<TickRecord>> {
        match self {
            AnyStore::Sqlite(s) => s.last_tick().await,
            AnyStore::Postgres(s) => s.last_tick().await,
        }
    }

    async fn apply_template(
        &self,
        spec: &TemplateSpec,
        applied_by: AppliedBy,
        now: DateTime<Utc>,
    ) -> StoreResult<ApplyResult> {
        match self {
            AnyStore::Sqlite(s) => s.apply_template(spec, applied_by, now).await,
            AnyStore::Postgres(s) => s.apply_template(spec, applied_by, now).await,
        }
    }

    async fn delete_template(&self, name: &str, now: DateTime<Utc>) -> StoreResult<()> {
        match self {
            AnyStore::Sqlite(s) => s.delete_template(name, now).await,
            AnyStore::Postgres(s) => s.delete_template(name, now).await,
        }
    }

    async fn list_templates(&self) -> StoreResult<Vec<TemplateInfo>> {
        match self {
            AnyStore::Sqlite(s) => s.list_templates().await,
            AnyStore::Postgres(s) => s.list_templates().await,
        }
    }

    async fn get_template(&self, name: &str) -> StoreResult<Option<TemplateInfo>> {
        match self {
            AnyStore::Sqlite(s) => s.get_template(name).await,
            AnyStore::Postgres(s) => s.get_template(name).await,
        }
    }

    async fn active_preset(&self, template: &str, preset: &str) -> StoreResult<Option<PresetInfo>> {
        match self {
            AnyStore::Sqlite(s) => s.active_preset(template, preset).await,
            AnyStore::Postgres(s) => s.active_preset(template, preset).await,
        }
    }

    async fn set_preset_paused(
        &self,
        template: &str,
        preset: &str,
        paused: bool,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        match self {
            AnyStore::Sqlite(s) => s.set_preset_paused(template, preset, paused, now).await,
            AnyStore::Postgres(s) => s.set_preset_paused(template, preset, paused, now).await,
        }
    }

    async fn invalidate_preset(
        &self,
        template: &str,
        preset: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<u64> {
        match self {
            AnyStore::Sqlite(s) => s.invalidate_preset(template, preset, now).await,
            AnyStore::Postgres(s) => s.invalidate_preset(template, preset, now).await,
        }
    }

    async fn set_preset_status(
        &self,
        preset: &PresetId,
        status: PresetStatus,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        match self {
            AnyStore::Sqlite(s) => s.set_preset_status(preset, status, now).await,
            AnyStore::Postgres(s) => s.set_preset_status(preset, status, now).await,
        }
    }

    async fn record_creation_failure(
        &self,
        preset: &PresetId,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        match self {
            AnyStore::Sqlite(s) => s.record_creation_failure(preset, now).await,
            AnyStore::Postgres(s) => s.record_creation_failure(preset, now).await,
        }
    }

    async fn record_creation_success(
        &self,
        preset: &PresetId,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        match self {
            AnyStore::Sqlite(s) => s.record_creation_success(preset, now).await,
            AnyStore::Postgres(s) => s.record_creation_success(preset, now).await,
        }
    }

    async fn settings(&self) -> StoreResult<Settings> {
        match self {
            AnyStore::Sqlite(s) => s.settings().await,
            AnyStore::Postgres(s) => s.settings().await,
        }
    }

    async fn set_reconciliation_paused(&self, paused: bool, now: DateTime<Utc>) -> StoreResult<()> {
        match self {
            AnyStore::Sqlite(s) => s.set_reconciliation_paused(paused, now).await,
            AnyStore::Postgres(s) => s.set_reconciliation_paused(paused, now).await,
        }
    }

    async fn create_prebuild(
        &self,
        preset: &PresetId,
        now: DateTime<Utc>,
    ) -> StoreResult<CreatedPrebuild> {
        match self {
            AnyStore::Sqlite(s) => s.create_prebuild(preset, now).await,
            AnyStore::Postgres(s) => s.create_prebuild(preset, now).await,
        }
    }

    async fn delete_prebuild(
        &self,
        workspace: &WorkspaceId,
        now: DateTime<Utc>,
    ) -> StoreResult<BuildRecord> {
        match self {
            AnyStore::Sqlite(s) => s.delete_prebuild(workspace, now).await,
            AnyStore::Postgres(s) => s.delete_prebuild(workspace, now).await,
        }
    }

    async fn cancel_pending_prebuilds(
        &self,
        preset: &PresetId,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<WorkspaceId>> {
        match self {
            AnyStore::Sqlite(s) => s.cancel_pending_prebuilds(preset, now).await,
            AnyStore::Postgres(s) => s.cancel_pending_prebuilds(preset, now).await,
        }
    }

    async fn claim(&self, request: &ClaimRequest, now: DateTime<Utc>) -> StoreResult<ClaimOutcome> {
        match self {
            AnyStore::Sqlite(s) => s.claim(request, now).await,
            AnyStore::Postgres(s) => s.claim(request, now).await,
        }
    }

    async fn create_workspace(
        &self,
        request: &ClaimRequest,
        now: DateTime<Utc>,
    ) -> StoreResult<(WorkspaceRecord, BuildRecord)> {
        match self {
            AnyStore::Sqlite(s) => s.create_workspace(request, now).await,
            AnyStore::Postgres(s) => s.create_workspace(request, now).await,
        }
    }

    async fn enqueue_build(
        &self,
        workspace: &WorkspaceId,
        transition: Transition,
        now: DateTime<Utc>,
    ) -> StoreResult<BuildRecord> {
        match self {
            AnyStore::Sqlite(s) => s.enqueue_build(workspace, transition, now).await,
            AnyStore::Postgres(s) => s.enqueue_build(workspace, transition, now).await,
        }
    }

    async fn get_workspace(&self, id: &WorkspaceId) -> StoreResult<Option<WorkspaceRecord>> {
        match self {
            AnyStore::Sqlite(s) => s.get_workspace(id).await,
            AnyStore::Postgres(s) => s.get_workspace(id).await,
        }
    }

    async fn list_workspaces(&self, filter: &WorkspaceFilter) -> StoreResult<Vec<WorkspaceRecord>> {
        match self {
            AnyStore::Sqlite(s) => s.list_workspaces(filter).await,
            AnyStore::Postgres(s) => s.list_workspaces(filter).await,
        }
    }

    async fn list_builds(&self, workspace: &WorkspaceId) -> StoreResult<Vec<BuildRecord>> {
        match self {
            AnyStore::Sqlite(s) => s.list_builds(workspace).await,
            AnyStore::Postgres(s) => s.list_builds(workspace).await,
        }
    }

    async fn get_build(&self, id: &BuildId) -> StoreResult<Option<BuildRecord>> {
        match self {
            AnyStore::Sqlite(s) => s.get_build(id).await,
            AnyStore::Postgres(s) => s.get_build(id).await,
        }
    }

    async fn build_log(&self, id: &BuildId) -> StoreResult<Option<String>> {
        match self {
            AnyStore::Sqlite(s) => s.build_log(id).await,
            AnyStore::Postgres(s) => s.build_log(id).await,
        }
    }

    async fn acquire_job(
        &self,
        worker: &str,
        lease: TimeDelta,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<AcquiredJob>> {
        match self {
            AnyStore::Sqlite(s) => s.acquire_job(worker, lease, now).await,
            AnyStore::Postgres(s) => s.acquire_job(worker, lease, now).await,
        }
    }

    async fn renew_lease(
        &self,
        job: &JobId,
        token: &str,
        lease: TimeDelta,
        now: DateTime<Utc>,
    ) -> StoreResult<DateTime<Utc>> {
        match self {
            AnyStore::Sqlite(s) => s.renew_lease(job, token, lease, now).await,
            AnyStore::Postgres(s) => s.renew_lease(job, token, lease, now).await,
        }
    }

    async fn record_job_process(
        &self,
        job: &JobId,
        token: &str,
        process: &ProcessRecord,
    ) -> StoreResult<()> {
        match self {
            AnyStore::Sqlite(s) => s.record_job_process(job, token, process).await,
            AnyStore::Postgres(s) => s.record_job_process(job, token, process).await,
        }
    }

    async fn complete_job(
        &self,
        job: &JobId,
        token: &str,
        outcome: &JobOutcome,
        log: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        match self {
            AnyStore::Sqlite(s) => s.complete_job(job, token, outcome, log, now).await,
            AnyStore::Postgres(s) => s.complete_job(job, token, outcome, log, now).await,
        }
    }

    async fn expired_leases(&self, now: DateTime<Utc>) -> StoreResult<Vec<ExpiredLease>> {
        match self {
            AnyStore::Sqlite(s) => s.expired_leases(now).await,
            AnyStore::Postgres(s) => s.expired_leases(now).await,
        }
    }

    async fn requeue_expired(
        &self,
        job: &JobId,
        now: DateTime<Utc>,
    ) -> StoreResult<RequeueOutcome> {
        match self {
            AnyStore::Sqlite(s) => s.requeue_expired(job, now).await,
            AnyStore::Postgres(s) => s.requeue_expired(job, now).await,
        }
    }

    async fn expire_all_leases(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        match self {
            AnyStore::Sqlite(s) => s.expire_all_leases(now).await,
            AnyStore::Postgres(s) => s.expire_all_leases(now).await,
        }
    }

    async fn job_counts(&self) -> StoreResult<JobCounts> {
        match self {
            AnyStore::Sqlite(s) => s.job_counts().await,
            AnyStore::Postgres(s) => s.job_counts().await,
        }
    }

    async fn counters(&self) -> StoreResult<Vec<CounterValue>> {
        match self {
            AnyStore::Sqlite(s) => s.counters().await,
            AnyStore::Postgres(s) => s.counters().await,
        }
    }

    async fn claim_events(&self, since: DateTime<Utc>) -> StoreResult<Vec<ClaimEvent>> {
        match self {
            AnyStore::Sqlite(s) => s.claim_events(since).await,
            AnyStore::Postgres(s) => s.claim_events(since).await,
        }
    }

    async fn idempotency_begin(
        &self,
        owner: &str,
        key: &str,
        request: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> StoreResult<IdempotencyBegin> {
        match self {
            AnyStore::Sqlite(s) => s.idempotency_begin(owner, key, request, now).await,
            AnyStore::Postgres(s) => s.idempotency_begin(owner, key, request, now).await,
        }
    }

    async fn idempotency_finish(
        &self,
        owner: &str,
        key: &str,
        status: u16,
        body: &serde_json::Value,
    ) -> StoreResult<()> {
        match self {
            AnyStore::Sqlite(s) => s.idempotency_finish(owner, key, status, body).await,
            AnyStore::Postgres(s) => s.idempotency_finish(owner, key, status, body).await,
        }
    }

    async fn idempotency_release(&self, owner: &str, key: &str) -> StoreResult<()> {
        match self {
            AnyStore::Sqlite(s) => s.idempotency_release(owner, key).await,
            AnyStore::Postgres(s) => s.idempotency_release(owner, key).await,
        }
    }

    async fn prune(&self, now: DateTime<Utc>) -> StoreResult<()> {
        match self {
            AnyStore::Sqlite(s) => s.prune(now).await,
            AnyStore::Postgres(s) => s.prune(now).await,
        }
    }

    async fn notification_states(&self) -> StoreResult<Vec<NotificationState>> {
        match self {
            AnyStore::Sqlite(s) => s.notification_states().await,
            AnyStore::Postgres(s) => s.notification_states().await,
        }
    }

    async fn record_notifications(
        &self,
        changes: &[NotificationChange],
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        match self {
            AnyStore::Sqlite(s) => s.record_notifications(changes, now).await,
            AnyStore::Postgres(s) => s.record_notifications(changes, now).await,
        }
    }

    async fn take_notifications(
        &self,
        now: DateTime<Utc>,
        lease: TimeDelta,
        limit: u32,
    ) -> StoreResult<Vec<PendingNotification>> {
        match self {
            AnyStore::Sqlite(s) => s.take_notifications(now, lease, limit).await,
            AnyStore::Postgres(s) => s.take_notifications(now, lease, limit).await,
        }
    }

    async fn finish_notification(
        &self,
        id: &str,
        outcome: &DeliveryOutcome,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        match self {
            AnyStore::Sqlite(s) => s.finish_notification(id, outcome, now).await,
            AnyStore::Postgres(s) => s.finish_notification(id, outcome, now).await,
        }
    }
}
