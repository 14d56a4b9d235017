//! Mass-repair benchmark: N containers killed at once, under this controller, under the
//! engine's own `--restart always` and under a poller that starts exited containers every
//! 5 s (`benches/arms`; autoheal's interval, but autoheal restarts unhealthy containers and
//! this arm exited ones), side by side in one run, until all N run again.
//!
//! Needs a Docker engine and the local images (`scripts/setup.sh`). Run:
//!
//!     cargo bench --bench mass_repair -- [N] [ROUNDS] [QUIET_S]   (defaults 50, 5 and 15)
//!
//! `MASS_REPAIR_OPERATOR_ARGS="--workers 4"` adds arguments to `operator run` (to compare
//! settings; the figures to report are with the defaults). `MASS_REPAIR_LOG=FILE` keeps the
//! controller's JSON log (debug level) there.
//!
//! Three arms of N identical busybox containers (host network, same command) live through
//! the whole run: the engine's, created with `--restart always` and not owned by the
//! controller; the poller's, created with `--restart no` and started again by a thread of
//! this program that lists the exited ones every 5 s and runs one `docker start` for them
//! all; and the controller's, declared in one manifest and run by the release `operator run`
//! with its default flags. Each round kills one arm after the other (the order rotates), by
//! SIGKILLing every container's main process from the host in one `kill` call: `docker kill`
//! counts as a stop by the user and the engine does not restart it (checked on Debian's
//! 20.10), so all arms die the same way. The figure is the engine's own time from the first
//! `die` event to the last `start` event of the arm (one clock for all arms).
//!
//! Caution: N=200 (400 containers on the host network) wedged Debian's dockerd 20.10 in its
//! third engine round (every `docker` call hung, goroutines stuck on libnetwork's `host`
//! network lock, 116 containers left `Restarting`). Run large N on an engine of your own.
//!
//! Between kills the machine is left quiet for QUIET_S: the engine resets its restart
//! backoff only after a container has run for 10 s, and the controller's `stableAfter` is
//! set to the same 10 s, so both start every round from a reset backoff; the controller's
//! settle re-checks (3 s) are over too. Each quiet time has 0 to 5 s added, so the kills fall
//! at a random phase of the poller's 5 s schedule.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod arms;
#[path = "../tests/common/mod.rs"]
mod common;
mod stats;

use arms::{COMMAND, POLL_PERIOD, Poller, phase_jitter, run_arm_container};

use common::{BUSYBOX_IMAGE as IMAGE, Fixture, docker};
use stats::summary;

/// How long one arm may take to run again before the round is given up.
const ARM_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, PartialEq)]
enum Arm {
    Operator,
    Engine,
    Poller,
}

impl Arm {
    const ALL: [Arm; 3] = [Arm::Operator, Arm::Engine, Arm::Poller];

