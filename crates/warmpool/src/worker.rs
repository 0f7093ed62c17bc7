//! Build workers: take jobs from the queue under a lease, run them with the template's provisioner, renew the
//! lease while the build runs, and finish with the fenced update.
//!
//! Invariants:
//! - a worker holds no transaction while a build runs; every store call is its own short transaction;
//! - the lease is renewed every third of its length; when a renewal fails the build is killed at once (another
//!   worker may already own the job) and its result is never written;
//! - a result is written only with the current lease token, so a worker that lost its lease cannot overwrite
//!   anything;
//! - a job whose lease expired was lost with its worker: the sweeper puts it back in the queue (a `start` or `stop`
//!   at most 3 runs in all, a `delete` always), and it runs again on its own workspace — it never creates another;
//! - a failed `delete` is retried with exponential backoff from `delete_retry`, doubling up to 30 minutes;
//! - on shutdown workers stop taking jobs and let running builds finish within the grace period; a build still
//!   running after it is killed, and its job is left to expire and run again.
//!
//! Workers wake at once when a job is queued in this process ([`JobNotify`]) and poll every second otherwise.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, info_span, warn};
use warmpool_core::model::Transition;
use warmpool_core::template::parameter_env_name;
use warmpool_store::{AcquiredJob, JobOutcome, ProcessRecord, RequeueOutcome, Store, StoreError};

use crate::clock::Clock;
use crate::config::ProvisionerConfig;
use crate::executor::chain;
use crate::metrics::Metrics;
use crate::provisioner::exec::{self, BuildRequest, BuildResult};
use crate::provisioner::process;
use crate::reconciler::Trigger;

/// How often an idle worker looks for work without being woken.
pub const POLL: StdDuration = StdDuration::from_secs(1);
/// The longest wait before retrying a failed delete.
pub const MAX_DELETE_RETRY: TimeDelta = TimeDelta::minutes(30);

/// Wakes idle workers when a job is queued: this process's workers at once, and, through [`JobNotify::publish`]
/// (run by `serve` on PostgreSQL), other replicas' and remote provisioners' workers via `NOTIFY`.
#[derive(Debug, Clone, Default)]
pub struct JobNotify {
    local: Arc<Notify>,
    outbound: Arc<Notify>,
}

impl JobNotify {
    /// A job was queued here: wake local workers and tell the others.
    pub fn wake(&self) {
        self.wake_local();
        self.outbound.notify_one();
    }

    /// Another process queued a job: wake local workers only.
    pub fn wake_local(&self) {
        self.local.notify_waiters();
        self.local.notify_one();
    }

    /// Calls `send` once per burst of [`JobNotify::wake`]s, until `stop`.
    pub async fn publish<F, Fut>(&self, stop: CancellationToken, send: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.outbound.notified() => send().await,
            }
        }
    }
}

/// Wakes `jobs`'s local workers whenever another process `NOTIFY`s the jobs channel, until `stop`. Reconnects
/// after a lost connection (workers also poll, so a missed notification only adds latency).
pub async fn listen_postgres(url: String, jobs: JobNotify, stop: CancellationToken) {
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect(&url).await {
            Ok(listener) => listener,
            Err(err) => {
                warn!(error = %err, "cannot LISTEN for new jobs; retrying");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(StdDuration::from_secs(2)) => continue,
                }
            }
        };
        if let Err(err) = listener
            .listen(warmpool_store::postgres::JOBS_CHANNEL)
            .await
        {
            warn!(error = %err, "cannot LISTEN for new jobs; retrying");
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(StdDuration::from_secs(2)) => continue,
            }
        }
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                received = listener.try_recv() => match received {
                    Ok(_) => jobs.wake_local(),
                    Err(err) => {
                        warn!(error = %err, "lost the LISTEN connection; reconnecting");
                        break;
                    }
                },
            }
        }
    }
}

/// Everything a worker needs.
#[derive(Debug)]
pub struct Workers<S: Store> {
    pub store: Arc<S>,
    pub clock: Arc<dyn Clock>,
    pub config: ProvisionerConfig,
    pub data_dir: PathBuf,
    pub replica_id: String,
    /// `PATH` handed to builds.
    pub path_var: String,
    pub jobs: JobNotify,
    /// Fired after every finished build, so the reconciler reacts at once.
    pub reconcile: Trigger,
    /// `warmpool_build_duration_seconds`.
    pub metrics: Metrics,
}

/// The delay before the next run of a delete that failed on its `attempts`-th run.
pub fn delete_retry_delay(first: TimeDelta, attempts: u32) -> TimeDelta {
    let doublings = attempts.saturating_sub(1).min(20);
    first
        .checked_mul(1 << doublings)
        .unwrap_or(MAX_DELETE_RETRY)
        .min(MAX_DELETE_RETRY)
}

impl<S: Store> Workers<S> {
    fn lease(&self) -> TimeDelta {
        self.config.lease.to_time_delta()
    }

    fn state_dir(&self, job: &AcquiredJob) -> PathBuf {
        self.data_dir
            .join("workspaces")
            .join(job.build.workspace_id.as_str())
    }

