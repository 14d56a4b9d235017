//! A container that exits at once is restarted with growing delays, then escalated once its
//! restart budget is spent.

mod common;

use std::time::{Duration, Instant};

use common::operator::{
    OperatorProcess, entry_time, epoch_now, event_times, is_running, wait_until,
};
use common::{BUSYBOX_IMAGE, Fixture, cluster_yaml, docker_ok};

#[test]
fn crash_looping_service_backs_off_then_escalates() {
    let since = epoch_now() - 1.0;
    let f = Fixture::builder("crash")
        .manifest("crash.yaml", |cluster| {
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
    - name: {cluster}-fail
      image: {BUSYBOX_IMAGE}
      command: ["sh", "-c", "exit 3"]
      remediation:
        maxRestarts: 3
        window: 10m
        backoff: {{initial: 400ms, max: 10s}}
"#
            )
        })
        .resync("1s")
        .start();
    let (name, operator) = (f.name("fail"), &f.operator);
    assert!(
        wait_until(Duration::from_secs(60), || f.tickets().iter().any(
            |t| t["service"] == name.as_str() && t["status"] == "escalated"
        )),
        "never escalated; tickets {:#?}; log:\n{}",
        f.tickets(),
        operator.log()
    );
    // Several looks (resync 1 s, so well past the next backoff of 1.6 s): nothing more may
    // happen.
    escalated_looks(operator, 3);
    let starts = event_times(&name, "start", since);
    assert_eq!(
        starts.len(),
        4,
        "one create + 3 budgeted restarts, then nothing; starts at {starts:?}; log:\n{}",
        operator.log()
    );
    // The delays the controller chose: the create is a deliberate change (no ticket, and
    // once applied it leaves no backoff behind), so as docs/manifests.md says the first
    // repair is immediate, the second waits `initial` (400 ms), the third twice as long. An attempt is committed to the timeline with the time its reconcile began, and
    // that reconcile is no sooner than the backoff allowed (5 ms: clock reading slack).
    // Whether a reconcile caught the container running between two crashes (which resolves
    // the ticket and reopens it as a flap) is timing; either way, all three restarts are on
    // this one ticket's timeline.
    let id = f.ticket("crash-looping", &name).unwrap()["id"]
        .as_i64()
        .unwrap();
    let attempts = operator.timeline(id, "action-started");
    let at: Vec<_> = attempts.iter().map(entry_time).collect();
    assert_eq!(at.len(), 3, "three budgeted restarts: {attempts:#?}");
    for (gap, (earlier, later)) in [400, 800].into_iter().zip(at.iter().zip(&at[1..])) {
        let waited = (*later - *earlier).num_milliseconds();
        assert!(
            waited >= gap - 5,
            "a restart {waited} ms after the one before, not after {gap} ms: {attempts:#?}"
        );
        assert!(
            waited < gap + 5_000,
            "a restart {waited} ms after the one before, far past {gap} ms: {attempts:#?}"
        );
    }
    for (n, e) in attempts.iter().enumerate() {
        assert_eq!(
            e["detail"]["action"], "start",
            "an exited container is started: {e:#}"
        );
        assert_eq!(e["detail"]["budgeted"], true, "{e:#}");
        assert_eq!(
            e["detail"]["attempt"],
            n as u64 + 1,
            "counted from the first repair: {e:#}"
        );
    }
    let escalated = operator.timeline(id, "escalated");
    assert_eq!(escalated.len(), 1, "escalated once: {escalated:#?}");
    assert_eq!(escalated[0]["detail"]["max_restarts"], 3);
    assert_eq!(operator.metric("operator_escalated_services"), Some(1.0));
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
    // plan and status say what the controller will (not) do, from its database.
    let dir = f.dir.path().to_str().unwrap();
    let plan = common::operator::operator(&["plan", dir, "--db", f.db().to_str().unwrap()], None);
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(
        plan.status.success() && text.contains("would not act: escalated"),
        "{text}{}",
        String::from_utf8_lossy(&plan.stderr)
    );
    let typo = common::operator::operator(&["plan", dir, "--db", "/nonexistent/t.db"], None);
    assert_eq!(
        typo.status.code(),
        Some(1),
        "a --db that does not exist is an error"
    );
    // A start is believed only after the settle time: the ticket never resolved between
    // crashes, so it never reopened either.
    assert_eq!(tickets[0]["flaps"], 0, "{:#}", tickets[0]);
    assert_eq!(
        operator.timeline(id, "resolved").len(),
        0,
        "resolved between crashes"
    );
}

