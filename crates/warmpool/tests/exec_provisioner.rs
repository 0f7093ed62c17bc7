//! The exec provisioner against real processes: environment, outputs, log cap, redaction, timeouts that kill the
//! whole process group, cancellation, and values that must never reach a shell.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use warmpool::provisioner::exec::{self, BuildRequest, BuildResult, LOG_LIMIT};
use warmpool_core::model::Transition;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes an executable `/bin/sh` script and returns a request that runs it.
    fn script(&self, body: &str) -> BuildRequest {
        let script = self.path("build.sh");
        std::fs::write(&script, format!("#!/bin/sh\n{body}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        BuildRequest {
            command: vec![script.to_string_lossy().into_owned()],
            transition: Transition::Start,
            env: vec![
                ("WARMPOOL_TRANSITION".into(), "start".into()),
                ("WARMPOOL_WORKSPACE_ID".into(), "ws-1".into()),
            ],
            path_var: "/usr/local/bin:/usr/bin:/bin".into(),
            state_dir: self.path("state"),
            outputs_file: self.path("outputs.json"),
            timeout: Duration::from_secs(30),
            kill_grace: Duration::from_secs(5),
            sensitive: vec![],
        }
    }
}

async fn run(request: &BuildRequest) -> exec::BuildOutcome {
    // A liveness guard, not a timing assertion: a hung build fails the test instead of hanging CI.
    tokio::time::timeout(
        Duration::from_secs(60),
        exec::run(request, &CancellationToken::new()),
    )
    .await
    .expect("the build did not finish")
}

fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // A zombie has exited; it only waits to be reaped by its new parent.
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

