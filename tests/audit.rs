//! `operator audit list|show` and the sessions of `tickets show`, on a database filled through
//! the store as a session loop would (no Docker, no API).

mod common;

use std::path::Path;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use common::operator::{TempDir, operator};
use operator::drift::{DriftKind, Fingerprint};
use operator::tickets::{
    AuditKind, DriftSighting, NewEntry, NewSession, Outcome, SafetyMode, SessionEnd, StopReason,
    Store, Usage, Verdict,
};
use serde_json::json;

const OLD: &str = "20200101T000000Z-0badc0de";
const NEW: &str = "20261201T031500Z-1a2b3c4d";

/// Two sessions on one ticket: an old one that failed, a recent one that ran `docker start`
/// and was re-checked; one more ticket without sessions.
fn populate(db: &Path) -> (i64, i64) {
    let store = Store::open(db).expect("create the database");
    let sighting = |service: &str| DriftSighting {
        fingerprint: Fingerprint::service("lab", service, DriftKind::Stopped),
        drift: DriftKind::Stopped,
        detail: "exited with code 137".into(),
        cooldown: Duration::from_secs(600),
        evidence: None,
    };
    let (ticket, _) = store.record_drift(&sighting("pd"), Utc::now()).unwrap();
    let (quiet, _) = store.record_drift(&sighting("tikv"), Utc::now()).unwrap();
    let session = |id: &str| NewSession {
        id: id.into(),
        ticket_id: ticket.id,
        cluster: "lab".into(),
        service: "pd".into(),
        model: "claude-test-1".into(),
        mode: SafetyMode::Execute,
        holder: "pid 42 on lab-host".into(),
    };

    let t0 = Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).unwrap();
    store.session_started(&session(OLD), t0).unwrap();
    store
        .append_entry(
            OLD,
            &NewEntry::new(AuditKind::ApiError, json!({"status": 401})),
            t0,
        )
        .unwrap();
    store
        .session_ended(
            OLD,
            &SessionEnd {
                outcome: Outcome::Failed,
                stop_reason: Some(StopReason::ApiError),
                claim: None,
                tokens: Usage::default(),
                turns: 0,
                request_ids: vec![],
            },
            t0 + chrono::Duration::seconds(2),
        )
        .unwrap();

    let start = Utc::now() - chrono::Duration::seconds(90);
    let at = |s: i64| start + chrono::Duration::seconds(s);
    store.session_started(&session(NEW), start).unwrap();
    let steps = [
        NewEntry::new(
            AuditKind::ModelText,
            json!({"text": "PD is stopped.\nStarting it."}),
        ),
        NewEntry::new(
            AuditKind::ToolCall,
            json!({"input": {"command": "docker start lab-pd"}}),
        )
        .tool("toolu_A", "shell"),
        NewEntry::new(
            AuditKind::ToolCall,
            json!({"input": {"command": "docker ps"}}),
        )
        .tool("toolu_B", "shell"),
        NewEntry::new(
            AuditKind::Allowed,
            json!({"command": "docker ps", "reason": "read-only"}),
        )
        .tool("toolu_B", "shell"),
        // Parallel calls: results in the other order.
        NewEntry::new(
            AuditKind::ToolResult,
            json!({"exit_code": 0, "duration_ms": 80, "timed_out": false, "is_error": false,
                   "stdout": (0..30).map(|i| format!("row {i}\n")).collect::<String>()}),
        )
        .tool("toolu_B", "shell"),
        NewEntry::new(
            AuditKind::ToolResult,
            json!({"exit_code": 0, "duration_ms": 412, "timed_out": false, "is_error": false,
                   "stdout": "lab-pd\n"}),
        )
        .tool("toolu_A", "shell"),
        NewEntry::new(AuditKind::ModelText, json!({"text": "Fixed."})),
    ];
    for (i, step) in steps.iter().enumerate() {
        store.append_entry(NEW, step, at(i as i64)).unwrap();
    }
    store
        .record_turn(
            NEW,
            Some("req_1"),
            Usage {
                input: 1200,
                output: 340,
                cache_read: 800,
                cache_write: 64,
            },
        )
        .unwrap();
    store
        .session_ended(
            NEW,
            &SessionEnd {
                outcome: Outcome::Ended,
                stop_reason: Some(StopReason::EndTurn),
                claim: Some("Fixed.".into()),
                tokens: Usage {
                    input: 1200,
                    output: 340,
                    cache_read: 800,
                    cache_write: 64,
                },
                turns: 2,
                request_ids: vec!["req_1".into(), "req_2".into()],
            },
            at(83),
        )
        .unwrap();
    store.set_verdict(NEW, Verdict::Resolved).unwrap();
    (ticket.id, quiet.id)
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = operator(args, None);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn audit_list_shows_sessions_newest_first_and_filters_them() {
    let dir = TempDir::new(&format!("audit-list-{}", std::process::id()));
    let db = dir.path().join("tickets.db");
    let (ticket, quiet) = populate(&db);
    let db = db.to_str().unwrap();

    let (ok, out, err) = run(&["audit", "list", "--db", db]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("SESSION") && lines[0].contains("VERDICT"),
        "{out}"
    );
    assert!(lines[1].starts_with(NEW), "newest first: {out}");
    assert!(lines[2].starts_with(OLD), "{out}");
    for cell in [
        "lab/pd",
        "claude-test-1",
        "execute",
        "1m23s",
        "1200/340/800/64",
        "end_turn",
        "resolved",
    ] {
        assert!(lines[1].contains(cell), "{cell} missing: {}", lines[1]);
    }
    assert!(lines[2].contains("failed:api-error"), "{}", lines[2]);

    let (ok, out, _) = run(&["audit", "list", "--db", db, "--since", "1h", "--json"]);
    assert!(ok);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.len(), 1, "{out}");
    assert_eq!(rows[0]["id"], NEW);
    assert_eq!(rows[0]["ticket_id"], ticket);
    assert_eq!(rows[0]["tokens"]["cache_read"], 800);
    assert_eq!(rows[0]["request_ids"], json!(["req_1", "req_2"]));
    assert_eq!(rows[0]["verdict"], "resolved");

    let (ok, out, _) = run(&["audit", "list", "--db", db, "--ticket", &quiet.to_string()]);
    assert!(ok);
    assert!(out.contains("(no agent sessions)"), "{out}");
}

