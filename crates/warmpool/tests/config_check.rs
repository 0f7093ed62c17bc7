//! `warmpool check` and the config loader: every error names the file, the line and the key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use warmpool::config::{self, Database};

const GOOD: &str = r#"
[server]
listen = "127.0.0.1:7080"

[reconciler]
interval = "10s"
failure_hard_limit = 0

[[templates]]
name = "devbox"
command = ["./devbox.sh", "--flag"]
parameters = [{ name = "cpu", required = true }, { name = "token", default = "", sensitive = true }]

  [[templates.presets]]
  name = "small"
  parameters = { cpu = "2" }
  instances = 2
  ttl = "24h"
  scheduling = { timezone = "Europe/Berlin", schedules = [{ cron = "* 8-18 * * 1-5", instances = 5 }] }

[[templates]]
name = "runner"
command = ["sh", "-c", "true"]
"#;

fn check(text: &str) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("warmpool.toml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_warmpool"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Replaces `from` with `to` in the good config and expects `warmpool.toml:LINE: KEY: ...message...`.
fn assert_error(from: &str, to: &str, line: usize, key: &str, message: &str) {
    assert!(GOOD.contains(from), "{from:?} not in the config");
    let (code, _, stderr) = check(&GOOD.replacen(from, to, 1));
    assert_eq!(code, Some(2), "{stderr}");
    let want = format!("warmpool.toml:{line}: {key}: ");
    assert!(
        stderr.contains(&want),
        "stderr {stderr:?} should contain {want:?}"
    );
    assert!(
        stderr.contains(message),
        "stderr {stderr:?} should contain {message:?}"
    );
}

#[test]
fn the_good_config_and_the_quickstart_pass() {
    let (code, stdout, stderr) = check(GOOD);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("ok (2 templates, 1 presets"), "{stdout}");

    let quickstart =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart/warmpool.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_warmpool"))
        .args(["check", "--config"])
        .arg(&quickstart)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn unknown_keys_name_their_line() {
    assert_error(
        "interval = \"10s\"",
        "intervall = \"10s\"",
        6,
        "reconciler.intervall",
        "unknown field `intervall`",
    );
    assert_error(
        "  ttl = \"24h\"",
        "  ttl = \"24h\"\n  desired = 3",
        19,
        "templates[0].presets[0].desired",
        "unknown field",
    );
    assert_error("[server]", "[serverx]", 2, "serverx", "unknown field");
}

#[test]
fn semantic_errors_name_their_line_and_key() {
    assert_error(
        "ttl = \"24h\"",
        "ttl = \"1w\"",
        18,
        "templates[0].presets[0].ttl",
        "invalid duration \"1w\"",
    );
    assert_error(
        "instances = 2",
        "instances = -2",
        17,
        "templates[0].presets[0].instances",
        "must not be negative",
    );
    assert_error(
        "instances = 2",
        "instances = 1001",
        17,
        "templates[0].presets[0].instances",
        "out of range 0-1000",
    );
    assert_error(
        "cron = \"* 8-18 * * 1-5\"",
        "cron = \"0 8-18 * * 1-5\"",
        19,
        "templates[0].presets[0].scheduling.schedules[0].cron",
        "minute field must be *",
    );
    assert_error(
        "instances = 5 }]",
        "instances = 5 }, { cron = \"* 12 * * 3\", instances = 1 }]",
        19,
        "templates[0].presets[0].scheduling.schedules[1]",
        "overlaps schedules[0]",
    );
    assert_error(
        "timezone = \"Europe/Berlin\"",
        "timezone = \"Europe/Atlantis\"",
        19,
        "templates[0].presets[0].scheduling.timezone",
        "unknown time zone",
    );
    assert_error(
        "name = \"runner\"",
        "name = \"devbox\"",
        22,
        "templates[1].name",
        "duplicate template \"devbox\"",
    );
    assert_error(
        "name = \"runner\"",
        "name = \"Runner!\"",
        22,
        "templates[1].name",
        "invalid template name",
    );
    assert_error(
        "{ name = \"token\", default",
        "{ name = \"cp-u\" }, { name = \"cp_u\", default",
        12,
        "templates[0].parameters[2].name",
        "collide",
    );
    assert_error(
        "parameters = { cpu = \"2\" }",
        "parameters = { gpu = \"2\" }",
        16,
        "templates[0].presets[0].parameters.gpu",
        "not a parameter",
    );
    assert_error(
        "command = [\"sh\", \"-c\", \"true\"]",
        "command = []",
        23,
        "templates[1].command",
        "must not be empty",
    );
    assert_error(
        "listen = \"127.0.0.1:7080\"",
        "listen = \"0.0.0.0:7080\"",
        3,
        "server.listen",
        "not a loopback address",
    );
    assert_error(
        "listen = \"127.0.0.1:7080\"",
        "listen = \"localhost\"",
        3,
        "server.listen",
        "not an address",
    );
    assert_error(
        "failure_hard_limit = 0",
        "failure_hard_limit = \"3\"",
        7,
        "reconciler.failure_hard_limit",
        "invalid type",
    );
}

#[test]
fn auth_tokens_are_checked() {
    let with_token = format!(
        "{GOOD}\n[[auth.tokens]]\nname = \"alice\"\nrole = \"user\"\nsha256 = \"{}\"\n",
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    );
    let (code, _, stderr) = check(&with_token.replace("127.0.0.1:7080", "0.0.0.0:7080"));
    assert_eq!(code, Some(0), "with a token, any address: {stderr}");
    let (code, _, stderr) = check(&with_token.replace("9f86d08188", "zz86d08188"));
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("auth.tokens[0].sha256: must be 64 hexadecimal"),
        "{stderr}"
    );
    let (code, _, stderr) = check(&with_token.replace("\"alice\"", "\"prebuilds\""));
    assert_eq!(code, Some(2));
    assert!(stderr.contains("auth.tokens[0].name"), "{stderr}");
    let (code, _, stderr) = check(&with_token.replace("\"user\"", "\"root\""));
    assert_eq!(code, Some(2));
    assert!(stderr.contains("auth.tokens[0].role"), "{stderr}");
}

