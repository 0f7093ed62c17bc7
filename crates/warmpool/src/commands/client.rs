//! The client commands: they talk to a server's API (`--url`, env `WARMPOOL_URL`, default
//! `http://127.0.0.1:7080`; `--token`, env `WARMPOOL_TOKEN`), print tables for people and, with `--json`, the API's
//! JSON body. Exit status: 0 success, 1 failure (the server's message on standard error), 2 usage or invalid
//! input, 3 pool empty (`claim --fallback none`).
//!
//! Readings: a 400 from the server is invalid input too (exit 2, its message on stderr), like the client's own
//! checks; `apply --json` prints `{"templates": [the API's answer per template], "deleted": [names]}` and `status
//! --json` prints `{"status": ..., "presets": [...]}` (two API bodies in one); `logs` prints the log text, with or
//! without `--json`, since the API's answer is text. `claim --wait` polls the workspace every 250 ms and draws a
//! spinner only when standard error is a terminal.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde_json::{Value, json};

use super::EXIT_INVALID;
use crate::config;
use crate::template_input::raw_from_spec;

/// Writes a line to standard output; a closed pipe (`warmpool status | head -3`) is not an error: the rest of the
/// output is dropped and the command finishes as it would have.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// [`out!`] without the newline.
macro_rules! out_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// Exit status when `claim --fallback none` finds the pool empty.
pub const EXIT_POOL_EMPTY: u8 = 3;

#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The server's address.
    #[arg(
        long,
        env = "WARMPOOL_URL",
        default_value = "http://127.0.0.1:7080",
        global = true
    )]
    url: String,
    /// A bearer token (when the server has `[[auth.tokens]]`).
    #[arg(long, env = "WARMPOOL_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Print the API's JSON body instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

/// A failed command: what to print and the exit status.
#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

type Outcome = Result<(), Failure>;

struct Client {
    http: reqwest::blocking::Client,
    args: ClientArgs,
}

impl Client {
    fn new(args: &ClientArgs) -> Result<Self, Failure> {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| Failure::new(1, format!("cannot create the HTTP client: {e}")))?;
        Ok(Client {
            http,
            args: args.clone(),
        })
    }

    /// Sends a request; answers the status and the JSON (or text) body, or the server's error as a failure.
    fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), Failure> {
        let url = format!("{}{path}", self.args.url.trim_end_matches('/'));
        let mut request = self.http.request(method, &url);
        if let Some(token) = &self.args.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .map_err(|e| Failure::new(1, format!("cannot reach {url}: {e}")))?;
        let status = response.status().as_u16();
        let text = response.text().unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status >= 400 {
            let message = value
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| value.to_string());
            let code = value.get("code").and_then(Value::as_str).unwrap_or("");
            // The server refusing the input is invalid input (2), like the client's own checks.
            let exit = match (status, code) {
                (_, "pool_empty") => EXIT_POOL_EMPTY,
                (400, _) => EXIT_INVALID,
                _ => 1,
            };
            return Err(Failure::new(exit, format!("{message} ({status} {code})")));
        }
        Ok((status, value))
    }

    fn get(&self, path: &str) -> Result<Value, Failure> {
        self.send(reqwest::Method::GET, path, None).map(|(_, v)| v)
    }

    fn print(&self, value: &Value) {
        out!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    }
}

/// Prints rows as aligned columns.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.len());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out!("{}", out.trim_end());
    };
    line(header.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        line(row.clone());
    }
}

fn s(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".to_owned(),
        Some(other) => other.to_string(),
    }
}

fn split_preset(arg: &str) -> Result<(String, String), Failure> {
    match arg.split_once('/') {
        Some((t, p)) if !t.is_empty() && !p.is_empty() && !p.contains('/') => {
            Ok((t.to_owned(), p.to_owned()))
        }
        _ => Err(Failure::new(
            EXIT_INVALID,
            format!("{arg:?}: expected TEMPLATE/PRESET"),
        )),
    }
}

