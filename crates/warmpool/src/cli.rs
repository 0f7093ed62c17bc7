//! The command line: `warmpool <command>`. Each subcommand lives in [`crate::commands`] and returns an exit code.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::commands;

/// warmpool keeps warm pools of prebuilt workspaces, so a claim hands over a ready one at once.
#[derive(Debug, Parser)]
#[command(name = "warmpool", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the reconciler's decision for a snapshot (JSON in, JSON out), without a database or a server.
    Plan(commands::plan::PlanArgs),
    /// Validate a configuration file without starting anything.
    Check(commands::check::CheckArgs),
    /// Run the service: reconciler, build workers and HTTP API.
    Serve(commands::serve::ServeArgs),
}

/// Parses the process's arguments and runs the command.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Plan(args) => commands::plan::run(&args),
        Command::Check(args) => commands::check::run(&args),
        Command::Serve(args) => commands::serve::run(&args),
    }
}
