//! The reconciler driver: one tick at start-up, one every `interval`, and one within a second of any trigger (a
//! claim, a finished build, a template or settings change, `POST /api/v1/reconcile`), triggers debounced by
//! 200 ms into a single tick.
//!
//! A tick takes no input: it takes the reconciliation lock (skipping the tick when another replica holds it),
//! reads one snapshot through the lock, plans it with the pure planner, executes the presets' actions with at most
//! `preset_concurrency` presets at once, and only then releases the lock. Per-preset errors are logged with their
//! cause chain and never abort other presets. Every tick yields a [`TickStatus`]; the last 100 are kept for
//! `/api/v1/status`, and the latest snapshot and plan are kept for the gauges and the plan endpoint (refreshed
//! without the lock when this replica has not reconciled for 15 s).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration as StdDuration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};
use warmpool_core::plan::Plan;
use warmpool_core::{Snapshot, plan};
use warmpool_store::{ReconcileLock, Store, TickRecord};

use crate::clock::Clock;
use crate::config::ReconcilerConfig;
use crate::executor::{self, chain};
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::worker::JobNotify;

/// How many tick records are kept in memory.
pub const HISTORY: usize = 100;
/// Triggers arriving within this window are folded into one tick.
pub const DEBOUNCE: StdDuration = StdDuration::from_millis(200);
/// A replica that has not reconciled for this long reads a snapshot without the lock, for its gauges.
pub const OBSERVE_EVERY: chrono::TimeDelta = chrono::TimeDelta::seconds(15);

/// What one tick did.
#[derive(Debug, Clone, Serialize)]
pub struct TickStatus {
    pub started_at: DateTime<Utc>,
    pub duration_ms: f64,
    /// This replica held the reconciliation lock (otherwise the tick did nothing).
    pub lock_acquired: bool,
    pub presets: usize,
    /// Per action type, how many prebuilds or writes.
    pub actions: BTreeMap<String, u64>,
    /// Actions the plan held (paused, backing off, limited).
    pub held: u64,
    pub errors: Vec<String>,
}

/// The latest snapshot this replica read and its plan.
#[derive(Debug, Clone)]
pub struct Observed {
    pub snapshot: Snapshot,
    pub plan: Plan,
}

/// Wakes the reconciler; cheap to clone and call from anywhere.
#[derive(Debug, Clone, Default)]
pub struct Trigger(Arc<Notify>);

impl Trigger {
    pub fn fire(&self) {
        self.0.notify_one();
    }

    /// Consumes a trigger that fired while nobody was waiting, if there is one; never waits.
    async fn forget_pending(&self) {
        tokio::select! {
            biased;
            () = self.0.notified() => {}
            () = std::future::ready(()) => {}
        }
    }
}

#[derive(Debug)]
pub struct Reconciler<S: Store> {
    store: Arc<S>,
    clock: Arc<dyn Clock>,
    config: ReconcilerConfig,
    replica_id: String,
    trigger: Trigger,
    /// Woken after a tick that queued builds, so idle workers start them at once.
    jobs: JobNotify,
    history: Mutex<VecDeque<TickStatus>>,
    observed: RwLock<Option<Arc<Observed>>>,
    metrics: Option<Metrics>,
    notifier: Option<Notifier<S>>,
}

impl<S: Store> Reconciler<S> {
    pub fn new(
        store: Arc<S>,
        clock: Arc<dyn Clock>,
        config: ReconcilerConfig,
        replica_id: String,
        jobs: JobNotify,
    ) -> Self {
        Reconciler {
            store,
            clock,
            config,
            replica_id,
            trigger: Trigger::default(),
            jobs,
            history: Mutex::new(VecDeque::with_capacity(HISTORY)),
            observed: RwLock::new(None),
            metrics: None,
            notifier: None,
        }
    }

    /// Records webhook notifications from every tick this replica reconciles (under the lock).
    pub fn with_notifier(mut self, notifier: Notifier<S>) -> Self {
        self.notifier = Some(notifier);
        self
    }

