//! The controller repairs drift on a real Docker engine: kill, rm, pause, network detach,
//! spec change; and leaves containers it does not own alone.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use common::operator::{inspect, is_running, state, tcp_listeners, wait_until};
use common::{BUSYBOX_IMAGE, Fixture, LOOP, TEST_LABEL, cluster_yaml, docker, docker_ok};

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

/// Two services (`db`, and `app` depending on it) on an internal network, both running.
fn start(prefix: &str) -> Fixture {
    let f = Fixture::builder(prefix)
        .manifest("cluster.yaml", |c| manifest(c, "1"))
        .resync("5s")
        .start();
    for service in ["db", "app"] {
        f.wait_running(&f.name(service), "the start");
    }
    f
}

/// Waits (30 s) until the ticket of `service` with drift `drift` is resolved by the
/// controller; its `action-started` entries must all name `action` (at least one), and one
/// of them must have succeeded.
fn assert_repaired_by(f: &Fixture, service: &str, drift: &str, action: &str) {
    assert!(
        wait_until(Duration::from_secs(30), || f
            .ticket(drift, service)
            .is_some_and(|t| t["status"] == "resolved")),
        "no resolved {drift} ticket for {service}: {:#?}; log:\n{}",
        f.tickets(),
        f.operator.log()
    );
    let ticket = f.ticket(drift, service).unwrap();
    assert_eq!(ticket["resolved_by"], "controller", "{ticket:#}");
    let id = ticket["id"].as_i64().unwrap();
    let shown = f.operator.ticket_json(id);
    let timeline = shown["timeline"].as_array().unwrap();
    let started: Vec<&serde_json::Value> = timeline
        .iter()
        .filter(|e| e["kind"] == "action-started")
        .collect();
    assert!(!started.is_empty(), "no action on the ticket: {shown:#}");
    assert!(
        started.iter().all(|e| e["detail"]["action"] == action),
        "every action is a {action}: {shown:#}"
    );
    assert!(
        timeline
            .iter()
            .any(|e| e["kind"] == "action-result" && e["detail"]["result"] == "ok"),
        "the {action} succeeded: {shown:#}"
    );
}

#[test]
fn sigkilled_container_is_running_again_in_place() {
    let f = start("kill");
    let name = f.name("db");
    let (_, id) = state(&name, None).unwrap();
    // What the repair costs: engine requests and ticket store round trips (resyncs and
    // the other service's looks add theirs, so these bound the repair's cost from above).
    // Both were inspected and started already (the fixture's start): served, or renamed.
    let requests = |op: &str| {
        f.operator
            .served_metric(&format!("operator_engine_requests_total{{op=\"{op}\"}}"))
    };
    let trips = || f.operator.served_metric("operator_store_round_trips_total");
    let before = (requests("inspect"), requests("start"), trips());
    docker_ok(&["kill", "--signal", "KILL", &name]);
    f.wait_running(&name, "SIGKILL");
    let (_, id_after) = state(&name, None).unwrap();
    assert_eq!(
        id, id_after,
        "a killed container is started again, not replaced"
    );
    assert_repaired_by(&f, &name, "stopped", "start");
    let after = (requests("inspect"), requests("start"), trips());
    assert_eq!(after.1 - before.1, 1.0, "one start request: the repair");
    assert!(after.0 > before.0, "the repair's inspects are counted");
    eprintln!(
        "SIGKILL repair, up to its resolved ticket: {} engine inspects, {} store round trips",
        after.0 - before.0,
        after.2 - before.2
    );
}

#[test]
fn removed_container_is_recreated() {
    let f = start("rm");
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
    let f = start("pause");
    let name = f.name("db");
    docker_ok(&["pause", &name]);
    f.wait_running(&name, "docker pause");
    assert_repaired_by(&f, &name, "paused", "unpause");
}

