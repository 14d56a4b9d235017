//! Helpers shared by the integration tests and the benchmarks: `mod common;` at the top of
//! a `tests/*.rs` file, `#[path = "../tests/common/mod.rs"] mod common;` in a `benches/*.rs`
//! file. There is one copy of each fixture; chaos runs will use the same ones.
//!
//! Everything here drives the real Docker CLI (`std::process::Command`), synchronously, so
//! it can be used from plain `#[test]`s as well as from `#[tokio::test]`s.
//!
//! * [`Fixture`]: the usual arrangement in one builder: require Docker, a unique cluster
//!   name, a cleanup guard for its label, a temporary folder with the manifests, the
//!   `operator run` child process on a ticket database of its own, ready.
//! * [`require_docker`]: call first in every test that needs Docker (the [`Fixture`] does).
//!   It panics when no engine answers; tests never pass by skipping. `scripts/setup.sh`
//!   installs and starts the engine and builds the local images ([`BUSYBOX_IMAGE`],
//!   [`EMPTY_IMAGE`]).
//! * [`unique`]: names for containers, networks and clusters that never collide, also not
//!   with a parallel test or a second `cargo test`.
//! * [`free_port`]: a free loopback port below the ephemeral range.
//! * [`docker`] / [`docker_ok`] and [`docker_on`] / [`docker_on_ok`] (another engine via `-H`).
//! * [`remove_labelled`] and the [`Cleanup`] guard: remove exactly what carries one label.
//! * [`PrivateDockerd`]: a second, private engine that a test may kill and restart.
//! * [`operator`]: running the real `operator` binary (manifests, logs, metrics, tickets).
//! * [`prometheus::Prometheus`]: Debian's Prometheus on the host, scraping loopback targets.
//! * [`etcd::Members`]: N etcd members run by the controller (their services, groups and
//!   whole manifest), [`etcd::health`] (one `/health` probe) and [`etcd::HealthSampler`]
//!   (each member healthy, unhealthy or down, every 50 ms, in the background).
//! * [`claude::ClaudeStandIn`]: a local Claude Messages API answering from a script, strict
//!   about requests the real API refuses (no Docker needed).
//!
//! Label every container a test creates with [`TEST_LABEL`] (so `scripts/teardown.sh` can
//! sweep leftovers) and with a label unique to the test (for its own [`Cleanup`]).
//! Set `OPERATOR_TEST_KEEP=1` to keep containers and private engines for debugging.
#![allow(dead_code)]

pub mod claude;
pub mod etcd;
mod fixture;
pub mod operator;
mod private_dockerd;
pub mod prometheus;
pub mod switch;

#[allow(unused_imports)] // each test file uses only some helpers
pub use fixture::{Fixture, FixtureBuilder};
#[allow(unused_imports)]
pub use private_dockerd::PrivateDockerd;

use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Label carried by every container/network a test creates (`scripts/teardown.sh` removes these).
pub const TEST_LABEL: &str = "operator.test=true";
/// Static busybox (sh, sleep, httpd, wget, nc, ...; `PATH=/bin`), built by `scripts/setup.sh`.
pub const BUSYBOX_IMAGE: &str = "operator-local/busybox:latest";
/// A manifest `command:` (a YAML flow list) for [`BUSYBOX_IMAGE`] that runs until stopped and
/// exits at once on SIGTERM (busybox `sleep` as PID 1 would ignore it and wait out the stop
/// timeout).
pub const LOOP: &str = r#"["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]"#;

/// A one-cluster manifest: the header, then `services` (list items indented by 4 spaces).
pub fn cluster_yaml(cluster: &str, services: &str) -> String {
    format!(
        "apiVersion: operator/v1\nkind: Cluster\nmetadata:\n  name: {cluster}\nspec:\n  services:\n{services}"
    )
}
/// Empty image for running host binaries with [`host_mount_args`], built by `scripts/setup.sh`.
pub const EMPTY_IMAGE: &str = "operator-local/empty:latest";

