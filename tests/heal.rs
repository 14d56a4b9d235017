//! The controller repairs drift on a real Docker engine: kill, rm, pause, network detach,
//! spec change; and leaves containers it does not own alone.

mod common;

use std::time::Duration;

use common::operator::{OperatorProcess, TempDir, inspect, is_running, state, wait_until};
use common::{BUSYBOX_IMAGE, Cleanup, TEST_LABEL, docker, docker_ok, require_docker, unique};

/// A process that exits promptly on SIGTERM (busybox `sleep` as PID 1 would ignore it).
const LOOP: &str = r#"["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]"#;

fn manifest(cluster: &str, env_value: &str) -> String {
    format!(
        r#"apiVersion: operator/v1
kind: Cluster
metadata:
  name: {cluster}
spec:
  network:
    name: {cluster}-net
    internal: true
  services:
    - name: {cluster}-db
      image: {BUSYBOX_IMAGE}
      command: {LOOP}
      env:
        ROLE: db
      remediation:
        maxRestarts: 20
        backoff: {{initial: 200ms, max: 2s}}
    - name: {cluster}-app
      image: {BUSYBOX_IMAGE}
      command: {LOOP}
      dependsOn: [{cluster}-db]
      env:
        VERSION: "{env_value}"
      remediation:
        maxRestarts: 20
        backoff: {{initial: 200ms, max: 2s}}
"#
    )
}

struct Fixture {
    cluster: String,
    dir: TempDir,
    operator: OperatorProcess,
    // Dropped last: the controller is gone before cleanup, so nothing is recreated.
    _cleanup: Cleanup,
}

impl Fixture {
    fn start(prefix: &str) -> Fixture {
        require_docker();
        let cluster = unique(prefix);
        let cleanup = Cleanup::new(format!("operator.cluster={cluster}"));
        let dir = TempDir::new(&cluster);
        dir.write("cluster.yaml", &manifest(&cluster, "1"));
        let operator = OperatorProcess::start(&[dir.path()], &["--resync", "5s"], None);
        operator.wait_ready();
        let fixture = Fixture {
            cluster,
            dir,
            operator,
            _cleanup: cleanup,
        };
        for service in ["db", "app"] {
            let name = fixture.name(service);
            assert!(
                wait_until(Duration::from_secs(60), || is_running(&name, None)),
                "{name} never ran; log:\n{}",
                fixture.operator.log()
            );
        }
        fixture
    }

    fn name(&self, service: &str) -> String {
        format!("{}-{service}", self.cluster)
    }

    fn wait_running(&self, name: &str, what: &str) {
        assert!(
            wait_until(Duration::from_secs(60), || is_running(name, None)),
            "{name} was not repaired after {what}; state {:?}; log:\n{}",
            state(name, None),
            self.operator.log()
        );
    }
}

#[test]
fn sigkilled_container_is_running_again_in_place() {
    let f = Fixture::start("kill");
    let name = f.name("db");
    let (_, id) = state(&name, None).unwrap();
    docker_ok(&["kill", "--signal", "KILL", &name]);
    f.wait_running(&name, "SIGKILL");
    let (_, id_after) = state(&name, None).unwrap();
    assert_eq!(
        id, id_after,
        "a killed container is started again, not replaced"
    );
    assert!(
        f.operator
            .count_log(&["repairing", &name, "\"action\":\"start\""])
            >= 1
    );
}

#[test]
fn removed_container_is_recreated() {
    let f = Fixture::start("rm");
    let name = f.name("app");
    let (_, id) = state(&name, None).unwrap();
    docker_ok(&["rm", "-f", &name]);
    f.wait_running(&name, "docker rm -f");
    let (_, id_after) = state(&name, None).unwrap();
    assert_ne!(id, id_after);
    let c = inspect(&name, None).unwrap();
    assert_eq!(c["Config"]["Labels"]["operator.managed-by"], "operator");
    assert!(
        c["NetworkSettings"]["Networks"]
            .get(format!("{}-net", f.cluster))
            .is_some(),
        "recreated container joins the cluster network"
    );
}

#[test]
fn paused_container_is_unpaused() {
    let f = Fixture::start("pause");
    let name = f.name("db");
    docker_ok(&["pause", &name]);
    f.wait_running(&name, "docker pause");
    assert!(
        f.operator
            .count_log(&["repairing", &name, "\"action\":\"unpause\""])
            >= 1
    );
}

