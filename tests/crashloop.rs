//! A container that exits at once is restarted with growing delays, then escalated once its
//! restart budget is spent.

mod common;

use std::time::Duration;

use common::operator::{OperatorProcess, TempDir};
use common::{BUSYBOX_IMAGE, Cleanup, docker_ok, require_docker, unique};

/// Engine-clock start times of a container, from the event log.
fn start_times(name: &str, since: &str) -> Vec<f64> {
    let until = format!("{}", chrono_now());
    let out = docker_ok(&[
        "events",
        "--since",
        since,
        "--until",
        &until,
        "--filter",
        &format!("container={name}"),
        "--filter",
        "event=start",
        "--format",
        "{{.TimeNano}}",
    ]);
    out.lines()
        .filter_map(|l| l.trim().parse::<f64>().ok())
        .map(|nanos| nanos / 1e9)
        .collect()
}

fn chrono_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn crash_looping_service_backs_off_then_escalates() {
    require_docker();
    let cluster = unique("crash");
    let _cleanup = Cleanup::new(format!("operator.cluster={cluster}"));
    let name = format!("{cluster}-fail");
    let dir = TempDir::new(&cluster);
    dir.write(
        "crash.yaml",
        &format!(
            r#"apiVersion: operator/v1
kind: Cluster
metadata:
  name: {cluster}
spec:
  network:
    name: {cluster}-net
    internal: true
  services:
    - name: {name}
      image: {BUSYBOX_IMAGE}
      command: ["sh", "-c", "exit 3"]
      remediation:
        maxRestarts: 3
        window: 10m
        backoff: {{initial: 400ms, max: 10s}}
"#
        ),
    );
    let since = format!("{:.3}", chrono_now() - 1.0);
    let operator = OperatorProcess::start(&[dir.path()], &["--resync", "1s"], None);
    operator.wait_ready();
    assert!(
        operator.wait_for_log("restart budget spent", Duration::from_secs(60)),
        "never escalated; log:\n{}",
        operator.log()
    );
    // Well past the next backoff (3.2 s) and several resyncs: nothing more may happen.
    std::thread::sleep(Duration::from_secs(5));
    let starts = start_times(&name, &since);
    assert_eq!(
        starts.len(),
        4,
        "one create + 3 budgeted restarts, then nothing; starts at {starts:?}; log:\n{}",
        operator.log()
    );
    // The delays the controller chose (its decision, not wall-clock measurements).
    let delays: Vec<u64> = operator
        .log()
        .lines()
        .filter(|l| l.contains("repairing") && l.contains(&name))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["retry_after_ms"].as_u64())
        .collect();
    assert_eq!(
        delays,
        vec![400, 800, 1600, 3200],
        "the create, then 3 restarts, each waiting twice as long"
    );
    assert_eq!(
        operator.count_log(&["restart budget spent", &name]),
        1,
        "escalation is logged once"
    );
    assert!(
        operator.count_log(&["crash-looping", &name]) >= 1,
        "the drift is called crash-looping"
    );
    let (_, metrics) = operator.http_get("/metrics");
    assert!(
        metrics.contains("operator_escalated_services 1"),
        "{metrics}"
    );
}
