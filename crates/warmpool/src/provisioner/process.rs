//! Identifying a build's process group across a restart of a single-process (SQLite) server.
//!
//! When a run starts, the worker records the process group id with the machine's boot id and the process's start
//! time. After a crash, the next `serve` kills only groups whose recorded boot id and start time still match the
//! live process, so a recycled pid is never killed by mistake.

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// The kernel's boot id, or empty when it cannot be read.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The process's start time (clock ticks since boot, field 22 of `/proc/<pid>/stat`).
pub fn start_time(pid: u32) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    // Fields from 3 on; starttime is field 22, i.e. index 19 here.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Kills the recorded process group if it is still the same one. Answers whether a signal was sent.
pub fn kill_if_same(pgid: i64, recorded_boot_id: &str, recorded_start_time: i64) -> bool {
    let Ok(pid) = u32::try_from(pgid) else {
        return false;
    };
    if recorded_boot_id.is_empty() || recorded_boot_id != boot_id() {
        return false;
    }
    if start_time(pid) != Some(recorded_start_time) {
        return false;
    }
    i32::try_from(pid)
        .map(|p| killpg(Pid::from_raw(p), Signal::SIGKILL).is_ok())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(start_time(me).is_some());
        assert!(!boot_id().is_empty());
        // A wrong start time never kills.
        assert!(!kill_if_same(i64::from(me), &boot_id(), -1));
        assert!(!kill_if_same(
            i64::from(me),
            "another-boot",
            start_time(me).unwrap_or(0)
        ));
    }
}
