//! Adoption: containers started by someone else (compose, or a person) are managed by name
//! when, and only when, the manifest says `adopt`. They are healed in place, never recreated
//! for their spec unless the manifest owns it, and created anew only when gone.

mod common;

use std::time::Duration;

use common::operator::{inspect, operator, state, wait_until};
use common::{BUSYBOX_IMAGE, Fixture, TEST_LABEL, docker_ok};

/// A stack as compose leaves it: an external network and containers without our labels.
struct HandStarted {
    label: String,
    network: String,
}

/// Whatever the test did, the hand-started containers and their network go with it (the
/// fixture removes them too once it exists; this covers a failure before it does).
impl Drop for HandStarted {
    fn drop(&mut self) {
        common::remove_labelled(&self.label);
        let _ = common::docker(&["network", "rm", &self.network]);
    }
}

impl HandStarted {
    fn new(cluster: &str) -> Self {
        let label = format!("operator.test.adopt={cluster}");
        let network = format!("{cluster}-net");
        docker_ok(&["network", "create", "--label", &label, &network]);
        HandStarted { label, network }
    }

    /// Starts `name` running `sleep SECONDS`; returns its id.
    fn run(&self, name: &str, seconds: &str) -> String {
        docker_ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--label",
            TEST_LABEL,
            "--label",
            &self.label,
            "--network",
            &self.network,
            BUSYBOX_IMAGE,
            "sleep",
            seconds,
        ])
    }
}

