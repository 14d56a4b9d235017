//! The audit store on real SQLite files in a temporary folder, with injected times.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;

use super::*;
use crate::drift::{DriftKind, Fingerprint};
use crate::tickets::{DriftSighting, Status};

struct TempDb(PathBuf);

impl TempDb {
    fn new() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "operator-audit-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        TempDb(dir)
    }

    fn path(&self) -> PathBuf {
        self.0.join("tickets.db")
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn t(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 1, 3, 15, 0).unwrap() + chrono::Duration::seconds(secs)
}

fn ticket(store: &Store, service: &str) -> i64 {
    let (ticket, _) = store
        .record_drift(
            &DriftSighting {
                fingerprint: Fingerprint::service("c", service, DriftKind::Stopped),
                drift: DriftKind::Stopped,
                detail: "exited".into(),
                cooldown: Duration::from_secs(600),
                evidence: None,
            },
            t(0),
        )
        .unwrap();
    ticket.id
}

fn new_session(id: &str, ticket_id: i64, holder: &str) -> NewSession {
    NewSession {
        id: id.into(),
        ticket_id,
        cluster: "c".into(),
        service: "pd".into(),
        model: "claude-test".into(),
        mode: SafetyMode::Execute,
        holder: holder.into(),
    }
}

const S1: &str = "20261201T031500Z-1a2b3c4d";
const S2: &str = "20261201T031600Z-00ff00ff";

#[test]
fn session_ids_have_one_shape() {
    assert!(is_session_id(S1));
    for bad in [
        "",
        "20261201T031500Z",
        "20261201T031500Z-1a2b3c4",
        "20261201T031500Z-1A2B3C4D",
        "20261301T031500Z-1a2b3c4d",
        "2026-12-01T03:15:00Z-1a2b3c4d",
        "20261201T031500Z-1a2b3c4g",
        "../../etc/passwd",
    ] {
        assert!(!is_session_id(bad), "{bad}");
    }
}

#[test]
fn a_session_records_its_entries_in_order_its_turns_and_its_end() {
    let db = TempDb::new();
    let store = Store::open(&db.path()).unwrap();
    let id = ticket(&store, "pd");
    let started = store
        .session_started(&new_session(S1, id, "pid 1 on h"), t(1))
        .unwrap();
    assert_eq!(started.outcome, Outcome::Running);
    assert_eq!(started.started_at, t(1));
    assert_eq!(started.turns, 0);

    let text = store
        .append_entry(
            S1,
            &NewEntry::new(AuditKind::ModelText, json!({"text": "looking"})),
            t(2),
        )
        .unwrap();
    let call = store
        .append_entry(
            S1,
            &NewEntry::new(
                AuditKind::ToolCall,
                json!({"input": {"command": "docker ps"}}),
            )
            .tool("toolu_1", "shell"),
            t(3),
        )
        .unwrap();
    let result = store
        .append_entry(
            S1,
            &NewEntry::new(AuditKind::ToolResult, json!({"exit_code": 0})).tool("toolu_1", "shell"),
            t(4),
        )
        .unwrap();
    assert_eq!((text.seq, call.seq, result.seq), (1, 2, 3));

    let usage = Usage {
        input: 100,
        output: 20,
        cache_read: 900,
        cache_write: 50,
    };
    store.record_turn(S1, Some("req_1"), usage).unwrap();
    let after = store.record_turn(S1, Some("req_2"), usage).unwrap();
    assert_eq!(after.turns, 2);
    assert_eq!(after.tokens.input, 200);
    assert_eq!(after.request_ids, vec!["req_1", "req_2"]);
    // Counted as it happens: a reader sees it before the end.
    assert_eq!(store.usage_since(t(0)).unwrap().cache_read, 1800);

    let end = SessionEnd {
        outcome: Outcome::Ended,
        stop_reason: Some(StopReason::EndTurn),
        claim: Some("fixed".into()),
        tokens: Usage {
            input: 201,
            ..usage
        },
        turns: 2,
        request_ids: vec!["req_1".into(), "req_2".into()],
    };
    let ended = store.session_ended(S1, &end, t(9)).unwrap().unwrap();
    assert_eq!(ended.outcome, Outcome::Ended);
    assert_eq!(ended.stop_reason, Some(StopReason::EndTurn));
    assert_eq!(ended.claim.as_deref(), Some("fixed"));
    assert_eq!(ended.ended_at, Some(t(9)));
    assert_eq!(ended.tokens.input, 201, "the end's totals replace the sum");
    assert_eq!(
        store.session_ended(S1, &end, t(10)).unwrap(),
        None,
        "a session ends once"
    );

    assert!(store.set_verdict(S1, Verdict::NotResolved).unwrap());
    assert!(
        !store.set_verdict(S1, Verdict::Resolved).unwrap(),
        "the verdict is set once"
    );

    let log = store.session(S1).unwrap().unwrap();
    assert_eq!(log.session.verdict, Some(Verdict::NotResolved));
    let kinds: Vec<(i64, AuditKind)> = log.entries.iter().map(|e| (e.seq, e.kind)).collect();
    assert_eq!(
        kinds,
        vec![
            (1, AuditKind::ModelText),
            (2, AuditKind::ToolCall),
            (3, AuditKind::ToolResult)
        ]
    );
    assert_eq!(log.entries[2].tool_use_id.as_deref(), Some("toolu_1"));
    assert_eq!(log.entries[1].detail["input"]["command"], "docker ps");
    assert_eq!(log.entries[0].at, t(2));
    assert_eq!(store.session(S2).unwrap(), None);
}