#[test]
fn audit_show_pairs_each_call_with_its_result() {
    let dir = TempDir::new(&format!("audit-show-{}", std::process::id()));
    let db = dir.path().join("tickets.db");
    populate(&db);
    let db = db.to_str().unwrap();

    let (ok, out, err) = run(&["audit", "show", NEW, "--db", db]);
    assert!(ok, "{err}");
    for needle in [
        "session   20261201T031500Z-1a2b3c4d",
        "model     claude-test-1  mode execute  run by pid 42 on lab-host",
        "stop end_turn  verdict resolved",
        "tokens in 1200, out 340, cache read 800, cache write 64",
        "requests  req_1 req_2",
        "the model's word",
        "20 more lines",
    ] {
        assert!(out.contains(needle), "{needle:?} missing:\n{out}");
    }
    // Each call is followed by its own result, whatever order the results came in.
    let pos = |needle: &str| {
        out.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} missing:\n{out}"))
    };
    assert!(pos("shell [toolu_A]: docker start lab-pd") < pos("→ #6 exit 0, 0.4s"));
    assert!(pos("→ #6 exit 0, 0.4s") < pos("shell [toolu_B]: docker ps"));
    assert!(pos("shell [toolu_B]: docker ps") < pos("→ #5 exit 0, 0.1s"));
    assert!(pos("→ #5 exit 0, 0.1s") < pos("allowed"));
    assert!(pos("PD is stopped.") < pos("Starting it."));

    let (ok, out, _) = run(&["audit", "show", NEW, "--db", db, "--json"]);
    assert!(ok);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["session"]["id"], NEW);
    let seqs: Vec<i64> = doc["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    assert_eq!(doc["entries"][5]["tool_use_id"], "toolu_A");
}

#[test]
fn tickets_show_lists_the_sessions_of_a_ticket() {
    let dir = TempDir::new(&format!("audit-ticket-{}", std::process::id()));
    let db = dir.path().join("tickets.db");
    let (ticket, quiet) = populate(&db);
    let db = db.to_str().unwrap();
    let (ok, out, err) = run(&["tickets", "show", &ticket.to_string(), "--db", db]);
    assert!(ok, "{err}");
    let old = out.find(OLD).expect(&out);
    let new = out.find(NEW).expect(&out);
    assert!(old < new, "oldest first, like the timeline:\n{out}");
    assert!(out.contains("stop failed:api-error  verdict -"), "{out}");
    assert!(out.contains("stop end_turn  verdict resolved"), "{out}");

    let (ok, out, _) = run(&["tickets", "show", &ticket.to_string(), "--db", db, "--json"]);
    assert!(ok);
    let value: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(value["sessions"][1]["id"], NEW);
    assert_eq!(value["sessions"][1]["stop_reason"], "end_turn");

    let (ok, out, _) = run(&["tickets", "show", &quiet.to_string(), "--db", db, "--json"]);
    assert!(ok);
    let value: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(value["sessions"], json!([]));
}

#[test]
fn a_missing_database_an_unknown_session_and_a_bad_id_are_errors() {
    let dir = TempDir::new(&format!("audit-errors-{}", std::process::id()));
    let missing = dir.path().join("nope.db");
    let (ok, _, err) = run(&["audit", "list", "--db", missing.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("nope.db"), "{err}");
    assert!(!missing.exists(), "a mistyped --db is not created");

    let db = dir.path().join("tickets.db");
    populate(&db);
    let db = db.to_str().unwrap();
    let (ok, _, err) = run(&["audit", "show", "20261201T031500Z-ffffffff", "--db", db]);
    assert!(!ok);
    assert!(
        err.contains("no agent session 20261201T031500Z-ffffffff"),
        "{err}"
    );
    let (ok, _, err) = run(&["audit", "show", "../tickets", "--db", db]);
    assert!(!ok);
    assert!(err.contains("not a session id"), "{err}");
    let (ok, _, err) = run(&["audit", "list", "--since", "soon", "--db", db]);
    assert!(!ok);
    assert!(err.contains("--since"), "{err}");
}
