//! Black-box test of the real binary: `warmpool serve` on a copy of `examples/quickstart`, over HTTP and its
//! SQLite database (read-only), through a crash.
//!
//! The copy differs from the example only where the test needs it: a free port, a 5 s interval, the `large`
//! preset without its Berlin office-hours schedule (its target would depend on when the test runs), and a
//! provisioner whose build time is read from a file, so that builds can be made to last while the server is
//! killed. Every wait is a liveness guard, never a timing assertion.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, Row, SqliteConnection};

const GUARD: Duration = Duration::from_secs(60);

fn quickstart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The quickstart, copied into `dir` and adjusted as the module docs say. Answers the config file.
fn prepare(dir: &Path, port: u16) -> PathBuf {
    let config = std::fs::read_to_string(quickstart().join("warmpool.toml")).unwrap();
    let adjusted = config
        .replace("127.0.0.1:7080", &format!("127.0.0.1:{port}"))
        .replace("interval = \"30s\"", "interval = \"5s\"");
    let adjusted: String = adjusted
        .lines()
        .filter(|line| !line.trim_start().starts_with("scheduling ="))
        .map(|line| format!("{line}\n"))
        .collect();
    assert_ne!(adjusted, config, "the quickstart config changed shape");
    assert!(adjusted.contains(&format!("127.0.0.1:{port}")));
    let path = dir.join("warmpool.toml");
    std::fs::write(&path, adjusted).unwrap();

    let script = std::fs::read_to_string(quickstart().join("devbox.sh")).unwrap();
    let seconds = dir.join("build-seconds");
    let slow = script.replace(
        "sleep 1   # pretend this takes a while",
        &format!(
            "sleep \"$(cat '{}' 2>/dev/null || echo 1)\"",
            seconds.display()
        ),
    );
    assert_ne!(slow, script, "the quickstart script changed shape");
    let script_path = dir.join("devbox.sh");
    std::fs::write(&script_path, slow).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script_path, std::fs::Permissions::from_mode(0o755)).unwrap();
    set_build_seconds(dir, 1);
    path
}

fn set_build_seconds(dir: &Path, seconds: u32) {
    std::fs::write(dir.join("build-seconds"), seconds.to_string()).unwrap();
}

/// A `warmpool serve` process, killed when dropped.
struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Server {
    fn start(dir: &Path, config: &Path, port: u16, name: &str) -> Server {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_warmpool"))
            .args(["serve", "--config"])
            .arg(config)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let server = Server { child, port, log };
        server.wait_until("the server answers /healthz", || {
            http(port, "GET", "/healthz", None).map(|(code, _)| code) == Some(200)
        });
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    fn wait_until(&self, what: &str, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(
                start.elapsed() < GUARD,
                "timed out waiting for {what}; server log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn get(&self, path: &str) -> Value {
        let (code, body) = http(self.port, "GET", path, None).expect("the server answers");
        assert_eq!(code, 200, "GET {path}: {body}");
        body
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < GUARD,
                "the server did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One HTTP/1.1 request with `Connection: close`; `None` when nothing listens (yet).
fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> Option<(u16, Value)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    let value = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned()));
    Some((code, value))
}

/// The pool as `/api/v1/presets` shows it: every preset at its target, all of them eligible, nothing starting.
fn pool_full(presets: &Value) -> bool {
    let presets = presets["presets"].as_array().unwrap();
    !presets.is_empty()
        && presets.iter().all(|p| {
            let s = &p["state"];
            s["desired"].as_u64() > Some(0)
                && s["eligible"] == s["desired"]
                && s["actual"] == s["desired"]
                && s["starting"] == 0
        })
}

fn desired_total(presets: &Value) -> u64 {
    presets["presets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["state"]["desired"].as_u64().unwrap())
        .sum()
}

/// What the database says, read through a read-only connection of its own.
#[derive(Debug, Default)]
struct DbView {
    workspaces: u64,
    prebuilds: u64,
    /// Build status → count.
    builds: std::collections::BTreeMap<String, u64>,
    prebuilds_failed: i64,
    /// Running builds with a recorded process group.
    running_pgids: Vec<i64>,
    /// workspace id → (number of builds, attempts of its latest, its latest status).
    latest: std::collections::BTreeMap<String, (i64, i64, String)>,
}

fn read_db(database: &Path) -> DbView {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let options = SqliteConnectOptions::new()
            .filename(database)
            .read_only(true);
        let mut conn = SqliteConnection::connect_with(&options).await.unwrap();
        let mut view = DbView {
            workspaces: sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM workspaces")
                .fetch_one(&mut conn)
                .await
                .unwrap() as u64,
            prebuilds: sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM workspaces WHERE owner = 'prebuilds' AND deleted_at IS NULL",
            )
            .fetch_one(&mut conn)
            .await
            .unwrap() as u64,
            prebuilds_failed: sqlx::query_scalar::<_, i64>(
                "SELECT COALESCE(SUM(value), 0) FROM metric_counters WHERE name = 'prebuilds_failed'",
            )
            .fetch_one(&mut conn)
            .await
            .unwrap(),
            ..DbView::default()
        };
        for row in sqlx::query("SELECT status, COUNT(*) FROM builds GROUP BY status")
            .fetch_all(&mut conn)
            .await
            .unwrap()
        {
            view.builds
                .insert(row.get::<String, _>(0), row.get::<i64, _>(1) as u64);
        }
        view.running_pgids = sqlx::query_scalar(
            "SELECT process_pgid FROM builds WHERE status = 'running' AND process_pgid IS NOT NULL",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        for row in sqlx::query(
            "SELECT w.id, (SELECT COUNT(*) FROM builds b WHERE b.workspace_id = w.id), b.attempts, b.status \
             FROM workspaces w JOIN builds b ON b.id = w.latest_build_id",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap()
        {
            view.latest.insert(
                row.get::<String, _>(0),
                (row.get(1), row.get(2), row.get(3)),
            );
        }
        conn.close().await.ok();
        view
    })
}

/// Some process of the group is alive (zombies, which an init may be slow to reap, do not count).
fn group_alive(pgid: i64) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.filter_map(Result::ok).any(|entry| {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            return false;
        };
        // Fields after the command name: state, ppid, pgrp, ...
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return false;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        fields.first() != Some(&"Z")
            && fields.get(2).and_then(|g| g.parse::<i64>().ok()) == Some(pgid)
    })
}

