//! The periodic resync on a real engine: one list of the engine stands in for a full look at
//! every service whose last reconcile was clean, as long as the list shows it unchanged (its
//! state, health, networks, spec and owner read the same from a list line as from an
//! inspect); a service that drifted is looked at in full again.

mod common;

use std::time::Duration;

use common::operator::wait_until;
use common::{BUSYBOX_IMAGE, Fixture, LOOP, TEST_LABEL, cluster_yaml, docker_ok};

/// Three kinds of container a list line must read right: one with a healthcheck on the
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
    - name: {cluster}-adopted
      image: {BUSYBOX_IMAGE}
      networkMode: host
      command: {LOOP}
      adopt: true
"#
    );
    cluster_yaml(cluster, &services)
}

/// Each resync's `(unchanged, look)` counts from the controller's JSON log, in order.
fn resyncs(log: &str) -> Vec<(u64, u64)> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("resync: ") && m.contains(" unchanged in "))
        })
        .filter_map(|v| Some((v["unchanged"].as_u64()?, v["look"].as_u64()?)))
        .collect()
}

#[test]
fn a_resync_trusts_the_list_for_what_it_shows_unchanged_and_looks_again_at_what_drifted() {
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
        .args(&["--settle", "1s"])
        .resync("1s")
        .start();
    for service in ["checked", "host", "adopted"] {
        f.wait_running(&f.name(service), "the start");
    }

    // Once all three were found clean, a resync skips all three: each one's list line read
    // as its inspect did (a mismatch in any field would have it looked at every time).
    let all_unchanged = || resyncs(&f.operator.log()).contains(&(3, 0));
    assert!(
        wait_until(Duration::from_secs(60), all_unchanged),
        "no resync found all three unchanged: {:?}; log:\n{}",
        resyncs(&f.operator.log()),
        f.operator.log()
    );
    assert!(
        f.operator
            .metric("operator_resync_unchanged_total")
            .unwrap_or(0.0)
            >= 3.0,
        "the skips are not counted"
    );

    // A drift still reaches the controller by its event and is repaired; the repaired
    // service is looked at in full by the resyncs after it (a repair leaves a backoff to
    // reset: not quiet), the other two still skipped.
    let seen = resyncs(&f.operator.log()).len();
    docker_ok(&["kill", &f.name("host")]);
    assert!(
        wait_until(Duration::from_secs(30), || f
            .ticket("stopped", &f.name("host"))
            .is_some_and(|t| t["status"] == "resolved")),
        "the killed service was not repaired: {:#?}; log:\n{}",
        f.tickets(),
        f.operator.log()
    );
    assert!(
        wait_until(Duration::from_secs(30), || resyncs(&f.operator.log())
            [seen..]
            .contains(&(2, 1))),
        "no resync after the repair looked at the repaired service alone: {:?}",
        &resyncs(&f.operator.log())[seen..]
    );
}