#[test]
fn sessions_are_listed_newest_first_by_ticket_and_since() {
    let db = TempDb::new();
    let store = Store::open(&db.path()).unwrap();
    let a = ticket(&store, "pd");
    let b = ticket(&store, "tikv");
    store
        .session_started(&new_session(S1, a, "h"), t(0))
        .unwrap();
    store
        .session_started(&new_session(S2, b, "h"), t(60))
        .unwrap();
    let s3 = "20261201T031700Z-deadbeef";
    store
        .session_started(&new_session(s3, a, "h"), t(120))
        .unwrap();
    let ids = |v: Vec<AgentSession>| v.into_iter().map(|s| s.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.sessions(&SessionQuery::default()).unwrap()),
        vec![s3, S2, S1]
    );
    assert_eq!(
        ids(store
            .sessions(&SessionQuery {
                ticket: Some(a),
                since: None
            })
            .unwrap()),
        vec![s3, S1]
    );
    assert_eq!(
        ids(store
            .sessions(&SessionQuery {
                ticket: None,
                since: Some(t(60))
            })
            .unwrap()),
        vec![s3, S2]
    );
    assert_eq!(ids(store.sessions_of_ticket(a).unwrap()), vec![S1, s3]);
}

#[test]
fn unknown_tickets_sessions_and_bad_ids_are_errors_naming_them() {
    let db = TempDb::new();
    let store = Store::open(&db.path()).unwrap();
    let id = ticket(&store, "pd");
    assert!(matches!(
        store.session_started(&new_session(S1, 999, "h"), t(0)),
        Err(TicketError::NotFound(999))
    ));
    let bad = store.session_started(&new_session("x; rm -rf /", id, "h"), t(0));
    assert!(matches!(bad, Err(TicketError::BadSessionId(_))), "{bad:?}");
    match store.append_entry(S2, &NewEntry::new(AuditKind::Note, json!({})), t(0)) {
        Err(TicketError::SessionNotFound(s)) => assert_eq!(s, S2),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        store.set_verdict(S2, Verdict::Resolved),
        Err(TicketError::SessionNotFound(_))
    ));
    store
        .session_started(&new_session(S1, id, "h"), t(0))
        .unwrap();
    assert!(
        store
            .session_started(&new_session(S1, id, "h"), t(0))
            .is_err(),
        "a session id is used once"
    );
}

