//! The `exec` provisioner: runs a template's `command` for one build.
//!
//! Contract (SPEC section 5): argv is executed directly, never through a shell; standard input is `/dev/null`; the
//! working directory is the workspace's state directory (created if missing); the environment holds only `PATH`,
//! `HOME` (the state directory), `LANG=C.UTF-8` and the `WARMPOOL_*` variables the caller passes. Exit status 0 is
//! success. Standard output and error, interleaved as they arrive, are the build log, of which the last
//! [`LOG_LIMIT`] bytes are kept; the values of sensitive parameters are replaced by `***` in it. A `start` build may
//! write a JSON object to the file named by `WARMPOOL_OUTPUTS`; anything else there fails the build with a log line.
//! A successful `delete` removes the state directory.
//!
//! The command runs in a process group of its own. Past the timeout the whole group gets SIGTERM and, `kill_grace`
//! later, SIGKILL, and the build fails; the same happens at once (SIGKILL) when the caller cancels the build (its
//! lease was lost). When the command exits, members of its group that are still running are left alone, but the
//! log stops being read shortly after, so a background process holding the output pipes cannot hang the build.
//! This module never touches the database and never retries: that is the job worker's business.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration as StdDuration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use warmpool_core::model::Transition;

/// How much of a build's log is kept: the last 1 MiB.
pub const LOG_LIMIT: usize = 1 << 20;

/// Replaces the first, cut line of a log whose beginning was dropped.
const DROPPED_MARKER: &str = "[earlier output dropped]\n";

/// How long the log is still read after the command exited, for output its children flush late.
const DRAIN_AFTER_EXIT: StdDuration = StdDuration::from_millis(500);

/// One build to run.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// argv; `command[0]` is a path or a name looked up on `PATH`.
    pub command: Vec<String>,
    pub transition: Transition,
    /// `WARMPOOL_*` variables (and only those); `PATH`, `HOME` and `LANG` are added here.
    pub env: Vec<(String, String)>,
    /// `PATH` for the command (the server's own `PATH`).
    pub path_var: String,
    pub state_dir: PathBuf,
    /// Where a `start` build may write its outputs; also passed as `WARMPOOL_OUTPUTS`.
    pub outputs_file: PathBuf,
    pub timeout: StdDuration,
    pub kill_grace: StdDuration,
    /// Values replaced by `***` in the log.
    pub sensitive: Vec<String>,
}

/// How a build ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildResult {
    Succeeded,
    /// Failed, with a one-line reason (also the last line of the log).
    Failed(String),
    /// Stopped because the caller cancelled it.
    Canceled,
}

/// The result, the kept log and, for a successful `start`, the outputs.
#[derive(Debug, Clone)]
pub struct BuildOutcome {
    pub result: BuildResult,
    pub log: String,
    pub outputs: Option<serde_json::Map<String, serde_json::Value>>,
    /// The command's process id (and process group id), when it started.
    pub pid: Option<u32>,
}

/// Keeps the last `limit` bytes written to it (plus some slack so redaction sees values cut at the edge).
#[derive(Debug)]
struct LogTail {
    buf: VecDeque<u8>,
    keep: usize,
    dropped: bool,
}

