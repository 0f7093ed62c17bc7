//! `warmpool plan`: the dry run of the pure planner. Reads a snapshot as JSON (a file or standard input), prints
//! the plan as JSON. A snapshot that cannot be read or is malformed exits 2 with one line on standard error naming
//! the field path; nothing is printed on standard output then.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use warmpool_core::snapshot_json;

use super::EXIT_INVALID;

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The snapshot file; `-` or no value reads standard input.
    #[arg(long, short = 'i', value_name = "FILE|-")]
    input: Option<PathBuf>,
}

fn read_input(input: Option<&PathBuf>) -> Result<String, String> {
    let mut text = String::new();
    match input {
        Some(path) if path.as_os_str() != "-" => {
            std::fs::File::open(path)
                .and_then(|mut f| f.read_to_string(&mut text))
                .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
        }
        _ => {
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|err| format!("cannot read standard input: {err}"))?;
        }
    }
    Ok(text)
}

pub fn run(args: &PlanArgs) -> ExitCode {
    let text = match read_input(args.input.as_ref()) {
        Ok(text) => text,
        Err(message) => {
            eprintln!("warmpool plan: {message}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let snapshot = match snapshot_json::from_json(&text) {
        Ok(snapshot) => snapshot,
        Err(err) => {
            eprintln!("warmpool plan: invalid snapshot: {err}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let plan = warmpool_core::plan(&snapshot);
    let mut out = std::io::stdout().lock();
    let written = serde_json::to_writer_pretty(&mut out, &plan)
        .map_err(std::io::Error::from)
        .and_then(|()| writeln!(out));
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("warmpool plan: cannot write the plan: {err}");
            ExitCode::FAILURE
        }
    }
}
