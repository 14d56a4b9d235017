//! Ticket store benchmark.
//!
//! 1. Throughput of drift sightings recorded with dedup (the same drift, so every write is
//!    the upsert path), in one process: 1 task, and 8 tasks sharing one store the way the
//!    controller's workers do (one connection, calls on blocking threads).
//! 2. Time from a Docker `die` event to the ticket row being committed, with the controller
//!    running against a real engine (needs `scripts/setup.sh`).
//!
//!     cargo bench --bench tickets -- [SIGHTINGS] [KILLS]      (defaults 20000 and 30)

#[path = "../tests/common/mod.rs"]
mod common;
mod stats;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::operator::{epoch_now, remove_db};
use common::{BUSYBOX_IMAGE as IMAGE, Fixture, docker_ok};
use operator::drift::{DriftKind, Fingerprint};
use operator::tickets::{DriftSighting, Store};
use stats::summary;

fn record(store: &Store, fp: &Fingerprint) {
    store
        .record_drift(
            &DriftSighting {
                fingerprint: fp.clone(),
                drift: DriftKind::Stopped,
                detail: "exited with code 137".into(),
                cooldown: Duration::from_secs(600),
                evidence: None,
            },
            chrono::Utc::now(),
        )
        .expect("record a sighting");
}

/// Sightings per second with `tasks` tokio tasks sharing one store.
fn throughput(tasks: usize, sightings: usize) -> f64 {
    let db = std::env::temp_dir().join(format!("bench-tickets-{}-{tasks}.db", std::process::id()));
    remove_db(&db);
    let store = Arc::new(Store::open(&db).expect("open"));
    let fp = Fingerprint::service("bench", "svc", DriftKind::Stopped);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    runtime.block_on(async {
        let per_task = sightings / tasks;
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let store = store.clone();
                let fp = fp.clone();
                tokio::spawn(async move {
                    for _ in 0..per_task {
                        let (store, fp) = (store.clone(), fp.clone());
                        tokio::task::spawn_blocking(move || record(&store, &fp))
                            .await
                            .expect("blocking task");
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.expect("task");
        }
    });
    let rate = (sightings / tasks * tasks) as f64 / started.elapsed().as_secs_f64();
    let tickets = store.list(None).expect("list");
    assert_eq!(tickets.len(), 1, "dedup failed");
    remove_db(&db);
    rate
}

/// Newest `last_seen_at` among the tickets, as seconds since the epoch.
fn newest_sighting(store: &Store) -> f64 {
    store
        .list(None)
        .unwrap_or_default()
        .iter()
        .map(|t| t.last_seen_at.timestamp_micros() as f64 / 1e6)
        .fold(0.0, f64::max)
}

/// Die event (engine clock) to the ticket row committed (seen by polling the database every
/// millisecond from this process), over `kills` SIGKILLs.
fn die_to_ticket(kills: usize) -> Vec<f64> {
    // Stopped, and its container and database removed, on return and on panic.
    let f = Fixture::builder("benchtk")
        .manifest("m.yaml", |cluster| {
            format!(
                "apiVersion: operator/v1\nkind: Cluster\nmetadata:\n  name: {cluster}\nspec:\n  services:\n    - name: {cluster}-svc\n      image: {IMAGE}\n      networkMode: host\n      command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n      remediation:\n        maxRestarts: 100000\n        stableAfter: 500ms\n        backoff: {{initial: 100ms, max: 1s}}\n"
            )
        })
        .start();
    let name = f.name("svc");
    f.wait_running(&name, "the start");
    std::thread::sleep(Duration::from_secs(1));
    let store = Store::open(f.db()).expect("open the controller's database");
    let mut events = Command::new("docker")
        .args([
            "events",
            "--filter",
            &format!("container={name}"),
            "--filter",
            "event=die",
            "--format",
            "{{.TimeNano}}",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("docker events");
    let mut lines = BufReader::new(events.stdout.take().expect("stdout")).lines();
    let mut latencies = Vec::new();
    for _ in 0..kills {
        let before = newest_sighting(&store);
        let pid = docker_ok(&["inspect", "-f", "{{.State.Pid}}", &name]);
        let _ = Command::new("kill").args(["-KILL", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        let seen_at = loop {
            if newest_sighting(&store) > before {
                break Some(epoch_now());
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let die = lines
            .next()
            .and_then(|l| l.ok())
            .and_then(|l| l.trim().parse::<f64>().ok())
            .map(|n| n / 1e9);
        if let (Some(seen), Some(die)) = (seen_at, die) {
            latencies.push((seen - die) * 1e3);
        }
        f.wait_running(&name, "a SIGKILL");
        std::thread::sleep(Duration::from_millis(1200));
    }
    let _ = events.kill();
    let _ = events.wait();
    latencies
}

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse::<usize>().ok());
    let sightings = args.next().unwrap_or(20_000);
    let kills = args.next().unwrap_or(30);

    println!(
        "drift sightings recorded per second (same drift: dedup upsert), {sightings} each, 3 runs:"
    );
    for tasks in [1, 8] {
        let mut rates: Vec<f64> = (0..3).map(|_| throughput(tasks, sightings)).collect();
        rates.sort_by(|a, b| a.total_cmp(b));
        println!(
            "  {tasks} task(s): median {:>8.0}/s  (min {:.0}, max {:.0})",
            rates[1], rates[0], rates[2]
        );
    }
    println!("\ntime from a Docker die event to the ticket row committed ({kills} SIGKILLs):");
    summary("die -> ticket committed", die_to_ticket(kills));
    println!("\nreproduce: cargo bench --bench tickets -- {sightings} {kills}");
}