fn finish(result: Outcome) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("warmpool: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

fn print_presets(client: &Client, presets: &Value) {
    if client.args.json {
        client.print(presets);
        return;
    }
    let rows: Vec<Vec<String>> = presets["presets"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|p| {
                    let st = &p["state"];
                    vec![
                        format!("{}/{}", s(p, "template"), s(p, "preset")),
                        s(p, "template_version"),
                        s(st, "desired"),
                        s(st, "actual"),
                        s(st, "eligible"),
                        s(st, "starting"),
                        s(p, "backoff_until"),
                        s(p, "status"),
                        if p["paused"] == json!(true) {
                            "paused".into()
                        } else {
                            "-".into()
                        },
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(
        &[
            "PRESET", "VERSION", "DESIRED", "RUNNING", "ELIGIBLE", "STARTING", "BACKOFF", "STATUS",
            "PAUSED",
        ],
        &rows,
    );
}

/// `warmpool presets`.
pub fn presets(args: &ClientArgs) -> ExitCode {
    finish((|| {
        let client = Client::new(args)?;
        let presets = client.get("/api/v1/presets")?;
        print_presets(&client, &presets);
        Ok(())
    })())
}

/// `warmpool status`: the reconciler's last ticks, the job queue, and the pools.
pub fn status(args: &ClientArgs, preset: Option<&str>) -> ExitCode {
    finish((|| {
        let client = Client::new(args)?;
        let plan = match preset {
            Some(p) => {
                let (t, p) = split_preset(p)?;
                Some(client.get(&format!("/api/v1/presets/{t}/{p}/plan"))?)
            }
            None => None,
        };
        let status = client.get("/api/v1/status")?;
        let presets = client.get("/api/v1/presets")?;
        if args.json {
            let mut out = json!({"status": status, "presets": presets["presets"]});
            if let (Some(plan), Some(map)) = (&plan, out.as_object_mut()) {
                map.insert("plan".into(), plan.clone());
            }
            client.print(&out);
            return Ok(());
        }
        out!(
            "replica {}   last tick by {}",
            s(&status, "replica_id"),
            s(&status, "last_tick_replica")
        );
        let jobs = &status["jobs"];
        let by_status: Vec<String> = jobs["by_status"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| format!("{k} {v}")).collect())
            .unwrap_or_default();
        let oldest = match jobs["oldest_pending_age_seconds"].as_f64() {
            Some(age) => format!("{age:.1}s"),
            None => "-".to_owned(),
        };
        out!(
            "jobs: {}   oldest pending: {oldest}   failing deletes: {}",
            if by_status.is_empty() {
                "none".to_owned()
            } else {
                by_status.join(", ")
            },
            s(jobs, "failing_deletes")
        );
        let ticks: Vec<Vec<String>> = status["ticks"]
            .as_array()
            .map(|t| {
                t.iter()
                    .take(5)
                    .map(|t| {
                        vec![
                            s(t, "started_at"),
                            format!("{:.1}ms", t["duration_ms"].as_f64().unwrap_or(0.0)),
                            if t["lock_acquired"] == json!(true) {
                                "yes".into()
                            } else {
                                "no".into()
                            },
                            t["actions"].to_string(),
                            t["errors"].as_array().map_or(0, Vec::len).to_string(),
                        ]
                    })
                    .collect()
            })
            .unwrap_or_default();
        out!();
        table(&["TICK", "DURATION", "LOCK", "ACTIONS", "ERRORS"], &ticks);
        out!();
        print_presets(&client, &presets);
        if let Some(plan) = plan.as_ref().and_then(|p| p["presets"].get(0)) {
            out!();
            out!("plan of {}/{}:", s(plan, "template"), s(plan, "preset"));
            let actions = plan["actions"].as_array().cloned().unwrap_or_default();
            let held = plan["held"].as_array().cloned().unwrap_or_default();
            if actions.is_empty() && held.is_empty() {
                out!("  nothing to do");
            }
            for action in &actions {
                out!("  do    {action}");
            }
            for h in &held {
                let until = h
                    .get("until")
                    .and_then(Value::as_str)
                    .map(|u| format!(" until {u}"))
                    .unwrap_or_default();
                out!("  held  {} ({}{until})", h["action"], s(h, "reason"));
            }
        }
        Ok(())
    })())
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FallbackArg {
    Build,
    None,
}

#[derive(Debug, Args)]
pub struct ClaimArgs {
    /// TEMPLATE/PRESET
    preset: String,
    /// The new owner (default: the token's name).
    #[arg(long)]
    owner: Option<String>,
    /// The workspace's name (default: OWNER-PRESET-xxxxxx).
    #[arg(long)]
    name: Option<String>,
    /// What to do when no prebuild is ready.
    #[arg(long, value_enum, default_value = "build")]
    fallback: FallbackArg,
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Wait until the workspace is running and print its outputs.
    #[arg(long)]
    wait: bool,
}

/// `warmpool claim TEMPLATE/PRESET`.
pub fn claim(args: &ClientArgs, claim: &ClaimArgs) -> ExitCode {
    finish((|| {
        let (template, preset) = split_preset(&claim.preset)?;
        let client = Client::new(args)?;
        let mut body = json!({
            "template": template,
            "preset": preset,
            "fallback": match claim.fallback { FallbackArg::Build => "build", FallbackArg::None => "none" },
        });
        if let Some(map) = body.as_object_mut() {
            if let Some(owner) = &claim.owner {
                map.insert("owner".into(), json!(owner));
            }
            if let Some(name) = &claim.name {
                map.insert("name".into(), json!(name));
            }
            if let Some(key) = &claim.idempotency_key {
                map.insert("idempotency_key".into(), json!(key));
            }
        }
        let (_, answer) = client.send(reqwest::Method::POST, "/api/v1/claims", Some(&body))?;
        let mut workspace = answer["workspace"].clone();
        let warm = answer["warm"] == json!(true);
        if claim.wait && workspace["status"] != json!("running") {
            let id = s(&workspace, "id");
            // A spinner for people; scripts reading stderr get only the failures.
            let spinner = std::io::stderr().is_terminal();
            let frames = ['|', '/', '-', '\\'];
            let mut i = 0usize;
            loop {
                std::thread::sleep(Duration::from_millis(250));
                workspace = client.get(&format!("/api/v1/workspaces/{id}"))?;
                let status = s(&workspace, "status");
                let done = status == "running"
                    || matches!(
                        status.as_str(),
                        "failed" | "canceled" | "deleted" | "deleting" | "stopped"
                    );
                if spinner {
                    if done {
                        eprint!("\r\x1b[K");
                    } else {
                        eprint!(
                            "\r{} building {} ({status})",
                            frames[i % 4],
                            s(&workspace, "name")
                        );
                    }
                    let _ = std::io::stderr().flush();
                }
                if status == "running" {
                    break;
                }
                if done {
                    return Err(Failure::new(
                        1,
                        format!("workspace {id} is {status}; see `warmpool logs {id}`"),
                    ));
                }
                i += 1;
            }
        }
        if args.json {
            let mut out = answer.clone();
            if let Some(map) = out.as_object_mut() {
                map.insert("workspace".into(), workspace);
            }
            client.print(&out);
            return Ok(());
        }
        out!(
            "{} {} ({}) for {}: {}",
            if warm { "claimed" } else { "building" },
            s(&workspace, "name"),
            s(&workspace, "id"),
            s(&workspace, "owner"),
            s(&workspace, "status")
        );
        if let Some(outputs) = workspace.get("outputs").and_then(Value::as_object) {
            for (k, v) in outputs {
                out!(
                    "  {k} = {}",
                    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
                );
            }
        }
        Ok(())
    })())
}

#[derive(Debug, Args)]
pub struct WorkspacesArgs {
    #[arg(long)]
    owner: Option<String>,
    #[arg(long)]
    template: Option<String>,
    #[arg(long)]
    preset: Option<String>,
}

/// `warmpool workspaces`.
pub fn workspaces(args: &ClientArgs, filter: &WorkspacesArgs) -> ExitCode {
    finish((|| {
        let client = Client::new(args)?;
        let mut query: Vec<String> = Vec::new();
        for (key, value) in [
            ("owner", &filter.owner),
            ("template", &filter.template),
            ("preset", &filter.preset),
        ] {
            if let Some(v) = value {
                query.push(format!("{key}={v}"));
            }
        }
        let path = if query.is_empty() {
            "/api/v1/workspaces".to_owned()
        } else {
            format!("/api/v1/workspaces?{}", query.join("&"))
        };
        let list = client.get(&path)?;
        if args.json {
            client.print(&list);
            return Ok(());
        }
        let rows: Vec<Vec<String>> = list["workspaces"]
            .as_array()
            .map(|l| {
                l.iter()
                    .map(|w| {
                        vec![
                            s(w, "id"),
                            s(w, "name"),
                            s(w, "owner"),
                            format!("{}/{}", s(w, "template"), s(w, "preset")),
                            s(w, "template_version"),
                            s(w, "status"),
                            s(w, "created_at"),
                        ]
                    })
                    .collect()
            })
            .unwrap_or_default();
        table(
            &[
                "ID", "NAME", "OWNER", "PRESET", "VERSION", "STATUS", "CREATED",
            ],
            &rows,
        );
        Ok(())
    })())
}

/// `warmpool start|stop|delete ID`.
pub fn transition(args: &ClientArgs, id: &str, action: &str) -> ExitCode {
    finish((|| {
        let client = Client::new(args)?;
        let (method, path) = match action {
            "delete" => (reqwest::Method::DELETE, format!("/api/v1/workspaces/{id}")),
            other => (
                reqwest::Method::POST,
                format!("/api/v1/workspaces/{id}/{other}"),
            ),
        };
        let (_, answer) = client.send(method, &path, None)?;
        if args.json {
            client.print(&answer);
        } else {
            out!(
                "queued {} build {} of {id}",
                action,
                s(&answer["build"], "id")
            );
        }
        Ok(())
    })())
}

/// `warmpool pause|resume [TEMPLATE/PRESET]`.
pub fn pause(args: &ClientArgs, preset: Option<&str>, paused: bool) -> ExitCode {
    finish((|| {
        let client = Client::new(args)?;
        let (path, body) = match preset {
            Some(p) => {
                let (t, p) = split_preset(p)?;
                (
                    format!("/api/v1/presets/{t}/{p}/settings"),
                    json!({"paused": paused}),
                )
            }
            None => (
                "/api/v1/settings".to_owned(),
                json!({"reconciliation_paused": paused}),
            ),
        };
        let (_, answer) = client.send(reqwest::Method::PUT, &path, Some(&body))?;
        if args.json {
            client.print(&answer);
        } else {
            out!(
                "{} {}",
                preset.unwrap_or("reconciliation"),
                if paused { "paused" } else { "resumed" }
            );
        }
        Ok(())
    })())
}

/// `warmpool logs WORKSPACE_ID [--build BUILD_ID]`: the latest build's log, or a given build's.
pub fn logs(args: &ClientArgs, workspace: &str, build: Option<&str>) -> ExitCode {
    finish((|| {
        let client = Client::new(args)?;
        let build_id = match build {
            Some(b) => b.to_owned(),
            None => {
                let builds = client.get(&format!("/api/v1/workspaces/{workspace}/builds"))?;
                builds["builds"]
                    .as_array()
                    .and_then(|b| b.first())
                    .map(|b| s(b, "id"))
                    .ok_or_else(|| {
                        Failure::new(1, format!("workspace {workspace} has no builds"))
                    })?
            }
        };
        let log = client.get(&format!("/api/v1/builds/{build_id}/log"))?;
        match log {
            Value::String(text) => out_raw!("{text}"),
            other => out_raw!("{other}"),
        }
        Ok(())
    })())
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The configuration file whose templates to apply.
    #[arg(long, short = 'f')]
    file: PathBuf,
    /// Also delete the server's templates that the file does not name.
    #[arg(long)]
    prune: bool,
}

/// `warmpool apply -f FILE [--prune]`: sends the file's templates through the API.
pub fn apply(args: &ClientArgs, apply: &ApplyArgs) -> ExitCode {
    finish((|| {
        let config =
            config::load(&apply.file).map_err(|e| Failure::new(EXIT_INVALID, e.to_string()))?;
        let client = Client::new(args)?;
        let mut applied = Vec::new();
        let mut deleted = Vec::new();
        for spec in &config.templates {
            let body = serde_json::to_value(raw_from_spec(spec)).unwrap_or(Value::Null);
            let (_, answer) = client.send(
                reqwest::Method::PUT,
                &format!("/api/v1/templates/{}", spec.name),
                Some(&body),
            )?;
            if args.json {
                applied.push(answer);
            } else {
                out!(
                    "{}: active version {}",
                    spec.name,
                    s(&answer, "active_version")
                );
            }
        }
        if apply.prune {
            let templates = client.get("/api/v1/templates")?;
            for t in templates["templates"].as_array().into_iter().flatten() {
                let name = s(t, "name");
                if t["deleted"] != json!(true) && !config.templates.iter().any(|c| c.name == name) {
                    client.send(
                        reqwest::Method::DELETE,
                        &format!("/api/v1/templates/{name}"),
                        None,
                    )?;
                    if !args.json {
                        out!("{name}: deleted");
                    }
                    deleted.push(name);
                }
            }
        }
        if args.json {
            client.print(&json!({"templates": applied, "deleted": deleted}));
        }
        Ok(())
    })())
}
