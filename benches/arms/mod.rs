//! The third arm of the repair benchmarks: a poller that starts exited containers. Every
//! period (5 s) it lists the containers carrying one label that have exited
//! (`docker ps -a --filter label=... --filter status=exited -q`) and starts them all with
//! one `docker start` (the CLI starts them one after the other). Its containers run with
//! `--restart no`, so nothing else brings them back.
//!
//! It is not autoheal: autoheal restarts containers that are *unhealthy* (a failing
//! healthcheck) and leaves exited ones to the engine's restart policy; this arm knows no
//! health, only that a container exited. What it shares with autoheal is the interval
//! (`AUTOHEAL_INTERVAL`'s default, 5 s) and restarting one container after the other, so
//! its figure is that of any 5 s poller of exited containers: its next tick, then the starts.
//!
//! It runs in a thread of the benchmark; [`Poller`] stops it when dropped (also on panic).
//! Its containers are the benchmark's to label and clean up, like the engine arm's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::{BUSYBOX_IMAGE, TEST_LABEL, docker, docker_ok};

/// How the benchmarks print this arm: what it does, not a product it only resembles.
pub const LABEL: &str = "poller: starts exited ones every 5 s";

/// What every arm's container runs: a loop that ends at once on SIGTERM.
pub const COMMAND: &str = "trap 'exit 0' TERM; while true; do sleep 1; done";

/// Starts `name` for an arm the controller does not own (the engine's or the poller's):
/// labelled for the run, host network, the engine's restart policy `restart`.
pub fn run_arm_container(name: &str, label: &str, restart: &str) {
    docker_ok(&[
        "run",
        "-d",
        "--name",
        name,
        "--label",
        TEST_LABEL,
        "--label",
        label,
        "--network",
        "host",
        "--restart",
        restart,
        BUSYBOX_IMAGE,
        "sh",
        "-c",
        COMMAND,
    ]);
}

/// The poller's period: the same as autoheal's default interval (`AUTOHEAL_INTERVAL=5`),
/// though autoheal polls for unhealthy containers, not exited ones.
pub const POLL_PERIOD: Duration = Duration::from_secs(5);

/// A pause of 0 to [`POLL_PERIOD`], different every call: added to the wait before a kill,
/// it puts the kill at a random phase of the poller's schedule, as a real crash is (without
/// it, rounds of a fixed length hit the same phase every time and the poller's figure is
/// one point of its 0 to 5 s range, not its spread).
pub fn phase_jitter() -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    Duration::from_millis(h.finish() % POLL_PERIOD.as_millis() as u64)
}

/// A running poller of exited containers; stops (and joins its thread) on drop.
pub struct Poller {
    stop: Arc<AtomicBool>,
    started: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Poller {
    /// Starts polling for exited containers labelled `label` (`key=value`) every `period`,
    /// on a fixed schedule (a slow round does not shift the next ones), and starting them.
    pub fn start(label: &str, period: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Arc::new(AtomicUsize::new(0));
        let filter = format!("label={label}");
        let thread = {
            let (stop, started) = (stop.clone(), started.clone());
            std::thread::spawn(move || {
                let mut next = Instant::now() + period;
                while !stop.load(Ordering::Relaxed) {
                    // Sleep in short steps so a stop is quick.
                    let now = Instant::now();
                    if now < next {
                        std::thread::sleep((next - now).min(Duration::from_millis(100)));
                        continue;
                    }
                    while next <= Instant::now() {
                        next += period;
                    }
                    let out = docker(&[
                        "ps",
                        "-a",
                        "-q",
                        "--filter",
                        &filter,
                        "--filter",
                        "status=exited",
                    ]);
                    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                        .split_whitespace()
                        .map(str::to_string)
                        .collect();
                    if ids.is_empty() {
                        continue;
                    }
                    let mut args = vec!["start"];
                    args.extend(ids.iter().map(String::as_str));
                    let out = docker(&args);
                    if !out.status.success() {
                        eprintln!(
                            "[poller] docker start failed: {}",
                            String::from_utf8_lossy(&out.stderr).trim()
                        );
                    }
                    started.fetch_add(ids.len(), Ordering::Relaxed);
                }
            })
        };
        Poller {
            stop,
            started,
            thread: Some(thread),
        }
    }

    /// Containers it has started so far.
    pub fn started(&self) -> usize {
        self.started.load(Ordering::Relaxed)
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
