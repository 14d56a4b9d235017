//! The periodic resync on a real engine: it re-enqueues from the observed store and asks the
//! engine nothing; a service unchanged in the store since its last clean, quiet reconcile is
//! counted as looked at. The engine is listed again only on the watcher's own bound.

mod common;

use std::time::Duration;

use common::operator::{counter_value, wait_until};
use common::{BUSYBOX_IMAGE, Fixture, LOOP, TEST_LABEL, cluster_yaml, docker_ok};

/// Three kinds of container the store must hold right: one with a healthcheck on the
/// cluster's own network, one on host networking, and one started by hand and adopted.
fn manifest(cluster: &str) -> String {
    let services = format!(
        r#"    - name: {cluster}-checked
      image: {BUSYBOX_IMAGE}
      command: {LOOP}
      healthcheck:
        test: ["CMD", "true"]
        interval: 1s
        timeout: 5s
        retries: 3
    - name: {cluster}-host
      image: {BUSYBOX_IMAGE}
      networkMode: host
      command: {LOOP}
      remediation:
        backoff: {{initial: 200ms, max: 1s}}
        stableAfter: 2s
    - name: {cluster}-adopted
      image: {BUSYBOX_IMAGE}
      networkMode: host
      command: {LOOP}
      adopt: true
"#
    );
    cluster_yaml(cluster, &services)
}

/// The loop's counters at one moment, from one read of /metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Counters {
    resyncs: f64,
    unchanged: f64,
    inspects: f64,
    lists: f64,
    relists: f64,
}

fn counters(f: &Fixture) -> Counters {
    let (status, body) = f.operator.http_get("/metrics");
    assert!(status.contains("200"), "GET /metrics: {status}");
    let c = |series: &str| counter_value(&body, series);
    Counters {
        resyncs: c("operator_resync_seconds_count"),
        unchanged: c("operator_resync_unchanged_total"),
        inspects: c("operator_engine_requests_total{op=\"inspect\"}"),
        lists: c("operator_engine_requests_total{op=\"list\"}"),
        relists: c("operator_watch_relists_total{reason=\"interval\"}"),
    }
}

/// Waits (60 s) for a window of at least 3 resyncs, with no re-list of the engine in it, in
/// which every resync counted all `n` services as unchanged and the engine was asked nothing
/// (no list, no inspect). Returns the counters at its end.
fn wait_quiet_resyncs(f: &Fixture, n: f64, what: &str) -> Counters {
    let mut windows = Vec::new();
    let mut found = None;
    let quiet = wait_until(Duration::from_secs(60), || {
        let before = counters(f);
        f.operator.wait_resyncs(3);
        let after = counters(f);
        windows.push((before, after));
        let ok = after.relists == before.relists
            && after.unchanged - before.unchanged == n * (after.resyncs - before.resyncs)
            && after.inspects == before.inspects
            && after.lists == before.lists;
        if ok {
            found = Some(after);
        }
        ok
    });
    assert!(
        quiet,
        "{what}: no 3 resyncs found all {n} services unchanged without asking the engine \
         (windows, before and after: {windows:#?}); log:\n{}",
        f.operator.log()
    );
    found.expect("found")
}

#[test]
fn a_resync_asks_the_engine_nothing_and_a_relist_comes_on_its_own_bound() {
    let b = Fixture::builder("resync");
    let cluster = b.cluster().to_string();
    let hand = format!("operator.test.resync={cluster}");
    let b = b.also_clean(hand.clone());
    let adopted = format!("{cluster}-adopted");
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &adopted,
        "--network",
        "host",
        "--label",
        TEST_LABEL,
        "--label",
        &hand,
        BUSYBOX_IMAGE,
        "sh",
        "-c",
        "trap 'exit 0' TERM; while true; do sleep 1; done",
    ]);
    let f = b
        .manifest("cluster.yaml", manifest)
        .args(&["--settle", "1s", "--relist", "8s"])
        .resync("1s")
        .start();
    for service in ["checked", "host", "adopted"] {
        f.wait_running(&f.name(service), "the start");
    }

    // Once all three were found clean, a resync reconciles none of them and asks the
    // engine nothing: it re-enqueues from the store, which shows them unchanged.
    let quiet = wait_quiet_resyncs(&f, 3.0, "after the start");

    // The engine is listed again on its own bound (`--relist 8s` here), apart from resyncs.
    f.operator.wait_advanced(
        "operator_watch_relists_total{reason=\"interval\"}",
        1,
        Duration::from_secs(30),
    );
    let relisted = counters(&f);
    assert!(
        relisted.lists > quiet.lists,
        "a re-list that did not list: {quiet:?} -> {relisted:?}"
    );

    // A drift still reaches the controller by its event and is repaired; once its ticket is
    // resolved and its backoff reset, the resyncs find all three unchanged again.
    docker_ok(&["kill", &f.name("host")]);
    assert!(
        wait_until(Duration::from_secs(30), || f
            .ticket("stopped", &f.name("host"))
            .is_some_and(|t| t["status"] == "resolved")),
        "the killed service was not repaired: {:#?}; log:\n{}",
        f.tickets(),
        f.operator.log()
    );
    wait_quiet_resyncs(&f, 3.0, "after the repair");
}
