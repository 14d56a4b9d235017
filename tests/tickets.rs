//! Tickets on a real engine and a real SQLite file: one ticket per episode under concurrent
//! writers, budgets that survive a controller crash, unknown is never healthy, and a
//! database that is not ours is never written.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::operator::{
    TempDir, epoch_now, event_times, inspect, is_running, operator, remove_db, wait_until,
};
use common::{
    BUSYBOX_IMAGE, Fixture, PrivateDockerd, cluster_yaml, docker_ok, require_docker, unique,
};
use operator::drift::{DriftKind, Fingerprint};
use operator::tickets::{DriftSighting, Store};

const CHILD_DB: &str = "OPERATOR_TEST_CHILD_DB";
const SIGHTINGS_PER_TASK: usize = 100;
const TASKS: usize = 8;

/// Many tasks recording the same drift into one database file.
fn write_sightings(db: &Path) {
    let threads: Vec<_> = (0..TASKS)
        .map(|_| {
            let db = db.to_path_buf();
            std::thread::spawn(move || {
                let store = Store::open(&db).expect("open the shared database");
                let fp = Fingerprint::service("race", "svc", DriftKind::Stopped);
                for _ in 0..SIGHTINGS_PER_TASK {
                    store
                        .record_drift(
                            &DriftSighting {
                                fingerprint: fp.clone(),
                                drift: DriftKind::Stopped,
                                detail: "exited with code 1".into(),
                                cooldown: Duration::from_secs(600),
                                evidence: None,
                            },
                            chrono::Utc::now(),
                        )
                        .expect("record a sighting");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("writer thread");
    }
}

#[test]
fn two_processes_and_many_tasks_make_exactly_one_ticket() {
    // The second and third processes are this very test, run again by the test binary with
    // the database in the environment: then it only writes.
    if let Ok(db) = std::env::var(CHILD_DB) {
        write_sightings(Path::new(&db));
        return;
    }
    let db = std::env::temp_dir().join(format!("{}.db", unique("race")));
    Store::open(&db).expect("create the database");
    let children: Vec<_> = (0..2)
        .map(|_| {
            Command::new(std::env::current_exe().expect("test binary"))
                .args([
                    "--exact",
                    "two_processes_and_many_tasks_make_exactly_one_ticket",
                    "--test-threads=1",
                ])
                .env(CHILD_DB, &db)
                .spawn()
                .expect("start a child writer")
        })
        .collect();
    write_sightings(&db);
    for mut child in children {
        assert!(
            child.wait().expect("child writer").success(),
            "a child writer failed"
        );
    }
    let store = Store::open(&db).unwrap();
    let tickets = store.list(None).unwrap();
    remove_db(&db);
    assert_eq!(tickets.len(), 1, "{tickets:#?}");
    assert_eq!(
        tickets[0].occurrences as usize,
        3 * TASKS * SIGHTINGS_PER_TASK,
        "every sighting counted on the one ticket"
    );
}

/// The newest ticket of `service`, if any.
fn ticket_of(f: &Fixture, service: &str) -> Option<serde_json::Value> {
    f.tickets().into_iter().find(|t| t["service"] == service)
}

/// The `action-started` entries on the newest ticket of `service`.
fn attempts_on(f: &Fixture, service: &str) -> usize {
    ticket_of(f, service).map_or(0, |t| {
        f.operator
            .timeline(t["id"].as_i64().unwrap(), "action-started")
            .len()
    })
}

#[test]
fn a_crash_looping_service_keeps_its_budget_across_a_controller_crash() {
    let since = epoch_now() - 1.0;
    let mut f = Fixture::builder("budget")
        .manifest("cluster.yaml", |c| {
            cluster_yaml(c, &format!(
                "    - name: {c}-fail\n      image: {BUSYBOX_IMAGE}\n      networkMode: host\n      command: [\"sh\", \"-c\", \"exit 3\"]\n      remediation:\n        maxRestarts: 4\n        backoff: {{initial: 500ms, max: 10s}}\n"
            ))
        })
        .resync("1s")
        .start();
    let name = f.name("fail");
    // The create and two budgeted restarts, then a crash.
    assert!(
        wait_until(Duration::from_secs(60), || attempts_on(&f, &name) >= 2),
        "tickets {:#?}; log:\n{}",
        f.tickets(),
        f.operator.log()
    );
    f.restart_operator();
    assert!(
        wait_until(Duration::from_secs(60), || ticket_of(&f, &name)
            .is_some_and(|t| t["status"] == "escalated")),
        "not escalated; tickets {:#?}; log:\n{}",
        f.tickets(),
        f.operator.log()
    );
    std::thread::sleep(Duration::from_secs(2));
    let starts = event_times(&name, "start", since);
    let tickets = f.tickets();
    let shown = f.operator.ticket_json(tickets[0]["id"].as_i64().unwrap());
    drop(f);
    // The create and maxRestarts restarts across both controllers; one fewer if the crash
    // fell between recording an attempt and the engine starting the container (the attempt
    // still counts: a crash never hands out a free one).
    assert!(
        (4..=5).contains(&starts.len()),
        "the create and at most maxRestarts restarts across both controllers: {starts:?}"
    );
    assert_eq!(tickets.len(), 1, "one episode, one ticket: {tickets:#?}");
    assert_eq!(tickets[0]["status"], "escalated");
    let kinds: Vec<&str> = shown["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    let started = kinds.iter().filter(|k| **k == "action-started").count();
    let results = kinds.iter().filter(|k| **k == "action-result").count();
    assert_eq!(started, results, "every action has its result: {kinds:?}");
    assert_eq!(kinds.first(), Some(&"detected"));
    assert_eq!(kinds.last(), Some(&"escalated"));
}

#[test]
fn a_controller_killed_mid_repair_resumes_and_the_ticket_closes_with_a_complete_timeline() {
    // `sh` as PID 1 ignores SIGTERM, so a restart waits out the 10 s stop grace: a wide
    // window to crash the controller in. The marker lives in /dev/shm, which a restart
    // empties, so one restart really repairs.
    let mut f = Fixture::builder("midfix")
        .manifest("cluster.yaml", |c| {
            cluster_yaml(c, &format!(
                "    - name: {c}-svc\n      image: {BUSYBOX_IMAGE}\n      networkMode: host\n      command: [\"sh\", \"-c\", \"while true; do sleep 1; done\"]\n      healthcheck:\n        test: [\"CMD-SHELL\", \"test ! -e /dev/shm/sick\"]\n        interval: 300ms\n        retries: 1\n      remediation:\n        backoff: {{initial: 200ms, max: 2s}}\n"
            ))
        })
        .resync("1s")
        .start();
    let name = f.name("svc");
    let healthy =
        || inspect(&name, None).is_some_and(|c| c["State"]["Health"]["Status"] == "healthy");
    assert!(
        wait_until(Duration::from_secs(60), healthy),
        "log:\n{}",
        f.operator.log()
    );
    docker_ok(&["exec", &name, "touch", "/dev/shm/sick"]);
    assert!(
        wait_until(Duration::from_secs(30), || attempts_on(&f, &name) >= 1),
        "no restart began; tickets {:#?}; log:\n{}",
        f.tickets(),
        f.operator.log()
    );
    std::thread::sleep(Duration::from_secs(1));
    f.restart_operator();
    let resolved = || ticket_of(&f, &name).is_some_and(|t| t["status"] == "resolved");
    assert!(
        wait_until(Duration::from_secs(90), resolved),
        "not resolved; tickets {:#?}; log:\n{}",
        f.tickets(),
        f.operator.log()
    );
    assert!(healthy(), "the service is healthy again");
    let tickets = f.tickets();
    let shown = f.operator.ticket_json(tickets[0]["id"].as_i64().unwrap());
    drop(f);
    assert_eq!(tickets.len(), 1, "{tickets:#?}");
    assert_eq!(tickets[0]["drift"], "unhealthy");
    assert_eq!(tickets[0]["resolved_by"], "controller");
    let timeline = shown["timeline"].as_array().unwrap();
    let kinds: Vec<&str> = timeline
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"detected"), "{kinds:?}");
    assert!(
        timeline
            .iter()
            .any(|e| e["kind"] == "action-result" && e["detail"]["result"] == "interrupted"),
        "the crash is written into the timeline: {timeline:#?}"
    );
    let started = kinds.iter().filter(|k| **k == "action-started").count();
    let results = kinds.iter().filter(|k| **k == "action-result").count();
    assert_eq!(started, results, "every action has its result: {kinds:?}");
    assert_eq!(&kinds[kinds.len() - 2..], &["recheck", "resolved"]);
}

#[test]
fn while_docker_is_unreachable_no_ticket_changes_and_the_recheck_resolves_after() {
    require_docker();
    // Containers keep running while this engine is down.
    let mut engine = PrivateDockerd::with_args(&["--live-restore"]);
    engine.import_busybox();
    let host = engine.host();
    let service = |name: &str, policy: &str| {
        format!(
            "    - name: {name}\n      image: {BUSYBOX_IMAGE}\n      networkMode: host\n      command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n      remediation:\n        policy: {policy}\n        backoff: {{initial: 200ms, max: 1s}}\n"
        )
    };
    // Create both, then watch one of them without repairing it.
    let f = Fixture::builder("outage")
        .docker_host(&host)
        .manifest("cluster.yaml", |c| {
            cluster_yaml(
                c,
                &(service(&format!("{c}-calm"), "restart")
                    + &service(&format!("{c}-watched"), "restart")),
            )
        })
        .run_once()
        .manifest("cluster.yaml", |c| {
            cluster_yaml(
                c,
                &(service(&format!("{c}-calm"), "restart")
                    + &service(&format!("{c}-watched"), "observe")),
            )
        })
        .resync("1s")
        .start();
    let (calm, watched, controller) = (f.name("calm"), f.name("watched"), &f.operator);
    engine.docker_ok(&["pause", &watched]);
    assert!(
        wait_until(Duration::from_secs(30), || controller
            .tickets_json()
            .iter()
            .any(|t| t["drift"] == "paused" && t["status"] == "open")),
        "log:\n{}",
        controller.log()
    );
    let before = controller.tickets_json();

    let calm_pid = inspect(&calm, Some(&host)).and_then(|c| c["State"]["Pid"].as_i64());
    engine.kill();
    assert!(
        wait_until(Duration::from_secs(30), || controller
            .http_get("/healthz")
            .1
            .contains("event stream disconnected")),
        "the lost stream was not noticed: healthz {:?}; log:\n{}",
        controller.http_get("/healthz"),
        controller.log()
    );
    let unknown = || {
        controller
            .metric("operator_reconcile_total{result=\"unknown\"}")
            .unwrap_or(0.0)
    };
    let unknown_before = unknown();
    // The calm service dies while nobody can see it.
    if let Some(pid) = calm_pid {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    // Several resyncs (both services, at least twice each) while the engine is down, each
    // concluding "unknown": nothing may change.
    assert!(
        wait_until(Duration::from_secs(30), || unknown()
            >= unknown_before + 4.0),
        "the controller did not look while Docker was unreachable (unknown reconciles {} -> {}); log:\n{}",
        unknown_before,
        unknown(),
        controller.log()
    );
    let during = controller.tickets_json();
    assert_eq!(
        during, before,
        "tickets changed while Docker was unreachable"
    );

    engine.start();
    // Back: the calm service is repaired (its episode opened and closed by the re-check),
    // the paused one is still paused and its ticket still open.
    assert!(
        wait_until(Duration::from_secs(90), || is_running(&calm, Some(&host))
            && controller.tickets_json().iter().any(|t| t["service"]
                == calm.as_str()
                && t["status"] == "resolved")),
        "calm not repaired; tickets {:#?}; log:\n{}",
        controller.tickets_json(),
        controller.log()
    );
    let paused = controller
        .tickets_json()
        .into_iter()
        .find(|t| t["service"] == watched.as_str())
        .unwrap();
    assert_eq!(paused["status"], "open");
    engine.docker_ok(&["unpause", &watched]);
    assert!(
        wait_until(Duration::from_secs(30), || controller
            .tickets_json()
            .iter()
            .any(|t| t["service"] == watched.as_str()
                && t["status"] == "resolved"
                && t["resolved_by"] == "self-healed")),
        "tickets {:#?}; log:\n{}",
        controller.tickets_json(),
        controller.log()
    );
}

#[test]
fn a_corrupt_or_foreign_database_is_refused_by_name_and_never_written() {
    let dir = TempDir::new(&unique("foreigndb"));
    let corrupt = dir.write("corrupt.db", "definitely not sqlite\n");
    let foreign = dir.path().join("foreign.db");
    {
        // Another program's SQLite database.
        let conn = rusqlite::Connection::open(&foreign).expect("make a foreign sqlite file");
        conn.execute_batch("CREATE TABLE notes (x TEXT); INSERT INTO notes VALUES ('mine');")
            .expect("write the foreign file");
    }
    let manifest = dir.write(
        "m.yaml",
        "apiVersion: operator/v1\nkind: Cluster\nmetadata:\n  name: never\nspec:\n  services: []\n",
    );
    for db in [&corrupt, &foreign] {
        let before = std::fs::read(db).unwrap();
        for args in [
            vec!["tickets", "list", "--db", db.to_str().unwrap()],
            vec![
                "run",
                manifest.to_str().unwrap(),
                "--db",
                db.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ],
        ] {
            let out = operator(&args, None);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
            assert!(
                stderr.contains(db.to_str().unwrap()),
                "{args:?} does not name the file: {stderr}"
            );
            assert!(
                stderr.contains("not an operator ticket database"),
                "{stderr}"
            );
        }
        assert_eq!(
            std::fs::read(db).unwrap(),
            before,
            "{} was written",
            db.display()
        );
        assert!(!PathBuf::from(format!("{}-wal", db.display())).exists());
    }
}

#[test]
fn a_person_can_hold_retry_and_release_an_escalated_ticket() {
    let f = Fixture::builder("human")
        .manifest("cluster.yaml", |c| {
            cluster_yaml(c, &format!(
                "    - name: {c}-fail\n      image: {BUSYBOX_IMAGE}\n      networkMode: host\n      command: [\"sh\", \"-c\", \"exit 3\"]\n      remediation:\n        maxRestarts: 1\n        backoff: {{initial: 200ms, max: 1s}}\n"
            ))
        })
        .resync("1s")
        .start();
    let (name, controller) = (f.name("fail"), &f.operator);
    assert!(
        wait_until(Duration::from_secs(60), || ticket_of(&f, &name)
            .is_some_and(|t| t["status"] == "escalated")),
        "not escalated; tickets {:#?}; log:\n{}",
        f.tickets(),
        controller.log()
    );
    let ticket_id = ticket_of(&f, &name).unwrap()["id"].as_i64().unwrap();
    let id = ticket_id.to_string();

    let missing = controller.tickets(&["show", "987654"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no ticket with id 987654"));
    let wrong = controller.tickets(&["retry", "987654"]);
    assert_eq!(wrong.status.code(), Some(1));

    assert!(controller.tickets(&["hold", &id]).status.success());
    let since = epoch_now();
    assert!(controller.tickets(&["retry", &id]).status.success());
    // Held: a fresh budget, but hands off. Wait until the controller has looked at it
    // (`held` reconciles), then check it did nothing.
    let held_reconciles = || {
        controller
            .http_get("/metrics")
            .1
            .lines()
            .find_map(|l| l.strip_prefix("operator_reconcile_total{result=\"held\"} "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(
        wait_until(Duration::from_secs(30), || held_reconciles() >= 2.0),
        "the controller never looked at the held ticket; log:\n{}",
        controller.log()
    );
    assert!(
        event_times(&name, "start", since).is_empty(),
        "acted on a held ticket"
    );
    let held: Vec<serde_json::Value> = serde_json::from_slice(
        &controller
            .tickets(&["list", "--status", "held", "--json"])
            .stdout,
    )
    .expect("list --status held --json");
    assert_eq!(held.len(), 1, "{held:#?}");
    assert_eq!(held[0]["id"].to_string(), id);
    assert!(controller.tickets(&["unhold", &id]).status.success());
    let again = controller.tickets(&["unhold", &id]);
    assert_eq!(again.status.code(), Some(1), "releasing it twice says so");
    assert!(String::from_utf8_lossy(&again.stderr).contains("not held"));
    assert!(
        wait_until(Duration::from_secs(30), || !event_times(
            &name, "start", since
        )
        .is_empty()),
        "a released ticket with a fresh budget is acted on; log:\n{}",
        controller.log()
    );
    assert!(
        wait_until(
            Duration::from_secs(30),
            || controller.tickets_json()[0]["status"] == "escalated"
        ),
        "and escalates again when the new budget is spent"
    );
    let shown = controller.tickets(&["show", &id]);
    let text = String::from_utf8_lossy(&shown.stdout);
    for kind in [
        "detected",
        "escalated",
        "held",
        "retried",
        "unheld",
        "action-started",
    ] {
        assert!(text.contains(kind), "no {kind} in:\n{text}");
    }
    let flaps_before = controller.ticket_json(ticket_id)["flaps"].as_i64().unwrap();
    let resolved = controller.tickets(&["resolve", &id, "--note", "gave up on it"]);
    assert!(
        resolved.status.success(),
        "{}",
        String::from_utf8_lossy(&resolved.stderr)
    );
    assert!(String::from_utf8_lossy(&resolved.stdout).contains("resolved:human"));
    // The drift is still there, so the controller reopens the same ticket (a flap: the
    // drift is back within the window) at its next look; the person's resolution stays
    // in the timeline.
    let reopened = || {
        let shown = controller.ticket_json(ticket_id);
        let kinds: Vec<&str> = shown["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        let by_human = kinds.iter().rposition(|k| *k == "resolved");
        let again = kinds.iter().rposition(|k| *k == "reopened");
        shown["status"] != "resolved" && by_human.is_some() && again > by_human
    };
    assert!(
        wait_until(Duration::from_secs(30), reopened),
        "not reopened after the person's resolve: {:#}; log:\n{}",
        controller.ticket_json(ticket_id),
        controller.log()
    );
    let shown = controller.ticket_json(ticket_id);
    assert!(shown["resolved_by"].is_null(), "{shown:#}");
    assert_eq!(shown["flaps"], flaps_before + 1, "one flap more: {shown:#}");
    let timeline = shown["timeline"].as_array().unwrap();
    assert!(
        timeline
            .iter()
            .any(|e| e["kind"] == "resolved" && e["detail"]["cause"] == "human"),
        "{shown:#}"
    );
    assert!(
        timeline
            .iter()
            .any(|e| e["kind"] == "note" && e["detail"]["note"] == "gave up on it"),
        "{shown:#}"
    );
    let tickets = f.tickets();
    assert_eq!(
        tickets.len(),
        1,
        "the same episode, not a new ticket: {tickets:#?}"
    );
}

#[test]
fn status_on_a_database_an_older_operator_wrote_shows_the_cluster_and_says_why_not_the_tickets() {
    require_docker();
    let cluster = unique("oldschema");
    let dir = TempDir::new(&cluster);
    dir.write(
        "cluster.yaml",
        &cluster_yaml(
            &cluster,
            &format!(
                "    - name: {cluster}-app\n      image: {BUSYBOX_IMAGE}\n      networkMode: host\n"
            ),
        ),
    );
    let db = dir.path().join("old.db");
    {
        let raw = rusqlite::Connection::open(&db).expect("make a schema-1 file");
        raw.execute_batch(operator::tickets::MIGRATIONS[0].sql)
            .expect("schema 1");
        raw.execute_batch("PRAGMA user_version = 1; PRAGMA application_id = 1330664523;")
            .expect("mark it");
    }
    let out = operator(
        &[
            "status",
            dir.path().to_str().unwrap(),
            "--db",
            db.to_str().unwrap(),
            "--json",
        ],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("tickets and escalations not shown") && stderr.contains("schema version 1"),
        "{stderr}"
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    assert_eq!(
        rows["services"][0]["drifts"][0]["kind"], "missing",
        "{rows:#}"
    );
    // Read-only: the file is still schema 1.
    let version: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 1);
}

#[test]
fn a_second_controller_on_one_database_is_refused_and_a_dead_holder_frees_it() {
    let mut f = Fixture::builder("owner")
        .manifest("cluster.yaml", |c| {
            cluster_yaml(
                c,
                &format!("    - name: {c}-app\n      image: {BUSYBOX_IMAGE}\n      networkMode: host\n      command: [\"sleep\", \"3600\"]\n"),
            )
        })
        .start();
    let (dir, db) = (
        f.dir.path().to_str().unwrap().to_string(),
        f.db().to_str().unwrap().to_string(),
    );
    let holder = f.operator.pid();
    for once in [false, true] {
        let mut args = vec!["run", &dir, "--db", &db, "--listen", "127.0.0.1:0"];
        if once {
            args.push("--once");
        }
        let second = operator(&args, None);
        let stderr = String::from_utf8_lossy(&second.stderr);
        assert_eq!(second.status.code(), Some(1), "once={once}: {stderr}");
        assert!(
            stderr.contains("in use by another controller")
                && stderr.contains(&format!("pid {holder} on "))
                && stderr.contains(" since "),
            "once={once}: {stderr}"
        );
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "one line naming the holder: {stderr}"
        );
    }
    // Beside it, people's commands keep working.
    let listed = operator(&["tickets", "list", "--db", &db], None);
    assert!(listed.status.success(), "{listed:?}");
    // A holder that died frees the database for the next controller.
    f.restart_operator();
    assert_ne!(f.operator.pid(), holder);
}

#[test]
fn output_cut_short_by_its_reader_ends_quietly_with_success() {
    let dir = TempDir::new(&unique("pipe"));
    let db = dir.path().join("many.db");
    let store = Store::open(&db).expect("ticket store");
    // Far more than a pipe buffer (64 KiB) of table.
    for i in 0..1500 {
        store
            .record_drift(
                &DriftSighting {
                    fingerprint: Fingerprint::service(
                        "pipe",
                        &format!("svc{i}"),
                        DriftKind::Stopped,
                    ),
                    drift: DriftKind::Stopped,
                    detail: "exited with code 1".into(),
                    cooldown: Duration::from_secs(600),
                    evidence: None,
                },
                chrono::Utc::now(),
            )
            .expect("record");
    }
    drop(store);
    for json in [false, true] {
        let mut args = vec!["tickets", "list", "--db", db.to_str().unwrap()];
        if json {
            args.push("--json");
        }
        let mut child = Command::new(common::operator::operator_bin())
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn operator");
        // Like `| head -c 10`: read a little, then close the pipe.
        let mut first = [0u8; 10];
        std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).expect("some output");
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("operator exits");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "json={json}: {:?}: {stderr}",
            out.status
        );
        assert!(stderr.is_empty(), "json={json}: quietly, not: {stderr}");
    }
}

#[test]
fn a_taken_listen_address_fails_before_any_database_is_made() {
    let dir = TempDir::new(&unique("busyport"));
    dir.write(
        "cluster.yaml",
        &cluster_yaml(
            "busyport",
            &format!(
                "    - name: busyport-app\n      image: {BUSYBOX_IMAGE}\n      networkMode: host\n"
            ),
        ),
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port to hold");
    let addr = taken.local_addr().unwrap().to_string();
    let db = dir.path().join("never.db");
    let out = operator(
        &[
            "run",
            dir.path().to_str().unwrap(),
            "--listen",
            &addr,
            "--db",
            db.to_str().unwrap(),
        ],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&addr), "names the address: {stderr}");
    assert!(
        !db.exists(),
        "no database was created for a controller that never ran"
    );
}

/// A tmpfs this test mounted, unmounted on drop (pass or fail). Permissions do not stop
/// root, as the tests run: a read-only or full file system is what really refuses a write.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mount point");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .expect("run mount (the tests run as root)");
        assert!(
            out.status.success(),
            "mount a tmpfs at {}: {}",
            at.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_path_buf())
    }

    fn read_only(&self) {
        let out = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.0)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "remount {} read-only: {}",
            self.0.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Writes zeros beside the database until the file system has no room left.
    fn fill(&self) {
        use std::io::Write;
        let mut file = std::fs::File::create(self.0.join("filler")).expect("filler");
        let chunk = vec![0u8; 64 * 1024];
        // Bounded by the tmpfs size: the write fails with ENOSPC.
        while file.write(&chunk).is_ok_and(|n| n > 0) {}
        while file.write(&[0u8; 512]).is_ok_and(|n| n > 0) {}
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// One ticket of `service`, recorded in `store`.
fn one_ticket(store: &Store, service: &str) {
    store
        .record_drift(
            &DriftSighting {
                fingerprint: Fingerprint::service("ro", service, DriftKind::Stopped),
                drift: DriftKind::Stopped,
                detail: "exited with code 1".into(),
                cooldown: Duration::from_secs(600),
                evidence: None,
            },
            chrono::Utc::now(),
        )
        .expect("record a sighting");
}

/// `tickets list --json` then `tickets show ID --json` of every ticket listed: the services
/// listed, or the first failure's stderr.
fn read_tickets(db: &Path) -> Result<Vec<String>, String> {
    let db = db.to_str().expect("utf-8");
    let out = operator(&["tickets", "list", "--db", db, "--json"], None);
    if !out.status.success() {
        return Err(format!(
            "tickets list: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let listed: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("tickets list --json: {e}"))?;
    let mut services = Vec::new();
    for t in &listed {
        let id = t["id"].to_string();
        let out = operator(&["tickets", "show", &id, "--db", db, "--json"], None);
        if !out.status.success() {
            return Err(format!(
                "tickets show {id}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let shown: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| format!("tickets show --json: {e}"))?;
        assert_eq!(shown["id"], t["id"], "{shown:#}");
        assert!(
            shown["timeline"].as_array().is_some_and(|t| !t.is_empty()),
            "{shown:#}"
        );
        services.push(shown["service"].as_str().unwrap_or_default().to_string());
    }
    services.sort();
    Ok(services)
}

/// docs/troubleshooting.md: `tickets list` and `show` work where nothing can be written: a
/// read-only folder (with and without the WAL's side files a running or crashed controller
/// leaves) and a full disk. They never write the file.
#[test]
fn tickets_list_and_show_read_a_database_in_a_read_only_folder_or_on_a_full_disk() {
    let dir = TempDir::new(&unique("ticketsro"));
    // The database as a controller leaves it when it stops: no -wal, no -shm.
    let closed = dir.path().join("closed.db");
    {
        let store = Store::open(&closed).expect("make the database");
        one_ticket(&store, "a");
        one_ticket(&store, "b");
    }
    assert!(!Path::new(&format!("{}-wal", closed.display())).exists());
    // As a running (or killed) controller leaves it: ticket c only in the write-ahead log.
    let live = dir.path().join("live.db");
    std::fs::copy(&closed, &live).expect("copy");
    let live_store = Store::open(&live).expect("open the copy");
    one_ticket(&live_store, "c");
    let with_wal = |into: &Path| {
        for suffix in ["", "-wal", "-shm"] {
            let from = format!("{}{suffix}", live.display());
            assert!(Path::new(&from).exists(), "{from} exists while it is open");
            std::fs::copy(&from, format!("{}{suffix}", into.display())).expect("copy");
        }
    };

    // 1. A read-only folder, the database closed.
    let ro = Tmpfs::mount(&dir.path().join("ro"), "4m");
    std::fs::copy(&closed, ro.0.join("tickets.db")).expect("copy");
    ro.read_only();
    assert_eq!(
        read_tickets(&ro.0.join("tickets.db")),
        Ok(vec!["a".to_string(), "b".to_string()]),
        "a read-only folder"
    );

    // 2. A read-only folder with the WAL and its index, as a live controller has them.
    let ro_wal = Tmpfs::mount(&dir.path().join("ro-wal"), "4m");
    with_wal(&ro_wal.0.join("tickets.db"));
    ro_wal.read_only();
    assert_eq!(
        read_tickets(&ro_wal.0.join("tickets.db")),
        Ok(vec!["a".to_string(), "b".to_string(), "c".to_string()]),
        "a read-only folder with -wal and -shm: what the log holds is read too"
    );
    drop(live_store);

    // 3. A full disk under the database.
    let full = Tmpfs::mount(&dir.path().join("full"), "256k");
    let db = full.0.join("tickets.db");
    std::fs::copy(&closed, &db).expect("copy");
    let before = std::fs::read(&db).expect("read");
    full.fill();
    assert_eq!(
        read_tickets(&db),
        Ok(vec!["a".to_string(), "b".to_string()]),
        "a full disk"
    );
    assert!(
        std::fs::read(&db).expect("read") == before,
        "reading changed the database file"
    );
}

#[test]
fn a_first_deploy_of_many_services_opens_no_ticket() {
    // Each create is a create and then a start; the engine's events for the two can reach the
    // store apart. A reconcile that ran between them read "created, never started" and opened
    // a `stopped` ticket for the controller's own create (seen in CI). Many services at once
    // make the window likely on a busy machine.
    const SERVICES: usize = 16;
    let f = Fixture::builder("firstdeploy")
        .manifest("cluster.yaml", |c| {
            let services: String = (0..SERVICES)
                .map(|i| {
                    format!(
                        "    - name: {c}-s{i}\n      image: {BUSYBOX_IMAGE}\n      networkMode: host\n      command: [\"sleep\", \"3600\"]\n"
                    )
                })
                .collect();
            cluster_yaml(c, &services)
        })
        .resync("1s")
        .start();
    for i in 0..SERVICES {
        f.wait_running(&f.name(&format!("s{i}")), "the first deploy");
    }
    // Two whole resyncs after the last start: every key was looked at again since.
    f.operator.wait_resyncs(2);
    let tickets = f.tickets();
    let log = f.operator.log();
    drop(f);
    assert!(tickets.is_empty(), "tickets {tickets:#?}; log:\n{log}");
}
