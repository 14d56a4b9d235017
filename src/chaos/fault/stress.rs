//! CPU stress: busy-loop processes on the host, moved into a container's cgroups so that
//! they count against its CPU share (and are frozen by a `docker pause` with it), killed by
//! a marker on their command line.
//!
//! # Guarantees
//! - Each worker is `sh -c 'while :; do :; done' MARKER`, started detached (its parent
//!   exits at once, so it is nobody's zombie and survives the runner): the marker, unique to
//!   the run and the ledger row, is its `$0` and so in `/proc/PID/cmdline`.
//! - Only processes whose command line carries the marker are ever killed; the undo finds
//!   them by scanning `/proc`, so a runner that died before recording the pids leaves
//!   nothing it cannot find.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::procfs;

/// The marker of ledger row `ledger_id` of run `run_id`.
pub fn marker(run_id: &str, ledger_id: i64) -> String {
    format!("operator-chaos-stress-{run_id}-{ledger_id}")
}

/// Starts `workers` busy loops marked `marker`; returns their pids. Blocking.
pub fn spawn(marker: &str, workers: u32) -> io::Result<Vec<u32>> {
    let mut pids = Vec::new();
    for _ in 0..workers {
        // The outer shell starts the loop in the background, prints its pid and exits.
        let out = Command::new("sh")
            .arg("-c")
            .arg(r#"sh -c 'while :; do :; done' "$1" </dev/null >/dev/null 2>&1 & echo $!"#)
            .arg("sh")
            .arg(marker)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            // Out of the runner's process group: a Ctrl-C at its terminal is the runner's to
            // handle (it undoes the stress), not the workers' to die of silently.
            .process_group(0)
            .output()?;
        let pid = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u32>()
            .map_err(|_| {
                io::Error::other(format!(
                    "the stress launcher printed no pid ({})",
                    out.status
                ))
            })?;
        pids.push(pid);
    }
    Ok(pids)
}

/// Moves `pid` into every cgroup of the container whose main process is `main_pid`; the
/// hierarchy with the `cpu` controller must take it, the others are best effort (a
/// hierarchy not mounted where `/sys/fs/cgroup` says is skipped). Blocking.
pub fn join_cgroups(pid: u32, main_pid: u32, root: &Path) -> io::Result<()> {
    let cgroup = procfs::cgroup(main_pid)?;
    let mut joined_cpu = false;
    for (procs, cpu) in procfs::procs_files(&cgroup, root) {
        match std::fs::write(&procs, pid.to_string()) {
            Ok(()) => joined_cpu |= cpu,
            Err(e) if cpu => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot move pid {pid} into {}: {e}", procs.display()),
                ));
            }
            Err(_) => {}
        }
    }
    if joined_cpu {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "no cgroup with the cpu controller found for pid {main_pid} under {}",
            root.display()
        )))
    }
}

/// Kills every process carrying `marker` and waits (bounded: 5 s) until none is left.
/// Blocking.
pub fn stop(marker: &str) -> io::Result<()> {
    for _ in 0..100 {
        let left = procfs::pids_with_marker(marker);
        if left.is_empty() {
            return Ok(());
        }
        for pid in left {
            // A pid that exited between the scan and now is the outcome we want.
            let _ = procfs::signal(pid, procfs::Signal::KILL);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(io::Error::other(format!(
        "processes marked {marker} still run after 5 s of SIGKILL: {:?}",
        procfs::pids_with_marker(marker)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_run_detached_with_the_marker_and_stop_kills_them_all() {
        let marker = marker(&format!("test{}", std::process::id()), 7);
        let pids = spawn(&marker, 2).unwrap();
        assert_eq!(pids.len(), 2);
        let mut found = procfs::pids_with_marker(&marker);
        found.sort();
        let mut want = pids.clone();
        want.sort();
        assert_eq!(found, want);
        stop(&marker).unwrap();
        assert!(procfs::pids_with_marker(&marker).is_empty());
        // Idempotent.
        stop(&marker).unwrap();
    }
}