#[test]
fn a_pause_is_undone_by_an_unpause_never_by_a_restart() {
    // The engine reports a paused container `unhealthy` until its first probe after the
    // unpause: that stale verdict must not make the controller restart a healthy process.
    let f = Fixture::builder("pausehc")
        .manifest("cluster.yaml", |c| {
            cluster_yaml(
                c,
                &format!(
                    r#"    - name: {c}-web
      image: {BUSYBOX_IMAGE}
      networkMode: host
      command: {LOOP}
      healthcheck:
        test: ["CMD", "true"]
        interval: 1s
        # A probe of `true` needs no time, but on a loaded machine (two cores running other
        # tests and benchmarks) an exec can take over a second: with one retry the engine
        # then says unhealthy and a restart follows, which is right, and not what this
        # test is about. A paused container fails its probe at once whatever this says.
        timeout: 5s
        retries: 1
      remediation:
        backoff: {{initial: 200ms, max: 1s}}
"#
                ),
            )
        })
        .resync("1s")
        .start();
    let name = f.name("web");
    let healthy =
        || inspect(&name, None).is_some_and(|c| c["State"]["Health"]["Status"] == "healthy");
    assert!(
        wait_until(Duration::from_secs(30), healthy),
        "never healthy"
    );
    let unpauses = r#"operator_actions_total{kind="unpause",result="ok"}"#;
    for round in 0..4 {
        let unpaused = f.operator.counter(unpauses);
        docker_ok(&["pause", &name]);
        // The controller unpauses at once; a probe that ran around the pause leaves the
        // engine saying `unhealthy` until the next one: time for a probe to run.
        std::thread::sleep(Duration::from_millis(1500));
        assert!(
            wait_until(Duration::from_secs(30), || f.operator.counter(unpauses)
                > unpaused
                && is_running(&name, None)
                && healthy()),
            "round {round}: not unpaused by the controller, running and healthy again; log:\n{}",
            f.operator.log()
        );
    }
    // Several looks at it after the last round (resync 1 s), each free to take a stale
    // `unhealthy` for a reason to restart: a stalled loop fails here, not as "no restart".
    f.operator.wait_resyncs(3);
    let restarts = f
        .operator
        .counter(r#"operator_actions_total{kind="restart",result="ok"}"#);
    let tickets = f.tickets();
    assert_eq!(
        restarts, 0.0,
        "a pause cost a restart; tickets {tickets:#?}"
    );
    assert!(
        tickets.iter().all(|t| t["drift"] == "paused"),
        "only paused episodes: {tickets:#?}"
    );
    // With a healthcheck the desired state is `healthy`: each episode ended on a re-check
    // that saw it so, never on the stale `unhealthy` from the pause.
    for t in &tickets {
        let id = t["id"].as_i64().unwrap();
        for recheck in f.operator.timeline(id, "recheck") {
            assert_eq!(
                (&recheck["detail"]["result"], &recheck["detail"]["health"]),
                (
                    &serde_json::json!("desired state"),
                    &serde_json::json!("healthy")
                ),
                "ticket {id} resolved on {recheck:#}"
            );
        }
    }
}

#[test]
fn an_unhealthy_verdict_that_outlasts_an_unpause_is_repaired_by_the_probes_after_it() {
    // Broken while paused: after the unpause the engine keeps saying `unhealthy` with newer
    // probes and sends no `health_status` event (nothing changed), only the probes' `exec_*`.
    // The controller must see those newer probes, not wait for a re-list (`--relist 1h`).
    let f = Fixture::builder("pausebad")
        .manifest("cluster.yaml", |c| {
            cluster_yaml(
                c,
                &format!(
                    r#"    - name: {c}-web
      image: {BUSYBOX_IMAGE}
      networkMode: host
      command: ["sh", "-c", "rm -f /tmp/bad; trap 'exit 0' TERM; while true; do sleep 1; done"]
      healthcheck:
        test: ["CMD-SHELL", "test ! -e /tmp/bad"]
        interval: 1s
        timeout: 5s
        retries: 1
      remediation:
        backoff: {{initial: 200ms, max: 1s}}
"#
                ),
            )
        })
        .args(&["--relist", "1h"])
        .resync("1s")
        .start();
    let name = f.name("web");
    let health = || {
        inspect(&name, None).map(|c| {
            c["State"]["Health"]["Status"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
    };
    assert!(
        wait_until(Duration::from_secs(30), || health().as_deref()
            == Some("healthy")),
        "never healthy"
    );
    docker_ok(&["exec", &name, "touch", "/tmp/bad"]);
    docker_ok(&["pause", &name]);
    // Repaired: the unhealthy episode is ticketed and ends on a re-check that saw it healthy
    // (a restart runs the command again, which removes the flag).
    assert!(
        wait_until(Duration::from_secs(60), || f
            .ticket("unhealthy", &name)
            .is_some_and(|t| t["status"] == "resolved")),
        "the unhealthy container was not repaired after its unpause: {:#?}; log:\n{}",
        f.tickets(),
        f.operator.log()
    );
    assert_eq!(
        f.operator
            .counter(r#"operator_watch_relists_total{reason="interval"}"#),
        0.0,
        "found by a re-list, not by the probes"
    );
}

#[test]
fn a_restarted_container_ends_its_ticket_only_once_its_healthcheck_passes() {
    let f = Fixture::builder("starting")
        .manifest("cluster.yaml", |c| {
            cluster_yaml(
                c,
                &format!(
                    r#"    - name: {c}-web
      image: {BUSYBOX_IMAGE}
      networkMode: host
      # Healthy only some seconds after each start: `starting` until then.
      command: ["sh", "-c", "rm -f /tmp/ready; sleep 6; touch /tmp/ready; exec sleep 3600"]
      healthcheck:
        test: ["CMD", "test", "-e", "/tmp/ready"]
        interval: 1s
        timeout: 5s
        retries: 30
      remediation:
        backoff: {{initial: 200ms, max: 1s}}
"#
                ),
            )
        })
        .resync("1s")
        .start();
    let name = f.name("web");
    let health = || inspect(&name, None).map(|c| c["State"]["Health"]["Status"].clone());
    assert!(
        wait_until(Duration::from_secs(60), || health()
            == Some(serde_json::json!("healthy"))),
        "never healthy"
    );
    docker_ok(&["kill", &name]);
    f.wait_running(&name, "the kill");
    let ticket = || f.ticket("stopped", &name);
    // Restarted and `starting`: the episode is not over.
    assert!(
        wait_until(Duration::from_secs(10), || ticket().is_some()),
        "no ticket for the kill"
    );
    // The ticket is read first, then the health: a ticket resolved while the health read
    // after it still says `starting` was resolved while it was starting.
    loop {
        let t = ticket().unwrap();
        if health() != Some(serde_json::json!("starting")) {
            break;
        }
        assert_ne!(
            t["status"],
            "resolved",
            "resolved while its healthcheck was still starting: {t:#}; log:\n{}",
            f.operator.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        wait_until(Duration::from_secs(30), || ticket()
            .is_some_and(|t| t["status"] == "resolved")),
        "not resolved once healthy; tickets {:#?}",
        f.tickets()
    );
    let id = ticket().unwrap()["id"].as_i64().unwrap();
    let recheck = f.operator.timeline(id, "recheck");
    assert_eq!(recheck.len(), 1, "{recheck:#?}");
    assert_eq!(recheck[0]["detail"]["health"], "healthy", "{recheck:#?}");
}

#[test]
fn run_once_believes_a_repair_only_after_it_settled() {
    let cluster = common::unique("oncesettle");
    let _cleanup = common::Cleanup::new(format!("operator.cluster={cluster}"));
    let dir = common::operator::TempDir::new(&cluster);
    let db = dir.path().join("t.db");
    dir.write(
        "cluster.yaml",
        &cluster_yaml(
            &cluster,
            &format!(
                r#"    - name: {cluster}-good
      image: {BUSYBOX_IMAGE}
      networkMode: host
      command: {LOOP}
    - name: {cluster}-bad
      image: {BUSYBOX_IMAGE}
      networkMode: host
      command: ["sh", "-c", "sleep 0.3; exit 3"]
"#
            ),
        ),
    );
    let out = common::operator::operator(
        &[
            "run",
            dir.path().to_str().unwrap(),
            "--once",
            "--json",
            "--settle",
            "1s",
            "--listen",
            "127.0.0.1:0",
            "--db",
            db.to_str().unwrap(),
        ],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a crashing service is not repaired: {stderr}"
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--once --json");
    let result = |service: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["service"] == format!("{cluster}-{service}"))
            .map(|r| r["result"].clone())
            .unwrap()
    };
    assert_eq!(result("good")["outcome"], "acted", "{rows:#}");
    let bad = result("bad");
    assert_eq!(bad["outcome"], "not-repaired", "{rows:#}");
    assert_eq!(bad["drift"], "stopped", "{rows:#}");
    common::operator::remove_db(&db);
}

#[test]
fn detached_network_is_reconnected() {
    let f = start("net");
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
    let f = start("spec");
    let name = f.name("app");
    let (_, id) = state(&name, None).unwrap();
    let (_, db_id) = state(&f.name("db"), None).unwrap();
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
    // Exactly one recreate (the app's): the other service's spec did not change, so it
    // keeps its container.
    let recreates = "operator_actions_total{kind=\"recreate\",result=\"ok\"}";
    assert!(
        wait_until(Duration::from_secs(10), || f.operator.metric(recreates)
            == Some(1.0)),
        "{recreates} is {:?}, not 1; log:\n{}",
        f.operator.metric(recreates),
        f.operator.log()
    );
    assert_eq!(
        state(&f.name("db"), None).unwrap().1,
        db_id,
        "the unchanged service was replaced"
    );
    assert_eq!(f.operator.metric(recreates), Some(1.0));
    assert_eq!(
        f.operator
            .counter("operator_actions_total{kind=\"recreate\",result=\"error\"}"),
        0.0,
        "no recreate failed"
    );
}

#[test]
fn invalid_edit_is_rejected_and_the_last_good_state_kept() {
    let f = start("badedit");
    let name = f.name("db");
    let (_, id) = state(&name, None).unwrap();
    f.dir.write(
        "cluster.yaml",
        &manifest(&f.cluster, "1")
            .replace("maxRestarts: 20", "maxRestarts: 20\n        bogusField: 1"),
    );
    assert!(
        wait_until(Duration::from_secs(30), || f
            .operator
            .metric("operator_manifest_reloads_total{result=\"rejected\"}")
            .is_some_and(|n| n >= 1.0)),
        "the edit was not rejected; log:\n{}",
        f.operator.log()
    );
    // Still managed: a kill is still repaired, and the container was not replaced.
    docker_ok(&["kill", "--signal", "KILL", &name]);
    f.wait_running(&name, "SIGKILL after a rejected edit");
    assert_eq!(state(&name, None).unwrap().1, id);
}

#[test]
fn unmanaged_containers_are_left_alone() {
    let fixture = Fixture::builder("foreign");
    let cluster = fixture.cluster().to_string();
    let foreign_label = format!("operator.test.foreign={cluster}");
    let fixture = fixture.also_clean(foreign_label.clone());
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

    let f = fixture
        .manifest("cluster.yaml", |c| manifest(c, "1"))
        .resync("1s")
        .start();
    assert!(
        wait_until(Duration::from_secs(30), || f
            .ticket("name-conflict", &squatter)
            .is_some()),
        "the name conflict was not reported; tickets {:#?}; log:\n{}",
        f.tickets(),
        f.operator.log()
    );
    docker_ok(&["kill", "--signal", "KILL", &bystander]);
    // Several resyncs (1 s) after the kill, each free to misbehave: a stalled loop fails
    // here, not as "left alone".
    f.operator.wait_resyncs(3);
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
    let f = start("metrics");
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
fn without_listen_it_serves_on_loopback_port_9464_only() {
    const DEFAULT: &str = "127.0.0.1:9464";
    let port = 9464;
    // The default port must be free, or this test would measure someone else's server.
    let taken: Vec<SocketAddr> = tcp_listeners()
        .into_iter()
        .map(|(addr, _)| addr)
        .filter(|addr| addr.port() == port)
        .collect();
    assert!(
        taken.is_empty(),
        "port {port} is already taken on this machine ({taken:?}), so the default listen \
         address cannot be tested: stop whatever listens there (`ss -ltnp 'sport = :{port}'`)"
    );
    if let Err(e) = TcpListener::bind(DEFAULT) {
        panic!("cannot bind {DEFAULT} ({e}): the default listen address cannot be tested");
    }

    let f = Fixture::builder("listen")
        .manifest("cluster.yaml", |c| {
            format!("apiVersion: operator/v1\nkind: Cluster\nmetadata:\n  name: {c}\nspec:\n  services: []\n")
        })
        .default_listen()
        .start();
    assert_eq!(f.operator.listen_addr().as_deref(), Some(DEFAULT));
    let mine = f.operator.listening_sockets();
    assert_eq!(
        mine,
        vec![DEFAULT.parse::<SocketAddr>().unwrap()],
        "the controller listens on exactly {DEFAULT}"
    );
    let wildcard: Vec<SocketAddr> = tcp_listeners()
        .into_iter()
        .map(|(addr, _)| addr)
        .filter(|addr| addr.port() == port && addr.ip().is_unspecified())
        .collect();
    assert!(
        wildcard.is_empty(),
        "a wildcard socket on {port}: {wildcard:?}"
    );
    let (status, body) = f.operator.http_get("/healthz");
    assert!(status.contains("200"), "{status} {body}");
}

#[test]
fn sigterm_stops_the_controller_cleanly() {
    let mut f = start("term");
    let status = f.operator.stop().expect("operator exits on SIGTERM");
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        f.operator.log()
    );
    // Containers stay: stopping the controller is not stopping the cluster.
    assert!(is_running(&f.name("db"), None));
}

#[test]
fn a_requested_stop_always_exits_zero_even_right_after_start() {
    // The stop also ends the watcher; that ending must never be taken for a failure (it
    // was, in a few percent of stops).
    let mut f = start("quickterm");
    for round in 0..12 {
        f.restart_operator();
        let status = f.operator.stop().expect("operator exits on SIGTERM");
        assert!(
            status.success(),
            "round {round}: exit status {status}; log:\n{}",
            f.operator.log()
        );
    }
}

#[test]
fn an_image_that_cannot_be_had_is_a_clear_drift_not_a_crash() {
    // The registry is on loopback (nothing listens there): the pull fails at once and no
    // traffic leaves the machine.
    let f = Fixture::builder("noimage")
        .manifest("cluster.yaml", |c| {
            manifest(c, "1").replacen(
                &format!("image: {BUSYBOX_IMAGE}"),
                "image: 127.0.0.1:9/operator-test/absent:1",
                1,
            )
        })
        .resync("1s")
        .start();
    let (cluster, operator) = (&f.cluster, &f.operator);
    // The user-facing error message is the point here: on the ticket's timeline, as
    // `tickets show` prints it.
    let db_name = format!("{cluster}-db");
    let said = || {
        f.ticket("image-missing", &db_name).is_some_and(|t| {
            operator
                .timeline(t["id"].as_i64().unwrap(), "action-result")
                .iter()
                .any(|e| {
                    e["detail"]["error"]
                        .as_str()
                        .is_some_and(|error| error.contains("could not be pulled"))
                })
        })
    };
    assert!(
        wait_until(Duration::from_secs(60), said),
        "no ticket says the image could not be pulled; tickets {:#?}; log:\n{}",
        f.tickets(),
        operator.log()
    );
    // Its own database: a test never reads the machine's default one.
    let out = common::operator::operator(
        &[
            "status",
            f.dir.path().to_str().unwrap(),
            "--db",
            f.db().to_str().unwrap(),
            "--json",
        ],
        None,
    );
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
    let f = Fixture::builder("sick")
        .manifest("sick.yaml", |cluster| {
            let name = format!("{cluster}-sick");
            format!(
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
            )
        })
        .resync("1s")
        .start();
    let name = f.name("sick");
    assert!(
        wait_until(Duration::from_secs(60), || f
            .ticket("unhealthy", &name)
            .is_some_and(|t| t["status"] == "escalated")),
        "not escalated; tickets {:#?}; log:\n{}",
        f.tickets(),
        f.operator.log()
    );
    let id = f.ticket("unhealthy", &name).unwrap()["id"]
        .as_i64()
        .unwrap();
    let restarts = f.operator.timeline(id, "action-started");
    assert_eq!(
        restarts.len(),
        2,
        "two restarts (the budget), then escalation: {restarts:#?}"
    );
    assert!(
        restarts
            .iter()
            .all(|e| e["detail"]["action"] == "restart" && e["detail"]["budgeted"] == true),
        "{restarts:#?}"
    );
    // Escalated, not killed: the controller leaves the (running, unhealthy) container be.
    assert!(is_running(&name, None));
}

/// `keep` and `gone` (which exits at once and escalates after one restart) and, with
/// `probe`, an HTTP check that fails (nobody listens on `port`).
fn removal_manifest(cluster: &str, port: u16, gone: bool, probe: bool) -> String {
    let mut services = format!(
        "    - name: {cluster}-keep\n      image: {BUSYBOX_IMAGE}\n      command: {LOOP}\n"
    );
    if gone {
        services.push_str(&format!(
            "    - name: {cluster}-gone\n      image: {BUSYBOX_IMAGE}\n      command: [\"sh\", \"-c\", \"exit 3\"]\n      remediation: {{maxRestarts: 1, backoff: {{initial: 100ms, max: 200ms}}}}\n"
        ));
    }
    let mut yaml = cluster_yaml(cluster, &services);
    if probe {
        yaml.push_str(&format!(
            "  prometheus: {{interval: 1s}}\n  checks:\n    - name: probe\n      http: {{url: \"http://127.0.0.1:{port}/\", timeout: 1s}}\n"
        ));
    }
    yaml
}

#[test]
fn removed_services_and_checks_close_their_tickets_as_removed_and_stay_visible() {
    let port = common::free_port();
    let f = Fixture::builder("removal")
        .manifest("cluster.yaml", |c| removal_manifest(c, port, true, true))
        .resync("5s")
        .start();
    let (keep, gone) = (f.name("keep"), f.name("gone"));
    f.wait_running(&keep, "the start");
    // Both services were created at once: one cluster network, not one each (an engine
    // before API 1.44 accepts two of one name, and then every start fails as "ambiguous").
    let networks = docker_ok(&[
        "network",
        "ls",
        "-q",
        "--filter",
        &format!("label=operator.cluster={}", f.cluster),
    ]);
    assert_eq!(networks.lines().count(), 1, "{networks}");
    let failing = format!(
        "operator_check_failing{{cluster=\"{}\",check=\"probe\"}}",
        f.cluster
    );
    let escalated = "operator_escalated_services";
    assert!(
        wait_until(Duration::from_secs(30), || {
            f.ticket("stopped", &gone)
                .is_some_and(|t| t["status"] == "escalated")
                && f.ticket("check-failed", "-")
                    .is_some_and(|t| t["status"] == "open")
                && f.operator.metric(&failing) == Some(1.0)
                && f.operator.metric(escalated) == Some(1.0)
        }),
        "no escalated and check tickets: {:#?}; log:\n{}",
        f.tickets(),
        f.operator.log()
    );

    // The service and the cluster's last check leave the manifests.
    f.dir.write(
        "cluster.yaml",
        &removal_manifest(&f.cluster, port, false, false),
    );
    let closed_as_removed = |drift: &str, service: &str| {
        f.ticket(drift, service)
            .is_some_and(|t| t["status"] == "resolved" && t["resolved_by"] == "removed")
    };
    assert!(
        wait_until(Duration::from_secs(30), || {
            closed_as_removed("stopped", &gone) && closed_as_removed("check-failed", "-")
        }),
        "tickets of removed things are not closed as removed: {:#?}; log:\n{}",
        f.tickets(),
        f.operator.log()
    );
    assert_eq!(
        f.operator.metric(&failing),
        None,
        "the check's series is gone"
    );
    assert_eq!(f.operator.metric(escalated), Some(0.0));
    assert_eq!(
        f.operator
            .metric("operator_tickets_resolved_total{cause=\"removed\"}"),
        Some(2.0)
    );
    assert!(
        f.tickets().iter().all(|t| t["status"] == "resolved"),
        "{:#?}",
        f.tickets()
    );

    // The controller leaves the undeclared container alone, and `status` shows it.
    assert_eq!(
        state(&gone, None).map(|(s, _)| s).as_deref(),
        Some("exited")
    );
    let dir = f.dir.path().to_str().unwrap().to_string();
    let db = f.db().to_str().unwrap().to_string();
    let out = common::operator::operator(&["status", &dir, "--db", &db], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let row = text
        .lines()
        .find(|l| l.contains(&gone))
        .unwrap_or_else(|| panic!("no row for {gone}:\n{text}"));
    assert!(
        row.contains("undeclared") && row.contains("exited"),
        "{text}"
    );
    assert!(text.contains(&format!("docker rm -f {gone}")), "{text}");
    let out = common::operator::operator(&["status", &dir, "--db", &db, "--json"], None);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let undeclared: Vec<&str> = json["undeclared"]
        .as_array()
        .unwrap()
        .iter()
        // Other tests' clusters on the same engine are undeclared here too.
        .filter(|c| c["key"]["cluster"] == f.cluster.as_str())
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(undeclared, vec![gone.as_str()], "{json:#}");
}

#[test]
fn a_network_option_edit_is_applied_by_replacing_the_network() {
    let f = start("netedit");
    let network = format!("{}-net", f.cluster);
    // Missing for a moment while it is replaced: then an empty answer.
    let internal = || {
        let out = docker(&["network", "inspect", "-f", "{{.Internal}}", &network]);
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(internal().trim(), "true");
    // A repair just before the edit: its backoff must not make the edit an incident.
    docker_ok(&["kill", "--signal", "KILL", &f.name("db")]);
    f.wait_running(&f.name("db"), "SIGKILL before the edit");
    let ids: Vec<String> = ["db", "app"]
        .iter()
        .map(|s| state(&f.name(s), None).unwrap().1)
        .collect();
    for (flip, want) in [(false, "false"), (true, "true")] {
        f.dir.write(
            "cluster.yaml",
            &manifest(&f.cluster, "1").replace(
                "internal: true",
                if flip {
                    "internal: true"
                } else {
                    "internal: false"
                },
            ),
        );
        let attached = |service: &str| {
            inspect(&f.name(service), None).is_some_and(|c| {
                c["NetworkSettings"]["Networks"][&network]["Aliases"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|a| *a == f.name(service)))
            })
        };
        assert!(
            wait_until(Duration::from_secs(30), || internal().trim() == want
                && attached("db")
                && attached("app")),
            "network {network} not replaced with internal: {want} and both services reattached; log:\n{}",
            f.operator.log()
        );
    }
    let after: Vec<String> = ["db", "app"]
        .iter()
        .map(|s| state(&f.name(s), None).unwrap().1)
        .collect();
    assert_eq!(
        ids, after,
        "the containers were kept, only the network replaced"
    );
    let networks = docker_ok(&[
        "network",
        "ls",
        "-q",
        "--filter",
        &format!("label=operator.cluster={}", f.cluster),
    ]);
    assert_eq!(networks.lines().count(), 1, "{networks}");
    assert!(
        f.tickets().iter().all(|t| t["drift"] != "network-changed"),
        "an edit applied is a deliberate change, not a ticket: {:#?}",
        f.tickets()
    );
}

/// A stop no look saw: the controller was frozen while the engine's restart policy started
/// the killed container again (what a loaded host does to a baseline drill's observer). The
/// episode is still a ticket, ended self-healed.
#[test]
fn a_stop_the_engine_repaired_before_any_look_is_still_a_ticket() {
    let f = Fixture::builder("unseen")
        .manifest("cluster.yaml", |c| {
            cluster_yaml(
                c,
                &format!(
                    r#"    - name: {c}-web
      image: {BUSYBOX_IMAGE}
      networkMode: host
      command: {LOOP}
      restartPolicy: always
"#
                ),
            )
        })
        .resync("1s")
        .start();
    let name = f.name("web");
    f.wait_running(&name, "the start");
    let started = || inspect(&name, None).map(|c| c["State"]["StartedAt"].clone());
    let first = started();
    // A few looks at it running (resync 1 s) before the controller is frozen.
    f.operator.wait_resyncs(2);
    f.operator.signal("STOP");
    // A crash, as the engine sees one (a `docker kill` is a person's stop, which the
    // restart policy leaves alone): the process is killed on the host.
    let pid = inspect(&name, None).unwrap()["State"]["Pid"]
        .as_i64()
        .unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    assert!(killed.is_ok_and(|s| s.success()), "kill -KILL {pid}");
    let restarted = wait_until(Duration::from_secs(30), || {
        is_running(&name, None) && started() != first
    });
    f.operator.signal("CONT");
    assert!(restarted, "the engine did not restart {name}");
    assert!(
        wait_until(Duration::from_secs(30), || f
            .ticket("stopped", &name)
            .is_some_and(
                |t| t["status"] == "resolved" && t["resolved_by"] == "self-healed"
            )),
        "no self-healed ticket for the stop no look saw; tickets {:#?}; log:\n{}",
        f.tickets(),
        f.operator.log()
    );
    assert_eq!(
        f.operator
            .counter(r#"operator_actions_total{kind="start",result="ok"}"#),
        0.0,
        "the controller acted on a container the engine had started"
    );
}
