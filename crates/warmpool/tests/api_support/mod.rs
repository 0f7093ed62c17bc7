//! The harness of the black-box API tests (`api_*.rs`): a real `warmpool serve` child process on a free loopback
//! port, with its config, build script, SQLite database and data directory in a temporary directory, and a
//! blocking HTTP client to talk to it. The child is killed when the [`Server`] is dropped.
//!
//! The build script is fast (no sleep unless a preset sets the `delay` parameter) and writes outputs that tell
//! the test what the build saw: `owner`, `claim` (`WARMPOOL_IS_PREBUILD_CLAIM`), `prebuild`, `name`, `build`.
//! The reconciler's interval is an hour, so every tick a test sees was triggered by an event.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const BUILD_SCRIPT: &str = r#"#!/bin/sh
set -eu
case "$WARMPOOL_TRANSITION" in
  start)
    sleep "${WARMPOOL_PARAM_DELAY:-0}"
    printf '{"owner": "%s", "claim": "%s", "prebuild": "%s", "name": "%s", "build": "%s"}\n' \
      "$WARMPOOL_OWNER" "$WARMPOOL_IS_PREBUILD_CLAIM" "$WARMPOOL_IS_PREBUILD" "$WARMPOOL_WORKSPACE_NAME" \
      "$WARMPOOL_BUILD_NUMBER" > "$WARMPOOL_OUTPUTS"
    echo "started $WARMPOOL_WORKSPACE_NAME for $WARMPOOL_OWNER"
    ;;
  stop|delete)
    echo "$WARMPOOL_TRANSITION $WARMPOOL_WORKSPACE_NAME"
    ;;
esac
"#;

/// A template `devbox` with a pooled preset `small` of `instances` prebuilds and an unpooled preset `cold`
/// (whose builds take `delay` seconds).
pub fn devbox(instances: u32) -> String {
    format!(
        r#"
[[templates]]
name = "devbox"
command = ["./build.sh"]
timeout = "1m"
parameters = [{{ name = "cpu", required = true }}, {{ name = "delay", default = "0" }}]

  [[templates.presets]]
  name = "small"
  parameters = {{ cpu = "2" }}
  instances = {instances}

  [[templates.presets]]
  name = "cold"
  parameters = {{ cpu = "4", delay = "0.5" }}
"#
    )
}

/// `[[auth.tokens]]` lines for the tokens `admin-token` (admin `root`), `alice-token` and `bob-token` (users).
pub fn tokens() -> String {
    let mut out = String::new();
    for (name, role, token) in [
        ("root", "admin", "admin-token"),
        ("alice", "user", "alice-token"),
        ("bob", "user", "bob-token"),
    ] {
        out.push_str(&format!(
            "[[auth.tokens]]\nname = \"{name}\"\nrole = \"{role}\"\nsha256 = \"{}\"\n\n",
            sha256_hex(token)
        ));
    }
    out
}

