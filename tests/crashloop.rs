//! A container that exits at once is restarted with growing delays, then escalated once its
//! restart budget is spent.

mod common;

use std::time::Duration;

use common::operator::{entry_time, epoch_now, event_times, wait_until};
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
    // Well past the next backoff (1.6 s) and several resyncs: nothing more may happen.
    std::thread::sleep(Duration::from_secs(5));
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
fn an_escalation_ends_with_its_ticket_and_the_next_single_crash_is_repaired_as_a_stop() {
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
    // One more crash: an ordinary stop, repaired at once (within the window it reopens the
    // same ticket as a flap).
    docker_ok(&["kill", &name]);
    f.wait_running(&name, "the single crash after the escalation ended");
    let repaired = || {
        f.tickets().into_iter().find(|t| {
            t["service"] == name.as_str()
                && t["flaps"] == 1
                && t["status"] == "resolved"
                && t["resolved_by"] == "controller"
        })
    };
    assert!(
        wait_until(Duration::from_secs(30), || repaired().is_some()),
        "the crash was not repaired and re-checked; tickets {:#?}",
        f.tickets()
    );
    let ticket = repaired().unwrap();
    assert_eq!(ticket["drift"], "stopped", "{ticket:#}");
    assert_eq!(operator.metric("operator_escalated_services"), Some(0.0));
}
