//! The audit writer on a real database and folder: redaction everywhere, private files,
//! crash-safe rewrites.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::*;
use crate::drift::{DriftKind, Fingerprint};
use crate::tickets::{DriftSighting, Outcome, SafetyMode, StopReason, Store, is_session_id};

const KEY: &str = "sk-ant-api03-TESTKEY0123456789abcdefXYZ";
const DB_PASSWORD: &str = "hunter2-but-longer";

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "operator-agent-audit-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn redactor() -> Redactor {
    Redactor::new([KEY, DB_PASSWORD, "", "ab"])
}

#[test]
fn given_secrets_and_key_shapes_are_masked() {
    let r = redactor();
    assert_eq!(r.redact(&format!("key is {KEY}.")), "key is [redacted].");
    assert_eq!(
        r.redact("ANTHROPIC_API_KEY=sk-ant-api03-other_Key-9 HOME=/root"),
        "ANTHROPIC_API_KEY=[redacted] HOME=/root",
        "an unknown Anthropic key by its shape"
    );
    assert_eq!(
        r.redact("GITHUB_TOKEN=ghp_abc123\nPD_PASSWORD=pw1 PATH=/bin"),
        "GITHUB_TOKEN=[redacted]\nPD_PASSWORD=[redacted] PATH=/bin"
    );
    assert_eq!(
        r.redact("curl -H 'Authorization: Bearer abcdefgh12345' -H 'x-api-key: zzz' http://x"),
        "curl -H 'Authorization: Bearer [redacted]' -H 'x-api-key: [redacted]' http://x"
    );
    assert_eq!(
        r.redact(&format!("mysql -p{DB_PASSWORD}")),
        "mysql -p[redacted]"
    );
    // Too-short "secrets" are not searched for: "ab" stays readable.
    assert_eq!(r.redact("abc bearer x"), "abc bearer x");
    // Plain text is untouched, including non-ASCII.
    assert_eq!(
        r.redact("région = ok; KEYS are fine"),
        "région = ok; KEYS are fine"
    );
    let nested = r.redact_json(&json!({"a": [KEY, 1, {"b": format!("x{KEY}x")}], "n": null}));
    assert_eq!(
        nested,
        json!({"a": ["[redacted]", 1, {"b": "x[redacted]x"}], "n": null})
    );
}

#[test]
fn a_secret_containing_another_is_masked_whole() {
    let r = Redactor::new(["abcd", "xxabcdxx"]);
    assert_eq!(r.redact("1 xxabcdxx 2 abcd"), "1 [redacted] 2 [redacted]");
}

#[test]
fn session_ids_are_time_and_random_hex() {
    let now = Utc::now();
    let a = new_session_id(now).unwrap();
    let b = new_session_id(now).unwrap();
    assert!(is_session_id(&a), "{a}");
    assert!(a.starts_with(&now.format("%Y%m%dT%H%M%SZ-").to_string()));
    assert_ne!(a, b);
}

#[test]
fn sessions_go_beside_the_database() {
    assert_eq!(
        default_sessions_dir(Path::new("/home/u/.operator/tickets.db")),
        PathBuf::from("/home/u/.operator/sessions")
    );
    assert_eq!(
        default_sessions_dir(Path::new("tickets.db")),
        PathBuf::from("./sessions")
    );
}

async fn started(dir: &TempDir) -> (Arc<Store>, AuditLog, PathBuf) {
    let db = dir.0.join("tickets.db");
    let store = Arc::new(Store::open(&db).unwrap());
    let (ticket, _) = store
        .record_drift(
            &DriftSighting {
                fingerprint: Fingerprint::service("c", "pd", DriftKind::Stopped),
                drift: DriftKind::Stopped,
                detail: "exited".into(),
                cooldown: std::time::Duration::from_secs(600),
                evidence: None,
            },
            Utc::now(),
        )
        .unwrap();
    let folder = default_sessions_dir(&db);
    let now = Utc::now();
    let log = AuditLog::start(
        Journal::new(store.clone(), Arc::new(crate::metrics::Metrics::new())),
        &folder,
        redactor(),
        NewSession {
            id: new_session_id(now).unwrap(),
            ticket_id: ticket.id,
            cluster: "c".into(),
            service: "pd".into(),
            model: "claude-test".into(),
            mode: SafetyMode::Approve,
            holder: "pid 1 on h".into(),
        },
        now,
    )
    .await
    .unwrap();
    (store, log, folder)
}

/// Every text value of every audit table, as one string.
fn dump_audit_tables(db: &Path) -> String {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut all = String::new();
    for table in [
        "agent_sessions",
        "agent_entries",
        "agent_approvals",
        "agent_claims",
    ] {
        let mut stmt = conn.prepare(&format!("SELECT * FROM {table}")).unwrap();
        let columns = stmt.column_count();
        let mut rows = stmt.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            for i in 0..columns {
                if let Ok(text) = row.get::<_, String>(i) {
                    all.push_str(&text);
                    all.push('\n');
                }
            }
        }
    }
    all
}

