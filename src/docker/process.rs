//! A container's main process as the kernel sees it, read from `/proc`: whether it is
//! frozen by a stop signal (`kill -STOP`, state `T`), so that a stop need not wait for it.
//!
//! # Caveats
//! The engine reports the process id in the host's PID namespace. It can only be read when
//! the controller shares that namespace (it runs on the host, or in a container started with
//! `--pid host`). Elsewhere the id names no process, or another one; that other process is
//! told apart by its cgroup, which never names the container, and the answer is "not frozen":
//! the stop then waits its timeout, as it would without this module.

use std::path::Path;

/// Whether process `pid` is the main process of container `container_id` (the full id) and
/// stopped (`T`, by a signal, or `t`, by a tracer). Either way it will not act on a stop
/// signal until it is continued, so waiting for it only delays the kill.
///
/// `false` whenever it cannot be known: no such process, `/proc` unreadable, or the process
/// is not in the container's cgroup.
pub fn is_frozen(pid: i64, container_id: &str) -> bool {
    is_frozen_in(Path::new("/proc"), pid, container_id)
}

fn is_frozen_in(proc: &Path, pid: i64, container_id: &str) -> bool {
    if pid <= 0 || container_id.is_empty() {
        return false;
    }
    let dir = proc.join(pid.to_string());
    let read = |file: &str| std::fs::read_to_string(dir.join(file)).ok();
    // The two reads are not one snapshot: a process that dies between them and whose pid is
    // reused at once can at worst cost a stop that was about to happen its grace.
    let ours = read("cgroup").is_some_and(|cgroup| cgroup.contains(container_id));
    ours && read("stat")
        .and_then(|stat| stat_state(&stat))
        .is_some_and(|state| state == 'T' || state == 't')
}

/// The state letter of a `/proc/<pid>/stat` line: `pid (comm) S ...`. `comm` may hold spaces
/// and parentheses, so the state is found after the last `)`.
fn stat_state(stat: &str) -> Option<char> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.trim_start().chars().next()
}

#[cfg(test)]
mod tests {
    use std::process::{Child, Command};

    use super::*;

    #[test]
    fn stat_state_is_read_after_the_last_parenthesis() {
        assert_eq!(stat_state("42 (sh) S 1 42 42 0"), Some('S'));
        assert_eq!(stat_state("42 (a) T (b)) T 1 42"), Some('T'));
        assert_eq!(stat_state("42 (my prog) R 1"), Some('R'));
        assert_eq!(stat_state("42 (sh)"), None);
        assert_eq!(stat_state(""), None);
    }

    /// A fake `/proc/<pid>` with the given files.
    fn fake_proc(pid: i64, cgroup: &str, stat: &str) -> std::path::PathBuf {
        let root =
            std::env::temp_dir().join(format!("operator-proc-test-{}-{pid}", std::process::id()));
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(&dir).expect("create fake proc");
        std::fs::write(dir.join("cgroup"), cgroup).expect("write cgroup");
        std::fs::write(dir.join("stat"), stat).expect("write stat");
        root
    }

    #[test]
    fn only_a_stopped_process_in_the_containers_cgroup_is_frozen() {
        let id = "0123abcd".repeat(8);
        // cgroup v1 as the engine's cgroupfs driver writes it, and v2 under systemd.
        let v1 = format!("12:pids:/docker/{id}\n11:freezer:/docker/{id}\n");
        let v2 = format!("0::/system.slice/docker-{id}.scope\n");
        let cases = [
            (1, v1.as_str(), "7 (sh) T 0", true),
            (2, v2.as_str(), "7 (sh) t 0", true),
            (3, v1.as_str(), "7 (sh) S 0", false),
            // The same number in another PID namespace: a process of somebody else.
            (4, "0::/\n", "7 (sh) T 0", false),
        ];
        for (pid, cgroup, stat, frozen) in cases {
            let root = fake_proc(pid, cgroup, stat);
            assert_eq!(is_frozen_in(&root, pid, &id), frozen, "{cgroup} {stat}");
            let _ = std::fs::remove_dir_all(root);
        }
        let root = fake_proc(5, &v1, "7 (sh) T 0");
        assert!(!is_frozen_in(&root, 6, &id), "no such process");
        assert!(!is_frozen_in(&root, 0, &id), "no process at all");
        assert!(!is_frozen_in(&root, 5, ""), "no container id");
        let _ = std::fs::remove_dir_all(root);
    }

    /// Kills and reaps the child however the test ends.
    struct Reaped(Child);

    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// The real `/proc`: a child stopped with SIGSTOP reads `T`, and `S` once continued.
    #[test]
    fn a_sigstopped_process_reads_stopped_in_proc() {
        let child = Reaped(
            Command::new("sleep")
                .arg("60")
                .spawn()
                .expect("spawn sleep"),
        );
        let pid = child.0.id().to_string();
        let state = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| stat_state(&s))
        };
        let signal = |sig: &str| {
            let ok = Command::new("kill").args([sig, &pid]).status();
            assert!(ok.is_ok_and(|s| s.success()), "kill {sig} {pid}");
        };
        // The state changes when the kernel has delivered the signal: poll, bounded.
        let wait_for = |want: char| {
            (0..200).any(|_| {
                std::thread::sleep(std::time::Duration::from_millis(5));
                state() == Some(want)
            })
        };
        signal("-STOP");
        assert!(wait_for('T'), "{:?}", state());
        signal("-CONT");
        assert!(wait_for('S'), "{:?}", state());
    }
}