#[test]
fn detached_network_is_reconnected() {
    let f = Fixture::start("net");
    let name = f.name("db");
    let network = format!("{}-net", f.cluster);
    docker_ok(&["network", "disconnect", &network, &name]);
    assert!(
        wait_until(Duration::from_secs(60), || {
            inspect(&name, None)
                .is_some_and(|c| c["NetworkSettings"]["Networks"].get(&network).is_some())
        }),
        "{name} was not reconnected to {network}; log:\n{}",
        f.operator.log()
    );
}

#[test]
fn spec_change_in_the_manifest_is_rolled_out_by_recreating() {
    let f = Fixture::start("spec");
    let name = f.name("app");
    let (_, id) = state(&name, None).unwrap();
    f.dir.write("cluster.yaml", &manifest(&f.cluster, "2"));
    let has_new_env = || {
        inspect(&name, None).is_some_and(|c| {
            c["State"]["Status"] == "running"
                && c["Config"]["Env"]
                    .as_array()
                    .is_some_and(|env| env.iter().any(|e| e == "VERSION=2"))
        })
    };
    assert!(
        wait_until(Duration::from_secs(60), has_new_env),
        "the new spec was not rolled out; log:\n{}",
        f.operator.log()
    );
    let (_, id_after) = state(&name, None).unwrap();
    assert_ne!(id, id_after, "a spec change recreates the container");
    // The other service's spec did not change: it keeps its container.
    assert!(
        f.operator
            .count_log(&["repairing", &f.name("db"), "recreate"])
            == 0
    );
}

#[test]
fn invalid_edit_is_rejected_and_the_last_good_state_kept() {
    let f = Fixture::start("badedit");
    let name = f.name("db");
    let (_, id) = state(&name, None).unwrap();
    f.dir.write(
        "cluster.yaml",
        &manifest(&f.cluster, "1")
            .replace("maxRestarts: 20", "maxRestarts: 20\n        bogusField: 1"),
    );
    assert!(
        f.operator
            .wait_for_log("manifest edit rejected", Duration::from_secs(30)),
        "log:\n{}",
        f.operator.log()
    );
    // Still managed: a kill is still repaired, and the container was not replaced.
    docker_ok(&["kill", "--signal", "KILL", &name]);
    f.wait_running(&name, "SIGKILL after a rejected edit");
    assert_eq!(state(&name, None).unwrap().1, id);
}

#[test]
fn unmanaged_containers_are_left_alone() {
    require_docker();
    let cluster = unique("foreign");
    let _cleanup = Cleanup::new(format!("operator.cluster={cluster}"));
    let foreign_label = format!("operator.test.foreign={cluster}");
    let _foreign_cleanup = Cleanup::new(foreign_label.clone());
    // A foreign container already holds the name of a declared service.
    let squatter = format!("{cluster}-db");
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &squatter,
        "--label",
        TEST_LABEL,
        "--label",
        &foreign_label,
        "--network",
        "none",
        BUSYBOX_IMAGE,
        "sleep",
        "100000",
    ]);
    // Another foreign container, killed while the controller runs.
    let bystander = format!("{cluster}-bystander");
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &bystander,
        "--label",
        TEST_LABEL,
        "--label",
        &foreign_label,
        "--network",
        "none",
        BUSYBOX_IMAGE,
        "sleep",
        "100000",
    ]);
    let (_, squatter_id) = state(&squatter, None).unwrap();

    let dir = TempDir::new(&cluster);
    dir.write("cluster.yaml", &manifest(&cluster, "1"));
    let operator = OperatorProcess::start(&[dir.path()], &["--resync", "1s"], None);
    operator.wait_ready();
    assert!(
        operator.wait_for_log("not managed by operator", Duration::from_secs(30)),
        "the name conflict was not reported; log:\n{}",
        operator.log()
    );
    docker_ok(&["kill", "--signal", "KILL", &bystander]);
    // Give the controller several resyncs to misbehave.
    std::thread::sleep(Duration::from_secs(4));
    let (squatter_state, id_now) =
        state(&squatter, None).expect("the foreign container still exists");
    assert_eq!(id_now, squatter_id, "the foreign container was replaced");
    assert_eq!(squatter_state, "running");
    assert!(
        inspect(&squatter, None).unwrap()["Config"]["Labels"]
            .get("operator.managed-by")
            .is_none()
    );
    let (bystander_state, _) = state(&bystander, None).unwrap();
    assert_eq!(
        bystander_state, "exited",
        "the controller restarted a container it does not own"
    );
    // The dependent service waits for its dependency, which it cannot create.
    assert!(!is_running(&format!("{cluster}-app"), None));
    let out = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=operator.cluster={cluster}"),
        "-q",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "nothing of the cluster was created"
    );
}

