//! A second, private Docker engine for tests that kill or restart "the engine" without
//! disturbing the main one that all other tests share.
//!
//! Each instance has its own folder `$OPERATOR_TEST_PRIVATE_DOCKERD_DIR/<name>` (default
//! `/tmp/operator-ci/private/<name>`) holding the API socket, `--data-root`, `--exec-root`
//! (where dockerd starts its own managed containerd), `--pidfile`, an empty `--config-file`
//! and `dockerd.log`. It has no bridge and no iptables rules: run its containers with
//! `--network none` or `--network host`. Its containers live under their own cgroup parent
//! `/<name>` and containerd namespace `<name>`.
//!
//! Drop removes its containers, stops it, kills whatever it left (by cgroup and by
//! command line), unmounts and deletes its folder. If a test process dies before Drop runs,
//! the next `PrivateDockerd::new()` or `scripts/teardown.sh` reaps the leftovers (each folder
//! records the pid and start time of the process that made it).
//!
//! Without `--live-restore` (see [`PrivateDockerd::with_args`]) dockerd stops running
//! containers when it shuts down and when it starts after a crash. busybox `sleep` as PID 1
//! ignores SIGTERM, so each such stop waits the full stop timeout (10 s): run those
//! containers with `--stop-timeout 1` (or `--init`).

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{
    BUSYBOX_IMAGE, docker_command, docker_on, docker_on_ok, docker_timeout, engine_answers,
    keep_for_debugging, lines, run_with_timeout, unique,
};

const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

fn base_dir() -> PathBuf {
    std::env::var_os("OPERATOR_TEST_PRIVATE_DOCKERD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/operator-ci/private"))
}

/// A private dockerd. See the module documentation.
pub struct PrivateDockerd {
    name: String,
    dir: PathBuf,
    extra_args: Vec<String>,
    child: Option<Child>,
}

impl PrivateDockerd {
    /// Creates and starts a private engine (panics if it does not answer within 60 s).
    pub fn new() -> Self {
        Self::with_args(&[])
    }