#[test]
fn two_writers_never_share_an_entry_number() {
    let db = TempDb::new();
    let store = Store::open(&db.path()).unwrap();
    let id = ticket(&store, "pd");
    store
        .session_started(&new_session(S1, id, "h"), t(0))
        .unwrap();
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let path = db.path();
            std::thread::spawn(move || {
                let store = Store::open(&path).unwrap();
                for _ in 0..50 {
                    store
                        .append_entry(S1, &NewEntry::new(AuditKind::Note, json!({})), t(1))
                        .unwrap();
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    let seqs: Vec<i64> = store
        .session(S1)
        .unwrap()
        .unwrap()
        .entries
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
}

#[test]
fn a_claim_keeps_a_second_holder_off_until_it_expires() {
    let db = TempDb::new();
    let store = Store::open(&db.path()).unwrap();
    let id = ticket(&store, "pd");
    let (a, b) = ("pid 1 on h", "pid 2 on h");

    let ClaimOutcome::Claimed(first) = store.claim(id, a, None, t(30), t(0)).unwrap() else {
        panic!("a free ticket is claimed");
    };
    assert_eq!((first.holder.as_str(), first.expires_at), (a, t(30)));
    match store.claim(id, b, None, t(40), t(10)).unwrap() {
        ClaimOutcome::HeldBy(c) => assert_eq!(c.holder, a),
        other => panic!("the second holder must be refused: {other:?}"),
    }
    // The same holder re-claims (naming its session now).
    let ClaimOutcome::Claimed(again) = store.claim(id, a, Some(S1), t(35), t(10)).unwrap() else {
        panic!("the holder re-claims its own ticket");
    };
    assert_eq!(again.session_id.as_deref(), Some(S1));

    // Renewal: only by the holder.
    match store.renew_claim(id, b, t(100)) {
        Err(TicketError::ClaimLost { now_held_by, .. }) => {
            assert_eq!(now_held_by.as_deref(), Some(a))
        }
        other => panic!("renewal by another holder must be refused: {other:?}"),
    }
    assert_eq!(store.renew_claim(id, a, t(60)).unwrap().expires_at, t(60));
    assert!(matches!(
        store.claim(id, b, None, t(100), t(59)).unwrap(),
        ClaimOutcome::HeldBy(_)
    ));
    assert_eq!(store.live_claims(t(59)).unwrap().len(), 1);

    // Expired: free for anyone; the old holder has lost it.
    assert!(store.live_claims(t(60)).unwrap().is_empty());
    assert!(matches!(
        store.claim(id, b, None, t(120), t(60)).unwrap(),
        ClaimOutcome::Claimed(_)
    ));
    assert!(matches!(
        store.renew_claim(id, a, t(200)),
        Err(TicketError::ClaimLost { .. })
    ));
    assert!(
        !store.release_claim(id, a).unwrap(),
        "another's claim is never released"
    );
    assert_eq!(store.claim_of_ticket(id).unwrap().unwrap().holder, b);
    assert!(store.release_claim(id, b).unwrap());
    assert_eq!(store.claim_of_ticket(id).unwrap(), None);
    assert!(matches!(
        store.renew_claim(id, b, t(200)),
        Err(TicketError::ClaimLost {
            now_held_by: None,
            ..
        })
    ));
    assert!(matches!(
        store.claim(999, a, None, t(1), t(0)),
        Err(TicketError::NotFound(999))
    ));
}

#[test]
fn a_lapsed_claim_nobody_took_is_renewed_by_its_holder() {
    let db = TempDb::new();
    let store = Store::open(&db.path()).unwrap();
    let id = ticket(&store, "pd");
    store.claim(id, "a", None, t(10), t(0)).unwrap();
    assert_eq!(store.renew_claim(id, "a", t(50)).unwrap().expires_at, t(50));
}

#[test]
fn an_approval_is_decided_once() {
    let db = TempDb::new();
    let store = Store::open(&db.path()).unwrap();
    let id = ticket(&store, "pd");
    let other = ticket(&store, "tikv");
    store
        .session_started(&new_session(S1, id, "h"), t(0))
        .unwrap();
    store
        .session_started(&new_session(S2, other, "h"), t(0))
        .unwrap();
    let asked = store
        .request_approval(S1, "toolu_1", "docker restart pd", t(1))
        .unwrap();
    assert_eq!(asked.ticket_id, id);
    assert_eq!(asked.decision, None);
    assert_eq!(
        store
            .request_approval(S1, "toolu_1", "docker restart pd", t(2))
            .unwrap(),
        asked,
        "asking again for the same call is the same approval"
    );
    store
        .request_approval(S2, "toolu_9", "docker restart tikv", t(1))
        .unwrap();
    assert_eq!(
        store.pending_approvals(Some(id)).unwrap(),
        vec![asked.clone()]
    );
    assert_eq!(store.pending_approvals(None).unwrap().len(), 2);

    let decided = store
        .decide_approval(asked.id, Decision::Rejected, "human", Some("not now"), t(5))
        .unwrap();
    assert_eq!(decided.decision, Some(Decision::Rejected));
    assert_eq!(decided.reason.as_deref(), Some("not now"));
    assert_eq!(decided.decided_at, Some(t(5)));
    assert!(store.pending_approvals(Some(id)).unwrap().is_empty());
    match store.decide_approval(asked.id, Decision::Approved, "controller", None, t(6)) {
        Err(e @ TicketError::ApprovalDecided { .. }) => {
            let message = e.to_string();
            assert!(
                message.contains("rejected") && message.contains("human"),
                "{message}"
            );
        }
        other => panic!("a second decision must be refused: {other:?}"),
    }
    assert_eq!(
        store.approval(asked.id).unwrap().unwrap().decision,
        Some(Decision::Rejected)
    );
    assert!(matches!(
        store.decide_approval(999, Decision::Approved, "human", None, t(6)),
        Err(TicketError::ApprovalNotFound(999))
    ));

    // Only running sessions have pending approvals.
    store
        .session_ended(
            S2,
            &SessionEnd {
                outcome: Outcome::Failed,
                stop_reason: Some(StopReason::ApiError),
                claim: None,
                tokens: Usage::default(),
                turns: 0,
                request_ids: vec![],
            },
            t(7),
        )
        .unwrap();
    assert!(store.pending_approvals(None).unwrap().is_empty());
}

#[test]
fn sessions_of_a_dead_holder_are_found_and_marked_interrupted() {
    let db = TempDb::new();
    let store = Store::open(&db.path()).unwrap();
    let a = ticket(&store, "pd");
    let b = ticket(&store, "tikv");
    store
        .session_started(&new_session(S1, a, "pid 1 on h"), t(0))
        .unwrap();
    store
        .session_started(&new_session(S2, b, "pid 2 on h"), t(0))
        .unwrap();
    store.claim(a, "pid 1 on h", Some(S1), t(30), t(0)).unwrap();
    store.claim(b, "pid 2 on h", Some(S2), t(90), t(0)).unwrap();
    store
        .request_approval(S1, "toolu_1", "docker rm x", t(1))
        .unwrap();
    let ids = |v: Vec<AgentSession>| v.into_iter().map(|s| s.id).collect::<Vec<_>>();

    assert!(
        store.interrupted_sessions(None, t(10)).unwrap().is_empty(),
        "live claims: nobody is interrupted"
    );
    assert_eq!(
        ids(store.interrupted_sessions(None, t(40)).unwrap()),
        vec![S1]
    );
    assert_eq!(
        ids(store.interrupted_sessions(None, t(100)).unwrap()),
        vec![S1, S2]
    );
    assert_eq!(
        ids(store
            .interrupted_sessions(Some("pid 2 on h"), t(100))
            .unwrap()),
        vec![S2]
    );

    assert!(
        store
            .mark_interrupted(S1, "pid 1 on h is gone", t(41))
            .unwrap()
    );
    assert!(!store.mark_interrupted(S1, "again", t(42)).unwrap(), "once");
    let log = store.session(S1).unwrap().unwrap();
    assert_eq!(log.session.outcome, Outcome::Interrupted);
    assert_eq!(log.session.stop_reason, Some(StopReason::Interrupted));
    assert_eq!(log.session.ended_at, Some(t(41)));
    let last = log.entries.last().unwrap();
    assert_eq!(last.kind, AuditKind::Interrupted);
    assert_eq!(last.detail["reason"], "pid 1 on h is gone");
    let approval = store.approval(1).unwrap().unwrap();
    assert_eq!(approval.decision, Some(Decision::Rejected));
    assert_eq!(approval.decided_by.as_deref(), Some("controller"));
    assert_eq!(store.claim_of_ticket(a).unwrap(), None);
    assert!(store.interrupted_sessions(None, t(40)).unwrap().is_empty());
    assert_eq!(
        store
            .session_ended(
                S1,
                &SessionEnd {
                    outcome: Outcome::Ended,
                    stop_reason: Some(StopReason::EndTurn),
                    claim: None,
                    tokens: Usage::default(),
                    turns: 1,
                    request_ids: vec![],
                },
                t(50)
            )
            .unwrap(),
        None,
        "a session marked interrupted is not ended again by a late writer"
    );
}

#[test]
fn unreadable_audit_rows_are_errors_naming_table_row_and_column() {
    let db = TempDb::new();
    let store = Store::open(&db.path()).unwrap();
    let id = ticket(&store, "pd");
    store
        .session_started(&new_session(S1, id, "h"), t(0))
        .unwrap();
    store
        .append_entry(S1, &NewEntry::new(AuditKind::Note, json!({})), t(0))
        .unwrap();
    store.claim(id, "h", None, t(10), t(0)).unwrap();
    let raw = rusqlite::Connection::open(db.path()).unwrap();
    let corrupt = |sql: &str| {
        raw.execute_batch(sql).unwrap();
    };
    fn column_of<T>(r: Result<T, TicketError>) -> (&'static str, &'static str, i64) {
        match r {
            Err(TicketError::Corrupt {
                table, column, row, ..
            }) => (table, column, row),
            Err(other) => panic!("expected a corrupt-row error, got {other}"),
            Ok(_) => panic!("expected a corrupt-row error"),
        }
    }

    corrupt("UPDATE agent_sessions SET started_at = 'yesterday'");
    assert_eq!(
        column_of(store.session(S1)),
        ("agent_sessions", "started_at", 1)
    );
    corrupt(&format!(
        "UPDATE agent_sessions SET started_at = '{}', request_ids = 'req_1'",
        ts(t(0))
    ));
    assert_eq!(
        column_of(store.sessions(&SessionQuery::default())),
        ("agent_sessions", "request_ids", 1)
    );
    corrupt("UPDATE agent_sessions SET request_ids = '[]', input_tokens = -5");
    assert_eq!(
        column_of(store.sessions_of_ticket(id)),
        ("agent_sessions", "input_tokens", 1)
    );
    // CHECK constraints keep out unknown names; a file written with them off is still caught.
    corrupt(
        "UPDATE agent_sessions SET input_tokens = 0; PRAGMA ignore_check_constraints = ON; \
         UPDATE agent_sessions SET mode = 'yolo'; PRAGMA ignore_check_constraints = OFF;",
    );
    let message = store.session(S1).unwrap_err().to_string();
    assert!(
        message.contains("agent_sessions row 1 has an unreadable mode \"yolo\"")
            && message.contains("tickets.db"),
        "{message}"
    );
    corrupt(
        "UPDATE agent_sessions SET mode = 'observe'; UPDATE agent_entries SET detail = '{oops'",
    );
    assert_eq!(column_of(store.session(S1)), ("agent_entries", "detail", 1));
    corrupt("UPDATE agent_claims SET expires_at = 'soon'");
    assert_eq!(
        column_of(store.claim_of_ticket(id)),
        ("agent_claims", "expires_at", id)
    );
    assert!(matches!(
        store.claim(id, "other", None, t(10), t(0)),
        Err(TicketError::Corrupt { .. })
    ));
}

#[test]
fn a_schema_3_database_is_migrated_keeping_its_tickets() {
    let db = TempDb::new();
    std::fs::create_dir_all(db.path().parent().unwrap()).unwrap();
    {
        let raw = rusqlite::Connection::open(db.path()).unwrap();
        for step in &crate::tickets::MIGRATIONS[..3] {
            raw.execute_batch(step.sql).unwrap();
        }
        raw.execute_batch(
            "PRAGMA user_version = 3; PRAGMA application_id = 1330664523;
             INSERT INTO tickets (id, fingerprint, cluster, service, drift, status, opened_at, episode_at, last_seen_at)
               VALUES (5, 'c/pd/stopped', 'c', 'pd', 'stopped', 'open', '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z');
             INSERT INTO timeline (ticket_id, at, kind, detail, actor) VALUES
               (5, '2026-01-01T00:00:00.000000Z', 'detected', '{}', NULL);",
        )
        .unwrap();
    }
    // A read-only opener refuses the old file until it is migrated...
    assert!(matches!(
        Store::open_read_only(&db.path()),
        Err(TicketError::NotMigrated { found: 3, .. })
    ));
    let store = Store::open(&db.path()).unwrap();
    let version: i64 = store
        .conn()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, crate::tickets::MIGRATIONS.len() as i64);
    let kept = store.get(5).unwrap().unwrap();
    assert_eq!((kept.service.as_str(), kept.status), ("pd", Status::Open));
    assert_eq!(store.timeline(5).unwrap().len(), 1);
    store
        .session_started(&new_session(S1, 5, "h"), t(0))
        .unwrap();
    assert_eq!(store.sessions_of_ticket(5).unwrap().len(), 1);
    assert!(
        store
            .session_started(&new_session(S2, 6, "h"), t(0))
            .is_err(),
        "sessions reference tickets"
    );
    drop(store);
    assert!(Store::open_read_only(&db.path()).is_ok());
}

#[tokio::test]
async fn the_audit_journal_runs_the_store_off_the_runtime() {
    let db = TempDb::new();
    let store = Arc::new(Store::open(&db.path()).unwrap());
    let id = ticket(&store, "pd");
    let journal = super::super::Journal::new(store, Arc::new(crate::metrics::Metrics::new()));
    journal
        .session_started(new_session(S1, id, "h"), t(0))
        .await
        .unwrap();
    let entry = journal
        .append_entry(
            S1.into(),
            NewEntry::new(AuditKind::Note, json!({"n": 1})),
            t(1),
        )
        .await
        .unwrap();
    assert_eq!(entry.seq, 1);
    let claimed = journal
        .claim(id, "h".into(), Some(S1.into()), t(30), t(0))
        .await
        .unwrap();
    assert!(matches!(claimed, ClaimOutcome::Claimed(_)));
    let log = journal.session(S1.into()).await.unwrap().unwrap();
    assert_eq!(log.entries.len(), 1);
}