/// Default bound for one docker CLI call (override: `OPERATOR_TEST_DOCKER_TIMEOUT_SECS`).
pub fn docker_timeout() -> Duration {
    let secs = std::env::var("OPERATOR_TEST_DOCKER_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    Duration::from_secs(secs)
}

/// `-v` arguments that bind-mount the host's system folders read-only, so that
/// `docker run ... EMPTY_IMAGE /usr/bin/etcd ...` runs the host's binary.
pub fn host_mount_args() -> Vec<&'static str> {
    vec![
        "-v",
        "/usr:/usr:ro",
        "-v",
        "/lib:/lib:ro",
        "-v",
        "/lib64:/lib64:ro",
        "-v",
        "/bin:/bin:ro",
        "-v",
        "/etc:/etc:ro",
    ]
}

/// True when tests run under `scripts/test.sh` / CI (`OPERATOR_TEST_REQUIRE_DOCKER=1`).
/// [`require_docker`] panics without an engine either way; this is for messages.
pub fn docker_required_by_env() -> bool {
    std::env::var("OPERATOR_TEST_REQUIRE_DOCKER").is_ok_and(|v| v == "1" || v == "true")
}

/// Panics with a clear message unless a Docker engine answers and the local test images
/// exist. Call it first in every test that needs Docker.
pub fn require_docker() {
    static READY: OnceLock<()> = OnceLock::new();
    if READY.get().is_some() {
        return;
    }
    let hint = "Run `scripts/setup.sh` as root: it installs docker.io, starts dockerd and builds the \
                local test images. Tests that need Docker fail instead of skipping.";
    let out = run_with_timeout(
        docker_command(None, &["info", "--format", "{{.ServerVersion}}"]),
        Duration::from_secs(30),
    );
    if !out.status.success() {
        panic!(
            "a Docker engine is required but `docker info` failed ({}): {}\n{hint}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    for image in [BUSYBOX_IMAGE, EMPTY_IMAGE] {
        let out = run_with_timeout(
            docker_command(None, &["image", "inspect", "--format", "{{.Id}}", image]),
            Duration::from_secs(30),
        );
        if !out.status.success() {
            panic!("the local test image {image} is missing from the Docker engine.\n{hint}");
        }
    }
    let _ = READY.set(());
}

/// A free loopback port below the kernel's ephemeral range (32768 and up), so that no
/// outgoing connection of another test can take it between now and the listener's bind.
/// Ports are handed out in a scattered order (per process and call), so parallel tests and
/// processes rarely try the same one.
pub fn free_port() -> u16 {
    use std::sync::OnceLock;
    use std::sync::atomic::AtomicU32;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // One seed per process: with a fixed seed the step (104729 ≡ 8729 mod 12000, coprime to
    // 12000) visits every port of the range once, so two tests of one binary never pick the
    // same port. A seed drawn per call let parallel tests collide (an etcd member then
    // failed to bind and exited, about one run in thirty).
    static SEED: OnceLock<u32> = OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        std::process::id().wrapping_mul(7919)
            ^ SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
    });
    for _ in 0..1000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20000 + ((u64::from(seed) + u64::from(n) * 104_729) % 12000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between 20000 and 32000");
}

/// A name no other test, thread or process uses: `<prefix>-<pid>-<counter>-<4 base36 chars>`.
/// Lower case, valid for container, network and host names and label values if `prefix` is.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // splitmix64 over time, pid and counter.
    let mut x = nanos ^ (u64::from(pid) << 32) ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let suffix: String = (0..4)
        .map(|i| DIGITS[((x >> (i * 8)) % 36) as usize] as char)
        .collect();
    format!("{prefix}-{pid}-{n}-{suffix}")
}

/// Runs `cmd` with stdin closed, collecting stdout and stderr; after `timeout` it is
/// stopped with everything it started ([`stop_tree`]; the returned status is then the
/// kill's, and stderr says so). Panics only if the program cannot be started.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
                // Its children too: they would go on (a debootstrap under build-image.sh)
                // and hold the output pipes open, so the readers below would never end.
                stop_tree(child.id());
                let _ = child.kill();
                break child.wait().expect("wait for a killed child");
            }
            Ok(None) => {
                thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(e) => panic!("waiting for {cmd:?}: {e}"),
        }
    };
    let stdout = out_reader.join().unwrap_or_default();
    let mut stderr = err_reader.join().unwrap_or_default();
    if timed_out {
        stderr.extend_from_slice(format!("\n[tests/common] killed after {timeout:?}").as_bytes());
    }
    Output {
        status,
        stdout,
        stderr,
    }
}