    /// Like [`PrivateDockerd::new`] with extra dockerd arguments, e.g. `["--live-restore"]`
    /// so that containers keep running while the engine is down.
    pub fn with_args(extra_args: &[&str]) -> Self {
        reap_stale();
        let name = unique("opd");
        let dir = base_dir().join(&name);
        let socket = dir.join("docker.sock");
        assert!(
            socket.as_os_str().len() < 100,
            "socket path {} is too long for a unix socket; set OPERATOR_TEST_PRIVATE_DOCKERD_DIR to a shorter folder",
            socket.display()
        );
        for sub in ["data", "exec"] {
            fs::create_dir_all(dir.join(sub))
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.join(sub).display()));
        }
        // No settings from /etc/docker/daemon.json (hosts, data-root, ... would clash).
        write_file(&dir.join("daemon.json"), "{}\n");
        write_file(&dir.join("cgroup"), &format!("{name}\n"));
        write_file(&dir.join("owner"), &format!("{}\n", own_identity()));
        let mut engine = PrivateDockerd {
            name,
            dir,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        engine.start();
        engine
    }

    /// `unix:///.../docker.sock`: for `docker -H`, `DOCKER_HOST` or bollard.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// Path of the API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// The engine's folder (socket, data-root, exec-root, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Unique name; also the cgroup parent (`/<name>`) and containerd namespace.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Cgroup parent of its containers, e.g. for checking they are gone.
    pub fn cgroup_parent(&self) -> String {
        format!("/{}", self.name)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("dockerd.log")
    }

    /// The last `n` lines of dockerd's log (for assertion messages).
    pub fn log_tail(&self, n: usize) -> String {
        let log = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Pid of the running dockerd, if it runs.
    pub fn pid(&mut self) -> Option<u32> {
        self.reap_child();
        self.child.as_ref().map(Child::id)
    }

    /// True when the engine answers `docker info` within 10 s.
    pub fn answers(&self) -> bool {
        engine_answers(Some(&self.host()), Duration::from_secs(10))
    }

    /// `docker -H <this engine> ARGS`.
    pub fn docker(&self, args: &[&str]) -> Output {
        docker_on(&self.host(), args)
    }

    /// `docker -H <this engine> ARGS`; panics unless it succeeds; returns stdout, trimmed.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        docker_on_ok(&self.host(), args)
    }

    /// Starts dockerd (again) with the same folders, so it finds its old containers.
    /// Panics with the log's tail if it does not answer within 60 s.
    pub fn start(&mut self) {
        if self.pid().is_some() {
            panic!("private dockerd {} already runs", self.name);
        }
        // dockerd refuses to start while its pid file names a live process; ours is dead.
        let _ = fs::remove_file(self.dir.join("dockerd.pid"));
        wait_for_containerd_exit(&self.dir, Duration::from_secs(10));

        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log_path().display()));
        let _ = writeln!(log, "=== tests/common: starting private dockerd ===");
        let d = |p: &str| self.dir.join(p).display().to_string();
        let mut cmd = Command::new(find_dockerd());
        cmd.args(["-H", &self.host()])
            .args(["--data-root", &d("data")])
            .args(["--exec-root", &d("exec")])
            .args(["--pidfile", &d("dockerd.pid")])
            .args(["--config-file", &d("daemon.json")])
            .args(["--storage-driver", "overlay2"])
            // No docker0 bridge, no iptables/NAT/forwarding changes: nothing global to fight
            // over with the main engine (containers use --network none or host).
            .args(["--bridge", "none", "--iptables=false", "--ip-masq=false"])
            .arg("--ip-forward=false")
            // Separate from the main engine even if both ever share one containerd, and
            // containers in their own cgroup subtree (found and killed by Drop).
            .args(["--containerd-namespace", &self.name])
            .args([
                "--containerd-plugins-namespace",
                &format!("{}-plugins", self.name),
            ])
            .args(["--cgroup-parent", &self.cgroup_parent()])
            .args(&self.extra_args)
            .env("PATH", path_with_sbin())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log file"))
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start dockerd ({cmd:?}): {e}"));
        self.child = Some(child);

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!(
                    "private dockerd {} exited during startup ({status}); log {}:\n{}",
                    self.name,
                    self.log_path().display(),
                    self.log_tail(30)
                );
            }
            if engine_answers(Some(&self.host()), Duration::from_secs(5)) {
                return;
            }
            if Instant::now() >= deadline {
                let tail = self.log_tail(30);
                self.kill();
                panic!(
                    "private dockerd {} did not answer within {START_TIMEOUT:?}; log:\n{tail}",
                    self.name
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops dockerd gracefully: SIGTERM, up to 30 s, then SIGKILL. Without
    /// `--live-restore` dockerd stops its running containers while shutting down.
    pub fn stop(&mut self) {
        if let Err(e) = self.stop_inner() {
            panic!("{e}");
        }
    }

    /// SIGKILLs dockerd, like a crash. Its managed containerd goes with it (dockerd starts
    /// it with a parent-death signal); container processes and their shims live on.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        wait_for_containerd_exit(&self.dir, Duration::from_secs(10));
    }

    /// [`stop`](Self::stop), then [`start`](Self::start).
    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }

    /// Loads `image` from the main engine into this one (`docker save | docker -H .. load`).
    pub fn load_image(&self, image: &str) {
        let mut save = Command::new("docker")
            .args(["save", image])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run docker save: {e}"));
        let mut load = docker_command(Some(&self.host()), &["load", "-q"]);
        load.stdin(save.stdout.take().expect("piped stdout"));
        let loaded = load
            .output()
            .unwrap_or_else(|e| panic!("cannot run docker load: {e}"));
        let saved = save.wait_with_output().expect("wait for docker save");
        assert!(
            saved.status.success(),
            "`docker save {image}` on the main engine failed: {} (run scripts/setup.sh to build the local images)",
            String::from_utf8_lossy(&saved.stderr).trim()
        );
        assert!(
            loaded.status.success(),
            "`docker -H {} load` of {image} failed: {}",
            self.host(),
            String::from_utf8_lossy(&loaded.stderr).trim()
        );
    }

    /// Loads [`BUSYBOX_IMAGE`](super::BUSYBOX_IMAGE) from the main engine into this one.
    pub fn import_busybox(&self) {
        self.load_image(BUSYBOX_IMAGE);
    }

    /// Removes all containers of this engine (best effort).
    pub fn remove_all_containers(&self) {
        let ids = self.docker(&["ps", "-aq"]);
        let ids = lines(&ids);
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(ids.iter().map(String::as_str));
            let out = self.docker(&args);
            if !out.status.success() {
                eprintln!(
                    "[tests/common] private dockerd {}: rm -f failed: {}",
                    self.name,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
    }

    fn reap_child(&mut self) {
        if let Some(child) = self.child.as_mut()
            && !matches!(child.try_wait(), Ok(None))
        {
            self.child = None;
        }
    }

    fn stop_inner(&mut self) -> Result<(), String> {
        self.reap_child();
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = child.id().to_string();
        let _ = Command::new("kill")
            .args(["-TERM", &pid])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        let mut result = Ok(());
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() >= deadline => {
                    result = Err(format!(
                        "private dockerd {} ignored SIGTERM for {STOP_TIMEOUT:?}; killed it",
                        self.name
                    ));
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => thread::sleep(Duration::from_millis(50)),
                Err(e) => return Err(format!("waiting for dockerd: {e}")),
            }
        }
        wait_for_containerd_exit(&self.dir, Duration::from_secs(10));
        result
    }
}

