//! The quorum gate on a real three-member etcd (Raft) group run by the controller: a restart
//! that would leave the group below its quorum waits, says why, and goes ahead by itself
//! once the group has recovered.

mod common;

use std::time::Duration;

use common::etcd::Members;
use common::operator::{started_at, wait_until};
use common::switch::Switch;
use common::{Fixture, docker_ok};

/// The checks and the group beside the three members: e1 has a check on the switch with
/// `policy: restart`; one group of the three (majority).
fn spec(members: &Members, switch: u16) -> String {
    format!(
        r#"  checks:
    - name: e1-switch
      http: {{url: "http://127.0.0.1:{switch}/", status: 200, timeout: 1s}}
      for: 1s
      service: {e1}
      remediation: {{policy: restart, backoff: {{initial: 200ms, max: 2s}}}}
{groups}"#,
        e1 = members.name(1),
        groups = members.groups_yaml("members", "majority"),
    )
}

#[test]
fn a_restart_that_would_break_the_quorum_waits_says_why_and_goes_ahead_once_the_group_recovers() {
    let switch = Switch::start();
    let b = Fixture::builder("quorum");
    let members = Members::new(b.cluster(), 3);
    let spec = spec(&members, switch.port);
    // Created with every member under restart, then watched with e0 only observed.
    let f = b
        .manifest("cluster.yaml", |_| members.manifest(&spec))
        .run_once()
        .manifest("cluster.yaml", |_| {
            members.clone().observe(&[0]).manifest(&spec)
        })
        .args(&["--settle", "1s"])
        .resync("1s")
        .start();
    let (e0, e1) = (f.name("e0"), f.name("e1"));
    f.wait_running(&e1, "the start");

    // e0 down (and left down: only observed), then e1's check fails: restarting e1 now
    // would leave one of three members live.
    docker_ok(&["stop", "--time", "1", &e0]);
    let before = started_at(&e1);
    switch.set(false);
    let note = "held back: would leave members with 1 of 3 live; needs 2";
    assert!(
        wait_until(Duration::from_secs(60), || f.noted(
            "check-failed",
            &e1,
            note
        )),
        "the restart was not held back with its reason: {:#?}; log:\n{}",
        f.tickets(),
        f.operator.log()
    );
    // Held, not merely late: several looks later (each held again, every 2 s; a stalled
    // loop fails here) e1 still runs its first process.
    f.operator.wait_advanced(
        r#"operator_reconcile_total{result="gated"}"#,
        3,
        Duration::from_secs(60),
    );
    assert_eq!(started_at(&e1), before, "e1 was restarted below quorum");
    let gated = f.operator.counter(&format!(
        "operator_actions_gated_total{{cluster=\"{}\",group=\"members\",reason=\"quorum\"}}",
        f.cluster
    ));
    // Counted per hold, not per look (it was looked at every 2 s for several seconds).
    assert!(
        (1.0..3.0).contains(&gated),
        "one hold is counted once however many looks: {gated}"
    );
    let ticket = f.ticket("check-failed", &e1).unwrap();
    assert_eq!(
        ticket["actions"], 0,
        "a held-back restart spent nothing: {ticket:#}"
    );

    // e0 comes back: three live, the restart goes ahead by itself.
    docker_ok(&["start", &e0]);
    assert!(
        wait_until(Duration::from_secs(60), || started_at(&e1) != before),
        "e1 was not restarted once the group recovered; log:\n{}",
        f.operator.log()
    );
    switch.set(true);
    assert!(
        wait_until(Duration::from_secs(60), || f
            .ticket("check-failed", &e1)
            .is_some_and(|t| t["status"] == "resolved")),
        "{:#?}",
        f.tickets()
    );
}

/// The group's replacement window is the gate's state, not the process's: a controller killed
/// after a repair that took a live member down comes back counting that repair, so the next
/// one past `replacements.max` escalates instead of taking the member down again.
#[test]
fn a_controller_killed_after_a_replacement_comes_back_with_the_groups_window_as_it_was() {
    let switch = Switch::start();
    let b = Fixture::builder("quorumcap");
    let members = Members::new(b.cluster(), 3);
    let spec = format!(
        "{}      replacements: {{max: 1, window: 10m}}\n",
        spec(&members, switch.port)
    );
    let mut f = b
        .manifest("cluster.yaml", |_| members.manifest(&spec))
        .run_once()
        .args(&["--settle", "1s"])
        .resync("1s")
        .start();
    let e1 = f.name("e1");
    f.wait_running(&e1, "the start");
    assert!(
        members.wait_healthy(Duration::from_secs(60)),
        "{}",
        members.logs(20)
    );

    // The check on e1 fails: e1 is restarted, the group's one replacement in the window.
    let before = started_at(&e1);
    switch.set(false);
    assert!(
        wait_until(Duration::from_secs(60), || started_at(&e1) != before),
        "e1 was not restarted for its check; log:\n{}",
        f.operator.log()
    );
    switch.set(true);
    assert!(
        wait_until(Duration::from_secs(60), || f
            .ticket("check-failed", &e1)
            .is_some_and(|t| t["status"] == "resolved")),
        "{:#?}",
        f.tickets()
    );

    // A crash, and a new controller on the same database.
    f.restart_operator();
    assert!(
        members.wait_healthy(Duration::from_secs(60)),
        "{}",
        members.logs(20)
    );

    // The check fails again within the window: the cap is spent, whoever counted it.
    let before = started_at(&e1);
    switch.set(false);
    let escalated = || {
        f.ticket("check-failed", &e1)
            .filter(|t| t["status"] == "escalated")
    };
    assert!(
        wait_until(Duration::from_secs(60), || escalated().is_some()),
        "the second repair in the window did not escalate: {:#?}; log:\n{}",
        f.tickets(),
        f.operator.log()
    );
    let ticket = escalated().expect("escalated");
    let why = f
        .operator
        .timeline(ticket["id"].as_i64().unwrap(), "escalated")
        .into_iter()
        .next()
        .expect("an escalated entry");
    assert_eq!(
        why["detail"]["reason"], "group replacements spent",
        "{why:#}"
    );
    assert_eq!(started_at(&e1), before, "e1 was taken down past the cap");
    switch.set(true);
}