/// SIGTERM to `pid` and every process under it (so a script's own trap can clean up), up to
/// 10 s for them to go, then SIGKILL to whatever is left. Found through `/proc` (each
/// process's parent), so it stays in the caller's process group: a Ctrl-C still reaches it.
pub fn stop_tree(pid: u32) {
    fn tree(root: u32) -> Vec<u32> {
        let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|p| {
                let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
                // The command name may hold spaces and parens: the fields follow the last ')'.
                let rest = &stat[stat.rfind(')')? + 2..];
                let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
                Some((p, ppid))
            })
            .collect();
        let mut found = vec![root];
        let mut i = 0;
        while i < found.len() {
            let parent = found[i];
            found.extend(
                parents
                    .iter()
                    .filter(|(_, pp)| *pp == parent)
                    .map(|(p, _)| *p),
            );
            i += 1;
        }
        found
    }
    let signal = |sig: &str, pids: &[u32]| {
        if pids.is_empty() {
            return;
        }
        let _ = Command::new("kill")
            .arg(sig)
            .args(pids.iter().map(u32::to_string))
            .stderr(Stdio::null())
            .status();
    };
    // Gathered as they are seen: once the root is gone, what it started belongs to init
    // and no longer shows under it.
    let mut seen: Vec<u32> = tree(pid);
    signal("-TERM", &seen);
    let alive = |seen: &[u32]| -> Vec<u32> {
        seen.iter()
            .copied()
            .filter(|&p| p != pid && std::path::Path::new(&format!("/proc/{p}")).exists())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    // The root is the caller's child and stays a zombie until reaped: only the others are
    // waited for.
    while Instant::now() < deadline && !alive(&seen).is_empty() {
        thread::sleep(Duration::from_millis(100));
        for p in tree(pid) {
            if !seen.contains(&p) {
                seen.push(p);
            }
        }
    }
    let mut left = alive(&seen);
    left.push(pid);
    signal("-KILL", &left);
}

/// A `docker` CLI command, aimed at `host` (`-H`, e.g. `unix:///...`) or, with `None`, at
/// the default engine (honours `DOCKER_HOST`).
pub fn docker_command(host: Option<&str>, args: &[&str]) -> Command {
    let mut cmd = Command::new("docker");
    if let Some(host) = host {
        cmd.env_remove("DOCKER_CONTEXT").arg("-H").arg(host);
    }
    cmd.args(args);
    cmd
}

fn describe(host: Option<&str>, args: &[&str]) -> String {
    match host {
        Some(h) => format!("docker -H {h} {}", args.join(" ")),
        None => format!("docker {}", args.join(" ")),
    }
}

