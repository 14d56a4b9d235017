//! Store behaviour on real SQLite files in a temporary folder.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;

use super::*;
use crate::drift::{DriftKind, Fingerprint, Target};

struct TempDb(PathBuf);

impl TempDb {
    fn new() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "operator-tickets-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        TempDb(dir)
    }

    fn path(&self) -> PathBuf {
        self.0.join("sub").join("tickets.db")
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sighting(fp: &Fingerprint, drift: &str) -> DriftSighting {
    DriftSighting {
        fingerprint: fp.clone(),
        drift: DriftKind::parse(drift).unwrap(),
        detail: "exited with code 1".into(),
        cooldown: Duration::from_secs(600),
        evidence: None,
    }
}

#[test]
fn open_creates_a_private_folder_and_file() {
    let db = TempDb::new();
    let store = Store::open(&db.path()).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&db.path()), 0o600);
    assert_eq!(mode(db.path().parent().unwrap()), 0o700);
    drop(store);
    // Opening again applies nothing new and keeps working.
    Store::open(&db.path()).unwrap();
}

#[test]
fn sightings_of_one_drift_bump_one_ticket() {
    let db = TempDb::new();
    let store = Store::open(&db.path()).unwrap();
    let fp = Fingerprint::service("c", "s", DriftKind::Stopped);
    let (t1, s1) = store
        .record_drift(&sighting(&fp, "stopped"), Utc::now())
        .unwrap();
    let (t2, s2) = store
        .record_drift(&sighting(&fp, "stopped"), Utc::now())
        .unwrap();
    let (t3, _) = store
        .record_drift(&sighting(&fp, "crash-looping"), Utc::now())
        .unwrap();
    assert_eq!((s1, s2), (Sighting::Opened, Sighting::Seen));
    assert_eq!(t1.id, t2.id);
    assert_eq!(t3.id, t1.id);
    assert_eq!(t3.occurrences, 3);
    assert_eq!(t3.drift, DriftKind::CrashLooping);
    let kinds: Vec<&str> = store
        .timeline(t1.id)
        .unwrap()
        .into_iter()
        .map(|e| e.kind.as_str())
        .collect();
    assert_eq!(kinds, vec!["detected", "drift-changed"]);
}

#[test]
fn drift_back_within_cooldown_reopens_and_counts_a_flap() {
    let db = TempDb::new();
    let store = Store::open(&db.path()).unwrap();
    let fp = Fingerprint::service("c", "s", DriftKind::Paused);
    let now = Utc::now();
    let (t, _) = store.record_drift(&sighting(&fp, "paused"), now).unwrap();
    assert_eq!(
        store
            .resolve_rechecked(t.id, &serde_json::json!({}), now)
            .unwrap(),
        Some(Cause::SelfHealed)
    );
    let later = now + chrono::Duration::seconds(60);
    let (again, how) = store.record_drift(&sighting(&fp, "paused"), later).unwrap();
    assert_eq!(how, Sighting::Reopened);
    assert_eq!(again.id, t.id);
    assert_eq!(
        (again.flaps, again.status, again.resolved_at),
        (1, Status::Open, None)
    );
    // Past the cooldown: a new episode, a new ticket.
    store
        .resolve_rechecked(t.id, &serde_json::json!({}), later)
        .unwrap();
    let much_later = later + chrono::Duration::seconds(601);
    let (fresh, how) = store
        .record_drift(&sighting(&fp, "paused"), much_later)
        .unwrap();
    assert_eq!(how, Sighting::Opened);
    assert_ne!(fresh.id, t.id);
}

