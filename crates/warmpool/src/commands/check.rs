//! `warmpool check --config FILE`: validates a configuration without starting anything. Prints a short summary on
//! success; on failure prints the error (file, line, key) and exits 2.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::EXIT_INVALID;
use crate::config;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The configuration file.
    #[arg(
        long,
        short = 'c',
        env = "WARMPOOL_CONFIG",
        default_value = "warmpool.toml"
    )]
    config: PathBuf,
}

pub fn run(args: &CheckArgs) -> ExitCode {
    match config::load(&args.config) {
        Ok(config) => {
            let presets: usize = config.templates.iter().map(|t| t.presets.len()).sum();
            println!(
                "{}: ok ({} templates, {} presets, database {})",
                args.config.display(),
                config.templates.len(),
                presets,
                match &config.server.database {
                    config::Database::Sqlite(path) => format!("sqlite://{}", path.display()),
                    config::Database::Postgres(_) => "postgres".to_owned(),
                }
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("warmpool check: {err}");
            ExitCode::from(EXIT_INVALID)
        }
    }
}
