//! Processes as `/proc` shows them: a process's identity (pid and start time, so that a
//! reused pid is never taken for the process that had it), its cgroups, signals; and who
//! holds a chaos run.
//!
//! # Caveats
//! Container pids are the engine's, in the host's PID namespace: reading them needs the
//! runner to share that namespace (on the host, or `--pid host`), as `docker::process` says.

use std::io;
use std::path::{Path, PathBuf};

use crate::tickets::ChaosRun;

/// The start time of process `pid` in clock ticks after boot (`/proc/PID/stat` field 22);
/// `None` when there is no such process.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_start_ticks(&stat)
}

/// Field 22 of a stat line. `comm` (field 2) may hold spaces and parentheses, so fields
/// are counted after the last `)`: the state there is field 3.
fn stat_start_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// The command line of `pid` (arguments joined by NUL), if it can be read.
pub fn cmdline(pid: u32) -> Option<Vec<u8>> {
    std::fs::read(format!("/proc/{pid}/cmdline")).ok()
}

/// Whether `pid`'s cgroups name container `container_id` (the full id): the pid is that
/// container's process as the host sees it.
pub fn in_container(pid: u32, container_id: &str) -> bool {
    !container_id.is_empty()
        && std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .is_ok_and(|cgroup| cgroup.contains(container_id))
}

/// `/proc/PID/cgroup` of `pid`.
pub fn cgroup(pid: u32) -> io::Result<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
}

/// The `cgroup.procs` files of each hierarchy a `/proc/PID/cgroup` text names, under the
/// cgroup file system root `root` (`/sys/fs/cgroup`), with whether the hierarchy holds the
/// `cpu` controller (the one a CPU stress must join). v1 lines are `ID:CONTROLLERS:PATH`
/// (`name=systemd` is mounted as `systemd`); the v2 line `0::PATH` is `unified/` beside v1
/// hierarchies, the root itself on a pure v2 host.
pub fn procs_files(cgroup: &str, root: &Path) -> Vec<(PathBuf, bool)> {
    let v1 = cgroup
        .lines()
        .any(|l| l.split(':').nth(1).is_some_and(|c| !c.is_empty()));
    cgroup
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let path = path.trim_start_matches('/');
            let (dir, cpu) = if controllers.is_empty() {
                let base = if v1 {
                    root.join("unified")
                } else {
                    root.to_path_buf()
                };
                (base, !v1)
            } else {
                let mount = controllers.strip_prefix("name=").unwrap_or(controllers);
                (root.join(mount), controllers.split(',').any(|c| c == "cpu"))
            };
            Some((dir.join(path).join("cgroup.procs"), cpu))
        })
        .collect()
}

