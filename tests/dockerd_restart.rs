//! The Docker engine restarted under a running controller: it reconnects, re-lists and
//! repairs what went missing meanwhile. Uses a private engine so no other test is disturbed.

mod common;

use std::time::Duration;

use common::operator::{is_running, state, wait_until};
use common::{BUSYBOX_IMAGE, Fixture, PrivateDockerd, require_docker};

#[test]
fn controller_survives_a_dockerd_restart_and_repairs_what_is_missing() {
    require_docker();
    let mut engine = PrivateDockerd::new();
    engine.import_busybox();
    let host = engine.host();
    // The private engine has no bridge: host networking only.
    let f = Fixture::builder("restart")
        .docker_host(&host)
        .manifest("svc.yaml", |cluster| {
            format!(
                r#"apiVersion: operator/v1
kind: Cluster
metadata:
  name: {cluster}
spec:
  services:
    - name: {cluster}-svc
      image: {BUSYBOX_IMAGE}
      networkMode: host
      command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
      remediation:
        backoff: {{initial: 200ms, max: 2s}}
"#
            )
        })
        .resync("3s")
        .start();
    let (name, operator) = (f.name("svc"), &f.operator);
    assert!(
        wait_until(Duration::from_secs(60), || is_running(&name, Some(&host))),
        "not created; log:\n{}",
        operator.log()
    );
    let (_, first_id) = state(&name, Some(&host)).unwrap();

    engine.kill();
    assert!(
        wait_until(Duration::from_secs(30), || operator
            .http_get("/healthz")
            .1
            .contains("event stream disconnected")),
        "the lost stream was not noticed: healthz {:?}; log:\n{}",
        operator.http_get("/healthz"),
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
    // The lost stream was a reason to list the engine again (served at 0 from the start, so
    // 0 here means the watcher never counted the error, not an unknown series)...
    let relists = operator.served_metric("operator_watch_relists_total{reason=\"error\"}");
    assert!(
        relists >= 1.0,
        "operator_watch_relists_total{{reason=\"error\"}} is {relists}, not >= 1; metrics:\n{}",
        operator.http_get("/metrics").1
    );
    let restarts = operator.metric("operator_watch_restarts_total");
    assert!(
        restarts.is_some_and(|n| n >= 1.0),
        "operator_watch_restarts_total is {restarts:?}, not >= 1; metrics:\n{}",
        operator.http_get("/metrics").1
    );
    // ... and that list completed: the watcher says it is connected again (healthz 200) only
    // once a full list is in the observed store.
    assert!(
        wait_until(Duration::from_secs(30), || operator
            .http_get("/healthz")
            .0
            .contains("200")),
        "healthz never recovered after the engine restart: {:?}; log:\n{}",
        operator.http_get("/healthz"),
        operator.log()
    );
}