#[test]
fn metrics_and_healthz_are_served_on_loopback() {
    let f = Fixture::start("metrics");
    let (status, body) = f.operator.http_get("/healthz");
    assert!(status.contains("200"), "{status} {body}");
    docker_ok(&["kill", "--signal", "KILL", &f.name("db")]);
    f.wait_running(&f.name("db"), "SIGKILL");
    let (status, body) = f.operator.http_get("/metrics");
    assert!(status.contains("200"), "{status}");
    for name in [
        "operator_reconcile_total",
        "operator_reconcile_duration_seconds_bucket",
        "operator_workqueue_depth",
        "operator_drifts_detected_total{kind=\"stopped\"}",
        "operator_actions_total{kind=\"start\",result=\"ok\"}",
        "operator_watch_restarts_total",
        "operator_event_to_drift_seconds_count",
    ] {
        assert!(body.contains(name), "missing {name} in\n{body}");
    }
    assert!(f.operator.listen_addr().unwrap().starts_with("127.0.0.1:"));
}

#[test]
fn sigterm_stops_the_controller_cleanly() {
    let mut f = Fixture::start("term");
    let status = f.operator.stop().expect("operator exits on SIGTERM");
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        f.operator.log()
    );
    assert!(f.operator.log().contains("shutting down"));
    // Containers stay: stopping the controller is not stopping the cluster.
    assert!(is_running(&f.name("db"), None));
}

#[test]
fn an_image_that_cannot_be_had_is_a_clear_drift_not_a_crash() {
    require_docker();
    let cluster = unique("noimage");
    let _cleanup = Cleanup::new(format!("operator.cluster={cluster}"));
    let dir = TempDir::new(&cluster);
    // The registry is on loopback (nothing listens there): the pull fails at once and no
    // traffic leaves the machine.
    let manifest = manifest(&cluster, "1").replacen(
        &format!("image: {BUSYBOX_IMAGE}"),
        "image: 127.0.0.1:9/operator-test/absent:1",
        1,
    );
    dir.write("cluster.yaml", &manifest);
    let operator = OperatorProcess::start(&[dir.path()], &["--resync", "1s"], None);
    operator.wait_ready();
    assert!(
        operator.wait_for_log("could not be pulled", Duration::from_secs(60)),
        "log:\n{}",
        operator.log()
    );
    let out = common::operator::operator(&["status", dir.path().to_str().unwrap(), "--json"], None);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    let db = rows["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["service"] == format!("{cluster}-db"))
        .unwrap();
    assert_eq!(db["drifts"][0]["kind"], "image-missing");
    // The controller is still alive and still serving.
    let (status, _) = operator.http_get("/healthz");
    assert!(status.contains("200"), "{status}");
}

#[test]
fn unhealthy_container_is_restarted_then_escalated_when_it_stays_unhealthy() {
    require_docker();
    let cluster = unique("sick");
    let _cleanup = Cleanup::new(format!("operator.cluster={cluster}"));
    let name = format!("{cluster}-sick");
    let dir = TempDir::new(&cluster);
    dir.write(
        "sick.yaml",
        &format!(
            r#"apiVersion: operator/v1
kind: Cluster
metadata:
  name: {cluster}
spec:
  network: {{name: {cluster}-net, internal: true}}
  services:
    - name: {name}
      image: {BUSYBOX_IMAGE}
      command: {LOOP}
      healthcheck:
        test: ["CMD", "false"]
        interval: 300ms
        timeout: 1s
        retries: 1
      remediation:
        maxRestarts: 2
        backoff: {{initial: 200ms, max: 1s}}
"#
        ),
    );
    let operator = OperatorProcess::start(&[dir.path()], &["--resync", "1s"], None);
    operator.wait_ready();
    assert!(
        operator.wait_for_log("restart budget spent", Duration::from_secs(60)),
        "log:\n{}",
        operator.log()
    );
    assert_eq!(
        operator.count_log(&["repairing", &name, "unhealthy", "\"action\":\"restart\""]),
        2,
        "two restarts (the budget), then escalation; log:\n{}",
        operator.log()
    );
    // Escalated, not killed: the controller leaves the (running, unhealthy) container be.
    assert!(is_running(&name, None));
}