impl Default for PrivateDockerd {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PrivateDockerd {
    fn drop(&mut self) {
        if keep_for_debugging() {
            self.child = None; // leave it running; teardown.sh reaps it later
            eprintln!(
                "[tests/common] OPERATOR_TEST_KEEP: keeping private dockerd at {}",
                self.host()
            );
            return;
        }
        self.reap_child();
        if self.child.is_some() && self.answers() {
            self.remove_all_containers();
        }
        if let Err(e) = self.stop_inner() {
            eprintln!("[tests/common] {e}");
        }
        if let Err(e) = force_cleanup(&self.dir, &self.name) {
            eprintln!(
                "[tests/common] cleaning up private dockerd {}: {e}",
                self.name
            );
        }
    }
}

fn write_file(path: &Path, contents: &str) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

fn find_dockerd() -> PathBuf {
    for p in [
        "/usr/sbin/dockerd",
        "/usr/bin/dockerd",
        "/usr/local/bin/dockerd",
    ] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    PathBuf::from("dockerd")
}

/// dockerd looks up containerd, containerd-shim-runc-v2 and runc in PATH.
fn path_with_sbin() -> String {
    let mut path = std::env::var("PATH").unwrap_or_default();
    for dir in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        if !path.split(':').any(|p| p == dir) {
            if !path.is_empty() {
                path.push(':');
            }
            path.push_str(dir);
        }
    }
    path
}

/// Start time (clock ticks since boot, field 22 of /proc/PID/stat) of a process.
fn start_time(pid: u32) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after "(comm)" start with field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(22 - 3).map(str::to_string)
}

/// "<pid> <start time>" of this process, written to each engine's `owner` file.
fn own_identity() -> String {
    let pid = std::process::id();
    format!("{pid} {}", start_time(pid).unwrap_or_default())
}

fn owner_alive(dir: &Path) -> bool {
    let Ok(owner) = fs::read_to_string(dir.join("owner")) else {
        return false;
    };
    let mut parts = owner.split_whitespace();
    let (Some(pid), Some(start)) = (parts.next(), parts.next()) else {
        return false;
    };
    pid.parse::<u32>()
        .ok()
        .and_then(start_time)
        .is_some_and(|s| s == start)
}

/// Reaps engine folders whose test process is gone (it aborted before its Drop ran).
fn reap_stale() {
    let Ok(entries) = fs::read_dir(base_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        // A folder without an owner file may be one that another test is creating now.
        let young = fs::metadata(&dir)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() < Duration::from_secs(120));
        let ownerless = !dir.join("owner").exists();
        if dir.is_dir() && !owner_alive(&dir) && !(ownerless && young) {
            let name = fs::read_to_string(dir.join("cgroup")).unwrap_or_default();
            eprintln!(
                "[tests/common] reaping private dockerd left at {}",
                dir.display()
            );
            if let Err(e) = force_cleanup(&dir, name.trim()) {
                eprintln!("[tests/common] {e}");
            }
        }
    }
}

fn process_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// Alive and not a zombie (PID 1 on these machines does not always reap orphans).
fn alive(pid: u32) -> bool {
    process_state(pid).is_some_and(|s| s != 'Z')
}