    fn request(&self, job: &AcquiredJob) -> BuildRequest {
        let b = &job.build;
        let mut env: Vec<(String, String)> = vec![
            ("WARMPOOL_TRANSITION".into(), b.transition.as_str().into()),
            ("WARMPOOL_WORKSPACE_ID".into(), b.workspace_id.to_string()),
            ("WARMPOOL_WORKSPACE_NAME".into(), job.workspace_name.clone()),
            ("WARMPOOL_OWNER".into(), job.owner.clone()),
            ("WARMPOOL_TEMPLATE".into(), job.template.clone()),
            (
                "WARMPOOL_TEMPLATE_VERSION".into(),
                job.template_version.clone(),
            ),
            (
                "WARMPOOL_PRESET".into(),
                job.preset.clone().unwrap_or_default(),
            ),
            ("WARMPOOL_BUILD_ID".into(), b.id.to_string()),
            ("WARMPOOL_BUILD_NUMBER".into(), b.number.to_string()),
            (
                "WARMPOOL_IS_PREBUILD".into(),
                (job.owner == warmpool_core::PREBUILDS_OWNER).to_string(),
            ),
            ("WARMPOOL_IS_PREBUILD_CLAIM".into(), b.is_claim.to_string()),
        ];
        env.extend(
            job.parameters
                .iter()
                .map(|p| (parameter_env_name(&p.name), p.value.clone())),
        );
        BuildRequest {
            command: job.definition.command.clone(),
            transition: b.transition,
            env,
            path_var: self.path_var.clone(),
            state_dir: self.state_dir(job),
            outputs_file: self
                .data_dir
                .join("builds")
                .join(format!("{}.outputs.json", b.id)),
            timeout: job.definition.timeout.to_std(),
            kill_grace: self.config.kill_grace.to_std(),
            sensitive: job
                .parameters
                .iter()
                .filter(|p| p.sensitive && !p.value.is_empty())
                .map(|p| p.value.clone())
                .collect(),
        }
    }

    /// Runs one acquired job to its end (or until its lease is lost).
    pub async fn run_job(self: &Arc<Self>, job: AcquiredJob) {
        let build_id = job.build.id.clone();
        let token = job.lease.token.clone();
        let request = self.request(&job);
        if let Some(dir) = request.outputs_file.parent()
            && let Err(err) = std::fs::create_dir_all(dir)
        {
            warn!(error = %err, "cannot create the builds directory");
        }
        let lost = CancellationToken::new();

        // Renew the lease every third of it; a failed renewal kills the build at once.
        let renewer = {
            let this = Arc::clone(self);
            let lost = lost.clone();
            let build_id = build_id.clone();
            let token = token.clone();
            tokio::spawn(async move {
                let every = (this.config.lease.to_std() / 3).max(StdDuration::from_millis(100));
                loop {
                    tokio::select! {
                        () = lost.cancelled() => return,
                        () = tokio::time::sleep(every) => {}
                    }
                    if let Err(err) = this
                        .store
                        .renew_lease(&build_id, &token, this.lease(), this.clock.now())
                        .await
                    {
                        warn!(build = %build_id, error = %chain(&err), "lease renewal failed; killing the build");
                        lost.cancel();
                        return;
                    }
                }
            })
        };

        let started = std::time::Instant::now();
        let (pid_tx, pid_rx) = tokio::sync::oneshot::channel::<u32>();
        let recorder = {
            let this = Arc::clone(self);
            let build_id = build_id.clone();
            let token = token.clone();
            tokio::spawn(async move {
                if let Ok(pid) = pid_rx.await {
                    let record = ProcessRecord {
                        pgid: i64::from(pid),
                        boot_id: process::boot_id(),
                        start_time: process::start_time(pid).unwrap_or(-1),
                    };
                    if let Err(err) = this
                        .store
                        .record_job_process(&build_id, &token, &record)
                        .await
                    {
                        warn!(build = %build_id, error = %chain(&err), "cannot record the build's process");
                    }
                }
            })
        };
        let outcome = exec::run_with(&request, &lost, move |pid| {
            let _ = pid_tx.send(pid);
        })
        .await;
        let lease_lost = lost.is_cancelled();
        lost.cancel();
        let _ = renewer.await;
        let _ = recorder.await;
        let elapsed = started.elapsed();

        if lease_lost {
            warn!(build = %build_id, "build killed after its lease was lost; another worker runs it");
            return;
        }
        let now = self.clock.now();
        let status = match &outcome.result {
            BuildResult::Succeeded => "succeeded",
            BuildResult::Failed(_) => "failed",
            BuildResult::Canceled => "canceled",
        };
        self.metrics.observe_build(
            &job.template,
            job.build.transition.as_str(),
            status,
            elapsed.as_secs_f64(),
        );
        let job_outcome = match &outcome.result {
            BuildResult::Succeeded => JobOutcome::Succeeded {
                outputs: outcome.outputs.clone().map(serde_json::Value::Object),
            },
            BuildResult::Failed(reason) if job.build.transition == Transition::Delete => {
                JobOutcome::RetryAt {
                    error: reason.clone(),
                    at: now
                        + delete_retry_delay(
                            self.config.delete_retry.to_time_delta(),
                            job.build.attempts,
                        ),
                }
            }
            BuildResult::Failed(reason) => JobOutcome::Failed {
                error: reason.clone(),
            },
            BuildResult::Canceled => JobOutcome::Canceled,
        };
        match self
            .store
            .complete_job(&build_id, &token, &job_outcome, &outcome.log, now)
            .await
        {
            Ok(()) => {
                info!(
                    build = %build_id,
                    workspace = %job.build.workspace_id,
                    transition = job.build.transition.as_str(),
                    result = ?outcome.result,
                    seconds = elapsed.as_secs_f64(),
                    "build finished"
                );
            }
            Err(StoreError::StaleLease(_)) => {
                warn!(build = %build_id, "build result dropped: the lease was lost meanwhile");
            }
            Err(err) => {
                error!(build = %build_id, error = %chain(&err), "cannot record the build's result")
            }
        }
        self.reconcile.fire();
    }