#[test]
fn many_connections_racing_on_one_drift_make_exactly_one_ticket() {
    let db = TempDb::new();
    Store::open(&db.path()).unwrap();
    let path = Arc::new(db.path());
    let fp = Fingerprint::service("c", "s", DriftKind::Missing);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let path = path.clone();
            let fp = fp.clone();
            std::thread::spawn(move || {
                let store = Store::open(&path).unwrap();
                for _ in 0..50 {
                    store
                        .record_drift(&sighting(&fp, "missing"), Utc::now())
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let store = Store::open(&db.path()).unwrap();
    let all = store.list(None).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].occurrences, 400);
}

#[test]
fn foreign_and_corrupt_files_are_refused_and_left_untouched() {
    let db = TempDb::new();
    std::fs::create_dir_all(db.path().parent().unwrap()).unwrap();
    // Not SQLite at all.
    std::fs::write(
        db.path(),
        b"this is not a database, it is a shopping list\n",
    )
    .unwrap();
    let before = std::fs::read(db.path()).unwrap();
    let err = Store::open(&db.path()).err().expect("refused").to_string();
    assert!(
        err.contains(&db.path().display().to_string())
            && err.contains("not an operator ticket database"),
        "{err}"
    );
    assert_eq!(std::fs::read(db.path()).unwrap(), before);

    // Someone else's SQLite database.
    std::fs::remove_file(db.path()).unwrap();
    {
        let conn = rusqlite::Connection::open(db.path()).unwrap();
        conn.execute_batch(
            "CREATE TABLE recipes (name TEXT); INSERT INTO recipes VALUES ('soup');",
        )
        .unwrap();
    }
    let before = std::fs::read(db.path()).unwrap();
    let err = Store::open(&db.path()).err().expect("refused").to_string();
    assert!(err.contains("not an operator ticket database"), "{err}");
    assert_eq!(std::fs::read(db.path()).unwrap(), before);
    assert!(!PathBuf::from(format!("{}-wal", db.path().display())).exists());
}

#[test]
fn a_database_from_a_newer_version_is_refused() {
    let db = TempDb::new();
    drop(Store::open(&db.path()).unwrap());
    {
        let conn = rusqlite::Connection::open(db.path()).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
    }
    let before = std::fs::read(db.path()).unwrap();
    let err = Store::open(&db.path()).err().expect("refused").to_string();
    assert!(
        err.contains("newer operator") && err.contains("99"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(db.path()).unwrap(),
        before,
        "a newer database was altered"
    );
}

#[test]
fn retry_gives_an_escalated_ticket_a_fresh_budget() {
    let db = TempDb::new();
    let store = Store::open(&db.path()).unwrap();
    let fp = Fingerprint::service("c", "s", DriftKind::Stopped);
    let now = Utc::now();
    let (t, _) = store.record_drift(&sighting(&fp, "stopped"), now).unwrap();
    let spent = Budget {
        attempts: 3,
        repairs: vec![now, now, now],
        escalated: true,
        ..Default::default()
    };
    store
        .action_started(
            t.id,
            Actor::Controller,
            Some(("c", "s", &spent)),
            serde_json::json!({"action": "start"}),
            now,
        )
        .unwrap();
    assert!(store.escalate(t.id, serde_json::json!({}), now).unwrap());
    assert!(
        !store.escalate(t.id, serde_json::json!({}), now).unwrap(),
        "escalated once"
    );
    assert!(matches!(
        store.retry(9999, None, now),
        Err(TicketError::NotFound(9999))
    ));
    let t = store.retry(t.id, None, now).unwrap();
    assert_eq!(t.status, Status::Open);
    let b = store.load_budget("c", "s").unwrap().unwrap();
    assert_eq!((b.attempts, b.repairs.len(), b.escalated), (0, 0, false));
    assert!(matches!(
        store.retry(t.id, None, now),
        Err(TicketError::WrongState { .. })
    ));
}

#[test]
fn a_forced_retry_overrides_an_open_ticket_once_and_says_who() {
    let db = TempDb::new();
    let store = Store::open(&db.path()).unwrap();
    let fp = Fingerprint::service("c", "s", DriftKind::Unhealthy);
    let now = Utc::now();
    let (t, _) = store
        .record_drift(&sighting(&fp, "unhealthy"), now)
        .unwrap();
    let by = crate::tickets::Override {
        user: "alice".into(),
        reason: Some("pd1 is being replaced by hand".into()),
    };
    let forced = store.retry(t.id, Some(&by), now).unwrap();
    assert_eq!(forced.status, Status::Open, "an open ticket stays open");
    let last = store.timeline(t.id).unwrap().pop().unwrap();
    assert_eq!(last.kind, EntryKind::Retried);
    assert_eq!(last.detail["force"], true);
    assert_eq!(last.detail["user"], "alice");
    assert_eq!(last.detail["reason"], "pd1 is being replaced by hand");
    assert!(last.detail.get("budget").is_none(), "no budget was reset");
    store.resolve_by_human(t.id, None, now).unwrap();
    assert!(matches!(
        store.retry(t.id, Some(&by), now),
        Err(TicketError::WrongState { .. })
    ));
}

#[test]
fn hold_resolve_and_interrupted_actions_are_recorded() {
    let db = TempDb::new();
    let store = Store::open(&db.path()).unwrap();
    let fp = Fingerprint::service("c", "s", DriftKind::Stopped);
    let now = Utc::now();
    let (t, _) = store.record_drift(&sighting(&fp, "stopped"), now).unwrap();
    assert!(
        store
            .action_started(
                t.id,
                Actor::Controller,
                Some(("c", "s", &Budget::default())),
                serde_json::json!({"action": "start"}),
                now,
            )
            .unwrap()
    );
    let message = store.set_held(t.id, false, now).unwrap_err().to_string();
    assert!(
        message.contains("not held"),
        "releasing a ticket nobody holds says so: {message}"
    );
    let held = store.set_held(t.id, true, now).unwrap();
    assert_eq!(
        (held.held, held.status),
        (true, Status::Open),
        "a held ticket is not remediating: nobody acts on it"
    );
    assert!(
        matches!(
            store.set_held(t.id, true, now),
            Err(TicketError::WrongState { .. })
        ),
        "holding a held ticket says so"
    );
    assert_eq!(store.close_interrupted_actions(now).unwrap(), 1);
    assert_eq!(
        store.close_interrupted_actions(now).unwrap(),
        0,
        "closed once"
    );
    let t = store
        .resolve_by_human(t.id, Some("fixed the disk"), now)
        .unwrap();
    assert_eq!(
        (t.status, t.resolved_by, t.held),
        (Status::Resolved, Some(Cause::Human), false)
    );
    assert!(store.set_held(t.id, true, now).is_err());
    let kinds: Vec<&str> = store
        .timeline(t.id)
        .unwrap()
        .into_iter()
        .map(|e| e.kind.as_str())
        .collect();
    assert_eq!(
        kinds,
        vec![
            "detected",
            "action-started",
            "held",
            "action-result",
            "note",
            "resolved"
        ]
    );
    assert_eq!(store.open_counts().unwrap(), vec![]);
}

#[test]
fn selectors_pick_by_typed_fingerprint_not_by_pattern() {
    let db = TempDb::new();
    let store = Store::open(&db.path()).unwrap();
    let now = Utc::now();
    // An underscore would have been a wildcard in a LIKE pattern.
    for cluster in ["a_b", "axb"] {
        store
            .record_drift(
                &DriftSighting {
                    fingerprint: Fingerprint::drift(
                        cluster,
                        Target::Cluster,
                        DriftKind::ObservabilityLost,
                    ),
                    drift: DriftKind::ObservabilityLost,
                    detail: "down".into(),
                    cooldown: Duration::from_secs(600),
                    evidence: None,
                },
                now,
            )
            .unwrap();
        for (target, check) in [
            (Target::Cluster, "up"),
            (Target::Service("s".into()), "up_x"),
        ] {
            store
                .record_drift(
                    &DriftSighting {
                        fingerprint: Fingerprint::check(cluster, target, check),
                        drift: DriftKind::CheckFailed,
                        detail: "failing".into(),
                        cooldown: Duration::from_secs(600),
                        evidence: None,
                    },
                    now,
                )
                .unwrap();
        }
    }
    let exact = Selector::Exact(Fingerprint::drift(
        "axb",
        Target::Cluster,
        DriftKind::ObservabilityLost,
    ));
    assert_eq!(store.unresolved(&exact).unwrap().len(), 1);
    let checks = |check: Option<&str>| Selector::Checks {
        cluster: "a_b".into(),
        check: check.map(str::to_string),
    };
    let all = store.unresolved(&checks(None)).unwrap();
    assert_eq!(all.len(), 2);
    assert!(
        all.iter()
            .all(|t| t.cluster == "a_b" && t.fingerprint.is_check())
    );
    let up = store.unresolved(&checks(Some("up"))).unwrap();
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].target(), &Target::Cluster);
    let cluster_wide = Selector::Target {
        cluster: "a_b".into(),
        target: "-".into(),
    };
    assert_eq!(store.unresolved(&cluster_wide).unwrap().len(), 2);
}

