//! Ticket benchmark, on the path the controller records drift on.
//!
//! 1. Throughput of drift sightings recorded with dedup (the same drift every time, so every
//!    write after the first is the upsert path), in one process, through a
//!    `tickets::Journal` built as `operator run` builds it (`Journal::new(store, metrics)` over
//!    one `Store`) and its async `sighting`, the call a reconcile makes for each drift it
//!    finds: one store call on a blocking thread, plus the journal's metrics. 1 task, and 8
//!    tasks sharing one journal the way the controller's workers do.
//! 2. Time from a Docker `die` event to the ticket row being committed, with the release
//!    `operator run` against a real engine (needs `scripts/setup.sh`): the controller's own
//!    journal writes the row; this program only reads the database (a `Store` of its own,
//!    polled every millisecond), so the figure is the controller's.
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
use operator::metrics::Metrics;
use operator::tickets::{DriftSighting, Journal, Store};
use stats::summary;

/// The sighting a reconcile records for a container that exited on a SIGKILL.
fn stopped(fp: &Fingerprint) -> DriftSighting {
    DriftSighting {
        fingerprint: fp.clone(),
        drift: DriftKind::Stopped,
        detail: "exited with code 137".into(),
        cooldown: Duration::from_secs(600),
        evidence: None,
    }
}

/// Sightings per second with `tasks` tokio tasks sharing one journal.
fn throughput(tasks: usize, sightings: usize) -> f64 {
    let db = std::env::temp_dir().join(format!("bench-tickets-{}-{tasks}.db", std::process::id()));
    remove_db(&db);
    let store = Arc::new(Store::open(&db).expect("open"));
    let journal = Journal::new(store.clone(), Arc::new(Metrics::new()));
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
                let journal = journal.clone();
                let fp = fp.clone();
                tokio::spawn(async move {
                    for _ in 0..per_task {
                        journal
                            .sighting(stopped(&fp), chrono::Utc::now())
                            .await
                            .expect("record a sighting");
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
    // Only to read: the rows are written by the controller's own journal, in its process.
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
        "drift sightings recorded per second through the controller's Journal (same drift: dedup upsert), {sightings} each, 3 runs:"
    );
    for tasks in [1, 8] {
        let mut rates: Vec<f64> = (0..3).map(|_| throughput(tasks, sightings)).collect();
        rates.sort_by(|a, b| a.total_cmp(b));
        println!(
            "  {tasks} task(s): median {:>8.0}/s  (min {:.0}, max {:.0})",
            rates[1], rates[0], rates[2]
        );
    }
    println!(
        "\ntime from a Docker die event to the ticket row committed by operator run ({kills} SIGKILLs):"
    );
    summary("die -> ticket committed", die_to_ticket(kills));
    println!("\nreproduce: cargo bench --bench tickets -- {sightings} {kills}");
}
