//! `warmpool provisioner --database postgres://... --config FILE`: only build workers, on another machine.
//!
//! It takes jobs from the shared database like the workers of a `serve` replica (leases, renewal, fenced results)
//! and runs them with the template commands and state directories at the same paths as the servers'. It does not
//! reconcile, serve the API or apply templates: the config file gives `[provisioner]` and `data_dir`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use warmpool_store::AnyStore;

use super::EXIT_INVALID;
use super::serve::init_logging;
use crate::clock::{Clock, SystemClock};
use crate::config;
use crate::executor::chain;
use crate::reconciler::Trigger;
use crate::worker::{JobNotify, Workers, listen_postgres};

#[derive(Debug, Args)]
pub struct ProvisionerArgs {
    /// The shared database (the servers' `[server] database`).
    #[arg(long, env = "WARMPOOL_DATABASE")]
    database: String,
    /// The configuration file (for `[provisioner]` and `data_dir`).
    #[arg(
        long,
        short = 'c',
        env = "WARMPOOL_CONFIG",
        default_value = "warmpool.toml"
    )]
    config: PathBuf,
}

pub fn run(args: &ProvisionerArgs) -> ExitCode {
    let config = match config::load(&args.config) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("warmpool provisioner: {err}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    if !(args.database.starts_with("postgres://") || args.database.starts_with("postgresql://")) {
        eprintln!(
            "warmpool provisioner: --database must be a postgres:// URL (SQLite serves one process only)"
        );
        return ExitCode::from(EXIT_INVALID);
    }
    if config.provisioner.workers == 0 {
        eprintln!(
            "warmpool provisioner: [provisioner] workers is 0 in {}",
            args.config.display()
        );
        return ExitCode::from(EXIT_INVALID);
    }
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("warmpool provisioner: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let store = match AnyStore::open(&args.database, (config.provisioner.workers as u32 + 2).min(32)).await {
            Ok(store) => Arc::new(store),
            Err(err) => {
                eprintln!("warmpool provisioner: {}", chain(&err));
                return ExitCode::FAILURE;
            }
        };
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let replica_id = format!("provisioner-{}-{}", std::process::id(), uuid::Uuid::now_v7().simple());
        let jobs = JobNotify::default();
        let workers = Arc::new(Workers {
            store,
            clock,
            config: config.provisioner.clone(),
            data_dir: config.server.data_dir.clone(),
            replica_id: replica_id.clone(),
            path_var: std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_owned()),
            jobs: jobs.clone(),
            // No reconciler here: the servers' ticks notice finished builds within their interval.
            reconcile: Trigger::default(),
            metrics: crate::metrics::Metrics::default(),
        });
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        workers.spawn(&tracker, &stop);
        tokio::spawn(listen_postgres(args.database.clone(), jobs, stop.clone()));
        info!(replica = %replica_id, workers = config.provisioner.workers, "provisioner running");
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(err) => {
                eprintln!("warmpool provisioner: cannot watch SIGTERM: {err}");
                return ExitCode::FAILURE;
            }
        };
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        info!("stopping: no new jobs, waiting for running builds");
        stop.cancel();
        tracker.close();
        let grace = config.provisioner.kill_grace.to_std() + std::time::Duration::from_secs(5);
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            warn!("builds still running after the grace period; their leases will expire and they will run again");
        }
        ExitCode::SUCCESS
    })
}
