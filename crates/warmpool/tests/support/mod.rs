//! Shared helpers of the runtime scenario tests: a store on either backend with a manual clock and a
//! [`Reconciler`] over it ([`Env`]), template builders, and the "scripted provisioner" (take a job, finish it with
//! whatever outcome the scenario needs, or leave it pending or running).
//!
//! Every scenario is written once, generic over [`Backend`], and instantiated for SQLite and PostgreSQL by the
//! `scenarios!` macro of the test file. A [`Backend`] also reaches its database directly (raw SQL through the
//! store's own pool), for what the `Store` trait deliberately cannot do: inject a database refusal, or put a job in
//! the `canceling` state that no store method produces.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// Instantiates each named scenario `async fn name<S: Backend>(db: Db<S>)` as the tests `sqlite::name` and
/// `pg::name` (the latter skipped, saying so, when PostgreSQL is not available and not required).
macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::support::sqlite_db().await).await;
                }
            )*
        }
        mod pg {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = crate::support::pg_db().await else { return };
                    super::$name(db).await;
                }
            )*
        }
    };
}

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use warmpool::clock::{Clock, ManualClock};
use warmpool::config::{ProvisionerConfig, ReconcilerConfig};
use warmpool::reconciler::{Reconciler, TickStatus};
use warmpool::worker::{JobNotify, Workers};
use warmpool_core::duration::Duration;
use warmpool_core::ids::{PresetId, WorkspaceId};
use warmpool_core::model::{JobStatus, PlannerConfig, PresetStatus, Transition};
use warmpool_core::plan::PresetPlan;
use warmpool_core::template::{ParameterSpec, PoolSpec, PresetSpec, ProvisionerKind, TemplateSpec};
use warmpool_store::{
    AcquiredJob, AppliedBy, BuildRecord, JobOutcome, PgStore, PresetInfo, SqliteStore, Store,
    TemplateInfo, WorkspaceFilter, WorkspaceRecord,
};

/// 2025-06-02T00:00:00Z, a Monday.
pub fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_748_822_400, 0).unwrap()
}

pub fn secs(n: i64) -> TimeDelta {
    TimeDelta::seconds(n)
}

pub fn mins(n: i64) -> TimeDelta {
    TimeDelta::minutes(n)
}

pub const LEASE: TimeDelta = TimeDelta::seconds(30);

// ----- backends -----

/// A store the scenarios can also reach with raw SQL, and re-open as a restarted service would.
pub trait Backend: Store + Sized {
    const NAME: &'static str;

    /// Runs statements on the store's own database, outside the store.
    fn exec(&self, sql: &str) -> impl Future<Output = ()> + Send;

    /// Closes this store and opens the same database again (a restart of the service).
    fn reopen(self) -> impl Future<Output = Self> + Send;

    /// Makes the database refuse every new workspace (of one template, when given): a real database error, the
    /// way a broken database or a constraint would refuse the creating transaction.
    fn refuse_workspaces(&self, template_id: Option<&str>) -> impl Future<Output = ()> + Send;

    /// Undoes [`Backend::refuse_workspaces`].
    fn accept_workspaces(&self) -> impl Future<Output = ()> + Send;
}

impl Backend for SqliteStore {
    const NAME: &'static str = "sqlite";

    async fn exec(&self, sql: &str) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(self.pool())
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    async fn reopen(self) -> Self {
        let path: PathBuf = self.path().to_owned();
        self.close().await;
        drop(self);
        SqliteStore::open(&path).await.unwrap()
    }