#[test]
fn an_escalation_ends_with_its_ticket_but_its_repairs_still_count_until_a_person_retries() {
    let builder = Fixture::builder("escend");
    let flag = builder.dir().path().join("flag");
    std::fs::create_dir_all(&flag).expect("flag folder");
    let f = builder
        .manifest("cluster.yaml", |c| {
            cluster_yaml(
                c,
                &format!(
                    r#"    - name: {c}-svc
      image: {BUSYBOX_IMAGE}
      networkMode: host
      volumes: ["./flag:/flag"]
      command: ["sh", "-c", "if [ -e /flag/crash ]; then exit 3; fi; exec sleep 3600"]
      remediation:
        maxRestarts: 2
        window: 10m
        backoff: {{initial: 200ms, max: 400ms}}
"#
                ),
            )
        })
        .resync("1s")
        .start();
    let name = f.name("svc");
    f.wait_running(&name, "the start");
    let operator = &f.operator;
    // Crash-loop it into escalation.
    std::fs::write(flag.join("crash"), "").expect("crash flag");
    docker_ok(&["kill", &name]);
    assert!(
        wait_until(Duration::from_secs(60), || f.tickets().iter().any(
            |t| t["service"] == name.as_str() && t["status"] == "escalated"
        )),
        "never escalated; tickets {:#?}",
        f.tickets()
    );
    // A person fixes the cause and starts it by hand: the episode ends, and so does the
    // escalation.
    std::fs::remove_file(flag.join("crash")).expect("remove the flag");
    docker_ok(&["start", &name]);
    assert!(
        wait_until(Duration::from_secs(30), || f
            .tickets()
            .iter()
            .all(|t| t["status"] == "resolved")),
        "the escalated ticket did not end; tickets {:#?}",
        f.tickets()
    );
    assert_eq!(operator.metric("operator_escalated_services"), Some(0.0));
    let escalated = operator.tickets(&["list", "--status", "escalated", "--json"]);
    let escalated: Vec<serde_json::Value> =
        serde_json::from_slice(&escalated.stdout).expect("tickets list --json");
    assert!(escalated.is_empty(), "{escalated:#?}");
    // One more crash within the window: its two repairs still count (at most maxRestarts in
    // any window, whoever ended the episode), so it is escalated at once, with its own
    // error line, and left down.
    let escalations = || operator.counter(ESCALATED);
    let escalations_before = escalations();
    docker_ok(&["kill", &name]);
    assert!(
        wait_until(Duration::from_secs(30), || f.tickets().iter().any(
            |t| t["service"] == name.as_str() && t["status"] == "escalated"
        )),
        "the crash in a full window was not escalated; tickets {:#?}; log:\n{}",
        f.tickets(),
        operator.log()
    );
    assert_eq!(
        escalations(),
        escalations_before + 1.0,
        "one escalation (and its error line) for the escalated ticket; log:\n{}",
        operator.log()
    );
    escalated_looks(operator, 2);
    assert!(!is_running(&name, None), "repaired past its budget");
    // A person's word gives a fresh budget: repaired at once.
    let id = f
        .tickets()
        .into_iter()
        .find(|t| t["service"] == name.as_str() && t["status"] == "escalated")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let retried = operator.tickets(&["retry", &id.to_string()]);
    assert!(retried.status.success(), "{retried:?}");
    f.wait_running(&name, "tickets retry");
    let repaired = || {
        f.tickets().into_iter().find(|t| {
            t["id"] == id && t["status"] == "resolved" && t["resolved_by"] == "controller"
        })
    };
    assert!(
        wait_until(Duration::from_secs(30), || repaired().is_some()),
        "the retried ticket was not repaired and re-checked; tickets {:#?}",
        f.tickets()
    );
    assert_eq!(operator.metric("operator_escalated_services"), Some(0.0));
}

/// Waits (60 s) until the controller has looked at an escalated service `n` more times:
/// The reconcile's escalations (each with its ERROR line), and its warnings that a service
/// found escalated is still down (see `reconcile::events`).
const ESCALATED: &str = r#"operator_reconcile_events_total{event="escalated"}"#;
const STILL_ESCALATED: &str = r#"operator_reconcile_events_total{event="still-escalated"}"#;

