//! Declared checks against a real Prometheus scraping a real three-member etcd (Raft)
//! cluster run by the controller: check tickets, "no data", inhibition by a down container,
//! and Prometheus going away.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::etcd::Members;
use common::operator::{TempDir, inspect, is_running, operator, remove_db, wait_until};
use common::prometheus::Prometheus;
use common::{Cleanup, Fixture, docker_ok, free_port, require_docker, unique};

/// Three etcd members (the controller creates them), a Prometheus scraping them, and the
/// controller.
struct Etcd {
    f: Fixture,
    members: Members,
    // Dropped after the controller.
    prom: Prometheus,
}

/// The fixture's controller, cluster, folder and tickets.
impl std::ops::Deref for Etcd {
    type Target = Fixture;

    fn deref(&self) -> &Fixture {
        &self.f
    }
}

impl Etcd {
    /// `observe_member`: the member whose container-level policy is `observe`.
    fn start(prefix: &str, observe_member: Option<usize>) -> Etcd {
        Etcd::start_with(prefix, observe_member, "observe")
    }

    /// `check_policy`: the remediation policy of the `member-up` check.
    fn start_with(prefix: &str, observe_member: Option<usize>, check_policy: &str) -> Etcd {
        let fixture = Fixture::builder(prefix);
        let members = Members::new(fixture.cluster(), 3);
        let prom = Prometheus::start(
            fixture.dir().path().join("prom"),
            free_port(),
            "etcd",
            &members.client,
        );
        let spec = spec(&members, prom.port(), check_policy);
        // Create every member first; then (maybe) watch one without repairing it.
        let f = fixture
            .manifest("cluster.yaml", |_| members.manifest(&spec))
            .run_once()
            .manifest("cluster.yaml", |_| {
                members
                    .clone()
                    .observe(observe_member.as_slice())
                    .manifest(&spec)
            })
            .resync("2s")
            .start();
        let e = Etcd { f, members, prom };
        assert!(
            wait_until(Duration::from_secs(60), || e
                .prom
                .query("etcd_server_has_leader == 1")
                .is_some_and(|r| r.len() == 3)),
            "the etcd cluster never had a leader on all members; member logs:\n{}",
            e.members.logs(5)
        );
        e
    }

    fn member(&self, i: usize) -> String {
        self.members.name(i)
    }