pub fn sha256_hex(token: &str) -> String {
    warmpool::api::auth::token_hash(token)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A running `warmpool serve`.
#[derive(Debug)]
pub struct Server {
    child: Child,
    pub url: String,
    pub dir: tempfile::TempDir,
    pub http: reqwest::blocking::Client,
    /// Sent as the bearer token by [`Server::get`] and friends.
    pub token: Option<String>,
}

/// An answer: status and body (JSON, or the text as a JSON string).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    pub fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or("")
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

impl Server {
    /// Starts a server whose config is `[server]` + `[reconciler]` + `[provisioner] workers` + `rest`.
    pub fn start(rest: &str) -> Server {
        Server::start_with(rest, 8)
    }

    pub fn start_with(rest: &str, workers: u32) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("build.sh");
        std::fs::write(&script, BUILD_SCRIPT).unwrap();
        make_executable(&script);
        let mut last_error = String::new();
        // The port may be taken between finding it and the server binding it: try a few.
        for _ in 0..5 {
            let port = free_port();
            let config = format!(
                r#"[server]
listen = "127.0.0.1:{port}"
database = "sqlite://data/warmpool.db"
data_dir = "data"

[log]
level = "warn"

[reconciler]
interval = "1h"

[provisioner]
workers = {workers}

{rest}"#
            );
            std::fs::write(dir.path().join("warmpool.toml"), &config).unwrap();
            let stderr = std::fs::File::create(dir.path().join("server.log")).unwrap();
            let child = Command::new(env!("CARGO_BIN_EXE_warmpool"))
                .args(["serve", "--config"])
                .arg(dir.path().join("warmpool.toml"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .unwrap();
            let http = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap();
            let url = format!("http://127.0.0.1:{port}");
            let mut child = child;
            match wait_ready(&mut child, &http, &url, dir.path()) {
                Ok(()) => {
                    return Server {
                        child,
                        url,
                        dir,
                        http,
                        token: None,
                    };
                }
                Err(err) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_error = err;
                    if !last_error.contains("cannot listen") {
                        break;
                    }
                }
            }
        }
        panic!("the server did not start: {last_error}");
    }

    /// The server's standard error so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn with_token(mut self, token: &str) -> Server {
        self.token = Some(token.to_owned());
        self
    }

    /// Sends a request with the server's token (if any) and an optional raw body.
    pub fn send_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        let response = request.send().unwrap();
        let status = response.status().as_u16();
        let text = response.text().unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer { status, body }
    }

    pub fn send(&self, method: &str, path: &str, body: Option<&str>) -> Answer {
        self.send_as(self.token.as_deref(), method, path, body)
    }

    pub fn get(&self, path: &str) -> Answer {
        self.send("GET", path, None)
    }

    pub fn get_ok(&self, path: &str) -> Value {
        let answer = self.get(path);
        assert_eq!(answer.status, 200, "GET {path}: {answer:?}");
        answer.body
    }

    pub fn post(&self, path: &str, body: &Value) -> Answer {
        self.send("POST", path, Some(&body.to_string()))
    }

    pub fn put(&self, path: &str, body: &Value) -> Answer {
        self.send("PUT", path, Some(&body.to_string()))
    }

    pub fn claim(&self, body: &Value) -> Answer {
        self.post("/api/v1/claims", body)
    }

    /// The state of a preset's pool, from `GET /api/v1/presets`.
    pub fn pool(&self, template: &str, preset: &str) -> Value {
        let presets = self.get_ok("/api/v1/presets");
        presets["presets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| {
                p["template"] == json!(template)
                    && p["preset"] == json!(preset)
                    && p["active"] == json!(true)
            })
            .cloned()
            .unwrap_or_else(|| panic!("no active preset {template}/{preset} in {presets}"))
    }

    /// Waits until the preset has `eligible` ready prebuilds.
    pub fn wait_eligible(&self, template: &str, preset: &str, eligible: u64) {
        self.wait_for(
            &format!("{template}/{preset} to have {eligible} eligible"),
            || self.pool(template, preset)["state"]["eligible"] == json!(eligible),
        );
    }

    /// Waits until a workspace's status is `status`, answering the workspace.
    pub fn wait_status(&self, id: &str, status: &str) -> Value {
        let mut last = Value::Null;
        self.wait_for(&format!("workspace {id} to be {status}"), || {
            last = self.get_ok(&format!("/api/v1/workspaces/{id}"));
            last["status"] == json!(status)
        });
        last
    }

    /// Polls `check` every 20 ms for up to 30 s.
    pub fn wait_for(&self, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !check() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; server log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The prebuilds currently in the pool (any status).
    pub fn prebuilds(&self) -> Vec<Value> {
        self.get_ok("/api/v1/workspaces?owner=prebuilds")["workspaces"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// Runs the `warmpool` binary as a client of this server (`--url` set), with `WARMPOOL_TOKEN` cleared.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_warmpool"))
            .args(args)
            .env("WARMPOOL_URL", &self.url)
            .env_remove("WARMPOOL_TOKEN")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

fn wait_ready(
    child: &mut Child,
    http: &reqwest::blocking::Client,
    url: &str,
    dir: &Path,
) -> Result<(), String> {
    let log = || std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Err(format!("exited with {status}: {}", log()));
        }
        if let Ok(r) = http.get(format!("{url}/readyz")).send()
            && r.status().as_u16() == 200
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("not ready after 30 s: {}", log()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut perms = std::fs::metadata(path).unwrap().permissions();
    perms.set_mode(0o755);
    std::fs::set_permissions(path, perms).unwrap();
}

/// Standard output, standard error and the exit status of a CLI run.
pub fn outcome(out: &Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
