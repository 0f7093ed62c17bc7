//! `warmpool serve --config FILE`: the service. Opens the database (SQLite by default, PostgreSQL by URL), applies
//! the config file's templates, and runs the build workers, the reconciler and the HTTP API until SIGTERM or
//! SIGINT. SIGHUP re-reads the file and applies it again.
//!
//! Start-up on SQLite also recovers from a previous process that died: its leases are expired at once and the
//! process groups it recorded are killed (when they are still the same processes), so its builds run again.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};
use warmpool_store::{AnyStore, AppliedBy, Store};

use crate::api::{self, AppState};
use crate::clock::{Clock, SystemClock};
use crate::config::{self, Config, Database};
use crate::executor::chain;
use crate::metrics::{Metrics, MetricsState};
use crate::notify::{Notifier, deliver};
use crate::reconciler::Reconciler;
use crate::worker::{JobNotify, Workers, listen_postgres, recover_previous_run};

use super::EXIT_INVALID;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The configuration file.
    #[arg(
        long,
        short = 'c',
        env = "WARMPOOL_CONFIG",
        default_value = "warmpool.toml"
    )]
    config: PathBuf,
}

/// Sets up logging as the config says (text or JSON, a level or filter; `RUST_LOG` wins when set).
pub fn init_logging(config: &Config) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.log.format {
        config::LogFormat::Json => builder.json().try_init(),
        config::LogFormat::Text => builder.try_init(),
    };
}

/// Applies the config file's templates; marks deleted those the file applied before and no longer names.
pub async fn apply_config<S: Store>(
    store: &S,
    config: &Config,
    clock: &dyn Clock,
) -> Result<bool, String> {
    let mut changed = false;
    for spec in &config.templates {
        let result = store
            .apply_template(spec, AppliedBy::Config, clock.now())
            .await
            .map_err(|e| format!("apply template {}: {}", spec.name, chain(&e)))?;
        info!(template = %spec.name, outcome = ?result.outcome, version = ?result.template.active_version, "template applied");
        changed |= result.settings_changed;
    }
    let known = store
        .list_templates()
        .await
        .map_err(|e| format!("list templates: {}", chain(&e)))?;
    for template in known {
        let gone = template.deleted_at.is_none()
            && template.applied_by == AppliedBy::Config
            && !config.templates.iter().any(|t| t.name == template.name);
        if gone {
            store
                .delete_template(&template.name, clock.now())
                .await
                .map_err(|e| format!("delete template {}: {}", template.name, chain(&e)))?;
            info!(template = %template.name, "template removed from the config file: marked deleted");
            changed = true;
        }
    }
    Ok(changed)
}

async fn open(config: &Config) -> Result<AnyStore, String> {
    match &config.server.database {
        Database::Sqlite(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
            AnyStore::open(&format!("sqlite://{}", path.display()), 8)
                .await
                .map_err(|e| chain(&e))
        }
        Database::Postgres(url) => AnyStore::open(url, 16).await.map_err(|e| chain(&e)),
    }
}