    fn signal_member(&self, i: usize, signal: &str) {
        let pid = inspect(&self.member(i), None).unwrap()["State"]["Pid"]
            .as_i64()
            .unwrap();
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

/// Beside the members: the Prometheus scraping them and the checks on them (`check_policy`:
/// the remediation policy of `member-up`).
fn spec(members: &Members, prom: u16, check_policy: &str) -> String {
    format!(
        r#"  prometheus: {{url: "http://127.0.0.1:{prom}", interval: 1s, timeout: 2s}}
  checks:
    - name: member-up
      expr: 'up{{job="etcd"}} == 0'
      for: 2s
      severity: critical
      serviceLabel: instance
      services: {{{map}}}
      remediation: {{policy: {check_policy}, backoff: {{initial: 1s, max: 10s}}}}
    - name: has-leader
      healthy: 'etcd_server_has_leader'
      for: 2s
      serviceLabel: instance
      services: {{{map}}}
    - name: typo
      expr: 'etcd_server_has_leadr == 0'
      severity: warning
"#,
        map = members.instance_map(),
    )
}

#[test]
fn checks_open_and_resolve_tickets_report_no_data_and_defer_to_a_down_container() {
    let f = Etcd::start("checks", Some(2));
    let c = &f.cluster;

    // A check on a metric that does not exist is reported, not silently passing: its
    // no-data gauge turns 1 (the series appears at the check's first round).
    let no_data =
        |check: &str| format!("operator_check_no_data{{cluster=\"{c}\",check=\"{check}\"}}");
    assert!(
        wait_until(Duration::from_secs(30), || f
            .operator
            .metric(&no_data("typo"))
            == Some(1.0)),
        "{} is {:?}; metrics:\n{}",
        no_data("typo"),
        f.operator.metric(&no_data("typo")),
        f.operator.http_get("/metrics").1
    );
    // It is one steady report, not one that comes and goes round by round; and it is the
    // misspelled check's alone: the checks that see their series are not "no data".
    f.operator.wait_check_rounds(2);
    for (check, want) in [("typo", 1.0), ("member-up", 0.0), ("has-leader", 0.0)] {
        let series = no_data(check);
        assert_eq!(
            f.operator.served_metric(&series),
            want,
            "{series}; metrics:\n{}",
            f.operator.http_get("/metrics").1
        );
    }
    let status = operator(
        &[
            "status",
            f.dir.path().to_str().unwrap(),
            "--db",
            f.db().to_str().unwrap(),
        ],
        None,
    );
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.lines()
            .any(|l| l.contains("typo") && l.contains("no-data")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("member-up") && l.contains("passing")),
        "{text}"
    );

    // A member that stops answering (its container still running) fails `member-up`
    // past `for`: a check-failed ticket under observe policy...
    let e0 = f.member(0);
    f.signal_member(0, "STOP");
    let stopped_at = Instant::now();
    assert!(
        wait_until(Duration::from_secs(30), || f
            .ticket("check-failed", &e0)
            .is_some()),
        "no check ticket; tickets {:#?}; log:\n{}",
        f.tickets(),
        f.operator.log()
    );
    eprintln!("member stopped -> check ticket: {:?}", stopped_at.elapsed());
    // Several container resyncs (every 2 s) and check rounds pass: a running container
    // does not resolve a failing check's ticket (a stalled loop fails here instead).
    f.operator.wait_resyncs(2);
    f.operator.wait_check_rounds(2);
    let t = f.ticket("check-failed", &e0).unwrap();
    assert_eq!(t["status"], "open", "{t:#}");
    assert_eq!(t["flaps"], 0, "{t:#}");
    let shown = f
        .operator
        .tickets(&["show", &t["id"].to_string(), "--json"]);
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(
        shown["timeline"][0]["detail"]["evidence"]["check"],
        "member-up"
    );
    assert!(
        shown["timeline"][0]["detail"]["evidence"]["series"][0]["labels"]["instance"]
            .as_str()
            .is_some_and(|i| i.ends_with(&f.members.client[0].to_string())),
        "the offending series is in the timeline: {shown:#}"
    );
    // ... which resolves, self-healed, when it answers again.
    f.signal_member(0, "CONT");
    assert!(
        wait_until(Duration::from_secs(30), || f.tickets().iter().any(
            |t| t["service"] == e0.as_str()
                && t["status"] == "resolved"
                && t["resolved_by"] == "self-healed"
                && t["flaps"] == 0
        )),
        "tickets {:#?}",
        f.tickets()
    );

    // A member whose container is stopped: the check failure goes on the container's
    // ticket, not a ticket of its own.
    let e2 = f.member(2);
    docker_ok(&["stop", &e2]);
    let check_noted = || {
        f.ticket("stopped", &e2).is_some_and(|t| {
            f.operator
                .timeline(t["id"].as_i64().unwrap(), "note")
                .iter()
                .any(|e| e["detail"]["check-failed"]["check"] == "member-up")
        })
    };
    assert!(
        wait_until(Duration::from_secs(30), check_noted),
        "the failing check is not noted on the container's ticket; tickets {:#?}; log:\n{}",
        f.tickets(),
        f.operator.log()
    );
    assert!(
        f.ticket("check-failed", &e2).is_none(),
        "{:#?}",
        f.tickets()
    );
    docker_ok(&["start", &e2]);
    assert!(wait_until(Duration::from_secs(30), || is_running(
        &e2, None
    )));
}

#[test]
fn prometheus_down_is_one_observability_lost_ticket_and_freezes_check_tickets() {
    let mut f = Etcd::start("promdown", None);
    let e0 = f.member(0);
    f.signal_member(0, "STOP");
    assert!(
        wait_until(Duration::from_secs(30), || f
            .ticket("check-failed", &e0)
            .is_some()),
        "log:\n{}",
        f.operator.log()
    );
    f.prom.kill();
    assert!(
        wait_until(Duration::from_secs(30), || f
            .ticket("observability-lost", "-")
            .is_some()),
        "tickets {:#?}; log:\n{}",
        f.tickets(),
        f.operator.log()
    );
    // The member recovers while nobody can see it: its ticket must not move.
    f.signal_member(0, "CONT");
    let frozen = f.ticket("check-failed", &e0).unwrap();
    // Several check rounds (every second) that cannot ask Prometheus, and a container
    // resync (every 2 s), each free to move the ticket: a stalled loop fails here.
    f.operator.wait_check_rounds(3);
    f.operator.wait_resyncs(1);
    let tickets = f.tickets();
    assert_eq!(
        tickets
            .iter()
            .filter(|t| t["drift"] == "observability-lost")
            .count(),
        1,
        "exactly one observability-lost ticket: {tickets:#?}"
    );
    assert_eq!(
        f.ticket("check-failed", &e0).unwrap(),
        frozen,
        "a check ticket changed while Prometheus was down"
    );
    assert!(
        tickets
            .iter()
            .filter(|t| t["drift"] == "check-failed")
            .count()
            == 1
    );

    f.prom.spawn();
    assert!(
        wait_until(Duration::from_secs(60), || f
            .tickets()
            .iter()
            .all(|t| t["status"] == "resolved")),
        "tickets {:#?}; log:\n{}",
        f.tickets(),
        f.operator.log()
    );
    let lost = f.ticket("observability-lost", "-").unwrap();
    assert_eq!(lost["resolved_by"], "self-healed");
    // The log says what a person relies on: the ticket opened (at info, as every ticket
    // is), and Prometheus answering again.
    let log = f.operator.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let said = |level: &str, message: &str, drift: Option<&str>| {
        lines.iter().any(|l| {
            l["level"] == level
                && l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(message))
                && drift.is_none_or(|d| l["drift"] == d)
        })
    };
    assert!(
        said("INFO", "ticket opened", Some("observability-lost")),
        "no INFO line for the observability-lost ticket:\n{log}"
    );
    assert!(
        said("INFO", "Prometheus answers again", None),
        "no line for Prometheus answering again:\n{log}"
    );
}