/// what a test asserts did not happen then had the chance to (a stalled loop fails here).
fn escalated_looks(operator: &OperatorProcess, n: u32) {
    let looks = || {
        operator
            .metric(r#"operator_reconcile_total{result="escalated"}"#)
            .unwrap_or(0.0)
    };
    let first = looks();
    assert!(
        wait_until(Duration::from_secs(60), || looks() >= first + f64::from(n)),
        "the controller stopped looking at the escalated service; log:\n{}",
        operator.log()
    );
}

/// One service under `maxRestarts: 1` in `window`, repaired once by the controller (the
/// window is full), then an observer (`run --observe-only`, what a drill's `--baseline`
/// runs) on the same database that sees the next kill through several of its looks and is
/// stopped. Returns the fixture (its controller stopped), the container, when the repair
/// was made, and the stopped observer (for its log).
fn repaired_once_then_observed(
    prefix: &str,
    window: &str,
) -> (Fixture, String, Instant, OperatorProcess) {
    let mut f = Fixture::builder(prefix)
        .manifest("cluster.yaml", |c| {
            cluster_yaml(
                c,
                &format!(
                    r#"    - name: {c}-svc
      image: {BUSYBOX_IMAGE}
      networkMode: host
      command: ["sleep", "3600"]
      remediation:
        maxRestarts: 1
        window: {window}
        backoff: {{initial: 100ms, max: 200ms}}
"#
                ),
            )
        })
        .resync("1s")
        .start();
    let name = f.name("svc");
    f.wait_running(&name, "the start");
    docker_ok(&["kill", &name]);
    f.wait_running(&name, "the first kill");
    let repaired_at = Instant::now();
    assert!(
        wait_until(Duration::from_secs(30), || f
            .tickets()
            .iter()
            .all(|t| t["status"] == "resolved")),
        "the first kill's ticket did not resolve: {:#?}",
        f.tickets()
    );
    f.operator.stop();
    let mut observer = OperatorProcess::start_with_db(
        &[f.dir.path()],
        &["--observe-only", "--resync", "1s"],
        None,
        f.db(),
    );
    observer.wait_ready();
    docker_ok(&["kill", &name]);
    assert!(
        wait_until(Duration::from_secs(30), || f
            .tickets()
            .iter()
            .any(|t| t["service"] == name.as_str() && t["status"] == "open")),
        "the observer opened no ticket: {:#?}; log:\n{}",
        f.tickets(),
        observer.log()
    );
    // Several of its looks at the stopped container (resync 1 s), counted by the observer
    // itself: a stalled loop cannot pass for one that looked and left the budget alone.
    let looks = || {
        observer
            .metric(r#"operator_reconcile_total{result="observed"}"#)
            .unwrap_or(0.0)
    };
    let first = looks();
    assert!(
        wait_until(Duration::from_secs(30), || looks() >= first + 3.0),
        "the observer stopped looking; log:\n{}",
        observer.log()
    );
    observer.stop();
    (f, name, repaired_at, observer)
}

/// What a `chaos run --baseline` does between two drills: an observer must never spend or
/// escalate the budget, and a controller that finds a service escalated and down says so.
#[test]
fn an_observer_never_escalates_and_a_later_controller_says_why_a_service_stays_down() {
    let (mut f, name, _, observer) = repaired_once_then_observed("observer", "10m");
    let escalated_budget = |db: &std::path::Path| -> i64 {
        let conn =
            rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .expect("open the database");
        conn.query_row(
            "SELECT escalated FROM budgets WHERE service = ?1",
            [&name],
            |r| r.get(0),
        )
        .expect("the budget row")
    };
    assert_eq!(
        escalated_budget(f.db()),
        0,
        "an observer escalated the budget; log:\n{}",
        observer.log()
    );
    assert!(
        f.tickets().iter().all(|t| t["status"] != "escalated"),
        "{:#?}",
        f.tickets()
    );
    assert!(!is_running(&name, None), "the observer repaired");
    // The acting controller: the window is still full, so it escalates, and says so.
    f.restart_operator();
    assert!(
        wait_until(Duration::from_secs(30), || f.tickets().iter().any(
            |t| t["service"] == name.as_str() && t["status"] == "escalated"
        )),
        "not escalated: {:#?}; log:\n{}",
        f.tickets(),
        f.operator.log()
    );
    assert!(
        wait_until(Duration::from_secs(10), || f.operator.counter(ESCALATED)
            >= 1.0),
        "no escalation said (its error line); log:\n{}",
        f.operator.log()
    );
    assert_eq!(escalated_budget(f.db()), 1, "the budget follows its ticket");
    // A controller that starts with it escalated and down warns, once.
    f.restart_operator();
    assert!(
        wait_until(Duration::from_secs(20), || f
            .operator
            .counter(STILL_ESCALATED)
            >= 1.0),
        "a restarted controller left the escalated service down silently; log:\n{}",
        f.operator.log()
    );
    escalated_looks(&f.operator, 3);
    assert_eq!(
        f.operator.counter(STILL_ESCALATED),
        1.0,
        "once, not per look; log:\n{}",
        f.operator.log()
    );
    assert!(!is_running(&name, None), "repaired past its budget");
}

/// A drill's `--baseline` leaves an observer's look at a service whose window was full; once
/// the window has room again, the next (acting) controller repairs the kill the observer
/// only saw. An observer that had escalated the budget left it down for good.
#[test]
fn after_an_observer_the_next_controller_repairs_a_kill_once_the_window_has_room() {
    let (mut f, name, repaired_at, _) = repaired_once_then_observed("afterobs", "20s");
    // The window has room again.
    if let Some(left) = Duration::from_secs(21).checked_sub(repaired_at.elapsed()) {
        std::thread::sleep(left);
    }
    f.restart_operator();
    f.wait_running(&name, "the kill the observer saw");
    assert!(
        wait_until(Duration::from_secs(30), || f.tickets().iter().all(
            |t| t["status"] == "resolved" && t["resolved_by"] == "controller"
        )),
        "not repaired and re-checked by the controller: {:#?}; log:\n{}",
        f.tickets(),
        f.operator.log()
    );
}
