//! Stopping a service's container: `stopTimeout` and `stopSignal` reach the engine, every stop
//! the controller makes passes the service's timeout, and a frozen (SIGSTOPped) main process
//! is killed at once instead of being waited on.
//!
//! No test here reads a clock. The timeouts are chosen so that waiting where the controller
//! must not wait would take ten minutes, far past the tests' bounds on waiting.

mod common;

use std::process::Command;
use std::time::Duration;

use common::operator::{inspect, state, wait_until};
use common::{BUSYBOX_IMAGE, Fixture, cluster_yaml};

/// A PID 1 that ignores SIGTERM: a stop always waits the whole timeout, then kills.
const DEAF: &str = r#"["sh", "-c", "trap '' TERM; while :; do sleep 1; done"]"#;

fn deaf_service(cluster: &str, stop_timeout: &str, version: &str) -> String {
    cluster_yaml(
        cluster,
        &format!(
            r#"    - name: {cluster}-app
      image: {BUSYBOX_IMAGE}
      networkMode: host
      command: {DEAF}
      env: {{VERSION: "{version}"}}
      stopTimeout: {stop_timeout}
      stopSignal: term
"#
        ),
    )
}

/// `Config.StopTimeout` and `Config.StopSignal` of a container, as the engine has them.
fn stop_config(c: &serde_json::Value) -> (Option<i64>, Option<&str>) {
    (
        c["Config"]["StopTimeout"].as_i64(),
        c["Config"]["StopSignal"].as_str(),
    )
}

#[test]
fn a_rollout_stops_the_old_container_with_the_services_timeout_not_its_own() {
    // Created with 10 minutes: a stop that trusted the container's own StopTimeout would wait
    // that long on this SIGTERM-deaf process. The edit sets 1s, which the controller passes.
    let f = Fixture::builder("stoproll")
        .manifest("cluster.yaml", |c| deaf_service(c, "10m", "1"))
        .resync("1s")
        .start();
    let name = f.name("app");
    f.wait_running(&name, "the start");
    let old = inspect(&name, None).expect("created");
    assert_eq!(stop_config(&old), (Some(600), Some("SIGTERM")), "{old:#}");

    f.dir
        .write("cluster.yaml", &deaf_service(&f.cluster, "1s", "2"));
    let rolled_out = || {
        inspect(&name, None).is_some_and(|c| {
            c["State"]["Status"] == "running"
                && c["Config"]["Env"]
                    .as_array()
                    .is_some_and(|env| env.iter().any(|e| e == "VERSION=2"))
        })
    };
    assert!(
        wait_until(Duration::from_secs(60), rolled_out),
        "the edit was not rolled out; state {:?}; log:\n{}",
        state(&name, None),
        f.operator.log()
    );
    let new = inspect(&name, None).expect("recreated");
    assert_ne!(
        new["Id"], old["Id"],
        "a spec change recreates the container"
    );
    assert_eq!(stop_config(&new), (Some(1), Some("SIGTERM")), "{new:#}");
    let recreates = r#"operator_actions_total{kind="recreate",result="ok"}"#;
    assert!(
        wait_until(Duration::from_secs(10), || f.operator.metric(recreates)
            == Some(1.0)),
        "the recreate finished once: {:?}",
        f.operator.metric(recreates)
    );
}

/// `kill SIGNAL PID` on the host (the tests run as root, like the engine).
fn kill(signal: &str, pid: i64) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} {pid}: {status}");
}

#[test]
fn a_frozen_container_is_restarted_without_waiting_its_stop_timeout() {
    // PID 1 leaves a heartbeat file every second; the probe takes it away and fails when
    // none came back. Frozen with SIGSTOP, the process stops beating: unhealthy, so the
    // controller restarts it. With a 10 minute stopTimeout, only the kill-at-once of a
    // frozen process lets that restart finish inside the test's bound.
    let f = Fixture::builder("stopfrozen")
        .manifest("cluster.yaml", |c| {
            cluster_yaml(
                c,
                &format!(
                    r#"    - name: {c}-beat
      image: {BUSYBOX_IMAGE}
      networkMode: host
      command: ["sh", "-c", "while :; do touch /tmp/beat; sleep 1; done"]
      stopTimeout: 10m
      healthcheck:
        test: rm /tmp/beat
        interval: 2s
        timeout: 1s
        retries: 2
      remediation:
        backoff: {{initial: 200ms, max: 1s}}
"#
                ),
            )
        })
        .resync("1s")
        .start();
    let name = f.name("beat");
    let healthy =
        || inspect(&name, None).is_some_and(|c| c["State"]["Health"]["Status"] == "healthy");
    assert!(
        wait_until(Duration::from_secs(30), healthy),
        "never healthy; log:\n{}",
        f.operator.log()
    );
    let before = inspect(&name, None).expect("running");
    let pid = before["State"]["Pid"].as_i64().expect("a pid");
    kill("-STOP", pid);
    // The engine still says `running`: a frozen process is not a paused container.
    let c = inspect(&name, None).expect("still there");
    assert_eq!(c["State"]["Status"], "running", "{:#}", c["State"]);

    let restarted = || {
        inspect(&name, None).is_some_and(|c| {
            c["State"]["Status"] == "running"
                && c["State"]["StartedAt"] != before["State"]["StartedAt"]
        })
    };
    assert!(
        wait_until(Duration::from_secs(60), restarted),
        "the frozen container was not restarted; state {:#}; tickets {:#?}; log:\n{}",
        inspect(&name, None)
            .map(|c| c["State"].clone())
            .unwrap_or_default(),
        f.tickets(),
        f.operator.log()
    );
    let after = inspect(&name, None).expect("running");
    assert_eq!(
        after["Id"], before["Id"],
        "restarted in place, not replaced"
    );
    assert_ne!(after["State"]["Pid"], before["State"]["Pid"]);
    // The controller did it, with a restart, and its re-check closed the episode.
    assert!(
        wait_until(Duration::from_secs(30), || f
            .ticket("unhealthy", &name)
            .is_some_and(
                |t| t["status"] == "resolved" && t["resolved_by"] == "controller"
            )),
        "no unhealthy ticket resolved by the controller: {:#?}",
        f.tickets()
    );
    let id = f.ticket("unhealthy", &name).unwrap()["id"]
        .as_i64()
        .unwrap();
    let actions = f.operator.timeline(id, "action-started");
    assert!(
        !actions.is_empty() && actions.iter().all(|e| e["detail"]["action"] == "restart"),
        "{actions:#?}"
    );
}