/// A query that does not parse is refused offline, at its line, whether Prometheus answers or
/// not; one that parses but the cluster's Prometheus refuses (a function newer than Debian's
/// 2.42) is refused while it answers, a note while it does not, and an error with --strict.
#[test]
fn invalid_promql_is_refused_offline_and_what_prometheus_refuses_while_it_answers() {
    require_docker();
    let cluster = unique("badql");
    let _cleanup = Cleanup::new(format!("operator.cluster={cluster}"));
    let dir = TempDir::new(&cluster);
    let port = free_port();
    let prom = Prometheus::start(dir.path().join("prom"), port, "etcd", &[]);
    let head = format!(
        "apiVersion: operator/v1\nkind: Cluster\nmetadata:\n  name: {cluster}\nspec:\n  prometheus: {{url: \"http://127.0.0.1:{port}\"}}\n  services:\n    - name: {cluster}-svc\n      image: {}\n      command: [\"sleep\", \"1000\"]\n  checks:\n",
        common::BUSYBOX_IMAGE
    );
    let bad = head.clone()
        + "    - name: wrong-type\n      expr: 'rate(up) > 0'\n    - name: fine\n      expr: up == 2\n    - name: not-parsed\n      healthy: |\n        sum(up)\n          by job\n";
    let newer = head + "    - name: newer\n      expr: 'sort_by_label(up, \"job\") == 0'\n";
    let bad_file = dir.write("bad.yaml", &bad);
    let newer_file = dir.write("newer.yaml", &newer);
    let line =
        |text: &str, marker: &str| text.lines().position(|l| l.contains(marker)).unwrap() + 1;
    let db = std::env::temp_dir().join(format!("{cluster}.db"));
    let commands = |file: &std::path::Path| {
        [
            vec!["validate".to_string(), file.display().to_string()],
            vec![
                "run".to_string(),
                file.display().to_string(),
                "--once".to_string(),
                "--db".to_string(),
                db.display().to_string(),
            ],
        ]
    };
    // `file:line: field: message` for each refused query of bad.yaml, then the count.
    let refused_offline = |args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = operator(&args, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 3, "{args:?}: {stderr}");
        assert_eq!(
            lines[0],
            format!(
                "error: {}:{}: spec.checks[0].expr: invalid PromQL \"rate(up) > 0\": expected type matrix in call to function 'rate', got vector",
                bad_file.display(),
                line(&bad, "rate(up)")
            ),
            "{stderr}"
        );
        assert!(
            lines[1].starts_with(&format!(
                "{}:{}: spec.checks[2].healthy: invalid PromQL \"sum(up) by job\": ",
                bad_file.display(),
                line(&bad, "healthy: |")
            )) && lines[1].contains("syntax error"),
            "{stderr}"
        );
        assert_eq!(lines[2], "2 errors in the manifests", "{stderr}");
    };
    for args in commands(&bad_file) {
        refused_offline(&args);
    }
    for args in commands(&newer_file) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = operator(&args, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 2, "{args:?}: {stderr}");
        assert!(
            lines[0].starts_with(&format!(
                "error: {}:{}: spec.checks[0].expr: check newer: Prometheus at http://127.0.0.1:{port} refuses the query: ",
                newer_file.display(),
                line(&newer, "sort_by_label")
            )) && lines[0].contains("sort_by_label"),
            "{stderr}"
        );
        assert_eq!(lines[1], "1 error in the manifests", "{stderr}");
    }
    assert!(
        !is_running(&format!("{cluster}-svc"), None),
        "nothing may start"
    );
    drop(prom);
    // Nobody answers on that port now: the syntax verdict is the same...
    refused_offline(&commands(&bad_file)[0]);
    // ...and what only Prometheus refuses cannot be checked, so is not an error yet...
    let out = operator(&["validate", newer_file.to_str().unwrap()], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("PromQL parsed but not evaluated"),
        "{stderr}"
    );
    // ...unless the check must happen (CI).
    let out = operator(
        &["validate", "--strict", newer_file.to_str().unwrap()],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:{}: spec.prometheus.url: Prometheus at http://127.0.0.1:{port} cannot be asked",
            newer_file.display(),
            line(&newer, "prometheus:")
        )) && stderr.ends_with("1 error in the manifests\n"),
        "{stderr}"
    );
    remove_db(&db);
}

