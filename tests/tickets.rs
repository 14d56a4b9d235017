//! Tickets on a real engine and a real SQLite file: one ticket per episode under concurrent
//! writers, budgets that survive a controller crash, unknown is never healthy, and a
//! database that is not ours is never written.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::operator::{
    OperatorProcess, TempDir, epoch_now, event_times, inspect, is_running, operator, remove_db,
    wait_until,
};
use common::{BUSYBOX_IMAGE, Cleanup, PrivateDockerd, docker_ok, require_docker, unique};
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

fn write_manifest(dir: &TempDir, cluster: &str, services: &str) {
    dir.write(
        "cluster.yaml",
        &format!(
            "apiVersion: operator/v1\nkind: Cluster\nmetadata:\n  name: {cluster}\nspec:\n  services:\n{services}"
        ),
    );
}

#[test]
fn a_crash_looping_service_keeps_its_budget_across_a_controller_crash() {
    require_docker();
    let cluster = unique("budget");
    let _cleanup = Cleanup::new(format!("operator.cluster={cluster}"));
    let name = format!("{cluster}-fail");
    let dir = TempDir::new(&cluster);
    write_manifest(
        &dir,
        &cluster,
        &format!(
            "    - name: {name}\n      image: {BUSYBOX_IMAGE}\n      networkMode: host\n      command: [\"sh\", \"-c\", \"exit 3\"]\n      remediation:\n        maxRestarts: 4\n        backoff: {{initial: 500ms, max: 10s}}\n"
        ),
    );
    let db = std::env::temp_dir().join(format!("{cluster}.db"));
    let since = epoch_now() - 1.0;
    let mut first = OperatorProcess::start_with_db(&[dir.path()], &["--resync", "1s"], None, &db);
    first.wait_ready();
    // The create and two budgeted restarts, then a crash.
    assert!(
        wait_until(Duration::from_secs(60), || first
            .count_log(&["repairing", &name])
            >= 3),
        "log:\n{}",
        first.log()
    );
    first.crash();
    let second = OperatorProcess::start_with_db(&[dir.path()], &["--resync", "1s"], None, &db);
    second.wait_ready();
    assert!(
        second.wait_for_log("restart budget spent", Duration::from_secs(60)),
        "log:\n{}",
        second.log()
    );
    std::thread::sleep(Duration::from_secs(2));
    let starts = event_times(&name, "start", since);
    let tickets = second.tickets_json();
    let id = tickets[0]["id"].as_i64().unwrap().to_string();
    let shown = second.tickets(&["show", &id, "--json"]);
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("show --json");
    drop(second);
    remove_db(&db);
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
    require_docker();
    let cluster = unique("midfix");
    let _cleanup = Cleanup::new(format!("operator.cluster={cluster}"));
    let name = format!("{cluster}-svc");
    let dir = TempDir::new(&cluster);
    // `sh` as PID 1 ignores SIGTERM, so a restart waits out the 10 s stop grace: a wide
    // window to crash the controller in. The marker lives in /dev/shm, which a restart
    // empties, so one restart really repairs.
    write_manifest(
        &dir,
        &cluster,
        &format!(
            "    - name: {name}\n      image: {BUSYBOX_IMAGE}\n      networkMode: host\n      command: [\"sh\", \"-c\", \"while true; do sleep 1; done\"]\n      healthcheck:\n        test: [\"CMD-SHELL\", \"test ! -e /dev/shm/sick\"]\n        interval: 300ms\n        retries: 1\n      remediation:\n        backoff: {{initial: 200ms, max: 2s}}\n"
        ),
    );
    let db = std::env::temp_dir().join(format!("{cluster}.db"));
    let mut first = OperatorProcess::start_with_db(&[dir.path()], &["--resync", "1s"], None, &db);
    first.wait_ready();
    let healthy =
        || inspect(&name, None).is_some_and(|c| c["State"]["Health"]["Status"] == "healthy");
    assert!(
        wait_until(Duration::from_secs(60), healthy),
        "log:\n{}",
        first.log()
    );
    docker_ok(&["exec", &name, "touch", "/dev/shm/sick"]);
    assert!(
        wait_until(Duration::from_secs(30), || first.count_log(&[
            "repairing",
            &name,
            "\"action\":\"restart\""
        ]) >= 1),
        "log:\n{}",
        first.log()
    );
    std::thread::sleep(Duration::from_secs(1));
    first.crash();

    let second = OperatorProcess::start_with_db(&[dir.path()], &["--resync", "1s"], None, &db);
    second.wait_ready();
    let resolved = || {
        second
            .tickets_json()
            .first()
            .is_some_and(|t| t["status"] == "resolved")
    };
    assert!(
        wait_until(Duration::from_secs(90), resolved),
        "not resolved; tickets {:#?}; log:\n{}",
        second.tickets_json(),
        second.log()
    );
    assert!(healthy(), "the service is healthy again");
    let tickets = second.tickets_json();
    let shown = second.tickets(&["show", &tickets[0]["id"].to_string(), "--json"]);
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("show --json");
    drop(second);
    remove_db(&db);
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
    let cluster = unique("outage");
    let calm = format!("{cluster}-calm");
    let watched = format!("{cluster}-watched");
    let dir = TempDir::new(&cluster);
    let service = |name: &str, policy: &str| {
        format!(
            "    - name: {name}\n      image: {BUSYBOX_IMAGE}\n      networkMode: host\n      command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n      remediation:\n        policy: {policy}\n        backoff: {{initial: 200ms, max: 1s}}\n"
        )
    };
    // Create both, then watch one of them without repairing it.
    write_manifest(
        &dir,
        &cluster,
        &(service(&calm, "restart") + &service(&watched, "restart")),
    );
    let db = std::env::temp_dir().join(format!("{cluster}.db"));
    let out = operator(
        &[
            "run",
            dir.path().to_str().unwrap(),
            "--once",
            "--db",
            db.to_str().unwrap(),
        ],
        Some(&host),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    write_manifest(
        &dir,
        &cluster,
        &(service(&calm, "restart") + &service(&watched, "observe")),
    );
    let controller =
        OperatorProcess::start_with_db(&[dir.path()], &["--resync", "1s"], Some(&host), &db);
    controller.wait_ready();
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
        controller.wait_for_log("docker watch lost", Duration::from_secs(30)),
        "log:\n{}",
        controller.log()
    );
    // The calm service dies while nobody can see it.
    if let Some(pid) = calm_pid {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    // Several resyncs while the engine is down: nothing may change.
    std::thread::sleep(Duration::from_secs(4));
    let during = controller.tickets_json();
    assert_eq!(
        during, before,
        "tickets changed while Docker was unreachable"
    );
    assert!(
        controller.log().contains("disconnected") || controller.log().contains("docker watch lost")
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
    drop(controller);
    remove_db(&db);
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
    require_docker();
    let cluster = unique("human");
    let _cleanup = Cleanup::new(format!("operator.cluster={cluster}"));
    let name = format!("{cluster}-fail");
    let dir = TempDir::new(&cluster);
    write_manifest(
        &dir,
        &cluster,
        &format!(
            "    - name: {name}\n      image: {BUSYBOX_IMAGE}\n      networkMode: host\n      command: [\"sh\", \"-c\", \"exit 3\"]\n      remediation:\n        maxRestarts: 1\n        backoff: {{initial: 200ms, max: 1s}}\n"
        ),
    );
    let controller = OperatorProcess::start(&[dir.path()], &["--resync", "1s"], None);
    controller.wait_ready();
    assert!(controller.wait_for_log("restart budget spent", Duration::from_secs(60)));
    let id = controller.tickets_json()[0]["id"]
        .as_i64()
        .unwrap()
        .to_string();

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
    assert!(controller.tickets(&["unhold", &id]).status.success());
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
    let resolved = controller.tickets(&["resolve", &id, "--note", "gave up on it"]);
    assert!(
        resolved.status.success(),
        "{}",
        String::from_utf8_lossy(&resolved.stderr)
    );
    // The drift is still there, so the controller reopens it at its next look; the
    // person's resolution stays in the timeline.
    assert!(String::from_utf8_lossy(&resolved.stdout).contains("resolved:human"));
}
