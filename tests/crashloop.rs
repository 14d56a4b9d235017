//! A container that exits at once is restarted with growing delays, then escalated once its
//! restart budget is spent.

mod common;

use std::time::Duration;

use common::operator::{OperatorProcess, TempDir, wait_until};
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
    let gaps: Vec<f64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.windows(2).all(|g| g[1] > g[0]),
        "delays between restarts must grow: {gaps:?}"
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
    assert!(wait_until(Duration::from_secs(1), || true));
}