async fn wait_gone(pid: u32) -> bool {
    for _ in 0..100 {
        if process_gone(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn environment_is_exactly_the_contract() {
    let f = Fixture::new();
    let mut request = f.script("env | sort; echo cwd=$(pwd)");
    request.env.push(("WARMPOOL_PARAM_CPU".into(), "2".into()));
    let outcome = run(&request).await;
    assert_eq!(outcome.result, BuildResult::Succeeded, "{}", outcome.log);
    let state = f.path("state");
    let mut vars: Vec<&str> = outcome
        .log
        .lines()
        .filter(|l| {
            !l.starts_with("cwd=")
                && !l.starts_with("PWD=")
                && !l.starts_with("SHLVL=")
                && !l.starts_with("_=")
        })
        .collect();
    vars.sort_unstable();
    let want = [
        format!("HOME={}", state.display()),
        "LANG=C.UTF-8".to_owned(),
        "PATH=/usr/local/bin:/usr/bin:/bin".to_owned(),
        format!("WARMPOOL_OUTPUTS={}", f.path("outputs.json").display()),
        "WARMPOOL_PARAM_CPU=2".to_owned(),
        format!("WARMPOOL_STATE_DIR={}", state.display()),
        "WARMPOOL_TRANSITION=start".to_owned(),
        "WARMPOOL_WORKSPACE_ID=ws-1".to_owned(),
    ];
    assert_eq!(vars, want.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(outcome.log.contains(&format!("cwd={}", state.display())));
    assert!(state.is_dir());
}

#[tokio::test]
async fn standard_input_is_dev_null() {
    let f = Fixture::new();
    let outcome = run(&f.script("if read line; then echo got-input; else echo no-input; fi")).await;
    assert!(outcome.log.contains("no-input"), "{}", outcome.log);
}

#[tokio::test]
async fn outputs_of_a_start_build() {
    let f = Fixture::new();
    let outcome = run(
        &f.script(r#"printf '{"path": "%s", "n": 1}' "$WARMPOOL_STATE_DIR" > "$WARMPOOL_OUTPUTS""#)
    )
    .await;
    assert_eq!(outcome.result, BuildResult::Succeeded, "{}", outcome.log);
    let outputs = outcome.outputs.unwrap();
    assert_eq!(outputs["path"], f.path("state").to_string_lossy().as_ref());
    assert_eq!(outputs["n"], 1);
    assert!(
        !f.path("outputs.json").exists(),
        "the outputs file is consumed"
    );
}

#[tokio::test]
async fn missing_outputs_file_means_no_outputs() {
    let f = Fixture::new();
    let outcome = run(&f.script("true")).await;
    assert_eq!(outcome.result, BuildResult::Succeeded);
    assert_eq!(outcome.outputs, None);
}

#[tokio::test]
async fn outputs_that_are_not_an_object_fail_the_build_with_a_log_line() {
    for (content, reason) in [
        (
            "[1, 2]",
            "the outputs file must hold a JSON object, found an array",
        ),
        (
            "\"text\"",
            "the outputs file must hold a JSON object, found a string",
        ),
        ("{not json", "the outputs file is not valid JSON"),
    ] {
        let f = Fixture::new();
        let outcome =
            run(&f.script(&format!("printf '%s' '{content}' > \"$WARMPOOL_OUTPUTS\""))).await;
        match &outcome.result {
            BuildResult::Failed(got) => assert!(got.starts_with(reason), "{got}"),
            other => panic!("{content}: expected a failure, got {other:?}"),
        }
        assert!(
            outcome.log.contains(&format!("warmpool: {reason}")),
            "{}",
            outcome.log
        );
        assert_eq!(outcome.outputs, None);
    }
}

#[tokio::test]
async fn failing_and_missing_commands() {
    let f = Fixture::new();
    let outcome = run(&f.script("echo oops >&2; exit 3")).await;
    assert_eq!(
        outcome.result,
        BuildResult::Failed("the command exited with status 3".into())
    );
    assert!(outcome.log.starts_with("oops\n"), "{}", outcome.log);

    let mut missing = f.script("true");
    missing.command = vec![f.path("no-such-script").to_string_lossy().into_owned()];
    let outcome = run(&missing).await;
    match outcome.result {
        BuildResult::Failed(reason) => assert!(reason.starts_with("cannot start"), "{reason}"),
        other => panic!("expected a failure, got {other:?}"),
    }

    let mut empty = f.script("true");
    empty.command = vec![];
    assert!(matches!(run(&empty).await.result, BuildResult::Failed(_)));
}

#[tokio::test]
async fn log_keeps_the_last_mebibyte() {
    let f = Fixture::new();
    // 3 MiB of numbered lines, then a marker.
    let outcome = run(&f.script(
        "i=0; line=$(printf '%0100d' 0); while [ $i -lt 31000 ]; do echo \"$i $line\"; i=$((i+1)); done; echo THE-END",
    ))
    .await;
    assert_eq!(outcome.result, BuildResult::Succeeded);
    assert!(
        outcome.log.len() <= LOG_LIMIT,
        "{} bytes kept",
        outcome.log.len()
    );
    assert!(
        outcome.log.len() > LOG_LIMIT - 200,
        "{} bytes kept",
        outcome.log.len()
    );
    assert!(outcome.log.trim_end().ends_with("THE-END"));
    assert!(outcome.log.starts_with("[earlier output dropped]\n"));
    assert!(!outcome.log.contains("\n0 000"), "the beginning is dropped");
}

#[tokio::test]
async fn sensitive_values_are_redacted() {
    let f = Fixture::new();
    let mut request = f.script("echo \"token is $WARMPOOL_PARAM_TOKEN\"; echo \"$WARMPOOL_PARAM_TOKEN\" > \"$WARMPOOL_STATE_DIR/token\"");
    request
        .env
        .push(("WARMPOOL_PARAM_TOKEN".into(), "s3cr3t-value".into()));
    request.sensitive = vec!["s3cr3t-value".into()];
    let outcome = run(&request).await;
    assert_eq!(outcome.log, "token is ***\n");
    // The command itself received the real value.
    assert_eq!(
        std::fs::read_to_string(f.path("state/token")).unwrap(),
        "s3cr3t-value\n"
    );
}

#[tokio::test]
async fn parameter_values_never_pass_through_a_shell() {
    let f = Fixture::new();
    let pwned = f.path("pwned");
    let value = format!(
        "$(touch {}) `touch {}`; touch {}",
        pwned.display(),
        pwned.display(),
        pwned.display()
    );
    let mut request = f.script("printf '%s' \"$WARMPOOL_PARAM_NAME\" > \"$WARMPOOL_STATE_DIR/env\"; printf '%s' \"$1\" > \"$WARMPOOL_STATE_DIR/arg\"");
    request
        .env
        .push(("WARMPOOL_PARAM_NAME".into(), value.clone()));
    request.command.push(value.clone());
    let outcome = run(&request).await;
    assert_eq!(outcome.result, BuildResult::Succeeded, "{}", outcome.log);
    assert_eq!(std::fs::read_to_string(f.path("state/env")).unwrap(), value);
    assert_eq!(std::fs::read_to_string(f.path("state/arg")).unwrap(), value);
    assert!(!pwned.exists(), "the value was executed");
}

fn read_pid(path: &Path) -> u32 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let f = Fixture::new();
    let pidfile = f.path("grandchild.pid");
    let mut request = f.script(&format!(
        "sleep 1000 & echo $! > {}; echo started; sleep 1000",
        pidfile.display()
    ));
    request.timeout = Duration::from_millis(700);
    request.kill_grace = Duration::from_millis(300);
    let outcome = run(&request).await;
    match &outcome.result {
        BuildResult::Failed(reason) => assert!(reason.starts_with("timed out after"), "{reason}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(outcome.log.starts_with("started\n"), "{}", outcome.log);
    let grandchild = read_pid(&pidfile);
    assert!(
        wait_gone(grandchild).await,
        "grandchild sleep {grandchild} survived the timeout"
    );
    assert!(wait_gone(outcome.pid.unwrap()).await);
}

#[tokio::test]
async fn sigterm_is_sent_before_sigkill() {
    let f = Fixture::new();
    let mut request =
        f.script("trap 'echo got-term; exit 0' TERM; echo ready; while :; do sleep 0.05; done");
    request.timeout = Duration::from_millis(500);
    request.kill_grace = Duration::from_secs(5);
    let outcome = run(&request).await;
    assert!(matches!(outcome.result, BuildResult::Failed(_)));
    assert!(outcome.log.contains("got-term"), "{}", outcome.log);
}

#[tokio::test]
async fn cancel_kills_the_build_at_once() {
    let f = Fixture::new();
    let pidfile = f.path("grandchild.pid");
    let request = f.script(&format!(
        "sleep 1000 & echo $! > {}; sleep 1000",
        pidfile.display()
    ));
    let cancel = CancellationToken::new();
    let handle = {
        let request = request.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move { exec::run(&request, &cancel).await })
    };
    for _ in 0..200 {
        if pidfile.exists() && !std::fs::read_to_string(&pidfile).unwrap().trim().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    cancel.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(30), handle)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.result, BuildResult::Canceled);
    assert!(wait_gone(read_pid(&pidfile)).await);
}

#[tokio::test]
async fn a_background_child_holding_the_pipes_does_not_hang_the_build() {
    let f = Fixture::new();
    let pidfile = f.path("bg.pid");
    let outcome = run(&f.script(&format!(
        "sleep 30 & echo $! > {}; echo done",
        pidfile.display()
    )))
    .await;
    assert_eq!(outcome.result, BuildResult::Succeeded);
    assert_eq!(outcome.log, "done\n");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(read_pid(&pidfile) as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

#[tokio::test]
async fn successful_delete_removes_the_state_directory() {
    let f = Fixture::new();
    let mut start = f.script("echo data > \"$WARMPOOL_STATE_DIR/file\"");
    assert_eq!(run(&start).await.result, BuildResult::Succeeded);
    assert!(f.path("state/file").exists());

    start.transition = Transition::Delete;
    let mut failing_delete = start.clone();
    failing_delete.command = f.script("exit 1").command;
    assert!(matches!(
        run(&failing_delete).await.result,
        BuildResult::Failed(_)
    ));
    assert!(
        f.path("state").exists(),
        "a failed delete keeps the state directory"
    );

    let mut delete = start.clone();
    delete.command = f.script("rm -f \"$WARMPOOL_STATE_DIR/file\"").command;
    assert_eq!(run(&delete).await.result, BuildResult::Succeeded);
    assert!(!f.path("state").exists());
}
