//! `warmpool token new NAME --role user|admin [--json]`: a fresh random token and the `[[auth.tokens]]` lines to
//! paste (the token on the first line, so `| head -1` gives it to a script). Only its SHA-256 goes into the
//! config; the token itself is printed once and kept nowhere.

use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};

use super::EXIT_INVALID;
use crate::api::auth::token_hash;
use crate::template_input::is_valid_owner_name;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a new token and its config lines.
    New(NewArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    Admin,
    User,
}

#[derive(Debug, Args)]
pub struct NewArgs {
    /// The token's name: the owner a `user` token acts as.
    name: String,
    #[arg(long, value_enum, default_value = "user")]
    role: RoleArg,
    /// Print `{"token", "name", "role", "sha256"}` instead.
    #[arg(long)]
    json: bool,
}

pub fn run(command: &TokenCommand) -> ExitCode {
    match command {
        TokenCommand::New(args) => {
            if !is_valid_owner_name(&args.name) || args.name == warmpool_core::PREBUILDS_OWNER {
                eprintln!(
                    "warmpool token: invalid name {:?} (a-z, 0-9, '.', '_', '-'; not \"prebuilds\")",
                    args.name
                );
                return ExitCode::from(EXIT_INVALID);
            }
            // 244 random bits from two v4 UUIDs (the OS's random source).
            let token = format!(
                "wp_{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            );
            let hash: String = token_hash(&token)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let role = match args.role {
                RoleArg::Admin => "admin",
                RoleArg::User => "user",
            };
            if args.json {
                let text = serde_json::json!({"token": token, "name": args.name, "role": role, "sha256": hash});
                let _ = std::io::Write::write_all(
                    &mut std::io::stdout().lock(),
                    format!("{text}\n").as_bytes(),
                );
                return ExitCode::SUCCESS;
            }
            let text = format!(
                "{token}\n\n# paste into the server's config:\n[[auth.tokens]]\nname = \"{}\"\nrole = \"{role}\"\nsha256 = \"{hash}\"\n",
                args.name
            );
            // One write, and a closed pipe (`| head -1`) is not an error.
            let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes());
            ExitCode::SUCCESS
        }
    }
}
