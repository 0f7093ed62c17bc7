//! Black-box tests of the command-line client (SPEC section 7) against a real server: `claim --wait` (warm and
//! cold), `presets`, `status`, `pause`/`resume` (global and per preset), `workspaces`, `apply [--prune]`, `token
//! new` (its output pasted into a config authenticates), `--json` printing the API's body, and the exit statuses:
//! 0 success, 1 failure with the server's message on stderr, 2 usage or invalid input, 3 pool empty with
//! `--fallback none`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod api_support;

use std::process::Command;

use api_support::{Server, devbox, outcome};
use serde_json::{Value, json};

fn json_of(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

#[test]
fn claim_wait_presets_status_pause_and_resume() {
    let server = Server::start(&devbox(1));
    server.wait_eligible("devbox", "small", 1);

    // presets: a table for people, the API's body with --json.
    let (code, stdout, stderr) = outcome(&server.cli(&["presets"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("PRESET"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("devbox/small") && l.contains("healthy")),
        "{stdout}"
    );
    let (code, stdout, _) = outcome(&server.cli(&["presets", "--json"]));
    assert_eq!(code, 0);
    assert_eq!(json_of(&stdout), server.get_ok("/api/v1/presets"));

    // claim --wait of a warm prebuild: running at once, its outputs printed.
    let (code, stdout, stderr) =
        outcome(&server.cli(&["claim", "devbox/small", "--owner", "alice", "--wait"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("claimed alice-small-"), "{stdout}");
    assert!(stdout.contains("for alice: running"), "{stdout}");
    assert!(
        stdout.contains("  owner = prebuilds"),
        "the outputs are printed: {stdout}"
    );
    assert!(
        stderr.is_empty(),
        "no spinner when stderr is not a terminal: {stderr:?}"
    );

    // claim --wait --json of a cold build: waits until it runs and prints the API's answer with the final workspace.
    let (code, stdout, stderr) = outcome(&server.cli(&[
        "claim",
        "devbox/cold",
        "--owner",
        "alice",
        "--name",
        "alice-cold",
        "--wait",
        "--json",
    ]));
    assert_eq!(code, 0, "{stderr}");
    let answer = json_of(&stdout);
    assert_eq!(answer["warm"], json!(false));
    assert_eq!(answer["workspace"]["name"], json!("alice-cold"));
    assert_eq!(answer["workspace"]["status"], json!("running"));
    assert_eq!(answer["workspace"]["outputs"]["owner"], json!("alice"));
    assert_eq!(answer["build"]["transition"], json!("start"));
    let cold_id = answer["workspace"]["id"].as_str().unwrap().to_owned();

    // --fallback none on an empty pool: exit 3, the server's message on stderr.
    let (code, stdout, stderr) = outcome(&server.cli(&[
        "claim",
        "devbox/cold",
        "--owner",
        "bob",
        "--fallback",
        "none",
    ]));
    assert_eq!(code, 3, "{stdout} {stderr}");
    assert!(
        stderr.contains("no ready prebuild of devbox/cold"),
        "{stderr}"
    );
    // A failure the server reports: exit 1 with its message.
    let (code, _, stderr) = outcome(&server.cli(&["claim", "devbox/nope", "--owner", "bob"]));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("not found") && stderr.contains("404"),
        "{stderr}"
    );
    let (code, _, stderr) = outcome(&server.cli(&[
        "claim",
        "devbox/small",
        "--owner",
        "alice",
        "--name",
        "alice-cold",
    ]));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("name_taken"), "{stderr}");
    // Invalid input, found by the client or by the server (400): exit 2.
    for args in [
        &["claim", "devbox"][..],
        &["claim", "devbox/small/x"],
        &["claim", "devbox/small", "--fallback", "maybe"],
        &["claim"],
        &["presets", "--bogus"],
        &["pause", "devbox/"],
    ] {
        let (code, _, stderr) = outcome(&server.cli(args));
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(!stderr.is_empty());
    }
    let (code, _, stderr) =
        outcome(&server.cli(&["claim", "devbox/small", "--owner", "prebuilds"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("owner") && stderr.contains("400"),
        "{stderr}"
    );

    // workspaces, with a filter; --json is the API's body.
    let (code, stdout, _) = outcome(&server.cli(&["workspaces", "--owner", "alice"]));
    assert_eq!(code, 0);
    assert!(stdout.starts_with("ID"), "{stdout}");
    assert_eq!(
        stdout.lines().count(),
        3,
        "a header and alice's two: {stdout}"
    );
    let (_, stdout, _) = outcome(&server.cli(&["workspaces", "--owner", "alice", "--json"]));
    assert_eq!(
        json_of(&stdout),
        server.get_ok("/api/v1/workspaces?owner=alice")
    );

    // logs prints the latest build's log.
    let (code, stdout, _) = outcome(&server.cli(&["logs", &cold_id]));
    assert_eq!(code, 0);
    assert!(stdout.contains("started alice-cold for alice"), "{stdout}");

    // status: the ticks, the job queue and the pools.
    let (code, stdout, stderr) = outcome(&server.cli(&["status"]));
    assert_eq!(code, 0, "{stderr}");
    for part in ["replica ", "jobs: ", "TICK", "PRESET", "devbox/small"] {
        assert!(stdout.contains(part), "{part:?} in {stdout}");
    }
    let (code, stdout, _) = outcome(&server.cli(&["status", "--json"]));
    assert_eq!(code, 0);
    let status = json_of(&stdout);
    assert!(status["status"]["replica_id"].is_string(), "{status}");
    assert!(
        status["status"]["ticks"]
            .as_array()
            .is_some_and(|t| !t.is_empty()),
        "{status}"
    );
    assert!(status["presets"].is_array(), "{status}");

    // pause and resume one preset, then everything.
    let (code, stdout, _) = outcome(&server.cli(&["pause", "devbox/small"]));
    assert_eq!((code, stdout.trim()), (0, "devbox/small paused"));
    assert_eq!(server.pool("devbox", "small")["paused"], json!(true));
    let (code, stdout, _) = outcome(&server.cli(&["resume", "devbox/small", "--json"]));
    assert_eq!(code, 0);
    assert_eq!(
        json_of(&stdout),
        json!({"template": "devbox", "preset": "small", "paused": false})
    );
    assert_eq!(server.pool("devbox", "small")["paused"], json!(false));
    let (code, _, _) = outcome(&server.cli(&["pause"]));
    assert_eq!(code, 0);
    assert_eq!(
        server.get_ok("/api/v1/settings"),
        json!({"reconciliation_paused": true})
    );
    let (code, stdout, _) = outcome(&server.cli(&["resume", "--json"]));
    assert_eq!(code, 0);
    assert_eq!(json_of(&stdout), json!({"reconciliation_paused": false}));
    let (code, _, stderr) = outcome(&server.cli(&["pause", "devbox/nope"]));
    assert_eq!(code, 1, "{stderr}");

    // stop and delete queue builds.
    let (code, stdout, _) = outcome(&server.cli(&["stop", &cold_id]));
    assert_eq!(code, 0);
    assert!(stdout.starts_with("queued stop build "), "{stdout}");
    server.wait_status(&cold_id, "stopped");
    let (code, stdout, _) = outcome(&server.cli(&["delete", &cold_id, "--json"]));
    assert_eq!(code, 0);
    assert_eq!(json_of(&stdout)["build"]["transition"], json!("delete"));

    // A reader that stops early (`warmpool status | head -1`) is no failure: no panic, exit 0.
    let mut child = Command::new(env!("CARGO_BIN_EXE_warmpool"))
        .args(["status", "--url", &server.url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let (code, _, stderr) = outcome(&out);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // A server that does not answer: exit 1.
    let out = Command::new(env!("CARGO_BIN_EXE_warmpool"))
        .args(["presets", "--url", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    let (code, _, stderr) = outcome(&out);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("cannot reach"), "{stderr}");
}

#[test]
fn token_new_output_pasted_into_a_config_authenticates() {
    let new = |name: &str, role: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_warmpool"))
            .args(["token", "new", name, "--role", role])
            .output()
            .unwrap();
        let (code, stdout, stderr) = outcome(&out);
        assert_eq!(code, 0, "{stderr}");
        let token = stdout.lines().next().unwrap().to_owned();
        let lines = stdout[stdout.find("[[auth.tokens]]").unwrap()..].to_owned();
        (token, lines)
    };
    let (alice, alice_lines) = new("alice", "user");
    let (ops, ops_lines) = new("ops", "admin");
    assert_ne!(alice, ops);
    assert!(
        alice_lines.contains("name = \"alice\"") && alice_lines.contains("role = \"user\""),
        "{alice_lines}"
    );

    // --json: the same facts for scripts.
    let out = Command::new(env!("CARGO_BIN_EXE_warmpool"))
        .args(["token", "new", "ci", "--json"])
        .output()
        .unwrap();
    let (code, stdout, _) = outcome(&out);
    assert_eq!(code, 0);
    let made = json_of(&stdout);
    assert_eq!(
        (made["name"].as_str(), made["role"].as_str()),
        (Some("ci"), Some("user"))
    );
    assert_eq!(
        made["sha256"].as_str().unwrap(),
        api_support::sha256_hex(made["token"].as_str().unwrap())
    );
    // Names that cannot be owners are refused.
    for name in ["prebuilds", "Alice", ""] {
        let out = Command::new(env!("CARGO_BIN_EXE_warmpool"))
            .args(["token", "new", name])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{name:?}");
    }

    let server = Server::start(&format!("{alice_lines}\n{ops_lines}\n{}", devbox(1)));
    server.wait_for("the pool", || {
        server
            .send_as(Some(&ops), "GET", "/api/v1/presets", None)
            .body["presets"][0]["state"]["eligible"]
            == json!(1)
    });
    assert_eq!(
        server
            .send_as(None, "GET", "/api/v1/workspaces", None)
            .status,
        401
    );
    assert_eq!(
        server
            .send_as(Some(&alice), "GET", "/api/v1/workspaces", None)
            .status,
        200
    );
    assert_eq!(
        server
            .send_as(Some(&alice), "GET", "/api/v1/status", None)
            .status,
        403
    );

    // The CLI sends the token from --token or WARMPOOL_TOKEN; the owner defaults to the token's name.
    let (code, _, stderr) = outcome(&server.cli(&["presets"]));
    assert_eq!(code, 1, "no token");
    assert!(stderr.contains("401"), "{stderr}");
    let (code, stdout, stderr) =
        outcome(&server.cli(&["claim", "devbox/small", "--wait", "--token", &alice]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("for alice: running"), "{stdout}");
    let out = Command::new(env!("CARGO_BIN_EXE_warmpool"))
        .args(["status"])
        .env("WARMPOOL_URL", &server.url)
        .env("WARMPOOL_TOKEN", &ops)
        .output()
        .unwrap();
    let (code, _, stderr) = outcome(&out);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = outcome(&server.cli(&["status", "--token", &alice]));
    assert_eq!(code, 1);
    assert!(stderr.contains("403"), "{stderr}");
}

#[test]
fn apply_sends_a_files_templates_and_prune_deletes_the_others() {
    let server = Server::start(&devbox(0));
    let file = server.path("web.toml");
    std::fs::write(
        &file,
        r#"
[[templates]]
name = "web"
command = ["./build.sh"]
parameters = [{ name = "cpu", default = "1" }]

  [[templates.presets]]
  name = "tiny"
  instances = 1
"#,
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let (code, stdout, stderr) = outcome(&server.cli(&["apply", "-f", path]));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), "web: active version v1");
    let web = server.get_ok("/api/v1/templates/web");
    assert_eq!(web["applied_by"], json!("api"));
    // The relative command was resolved against the file's directory.
    let command = web["versions"][0]["command"][0].as_str().unwrap();
    assert_eq!(
        std::fs::canonicalize(command).unwrap(),
        std::fs::canonicalize(server.path("build.sh")).unwrap()
    );
    server.wait_eligible("web", "tiny", 1);

    // Applying the same file again changes nothing; --json prints the API's answers.
    let (code, stdout, _) = outcome(&server.cli(&["apply", "-f", path, "--json"]));
    assert_eq!(code, 0);
    let applied = json_of(&stdout);
    assert_eq!(
        applied["templates"][0],
        server.get_ok("/api/v1/templates/web")
    );
    assert_eq!(applied["deleted"], json!([]));

    // --prune deletes the server's templates the file does not name.
    let (code, stdout, stderr) = outcome(&server.cli(&["apply", "-f", path, "--prune"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("devbox: deleted"), "{stdout}");
    assert_eq!(
        server.get_ok("/api/v1/templates/devbox")["deleted"],
        json!(true)
    );

    // An invalid file is invalid input (exit 2), named by file, line and key, and nothing is sent.
    std::fs::write(
        &file,
        "[[templates]]\nname = \"web\"\ncommand = [\"/bin/true\"]\ntimeout = \"1w\"\n",
    )
    .unwrap();
    let (code, _, stderr) = outcome(&server.cli(&["apply", "-f", path]));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("web.toml:4: templates[0].timeout"),
        "{stderr}"
    );
    let (code, _, _) =
        outcome(&server.cli(&["apply", "-f", server.path("missing.toml").to_str().unwrap()]));
    assert_eq!(code, 2);
    assert_eq!(
        server.get_ok("/api/v1/templates/web")["active_version"],
        json!("v1")
    );
}