    async fn refuse_workspaces(&self, template_id: Option<&str>) {
        let when = template_id
            .map(|id| format!("WHEN NEW.template_id = '{id}'"))
            .unwrap_or_default();
        self.exec(&format!(
            "CREATE TRIGGER injected_refusal BEFORE INSERT ON workspaces {when} \
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        ))
        .await;
    }

    async fn accept_workspaces(&self) {
        self.exec("DROP TRIGGER injected_refusal").await;
    }
}

impl Backend for PgStore {
    const NAME: &'static str = "postgres";

    async fn exec(&self, sql: &str) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(self.pool())
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    async fn reopen(self) -> Self {
        let options = (*self.pool().connect_options()).clone();
        self.close().await;
        drop(self);
        PgStore::connect_with(options, 8).await.unwrap()
    }

    async fn refuse_workspaces(&self, template_id: Option<&str>) {
        let condition = template_id
            .map(|id| format!("NEW.template_id = '{id}'"))
            .unwrap_or_else(|| "TRUE".to_owned());
        self.exec(&format!(
            "CREATE FUNCTION injected_refusal() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF {condition} THEN RAISE EXCEPTION 'injected failure'; END IF; RETURN NEW; END $$; \
             CREATE TRIGGER injected_refusal BEFORE INSERT ON workspaces \
             FOR EACH ROW EXECUTE FUNCTION injected_refusal();"
        ))
        .await;
    }

    async fn accept_workspaces(&self) {
        self.exec("DROP TRIGGER injected_refusal ON workspaces; DROP FUNCTION injected_refusal();")
            .await;
    }
}

/// A fresh database of one backend, and what keeps it alive.
pub struct Db<S> {
    pub store: S,
    guard: Option<tempfile::TempDir>,
}

pub async fn sqlite_db() -> Db<SqliteStore> {
    let (store, dir) = warmpool_store::testing::sqlite_store().await.unwrap();
    Db {
        store,
        guard: Some(dir),
    }
}

/// `None` (the harness says why) when PostgreSQL is not installed and not required.
pub async fn pg_db() -> Option<Db<PgStore>> {
    let store = warmpool_store::testing::pg::test_store(8).await.unwrap()?;
    Some(Db { store, guard: None })
}

// ----- the environment -----

pub fn planner(backoff_interval: TimeDelta, lookback: TimeDelta, hard_limit: u32) -> PlannerConfig {
    PlannerConfig {
        backoff_interval: Duration::from_millis(backoff_interval.num_milliseconds() as u64),
        backoff_lookback: Duration::from_millis(lookback.num_milliseconds() as u64),
        failure_hard_limit: hard_limit,
    }
}

pub fn reconciler_config(planner: PlannerConfig) -> ReconcilerConfig {
    ReconcilerConfig {
        interval: Duration::from_secs(30),
        planner,
        preset_concurrency: 5,
    }
}

/// A store, a manual clock and a reconciler over them.
pub struct Env<S: Backend> {
    pub store: Arc<S>,
    pub clock: Arc<ManualClock>,
    pub config: ReconcilerConfig,
    pub reconciler: Reconciler<S>,
    pub jobs: JobNotify,
    guard: Option<tempfile::TempDir>,
}

impl<S: Backend> Env<S> {
    pub fn new(db: Db<S>, planner: PlannerConfig) -> Env<S> {
        Env::with_config(db, reconciler_config(planner))
    }

    pub fn with_config(db: Db<S>, config: ReconcilerConfig) -> Env<S> {
        let store = Arc::new(db.store);
        let clock = Arc::new(ManualClock::new(t0()));
        let jobs = JobNotify::default();
        let reconciler = Reconciler::new(
            Arc::clone(&store),
            Arc::clone(&clock) as Arc<dyn Clock>,
            config.clone(),
            "test-replica".into(),
            jobs.clone(),
        );
        Env {
            store,
            clock,
            config,
            reconciler,
            jobs,
            guard: db.guard,
        }
    }

    /// A new reconciler with other planner settings, on the same store and clock.
    pub fn set_planner(&mut self, planner: PlannerConfig) {
        self.config.planner = planner;
        self.reconciler = Reconciler::new(
            Arc::clone(&self.store),
            Arc::clone(&self.clock) as Arc<dyn Clock>,
            self.config.clone(),
            "test-replica".into(),
            self.jobs.clone(),
        );
    }

    /// The service restarts: everything in memory is gone, the database is opened again, the clock goes on.
    pub async fn restart(self) -> Env<S> {
        let Env {
            store,
            clock,
            config,
            reconciler,
            guard,
            ..
        } = self;
        drop(reconciler);
        let store = Arc::try_unwrap(store)
            .ok()
            .expect("nothing else holds the store");
        let store = Arc::new(store.reopen().await);
        let jobs = JobNotify::default();
        let reconciler = Reconciler::new(
            Arc::clone(&store),
            Arc::clone(&clock) as Arc<dyn Clock>,
            config.clone(),
            "test-replica-2".into(),
            jobs.clone(),
        );
        Env {
            store,
            clock,
            config,
            reconciler,
            jobs,
            guard,
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub fn set_now(&self, at: DateTime<Utc>) {
        self.clock.set(at);
    }

    pub fn advance(&self, by: TimeDelta) {
        self.clock.advance(by);
    }

    /// One tick; it must have held the lock.
    pub async fn tick(&self) -> TickStatus {
        let status = self.reconciler.tick().await;
        assert!(status.lock_acquired, "the tick did not get the lock");
        status
    }

    /// One tick that must have gone without errors.
    pub async fn tick_ok(&self) -> TickStatus {
        let status = self.tick().await;
        assert!(status.errors.is_empty(), "tick errors: {:?}", status.errors);
        status
    }

    /// The plan the last tick executed for a preset.
    pub fn plan_of(&self, preset: &PresetId) -> PresetPlan {
        let observed = self.reconciler.observed().expect("a tick ran");
        observed
            .plan
            .preset(preset)
            .unwrap_or_else(|| panic!("preset {preset} is not in the last plan"))
            .clone()
    }

    pub async fn apply(&self, spec: &TemplateSpec) -> TemplateInfo {
        self.store
            .apply_template(spec, AppliedBy::Config, self.now())
            .await
            .unwrap()
            .template
    }

    pub async fn template(&self, name: &str) -> TemplateInfo {
        self.store.get_template(name).await.unwrap().unwrap()
    }

    /// A preset of the template's active version.
    pub async fn preset(&self, template: &str, preset: &str) -> PresetInfo {
        self.store
            .active_preset(template, preset)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no active preset {template}/{preset}"))
    }

    /// A preset of any version of the template, by id.
    pub async fn preset_by_id(&self, template: &str, id: &PresetId) -> PresetInfo {
        self.template(template)
            .await
            .versions
            .iter()
            .flat_map(|v| v.presets.iter())
            .find(|p| &p.id == id)
            .cloned()
            .unwrap_or_else(|| panic!("no preset {id} in {template}"))
    }

    /// Workspaces of a template (pooled and claimed), deleted ones included, oldest first.
    pub async fn workspaces(&self, template: &str) -> Vec<WorkspaceRecord> {
        self.store
            .list_workspaces(&WorkspaceFilter {
                template: Some(template.into()),
                include_deleted: true,
                ..WorkspaceFilter::default()
            })
            .await
            .unwrap()
    }

    /// Every workspace ever created for a preset (by id), deleted ones included.
    pub async fn workspaces_of(&self, template: &str, preset: &PresetId) -> Vec<WorkspaceRecord> {
        self.workspaces(template)
            .await
            .into_iter()
            .filter(|w| w.preset_id.as_ref() == Some(preset))
            .collect()
    }

    pub async fn workspace(&self, id: &WorkspaceId) -> WorkspaceRecord {
        self.store.get_workspace(id).await.unwrap().unwrap()
    }

    /// Newest first.
    pub async fn builds(&self, id: &WorkspaceId) -> Vec<BuildRecord> {
        self.store.list_builds(id).await.unwrap()
    }

    pub async fn status_of(&self, template: &str, id: &PresetId) -> PresetStatus {
        self.preset_by_id(template, id).await.status
    }

    // ----- the scripted provisioner -----

    /// Takes the next job (at the clock's time).
    pub async fn acquire(&self) -> Option<AcquiredJob> {
        self.store
            .acquire_job("script", LEASE, self.now())
            .await
            .unwrap()
    }

    /// Takes the next job, which must be the given workspace's.
    pub async fn acquire_for(&self, workspace: &WorkspaceId) -> AcquiredJob {
        let job = self.acquire().await.expect("a pending job");
        assert_eq!(
            &job.build.workspace_id, workspace,
            "the next job belongs to another workspace"
        );
        job
    }

    pub async fn finish(&self, job: &AcquiredJob, outcome: JobOutcome) {
        self.store
            .complete_job(&job.build.id, &job.lease.token, &outcome, "log", self.now())
            .await
            .unwrap();
    }

    /// Takes every runnable job and finishes it with `outcome`; answers how many.
    pub async fn finish_all(&self, outcome: JobOutcome) -> usize {
        let mut n = 0;
        while let Some(job) = self.acquire().await {
            self.finish(&job, outcome.clone()).await;
            n += 1;
        }
        n
    }

    /// Takes every runnable job and finishes it with the outcome `decide` picks for it.
    pub async fn finish_each(&self, mut decide: impl FnMut(&AcquiredJob) -> JobOutcome) -> usize {
        let mut n = 0;
        while let Some(job) = self.acquire().await {
            let outcome = decide(&job);
            self.finish(&job, outcome).await;
            n += 1;
        }
        n
    }

    /// Puts a running job into `canceling` (no store method does; a provisioner being cancelled would).
    pub async fn force_canceling(&self, job: &AcquiredJob) {
        let id = job.build.id.as_str();
        self.store
            .exec(&format!(
                "UPDATE builds SET status = 'canceling' WHERE id = '{id}'; \
                 UPDATE workspaces SET latest_status = 'canceling' WHERE latest_build_id = '{id}';"
            ))
            .await;
    }

    /// A new prebuild of the preset, created now, whose first build succeeds.
    pub async fn ready_prebuild(&self, preset: &PresetId) -> WorkspaceId {
        let created = self
            .store
            .create_prebuild(preset, self.now())
            .await
            .unwrap();
        let job = self.acquire_for(&created.workspace.id).await;
        self.finish(&job, succeeded()).await;
        created.workspace.id
    }

    /// Build workers over this environment's store and clock, building into `data_dir`.
    pub fn workers(&self, data_dir: PathBuf) -> Arc<Workers<S>> {
        Arc::new(Workers {
            store: Arc::clone(&self.store),
            clock: Arc::clone(&self.clock) as Arc<dyn Clock>,
            config: ProvisionerConfig {
                workers: 1,
                lease: Duration::from_secs(30),
                kill_grace: Duration::from_secs(1),
                delete_retry: Duration::from_secs(30),
            },
            data_dir,
            replica_id: "test-replica".into(),
            path_var: std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
            jobs: self.jobs.clone(),
            metrics: warmpool::metrics::Metrics::default(),
            reconcile: self.reconciler.trigger(),
        })
    }
}

pub fn succeeded() -> JobOutcome {
    JobOutcome::Succeeded { outputs: None }
}

pub fn failed() -> JobOutcome {
    JobOutcome::Failed {
        error: "exit status 1".into(),
    }
}

/// Prebuilds among `workspaces` (owner `prebuilds` now, or created for the pool and claimed since: excluded).
pub fn pooled(workspaces: &[WorkspaceRecord]) -> Vec<&WorkspaceRecord> {
    workspaces.iter().filter(|w| w.is_prebuild()).collect()
}

/// (transition, status) of builds, newest first.
pub fn shape(builds: &[BuildRecord]) -> Vec<(Transition, JobStatus)> {
    builds.iter().map(|b| (b.transition, b.status)).collect()
}

// ----- templates -----

/// Coder's test template: a required parameter `test`, which every preset sets to `test`.
pub fn template(name: &str, presets: Vec<PresetSpec>) -> TemplateSpec {
    TemplateSpec {
        name: name.into(),
        provisioner: ProvisionerKind::Exec,
        command: vec!["/bin/true".into()],
        timeout: Duration::from_secs(600),
        revision: None,
        max_workspaces: None,
        claim_build: false,
        parameters: vec![ParameterSpec {
            name: "test".into(),
            required: true,
            default: None,
            sensitive: false,
        }],
        presets,
    }
}

pub fn preset(name: &str, instances: Option<u32>) -> PresetSpec {
    PresetSpec {
        name: name.into(),
        parameters: BTreeMap::from([("test".to_owned(), "test".to_owned())]),
        pool: PoolSpec {
            instances,
            ttl: None,
            scheduling: None,
        },
    }
}

pub fn with_ttl(mut preset: PresetSpec, ttl: TimeDelta) -> PresetSpec {
    preset.pool.ttl = Some(Duration::from_millis(ttl.num_milliseconds() as u64));
    preset
}

/// A parameter that is required and has no default.
pub fn required(name: &str) -> ParameterSpec {
    ParameterSpec {
        name: name.into(),
        required: true,
        default: None,
        sensitive: false,
    }
}
