//! `operator chaos` end to end: drills against real etcd members in real containers, run by
//! the controller the runner starts, with real faults; every fault is undone whatever
//! happens (a trial's end, a timeout, SIGINT, a SIGKILLed runner).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use common::etcd::Members;
use common::operator::{TempDir, inspect, operator, operator_bin, wait_until};
use common::prometheus::Prometheus;
use common::{Cleanup, free_port, require_docker, run_with_timeout, unique};

/// Three etcd members on host networking (loopback ports of their own) watched by a
/// Prometheus; nothing runs until a drill's runner starts its controller.
struct Etcd {
    cluster: String,
    dir: TempDir,
    members: Members,
    _prom: Prometheus,
    // Dropped last: removes every container and volume of the cluster.
    _cleanup: Cleanup,
}

impl Etcd {
    /// `observe`: the member the controller only watches (a fault on it is never repaired).
    fn new(prefix: &str, observe: Option<usize>) -> Etcd {
        require_docker();
        let cluster = unique(prefix);
        let cleanup = Cleanup::new(format!("operator.cluster={cluster}"));
        let dir = TempDir::new(&cluster);
        let members = Members::new(&cluster, 3);
        let prom = Prometheus::start(
            dir.path().join("prom"),
            free_port(),
            "etcd",
            &members.client,
        );
        let spec = spec(&members, prom.port());
        if observe.is_some() {
            // A member under `observe` is never created by the controller: create them all
            // first, then hand the drill the manifest that only watches that one.
            let path = dir.write("cluster.yaml", &members.manifest(&spec));
            let db = dir.path().join("tickets.db");
            let out = operator(
                &[
                    "run",
                    path.to_str().unwrap(),
                    "--once",
                    "--db",
                    db.to_str().unwrap(),
                    "--listen",
                    "127.0.0.1:0",
                ],
                None,
            );
            assert!(out.status.success(), "{}", text(&out));
        }
        dir.write(
            "cluster.yaml",
            &members.clone().observe(observe.as_slice()).manifest(&spec),
        );
        Etcd {
            cluster,
            dir,
            members,
            _prom: prom,
            _cleanup: cleanup,
        }
    }

    fn member(&self, i: usize) -> String {
        self.members.name(i)
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("tickets.db")
    }

    fn report(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a drill file with these faults (YAML list items under `faults:`).
    fn drill(&self, name: &str, faults: &str, extra: &str) -> PathBuf {
        let endpoints: Vec<String> = (0..self.members.len())
            .map(|i| format!("\"{}\"", self.members.client_url(i)))
            .collect();
        self.dir.write(
            &format!("{name}.yaml"),
            &format!(
                r#"apiVersion: operator/v1
kind: Drill
metadata: {{name: {name}}}
spec:
  manifest: cluster.yaml
  cluster: {cluster}
  steadyState:
    hold: 2s
  faults:
{faults}
  recoveryTimeout: 60s
  workload:
    canary: {{kind: etcd, endpoints: [{endpoints}], rate: 20}}
{extra}"#,
                cluster = self.cluster,
                endpoints = endpoints.join(", "),
            ),
        )
    }

    /// `operator chaos run DRILL --db DB --report DIR ARGS...` to its end.
    fn run(&self, drill: &Path, report: &Path, args: &[&str]) -> std::process::Output {
        let db = self.db();
        let mut all = vec![
            "chaos",
            "run",
            drill.to_str().unwrap(),
            "--db",
            db.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        // The drill bounds itself: each trial waits at most its settle timeout (60 s) for
        // the steady state. Two trials and as many under the baseline on a loaded machine
        // can take minutes, so this bound sits above the sum of the drill's own and only
        // catches a hang (the 120 s of `operator()` once cut a slow but healthy run).
        let mut cmd = Command::new(operator_bin());
        cmd.args(&all);
        run_with_timeout(cmd, Duration::from_secs(600))
    }

    /// The same, in the background, its output in `log`.
    fn spawn(&self, drill: &Path, report: &Path, log: &Path) -> Child {
        Command::new(operator_bin())
            .args(["chaos", "run"])
            .arg(drill)
            .arg("--db")
            .arg(self.db())
            .arg("--report")
            .arg(report)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(log.with_extension("out")).unwrap())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("start operator chaos run")
    }

    /// 0 while the member does not exist yet.
    fn main_pid(&self, i: usize) -> i64 {
        inspect(&self.member(i), None)
            .and_then(|c| c["State"]["Pid"].as_i64())
            .unwrap_or(0)
    }

    fn paused(&self, i: usize) -> bool {
        inspect(&self.member(i), None).is_some_and(|c| c["State"]["Paused"] == true)
    }
}

/// Beside the members: the Prometheus scraping them and a `member-up` check that only
/// observes.
fn spec(members: &Members, prom: u16) -> String {
    format!(
        r#"  prometheus: {{url: "http://127.0.0.1:{prom}", interval: 1s, timeout: 2s}}
  checks:
    - name: member-up
      expr: 'up{{job="etcd"}} == 0'
      for: 2s
      serviceLabel: instance
      services: {{{map}}}
      remediation: {{policy: observe}}
"#,
        map = members.instance_map()
    )
}

fn journal(report: &Path) -> Value {
    let text = std::fs::read_to_string(report.join("journal.json")).expect("journal.json");
    serde_json::from_str(&text).expect("journal JSON")
}

fn text(out: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The kernel's view of a process: `T` when stopped (frozen).
fn process_state(pid: i64) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("State:"))
        .map(|s| s.trim().chars().next().unwrap_or('?').to_string())
        .unwrap_or_default()
}