#[test]
fn serve_fills_the_pool_and_converges_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = prepare(dir.path(), port);
    let database = dir.path().join("warmpool-data/warmpool.db");

    // The pool fills to its target.
    let mut first = Server::start(dir.path(), &config, port, "first");
    first.wait_until("the pool to fill", || {
        pool_full(&first.get("/api/v1/presets"))
    });
    let presets = first.get("/api/v1/presets");
    let target = desired_total(&presets);
    assert_eq!(target, 3, "{presets}");
    let view = read_db(&database);
    assert_eq!(view.workspaces, target, "{view:?}");

    // A second server on the same database refuses to start.
    let second = Command::new(env!("CARGO_BIN_EXE_warmpool"))
        .args(["serve", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1), "{second:?}");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("in use"), "{stderr}");

    // Two claims; their replacements build slowly, and the server is killed while they run.
    set_build_seconds(dir.path(), 30);
    for n in 1..=2 {
        let (code, body) = http(
            port,
            "POST",
            "/api/v1/claims",
            Some(
                &json!({"template": "devbox", "preset": "small", "owner": "alice",
                         "name": format!("alice-{n}"), "fallback": "none"}),
            ),
        )
        .unwrap();
        assert_eq!(code, 201, "{body}");
        assert_eq!(body["warm"], true, "{body}");
    }
    first.wait_until("two replacement builds to run their processes", || {
        read_db(&database).running_pgids.len() == 2
    });
    let orphans = read_db(&database).running_pgids;
    kill(first.pid(), Signal::SIGKILL).unwrap();
    first.wait_exit();
    assert!(
        orphans.iter().all(|&g| group_alive(g)),
        "the killed server's builds outlive it"
    );

    // Started again, with quick builds: the lost builds run again on their own workspaces and the pool converges.
    set_build_seconds(dir.path(), 1);
    let mut again = Server::start(dir.path(), &config, port, "again");
    again.wait_until("the previous run's builds to be killed", || {
        orphans.iter().all(|&g| !group_alive(g))
    });
    again.wait_until("the pool to converge", || {
        let view = read_db(&database);
        pool_full(&again.get("/api/v1/presets"))
            && !view.builds.contains_key("running")
            && !view.builds.contains_key("pending")
    });
    let view = read_db(&database);
    assert_eq!(view.prebuilds, target, "{view:?}");
    assert_eq!(
        view.workspaces,
        target + 2,
        "only the two claimed prebuilds were ever replaced: {view:?}"
    );
    assert_eq!(view.builds.get("failed"), None, "{view:?}");
    assert_eq!(view.prebuilds_failed, 0, "{view:?}");
    assert_eq!(
        view.builds.values().sum::<u64>(),
        view.workspaces,
        "one build per workspace: {view:?}"
    );
    let rerun: Vec<_> = view
        .latest
        .values()
        .filter(|(_, attempts, _)| *attempts == 2)
        .collect();
    assert_eq!(
        rerun.len(),
        2,
        "the two lost builds ran a second time: {view:?}"
    );
    assert!(
        rerun
            .iter()
            .all(|(builds, _, status)| *builds == 1 && status == "succeeded")
    );
    let status = again.get("/api/v1/status");
    assert!(
        status["jobs"]["by_status"].get("running").is_none(),
        "{status}"
    );

    // SIGTERM stops it cleanly.
    kill(again.pid(), Signal::SIGTERM).unwrap();
    let exit = again.wait_exit();
    assert_eq!(exit.code(), Some(0), "{}", again.log());
}