impl LogTail {
    fn new(keep: usize) -> Self {
        LogTail {
            buf: VecDeque::new(),
            keep,
            dropped: false,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend(bytes);
        if self.buf.len() > self.keep {
            let excess = self.buf.len() - self.keep;
            self.buf.drain(..excess);
            self.dropped = true;
        }
    }

    fn line(&mut self, line: &str) {
        if !self.buf.is_empty() && self.buf.back() != Some(&b'\n') {
            self.push(b"\n");
        }
        self.push(line.as_bytes());
        self.push(b"\n");
    }

    /// The text, sensitive values redacted, cut to `limit` bytes at a character boundary.
    fn finish(self, sensitive: &[String], limit: usize) -> String {
        let (a, b) = self.buf.as_slices();
        let mut bytes = Vec::with_capacity(a.len() + b.len());
        bytes.extend_from_slice(a);
        bytes.extend_from_slice(b);
        let mut text = String::from_utf8_lossy(&bytes).into_owned();
        for value in sensitive.iter().filter(|v| !v.is_empty()) {
            text = text.replace(value.as_str(), "***");
        }
        if self.dropped || text.len() > limit {
            // Keep room for the marker, then drop the first (probably cut) line instead of showing half of it.
            let budget = limit.saturating_sub(DROPPED_MARKER.len());
            if text.len() > budget {
                let mut cut = text.len() - budget;
                while !text.is_char_boundary(cut) {
                    cut += 1;
                }
                text.drain(..cut);
            }
            match text.find('\n') {
                Some(newline) => text.replace_range(..=newline, DROPPED_MARKER),
                None => text.insert_str(0, DROPPED_MARKER),
            }
        }
        text
    }
}

async fn pump(mut reader: impl AsyncRead + Unpin, tx: mpsc::Sender<Vec<u8>>) {
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(chunk[..n].to_vec()).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn signal_group(pid: Option<u32>, signal: Signal) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        // ESRCH (already gone) is fine.
        let _ = killpg(Pid::from_raw(pid), signal);
    }
}

/// Runs one build to its end. Never panics; every failure is a [`BuildResult::Failed`] with a reason.
pub async fn run(request: &BuildRequest, cancel: &CancellationToken) -> BuildOutcome {
    run_with(request, cancel, |_| {}).await
}