#[test]
fn the_resolve_cause_is_the_actor_of_the_last_action_that_did_not_fail() {
    let db = TempDb::new();
    let store = Store::open(&db.path()).unwrap();
    let now = Utc::now();
    let open = |service: &str| {
        store
            .record_drift(
                &sighting(
                    &Fingerprint::service("c", service, DriftKind::Stopped),
                    "stopped",
                ),
                now,
            )
            .unwrap()
            .0
            .id
    };
    let act = |id: i64, actor: Actor, ok: Option<bool>| {
        assert!(
            store
                .action_started(id, actor, None, serde_json::json!({}), now)
                .unwrap()
        );
        if let Some(ok) = ok {
            let result = if ok { "ok" } else { "error" };
            store
                .action_finished(id, actor, ok, serde_json::json!({"result": result}), now)
                .unwrap();
        }
    };
    let resolve = |id| {
        store
            .resolve_rechecked(id, &serde_json::json!({"result": "desired state"}), now)
            .unwrap()
    };
    let nothing = open("a");
    assert_eq!(resolve(nothing), Some(Cause::SelfHealed));
    assert_eq!(resolve(nothing), None, "resolved once");

    let agent = open("b");
    act(agent, Actor::Controller, Some(false));
    act(agent, Actor::Agent, Some(true));
    assert_eq!(resolve(agent), Some(Cause::Agent));

    let failed_last = open("c");
    act(failed_last, Actor::Controller, Some(true));
    act(failed_last, Actor::Agent, Some(false));
    assert_eq!(resolve(failed_last), Some(Cause::SelfHealed));

    // Still running when the re-check came (a check's restart): credited to who started it.
    let in_flight = open("d");
    act(in_flight, Actor::Controller, None);
    assert_eq!(resolve(in_flight), Some(Cause::Controller));

    // Cut short by a stop: nobody knows it completed, so it is not credited.
    let interrupted = open("f");
    act(interrupted, Actor::Controller, None);
    store.close_interrupted_actions(now).unwrap();
    assert_eq!(resolve(interrupted), Some(Cause::SelfHealed));

    // Escalated after a successful action: the action did not fix it.
    let escalated = open("e");
    act(escalated, Actor::Controller, Some(true));
    store
        .escalate(escalated, serde_json::json!({}), now)
        .unwrap();
    assert_eq!(resolve(escalated), Some(Cause::SelfHealed));

    let actors: Vec<Option<Actor>> = store
        .timeline(agent)
        .unwrap()
        .into_iter()
        .filter(|e| matches!(e.kind, EntryKind::ActionStarted | EntryKind::ActionResult))
        .map(|e| e.actor)
        .collect();
    assert_eq!(
        actors,
        vec![
            Some(Actor::Controller),
            Some(Actor::Controller),
            Some(Actor::Agent),
            Some(Actor::Agent)
        ]
    );
}