/// Waits until the managed containerd of the engine in `dir` has exited (SIGKILL after
/// `timeout`), then deletes its pid file. A SIGKILLed dockerd leaves containerd as an
/// orphan that PID 1 of these machines reaps only after a while; the zombie still passes
/// dockerd's `kill(pid, 0)` check, so a restarted dockerd would wait for the dead
/// containerd ("containerd is still running") until it times out.
fn wait_for_containerd_exit(dir: &Path, timeout: Duration) {
    let pid_file = dir.join("exec/containerd/containerd.pid");
    let Some(pid) = fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    else {
        return;
    };
    let is_ours = || {
        fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&*dir.to_string_lossy()))
    };
    let deadline = Instant::now() + timeout;
    while alive(pid) && is_ours() {
        if Instant::now() >= deadline {
            kill_pids(&[pid]);
            thread::sleep(Duration::from_millis(100));
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    if !(alive(pid) && is_ours()) {
        let _ = fs::remove_file(&pid_file);
    }
}

fn kill_pids(pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let mut cmd = Command::new("kill");
    cmd.arg("-KILL")
        .args(pids.iter().map(u32::to_string))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _ = cmd.status();
}

/// Live processes in the cgroup subtree `/<name>` of every hierarchy.
fn cgroup_pids(name: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    if name.is_empty() {
        return pids;
    }
    for root in cgroup_dirs(name) {
        let mut stack = vec![root];
        while let Some(d) = stack.pop() {
            if let Ok(procs) = fs::read_to_string(d.join("cgroup.procs")) {
                pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            }
            if let Ok(entries) = fs::read_dir(&d) {
                stack.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
            }
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids.retain(|&p| alive(p));
    pids
}

/// `/sys/fs/cgroup/<name>` (v2) and `/sys/fs/cgroup/<controller>/<name>` (v1) that exist.
pub(super) fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    // Only ever the subtrees of private engines (named by `unique("opd")`).
    let valid = name.starts_with("opd-")
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        return dirs;
    }
    let root = Path::new("/sys/fs/cgroup");
    if root.join(name).is_dir() {
        dirs.push(root.join(name));
    }
    if let Ok(entries) = fs::read_dir(root) {
        for e in entries.flatten() {
            let d = e.path().join(name);
            if d.is_dir() {
                dirs.push(d);
            }
        }
    }
    dirs
}

/// Live processes (other than this one) whose command line mentions `needle`.
pub(super) fn pids_mentioning(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .filter(|&pid| alive(pid))
        .collect()
}

/// Paths under `prefix` of the unix sockets that the processes `pids` have open.
fn listening_sockets(pids: &[u32], prefix: &str) -> Vec<PathBuf> {
    let mut inodes = HashSet::new();
    for pid in pids {
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = fs::read_link(fd.path())
                && let Some(inode) = target
                    .to_str()
                    .and_then(|t| t.strip_prefix("socket:["))
                    .and_then(|t| t.strip_suffix(']'))
            {
                inodes.insert(inode.to_string());
            }
        }
    }
    if inodes.is_empty() {
        return Vec::new();
    }
    // Num RefCount Protocol Flags Type St Inode Path
    fs::read_to_string("/proc/net/unix")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 8 && inodes.contains(f[6]) && f[7].starts_with(prefix))
                .then(|| PathBuf::from(f[7]))
        })
        .collect()
}

/// Mount points at or under `dir`, deepest first (from /proc/self/mountinfo).
pub(super) fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().to_string();
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| {
            m.replace("\\040", " ")
                .replace("\\011", "\t")
                .replace("\\134", "\\")
        })
        .filter(|m| m == &prefix || m.starts_with(&format!("{prefix}/")))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    mounts
}

/// Kills everything an engine in `dir` left (dockerd, containerd, shims, container
/// processes), unmounts what it mounted there, deletes `dir` and its cgroups.
fn force_cleanup(dir: &Path, name: &str) -> Result<(), String> {
    let needle = format!("{}/", dir.display());
    // dockerd itself (a leftover from another process: ours is stopped already).
    if let Some(pid) = fs::read_to_string(dir.join("dockerd.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        && pids_mentioning(&needle).contains(&pid)
    {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while alive(pid) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
    }
    // Container processes first (killing a shim first would orphan them), then the rest.
    // Shims killed here cannot delete their sockets in /run/containerd/s: note them first.
    let mut shim_sockets = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let in_cgroup = cgroup_pids(name);
        let mentioning = pids_mentioning(&needle);
        shim_sockets.extend(listening_sockets(&mentioning, "/run/containerd/s/"));
        if in_cgroup.is_empty() && mentioning.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "processes of {} survive SIGKILL: cgroup {in_cgroup:?}, others {mentioning:?}",
                dir.display()
            ));
        }
        kill_pids(&in_cgroup);
        kill_pids(&mentioning);
        thread::sleep(Duration::from_millis(100));
    }
    for socket in shim_sockets {
        let _ = fs::remove_file(socket);
    }
    for m in mounts_under(dir) {
        let out = run_with_timeout(
            {
                let mut c = Command::new("umount");
                c.args(["-l", &m]);
                c
            },
            docker_timeout(),
        );
        if !out.status.success() {
            eprintln!(
                "[tests/common] umount -l {m}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    let mut result = Ok(());
    for attempt in 0..20 {
        match fs::remove_dir_all(dir) {
            Ok(()) => {
                result = Ok(());
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                result = Ok(());
                break;
            }
            Err(e) => {
                result = Err(format!("cannot delete {}: {e}", dir.display()));
                thread::sleep(Duration::from_millis(50 * (attempt + 1)));
            }
        }
    }
    // Empty cgroups, deepest first. rmdir fails while a killed process is not yet reaped
    // (zombies still count in cgroup v1), so retry for a while.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let roots = cgroup_dirs(name);
        if roots.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            if result.is_ok() {
                result = Err(format!("cannot remove cgroups {roots:?}"));
            }
            break;
        }
        for root in roots {
            let mut all = vec![root];
            let mut i = 0;
            while i < all.len() {
                if let Ok(entries) = fs::read_dir(&all[i]) {
                    all.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
                }
                i += 1;
            }
            for d in all.iter().rev() {
                let _ = fs::remove_dir(d);
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
    result
}