#[test]
fn syntax_errors_name_their_line() {
    let (code, _, stderr) = check("[server]\nlisten = \"127.0.0.1:7080\"\ndatabase = \n");
    assert_eq!(code, Some(2));
    assert!(stderr.contains("warmpool.toml:3: "), "{stderr}");
}

#[test]
fn unreadable_file() {
    let out = Command::new(env!("CARGO_BIN_EXE_warmpool"))
        .args(["check", "--config", "/nonexistent/warmpool.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/warmpool.toml")
    );
}

#[test]
fn relative_paths_resolve_against_the_file() {
    let config = config::parse(Path::new("/etc/warmpool/warmpool.toml"), GOOD).unwrap();
    assert_eq!(
        config.server.database,
        Database::Sqlite("/etc/warmpool/warmpool-data/warmpool.db".into())
    );
    assert_eq!(
        config.server.data_dir,
        Path::new("/etc/warmpool/warmpool-data")
    );
    assert_eq!(
        config.templates[0].command,
        vec!["/etc/warmpool/./devbox.sh", "--flag"]
    );
    // A bare name is looked up on PATH when the build runs.
    assert_eq!(config.templates[1].command[0], "sh");
    assert_eq!(config.reconciler.interval.to_string(), "10s");
    assert_eq!(config.reconciler.planner.failure_hard_limit, 0);
    assert_eq!(config.provisioner.workers, 4);
    let small = &config.templates[0].presets[0];
    assert_eq!(small.pool.instances, Some(2));
    assert!(small.pool.scheduling.is_some());
    assert!(config.templates[0].parameters[1].sensitive);
}
