//! The command line: `warmpool <command>`. Each subcommand lives in [`crate::commands`] and returns an exit code.
//! Exit statuses: 0 success, 1 failure, 2 usage or invalid input (clap's usage errors exit 2 too), 3 pool empty.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::commands;
use crate::commands::client::{self, ClientArgs};

/// warmpool keeps warm pools of prebuilt workspaces, so a claim hands over a ready one at once.
#[derive(Debug, Parser)]
#[command(name = "warmpool", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service: reconciler, build workers and HTTP API.
    Serve(commands::serve::ServeArgs),
    /// Run only build workers against a shared PostgreSQL database (remote provisioners).
    Provisioner(commands::provisioner::ProvisionerArgs),
    /// Validate a configuration file without starting anything.
    Check(commands::check::CheckArgs),
    /// Print the reconciler's decision for a snapshot (JSON in, JSON out), without a database or a server.
    Plan(commands::plan::PlanArgs),
    /// Tokens for `[[auth.tokens]]`.
    #[command(subcommand)]
    Token(commands::token::TokenCommand),
    /// The reconciler's last ticks, the job queue and the pools.
    Status {
        /// TEMPLATE/PRESET: also print that preset's live plan, with held actions and their reasons.
        preset: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The pools: desired, running, eligible, starting, backoff, status.
    Presets(ClientArgs),
    /// Claim a workspace from a preset's pool: TEMPLATE/PRESET.
    Claim {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        claim: client::ClaimArgs,
    },
    /// List workspaces.
    Workspaces {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        filter: client::WorkspacesArgs,
    },
    /// Queue a start build of a workspace.
    Start {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Queue a stop build (a stopped prebuild leaves the pool).
    Stop {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Queue a delete build.
    Delete {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Pause reconciliation, globally or for TEMPLATE/PRESET.
    Pause {
        preset: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Resume reconciliation, globally or for TEMPLATE/PRESET.
    Resume {
        preset: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a workspace's latest build log (or `--build ID`).
    Logs {
        workspace: String,
        #[arg(long)]
        build: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Apply a config file's templates through the API.
    Apply {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        apply: client::ApplyArgs,
    },
}

/// Parses the process's arguments and runs the command.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => commands::serve::run(&args),
        Command::Check(args) => commands::check::run(&args),
        Command::Provisioner(args) => commands::provisioner::run(&args),
        Command::Plan(args) => commands::plan::run(&args),
        Command::Token(command) => commands::token::run(&command),
        Command::Status { preset, client: c } => client::status(&c, preset.as_deref()),
        Command::Presets(args) => client::presets(&args),
        Command::Claim { client: c, claim } => client::claim(&c, &claim),
        Command::Workspaces { client: c, filter } => client::workspaces(&c, &filter),
        Command::Start { id, client: c } => client::transition(&c, &id, "start"),
        Command::Stop { id, client: c } => client::transition(&c, &id, "stop"),
        Command::Delete { id, client: c } => client::transition(&c, &id, "delete"),
        Command::Pause { preset, client: c } => client::pause(&c, preset.as_deref(), true),
        Command::Resume { preset, client: c } => client::pause(&c, preset.as_deref(), false),
        Command::Logs {
            workspace,
            build,
            client: c,
        } => client::logs(&c, &workspace, build.as_deref()),
        Command::Apply { client: c, apply } => client::apply(&c, &apply),
    }
}
