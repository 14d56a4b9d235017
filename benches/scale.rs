//! Scale benchmark: the controller over an existing fleet of 100, 500 and 1000 containers.
//!
//! Needs a Docker engine and the local images (`scripts/setup.sh`). Run:
//!
//!     cargo bench --bench scale -- [N...] [--idle-secs S] [--kills K] [--shared-engine]
//!
//! (defaults `100 500 1000`, 300 s, 20 kills; `cargo bench --bench scale -- 100 --idle-secs 10`
//! is a quick run). The fleets live on a private Docker engine this program starts
//! (`tests/common` `PrivateDockerd`: no bridge, no iptables, removed at the end), so a
//! thousand containers never crowd the engine other work shares; `--shared-engine` uses the
//! default one instead. For each N, one cluster of N busybox services (`sleep`, on the host's
//! network: no network namespace or bridge port per container; `none` cannot be used, the
//! controller gives each container its service name as a network alias) is created by a
//! first `operator run`, which is then stopped. Then, against that existing fleet, on the same manifests and ticket database:
//!
//! 1. a fresh `operator run` with its default flags (resync 30 s):
//!    - **first reconcile**: `operator_first_reconcile_seconds`, from the process's start to
//!      the end of its first full pass over every service;
//!    - **RSS**: `VmRSS` of `/proc/PID/status`, 5 s after that pass (`VmHWM`, the peak, is
//!      printed beside it);
//!    - **idle CPU**: `utime + stime` of `/proc/PID/stat` over S seconds of nothing
//!      happening (the periodic resyncs included), as a percentage of one core; the default
//!      300 s holds ten resyncs, so every service's first full look at a resync (its turn
//!      comes between the 5th and the 10th) is inside it;
//!    - **event → drift**: K containers SIGKILLed one by one (each waited for until it runs
//!      again, then 1 s), each one's time from the engine's `die` event to the reconcile that
//!      found the drift, from the controller's own debug line (`event_to_drift_us`; the log
//!      filter is `info,operator::reconcile::service=debug`, which says nothing on a clean
//!      reconcile), p50 and p99;
//! 2. a fresh `operator run --resync 2s`: **resync**, the mean time of one periodic resync
//!    pass over every service (`operator_resync_seconds_sum / _count`) over passes 11 to 20:
//!    by then every service has had its first full-look turn, so a pass is what it is in the
//!    steady state (a list of the engine, and a full look at the services whose turn it is or
//!    that changed); the first passes after a start look at nothing in full.
//!
//! Every container carries `operator.test=true` and the cluster's own label; the fixture's
//! guard removes them (also on panic) after the controller is killed. Containers are removed
//! in parallel batches at the end of each N.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../tests/common/mod.rs"]
mod common;
mod stats;

use common::operator::{metric_value, operator_bin};
use common::{BUSYBOX_IMAGE as IMAGE, Fixture, PrivateDockerd, docker, docker_on};
use stats::{percentile, summary};

/// The goals of issue 12, printed beside the figures.
const GOAL_FIRST_S: f64 = 2.0;
const GOAL_RESYNC_MS: f64 = 200.0;
const GOAL_RSS_MB: f64 = 50.0;
const GOAL_IDLE_PCT: f64 = 1.0;

/// How long a fleet may take to be created (or a controller to get through its first pass).
const FLEET_TIMEOUT: Duration = Duration::from_secs(30 * 60);

struct Options {
    sizes: Vec<usize>,
    idle: Duration,
    kills: usize,
    shared_engine: bool,
}

/// `docker [-H HOST] ARGS` (bounded).
fn dk(host: Option<&str>, args: &[&str]) -> std::process::Output {
    match host {
        Some(h) => docker_on(h, args),
        None => docker(args),
    }
}

/// [`dk`]; panics unless it succeeds; stdout, trimmed.
fn dk_ok(host: Option<&str>, args: &[&str]) -> String {
    let out = dk(host, args);
    assert!(
        out.status.success(),
        "docker {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn options() -> Options {
    let mut sizes = Vec::new();
    // Ten default resyncs: every service's first full-look turn (the 5th to the 10th resync,
    // see reconcile/resync.rs) falls inside, as in the controller's steady state.
    let mut idle = Duration::from_secs(300);
    let mut kills = 20;
    let mut shared_engine = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--idle-secs" => {
                idle = Duration::from_secs(
                    args.next()
                        .and_then(|v| v.parse().ok())
                        .expect("--idle-secs SECONDS"),
                )
            }
            "--kills" => kills = args.next().and_then(|v| v.parse().ok()).expect("--kills K"),
            "--shared-engine" => shared_engine = true,
            // `cargo bench` passes `--bench` to a harness = false target.
            other => {
                if let Ok(n) = other.parse() {
                    sizes.push(n);
                }
            }
        }
    }
    if sizes.is_empty() {
        sizes = vec![100, 500, 1000];
    }
    Options {
        sizes,
        idle,
        kills,
        shared_engine,
    }
}