fn manifest(cluster: &str, network: &str, web_adopt: &str) -> String {
    format!(
        "apiVersion: operator/v1
kind: Cluster
metadata:
  name: {cluster}
spec:
  network:
    name: {network}
    external: true
  services:
    - name: {cluster}-web
      image: {BUSYBOX_IMAGE}
      command: [sleep, \"100000\"]
      adopt: {web_adopt}
      remediation:
        backoff: {{initial: 200ms, max: 1s}}
    - name: {cluster}-db
      image: {BUSYBOX_IMAGE}
      command: [sleep, \"100000\"]
"
    )
}

fn id_of(name: &str) -> String {
    state(name, None).map(|(_, id)| id).unwrap_or_default()
}

fn labelled_ours(name: &str) -> bool {
    inspect(name, None)
        .is_some_and(|c| c["Config"]["Labels"]["operator.managed-by"].as_str() == Some("operator"))
}

fn adoptions(db: &std::path::Path) -> Vec<operator::tickets::Adoption> {
    operator::tickets::Store::open_read_only(db)
        .and_then(|s| s.adoptions())
        .unwrap_or_default()
}

/// Waits (60 s) until the controller's first full pass is done (every service looked at
/// once: `operator_first_reconcile_seconds` set) and its work queue is empty (nothing due
/// or scheduled), seen twice in a row: with no resync, nothing is looked at again until an
/// event. A stalled loop panics here.
fn settled_after_first_pass(f: &Fixture) {
    let settled = || {
        f.operator.served_metric("operator_first_reconcile_seconds") > 0.0
            && f.operator.served_metric("operator_workqueue_depth") == 0.0
    };
    let mut in_a_row = 0;
    assert!(
        wait_until(Duration::from_secs(60), || {
            in_a_row = if settled() { in_a_row + 1 } else { 0 };
            in_a_row >= 2
        }),
        "the controller's first pass did not end with an empty work queue \
         (operator_first_reconcile_seconds {}, operator_workqueue_depth {}); log:\n{}",
        f.operator.served_metric("operator_first_reconcile_seconds"),
        f.operator.served_metric("operator_workqueue_depth"),
        f.operator.log()
    );
}

#[test]
fn an_adopted_container_is_healed_in_place_and_only_what_the_manifest_names_is_taken() {
    let builder = Fixture::builder("adopt");
    let cluster = builder.cluster().to_string();
    let stack = HandStarted::new(&cluster);
    let (web, db) = (format!("{cluster}-web"), format!("{cluster}-db"));
    // Its own spec differs from the manifest's (sleep 200000): adopted, it keeps it.
    let web_id = stack.run(&web, "200000");
    let db_id = stack.run(&db, "200000");
    let f = builder
        .also_clean(stack.label.clone())
        .manifest("cluster.yaml", |c| manifest(c, &stack.network, "true"))
        // No resync while the test runs: the kill and the removal below must reach the
        // controller through the event stream, which filters by the adopted names.
        .resync("1h")
        .start();

    assert!(
        wait_until(Duration::from_secs(30), || f
            .operator
            .counter(r#"operator_reconcile_events_total{event="adopted"}"#)
            >= 1.0),
        "no adoption said; log:\n{}",
        f.operator.log()
    );
    let recorded = adoptions(f.db());
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(
        (
            recorded[0].service.as_str(),
            recorded[0].container_id.as_str()
        ),
        (web.as_str(), web_id.as_str())
    );
    // Not adopted: a name conflict, reported and left alone.
    assert!(
        wait_until(Duration::from_secs(30), || f
            .ticket("name-conflict", &db)
            .is_some()),
        "the unadopted container's name conflict was not reported; tickets {:#?}",
        f.tickets()
    );
    let dir = f.dir.path().to_str().unwrap().to_string();
    let db_path = f.db().to_str().unwrap().to_string();
    let out = operator(&["status", &dir, "--db", &db_path, "--json"], None);
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.contains("\"adopted\": true"),
        "status does not mark the adopted container: {status}"
    );

    // The spec difference is not a reason to touch it. With no resync, the controller's
    // looks are its first pass and what that pass scheduled: once the pass is done and
    // nothing is left in its queue (due or scheduled), it has looked and decided.
    settled_after_first_pass(&f);
    assert_eq!(id_of(&web), web_id, "the adopted container was recreated");
    assert!(!labelled_ours(&web));

    // Healed in place: the same container is started again.
    docker_ok(&["kill", &web]);
    f.wait_running(&web, "docker kill of the adopted container");
    assert_eq!(id_of(&web), web_id, "healing recreated it");
    assert!(
        wait_until(Duration::from_secs(30), || f
            .ticket("stopped", &web)
            .is_some_and(|t| t["status"] == "resolved")),
        "the stopped ticket was not resolved; tickets {:#?}",
        f.tickets()
    );

    // Gone: the manifest's container replaces it, labelled ours from now on.
    docker_ok(&["rm", "-f", &web]);
    f.wait_running(&web, "docker rm -f of the adopted container");
    assert_ne!(id_of(&web), web_id);
    assert!(labelled_ours(&web));
    let cmd = inspect(&web, None).unwrap()["Config"]["Cmd"].clone();
    assert_eq!(cmd, serde_json::json!(["sleep", "100000"]));

    // The unadopted one was never touched.
    assert_eq!(id_of(&db), db_id);
    assert!(!labelled_ours(&db));
    assert_eq!(state(&db, None).unwrap().0, "running");
}

#[test]
fn an_adopted_container_whose_spec_the_manifest_owns_is_recreated_from_it() {
    let builder = Fixture::builder("adoptown");
    let cluster = builder.cluster().to_string();
    let stack = HandStarted::new(&cluster);
    let web = format!("{cluster}-web");
    let web_id = stack.run(&web, "200000");
    let f = builder
        .also_clean(stack.label.clone())
        .manifest("cluster.yaml", |c| {
            manifest(c, &stack.network, "{spec: owned}")
        })
        .resync("1s")
        .start();
    assert!(
        wait_until(Duration::from_secs(60), || labelled_ours(&web)),
        "not recreated from the manifest; state {:?}; log:\n{}",
        state(&web, None),
        f.operator.log()
    );
    f.wait_running(&web, "the recreate");
    assert_ne!(id_of(&web), web_id);
    // A deliberate change, as for any manifest edit: no ticket. (Why it says, `adopt.spec:
    // owned`, is the drift's detail: `reconcile::diff`'s unit tests.)
    assert!(
        f.operator
            .counter(r#"operator_reconcile_events_total{event="deliberate-change"}"#)
            >= 1.0,
        "the recreate was not a deliberate change; log:\n{}",
        f.operator.log()
    );
    let tickets = f.tickets();
    assert!(
        tickets.iter().all(|t| t["service"] != web.as_str()),
        "{tickets:#?}"
    );
}

#[test]
fn a_dependent_of_an_adopted_container_is_created_and_its_removal_is_a_ticketed_drift() {
    let builder = Fixture::builder("adoptdep");
    let cluster = builder.cluster().to_string();
    let stack = HandStarted::new(&cluster);
    let web = format!("{cluster}-web");
    let app = format!("{cluster}-app");
    let web_id = stack.run(&web, "200000");
    let f = builder
        .also_clean(stack.label.clone())
        .manifest("cluster.yaml", |c| {
            format!(
                "apiVersion: operator/v1
kind: Cluster
metadata:
  name: {c}
spec:
  network:
    name: {network}
    external: true
  services:
    - name: {c}-web
      image: {BUSYBOX_IMAGE}
      command: [sleep, \"100000\"]
      adopt: true
    - name: {c}-app
      image: {BUSYBOX_IMAGE}
      command: [sleep, \"100000\"]
      dependsOn: [{c}-web]
",
                network = stack.network
            )
        })
        .resync("1s")
        .start();
    // The adopted dependency runs: the dependent is created (it never was while only a
    // container of the controller's own could satisfy dependsOn).
    f.wait_running(&app, "the start of a dependent of an adopted container");
    assert_eq!(id_of(&web), web_id);
    // Gone, though the controller never created it: a drift with a ticket, repaired and
    // re-checked, not a silent "first creation".
    docker_ok(&["rm", "-f", &web]);
    f.wait_running(&web, "docker rm -f of the adopted container");
    assert!(
        wait_until(Duration::from_secs(30), || f
            .ticket("missing", &web)
            .is_some_and(
                |t| t["status"] == "resolved" && t["resolved_by"] == "controller"
            )),
        "the removal of the adopted container left no resolved ticket; tickets {:#?}; log:\n{}",
        f.tickets(),
        f.operator.log()
    );
}