#[test]
fn unreadable_rows_are_errors_that_name_the_row_never_defaults() {
    let db = TempDb::new();
    let store = Store::open(&db.path()).unwrap();
    let fp = Fingerprint::service("c", "s", DriftKind::Stopped);
    let (t, _) = store
        .record_drift(&sighting(&fp, "stopped"), Utc::now())
        .unwrap();
    store.save_budget("c", "s", &Budget::default()).unwrap();
    let raw = rusqlite::Connection::open(db.path()).unwrap();
    // As a hand edit or a damaged file would: past the schema's own CHECKs.
    raw.pragma_update(None, "ignore_check_constraints", true)
        .unwrap();
    let corrupt = |sql: &str| raw.execute(sql, []).unwrap();
    let expect = |what: Result<(), TicketError>, column: &str| match what {
        Err(TicketError::Corrupt { row, column: c, .. }) => {
            assert_eq!((row, c), (t.id, column));
        }
        other => panic!("expected a corrupt {column}, got {other:?}"),
    };

    corrupt("UPDATE tickets SET opened_at = 'yesterday'");
    expect(store.get(t.id).map(|_| ()), "opened_at");
    let message = store.list(None).unwrap_err().to_string();
    assert!(
        message.contains("tickets row 1")
            && message.contains("opened_at")
            && message.contains("yesterday"),
        "{message}"
    );
    corrupt("UPDATE tickets SET opened_at = episode_at, status = 'fixed'");
    expect(store.get(t.id).map(|_| ()), "status");
    corrupt("UPDATE tickets SET status = 'open', drift = 'sad'");
    expect(store.get(t.id).map(|_| ()), "drift");
    corrupt("UPDATE tickets SET drift = 'stopped', fingerprint = 'c/other/stopped'");
    expect(store.get(t.id).map(|_| ()), "fingerprint");
    corrupt("UPDATE tickets SET fingerprint = 'c/s/stopped'");
    store.get(t.id).unwrap().unwrap();

    corrupt("UPDATE timeline SET at = '1970' WHERE ticket_id = 1");
    assert!(matches!(
        store.timeline(t.id),
        Err(TicketError::Corrupt {
            table: "timeline",
            column: "at",
            ..
        })
    ));
    corrupt("UPDATE budgets SET next_attempt_at = 'soon'");
    assert!(matches!(
        store.load_budget("c", "s"),
        Err(TicketError::Corrupt {
            table: "budgets",
            column: "next_attempt_at",
            ..
        })
    ));
}

#[test]
fn the_tickets_table_rebuild_keeps_every_row_id_index_and_reference() {
    let db = TempDb::new();
    std::fs::create_dir_all(db.path().parent().unwrap()).unwrap();
    {
        // What an operator of schema 2 left behind: an escalated ticket and a resolved one.
        let raw = rusqlite::Connection::open(db.path()).unwrap();
        for step in &crate::tickets::MIGRATIONS[..2] {
            raw.execute_batch(step.sql).unwrap();
        }
        raw.execute_batch(
            "PRAGMA user_version = 2; PRAGMA application_id = 1330664523;
             INSERT INTO tickets (id, fingerprint, cluster, service, drift, status, opened_at, episode_at, last_seen_at)
               VALUES (7, 'c/s/stopped', 'c', 's', 'stopped', 'escalated', '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z');
             INSERT INTO tickets (id, fingerprint, cluster, service, drift, status, opened_at, episode_at, last_seen_at, resolved_at, resolved_by)
               VALUES (9, 'c/t/stopped', 'c', 't', 'stopped', 'resolved', '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:05.000000Z', 'controller');
             INSERT INTO timeline (ticket_id, at, kind, detail, actor) VALUES
               (7, '2026-01-01T00:00:00.000000Z', 'detected', '{}', NULL),
               (9, '2026-01-01T00:00:01.000000Z', 'action-started', '{}', 'controller');",
        )
        .unwrap();
    }
    let store = Store::open(&db.path()).unwrap();
    let ids: Vec<(i64, Status)> = store
        .list(None)
        .unwrap()
        .iter()
        .map(|t| (t.id, t.status))
        .collect();
    assert_eq!(ids, vec![(9, Status::Resolved), (7, Status::Escalated)]);
    assert_eq!(store.timeline(7).unwrap().len(), 1);
    assert_eq!(store.timeline(9).unwrap().len(), 1);
    let raw = rusqlite::Connection::open(db.path()).unwrap();
    let version: i64 = raw
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, crate::tickets::MIGRATIONS.len() as i64);
    assert!(
        raw.execute(
            "INSERT INTO tickets (fingerprint, cluster, service, drift, status, opened_at, episode_at, last_seen_at)
             VALUES ('c/s/stopped', 'c', 's', 'stopped', 'open', 'x', 'x', 'x')",
            [],
        )
        .is_err(),
        "the one-unresolved-per-fingerprint index is back"
    );
    assert!(
        store
            .resolve_removed(7, "service s is no longer declared", Utc::now())
            .unwrap()
            .is_some(),
        "the widened CHECK accepts the `removed` cause"
    );
    assert_eq!(
        store.get(7).unwrap().unwrap().resolved_by,
        Some(Cause::Removed)
    );
    drop(store);
    let store = Store::open(&db.path()).unwrap();
    assert!(
        store
            .append(42, EntryKind::Note, serde_json::json!({}), Utc::now())
            .is_err(),
        "foreign keys are enforced again after the migration"
    );
}