#[tokio::test]
async fn every_step_is_in_the_database_and_the_file_in_order_without_the_key() {
    let dir = TempDir::new();
    let (store, log, folder) = started(&dir).await;
    assert_eq!(mode(&folder), 0o700);
    assert_eq!(mode(log.path()), 0o600);
    assert_eq!(
        log.path(),
        folder.join(format!("{}.json", log.id())).as_path()
    );

    log.model_text(&format!("I found the key {KEY} in the env; restarting"))
        .await
        .unwrap();
    log.tool_call("toolu_1", "shell", &json!({"command": "env"}))
        .await
        .unwrap();
    log.decision(AuditKind::Allowed, "toolu_1", "shell", "env", "read-only")
        .await
        .unwrap();
    log.tool_result(
        "toolu_1",
        "shell",
        &ToolResultDetail {
            exit_code: Some(0),
            stdout: Some(format!(
                "HOME=/root\nANTHROPIC_API_KEY={KEY}\nDB={DB_PASSWORD}\n"
            )),
            ..Default::default()
        }
        .duration(Duration::from_millis(12)),
    )
    .await
    .unwrap();
    let command = format!("curl -H 'x-api-key: {KEY}' http://127.0.0.1:1/");
    log.tool_call("toolu_2", "shell", &json!({ "command": command }))
        .await
        .unwrap();
    let approval = log
        .request_approval("toolu_2", "shell", &command)
        .await
        .unwrap();
    assert!(!approval.command.contains(KEY), "{}", approval.command);
    log.turn(
        Some("req_01"),
        Usage {
            input: 10,
            output: 5,
            cache_read: 100,
            cache_write: 0,
        },
    )
    .await
    .unwrap();
    log.end(SessionEnd {
        outcome: Outcome::Ended,
        stop_reason: Some(StopReason::EndTurn),
        claim: Some(format!("Fixed it; used {KEY}")),
        tokens: Usage {
            input: 10,
            output: 5,
            cache_read: 100,
            cache_write: 0,
        },
        turns: 1,
        request_ids: vec!["req_01".into()],
    })
    .await
    .unwrap()
    .expect("it was running");
    assert!(
        log.verdict(Verdict::NotResolved, &json!({"running": false}))
            .await
            .unwrap()
    );

    let db_log = store.session(log.id()).unwrap().unwrap();
    let kinds: Vec<AuditKind> = db_log.entries.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![
            AuditKind::ModelText,
            AuditKind::ToolCall,
            AuditKind::Allowed,
            AuditKind::ToolResult,
            AuditKind::ToolCall,
            AuditKind::ApprovalRequested,
            AuditKind::Verdict,
        ]
    );
    assert_eq!(db_log.entries[3].tool_use_id.as_deref(), Some("toolu_1"));
    assert_eq!(db_log.entries[3].detail["duration_ms"], 12);
    assert_eq!(db_log.session.verdict, Some(Verdict::NotResolved));
    assert_eq!(
        db_log.session.claim.as_deref(),
        Some("Fixed it; used [redacted]")
    );

    // The file holds exactly what the database holds.
    let file = read_session_file(log.path()).unwrap();
    assert_eq!(file, serde_json::to_value(&db_log).unwrap());
    assert_eq!(serde_json::to_value(log.snapshot().await).unwrap(), file);
    assert_eq!(mode(log.path()), 0o600);

    // The key and the password are nowhere: not in the file, not in any audit row.
    let text = std::fs::read_to_string(log.path()).unwrap();
    let rows = dump_audit_tables(&dir.0.join("tickets.db"));
    for (place, content) in [("file", &text), ("database", &rows)] {
        assert!(!content.contains(KEY), "the key is in the {place}");
        assert!(
            !content.contains("TESTKEY"),
            "part of the key is in the {place}"
        );
        assert!(!content.contains(DB_PASSWORD), "a secret is in the {place}");
    }
    assert!(
        text.contains("HOME=/root"),
        "the rest of the output is kept"
    );
    assert!(rows.contains("[redacted]"));
    let leftovers: Vec<_> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "no temporary file is left: {leftovers:?}"
    );
}

#[tokio::test]
async fn a_crash_mid_write_leaves_the_last_complete_file_and_the_next_write_recovers() {
    let dir = TempDir::new();
    let (_store, log, folder) = started(&dir).await;
    log.model_text("first").await.unwrap();
    let before = read_session_file(log.path()).unwrap();

    // A crash between creating the temporary copy and renaming it: half a document, and
    // (say, from an older version) too wide a mode.
    let tmp = folder.join(format!(".{}.json.tmp", log.id()));
    std::fs::write(&tmp, b"{\"session\": {\"id\": \"2026").unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(
        read_session_file(log.path()).unwrap(),
        before,
        "the session file is untouched by a half-written copy"
    );

    log.model_text("second").await.unwrap();
    let after = read_session_file(log.path()).unwrap();
    assert_eq!(after["entries"].as_array().unwrap().len(), 2);
    assert!(!tmp.exists());
    assert_eq!(mode(log.path()), 0o600, "the new file was made private");

    // A damaged file (not something this writer leaves) is refused by name, not misread.
    let damaged = folder.join("damaged.json");
    let full = std::fs::read(log.path()).unwrap();
    std::fs::write(&damaged, &full[..full.len() / 2]).unwrap();
    let err = read_session_file(&damaged).unwrap_err().to_string();
    assert!(err.contains("damaged.json"), "{err}");
    std::fs::write(&damaged, b"{}").unwrap();
    assert!(read_session_file(&damaged).is_err());
}

#[tokio::test]
async fn a_wide_existing_folder_is_made_private() {
    let dir = TempDir::new();
    let folder = dir.0.join("sessions");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (_store, _log, folder) = started(&dir).await;
    assert_eq!(mode(&folder), 0o700);
}

#[tokio::test]
async fn clones_write_one_step_at_a_time_in_number_order() {
    let dir = TempDir::new();
    let (store, log, _) = started(&dir).await;
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.model_text(&format!("step {i}")).await.unwrap() })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let file = read_session_file(log.path()).unwrap();
    let seqs: Vec<i64> = file["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=8).collect::<Vec<_>>());
    assert_eq!(
        file,
        serde_json::to_value(store.session(log.id()).unwrap().unwrap()).unwrap()
    );
}