/// SIGINT (or another signal) to a child, then its exit within `timeout`.
fn signal_and_wait(child: &mut Child, signal: i32, timeout: Duration) -> Option<i32> {
    // SAFETY: signalling our own child, not yet reaped.
    unsafe { libc::kill(child.id() as i32, signal) };
    let mut code = None;
    let done = wait_until(timeout, || match child.try_wait() {
        Ok(Some(status)) => {
            code = Some(status.code().unwrap_or(-1));
            true
        }
        _ => false,
    });
    if !done {
        let _ = child.kill();
        let _ = child.wait();
    }
    code
}

#[test]
fn the_kill_member_drill_passes_twice_and_every_acknowledged_write_is_read_back() {
    let etcd = Etcd::new("chaoskill", None);
    let drill = etcd.drill(
        "kill-member",
        &format!(
            "    - target: {{service: {}}}\n      kind: kill",
            etcd.member(1)
        ),
        "  trials: 2\n",
    );
    let report = etcd.report("report");
    // With the baseline: the same trials with the controller only observing and the
    // engine's restart policy on.
    let out = etcd.run(&drill, &report, &["--baseline"]);
    assert!(out.status.success(), "{}", text(&out));

    let j = journal(&report);
    assert_eq!(j["status"], "completed", "{j:#}");
    assert_eq!(j["deviated"], false);
    let trials = j["trials"].as_array().unwrap();
    let by = |r: &str| trials.iter().filter(|t| t["remediation"] == r).count();
    assert_eq!((by("controller"), by("baseline")), (2, 2), "{j:#}");
    // Each controller the run started kept its own log: the one that made the controller
    // trials' repairs is not overwritten by the one that took the cluster back after the
    // baseline.
    let repairs = std::fs::read_to_string(report.join("controller-controller.log"))
        .expect("the repairing controller's log");
    for t in trials.iter().filter(|t| t["remediation"] == "controller") {
        let acted: Vec<i64> = t["tickets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["first_actor"] == "controller")
            .filter_map(|k| k["id"].as_i64())
            .collect();
        assert!(!acted.is_empty(), "{t:#}");
        assert!(
            acted.iter().any(|id| repairs
                .lines()
                .any(|l| l.contains(&format!("\"ticket\":{id}")) && l.contains("\"action\""))),
            "the repair of ticket(s) {acted:?} is not in controller-controller.log:\n{repairs}"
        );
    }
    for log in ["controller-baseline.log", "controller-after-baseline.log"] {
        assert!(report.join(log).exists(), "{log}");
    }
    // `chaos list` finds the run written with `--report` from the database's ledger alone.
    let db = etcd.db();
    let listed = operator(
        &["chaos", "list", "--db", db.to_str().unwrap(), "--json"],
        None,
    );
    assert!(listed.status.success(), "{}", text(&listed));
    let runs: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert!(
        runs.as_array()
            .unwrap()
            .iter()
            .any(|r| r["run_id"] == j["run_id"]),
        "a run written with --report is not listed: {runs:#}"
    );
    for t in trials {
        assert_eq!(t["outcome"], "pass", "{t:#}");
        // Detected and recovered: by the controller's restart, or by the engine's while the
        // controller only watched (its ticket then closes as self-healed).
        let (ttd, ttr) = (t["ttd_ms"].as_u64(), t["ttr_ms"].as_u64());
        assert!(ttd.is_some() && ttr.is_some(), "{t:#}");
        // Recovery comes after detection, both after the injection (never clamped to 0).
        assert!(ttr > ttd, "{t:#}");
        assert!(
            t["recovered_at"].as_str().unwrap() > t["injected_at"].as_str().unwrap(),
            "{t:#}"
        );
        assert!(
            t["first_actor"].is_string() || t["remediation"] == "baseline",
            "{t:#}"
        );
        let cause = if t["remediation"] == "controller" {
            "controller"
        } else {
            "self-healed"
        };
        assert!(
            t["tickets"]
                .as_array()
                .unwrap()
                .iter()
                // The stopped family: the engine's restarts make it `crash-looping`.
                .any(|k| k["target"]
                    .as_str()
                    .is_some_and(|t| t.ends_with("/stopped"))
                    && k["resolved_by"] == cause),
            "{t:#}"
        );
        let w = &t["workload"];
        assert_eq!(w["kind"], "etcd-canary");
        assert!(w["acknowledged"].as_u64().unwrap() > 0, "{w:#}");
        assert_eq!(w["lost"], 0, "{w:#}");
        assert_eq!(w["phantom"], 0, "{w:#}");
        assert_eq!(w["ok"], true, "{w:#}");
        assert_eq!(t["faults"][0]["kind"], "kill");
    }
    // The member came back and rejoined, and the baseline's restart policies are gone.
    assert!(common::operator::is_running(&etcd.member(1), None));
    for i in 0..3 {
        let policy =
            inspect(&etcd.member(i), None).unwrap()["HostConfig"]["RestartPolicy"]["Name"].clone();
        assert_eq!(policy, "no", "{}", etcd.member(i));
    }
    // The report and its charts, rendered from the journal.
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(md.contains("controller #2: pass"), "{md}");
    assert!(md.contains("baseline #2: pass"), "{md}");
    for svg in ["timeline.svg", "distribution.svg"] {
        let s = std::fs::read_to_string(report.join(svg)).unwrap();
        assert!(s.starts_with("<svg"), "{svg}");
    }
    // `chaos list --root` shows the run; `chaos report` renders it again.
    let listed = operator(
        &[
            "chaos",
            "list",
            "--root",
            etcd.dir.path().to_str().unwrap(),
            "--json",
        ],
        None,
    );
    assert!(listed.status.success(), "{}", text(&listed));
    let runs: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert!(
        runs.as_array()
            .unwrap()
            .iter()
            .any(|r| r["run_id"] == j["run_id"]),
        "{runs:#}"
    );
    std::fs::remove_file(report.join("report.md")).unwrap();
    let again = operator(&["chaos", "report", report.to_str().unwrap()], None);
    assert!(again.status.success(), "{}", text(&again));
    assert!(report.join("report.md").exists());
}

#[test]
fn sigint_mid_fault_and_a_sigkilled_runner_leave_no_fault_behind() {
    // etcd1 is only observed: nothing but the runner's undo ends its faults.
    let etcd = Etcd::new("chaosint", Some(1));
    let log = etcd.dir.path().join("runner.log");

    // SIGINT during a pause, then during a freeze: each is undone before the runner exits.
    for (kind, frozen) in [("pause", false), ("freeze", true)] {
        let drill = etcd.drill(
            kind,
            &format!(
                "    - target: {{service: {}}}\n      kind: {kind}\n      duration: 5m",
                etcd.member(1)
            ),
            "",
        );
        let report = etcd.report(&format!("report-{kind}"));
        let mut child = etcd.spawn(&drill, &report, &log);
        let held = || {
            if frozen {
                process_state(etcd.main_pid(1)) == "T"
            } else {
                etcd.paused(1)
            }
        };
        assert!(
            wait_until(Duration::from_secs(120), held),
            "the {kind} was never applied; runner:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        if !frozen {
            // A second drill on the cluster meanwhile is refused, naming the first, and
            // leaves no report folder: nothing ran.
            let second_report = etcd.report("report-second");
            let second = etcd.run(&drill, &second_report, &[]);
            let all = text(&second);
            assert_eq!(second.status.code(), Some(1), "{all}");
            assert!(all.contains("another drill runs against cluster"), "{all}");
            assert!(
                !second_report.exists(),
                "a refused run wrote {second_report:?}"
            );
        }
        let code = signal_and_wait(&mut child, libc::SIGINT, Duration::from_secs(60));
        assert_eq!(
            code,
            Some(1),
            "{kind}: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(!etcd.paused(1), "{kind}: left paused");
        assert_ne!(process_state(etcd.main_pid(1)), "T", "{kind}: left frozen");
        let j = journal(&report);
        assert_eq!(j["status"], "interrupted", "{j:#}");
        assert_eq!(j["deviated"], false, "{j:#}");
        let trial = &j["trials"][0];
        assert_eq!(trial["interrupted"], true, "{trial:#}");
        assert_eq!(trial["outcome"], "interrupted", "{trial:#}");
        assert!(trial["faults"][0]["undone_at"].is_string(), "{trial:#}");
        let md = std::fs::read_to_string(report.join("report.md")).unwrap();
        assert!(md.contains(": interrupted\n"), "{md}");
        let out = std::fs::read_to_string(log.with_extension("out")).unwrap_or_default();
        assert!(!out.contains("no trial ran"), "{out}");
        assert!(out.contains("1 interrupted"), "{out}");
    }

    // SIGKILL: nothing undoes the pause in the runner; `chaos cleanup` does.
    let pause = etcd.dir.path().join("pause.yaml");
    let report = etcd.report("report-killed");
    let mut child = etcd.spawn(&pause, &report, &log);
    assert!(wait_until(Duration::from_secs(120), || etcd.paused(1)));
    let _ = signal_and_wait(&mut child, libc::SIGKILL, Duration::from_secs(10));
    assert!(etcd.paused(1), "nobody undid it yet");
    let db = etcd.db();
    // The runner's controller went with it (it owns the database no more).
    assert!(
        wait_until(Duration::from_secs(60), || {
            let out = operator(&["chaos", "cleanup", "--db", db.to_str().unwrap()], None);
            String::from_utf8_lossy(&out.stdout).contains("undone: fault")
        }),
        "cleanup did not undo the killed run's pause"
    );
    assert!(!etcd.paused(1), "cleanup left it paused");

    // SIGKILL during a freeze: the next controller start undoes it.
    let freeze = etcd.dir.path().join("freeze.yaml");
    let report = etcd.report("report-killed-freeze");
    let mut child = etcd.spawn(&freeze, &report, &log);
    assert!(wait_until(Duration::from_secs(120), || process_state(
        etcd.main_pid(1)
    ) == "T"));
    let _ = signal_and_wait(&mut child, libc::SIGKILL, Duration::from_secs(10));
    assert_eq!(process_state(etcd.main_pid(1)), "T", "nobody undid it yet");
    // The killed runner's controller goes with it (it is told when its parent dies); then
    // a controller started on the database undoes what the run left.
    assert!(
        wait_until(Duration::from_secs(60), || !controller_running(&db)),
        "the killed runner's controller is still running"
    );
    let controller = common::operator::OperatorProcess::start_with_db(
        &[etcd.dir.path().join("cluster.yaml").as_path()],
        &[],
        None,
        &db,
    );
    assert!(
        wait_until(Duration::from_secs(30), || process_state(etcd.main_pid(1))
            != "T"),
        "the controller's start did not undo the freeze:\n{}",
        controller.log()
    );
    drop(controller);
}

/// Whether an `operator run` on `db` is running (read from /proc: the tests run as root on
/// the same host).
fn controller_running(db: &Path) -> bool {
    let db = db.to_string_lossy().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .any(|c| {
            let args: Vec<String> = c
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).to_string())
                .collect();
            args.get(1).is_some_and(|a| a == "run") && args.contains(&db)
        })
}