#[test]
fn a_database_of_the_first_schema_is_migrated_and_old_actions_are_the_controllers() {
    let db = TempDb::new();
    std::fs::create_dir_all(db.path().parent().unwrap()).unwrap();
    {
        // What an operator of schema 1 left behind.
        let raw = rusqlite::Connection::open(db.path()).unwrap();
        raw.execute_batch(crate::tickets::MIGRATIONS[0].sql)
            .unwrap();
        raw.execute_batch(
            "PRAGMA user_version = 1; PRAGMA application_id = 1330664523;
             INSERT INTO tickets (fingerprint, cluster, service, drift, status, opened_at, episode_at, last_seen_at)
               VALUES ('c/s/stopped', 'c', 's', 'stopped', 'remediating', '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z');
             INSERT INTO timeline (ticket_id, at, kind, detail) VALUES
               (1, '2026-01-01T00:00:00.000000Z', 'detected', '{}'),
               (1, '2026-01-01T00:00:01.000000Z', 'action-started', '{}'),
               (1, '2026-01-01T00:00:02.000000Z', 'action-result', '{\"result\":\"ok\"}');",
        )
        .unwrap();
    }
    assert!(
        matches!(
            Store::open_read_only(&db.path()),
            Err(TicketError::NotMigrated { found: 1, .. })
        ),
        "a read-only open never migrates"
    );
    let store = Store::open(&db.path()).unwrap();
    let actors: Vec<Option<Actor>> = store.timeline(1).unwrap().iter().map(|e| e.actor).collect();
    assert_eq!(
        actors,
        vec![None, Some(Actor::Controller), Some(Actor::Controller)]
    );
    assert_eq!(
        store
            .resolve_rechecked(1, &serde_json::json!({}), Utc::now())
            .unwrap(),
        Some(Cause::Controller)
    );
    // An old daemon still running after a newer CLI migrated its file writes no actor.
    let old = store
        .record_drift(
            &sighting(
                &Fingerprint::service("c", "t", DriftKind::Stopped),
                "stopped",
            ),
            Utc::now(),
        )
        .unwrap()
        .0;
    rusqlite::Connection::open(db.path())
        .unwrap()
        .execute(
            "INSERT INTO timeline (ticket_id, at, kind, detail) VALUES (?1, '2026-01-01T00:00:03.000000Z', 'action-started', '{}')",
            [old.id],
        )
        .unwrap();
    assert_eq!(
        store
            .resolve_rechecked(old.id, &serde_json::json!({}), Utc::now())
            .unwrap(),
        Some(Cause::Controller)
    );
    let reader = Store::open_read_only(&db.path()).unwrap();
    assert!(reader.is_read_only());
    assert_eq!(reader.get(1).unwrap().unwrap().status, Status::Resolved);
    assert!(
        reader
            .append(1, EntryKind::Note, serde_json::json!({}), Utc::now())
            .is_err(),
        "a read-only store refuses writes"
    );
}

#[test]
fn a_service_is_escalated_exactly_while_it_has_an_escalated_ticket() {
    let db = TempDb::new();
    let store = Store::open(&db.path()).unwrap();
    let now = Utc::now();
    let spent = Budget {
        attempts: 3,
        repairs: vec![now, now, now],
        escalated: true,
        ..Default::default()
    };
    // A saved budget never carries the flag itself: without an escalated ticket it is not.
    store.save_budget("c", "no-ticket", &spent).unwrap();
    assert!(
        !store
            .load_budget("c", "no-ticket")
            .unwrap()
            .unwrap()
            .escalated
    );
    // Its repairs stay in the window when the service came back; a person's resolve gives a
    // fresh budget, as `retry` does.
    for (service, by_human, repairs_left) in
        [("came-back", false, 3), ("resolved-by-hand", true, 0)]
    {
        let fp = Fingerprint::service("c", service, DriftKind::Stopped);
        let (t, _) = store.record_drift(&sighting(&fp, "stopped"), now).unwrap();
        store.save_budget("c", service, &spent).unwrap();
        assert!(!store.load_budget("c", service).unwrap().unwrap().escalated);
        store.escalate(t.id, serde_json::json!({}), now).unwrap();
        assert!(
            store.load_budget("c", service).unwrap().unwrap().escalated,
            "{service}: escalated with its ticket"
        );
        // A later save (an older view of the budget) does not end it.
        store
            .save_budget(
                "c",
                service,
                &Budget {
                    escalated: false,
                    ..spent.clone()
                },
            )
            .unwrap();
        assert!(store.load_budget("c", service).unwrap().unwrap().escalated);
        if by_human {
            store.resolve_by_human(t.id, None, now).unwrap();
        } else {
            store
                .resolve_rechecked(t.id, &serde_json::json!({}), now)
                .unwrap();
        }
        let b = store.load_budget("c", service).unwrap().unwrap();
        assert_eq!(
            (b.escalated, b.attempts, b.repairs.len()),
            (false, 0, repairs_left),
            "{service}: the escalation ended with its ticket"
        );
    }
    // Another escalated ticket of the service keeps it escalated.
    let (a, _) = store
        .record_drift(
            &sighting(
                &Fingerprint::service("c", "two", DriftKind::Stopped),
                "stopped",
            ),
            now,
        )
        .unwrap();
    let (b, _) = store
        .record_drift(
            &sighting(
                &Fingerprint::service("c", "two", DriftKind::Paused),
                "paused",
            ),
            now,
        )
        .unwrap();
    store.save_budget("c", "two", &spent).unwrap();
    store.escalate(a.id, serde_json::json!({}), now).unwrap();
    store.escalate(b.id, serde_json::json!({}), now).unwrap();
    store
        .resolve_rechecked(a.id, &serde_json::json!({}), now)
        .unwrap();
    assert!(store.load_budget("c", "two").unwrap().unwrap().escalated);
}

