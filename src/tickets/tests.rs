//! Store behaviour on real SQLite files in a temporary folder.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;

use super::*;
use crate::reconcile::DriftKind;

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

fn sighting<'a>(fp: &'a str, drift: &'a str) -> DriftSighting<'a> {
    DriftSighting {
        fingerprint: fp,
        cluster: "c",
        service: "s",
        drift,
        detail: "exited with code 1",
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
    let fp = fingerprint("c", "s", DriftKind::Stopped);
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
    assert_eq!(t3.drift, "crash-looping");
    let kinds: Vec<String> = store
        .timeline(t1.id)
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, vec!["detected", "drift-changed"]);
}

#[test]
fn drift_back_within_cooldown_reopens_and_counts_a_flap() {
    let db = TempDb::new();
    let store = Store::open(&db.path()).unwrap();
    let fp = fingerprint("c", "s", DriftKind::Paused);
    let now = Utc::now();
    let (t, _) = store.record_drift(&sighting(&fp, "paused"), now).unwrap();
    assert!(
        store
            .resolve(t.id, Cause::Controller, serde_json::json!({}), now)
            .unwrap()
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
        .resolve(t.id, Cause::SelfHealed, serde_json::json!({}), later)
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
    let fp = fingerprint("c", "s", DriftKind::Missing);
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
    let fp = fingerprint("c", "s", DriftKind::Stopped);
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
            "c",
            "s",
            &spent,
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
        store.retry(9999, now),
        Err(TicketError::NotFound(9999))
    ));
    let t = store.retry(t.id, now).unwrap();
    assert_eq!(t.status, Status::Open);
    let b = store.load_budget("c", "s").unwrap().unwrap();
    assert_eq!((b.attempts, b.repairs.len(), b.escalated), (0, 0, false));
    assert!(matches!(
        store.retry(t.id, now),
        Err(TicketError::WrongState { .. })
    ));
}

#[test]
fn hold_resolve_and_interrupted_actions_are_recorded() {
    let db = TempDb::new();
    let store = Store::open(&db.path()).unwrap();
    let fp = fingerprint("c", "s", DriftKind::Stopped);
    let now = Utc::now();
    let (t, _) = store.record_drift(&sighting(&fp, "stopped"), now).unwrap();
    assert!(
        store
            .action_started(
                t.id,
                "c",
                "s",
                &Budget::default(),
                serde_json::json!({"action": "start"}),
                now,
            )
            .unwrap()
    );
    assert!(store.set_held(t.id, true, now).unwrap().held);
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
    let kinds: Vec<String> = store
        .timeline(t.id)
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
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
fn like_patterns_match_literal_underscores_only() {
    let db = TempDb::new();
    let store = Store::open(&db.path()).unwrap();
    let now = Utc::now();
    for cluster in ["a_b", "axb"] {
        let fp = format!("{cluster}/-/observability-lost");
        store
            .record_drift(
                &DriftSighting {
                    fingerprint: &fp,
                    cluster,
                    service: "-",
                    drift: "observability-lost",
                    detail: "down",
                    cooldown: Duration::from_secs(600),
                    evidence: None,
                },
                now,
            )
            .unwrap();
    }
    let pattern = format!("{}/%", like_escape("a_b"));
    let found = store.unresolved_like(&pattern).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].cluster, "a_b");
    assert_eq!(
        store
            .unresolved_by_fingerprint("axb/-/observability-lost")
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_failed_action_returns_the_ticket_to_open_and_a_held_one_refuses_actions() {
    let db = TempDb::new();
    let store = Store::open(&db.path()).unwrap();
    let fp = fingerprint("c", "s", DriftKind::Stopped);
    let now = Utc::now();
    let (t, _) = store.record_drift(&sighting(&fp, "stopped"), now).unwrap();
    assert!(
        store
            .action_started(
                t.id,
                "c",
                "s",
                &Budget::default(),
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
        .action_finished(t.id, false, serde_json::json!({"result": "error"}), now)
        .unwrap();
    assert_eq!(store.get(t.id).unwrap().unwrap().status, Status::Open);
    store.set_held(t.id, true, now).unwrap();
    assert!(
        !store
            .action_started(
                t.id,
                "c",
                "s",
                &Budget::default(),
                serde_json::json!({}),
                now
            )
            .unwrap()
    );
    store
        .resolve(t.id, Cause::SelfHealed, serde_json::json!({}), now)
        .unwrap();
    assert!(
        !store.get(t.id).unwrap().unwrap().held,
        "a hold ends with its episode"
    );
}