fn quota_config(dir: &Path, port: u16, max_workspaces: u32) -> PathBuf {
    let script = dir.join("devbox.sh");
    if !script.exists() {
        std::fs::copy(quickstart().join("devbox.sh"), &script).unwrap();
    }
    let text = format!(
        r#"[server]
listen = "127.0.0.1:{port}"

[reconciler]
interval = "1s"
backoff_interval = "1s"

[[templates]]
name = "devbox"
command = ["./devbox.sh"]
max_workspaces = {max_workspaces}
parameters = [{{ name = "cpu", required = true }}, {{ name = "image", default = "debian:12" }}]

  [[templates.presets]]
  name = "small"
  parameters = {{ cpu = "2" }}
  instances = 2
"#
    );
    let path = dir.join("quota.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The preset's creation-failure record: (consecutive, last failure in Unix ms).
fn creation_record(database: &Path) -> (i64, Option<i64>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let options = SqliteConnectOptions::new()
            .filename(database)
            .read_only(true);
        let mut conn = SqliteConnection::connect_with(&options).await.unwrap();
        let row = sqlx::query(
            "SELECT creation_failures, last_creation_failure_at FROM presets WHERE name = 'small'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        let record = (row.get(0), row.get(1));
        conn.close().await.ok();
        record
    })
}

/// The seed's creation-failure backoff through the real binary: `instances = 2` on a template whose
/// `max_workspaces = 1` is full after the first prebuild. Every refused creation adds one to the persisted record,
/// the next attempt comes at least 1×, 2×, 3× `backoff_interval` after the one before (checked on the recorded
/// failure times), the record survives a restart, and once the quota is raised (SIGHUP re-applies the file) the
/// next creation succeeds and clears it.
#[test]
fn creation_backoff_on_a_full_quota_through_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = quota_config(dir.path(), port, 1);
    let database = dir.path().join("warmpool-data/warmpool.db");
    let interval_ms = 1000;

    // Each distinct record seen, in order.
    let mut seen: Vec<(i64, i64)> = Vec::new();
    let mut watch = |server: &Server, until: i64| {
        server.wait_until(&format!("{until} consecutive creation failures"), || {
            if let (n, Some(at)) = creation_record(&database)
                && seen.last() != Some(&(n, at))
            {
                seen.push((n, at));
            }
            seen.last().is_some_and(|(n, _)| *n >= until)
        });
    };
    let server = Server::start(dir.path(), &config, port, "quota-1");
    watch(&server, 2);
    drop(server);

    // Killed and started again: the record is where it was, and the count goes on from there.
    let mut server = Server::start(dir.path(), &config, port, "quota-2");
    assert!(creation_record(&database).0 >= 2);
    watch(&server, 3);
    let counts: Vec<i64> = seen.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        counts,
        vec![1, 2, 3],
        "one more per refused attempt: {seen:?}"
    );
    for pair in seen.windows(2) {
        let ((n, before), (_, after)) = (pair[0], pair[1]);
        assert!(
            after - before >= n * interval_ms,
            "attempt {} came {} ms after the one before, inside a hold of {n} × the interval",
            n + 1,
            after - before
        );
    }
    assert_eq!(read_db(&database).workspaces, 1);

    // Raise the quota and re-apply the file: the next creation succeeds and clears the record.
    quota_config(dir.path(), port, 2);
    kill(server.pid(), Signal::SIGHUP).unwrap();
    server.wait_until("the second prebuild", || read_db(&database).workspaces == 2);
    assert_eq!(creation_record(&database), (0, None));
    kill(server.pid(), Signal::SIGTERM).unwrap();
    assert_eq!(server.wait_exit().code(), Some(0), "{}", server.log());
}