#[test]
fn episodes_report_detection_first_action_and_resolution_per_episode() {
    let db = TempDb::new();
    let store = Store::open(&db.path()).unwrap();
    let t0 = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
    let at = |s: i64| t0 + chrono::Duration::seconds(s);
    let fp = Fingerprint::service("c", "s", DriftKind::Stopped);
    let (t, _) = store
        .record_drift(&sighting(&fp, "stopped"), at(0))
        .unwrap();
    store
        .action_started(t.id, Actor::Controller, None, serde_json::json!({}), at(1))
        .unwrap();
    store
        .action_finished(
            t.id,
            Actor::Controller,
            true,
            serde_json::json!({"result": "ok"}),
            at(2),
        )
        .unwrap();
    store
        .resolve_rechecked(t.id, &serde_json::json!({}), at(3))
        .unwrap();
    // Back within the cooldown: the same ticket, a second episode, healed by itself.
    store
        .record_drift(&sighting(&fp, "crash-looping"), at(10))
        .unwrap();
    store
        .resolve_rechecked(t.id, &serde_json::json!({}), at(12))
        .unwrap();
    // Another service, still open.
    let other = Fingerprint::service("c", "o", DriftKind::Paused);
    store
        .record_drift(&sighting(&other, "paused"), at(20))
        .unwrap();

    let all = store.episodes(&TicketQuery::since(at(0))).unwrap();
    assert_eq!(all.len(), 3, "{all:#?}");
    assert_eq!(
        (
            all[0].detected_at,
            all[0].first_action_at,
            all[0].first_actor,
            all[0].resolved_at,
            all[0].resolved_by
        ),
        (
            at(0),
            Some(at(1)),
            Some(Actor::Controller),
            Some(at(3)),
            Some(Cause::Controller)
        )
    );
    assert_eq!(
        (
            all[1].ticket,
            all[1].drift,
            all[1].detected_at,
            all[1].first_action_at,
            all[1].resolved_by
        ),
        (
            t.id,
            DriftKind::CrashLooping,
            at(10),
            None,
            Some(Cause::SelfHealed)
        )
    );
    assert_eq!((all[2].resolved_at, all[2].resolved_by), (None, None));

    let later = store.episodes(&TicketQuery::since(at(5))).unwrap();
    assert_eq!(later.len(), 2);
    let stopped = store
        .episodes(&TicketQuery::since(at(0)).family(DriftKind::CrashLooping.family()))
        .unwrap();
    assert_eq!(stopped.len(), 2, "crash-looping is the stopped family");
    let of_o = store
        .episodes(
            &TicketQuery::since(at(0))
                .cluster("c")
                .target(Target::Service("o".into())),
        )
        .unwrap();
    assert_eq!(of_o.len(), 1);
    assert!(
        store
            .episodes(&TicketQuery::since(at(0)).cluster("x"))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_failed_action_returns_the_ticket_to_open_and_a_held_one_refuses_actions() {
    let db = TempDb::new();
    let store = Store::open(&db.path()).unwrap();
    let fp = Fingerprint::service("c", "s", DriftKind::Stopped);
    let now = Utc::now();
    let (t, _) = store.record_drift(&sighting(&fp, "stopped"), now).unwrap();
    assert!(
        store
            .action_started(
                t.id,
                Actor::Controller,
                Some(("c", "s", &Budget::default())),
                serde_json::json!({}),
                now
            )
            .unwrap()
    );
    assert_eq!(
        store.get(t.id).unwrap().unwrap().status,
        Status::Remediating
    );
    store
        .action_finished(
            t.id,
            Actor::Controller,
            false,
            serde_json::json!({"result": "error"}),
            now,
        )
        .unwrap();
    assert_eq!(store.get(t.id).unwrap().unwrap().status, Status::Open);
    store.set_held(t.id, true, now).unwrap();
    assert!(
        !store
            .action_started(
                t.id,
                Actor::Controller,
                Some(("c", "s", &Budget::default())),
                serde_json::json!({}),
                now
            )
            .unwrap()
    );
    store
        .resolve_rechecked(t.id, &serde_json::json!({}), now)
        .unwrap();
    assert!(
        !store.get(t.id).unwrap().unwrap().held,
        "a hold ends with its episode"
    );
}

#[tokio::test]
async fn a_store_that_refuses_writes_is_reported_until_one_succeeds() {
    let db = TempDb::new();
    let writable = Arc::new(Store::open(&db.path()).unwrap());
    let metrics = Arc::new(crate::metrics::Metrics::new());
    assert_eq!(metrics.store_writable.get(), 1);
    let sighting = || {
        sighting(
            &Fingerprint::service("c", "s", DriftKind::Stopped),
            "stopped",
        )
    };
    // Read-only: what a full disk or a read-only file looks like to a writer.
    let refusing = Journal::new(
        Arc::new(Store::open_read_only(&db.path()).unwrap()),
        metrics.clone(),
    );
    assert!(matches!(
        refusing.sighting(sighting(), Utc::now()).await,
        Err(TicketError::Query { .. })
    ));
    assert_eq!(metrics.store_writable.get(), 0);
    // A refused change (not a failure of the store) leaves it as it is...
    let journal = Journal::new(writable, metrics.clone());
    assert!(
        journal
            .escalate(9999, serde_json::json!({}), Utc::now())
            .await
            .is_ok()
    );
    assert_eq!(
        metrics.store_writable.get(),
        1,
        "a write that succeeds clears it"
    );
    assert!(
        refusing
            .unresolved(Selector::Checks {
                cluster: "c".into(),
                check: None
            })
            .await
            .is_ok()
    );
    assert_eq!(
        metrics.store_writable.get(),
        1,
        "reads say nothing about writes"
    );
}

#[test]
fn agent_requests_are_taken_once_in_ticket_order_and_a_dead_holders_are_ended() {
    let db = TempDb::new();
    let store = Store::open(&db.path()).unwrap();
    let now = Utc::now();
    let t = |s: &str| {
        store
            .record_drift(
                &sighting(&Fingerprint::service("c", s, DriftKind::Stopped), "stopped"),
                now,
            )
            .unwrap()
            .0
            .id
    };
    let (first, second) = (t("a"), t("b"));
    // Queued newest ticket first: still taken in ticket order.
    store.request_session("s-b", second, "c", "b", now).unwrap();
    store.request_session("s-a", first, "c", "a", now).unwrap();
    let until = now + chrono::Duration::seconds(60);
    let one = store.take_request("one", until, now).unwrap().unwrap();
    assert_eq!((one.session_id.as_str(), one.ticket_id), ("s-a", first));
    let two = store.take_request("two", until, now).unwrap().unwrap();
    assert_eq!(two.session_id, "s-b");
    assert!(
        store.take_request("two", until, now).unwrap().is_none(),
        "taken once"
    );
    // Another request of a ticket claimed by a live holder waits.
    store.request_session("s-a2", first, "c", "a", now).unwrap();
    assert!(store.take_request("two", until, now).unwrap().is_none());
    // Holder "one" dies: once its claim lapsed, its request ends as failed and the ticket is
    // free for the next request.
    let later = until + chrono::Duration::seconds(1);
    let ended = store.abandon_orphan_requests(later).unwrap();
    let ended: Vec<&str> = ended.iter().map(|r| r.session_id.as_str()).collect();
    assert_eq!(ended, vec!["s-a", "s-b"]);
    let r = store.agent_request("s-a").unwrap().unwrap();
    assert_eq!((r.state.as_str(), r.ok), ("done", Some(false)));
    assert!(r.reason.unwrap().contains("one"));
    let next = store
        .take_request("two", later + chrono::Duration::seconds(60), later)
        .unwrap()
        .unwrap();
    assert_eq!(next.session_id, "s-a2");
    assert!(store.finish_request("s-a2", true, None, later).unwrap());
    assert!(
        !store.finish_request("s-a2", false, None, later).unwrap(),
        "once"
    );
}

#[test]
fn an_adoption_is_recorded_once_per_container_and_replaced_by_the_next() {
    let db = TempDb::new();
    let store = Store::open(&db.path()).unwrap();
    let adoption = |id: &str| Adoption {
        cluster: "tikv".into(),
        service: "pd0".into(),
        container_id: id.into(),
        name: "pd0".into(),
        adopted_at: Utc::now(),
    };
    assert!(store.record_adoption(&adoption("aaa")).unwrap());
    assert!(
        !store.record_adoption(&adoption("aaa")).unwrap(),
        "same container"
    );
    // Compose recreated it: the new container is the one adopted.
    assert!(store.record_adoption(&adoption("bbb")).unwrap());
    let all = store.adoptions().unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].container_id, "bbb");
    drop(store);
    // Kept across a restart.
    let store = Store::open(&db.path()).unwrap();
    assert_eq!(store.adoptions().unwrap()[0].container_id, "bbb");
}