/// One `operator run` child; SIGKILLed on drop (before the fixture's cleanup, which is
/// declared earlier and so dropped later).
struct Run {
    child: Child,
    log: PathBuf,
}

impl Run {
    fn start(host: Option<&str>, dir: &Path, db: &Path, extra: &[&str]) -> Run {
        let log = std::env::temp_dir().join(format!("{}.log", common::unique("scale-run")));
        let file = std::fs::File::create(&log).expect("create log file");
        let mut cmd = Command::new(operator_bin());
        if let Some(host) = host {
            cmd.env("DOCKER_HOST", host);
        }
        let child = cmd
            .arg("run")
            .arg(dir)
            .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(["--log-level", "info,operator::reconcile::service=debug"])
            .args(extra)
            .arg("--db")
            .arg(db)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start operator run");
        Run { child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn json_lines(&self) -> Vec<serde_json::Value> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn listen(&self) -> Option<String> {
        self.json_lines().into_iter().find_map(|v| {
            (v["message"] == "serving /metrics and /healthz")
                .then(|| v["listen"].as_str().map(str::to_string))
                .flatten()
        })
    }

    fn metrics(&self) -> Option<String> {
        let addr = self.listen()?;
        let mut stream = TcpStream::connect(&addr).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ok()?;
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
    }

    fn metric(&self, series: &str) -> Option<f64> {
        metric_value(&self.metrics()?, series)
    }

    fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("operator run exited ({status}); log:\n{}", self.log());
        }
    }