/// [`run`], calling `on_start` with the process (and process group) id as soon as the command started.
pub async fn run_with(
    request: &BuildRequest,
    cancel: &CancellationToken,
    on_start: impl FnOnce(u32) + Send,
) -> BuildOutcome {
    let max_secret = request.sensitive.iter().map(String::len).max().unwrap_or(0);
    let mut log = LogTail::new(LOG_LIMIT + max_secret + 4);
    let failed = |mut log: LogTail, reason: String, pid| {
        log.line(&format!("warmpool: {reason}"));
        BuildOutcome {
            result: BuildResult::Failed(reason),
            log: log.finish(&request.sensitive, LOG_LIMIT),
            outputs: None,
            pid,
        }
    };

    let Some((program, args)) = request.command.split_first() else {
        return failed(log, "the template's command is empty".into(), None);
    };
    if let Err(err) = std::fs::create_dir_all(&request.state_dir) {
        return failed(
            log,
            format!(
                "cannot create the state directory {}: {err}",
                request.state_dir.display()
            ),
            None,
        );
    }
    if let Err(err) = std::fs::remove_file(&request.outputs_file)
        && err.kind() != std::io::ErrorKind::NotFound
    {
        return failed(log, format!("cannot clear the outputs file: {err}"), None);
    }

    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .env("PATH", &request.path_var)
        .env("HOME", &request.state_dir)
        .env("LANG", "C.UTF-8")
        .envs(request.env.iter().map(|(k, v)| (k, v)))
        .env("WARMPOOL_STATE_DIR", &request.state_dir)
        .env("WARMPOOL_OUTPUTS", &request.outputs_file)
        .current_dir(&request.state_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => return failed(log, format!("cannot start {program:?}: {err}"), None),
    };
    let pid = child.id();
    if let Some(pid) = pid {
        on_start(pid);
    }

    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(pump(stdout, tx.clone()));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(pump(stderr, tx.clone()));
    }
    drop(tx);

    enum End {
        Exited(std::io::Result<std::process::ExitStatus>),
        TimedOut,
        Canceled,
    }
    let deadline = tokio::time::sleep(request.timeout);
    tokio::pin!(deadline);
    let end = loop {
        tokio::select! {
            status = child.wait() => break End::Exited(status),
            Some(bytes) = rx.recv() => log.push(&bytes),
            () = &mut deadline => break End::TimedOut,
            () = cancel.cancelled() => break End::Canceled,
        }
    };

    let end = match end {
        End::TimedOut => {
            signal_group(pid, Signal::SIGTERM);
            let grace = tokio::time::sleep(request.kill_grace);
            tokio::pin!(grace);
            let exited = loop {
                tokio::select! {
                    _ = child.wait() => break true,
                    Some(bytes) = rx.recv() => log.push(&bytes),
                    () = &mut grace => break false,
                }
            };
            signal_group(pid, Signal::SIGKILL);
            if !exited {
                let _ = child.wait().await;
            }
            End::TimedOut
        }
        End::Canceled => {
            signal_group(pid, Signal::SIGKILL);
            let _ = child.wait().await;
            End::Canceled
        }
        exited => exited,
    };

    // Read what is left of the log, but not forever: a background child may keep the pipes open.
    let drain = tokio::time::sleep(DRAIN_AFTER_EXIT);
    tokio::pin!(drain);
    loop {
        tokio::select! {
            chunk = rx.recv() => match chunk {
                Some(bytes) => log.push(&bytes),
                None => break,
            },
            () = &mut drain => break,
        }
    }

    let status = match end {
        End::TimedOut => {
            return failed(
                log,
                format!(
                    "timed out after {:?}; the process group was killed",
                    request.timeout
                ),
                pid,
            );
        }
        End::Canceled => {
            log.line("warmpool: build canceled; the process group was killed");
            return BuildOutcome {
                result: BuildResult::Canceled,
                log: log.finish(&request.sensitive, LOG_LIMIT),
                outputs: None,
                pid,
            };
        }
        End::Exited(Err(err)) => {
            return failed(log, format!("cannot wait for the command: {err}"), pid);
        }
        End::Exited(Ok(status)) => status,
    };
    if !status.success() {
        let reason = match status.code() {
            Some(code) => format!("the command exited with status {code}"),
            None => format!("the command was killed by a signal ({status})"),
        };
        return failed(log, reason, pid);
    }

    let mut outputs = None;
    if request.transition == Transition::Start {
        match std::fs::read(&request.outputs_file) {
            Ok(bytes) => match serde_json::from_slice::<serde_json::Value>(&bytes) {
                Ok(serde_json::Value::Object(map)) => outputs = Some(map),
                Ok(other) => {
                    let kind = match other {
                        serde_json::Value::Array(_) => "an array",
                        serde_json::Value::String(_) => "a string",
                        serde_json::Value::Number(_) => "a number",
                        serde_json::Value::Bool(_) => "a boolean",
                        _ => "null",
                    };
                    return failed(
                        log,
                        format!("the outputs file must hold a JSON object, found {kind}"),
                        pid,
                    );
                }
                Err(err) => {
                    return failed(
                        log,
                        format!("the outputs file is not valid JSON: {err}"),
                        pid,
                    );
                }
            },
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return failed(log, format!("cannot read the outputs file: {err}"), pid),
        }
    }
    let _ = std::fs::remove_file(&request.outputs_file);
    if request.transition == Transition::Delete
        && let Err(err) = std::fs::remove_dir_all(&request.state_dir)
        && err.kind() != std::io::ErrorKind::NotFound
    {
        return failed(
            log,
            format!("cannot remove the state directory: {err}"),
            pid,
        );
    }
    BuildOutcome {
        result: BuildResult::Succeeded,
        log: log.finish(&request.sensitive, LOG_LIMIT),
        outputs,
        pid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tail_keeps_the_end_and_redacts() {
        let mut tail = LogTail::new(20);
        tail.push(b"first line\nsecret=hunter2\n");
        let text = tail.finish(&["hunter2".into()], 40);
        assert_eq!(text, "[earlier output dropped]\nsecret=***\n");
    }

    #[test]
    fn log_tail_cuts_at_a_char_boundary() {
        let mut tail = LogTail::new(200);
        tail.push(format!("x\n{}", "é".repeat(40)).as_bytes());
        // 82 bytes into 30: the cut would land inside an "é".
        let text = tail.finish(&[], 30);
        assert_eq!(text, format!("{DROPPED_MARKER}éé"));
        assert!(text.len() <= 30, "{text:?}");
        assert!(text.starts_with(DROPPED_MARKER));
    }
}
