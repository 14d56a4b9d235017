//! Helpers shared by the benchmark programs.
#![allow(dead_code)]

use std::process::Command;
use std::time::{Duration, Instant};

/// Runs the docker CLI; panics with its stderr on failure.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Waits (bounded) until the container runs.
pub fn wait_running(name: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let out = Command::new("docker")
            .args(["inspect", "-f", "{{.State.Running}}", name])
            .output()
            .expect("run docker");
        if String::from_utf8_lossy(&out.stdout).trim() == "true" {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Prints one row of figures; returns the median.
pub fn summary(label: &str, mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let p50 = percentile(&xs, 50.0);
    println!(
        "{label:<44} n={:<3} p50={:>9.2} ms  p90={:>9.2} ms  p99={:>9.2} ms  max={:>9.2} ms",
        xs.len(),
        p50,
        percentile(&xs, 90.0),
        percentile(&xs, 99.0),
        xs.last().copied().unwrap_or(f64::NAN)
    );
    p50
}
