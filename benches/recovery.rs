//! Recovery benchmark: time from SIGKILL to running again under this controller, under the
//! engine's own `--restart always` and under a poller that starts exited containers every
//! 5 s (`benches/arms`; autoheal's interval, but autoheal restarts unhealthy containers and
//! this arm exited ones), side by side on the same image and command in one run, plus the
//! time from the Docker event to the drift being detected.
//!
//! Needs a Docker engine and the local images (`scripts/setup.sh`). Run:
//!
//!     cargo bench --bench recovery -- [ROUNDS]        (default 15 rounds)
//!
//! Each round SIGKILLs the three containers' main processes at once (the order rotates) and
//! reads the engine's own `die` and `start` events (one clock for all). Rounds are 11 s
//! apart because the engine resets its restart backoff only after a container has run for
//! 10 s; the controller's `stableAfter` is set to the same 10 s so both start every round
//! from a reset backoff. The poller has no backoff: it starts what exited at its next tick,
//! whose phase against the kill is random (each round's wait has 0 to 5 s added): 0 to 5 s,
//! 2.5 s on average, plus the start itself.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod arms;
#[path = "../tests/common/mod.rs"]
mod common;
mod stats;

use arms::{POLL_PERIOD, Poller, phase_jitter, run_arm_container};

use common::{BUSYBOX_IMAGE as IMAGE, Fixture, docker_ok};
use stats::summary;

fn pid_of(name: &str) -> Option<u32> {
    docker_ok(&["inspect", "-f", "{{.State.Pid}}", name])
        .parse()
        .ok()
        .filter(|p| *p > 0)
}