    /// One worker's loop.
    async fn work(self: Arc<Self>, index: usize, stop: CancellationToken) {
        let worker_id = format!("{}/{index}", self.replica_id);
        loop {
            if stop.is_cancelled() {
                return;
            }
            match self
                .store
                .acquire_job(&worker_id, self.lease(), self.clock.now())
                .await
            {
                Ok(Some(job)) => {
                    let span = info_span!("job", build = %job.build.id, transition = job.build.transition.as_str());
                    self.run_job(job).instrument(span).await;
                    continue;
                }
                Ok(None) => {}
                Err(err) => warn!(worker = %worker_id, error = %chain(&err), "cannot take a job"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.jobs.local.notified() => {}
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// Puts jobs whose lease expired back in the queue.
    pub async fn sweep_expired(&self) -> u64 {
        let now = self.clock.now();
        let expired = match self.store.expired_leases(now).await {
            Ok(expired) => expired,
            Err(err) => {
                warn!(error = %chain(&err), "cannot look for expired leases");
                return 0;
            }
        };
        let mut requeued = 0;
        for lease in expired {
            match self.store.requeue_expired(&lease.build_id, now).await {
                Ok(RequeueOutcome::Requeued) => {
                    warn!(build = %lease.build_id, owner = ?lease.lease_owner, "lease expired; the build runs again");
                    requeued += 1;
                }
                Ok(RequeueOutcome::Failed) => {
                    warn!(build = %lease.build_id, "lease expired too often; the build failed");
                    self.reconcile.fire();
                }
                Ok(RequeueOutcome::NotExpired) => {}
                Err(err) => warn!(build = %lease.build_id, error = %chain(&err), "cannot requeue"),
            }
        }
        if requeued > 0 {
            self.jobs.wake();
        }
        requeued
    }

    /// Starts `config.workers` workers and the expired-lease sweeper (which sweeps at once, then every third of
    /// the lease) on `tracker`. They stop taking jobs when `stop` is cancelled; running builds then finish on their
    /// own.
    pub fn spawn(self: &Arc<Self>, tracker: &TaskTracker, stop: &CancellationToken) {
        for index in 0..self.config.workers {
            tracker.spawn(Arc::clone(self).work(index, stop.clone()));
        }
        let this = Arc::clone(self);
        let stop = stop.clone();
        tracker.spawn(async move {
            let every = (this.config.lease.to_std() / 3).max(StdDuration::from_millis(100));
            loop {
                // Sweep at once first: the jobs of a previous run whose leases start-up expired run again now,
                // not a third of a lease later.
                this.sweep_expired().await;
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
            }
        });
    }
}

/// At start-up of a single-process (SQLite) server: every lease of the previous run is expired at once, and the
/// process groups that run recorded are killed when they are still the same processes.
pub async fn recover_previous_run<S: Store>(
    store: &S,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let stale = store.expired_leases(now + TimeDelta::days(36_500)).await?;
    for lease in &stale {
        if let Some(p) = &lease.process
            && process::kill_if_same(p.pgid, &p.boot_id, p.start_time)
        {
            warn!(build = %lease.build_id, pgid = p.pgid, "killed a build left running by the previous process");
        }
    }
    store.expire_all_leases(now).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_retries_double_up_to_thirty_minutes() {
        let first = TimeDelta::seconds(30);
        assert_eq!(delete_retry_delay(first, 1), TimeDelta::seconds(30));
        assert_eq!(delete_retry_delay(first, 2), TimeDelta::seconds(60));
        assert_eq!(delete_retry_delay(first, 3), TimeDelta::seconds(120));
        assert_eq!(delete_retry_delay(first, 7), TimeDelta::minutes(30));
        assert_eq!(delete_retry_delay(first, 1000), TimeDelta::minutes(30));
        assert_eq!(delete_retry_delay(first, 0), TimeDelta::seconds(30));
    }
}
