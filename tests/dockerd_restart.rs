//! The Docker engine restarted under a running controller: it reconnects, re-lists and
//! repairs what went missing meanwhile. Uses a private engine so no other test is disturbed.

mod common;

use std::time::Duration;

use common::operator::{OperatorProcess, TempDir, is_running, state, wait_until};
use common::{BUSYBOX_IMAGE, PrivateDockerd, require_docker, unique};

#[test]
fn controller_survives_a_dockerd_restart_and_repairs_what_is_missing() {
    require_docker();
    let mut engine = PrivateDockerd::new();
    engine.import_busybox();
    let host = engine.host();
    let cluster = unique("restart");
    let name = format!("{cluster}-svc");
    let dir = TempDir::new(&cluster);
    // The private engine has no bridge: host networking only.
    dir.write(
        "svc.yaml",
        &format!(
            r#"apiVersion: operator/v1
kind: Cluster
metadata:
  name: {cluster}
spec:
  services:
    - name: {name}
      image: {BUSYBOX_IMAGE}
      networkMode: host
      command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
      remediation:
        backoff: {{initial: 200ms, max: 2s}}
"#
        ),
    );
    let operator = OperatorProcess::start(&[dir.path()], &["--resync", "3s"], Some(&host));
    operator.wait_ready();
    assert!(
        wait_until(Duration::from_secs(60), || is_running(&name, Some(&host))),
        "not created; log:\n{}",
        operator.log()
    );
    let (_, first_id) = state(&name, Some(&host)).unwrap();

    engine.kill();
    assert!(
        operator.wait_for_log("docker watch lost", Duration::from_secs(30)),
        "the lost stream was not noticed; log:\n{}",
        operator.log()
    );
    let (status, _) = operator.http_get("/healthz");
    assert!(
        status.contains("503"),
        "healthz while the engine is down: {status}"
    );
    engine.start();
    // Make something go missing right after the restart: the re-list must catch it.
    engine.docker(&["rm", "-f", &name]);
    assert!(
        wait_until(Duration::from_secs(90), || {
            state(&name, Some(&host)).is_some_and(|(s, id)| s == "running" && id != first_id)
        }),
        "not repaired after the engine restart; state {:?}; log:\n{}",
        state(&name, Some(&host)),
        operator.log()
    );
    assert!(
        operator.count_log(&["docker list complete"]) >= 2,
        "re-listed after reconnecting"
    );
    let (status, metrics) = operator.http_get("/metrics");
    assert!(status.contains("200"));
    assert!(
        !metrics.contains("operator_watch_restarts_total 0"),
        "{metrics}"
    );
    assert!(wait_until(Duration::from_secs(30), || operator
        .http_get("/healthz")
        .0
        .contains("200")));
}
