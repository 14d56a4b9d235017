//! Driving the real `operator` binary from tests: write manifests, start `operator run` as a
//! child process, read its JSON logs and its /metrics, stop it with a signal.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
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

/// When the container last started, by the engine's clock (parsed: the engine trims trailing
/// zeros of the fraction, so the text does not sort). Panics if it does not exist.
pub fn started_at(name: &str) -> chrono::DateTime<chrono::FixedOffset> {
    started(&inspect(name, None).unwrap_or_else(|| panic!("no container {name}")))
}

/// `State.StartedAt` of an inspected container.
pub fn started(inspected: &serde_json::Value) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(inspected["State"]["StartedAt"].as_str().unwrap()).unwrap()
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
    /// ticket database of its own, removed on drop.
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
        Self::spawn(paths, extra, docker_host, db, Some("127.0.0.1:0"))
    }

    /// Starts `operator run PATHS [--listen LISTEN] --log-format json EXTRA... --db DB`.
    /// `listen: None` leaves `--listen` out, so the controller binds its default address.
    pub fn spawn(
        paths: &[&Path],
        extra: &[&str],
        docker_host: Option<&str>,
        db: &Path,
        listen: Option<&str>,
    ) -> Self {
        Self::spawn_with_env(paths, extra, docker_host, db, listen, &[])
    }

    /// [`OperatorProcess::spawn`] with more environment variables (e.g. the agent's key and
    /// the API stand-in's URL).
    pub fn spawn_with_env(
        paths: &[&Path],
        extra: &[&str],
        docker_host: Option<&str>,
        db: &Path,
        listen: Option<&str>,
        env: &[(String, String)],
    ) -> Self {
        let log = std::env::temp_dir().join(format!("{}.log", super::unique("operator-run")));
        let file = std::fs::File::create(&log).expect("create log file");
        let mut cmd = Command::new(operator_bin());
        cmd.arg("run").args(paths);
        if let Some(listen) = listen {
            cmd.args(["--listen", listen]);
        }
        cmd.args(["--log-format", "json", "--log-level", "operator=debug,info"])
            .args(extra)
            .arg("--db")
            .arg(db)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        if let Some(host) = docker_host {
            cmd.env("DOCKER_HOST", host);
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
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

    /// `operator tickets show ID --json` for this controller's database: the ticket with its
    /// `timeline` (entries `{at, kind, detail}`, oldest first).
    pub fn ticket_json(&self, id: i64) -> serde_json::Value {
        let out = self.tickets(&["show", &id.to_string(), "--json"]);
        assert!(
            out.status.success(),
            "tickets show {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("tickets show --json")
    }

    /// The timeline entries of ticket `id` of one `kind` (`detected`, `action-started`...).
    pub fn timeline(&self, id: i64, kind: &str) -> Vec<serde_json::Value> {
        self.ticket_json(id)["timeline"]
            .as_array()
            .expect("a timeline array")
            .iter()
            .filter(|e| e["kind"] == kind)
            .cloned()
            .collect()
    }

    /// The value of one series on /metrics, e.g.
    /// `operator_actions_total{kind="start",result="ok"}`; `None` if it is not exposed.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (status, body) = self.http_get("/metrics");
        assert!(status.contains("200"), "GET /metrics: {status}");
        metric_value(&body, series)
    }

    /// The value of `series`, which must be served: a missing series panics naming it, so a
    /// renamed metric fails the test instead of reading as a default.
    pub fn served_metric(&self, series: &str) -> f64 {
        let (status, body) = self.http_get("/metrics");
        assert!(status.contains("200"), "GET /metrics: {status}");
        metric_value(&body, series)
            .unwrap_or_else(|| panic!("{series} is not served on /metrics:\n{body}"))
    }

    /// The value of counter `series`, 0 while it has not counted yet (a labelled series only
    /// appears at its first count); its family must be served (`# TYPE`): a renamed metric
    /// panics naming it instead of reading as 0.
    pub fn counter(&self, series: &str) -> f64 {
        let (status, body) = self.http_get("/metrics");
        assert!(status.contains("200"), "GET /metrics: {status}");
        counter_value(&body, series)
    }

    /// Waits (up to `timeout`) until counter `series` (see [`OperatorProcess::counter`]) is
    /// at least `by` above its value now: the controller's loop made that much progress
    /// (e.g. `operator_resync_seconds_count`: full resync passes over every service). What a
    /// test then asserts did not happen had the chance to; a stalled loop panics here,
    /// naming the counter.
    pub fn wait_advanced(&self, series: &str, by: u32, timeout: Duration) {
        let first = self.counter(series);
        let want = first + f64::from(by);
        let mut now = first;
        assert!(
            wait_until(timeout, || {
                now = self.counter(series);
                now >= want
            }),
            "{series} did not advance by {by} within {timeout:?} ({first} -> {now}): the \
             controller's loop made no progress (or that series is never counted); log:\n{}",
            self.log()
        );
    }

    /// Waits (60 s) until `n` more periodic resync passes are done: every declared service
    /// was looked at `n` times after this call (in full, or counted as unchanged since its
    /// last clean look).
    pub fn wait_resyncs(&self, n: u32) {
        self.wait_advanced("operator_resync_seconds_count", n, Duration::from_secs(60));
    }

    /// Waits (60 s) until `n` more evaluation rounds of every check are done after this call.
    pub fn wait_check_rounds(&self, n: u32) {
        self.wait_advanced(
            "operator_check_round_seconds_count",
            n,
            Duration::from_secs(60),
        );
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

    /// The TCP addresses this process listens on, from `/proc/PID/fd` and `/proc/net/tcp{,6}`.
    pub fn listening_sockets(&self) -> Vec<SocketAddr> {
        let fd_dir = format!("/proc/{}/fd", self.child.id());
        let inodes: Vec<u64> = std::fs::read_dir(&fd_dir)
            .unwrap_or_else(|e| panic!("read {fd_dir}: {e}"))
            .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .filter_map(|target| {
                let target = target.to_str()?;
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse()
                    .ok()
            })
            .collect();
        tcp_listeners()
            .into_iter()
            .filter(|(_, inode)| inodes.contains(inode))
            .map(|(addr, _)| addr)
            .collect()
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

/// The value of `series` (a metric name with its labels exactly as exposed, e.g.
/// `operator_watch_restarts_total` or `operator_reconcile_total{result="held"}`) in a
/// Prometheus text exposition; `None` if no sample has that name and those labels.
pub fn metric_value(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        let value = value.split_whitespace().next()?;
        value.parse().ok()
    })
}

/// The value of counter `series` in an exposition (see [`metric_value`]), 0 while it has not
/// counted yet; panics naming it if its family (`# TYPE <family> ...`, the name without a
/// `_total`, `_count`, `_sum` or `_bucket` suffix) is not exposed at all.
pub fn counter_value(exposition: &str, series: &str) -> f64 {
    if let Some(value) = metric_value(exposition, series) {
        return value;
    }
    let name = series.split('{').next().unwrap_or(series);
    let family_served = exposition.lines().any(|line| {
        line.strip_prefix("# TYPE ")
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|family| {
                name.strip_prefix(family).is_some_and(|suffix| {
                    ["", "_total", "_count", "_sum", "_bucket"].contains(&suffix)
                })
            })
    });
    assert!(
        family_served,
        "{series}: no metric {name} is served (renamed?):\n{exposition}"
    );
    0.0
}

/// Every listening TCP socket of this network namespace (`/proc/net/tcp` and `tcp6`), with
/// its socket inode.
pub fn tcp_listeners() -> Vec<(SocketAddr, u64)> {
    const LISTEN: &str = "0A";
    let mut all = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_else(|e| panic!("read {table}: {e}"));
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 10 || fields[3] != LISTEN {
                continue;
            }
            let addr = parse_proc_addr(fields[1])
                .unwrap_or_else(|| panic!("{table}: cannot read the address {:?}", fields[1]));
            let inode = fields[9].parse().unwrap_or(0);
            all.push((addr, inode));
        }
    }
    all
}