/// Sends `signal` to `pid`.
pub fn signal(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The number of a signal as a drill writes it: `SIGKILL` (the canonical form the drill
/// parser produces, `SIG` and upper case), `SIGRTMIN+3`, or a number.
pub fn signal_number(name: &str) -> Option<libc::c_int> {
    if let Ok(n) = name.parse::<libc::c_int>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let bare = name.strip_prefix("SIG").unwrap_or(name);
    let rt = |base: libc::c_int, rest: &str, sign: libc::c_int| {
        rest.parse::<libc::c_int>().ok().map(|n| base + sign * n)
    };
    if let Some(rest) = bare.strip_prefix("RTMIN+") {
        return rt(libc::SIGRTMIN(), rest, 1);
    }
    if let Some(rest) = bare.strip_prefix("RTMAX-") {
        return rt(libc::SIGRTMAX(), rest, -1);
    }
    Some(match bare {
        "ABRT" | "IOT" => libc::SIGABRT,
        "ALRM" => libc::SIGALRM,
        "BUS" => libc::SIGBUS,
        "CHLD" | "CLD" => libc::SIGCHLD,
        "CONT" => libc::SIGCONT,
        "FPE" => libc::SIGFPE,
        "HUP" => libc::SIGHUP,
        "ILL" => libc::SIGILL,
        "INT" => libc::SIGINT,
        "IO" | "POLL" => libc::SIGIO,
        "KILL" => libc::SIGKILL,
        "PIPE" => libc::SIGPIPE,
        "PROF" => libc::SIGPROF,
        "PWR" => libc::SIGPWR,
        "QUIT" => libc::SIGQUIT,
        "SEGV" => libc::SIGSEGV,
        "STKFLT" => libc::SIGSTKFLT,
        "STOP" => libc::SIGSTOP,
        "SYS" => libc::SIGSYS,
        "TERM" => libc::SIGTERM,
        "TRAP" => libc::SIGTRAP,
        "TSTP" => libc::SIGTSTP,
        "TTIN" => libc::SIGTTIN,
        "TTOU" => libc::SIGTTOU,
        "URG" => libc::SIGURG,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "VTALRM" => libc::SIGVTALRM,
        "WINCH" => libc::SIGWINCH,
        "XCPU" => libc::SIGXCPU,
        "XFSZ" => libc::SIGXFSZ,
        "RTMIN" => libc::SIGRTMIN(),
        "RTMAX" => libc::SIGRTMAX(),
        _ => return None,
    })
}

/// Every pid in `/proc` whose command line contains `marker`.
pub fn pids_with_marker(marker: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let marker = marker.as_bytes();
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| cmdline(*pid).is_some_and(|c| c.windows(marker.len()).any(|w| w == marker)))
        .collect()
}

/// Who holds a chaos run: this process, named as agent dispatchers are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// `pid N on HOST`.
    pub name: String,
    pub pid: u32,
    pub start: Option<u64>,
}

impl Holder {
    /// This process.
    pub fn current() -> Holder {
        let pid = std::process::id();
        Holder {
            name: format!("pid {pid} on {}", place()),
            pid,
            start: start_ticks(pid),
        }
    }
}

/// Whether a run's holder still runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    /// The same process (pid and start time) runs on this host.
    Alive,
    /// No process with that pid and start time runs here: the runner is gone.
    Gone,
    /// The holder is on another host (by its name): it cannot be told from here.
    Elsewhere { host: String },
}

/// Where this process's pids mean something: the host and the PID namespace. A runner in
/// another PID namespace (a container without `--pid host`) cannot be looked up in this
/// `/proc`, so it is judged as one on another host: never taken for gone.
pub fn place() -> String {
    let ns = std::fs::metadata("/proc/self/ns/pid")
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m).to_string())
        .unwrap_or_else(|_| "?".into());
    format!("{}, pid namespace {ns}", crate::tickets::host_name())
}

/// Whether the holder of `run` is still running (see [`Liveness`]).
pub fn liveness(run: &ChaosRun) -> Liveness {
    liveness_on(run, &place(), start_ticks(run.holder_pid))
}