    /// Observes every tick this replica reconciles in `warmpool_reconciliation_duration_seconds`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn trigger(&self) -> Trigger {
        self.trigger.clone()
    }

    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    pub fn config(&self) -> &ReconcilerConfig {
        &self.config
    }

    /// The last ticks, newest first.
    pub fn history(&self) -> Vec<TickStatus> {
        let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        history.iter().rev().cloned().collect()
    }

    /// The latest snapshot and plan this replica saw.
    pub fn observed(&self) -> Option<Arc<Observed>> {
        self.observed
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn keep(&self, snapshot: Snapshot, plan: Plan) {
        *self.observed.write().unwrap_or_else(|e| e.into_inner()) =
            Some(Arc::new(Observed { snapshot, plan }));
    }

    /// Reads a snapshot without the lock when the kept one is older than [`OBSERVE_EVERY`].
    pub async fn observe_if_stale(&self) {
        let now = self.clock.now();
        let stale = self
            .observed()
            .is_none_or(|o| now - o.snapshot.now >= OBSERVE_EVERY);
        if stale {
            match self.store.snapshot(now, self.config.planner).await {
                Ok(snapshot) => {
                    let plan = plan(&snapshot);
                    self.keep(snapshot, plan);
                }
                Err(err) => warn!(error = %chain(&err), "cannot read a snapshot for the gauges"),
            }
        }
    }

    /// One reconciliation.
    pub async fn tick(&self) -> TickStatus {
        let started = std::time::Instant::now();
        let now = self.clock.now();
        let mut status = TickStatus {
            started_at: now,
            duration_ms: 0.0,
            lock_acquired: false,
            presets: 0,
            actions: BTreeMap::new(),
            held: 0,
            errors: Vec::new(),
        };
        let span = info_span!("tick", replica = %self.replica_id);
        async {
            match self.store.try_lock_reconciliation().await {
                Ok(Some(mut lock)) => {
                    status.lock_acquired = true;
                    match lock.snapshot(now, self.config.planner).await {
                        Ok(snapshot) => {
                            let plan = plan(&snapshot);
                            self.execute(&plan, now, &mut status).await;
                            let observed = Observed { snapshot, plan };
                            if let Some(notifier) = &self.notifier {
                                notifier.observe(&observed, now).await;
                            }
                            self.keep(observed.snapshot, observed.plan);
                        }
                        Err(err) => {
                            let line = format!("snapshot: {}", chain(&err));
                            error!(error = %line, "tick aborted");
                            status.errors.push(line);
                        }
                    }
                    if let Err(err) = self.store.prune(now).await {
                        warn!(error = %chain(&err), "cannot prune old claim events and idempotency keys");
                    }
                    if let Err(err) = lock.release().await {
                        let line = format!("release the lock: {}", chain(&err));
                        error!(error = %line, "tick");
                        status.errors.push(line);
                    }
                }
                Ok(None) => {
                    self.observe_if_stale().await;
                }
                Err(err) => {
                    let line = format!("take the lock: {}", chain(&err));
                    error!(error = %line, "tick aborted");
                    status.errors.push(line);
                }
            }
        }
        .instrument(span)
        .await;
        status.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        if status.lock_acquired {
            if let Some(metrics) = &self.metrics {
                metrics
                    .reconciliation_duration
                    .observe(status.duration_ms / 1000.0);
            }
            let record = TickRecord {
                replica_id: self.replica_id.clone(),
                started_at: now,
                finished_at: self.clock.now(),
                summary: serde_json::to_value(&status).unwrap_or(serde_json::Value::Null),
            };
            if let Err(err) = self.store.record_tick(&record).await {
                warn!(error = %chain(&err), "cannot record the tick");
            }
            if !status.actions.is_empty() || !status.errors.is_empty() {
                info!(duration_ms = status.duration_ms, actions = ?status.actions, held = status.held, errors = status.errors.len(), "tick");
            }
        }
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        if history.len() == HISTORY {
            history.pop_front();
        }
        history.push_back(status.clone());
        status
    }

    async fn execute(&self, plan: &Plan, now: DateTime<Utc>, status: &mut TickStatus) {
        status.presets = plan.presets.len();
        status.held = plan.presets.iter().map(|p| p.held.len() as u64).sum();
        let limit = Arc::new(Semaphore::new(self.config.preset_concurrency.max(1)));
        let mut tasks = JoinSet::new();
        for preset in plan.presets.iter().filter(|p| !p.actions.is_empty()) {
            let store = Arc::clone(&self.store);
            let limit = Arc::clone(&limit);
            let preset = preset.clone();
            let span = info_span!("preset", template = %preset.template, preset = %preset.preset);
            tasks.spawn(
                async move {
                    let _permit = limit.acquire_owned().await;
                    executor::execute_preset(store.as_ref(), &preset, now).await
                }
                .instrument(span),
            );
        }
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(result) => {
                    if result.wrote {
                        self.jobs.wake();
                    }
                    for (kind, n) in result.done {
                        *status.actions.entry(kind.to_owned()).or_default() += n;
                    }
                    status.errors.extend(result.errors);
                }
                Err(err) => status.errors.push(format!("preset task: {err}")),
            }
        }
    }

    /// Ticks at start-up, every `interval`, and after triggers, until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let interval = self.config.interval.to_std();
        loop {
            self.tick().await;
            let next = tokio::time::Instant::now() + interval;
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep_until(next) => {}
                () = self.trigger.0.notified() => {
                    // Fold a burst of triggers into this one tick: wait out the debounce window, then forget
                    // the triggers that arrived during it (the tick about to run reads a snapshot taken after
                    // them). A trigger that arrives during the tick itself is kept and gives the next one.
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(DEBOUNCE) => {}
                    }
                    self.trigger.forget_pending().await;
                }
            }
        }
    }
}
