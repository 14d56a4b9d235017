//! Recovery benchmark: time from SIGKILL to running again under this controller and under the
//! engine's own `--restart always`, side by side on the same image and command in one run,
//! plus the time from the Docker event to the drift being detected.
//!
//! Needs a Docker engine and the local images (`scripts/setup.sh`). Run:
//!
//!     cargo bench --bench recovery -- [ROUNDS]        (default 15 rounds)
//!
//! Each round SIGKILLs both containers' main process at once and reads the engine's own
//! `die` and `start` events (one clock for both). Rounds are 11 s apart because the engine
//! resets its restart backoff only after a container has run for 10 s; the controller's
//! `stableAfter` is set to the same 10 s so both start every round from a reset backoff.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[path = "../tests/common/mod.rs"]
mod common;
mod stats;

use common::{BUSYBOX_IMAGE as IMAGE, Fixture, TEST_LABEL, docker_ok};
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
    let fixture = Fixture::builder("bench");
    let engine_label = format!("operator.test.bench={}", fixture.cluster());
    let fixture = fixture.also_clean(engine_label.clone());
    let command = r#"["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]"#;
    let engine = format!("{}-engine", fixture.cluster());
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &engine,
        "--label",
        TEST_LABEL,
        "--label",
        &engine_label,
        "--network",
        "host",
        "--restart",
        "always",
        IMAGE,
        "sh",
        "-c",
        "trap 'exit 0' TERM; while true; do sleep 1; done",
    ]);
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
    let (mut events, rx) = follow_events(&[&managed, &engine]);
    std::thread::sleep(Duration::from_secs(11));

    let mut recovery = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        while rx.try_recv().is_ok() {}
        // Alternate who is killed first so neither is systematically ahead.
        let order = if round % 2 == 0 {
            [&managed, &engine]
        } else {
            [&engine, &managed]
        };
        for name in order {
            if let Some(pid) = pid_of(name) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
        let mut die = [None, None];
        let mut start = [None, None];
        let deadline = Instant::now() + Duration::from_secs(30);
        while (start[0].is_none() || start[1].is_none()) && Instant::now() < deadline {
            let Ok((name, action, t)) = rx.recv_timeout(Duration::from_millis(200)) else {
                continue;
            };
            let i = usize::from(name == engine);
            match action.as_str() {
                "die" => die[i] = Some(t),
                "start" if die[i].is_some() => start[i] = Some(t),
                _ => {}
            }
        }
        for i in 0..2 {
            if let (Some(d), Some(s)) = (die[i], start[i]) {
                recovery[i].push((s - d) as f64 / 1e6);
            }
        }
        eprintln!("round {}/{rounds} done", round + 1);
        std::thread::sleep(Duration::from_secs(11));
    }
    let _ = events.kill();
    let _ = events.wait();
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
    let theirs = summary("docker --restart always", recovery[1].clone());
    println!("ratio of medians operator / engine: {:.2}", ours / theirs);
    println!("\ntime from the Docker event to the drift being detected:");
    summary("event -> drift detected", detect);
    println!("\nreproduce: cargo bench --bench recovery -- {rounds}");
}