    fn label(self) -> &'static str {
        match self {
            Arm::Operator => "operator (controller repairs)",
            Arm::Engine => "docker --restart always",
            Arm::Poller => arms::LABEL,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// `<cluster>-c<i>` (the controller's), `<cluster>-e<i>` (the engine's) and `<cluster>-p<i>`
/// (the poller's).
fn names(cluster: &str, arm: Arm, n: usize) -> Vec<String> {
    let tag = match arm {
        Arm::Operator => 'c',
        Arm::Engine => 'e',
        Arm::Poller => 'p',
    };
    (0..n).map(|i| format!("{cluster}-{tag}{i}")).collect()
}

/// The main process of each named container; `None` unless every one of them runs.
fn pids(names: &[String]) -> Option<Vec<u32>> {
    let mut args = vec!["inspect", "-f", "{{.State.Pid}}"];
    args.extend(names.iter().map(String::as_str));
    let out = docker(&args);
    if !out.status.success() {
        return None;
    }
    let pids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|p| *p > 0)
        .collect();
    (pids.len() == names.len()).then_some(pids)
}

fn wait_all_running(names: &[String], what: &str) {
    let deadline = Instant::now() + ARM_TIMEOUT;
    while pids(names).is_none() {
        assert!(
            Instant::now() < deadline,
            "not all of {what} run after {ARM_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Follows `docker events` for die/start of containers named `<prefix>...`:
/// (name, action, engine ns).
fn follow_events(prefix: &str) -> (Child, mpsc::Receiver<(String, String, u128)>) {
    let mut child = Command::new("docker")
        .args([
            "events",
            "--format",
            "{{.Actor.Attributes.name}} {{.Action}} {{.TimeNano}}",
            "--filter",
            "type=container",
            "--filter",
            "event=die",
            "--filter",
            "event=start",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("docker events");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    let prefix = prefix.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let parts: Vec<&str> = line.split_whitespace().collect();
            if let [name, action, nanos] = parts[..]
                && name.starts_with(&prefix)
                && let Ok(n) = nanos.parse()
            {
                let _ = tx.send((name.to_string(), action.to_string(), n));
            }
        }
    });
    (child, rx)
}

/// Kills every container of the arm at once; returns the engine's time from the first `die`
/// to the last `start` (ms) and the wall time from the kill to the last `start` seen.
fn kill_and_time(
    names: &[String],
    rx: &mpsc::Receiver<(String, String, u128)>,
) -> Option<(f64, f64)> {
    let pids = pids(names).expect("every container of the arm runs before the kill");
    while rx.try_recv().is_ok() {}
    let index: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let mut die: Vec<Option<u128>> = vec![None; names.len()];
    let mut start: Vec<Option<u128>> = vec![None; names.len()];
    let killed = Instant::now();
    let status = Command::new("kill")
        .arg("-KILL")
        .args(pids.iter().map(u32::to_string))
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -KILL of the arm's processes failed");
    let mut left = names.len();
    let mut last_seen = killed;
    while left > 0 && killed.elapsed() < ARM_TIMEOUT {
        let Ok((name, action, t)) = rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        let Some(&i) = index.get(name.as_str()) else {
            continue;
        };
        match action.as_str() {
            "die" if die[i].is_none() => die[i] = Some(t),
            "start" if die[i].is_some() && start[i].is_none() => {
                start[i] = Some(t);
                left -= 1;
                last_seen = Instant::now();
            }
            _ => {}
        }
    }
    if left > 0 {
        eprintln!("{left} of {} did not start again in time", names.len());
        return None;
    }
    let first_die = die.iter().flatten().min()?;
    let last_start = start.iter().flatten().max()?;
    Some((
        (last_start - first_die) as f64 / 1e6,
        (last_seen - killed).as_secs_f64() * 1e3,
    ))
}

/// Runs `docker run -d --restart RESTART` for an arm not owned by the controller, eight at
/// a time.
fn create_arm(names: &[String], label: &str, restart: &'static str) {
    for chunk in names.chunks(8) {
        let handles: Vec<_> = chunk
            .iter()
            .map(|name| {
                let (name, label) = (name.clone(), label.to_string());
                std::thread::spawn(move || {
                    run_arm_container(&name, &label, restart);
                })
            })
            .collect();
        for h in handles {
            h.join().expect("docker run");
        }
    }
}

fn manifest(cluster: &str, n: usize) -> String {
    let services: String = names(cluster, Arm::Operator, n)
        .iter()
        .map(|name| {
            format!(
                "    - name: {name}\n      image: {IMAGE}\n      networkMode: host\n      command: [\"sh\", \"-c\", \"{COMMAND}\"]\n      remediation:\n        maxRestarts: 100000\n        stableAfter: 10s\n"
            )
        })
        .collect();
    common::cluster_yaml(cluster, &services)
}

/// One row per arm, then the controller's median over each other arm's.
fn side_by_side(figures: &[Vec<f64>; 3]) {
    let p50: Vec<f64> = Arm::ALL
        .iter()
        .map(|arm| summary(arm.label(), figures[arm.index()].clone()))
        .collect();
    println!(
        "ratio of medians operator / engine: {:.2}",
        p50[Arm::Operator.index()] / p50[Arm::Engine.index()]
    );
    println!(
        "ratio of medians operator / poller: {:.2}",
        p50[Arm::Operator.index()] / p50[Arm::Poller.index()]
    );
}

fn main() {
    let mut numbers = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse::<u64>().ok());
    let n = numbers.next().unwrap_or(50) as usize;
    let rounds = numbers.next().unwrap_or(5) as usize;
    let quiet = Duration::from_secs(numbers.next().unwrap_or(15));

    // The controller's containers carry its cluster label; the engine's a label of this run
    // alone. The fixture removes both (and stops the controller), also on panic.
    let fixture = Fixture::builder("mass");
    let cluster = fixture.cluster().to_string();
    let engine_label = format!("operator.test.mass={cluster}");
    let poller_label = format!("operator.test.poll={cluster}");
    let fixture = fixture
        .also_clean(engine_label.clone())
        .also_clean(poller_label.clone());
    let engine = names(&cluster, Arm::Engine, n);
    let poller = names(&cluster, Arm::Poller, n);
    let operator = names(&cluster, Arm::Operator, n);
    let (mut events, rx) = follow_events(&format!("{cluster}-"));

    eprintln!("creating {n} containers under --restart always");
    create_arm(&engine, &engine_label, "always");
    eprintln!("creating {n} containers for the poller of exited containers");
    create_arm(&poller, &poller_label, "no");
    let polling = Poller::start(&poller_label, POLL_PERIOD);
    eprintln!("starting the controller on {n} services");
    let extra = std::env::var("MASS_REPAIR_OPERATOR_ARGS").unwrap_or_default();
    let extra: Vec<&str> = extra.split_whitespace().collect();
    let mut f = fixture
        .manifest("mass.yaml", |cluster| manifest(cluster, n))
        .args(&extra)
        .start();
    wait_all_running(&operator, "the controller's containers");
    wait_all_running(&engine, "the engine's containers");
    wait_all_running(&poller, "the poller's containers");
    std::thread::sleep(quiet);

    let mut times: [Vec<f64>; 3] = Default::default();
    let mut walls: [Vec<f64>; 3] = Default::default();
    for round in 0..rounds {
        // Rotate who goes first so none is systematically ahead.
        let order = [0, 1, 2].map(|k| Arm::ALL[(round + k) % 3]);
        for arm in order {
            let i = arm.index();
            let arm_names = match arm {
                Arm::Operator => &operator,
                Arm::Engine => &engine,
                Arm::Poller => &poller,
            };
            wait_all_running(arm_names, arm.label());
            if let Some((engine_ms, wall_ms)) = kill_and_time(arm_names, &rx) {
                eprintln!(
                    "round {}/{rounds} {:<44} all {n} running again after {engine_ms:>8.1} ms (wall {wall_ms:>8.1} ms)",
                    round + 1,
                    arm.label()
                );
                times[i].push(engine_ms);
                walls[i].push(wall_ms);
            }
            std::thread::sleep(quiet + phase_jitter());
        }
    }
    let _ = events.kill();
    let _ = events.wait();
    let poller_starts = polling.started();
    drop(polling);
    f.operator.crash();
    // No product output carries this figure per event: it is the controller's debug log.
    let log = f.operator.log();
    if let Ok(path) = std::env::var("MASS_REPAIR_LOG") {
        std::fs::write(&path, &log).expect("write MASS_REPAIR_LOG");
    }
    let detect: Vec<f64> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["event_to_drift_us"].as_u64())
        .map(|us| us as f64 / 1e3)
        .collect();
    drop(f);

    println!(
        "\n{n} containers SIGKILLed at once, until all run again (engine's first die -> last start), {rounds} rounds:"
    );
    side_by_side(&times);
    println!("(the poller started {poller_starts} containers in all)");
    println!("\nthe same, wall time from the kill to the last start event seen:");
    side_by_side(&walls);
    println!("\ntime from a container's Docker event to its reconcile finding the drift:");
    summary("event -> drift detected", detect);
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!("MASS_REPAIR_OPERATOR_ARGS=\"{}\" ", extra.join(" "))
    };
    println!(
        "\nreproduce: {extra}cargo bench --bench mass_repair -- {n} {rounds} {}",
        quiet.as_secs()
    );
}