/// Follows `docker events` for die/start of the named containers: (name, action, engine ns).
fn follow_events(names: &[&str]) -> (Child, mpsc::Receiver<(String, String, u128)>) {
    let mut args = vec![
        "events".to_string(),
        "--format".into(),
        "{{.Actor.Attributes.name}} {{.Action}} {{.TimeNano}}".into(),
    ];
    for n in names {
        args.push("--filter".into());
        args.push(format!("container={n}"));
    }
    args.extend([
        "--filter".into(),
        "event=die".into(),
        "--filter".into(),
        "event=start".into(),
    ]);
    let mut child = Command::new("docker")
        .args(&args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("docker events");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let parts: Vec<&str> = line.split_whitespace().collect();
            if let [name, action, nanos] = parts[..]
                && let Ok(n) = nanos.parse()
            {
                let _ = tx.send((name.to_string(), action.to_string(), n));
            }
        }
    });
    (child, rx)
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(15);
    // The managed container is the controller's; the engine-restarted one is labelled for
    // this run alone. The fixture removes both (and stops the controller), also on panic.
    // The poller's container carries a label of its own, which the poller follows.
    let fixture = Fixture::builder("bench");
    let engine_label = format!("operator.test.bench={}", fixture.cluster());
    let poller_label = format!("operator.test.poll={}", fixture.cluster());
    let fixture = fixture
        .also_clean(engine_label.clone())
        .also_clean(poller_label.clone());
    let command = r#"["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]"#;
    let engine = format!("{}-engine", fixture.cluster());
    let poller = format!("{}-poller", fixture.cluster());
    for (name, label, restart) in [
        (&engine, &engine_label, "always"),
        (&poller, &poller_label, "no"),
    ] {
        run_arm_container(name, label, restart);
    }
    let polling = Poller::start(&poller_label, POLL_PERIOD);
    let mut f = fixture
        .manifest("bench.yaml", |cluster| {
            format!(
                "apiVersion: operator/v1\nkind: Cluster\nmetadata:\n  name: {cluster}\nspec:\n  services:\n    - name: {cluster}-managed\n      image: {IMAGE}\n      networkMode: host\n      command: {command}\n      remediation:\n        maxRestarts: 1000\n        stableAfter: 10s\n"
            )
        })
        .start();
    let managed = f.name("managed");
    f.wait_running(&managed, "the start (managed container)");
    f.wait_running(&engine, "the start (engine container)");
    f.wait_running(&poller, "the start (poller's container)");
    let names = [managed.clone(), engine.clone(), poller.clone()];
    let (mut events, rx) = follow_events(&[&managed, &engine, &poller]);
    // What the repairs cost the engine and the ticket store: the controller's own counters
    // over all rounds (resyncs and looks in the quiet seconds between rounds included, so
    // these bound a repair's cost from above).
    let costs = |f: &Fixture| {
        let engine = |op: &str| {
            f.operator
                .metric(&format!("operator_engine_requests_total{{op=\"{op}\"}}"))
                .unwrap_or(0.0)
        };
        [
            engine("inspect"),
            engine("list"),
            f.operator
                .metric("operator_store_round_trips_total")
                .unwrap_or(0.0),
        ]
    };
    // Past the start's settle and stable windows, quiet seconds give the controller's idle
    // rate (the ticket store's change poll every second, resyncs), subtracted below to leave
    // a repair's own.
    std::thread::sleep(Duration::from_secs(11));
    let quiet_from = (costs(&f), Instant::now());
    std::thread::sleep(Duration::from_secs(10));
    let quiet = (costs(&f), quiet_from.1.elapsed().as_secs_f64());
    let idle_rate: Vec<f64> = (0..3)
        .map(|i| (quiet.0[i] - quiet_from.0[i]) / quiet.1)
        .collect();

    let costs_before = costs(&f);
    let rounds_from = Instant::now();
    let mut recovery = [Vec::new(), Vec::new(), Vec::new()];
    for round in 0..rounds {
        while rx.try_recv().is_ok() {}
        // Rotate who is killed first so none is systematically ahead. The pids are read
        // first so the three kills are as close together as they can be.
        let pids: Vec<Option<u32>> = (0..3).map(|k| pid_of(&names[(round + k) % 3])).collect();
        for pid in pids.into_iter().flatten() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let mut die = [None, None, None];
        let mut start = [None, None, None];
        let deadline = Instant::now() + Duration::from_secs(30);
        while start.iter().any(Option::is_none) && Instant::now() < deadline {
            let Ok((name, action, t)) = rx.recv_timeout(Duration::from_millis(200)) else {
                continue;
            };
            let Some(i) = names.iter().position(|n| *n == name) else {
                continue;
            };
            match action.as_str() {
                "die" => die[i] = Some(t),
                "start" if die[i].is_some() => start[i] = Some(t),
                _ => {}
            }
        }
        for i in 0..3 {
            if let (Some(d), Some(s)) = (die[i], start[i]) {
                recovery[i].push((s - d) as f64 / 1e6);
            }
        }
        eprintln!("round {}/{rounds} done", round + 1);
        std::thread::sleep(Duration::from_secs(11) + phase_jitter());
    }
    let _ = events.kill();
    let _ = events.wait();
    let poller_starts = polling.started();
    drop(polling);
    let costs_after = costs(&f);
    let rounds_took = rounds_from.elapsed().as_secs_f64();
    f.operator.crash();

    // No product output carries this figure: it is the controller's debug log.
    let log = f.operator.log();
    let detect: Vec<f64> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["event_to_drift_us"].as_u64())
        .map(|us| us as f64 / 1e3)
        .collect();
    drop(f);

    println!(
        "\nrecovery from SIGKILL (engine die event -> start event), {rounds} rounds, same image and command:"
    );
    let ours = summary(
        "operator (restartPolicy no, controller heals)",
        recovery[0].clone(),
    );
    let engine_p50 = summary("docker --restart always", recovery[1].clone());
    let poller_p50 = summary(arms::LABEL, recovery[2].clone());
    println!(
        "ratio of medians operator / engine: {:.2}",
        ours / engine_p50
    );
    println!(
        "ratio of medians operator / poller: {:.2}",
        ours / poller_p50
    );
    println!("(the poller started {poller_starts} containers)");
    let per_round = |i: usize| (costs_after[i] - costs_before[i]) / rounds as f64;
    println!(
        "\noperator's cost per SIGKILL repair (its counters over all rounds / {rounds}, resyncs in between included):"
    );
    println!(
        "  engine inspects {:.1}, engine lists {:.1}, ticket store round trips {:.1}",
        per_round(0),
        per_round(1),
        per_round(2)
    );
    // Less what the controller does when nothing happens, at the rate of the quiet seconds
    // before the first kill, over the rounds' time.
    let net = |i: usize| per_round(i) - idle_rate[i] * rounds_took / rounds as f64;
    println!(
        "  net of the idle rate ({:.2} round trips/s, {:.2} inspects/s): engine inspects {:.1}, ticket store round trips {:.1}",
        idle_rate[2],
        idle_rate[0],
        net(0),
        net(2)
    );
    println!("\ntime from the Docker event to the drift being detected:");
    summary("event -> drift detected", detect);
    println!("\nreproduce: cargo bench --bench recovery -- {rounds}");
}