#[test]
fn a_fault_the_controller_cannot_repair_ends_in_timeout_and_is_still_undone() {
    let etcd = Etcd::new("chaostimeout", Some(1));
    // Held until the trial ends; the observed member is never unpaused by the controller.
    let drill = etcd.drill(
        "pause-forever",
        &format!(
            "    - target: {{service: {}}}\n      kind: pause\n      duration: trial",
            etcd.member(1)
        ),
        "",
    );
    let text_of = std::fs::read_to_string(&drill)
        .unwrap()
        .replace("recoveryTimeout: 60s", "recoveryTimeout: 5s");
    std::fs::write(&drill, text_of).unwrap();
    let report = etcd.report("report");
    let out = etcd.run(&drill, &report, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let j = journal(&report);
    assert_eq!(j["status"], "completed", "{j:#}");
    assert_eq!(j["deviated"], true, "{j:#}");
    let trial = &j["trials"][0];
    assert_eq!(trial["outcome"], "timeout", "{trial:#}");
    assert!(trial["faults"][0]["undone_at"].is_string(), "{trial:#}");
    assert!(!etcd.paused(1), "the timed-out fault was left behind");
    // The recovery wait gave up at a moment of its own: the timeline's bar runs to it.
    assert!(trial["recovery_deadline"].is_string(), "{trial:#}");
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(md.contains("**Timed out**"), "{md}");
    assert!(md.contains("Faults undone"), "{md}");

    // Paused for 3 s and left alone: the cluster comes back when the pause ends, which is
    // no repair of the controller's. Not a pass.
    let drill = etcd.drill(
        "pause-unrepaired",
        &format!(
            "    - target: {{service: {}}}\n      kind: pause\n      duration: 3s",
            etcd.member(1)
        ),
        "",
    );
    let report = etcd.report("report-no-action");
    let out = etcd.run(&drill, &report, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let j = journal(&report);
    let trial = &j["trials"][0];
    assert_eq!(trial["outcome"], "no-action", "{trial:#}");
    assert!(trial["recovered_at"].is_string(), "{trial:#}");
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(md.contains("### controller #1: no action"), "{md}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("(1 no action)"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_cluster_out_of_its_steady_state_is_not_broken_and_a_bad_drill_names_its_line() {
    let etcd = Etcd::new("chaossteady", None);
    let drill = etcd.drill(
        "refused",
        &format!(
            "    - target: {{service: {}}}\n      kind: kill",
            etcd.member(0)
        ),
        "",
    );
    // A probe that never holds: the drill must refuse to break anything, and say why.
    let yaml = std::fs::read_to_string(&drill).unwrap().replace(
        "  steadyState:\n    hold: 2s\n",
        "  steadyState:\n    hold: 2s\n    probes:\n      - name: never-true\n        command: \"false\"\n",
    );
    std::fs::write(&drill, yaml).unwrap();
    let report = etcd.report("report");
    let out = etcd.run(&drill, &report, &["--settle-timeout", "20s"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("not in its steady state"), "{all}");
    assert!(all.contains("probe never-true"), "{all}");
    // Refused: no report folder (the controller's log and the first journal it had written
    // went with it); the ledger keeps the run as aborted.
    assert!(!report.exists(), "a refused run left {report:?}");
    let listed = operator(
        &[
            "chaos",
            "list",
            "--db",
            etcd.db().to_str().unwrap(),
            "--json",
        ],
        None,
    );
    let runs: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert!(runs.as_array().unwrap().is_empty(), "{runs:#}");
    // Nothing was broken: no fault in the ledger.
    let cleanup = operator(
        &[
            "chaos",
            "cleanup",
            "--db",
            etcd.db().to_str().unwrap(),
            "--json",
        ],
        None,
    );
    let swept: Value = serde_json::from_slice(&cleanup.stdout).unwrap();
    assert!(swept["undone"].as_array().unwrap().is_empty(), "{swept:#}");

    // A misspelled field: file:line: field.
    let bad = etcd.dir.write(
        "bad.yaml",
        &std::fs::read_to_string(&drill)
            .unwrap()
            .replace("recoveryTimeout: 60s", "recoveryTimeOut: 60s"),
    );
    let out = operator(&["chaos", "validate", bad.to_str().unwrap()], None);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    // Run, it is refused the same way, and writes nothing.
    let bad_report = etcd.report("report-bad");
    let run = etcd.run(&bad, &bad_report, &[]);
    assert_eq!(run.status.code(), Some(1), "{}", text(&run));
    assert!(
        !bad_report.exists(),
        "a drill that fails validation left {bad_report:?}"
    );
    let line = std::fs::read_to_string(&bad)
        .unwrap()
        .lines()
        .position(|l| l.contains("recoveryTimeOut"))
        .unwrap()
        + 1;
    assert!(
        all.contains(&format!("bad.yaml:{line}:")),
        "no file:line for the bad field: {all}"
    );
}

/// The rules and qdiscs a chaos run leaves in a container's network namespace.
fn net_leftovers(container: &str) -> String {
    let pid = inspect(container, None)
        .and_then(|c| c["State"]["Pid"].as_i64())
        .unwrap_or(0);
    assert!(pid > 0, "{container} is not running");
    let run = |args: &[&str]| {
        let out = Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-n"])
            .args(args)
            .output()
            .expect("nsenter");
        // A look that failed would find nothing left: it must not pass for one.
        assert!(
            out.status.success(),
            "nsenter {args:?} in {container}: {out:?}"
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let rules: Vec<String> = run(&["iptables", "-S"])
        .lines()
        .filter(|l| l.contains("operator-chaos"))
        .map(str::to_string)
        .collect();
    let qdiscs: Vec<String> = run(&["tc", "qdisc", "show"])
        .lines()
        .filter(|l| l.contains("tbf") || l.contains("netem"))
        .map(str::to_string)
        .collect();
    [rules, qdiscs].concat().join("\n")
}

#[test]
fn sigint_mid_partition_loss_and_bandwidth_leaves_no_rule_and_no_qdisc() {
    require_docker();
    let cluster = unique("chaosnet");
    let _cleanup = Cleanup::new(format!("operator.cluster={cluster}"));
    let dir = TempDir::new(&cluster);
    let services: String = ["a", "b", "c"]
        .iter()
        .map(|s| {
            format!(
                "    - name: {cluster}-{s}\n      image: {}\n      command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n",
                common::BUSYBOX_IMAGE
            )
        })
        .collect();
    dir.write(
        "cluster.yaml",
        &common::cluster_yaml(&cluster, &services).replace(
            "spec:\n",
            &format!("spec:\n  network: {{name: {cluster}, internal: true}}\n"),
        ),
    );
    let drill = dir.write(
        "net.yaml",
        &format!(
            r#"apiVersion: operator/v1
kind: Drill
metadata: {{name: net}}
spec:
  manifest: cluster.yaml
  steadyState: {{hold: 1s}}
  faults:
    - target: {{service: {cluster}-a}}
      kind: partition
      from: [{cluster}-b]
      duration: 5m
    - target: {{service: {cluster}-c}}
      kind: loss
      probability: 0.5
      duration: 5m
    - target: {{service: {cluster}-b}}
      kind: bandwidth
      rate: 1mbit
      duration: 5m
  recoveryTimeout: 30s
"#
        ),
    );
    let db = dir.path().join("tickets.db");
    let report = dir.path().join("report");
    let log = dir.path().join("runner.log");
    let mut child = Command::new(operator_bin())
        .args(["chaos", "run"])
        .arg(&drill)
        .arg("--db")
        .arg(&db)
        .arg("--report")
        .arg(&report)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start operator chaos run");
    let name = |s: &str| format!("{cluster}-{s}");
    let all_held = || {
        ["a", "b", "c"]
            .iter()
            .all(|s| inspect(&name(s), None).is_some_and(|c| c["State"]["Running"] == true))
            && net_leftovers(&name("a")).contains("DROP")
            && net_leftovers(&name("b")).contains("tbf")
            && net_leftovers(&name("c")).contains("statistic")
    };
    assert!(
        wait_until(Duration::from_secs(120), all_held),
        "the faults were never all applied; runner:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let code = signal_and_wait(&mut child, libc::SIGINT, Duration::from_secs(60));
    assert_eq!(
        code,
        Some(1),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    for s in ["a", "b", "c"] {
        let left = net_leftovers(&name(s));
        assert!(left.is_empty(), "{} still has: {left}", name(s));
    }
    let j = journal(&report);
    assert_eq!(j["status"], "interrupted", "{j:#}");
    let faults = j["trials"][0]["faults"].as_array().unwrap();
    assert_eq!(faults.len(), 3, "{faults:#?}");
    assert!(
        faults
            .iter()
            .all(|f| f["undone_at"].is_string() && f["error"].is_null()),
        "{faults:#?}"
    );
}