#[test]
fn a_pause_is_kept_apart_from_the_budget_and_only_a_later_one_replaces_it() {
    let db = TempDb::new();
    let store = Store::open(&db.path()).unwrap();
    let now = Utc::now();
    let earlier = now - chrono::Duration::seconds(10);
    // A pause recorded before the service ever had a budget row.
    store.save_paused_at("c", "s", now).unwrap();
    assert_eq!(
        store.load_budget("c", "s").unwrap().unwrap().paused_at,
        Some(now.with_nanosecond_micros())
    );
    // An older pause (a controller that saw it late) does not move it back.
    store.save_paused_at("c", "s", earlier).unwrap();
    let loaded = store.load_budget("c", "s").unwrap().unwrap();
    assert_eq!(loaded.paused_at, Some(now.with_nanosecond_micros()));
    // A budget saved from a read without the pause does not erase it.
    let spent = Budget {
        attempts: 2,
        ..Default::default()
    };
    store.save_budget("c", "s", &spent).unwrap();
    let loaded = store.load_budget("c", "s").unwrap().unwrap();
    assert_eq!(loaded.attempts, 2);
    assert_eq!(loaded.paused_at, Some(now.with_nanosecond_micros()));
}

trait Micros {
    /// The time as the store keeps it (microseconds).
    fn with_nanosecond_micros(self) -> Self;
}