fn ok_or_panic(host: Option<&str>, args: &[&str], out: Output) -> String {
    if !out.status.success() {
        panic!(
            "`{}` failed ({}):\nstderr: {}\nstdout: {}",
            describe(host, args),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs `docker ARGS` against the default engine (bounded by [`docker_timeout`]).
pub fn docker(args: &[&str]) -> Output {
    run_with_timeout(docker_command(None, args), docker_timeout())
}

/// A path inside this repository (the shipped compose files, dashboards, scripts).
pub fn repo(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A program's output as text, lossily.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Panics, with the status, stdout and stderr, unless the program `what` succeeded.
pub fn succeeded(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Runs `docker ARGS`; panics with its stderr unless it succeeds; returns stdout, trimmed.
pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    ok_or_panic(None, args, out)
}

/// Runs `docker -H HOST ARGS` (bounded by [`docker_timeout`]).
pub fn docker_on(host: &str, args: &[&str]) -> Output {
    run_with_timeout(docker_command(Some(host), args), docker_timeout())
}

/// Runs `docker -H HOST ARGS`; panics with its stderr unless it succeeds; returns stdout, trimmed.
pub fn docker_on_ok(host: &str, args: &[&str]) -> String {
    let out = docker_on(host, args);
    ok_or_panic(Some(host), args, out)
}

/// True when the engine (`None`: the default one) answers `docker info` within `timeout`.
pub fn engine_answers(host: Option<&str>, timeout: Duration) -> bool {
    run_with_timeout(
        docker_command(host, &["info", "--format", "{{.ServerVersion}}"]),
        timeout,
    )
    .status
    .success()
}

fn lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

fn remove_labelled_impl(host: Option<&str>, label: &str) {
    let filter = format!("label={label}");
    let run = |args: &[&str]| run_with_timeout(docker_command(host, args), docker_timeout());
    let warn = |what: &str, out: &Output| {
        if !out.status.success() {
            eprintln!(
                "[tests/common] cleanup of {label}: `{}` failed: {}",
                describe(host, &[what]),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    };

    let ids = run(&["ps", "-aq", "--filter", &filter]);
    warn("ps", &ids);
    let ids = lines(&ids);
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f", "-v"];
        args.extend(ids.iter().map(String::as_str));
        warn("rm -f -v", &run(&args));
    }
    let ids = run(&["network", "ls", "-q", "--filter", &filter]);
    warn("network ls", &ids);
    for id in lines(&ids) {
        warn("network rm", &run(&["network", "rm", &id]));
    }
    let ids = run(&["volume", "ls", "-q", "--filter", &filter]);
    warn("volume ls", &ids);
    let ids = lines(&ids);
    if !ids.is_empty() {
        let mut args = vec!["volume", "rm", "-f"];
        args.extend(ids.iter().map(String::as_str));
        warn("volume rm", &run(&args));
    }
}

fn keep_for_debugging() -> bool {
    std::env::var("OPERATOR_TEST_KEEP").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Removes (best effort, never panics) the containers (with their anonymous volumes),
/// networks and volumes on the default engine that carry `label`: `key=value` for an exact
/// label (e.g. `operator.cluster=<unique name>`) or just `key`.
pub fn remove_labelled(label: &str) {
    remove_labelled_impl(None, label);
}

/// [`remove_labelled`] on the engine at `host`.
pub fn remove_labelled_on(host: &str, label: &str) {
    remove_labelled_impl(Some(host), label);
}

/// Guard that runs [`remove_labelled`] for its labels when dropped (also when the test
/// panics). Create it before the things it cleans up:
///
/// ```ignore
/// let name = common::unique("etcd");
/// let cleanup = common::Cleanup::new(format!("operator.cluster={name}"));
/// ```
#[must_use = "the guard cleans up when it is dropped"]
pub struct Cleanup {
    host: Option<String>,
    labels: Vec<String>,
}

impl Cleanup {
    /// Cleans up `label` (`key=value` or `key`) on the default engine.
    pub fn new(label: impl Into<String>) -> Self {
        Cleanup {
            host: None,
            labels: vec![label.into()],
        }
    }

    /// Cleans up `label` on the engine at `host` (e.g. [`PrivateDockerd::host`]).
    pub fn on(host: impl Into<String>, label: impl Into<String>) -> Self {
        Cleanup {
            host: Some(host.into()),
            labels: vec![label.into()],
        }
    }

    /// Also clean up `label`.
    pub fn also(&mut self, label: impl Into<String>) -> &mut Self {
        self.labels.push(label.into());
        self
    }

    /// The first label, handy as a `--label` argument.
    pub fn label(&self) -> &str {
        &self.labels[0]
    }

    /// Cleans up now (and again on drop, which is then a no-op).
    pub fn run(&self) {
        for label in &self.labels {
            remove_labelled_impl(self.host.as_deref(), label);
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if keep_for_debugging() {
            eprintln!(
                "[tests/common] OPERATOR_TEST_KEEP: keeping everything labelled {:?}",
                self.labels
            );
            return;
        }
        self.run();
    }
}
