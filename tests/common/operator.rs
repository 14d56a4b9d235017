//! Driving the real `operator` binary from tests: write manifests, start `operator run` as a
//! child process, read its JSON logs and its /metrics, stop it with a signal.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{docker, run_with_timeout};

/// Path of the binary cargo built for this test run.
pub fn operator_bin() -> &'static str {
    env!("CARGO_BIN_EXE_operator")
}

/// Runs `operator ARGS...` to completion (bounded), with an optional DOCKER_HOST.
pub fn operator(args: &[&str], docker_host: Option<&str>) -> Output {
    let mut cmd = Command::new(operator_bin());
    cmd.args(args);
    if let Some(host) = docker_host {
        cmd.env("DOCKER_HOST", host);
    }
    run_with_timeout(cmd, Duration::from_secs(120))
}

/// A fresh temporary folder for a test's manifests, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("operator-test-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes (or rewrites) a file atomically, so a watching controller never reads half.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, contents).expect("write manifest");
        std::fs::rename(&tmp, &path).expect("rename manifest");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `check` every 100 ms until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// `docker inspect NAME` as JSON, `None` if there is no such container.
pub fn inspect(name: &str, host: Option<&str>) -> Option<serde_json::Value> {
    let out = match host {
        Some(h) => super::docker_on(h, &["container", "inspect", name]),
        None => docker(&["container", "inspect", name]),
    };
    if !out.status.success() {
        return None;
    }
    let mut all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).ok()?;
    all.pop()
}

/// The container's state string ("running", "exited", ...) and id.
pub fn state(name: &str, host: Option<&str>) -> Option<(String, String)> {
    let c = inspect(name, host)?;
    Some((
        c["State"]["Status"].as_str()?.to_string(),
        c["Id"].as_str()?.to_string(),
    ))
}

pub fn is_running(name: &str, host: Option<&str>) -> bool {
    state(name, host).is_some_and(|(s, _)| s == "running")
}

/// A running `operator run` child process. Killed on drop.
pub struct OperatorProcess {
    child: Child,
    log: PathBuf,
    db: PathBuf,
    /// The database was made for this process alone: removed on drop.
    owns_db: bool,
}

impl OperatorProcess {
    /// Starts `operator run PATHS --listen 127.0.0.1:0 --log-format json EXTRA...` with a
    /// ticket database of its own (unless EXTRA names one with `--db`).
    pub fn start(paths: &[&Path], extra: &[&str], docker_host: Option<&str>) -> Self {
        let name = super::unique("operator-run");
        let db = std::env::temp_dir().join(format!("{name}.db"));
        let mut process = Self::start_with_db(paths, extra, docker_host, &db);
        process.owns_db = true;
        process
    }

    /// Like [`OperatorProcess::start`] with a given ticket database (to restart a controller
    /// on the same one).
    pub fn start_with_db(
        paths: &[&Path],
        extra: &[&str],
        docker_host: Option<&str>,
        db: &Path,
    ) -> Self {
        let log = std::env::temp_dir().join(format!("{}.log", super::unique("operator-run")));
        let file = std::fs::File::create(&log).expect("create log file");
        let mut cmd = Command::new(operator_bin());
        cmd.arg("run")
            .args(paths)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--log-level",
                "operator=debug,info",
            ])
            .args(extra)
            .arg("--db")
            .arg(db)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        if let Some(host) = docker_host {
            cmd.env("DOCKER_HOST", host);
        }
        let child = cmd.spawn().expect("start operator run");
        OperatorProcess {
            child,
            log,
            db: db.to_path_buf(),
            owns_db: false,
        }
    }

    /// The controller's ticket database.
    pub fn db(&self) -> &Path {
        &self.db
    }

    /// `operator tickets ARGS... --db <this controller's db>`.
    pub fn tickets(&self, args: &[&str]) -> Output {
        let mut all = vec!["tickets"];
        all.extend_from_slice(args);
        all.push("--db");
        all.push(self.db.to_str().expect("utf-8 path"));
        operator(&all, None)
    }

    /// `operator tickets list --json` for this controller's database.
    pub fn tickets_json(&self) -> Vec<serde_json::Value> {
        let out = self.tickets(&["list", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("tickets list --json")
    }

    /// SIGKILL, no grace: what a crash looks like.
    pub fn crash(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until a log line contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.log().contains(needle))
    }

    /// Counts log lines containing every one of `needles`.
    pub fn count_log(&self, needles: &[&str]) -> usize {
        self.log()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .count()
    }

    /// Waits for the controller's first full list ("controller ready").
    pub fn wait_ready(&self) {
        assert!(
            self.wait_for_log("controller ready", Duration::from_secs(60)),
            "operator did not become ready; log:\n{}",
            self.log()
        );
    }

    /// The address /metrics is served on (from the start-up log line).
    pub fn listen_addr(&self) -> Option<String> {
        self.log().lines().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["message"] == "serving /metrics and /healthz")
                .then(|| v["listen"].as_str().map(str::to_string))
                .flatten()
        })
    }

    /// GET a path from the controller's HTTP server; (status line, body).
    pub fn http_get(&self, path: &str) -> (String, String) {
        let addr = self.listen_addr().expect("listen address in the log");
        let mut stream = TcpStream::connect(&addr).expect("connect to operator");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        (
            head.lines().next().unwrap_or_default().to_string(),
            body.to_string(),
        )
    }

    /// Sends a signal (e.g. "TERM", "HUP", "KILL") to the controller.
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status();
    }

    /// SIGTERM, then waits (bounded) for a clean exit; returns the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- operator log ({}) ---\n{}",
                self.log.display(),
                self.log()
            );
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
        if self.owns_db {
            remove_db(&self.db);
        }
    }
}

/// Removes a ticket database and its WAL side files.
pub fn remove_db(db: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
}

/// Seconds since the epoch, for `docker events --since`.
pub fn epoch_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Engine-clock times (seconds) of one kind of event (`start`, `die`...) for a container,
/// between `since` and now.
pub fn event_times(name: &str, event: &str, since: f64) -> Vec<f64> {
    let out = super::docker_ok(&[
        "events",
        "--since",
        &format!("{since:.3}"),
        "--until",
        &format!("{:.3}", epoch_now()),
        "--filter",
        &format!("container={name}"),
        "--filter",
        &format!("event={event}"),
        "--format",
        "{{.TimeNano}}",
    ]);
    out.lines()
        .filter_map(|l| l.trim().parse::<f64>().ok())
        .map(|nanos| nanos / 1e9)
        .collect()
}
