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

pub use rustix::process::{Pid, Signal};

/// Process `id` as the kernel takes it, if it names one process: not 0 (which `kill(2)`
/// takes for the caller's own group), nor past `i32::MAX`.
pub fn pid(id: u32) -> Option<Pid> {
    Pid::from_raw(i32::try_from(id).ok()?)
}

/// Sends `signal` to `pid`; a pid that names no single process (see [`pid`]) is refused.
pub fn signal(pid: u32, signal: Signal) -> io::Result<()> {
    let pid = self::pid(pid)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    Ok(rustix::process::kill_process(pid, signal)?)
}

/// The signal a drill names: `SIGKILL` (the canonical form the drill parser produces, `SIG`
/// and upper case), `SIGRTMIN+3`, or a number.
///
/// # Caveats
/// A real-time signal, or 32 or 33 (glibc's own), is for another process: see [`numbered`].
pub fn signal_number(name: &str) -> Option<Signal> {
    if let Ok(n) = name.parse::<i32>() {
        return numbered(n);
    }
    let bare = name.strip_prefix("SIG").unwrap_or(name);
    // SIGRTMIN and SIGRTMAX are the C library's (glibc keeps the first two real-time signals
    // for itself), which rustix does not expose: they are libc's last use here.
    let rt = |base: i32, rest: &str, sign: i32| {
        let n = rest.parse::<i32>().ok()?;
        numbered(base.checked_add(sign.checked_mul(n)?)?)
    };
    if let Some(rest) = bare.strip_prefix("RTMIN+") {
        return rt(libc::SIGRTMIN(), rest, 1);
    }
    if let Some(rest) = bare.strip_prefix("RTMAX-") {
        return rt(libc::SIGRTMAX(), rest, -1);
    }
    Some(match bare {
        "ABRT" | "IOT" => Signal::ABORT,
        "ALRM" => Signal::ALARM,
        "BUS" => Signal::BUS,
        "CHLD" | "CLD" => Signal::CHILD,
        "CONT" => Signal::CONT,
        "FPE" => Signal::FPE,
        "HUP" => Signal::HUP,
        "ILL" => Signal::ILL,
        "INT" => Signal::INT,
        "IO" | "POLL" => Signal::IO,
        "KILL" => Signal::KILL,
        "PIPE" => Signal::PIPE,
        "PROF" => Signal::PROF,
        "PWR" => Signal::POWER,
        "QUIT" => Signal::QUIT,
        "SEGV" => Signal::SEGV,
        "STKFLT" => Signal::STKFLT,
        "STOP" => Signal::STOP,
        "SYS" => Signal::SYS,
        "TERM" => Signal::TERM,
        "TRAP" => Signal::TRAP,
        "TSTP" => Signal::TSTP,
        "TTIN" => Signal::TTIN,
        "TTOU" => Signal::TTOU,
        "URG" => Signal::URG,
        "USR1" => Signal::USR1,
        "USR2" => Signal::USR2,
        "VTALRM" => Signal::VTALARM,
        "WINCH" => Signal::WINCH,
        "XCPU" => Signal::XCPU,
        "XFSZ" => Signal::XFSZ,
        "RTMIN" => return numbered(libc::SIGRTMIN()),
        "RTMAX" => return numbered(libc::SIGRTMAX()),
        _ => return None,
    })
}

/// Linux signal `n` (1 to 64), whether rustix names it or not.
///
/// # Caveats
/// rustix names only the standard signals; the others (the real-time ones, and 32 and 33,
/// which glibc keeps for its threads) it builds only unchecked, because this process
/// blocking, catching or raising one the C library reserves would break it. A signal made
/// here goes to another process only: [`signal`] sends it to a container's main process.
#[allow(unsafe_code)]
fn numbered(n: i32) -> Option<Signal> {
    if !(1..=64).contains(&n) {
        return None;
    }
    // SAFETY: `n` is a valid, non-zero Linux signal number (checked just above); the
    // `Signal` is only ever sent to another process (see the caveat above), never blocked,
    // caught or raised in this one.
    Some(Signal::from_named_raw(n).unwrap_or_else(|| unsafe { Signal::from_raw_unchecked(n) }))
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
        assert_eq!(signal_number("SIGKILL"), Some(Signal::KILL));
        assert_eq!(signal_number("SIGTERM"), Some(Signal::TERM));
        assert_eq!(signal_number("9"), Some(Signal::KILL));
        let raw = |name| signal_number(name).map(Signal::as_raw);
        assert_eq!(raw("SIGRTMIN+3"), Some(libc::SIGRTMIN() + 3));
        assert_eq!(raw("SIGRTMAX-1"), Some(libc::SIGRTMAX() - 1));
        assert_eq!(raw("SIGRTMIN"), Some(libc::SIGRTMIN()));
        assert_eq!(raw("SIGRTMAX"), Some(libc::SIGRTMAX()));
        // Numbers rustix has no name for are still sent as they are.
        assert_eq!(raw("32"), Some(32));
        assert_eq!(raw("64"), Some(64));
        assert_eq!(signal_number("SIGNOPE"), None);
        assert_eq!(signal_number("0"), None);
        assert_eq!(signal_number("65"), None);
        assert_eq!(signal_number("SIGRTMIN+99999999999"), None);
    }

    #[test]
    fn every_signal_name_has_the_c_librarys_number() {
        let names = [
            ("ABRT", libc::SIGABRT),
            ("IOT", libc::SIGABRT),
            ("ALRM", libc::SIGALRM),
            ("BUS", libc::SIGBUS),
            ("CHLD", libc::SIGCHLD),
            ("CLD", libc::SIGCHLD),
            ("CONT", libc::SIGCONT),
            ("FPE", libc::SIGFPE),
            ("HUP", libc::SIGHUP),
            ("ILL", libc::SIGILL),
            ("INT", libc::SIGINT),
            ("IO", libc::SIGIO),
            ("POLL", libc::SIGIO),
            ("KILL", libc::SIGKILL),
            ("PIPE", libc::SIGPIPE),
            ("PROF", libc::SIGPROF),
            ("PWR", libc::SIGPWR),
            ("QUIT", libc::SIGQUIT),
            ("SEGV", libc::SIGSEGV),
            ("STKFLT", libc::SIGSTKFLT),
            ("STOP", libc::SIGSTOP),
            ("SYS", libc::SIGSYS),
            ("TERM", libc::SIGTERM),
            ("TRAP", libc::SIGTRAP),
            ("TSTP", libc::SIGTSTP),
            ("TTIN", libc::SIGTTIN),
            ("TTOU", libc::SIGTTOU),
            ("URG", libc::SIGURG),
            ("USR1", libc::SIGUSR1),
            ("USR2", libc::SIGUSR2),
            ("VTALRM", libc::SIGVTALRM),
            ("WINCH", libc::SIGWINCH),
            ("XCPU", libc::SIGXCPU),
            ("XFSZ", libc::SIGXFSZ),
        ];
        for (name, number) in names {
            assert_eq!(
                signal_number(&format!("SIG{name}")).map(Signal::as_raw),
                Some(number),
                "{name}"
            );
            assert_eq!(
                signal_number(&number.to_string()).map(Signal::as_raw),
                Some(number)
            );
        }
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
        signal(pid, Signal::KILL).expect("kill");
        let _ = child.wait();
        assert!(!pids_with_marker(&marker).contains(&pid));
    }
}
