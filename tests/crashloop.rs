//! A container that exits at once is restarted with growing delays, then escalated once its
//! restart budget is spent.

mod common;

use std::time::Duration;

use common::operator::{OperatorProcess, TempDir, epoch_now, event_times};
use common::{BUSYBOX_IMAGE, Cleanup, require_docker, unique};

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
    let since = epoch_now() - 1.0;
    let operator = OperatorProcess::start(&[dir.path()], &["--resync", "1s"], None);
    operator.wait_ready();
    assert!(
        operator.wait_for_log("restart budget spent", Duration::from_secs(60)),
        "never escalated; log:\n{}",
        operator.log()
    );
    // Well past the next backoff (3.2 s) and several resyncs: nothing more may happen.
    std::thread::sleep(Duration::from_secs(5));
    let starts = event_times(&name, "start", since);
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
    // One drift episode, one ticket: escalated, not one ticket per crash.
    let tickets = operator.tickets_json();
    assert_eq!(tickets.len(), 1, "{tickets:#?}");
    assert_eq!(tickets[0]["status"], "escalated");
    assert_eq!(tickets[0]["drift"], "crash-looping");
    assert_eq!(tickets[0]["service"], name.as_str());
    assert!(
        tickets[0]["occurrences"].as_i64().unwrap() >= 4,
        "every crash is counted on it"
    );
    // Whether a reconcile caught the container running between two crashes (which resolves
    // the ticket and reopens it as a flap) is timing; either way, all three restarts are on
    // this one ticket's timeline.
    let id = tickets[0]["id"].to_string();
    let shown = operator.tickets(&["show", &id, "--json"]);
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("show --json");
    let started = shown["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "action-started")
        .count();
    assert_eq!(
        started, 3,
        "the three budgeted restarts are recorded on it: {shown:#}"
    );
}