/// `0100007F:24F8` (IPv4) or 32 hex digits `:PORT` (IPv6), as the kernel prints them: the
/// address in 32-bit words of host byte order, the port in hex.
fn parse_proc_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<[u8; 4]> = (0..ip.len() / 8)
        .map(|i| u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16).map(u32::to_ne_bytes))
        .collect::<Result<_, _>>()
        .ok()?;
    let ip = match words.as_slice() {
        [w] => IpAddr::from(*w),
        [a, b, c, d] => {
            let mut bytes = [0u8; 16];
            for (i, w) in [a, b, c, d].into_iter().enumerate() {
                bytes[i * 4..i * 4 + 4].copy_from_slice(w);
            }
            IpAddr::from(bytes)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// A timeline entry's time (`at`, RFC 3339).
pub fn entry_time(entry: &serde_json::Value) -> chrono::DateTime<chrono::Utc> {
    let at = entry["at"].as_str().expect("an entry with `at`");
    chrono::DateTime::parse_from_rfc3339(at)
        .unwrap_or_else(|e| panic!("timeline time {at:?}: {e}"))
        .with_timezone(&chrono::Utc)
}

/// Removes a ticket database and its side files (WAL, shared memory, owner lock).
pub fn remove_db(db: &Path) {
    for suffix in ["", "-wal", "-shm", ".lock"] {
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

/// The actions (`start`, `die`, `exec_create: sh`...) of every event of a container, in
/// order, between `since` (RFC 3339 or seconds) and now.
pub fn event_actions(name: &str, since: &str) -> Vec<String> {
    super::docker_ok(&[
        "events",
        "--since",
        since,
        "--until",
        "0s",
        "--filter",
        &format!("container={name}"),
        "--format",
        "{{.Action}}",
    ])
    .lines()
    .map(str::to_string)
    .collect()
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