pub fn run(args: &ServeArgs) -> ExitCode {
    let config = match config::load(&args.config) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("warmpool serve: {err}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("warmpool serve: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args.config.clone(), config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            error!("{message}");
            eprintln!("warmpool serve: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(file: PathBuf, config: Config) -> Result<(), String> {
    std::fs::create_dir_all(&config.server.data_dir)
        .map_err(|e| format!("cannot create {}: {e}", config.server.data_dir.display()))?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = Arc::new(open(&config).await?);
    let replica_id = format!("{}-{}", std::process::id(), uuid::Uuid::now_v7().simple());
    info!(replica = %replica_id, backend = store.backend(), "warmpool starting");

    if matches!(config.server.database, Database::Sqlite(_)) {
        let expired = recover_previous_run(store.as_ref(), clock.now())
            .await
            .map_err(|e| format!("recover the previous run: {}", chain(&e)))?;
        if expired > 0 {
            warn!(
                jobs = expired,
                "expired the leases of builds left running by a previous process"
            );
        }
    }
    apply_config(store.as_ref(), &config, clock.as_ref()).await?;

    let jobs = JobNotify::default();
    let metrics = Metrics::default();
    let reconciler = Arc::new(
        Reconciler::new(
            Arc::clone(&store),
            Arc::clone(&clock),
            config.reconciler.clone(),
            replica_id.clone(),
            jobs.clone(),
        )
        .with_metrics(metrics.clone())
        .with_notifier(Notifier {
            store: Arc::clone(&store),
            webhooks: config.webhooks.clone(),
        }),
    );
    let workers = Arc::new(Workers {
        store: Arc::clone(&store),
        clock: Arc::clone(&clock),
        config: config.provisioner.clone(),
        data_dir: config.server.data_dir.clone(),
        replica_id: replica_id.clone(),
        path_var: std::env::var("PATH")
            .unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_owned()),
        jobs: jobs.clone(),
        reconcile: reconciler.trigger(),
        metrics: metrics.clone(),
    });

    let shutdown = CancellationToken::new();
    let stop_jobs = CancellationToken::new();
    let tracker = TaskTracker::new();
    workers.spawn(&tracker, &stop_jobs);
    if let Database::Postgres(url) = &config.server.database {
        // Other replicas and remote provisioners learn of queued jobs through LISTEN/NOTIFY.
        tokio::spawn(listen_postgres(url.clone(), jobs.clone(), shutdown.clone()));
        let store = Arc::clone(&store);
        let jobs = jobs.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            jobs.publish(stop, || async {
                if let Err(err) = store.notify_jobs().await {
                    warn!(error = %chain(&err), "cannot NOTIFY other replicas of a new job");
                }
            })
            .await;
        });
    }
    let reconciler_task = tokio::spawn(Arc::clone(&reconciler).run(shutdown.clone()));
    if !config.webhooks.is_empty() {
        tokio::spawn(deliver(
            Arc::clone(&store),
            Arc::clone(&clock),
            std::time::Duration::from_millis(500),
            shutdown.clone(),
        ));
    }

    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.server.listen))?;
    info!(listen = %config.server.listen, "serving the API");
    let state = Arc::new(AppState {
        store: Arc::clone(&store),
        clock: Arc::clone(&clock),
        reconciler: Arc::clone(&reconciler),
        tokens: config.tokens.clone(),
        jobs: jobs.clone(),
        metrics: metrics.clone(),
    });
    let metrics_state = Arc::new(MetricsState {
        store: Arc::clone(&store),
        reconciler: Arc::clone(&reconciler),
        metrics,
    });
    let app = api::router(state).merge(crate::metrics::router(metrics_state));
    // Gauges come from the latest snapshot: a replica that does not hold the lock still reads one every 15 s.
    {
        let reconciler = Arc::clone(&reconciler);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                }
                reconciler.observe_if_stale().await;
            }
        });
    }
    let server = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
        })
    };

    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| format!("cannot watch SIGHUP: {e}"))?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot watch SIGTERM: {e}"))?;
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                match config::load(&file) {
                    Ok(new) => match apply_config(store.as_ref(), &new, clock.as_ref()).await {
                        Ok(_) => {
                            info!("configuration re-applied");
                            reconciler.trigger().fire();
                        }
                        Err(err) => error!(error = %err, "cannot re-apply the configuration"),
                    },
                    Err(err) => error!(error = %err, "configuration not re-applied"),
                }
            }
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }

    info!("shutting down: no new jobs, waiting for running builds");
    shutdown.cancel();
    stop_jobs.cancel();
    tracker.close();
    let grace = config.provisioner.kill_grace.to_std() + std::time::Duration::from_secs(5);
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        warn!(
            "builds still running after the grace period; their leases will expire and they will run again"
        );
    }
    let _ = reconciler_task.await;
    let _ = server.await;
    drop(jobs);
    Ok(())
}