#[test]
fn a_failing_check_with_restart_policy_restarts_its_service_and_the_recheck_resolves_it() {
    let f = Etcd::start_with("ckrestart", None, "restart");
    let e0 = f.member(0);
    let id_before = inspect(&e0, None).unwrap()["Id"].clone();
    f.signal_member(0, "STOP");
    // The restart is committed to the check's ticket before it is made.
    let restarted_for_check = || {
        f.ticket("check-failed", &e0).is_some_and(|t| {
            f.operator
                .timeline(t["id"].as_i64().unwrap(), "action-started")
                .iter()
                .any(|e| {
                    e["detail"]["action"] == "restart"
                        && e["detail"]["drifts"]
                            .as_array()
                            .is_some_and(|d| d.iter().any(|d| d == "check-failed:member-up"))
                })
        })
    };
    assert!(
        wait_until(Duration::from_secs(30), restarted_for_check),
        "no restart for the failing check; tickets {:#?}; log:\n{}",
        f.tickets(),
        f.operator.log()
    );
    // The stopped etcd only dies at the end of the stop grace; then it rejoins.
    assert!(
        wait_until(Duration::from_secs(90), || f
            .ticket("check-failed", &e0)
            .is_some_and(|t| t["status"] == "resolved")),
        "tickets {:#?}; log:\n{}",
        f.tickets(),
        f.operator.log()
    );
    let t = f.ticket("check-failed", &e0).unwrap();
    assert_eq!(t["resolved_by"], "controller", "{t:#}");
    assert!(t["actions"].as_i64().unwrap() >= 1);
    assert_eq!(
        inspect(&e0, None).unwrap()["Id"],
        id_before,
        "restarted in place"
    );
}