impl Micros for chrono::DateTime<Utc> {
    fn with_nanosecond_micros(self) -> Self {
        use chrono::Timelike;
        self.with_nanosecond(self.nanosecond() / 1000 * 1000)
            .unwrap()
    }
}

#[test]
fn a_service_view_is_current_until_this_process_or_another_commits() {
    let db = TempDb::new();
    let store = Store::open(&db.path()).unwrap();
    let view = store.service_view("c", "s").unwrap();
    assert_eq!(
        store.generation_now(),
        Some(view.generation),
        "nothing written"
    );
    // A write of this process, to any service, moves the generation on.
    store.save_budget("c", "other", &Budget::default()).unwrap();
    assert_ne!(store.generation_now(), Some(view.generation));
    let view = store.service_view("c", "s").unwrap();
    assert_eq!(store.generation_now(), Some(view.generation));
    // So does another process's (here, a connection of its own), once noticed.
    let other = Store::open(&db.path()).unwrap();
    other.save_budget("c", "s", &Budget::default()).unwrap();
    assert_ne!(store.generation_now(), Some(view.generation));
    let fresh = store.service_view("c", "s").unwrap();
    assert!(fresh.budget.is_some(), "the other's write is read");
    assert_eq!(store.generation_now(), Some(fresh.generation));
}

#[test]
fn the_reading_connections_refuse_writes() {
    // Every write goes through the writer, which moves the generation on: a write through a
    // reader would leave views current that are not.
    let db = TempDb::new();
    let store = Store::open(&db.path()).unwrap();
    let refused = store.conn().execute("DELETE FROM budgets", []);
    assert!(refused.is_err(), "{refused:?}");
}

/// A database as an operator of schema `version` left it: its steps applied by hand, one
/// ticket with one timeline entry in it.
fn database_of_schema(path: &std::path::Path, version: usize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let raw = rusqlite::Connection::open(path).unwrap();
    for step in &crate::tickets::MIGRATIONS[..version] {
        raw.execute_batch(step.sql).unwrap();
    }
    raw.execute_batch(&format!(
        "PRAGMA user_version = {version}; PRAGMA application_id = 1330664523;
         INSERT INTO tickets (id, fingerprint, cluster, service, drift, status, opened_at, episode_at, last_seen_at)
           VALUES (5, 'c/s/stopped', 'c', 's', 'stopped', 'open', '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z');
         INSERT INTO timeline (ticket_id, at, kind, detail) VALUES (5, '2026-01-01T00:00:00.000000Z', 'detected', '{{}}');"
    ))
    .unwrap();
}

fn schema_version(path: &std::path::Path) -> i64 {
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn a_database_of_every_released_schema_is_migrated_in_place() {
    let latest = crate::tickets::MIGRATIONS.len();
    for version in 1..=latest {
        let db = TempDb::new();
        database_of_schema(&db.path(), version);
        let store = Store::open(&db.path())
            .unwrap_or_else(|e| panic!("schema {version} does not migrate: {e}"));
        let ticket = store.get(5).unwrap().expect("the ticket is kept");
        assert_eq!(ticket.status, Status::Open, "schema {version}");
        assert_eq!(store.timeline(5).unwrap().len(), 1, "schema {version}");
        drop(store);
        assert_eq!(
            schema_version(&db.path()),
            latest as i64,
            "schema {version}"
        );
    }
}

#[test]
fn a_database_of_a_newer_operator_is_refused_and_left_alone() {
    let db = TempDb::new();
    let latest = crate::tickets::MIGRATIONS.len();
    database_of_schema(&db.path(), latest);
    rusqlite::Connection::open(db.path())
        .unwrap()
        .pragma_update(None, "user_version", latest as i64 + 1)
        .unwrap();
    let refused = Store::open(&db.path());
    assert!(
        matches!(refused, Err(TicketError::TooNew { found, .. }) if found == latest as i64 + 1),
        "{:?}",
        refused.err()
    );
    assert_eq!(schema_version(&db.path()), latest as i64 + 1);
}

#[test]
fn a_migration_that_fails_names_its_step_and_leaves_the_file_as_it_was() {
    let db = TempDb::new();
    let latest = crate::tickets::MIGRATIONS.len();
    database_of_schema(&db.path(), latest - 1);
    // Whatever the last step adds is there already under its name: the step cannot run.
    let last = crate::tickets::MIGRATIONS[latest - 1].sql;
    rusqlite::Connection::open(db.path())
        .unwrap()
        .execute_batch(last)
        .unwrap();
    let failed = Store::open(&db.path());
    match failed {
        Err(TicketError::Migration { step, .. }) => assert_eq!(step, latest),
        other => panic!("expected a failed migration, got {:?}", other.err()),
    }
    assert_eq!(schema_version(&db.path()), latest as i64 - 1);
    let failed = Store::open(&db.path()).err().unwrap().to_string();
    assert!(
        failed.contains(&format!("schema migration {latest} failed")),
        "{failed}"
    );
}

#[test]
fn processes_opening_an_old_database_at_once_all_get_it_migrated() {
    let db = TempDb::new();
    database_of_schema(&db.path(), 1);
    let path = db.path();
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || Store::open(&path).map(|_| ()))
        })
        .collect();
    for open in opens {
        open.join().unwrap().unwrap();
    }
    assert_eq!(
        schema_version(&path),
        crate::tickets::MIGRATIONS.len() as i64
    );
}
