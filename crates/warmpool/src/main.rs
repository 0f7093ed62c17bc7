//! The `warmpool` binary: command-line parsing and dispatch. Each subcommand lives in `commands/` and returns an
//! exit code; `main` only maps it to the process status, so destructors and log flushes always run.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;

/// warmpool keeps warm pools of prebuilt workspaces, so a claim hands over a ready one at once.
#[derive(Debug, Parser)]
#[command(name = "warmpool", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the reconciler's decision for a snapshot (JSON in, JSON out), without a database or a server.
    Plan(commands::plan::PlanArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Plan(args) => commands::plan::run(&args),
    }
}