fn liveness_on(run: &ChaosRun, here: &str, running_since: Option<u64>) -> Liveness {
    if let Some((_, host)) = run.holder.split_once(" on ")
        && host != here
    {
        return Liveness::Elsewhere {
            host: host.to_string(),
        };
    }
    match (running_since, run.holder_start) {
        (None, _) => Liveness::Gone,
        // Started at another time: the pid was reused by someone else.
        (Some(now), Some(then)) if now != then => Liveness::Gone,
        _ => Liveness::Alive,
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn signal_names_as_the_drill_writes_them_map_to_their_numbers() {
        assert_eq!(signal_number("SIGKILL"), Some(libc::SIGKILL));
        assert_eq!(signal_number("SIGTERM"), Some(libc::SIGTERM));
        assert_eq!(signal_number("9"), Some(9));
        assert_eq!(signal_number("SIGRTMIN+3"), Some(libc::SIGRTMIN() + 3));
        assert_eq!(signal_number("SIGRTMAX-1"), Some(libc::SIGRTMAX() - 1));
        assert_eq!(signal_number("SIGNOPE"), None);
        assert_eq!(signal_number("0"), None);
        assert_eq!(signal_number("65"), None);
    }

    #[test]
    fn start_ticks_is_field_22_counted_after_the_command() {
        let tail = "S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 777 19 20";
        assert_eq!(stat_start_ticks(&format!("42 (sh) {tail}")), Some(777));
        assert_eq!(stat_start_ticks(&format!("42 (a) b) c) {tail}")), Some(777));
        assert_eq!(stat_start_ticks("42 (sh) S 1"), None);
        assert_eq!(stat_start_ticks(""), None);
    }

    #[test]
    fn this_process_has_a_start_time_that_stays_the_same() {
        let me = Holder::current();
        assert_eq!(me.pid, std::process::id());
        assert!(me.start.is_some());
        assert_eq!(start_ticks(me.pid), me.start);
        assert!(me.name.starts_with(&format!("pid {} on ", me.pid)));
    }

    #[test]
    fn cgroup_lines_map_to_their_procs_files() {
        let root = Path::new("/sys/fs/cgroup");
        let hybrid = "9:name=systemd:/docker/abc\n2:cpuacct:/docker/abc\n1:cpu:/docker/abc\n\
                      3:cpu,cpuacct:/docker/abc\n0::/docker/abc\n";
        let files = procs_files(hybrid, root);
        let want = [
            ("/sys/fs/cgroup/systemd/docker/abc/cgroup.procs", false),
            ("/sys/fs/cgroup/cpuacct/docker/abc/cgroup.procs", false),
            ("/sys/fs/cgroup/cpu/docker/abc/cgroup.procs", true),
            ("/sys/fs/cgroup/cpu,cpuacct/docker/abc/cgroup.procs", true),
            ("/sys/fs/cgroup/unified/docker/abc/cgroup.procs", false),
        ];
        let want: Vec<(PathBuf, bool)> = want.iter().map(|(p, c)| (p.into(), *c)).collect();
        assert_eq!(files, want);
        // Pure v2: the one hierarchy is the root, and it holds the cpu controller.
        assert_eq!(
            procs_files("0::/system.slice/docker-abc.scope\n", root),
            [(
                PathBuf::from("/sys/fs/cgroup/system.slice/docker-abc.scope/cgroup.procs"),
                true
            )]
        );
    }

    fn run(holder: &str, start: Option<u64>) -> ChaosRun {
        ChaosRun {
            id: "r".into(),
            drill: "d".into(),
            drill_file: "f".into(),
            cluster: "c".into(),
            report_dir: "r".into(),
            holder: holder.into(),
            holder_pid: 42,
            holder_start: start,
            started_at: chrono::Utc::now(),
            ended_at: None,
            status: "running".into(),
        }
    }

    #[test]
    fn a_holder_is_alive_only_with_its_pid_and_start_time_on_this_host() {
        let here = "box";
        let r = run("pid 42 on box", Some(100));
        assert_eq!(liveness_on(&r, here, Some(100)), Liveness::Alive);
        assert_eq!(
            liveness_on(&r, here, Some(101)),
            Liveness::Gone,
            "reused pid"
        );
        assert_eq!(liveness_on(&r, here, None), Liveness::Gone);
        // Without a recorded start time, any process with the pid counts as the holder.
        assert_eq!(
            liveness_on(&run("pid 42 on box", None), here, Some(5)),
            Liveness::Alive
        );
        assert_eq!(
            liveness_on(&run("pid 42 on other", Some(100)), here, None),
            Liveness::Elsewhere {
                host: "other".into()
            }
        );
        // Same host, another PID namespace: its pids mean nothing in this /proc.
        assert_eq!(
            liveness_on(
                &run("pid 42 on box, pid namespace 1", Some(100)),
                "box, pid namespace 2",
                None
            ),
            Liveness::Elsewhere {
                host: "box, pid namespace 1".into()
            }
        );
    }

    #[test]
    fn a_marked_process_is_found_and_signalled() {
        let marker = format!("operator-procfs-test-{}", std::process::id());
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 60", &marker])
            .spawn()
            .expect("spawn sh");
        let pid = child.id();
        // Until the child has exec'd, its command line is still this test binary's.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !pids_with_marker(&marker).contains(&pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(pids_with_marker(&marker).contains(&pid));
        signal(pid, libc::SIGKILL).expect("kill");
        let _ = child.wait();
        assert!(!pids_with_marker(&marker).contains(&pid));
    }
}