    /// Waits until the first full pass is done; its seconds since the process started.
    fn wait_first_reconcile(&mut self) -> f64 {
        let deadline = Instant::now() + FLEET_TIMEOUT;
        loop {
            self.assert_alive();
            if let Some(s) = self.metric("operator_first_reconcile_seconds")
                && s > 0.0
            {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "no first full reconcile after {FLEET_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, then waits (bounded) for the clean exit.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("operator run did not stop in 90 s; killing it");
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- operator log ({}) ---", self.log.display());
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(50).collect();
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// A `/proc/PID/status` field in kB (`VmRSS`, `VmHWM`).
fn status_kb(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The machine's 1-minute load average (`/proc/loadavg`): how much else ran beside.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// `utime + stime` of `/proc/PID/stat`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // The command name may hold spaces: the fields that count follow its closing paren.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}

fn manifest(cluster: &str, n: usize) -> String {
    let services: String = (0..n)
        .map(|i| {
            format!(
                "    - name: {cluster}-s{i}\n      image: {IMAGE}\n      networkMode: host\n      command: [\"sleep\", \"1000000\"]\n      stopTimeout: 0s\n"
            )
        })
        .collect();
    common::cluster_yaml(cluster, &services)
}

/// Ids of the cluster's containers (`status=running` only, or all).
fn containers(host: Option<&str>, cluster: &str, running_only: bool) -> Vec<String> {
    let label = format!("label=operator.cluster={cluster}");
    let mut args = vec!["ps", "-q", "--filter", &label];
    if running_only {
        args.extend(["--filter", "status=running"]);
    } else {
        args.push("-a");
    }
    String::from_utf8_lossy(&dk(host, &args).stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn wait_fleet(host: Option<&str>, cluster: &str, n: usize, run: &mut Run) {
    let deadline = Instant::now() + FLEET_TIMEOUT;
    let mut last = 0;
    let started = Instant::now();
    loop {
        run.assert_alive();
        let up = containers(host, cluster, true).len();
        if up >= n {
            eprintln!(
                "  {n} containers running after {:.0} s",
                started.elapsed().as_secs_f64()
            );
            return;
        }
        if up / 100 != last / 100 {
            eprintln!(
                "  {up}/{n} running ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
        }
        last = up;
        assert!(
            Instant::now() < deadline,
            "only {up} of {n} containers run after {FLEET_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Removes the cluster's containers, 50 per `docker rm -f` call, 4 calls at a time.
fn remove_fleet(host: Option<&str>, cluster: &str) {
    let ids = containers(host, cluster, false);
    for batch in ids.chunks(200) {
        let handles: Vec<_> = batch
            .chunks(50)
            .map(|chunk| {
                let chunk = chunk.to_vec();
                let host = host.map(str::to_string);
                std::thread::spawn(move || {
                    let mut args = vec!["rm", "-f", "-v"];
                    args.extend(chunk.iter().map(String::as_str));
                    dk(host.as_deref(), &args)
                })
            })
            .collect();
        for h in handles {
            let _ = h.join();
        }
    }
}

fn pid_of(host: Option<&str>, name: &str) -> Option<u32> {
    dk_ok(host, &["inspect", "-f", "{{.State.Pid}}", name])
        .parse()
        .ok()
        .filter(|p| *p > 0)
}

fn wait_running_again(host: Option<&str>, name: &str, old_pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if pid_of(host, name).is_some_and(|p| p != old_pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{name} does not run again 120 s after its SIGKILL");
}

#[derive(Debug)]
struct Row {
    n: usize,
    first_s: f64,
    first_again_s: f64,
    resync_ms: f64,
    resync_passes: f64,
    rss_mb: f64,
    hwm_mb: f64,
    idle_pct: f64,
    e2d_p50_ms: f64,
    e2d_p99_ms: f64,
    e2d: Vec<f64>,
    /// The machine's load average at the end of the idle minute.
    load: f64,
}

fn measure(host: Option<&str>, n: usize, opts: &Options) -> Row {
    eprintln!("\n== N = {n} ==");
    // Its guard removes every container of the cluster, also on panic, after every `Run`
    // below (declared later, dropped earlier) has been killed.
    let mut fixture = Fixture::builder("scale");
    if let Some(host) = host {
        fixture = fixture.docker_host(host);
    }
    let fixture = fixture.manifest("scale.yaml", |c| manifest(c, n));
    let cluster = fixture.cluster().to_string();
    let dir = fixture.dir().path().to_path_buf();
    let db = fixture.db().to_path_buf();

    eprintln!("  creating the fleet with a first controller");
    let mut creator = Run::start(host, &dir, &db, &[]);
    wait_fleet(host, &cluster, n, &mut creator);
    creator.wait_first_reconcile();
    // Its settle re-checks (3 s) are over before it stops.
    std::thread::sleep(Duration::from_secs(5));
    creator.stop();

    eprintln!("  a fresh controller on the existing fleet (default flags)");
    let mut run = Run::start(host, &dir, &db, &[]);
    let first_s = run.wait_first_reconcile();
    eprintln!(
        "  first full reconcile {:.0} ms after the start",
        first_s * 1e3
    );
    std::thread::sleep(Duration::from_secs(5));
    let pid = run.pid();
    let rss_mb = status_kb(pid, "VmRSS") / 1024.0;
    let hwm_mb = status_kb(pid, "VmHWM") / 1024.0;
    eprintln!("  RSS {rss_mb:.1} MB (peak {hwm_mb:.1} MB)");

    eprintln!("  idle for {} s", opts.idle.as_secs());
    let (cpu0, t0) = (cpu_seconds(pid), Instant::now());
    std::thread::sleep(opts.idle);
    let idle_pct = (cpu_seconds(pid) - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
    let load = load_average();
    run.assert_alive();
    eprintln!("  idle CPU {idle_pct:.2} % of a core (machine load average {load:.1})");

    eprintln!("  {} SIGKILLs one by one", opts.kills);
    let step = (n / opts.kills.max(1)).max(1);
    for k in 0..opts.kills.min(n) {
        let name = format!("{cluster}-s{}", (k * step) % n);
        let pid = pid_of(host, &name).expect("the container runs before its kill");
        let status = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -KILL {pid} ({name})");
        wait_running_again(host, &name, pid);
        std::thread::sleep(Duration::from_secs(1));
    }
    let mut e2d: Vec<f64> = run
        .json_lines()
        .iter()
        .filter_map(|v| v["event_to_drift_us"].as_u64())
        .map(|us| us as f64 / 1e3)
        .collect();
    e2d.sort_by(f64::total_cmp);
    run.stop();

    eprintln!("  a fresh controller with --resync 2s");
    let mut resync = Run::start(host, &dir, &db, &["--resync", "2s"]);
    let first_again_s = resync.wait_first_reconcile();
    let deadline = Instant::now() + Duration::from_secs(240);
    // (sum, count) once 10 passes are done, and once 20 are.
    let mut warm: Option<(f64, f64)> = None;
    let (sum, count) = loop {
        resync.assert_alive();
        let body = resync.metrics().unwrap_or_default();
        let sum = metric_value(&body, "operator_resync_seconds_sum").unwrap_or(0.0);
        let count = metric_value(&body, "operator_resync_seconds_count").unwrap_or(0.0);
        if warm.is_none() && count >= 10.0 {
            warm = Some((sum, count));
        }
        if count >= 20.0 || Instant::now() > deadline {
            let (sum0, count0) = warm.unwrap_or((0.0, 0.0));
            break (sum - sum0, count - count0);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    resync.stop();

    eprintln!("  removing the fleet");
    remove_fleet(host, &cluster);
    drop(fixture);
    let left = containers(host, &cluster, false).len();
    assert_eq!(
        left, 0,
        "{left} containers of {cluster} are left after the cleanup"
    );
    Row {
        n,
        first_s,
        first_again_s,
        resync_ms: if count > 0.0 {
            sum / count * 1e3
        } else {
            f64::NAN
        },
        resync_passes: count,
        rss_mb,
        hwm_mb,
        idle_pct,
        e2d_p50_ms: percentile(&e2d, 50.0),
        e2d_p99_ms: percentile(&e2d, 99.0),
        e2d,
        load,
    }
}

fn mark(ok: bool) -> &'static str {
    if ok { "yes" } else { "NO" }
}

fn main() {
    let opts = options();
    let engine = (!opts.shared_engine).then(|| {
        let engine = PrivateDockerd::new();
        engine.import_busybox();
        engine
    });
    let host = engine.as_ref().map(PrivateDockerd::host);
    let rows: Vec<Row> = opts
        .sizes
        .iter()
        .map(|&n| measure(host.as_deref(), n, &opts))
        .collect();
    drop(engine);

    println!(
        "\nthe controller over an existing fleet (idle over {} s, {} kills for event -> drift):",
        opts.idle.as_secs(),
        opts.kills
    );
    println!(
        "{:>5}  {:>15}  {:>13}  {:>8}  {:>10}  {:>9}  {:>9}  {:>9}",
        "N",
        "first reconcile",
        "resync (mean)",
        "RSS MB",
        "idle CPU %",
        "e2d p50",
        "e2d p99",
        "(peak MB)"
    );
    for r in &rows {
        println!(
            "{:>5}  {:>12.0} ms  {:>10.1} ms  {:>8.1}  {:>10.2}  {:>6.1} ms  {:>6.1} ms  {:>9.1}",
            r.n,
            r.first_s * 1e3,
            r.resync_ms,
            r.rss_mb,
            r.idle_pct,
            r.e2d_p50_ms,
            r.e2d_p99_ms,
            r.hwm_mb
        );
    }
    println!(
        "{:>5}  {:>12.0} ms  {:>10.1} ms  {:>8.1}  {:>10.2}",
        "goal",
        GOAL_FIRST_S * 1e3,
        GOAL_RESYNC_MS,
        GOAL_RSS_MB,
        GOAL_IDLE_PCT
    );
    println!("\nmet (first reconcile < 2 s, resync < 200 ms, RSS < 50 MB, idle < 1 % of a core):");
    for r in &rows {
        println!(
            "{:>5}  first {}  resync {}  RSS {}  idle {}   (second start's first reconcile {:.0} ms; {} resync passes after the 10th; {} event -> drift samples; machine load average {:.1})",
            r.n,
            mark(r.first_s < GOAL_FIRST_S),
            mark(r.resync_ms < GOAL_RESYNC_MS),
            mark(r.rss_mb < GOAL_RSS_MB),
            mark(r.idle_pct < GOAL_IDLE_PCT),
            r.first_again_s * 1e3,
            r.resync_passes,
            r.e2d.len(),
            r.load
        );
    }
    println!("\ntime from a container's Docker event to its reconcile finding the drift:");
    for r in &rows {
        summary(&format!("N = {}", r.n), r.e2d.clone());
    }
    let args: Vec<String> = opts.sizes.iter().map(usize::to_string).collect();
    println!(
        "\nreproduce: cargo bench --bench scale -- {} --idle-secs {} --kills {}{}",
        args.join(" "),
        opts.idle.as_secs(),
        opts.kills,
        if opts.shared_engine {
            " --shared-engine"
        } else {
            ""
        }
    );
}
