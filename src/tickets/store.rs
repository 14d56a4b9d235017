//! The SQLite store. One connection per process, used from blocking threads; WAL and a busy
//! timeout let the daemon, the CLI and (later) the agent share one file.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{
    Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params,
};

use super::TicketError;
use super::budget::Budget;
use super::model::{Cause, EntryKind, Sighting, Status, Ticket, TimelineEntry};

/// `~/.operator/tickets.db`, relative to the home folder.
pub const DEFAULT_DB: &str = ".operator/tickets.db";

/// Marks the file as ours (`PRAGMA application_id`): "OPTK".
const APPLICATION_ID: i64 = 0x4F50_544B;
/// Writers wait this long for each other before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Schema migrations; `PRAGMA user_version` is the number applied.
const MIGRATIONS: &[&str] = &[
    // 1: tickets, their timeline, per-service budgets.
    r#"
    CREATE TABLE tickets (
        id            INTEGER PRIMARY KEY,
        fingerprint   TEXT NOT NULL,
        cluster       TEXT NOT NULL,
        service       TEXT NOT NULL,
        drift         TEXT NOT NULL,
        status        TEXT NOT NULL CHECK (status IN ('open','remediating','resolved','escalated')),
        held          INTEGER NOT NULL DEFAULT 0,
        occurrences   INTEGER NOT NULL DEFAULT 1,
        flaps         INTEGER NOT NULL DEFAULT 0,
        detail        TEXT NOT NULL DEFAULT '',
        opened_at     TEXT NOT NULL,
        -- When the current episode began: opened_at, or the last reopening.
        episode_at    TEXT NOT NULL,
        last_seen_at  TEXT NOT NULL,
        resolved_at   TEXT,
        resolved_by   TEXT CHECK (resolved_by IN ('self-healed','controller','agent','human')),
        actions       INTEGER NOT NULL DEFAULT 0
    );
    -- At most one unresolved ticket per drift episode.
    CREATE UNIQUE INDEX tickets_one_unresolved ON tickets (fingerprint) WHERE status != 'resolved';
    CREATE INDEX tickets_by_service ON tickets (cluster, service, status);
    CREATE TABLE timeline (
        id        INTEGER PRIMARY KEY,
        ticket_id INTEGER NOT NULL REFERENCES tickets (id),
        at        TEXT NOT NULL,
        kind      TEXT NOT NULL,
        detail    TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX timeline_by_ticket ON timeline (ticket_id, id);
    CREATE TABLE budgets (
        cluster          TEXT NOT NULL,
        service          TEXT NOT NULL,
        attempts         INTEGER NOT NULL DEFAULT 0,
        next_attempt_at  TEXT,
        repairs          TEXT NOT NULL DEFAULT '[]',
        escalated        INTEGER NOT NULL DEFAULT 0,
        healthy_since    TEXT,
        spec_hash        TEXT,
        created_before   INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (cluster, service)
    );
    "#,
];

/// `$HOME/.operator/tickets.db`.
pub fn default_path() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(DEFAULT_DB)
}

/// Escapes `\`, `%` and `_` so a text matches itself in a `LIKE ... ESCAPE '\'` pattern.
pub fn like_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_ts(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

fn parse_opt_ts(s: Option<String>) -> Option<DateTime<Utc>> {
    s.as_deref().map(parse_ts)
}

const TICKET_COLUMNS: &str = "id, fingerprint, cluster, service, drift, status, held, occurrences, flaps, \
     detail, opened_at, last_seen_at, resolved_at, resolved_by, actions, episode_at";

fn ticket_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Ticket> {
    let status: String = row.get(5)?;
    let resolved_by: Option<String> = row.get(13)?;
    Ok(Ticket {
        id: row.get(0)?,
        fingerprint: row.get(1)?,
        cluster: row.get(2)?,
        service: row.get(3)?,
        drift: row.get(4)?,
        status: Status::parse(&status).unwrap_or(Status::Open),
        held: row.get::<_, i64>(6)? != 0,
        occurrences: row.get(7)?,
        flaps: row.get(8)?,
        detail: row.get(9)?,
        opened_at: parse_ts(&row.get::<_, String>(10)?),
        last_seen_at: parse_ts(&row.get::<_, String>(11)?),
        resolved_at: parse_opt_ts(row.get(12)?),
        resolved_by: resolved_by.as_deref().and_then(Cause::parse),
        actions: row.get(14)?,
        episode_at: parse_ts(&row.get::<_, String>(15)?),
    })
}

/// What is recorded about one drift sighting.
#[derive(Debug, Clone)]
pub struct DriftSighting<'a> {
    pub fingerprint: &'a str,
    pub cluster: &'a str,
    pub service: &'a str,
    pub drift: &'a str,
    pub detail: &'a str,
    /// Reopen a ticket resolved less than this long ago instead of opening a new one.
    pub cooldown: Duration,
    /// What was seen (offending series...), for the timeline of a new or reopened episode.
    pub evidence: Option<serde_json::Value>,
}

pub struct Store {
    path: PathBuf,
    conn: Mutex<Connection>,
}

/// Checks, without writing anything, that an existing file is ours or empty.
fn check_existing(path: &Path) -> Result<(), TicketError> {
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if len == 0 {
        return Ok(());
    }
    let foreign = |reason: String| TicketError::Foreign {
        path: path.to_path_buf(),
        reason,
    };
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| foreign(format!("not a readable SQLite file: {e}")))?;
    let read = |sql: &str| -> Result<i64, TicketError> {
        conn.query_row(sql, [], |r| r.get(0))
            .map_err(|e| foreign(format!("not a SQLite database: {e}")))
    };
    let app_id = read("PRAGMA application_id")?;
    let version = read("PRAGMA user_version")?;
    let objects = read("SELECT count(*) FROM sqlite_master")?;
    if app_id == APPLICATION_ID {
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(TicketError::TooNew {
                path: path.to_path_buf(),
                found: version,
                known,
            });
        }
        return Ok(());
    }
    if app_id == 0 && version == 0 && objects == 0 {
        return Ok(()); // an empty SQLite database: ours to initialise
    }
    Err(foreign(format!(
        "application_id {app_id:#x}, {objects} schema objects"
    )))
}

impl Store {
    /// Opens (creating if missing) the ticket database at `path`, applying migrations.
    /// The folder is created with mode 0700 and the file set to 0600.
    pub fn open(path: &Path) -> Result<Store, TicketError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| TicketError::Folder {
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
        check_existing(path)?;
        if !path.exists() {
            // Created private from the start, not chmod-ed after SQLite made it.
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|source| TicketError::Permissions {
                    path: path.to_path_buf(),
                    source,
                })?;
        }
        let open_err = |source| TicketError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| TicketError::Permissions {
                path: path.to_path_buf(),
                source,
            },
        )?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        let store = Store {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        };
        store.migrate()?;
        // WAL side files inherit the process umask; keep them private too.
        for suffix in ["-wal", "-shm"] {
            let side = PathBuf::from(format!("{}{suffix}", path.display()));
            if side.exists() {
                let _ = std::fs::set_permissions(&side, std::fs::Permissions::from_mode(0o600));
            }
        }
        Ok(store)
    }

    /// Opens an existing ticket database for reading only: never creates, migrates or
    /// changes it (for `tickets list|show` and `status`).
    pub fn open_existing(path: &Path) -> Result<Store, TicketError> {
        if !path.exists() {
            return Err(TicketError::Missing {
                path: path.to_path_buf(),
            });
        }
        check_existing(path)?;
        let open_err = |source| TicketError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(open_err)?;
        if version != MIGRATIONS.len() as i64 {
            return Err(TicketError::Foreign {
                path: path.to_path_buf(),
                reason: format!(
                    "schema version {version}, this operator reads {}; run `operator run` once to migrate it",
                    MIGRATIONS.len()
                ),
            });
        }
        Ok(Store {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, doing: &'static str) -> impl FnOnce(rusqlite::Error) -> TicketError + '_ {
        move |source| TicketError::Query {
            path: self.path.clone(),
            doing,
            source,
        }
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` in an immediate (write-locked) transaction.
    fn write<T>(
        &self,
        doing: &'static str,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, TicketError>,
    ) -> Result<T, TicketError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.err(doing))?;
        let out = f(&tx)?;
        tx.commit().map_err(self.err(doing))?;
        Ok(out)
    }

    fn migrate(&self) -> Result<(), TicketError> {
        self.write("apply schema migrations", |tx| {
            let version: i64 = tx
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(self.err("read the schema version"))?;
            let known = MIGRATIONS.len() as i64;
            if version > known {
                return Err(TicketError::TooNew {
                    path: self.path.clone(),
                    found: version,
                    known,
                });
            }
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
                tx.execute_batch(sql)
                    .map_err(self.err("apply schema migrations"))?;
                tx.pragma_update(None, "user_version", (i + 1) as i64)
                    .map_err(self.err("apply schema migrations"))?;
            }
            tx.pragma_update(None, "application_id", APPLICATION_ID)
                .map_err(self.err("apply schema migrations"))?;
            Ok(())
        })
    }

    /// A number that changes whenever another connection commits (cheap change detection).
    pub fn data_version(&self) -> Result<i64, TicketError> {
        self.conn()
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(self.err("read the data version"))
    }

    fn append_tx(
        &self,
        tx: &Transaction<'_>,
        id: i64,
        kind: EntryKind,
        detail: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<(), TicketError> {
        tx.execute(
            "INSERT INTO timeline (ticket_id, at, kind, detail) VALUES (?1, ?2, ?3, ?4)",
            params![id, ts(now), kind.as_str(), detail.to_string()],
        )
        .map_err(self.err("append to the timeline"))?;
        Ok(())
    }

    /// Records one sighting of a drift: bumps the unresolved ticket, reopens one resolved
    /// within the cooldown (a flap), or opens a new one. One immediate transaction, backed
    /// by the unique index: concurrent callers never create two tickets.
    pub fn record_drift(
        &self,
        s: &DriftSighting<'_>,
        now: DateTime<Utc>,
    ) -> Result<(Ticket, Sighting), TicketError> {
        self.write("record a drift", |tx| {
            let unresolved: Option<(i64, String)> = tx
                .query_row(
                    "SELECT id, drift FROM tickets WHERE fingerprint = ?1 AND status != 'resolved'",
                    params![s.fingerprint],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(self.err("look up a ticket"))?;
            let (id, sighting) = if let Some((id, drift)) = unresolved {
                tx.execute(
                    "UPDATE tickets SET occurrences = occurrences + 1, last_seen_at = ?2, drift = ?3, detail = ?4 WHERE id = ?1",
                    params![id, ts(now), s.drift, s.detail],
                )
                .map_err(self.err("bump a ticket"))?;
                if drift != s.drift {
                    self.append_tx(
                        tx,
                        id,
                        EntryKind::DriftChanged,
                        &serde_json::json!({"from": drift, "to": s.drift, "detail": s.detail}),
                        now,
                    )?;
                }
                (id, Sighting::Seen)
            } else {
                let cutoff = now - chrono::Duration::from_std(s.cooldown).unwrap_or_default();
                let recent: Option<i64> = tx
                    .query_row(
                        "SELECT id FROM tickets WHERE fingerprint = ?1 AND status = 'resolved' AND resolved_at >= ?2 \
                         ORDER BY resolved_at DESC LIMIT 1",
                        params![s.fingerprint, ts(cutoff)],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(self.err("look up a recent ticket"))?;
                if let Some(id) = recent {
                    tx.execute(
                        "UPDATE tickets SET status = 'open', resolved_at = NULL, resolved_by = NULL, \
                         occurrences = occurrences + 1, flaps = flaps + 1, last_seen_at = ?2, episode_at = ?2, drift = ?3, \
                         detail = ?4, actions = 0 WHERE id = ?1",
                        params![id, ts(now), s.drift, s.detail],
                    )
                    .map_err(self.err("reopen a ticket"))?;
                    self.append_tx(
                        tx,
                        id,
                        EntryKind::Reopened,
                        &serde_json::json!({"drift": s.drift, "detail": s.detail, "evidence": s.evidence}),
                        now,
                    )?;
                    (id, Sighting::Reopened)
                } else {
                    // The unique index makes a racing insert impossible; the upsert keeps
                    // the statement correct even if the read above were stale.
                    let id: i64 = tx
                        .query_row(
                            "INSERT INTO tickets (fingerprint, cluster, service, drift, status, detail, opened_at, episode_at, last_seen_at) \
                             VALUES (?1, ?2, ?3, ?4, 'open', ?5, ?6, ?6, ?6) \
                             ON CONFLICT (fingerprint) WHERE status != 'resolved' \
                             DO UPDATE SET occurrences = occurrences + 1, last_seen_at = excluded.last_seen_at \
                             RETURNING id",
                            params![s.fingerprint, s.cluster, s.service, s.drift, s.detail, ts(now)],
                            |r| r.get(0),
                        )
                        .map_err(self.err("open a ticket"))?;
                    self.append_tx(
                        tx,
                        id,
                        EntryKind::Detected,
                        &serde_json::json!({"drift": s.drift, "detail": s.detail, "evidence": s.evidence}),
                        now,
                    )?;
                    (id, Sighting::Opened)
                }
            };
            let ticket = self.get_tx(tx, id)?.ok_or(TicketError::NotFound(id))?;
            Ok((ticket, sighting))
        })
    }

    fn get_tx(&self, tx: &Connection, id: i64) -> Result<Option<Ticket>, TicketError> {
        tx.query_row(
            &format!("SELECT {TICKET_COLUMNS} FROM tickets WHERE id = ?1"),
            params![id],
            ticket_from_row,
        )
        .optional()
        .map_err(self.err("read a ticket"))
    }

    pub fn get(&self, id: i64) -> Result<Option<Ticket>, TicketError> {
        let conn = self.conn();
        self.get_tx(&conn, id)
    }

    /// Tickets, newest first, optionally of one status.
    pub fn list(&self, status: Option<Status>) -> Result<Vec<Ticket>, TicketError> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {TICKET_COLUMNS} FROM tickets WHERE (?1 IS NULL OR status = ?1) ORDER BY id DESC"
        );
        let mut stmt = conn.prepare(&sql).map_err(self.err("list tickets"))?;
        let rows = stmt
            .query_map(params![status.map(Status::as_str)], ticket_from_row)
            .map_err(self.err("list tickets"))?;
        rows.collect::<Result<_, _>>()
            .map_err(self.err("list tickets"))
    }

    /// The unresolved tickets of one service (or check).
    pub fn unresolved_for(&self, cluster: &str, service: &str) -> Result<Vec<Ticket>, TicketError> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {TICKET_COLUMNS} FROM tickets WHERE cluster = ?1 AND service = ?2 AND status != 'resolved' ORDER BY id"
        );
        let mut stmt = conn
            .prepare(&sql)
            .map_err(self.err("list a service's tickets"))?;
        let rows = stmt
            .query_map(params![cluster, service], ticket_from_row)
            .map_err(self.err("list a service's tickets"))?;
        rows.collect::<Result<_, _>>()
            .map_err(self.err("list a service's tickets"))
    }

    /// The unresolved ticket of one fingerprint, if any.
    pub fn unresolved_by_fingerprint(&self, fingerprint: &str) -> Result<Vec<Ticket>, TicketError> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {TICKET_COLUMNS} FROM tickets WHERE fingerprint = ?1 AND status != 'resolved'"
        );
        let mut stmt = conn.prepare(&sql).map_err(self.err("look up a ticket"))?;
        let rows = stmt
            .query_map(params![fingerprint], ticket_from_row)
            .map_err(self.err("look up a ticket"))?;
        rows.collect::<Result<_, _>>()
            .map_err(self.err("look up a ticket"))
    }

    /// Unresolved tickets whose fingerprint matches a SQL `LIKE` pattern (escape literal
    /// parts with [`like_escape`]; `\` is the escape character).
    pub fn unresolved_like(&self, pattern: &str) -> Result<Vec<Ticket>, TicketError> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {TICKET_COLUMNS} FROM tickets WHERE fingerprint LIKE ?1 ESCAPE '\\' AND status != 'resolved' ORDER BY id"
        );
        let mut stmt = conn.prepare(&sql).map_err(self.err("list tickets"))?;
        let rows = stmt
            .query_map(params![pattern], ticket_from_row)
            .map_err(self.err("list tickets"))?;
        rows.collect::<Result<_, _>>()
            .map_err(self.err("list tickets"))
    }

    pub fn timeline(&self, id: i64) -> Result<Vec<TimelineEntry>, TicketError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT at, kind, detail FROM timeline WHERE ticket_id = ?1 ORDER BY id")
            .map_err(self.err("read a timeline"))?;
        let rows = stmt
            .query_map(params![id], |r| {
                let at: String = r.get(0)?;
                let detail: String = r.get(2)?;
                Ok(TimelineEntry {
                    at: parse_ts(&at),
                    kind: r.get(1)?,
                    detail: serde_json::from_str(&detail)
                        .unwrap_or(serde_json::Value::String(detail)),
                })
            })
            .map_err(self.err("read a timeline"))?;
        rows.collect::<Result<_, _>>()
            .map_err(self.err("read a timeline"))
    }

    /// Appends an entry to a ticket's timeline.
    pub fn append(
        &self,
        id: i64,
        kind: EntryKind,
        detail: serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<(), TicketError> {
        self.write("append to the timeline", |tx| {
            self.append_tx(tx, id, kind, &detail, now)
        })
    }

    /// Marks that the controller is starting an action on a ticket, and saves the budget
    /// that counts it, in one transaction: a crash after this never repeats the attempt
    /// for free. Returns false (and records nothing) if the ticket was resolved or held
    /// meanwhile: then the action must not run.
    pub fn action_started(
        &self,
        id: i64,
        cluster: &str,
        service: &str,
        budget: &Budget,
        detail: serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<bool, TicketError> {
        self.write("record an action", |tx| {
            let changed = tx
                .execute(
                    "UPDATE tickets SET status = 'remediating', actions = actions + 1 \
                     WHERE id = ?1 AND status != 'resolved' AND held = 0",
                    params![id],
                )
                .map_err(self.err("record an action"))?;
            if changed == 0 {
                return Ok(false);
            }
            self.append_tx(tx, id, EntryKind::ActionStarted, &detail, now)?;
            self.save_budget_tx(tx, cluster, service, budget)?;
            Ok(true)
        })
    }

    /// Records an action's result. A failed action puts the ticket back to `open`: only a
    /// successful one can later be credited with the resolution.
    pub fn action_finished(
        &self,
        id: i64,
        ok: bool,
        detail: serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<(), TicketError> {
        self.write("record an action's result", |tx| {
            if !ok {
                tx.execute(
                    "UPDATE tickets SET status = 'open' WHERE id = ?1 AND status = 'remediating'",
                    params![id],
                )
                .map_err(self.err("record an action's result"))?;
            }
            self.append_tx(tx, id, EntryKind::ActionResult, &detail, now)
        })
    }

    /// Resolves an unresolved ticket; false if it was already resolved.
    pub fn resolve(
        &self,
        id: i64,
        cause: Cause,
        detail: serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<bool, TicketError> {
        self.write("resolve a ticket", |tx| {
            let changed = tx
                .execute(
                    "UPDATE tickets SET status = 'resolved', resolved_at = ?2, resolved_by = ?3, held = 0 \
                     WHERE id = ?1 AND status != 'resolved'",
                    params![id, ts(now), cause.as_str()],
                )
                .map_err(self.err("resolve a ticket"))?;
            if changed == 0 {
                return Ok(false);
            }
            let mut detail = detail;
            if let Some(map) = detail.as_object_mut() {
                map.insert("cause".into(), cause.as_str().into());
            }
            self.append_tx(tx, id, EntryKind::Resolved, &detail, now)?;
            Ok(true)
        })
    }

    /// Marks a ticket escalated (once).
    pub fn escalate(
        &self,
        id: i64,
        detail: serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<bool, TicketError> {
        self.write("escalate a ticket", |tx| {
            let changed = tx
                .execute(
                    "UPDATE tickets SET status = 'escalated' WHERE id = ?1 AND status IN ('open','remediating')",
                    params![id],
                )
                .map_err(self.err("escalate a ticket"))?;
            if changed > 0 {
                self.append_tx(tx, id, EntryKind::Escalated, &detail, now)?;
            }
            Ok(changed > 0)
        })
    }

    /// Sets or clears the `held` flag (a person's "hands off").
    pub fn set_held(&self, id: i64, held: bool, now: DateTime<Utc>) -> Result<Ticket, TicketError> {
        self.write("hold a ticket", |tx| {
            let ticket = self.get_tx(tx, id)?.ok_or(TicketError::NotFound(id))?;
            if ticket.status == Status::Resolved {
                return Err(TicketError::WrongState {
                    id,
                    status: ticket.status,
                    what: "only unresolved tickets can be held or released",
                });
            }
            if ticket.held != held {
                tx.execute(
                    "UPDATE tickets SET held = ?2 WHERE id = ?1",
                    params![id, held as i64],
                )
                .map_err(self.err("hold a ticket"))?;
                let kind = if held {
                    EntryKind::Held
                } else {
                    EntryKind::Unheld
                };
                self.append_tx(tx, id, kind, &serde_json::json!({"by": "human"}), now)?;
            }
            self.get_tx(tx, id)?.ok_or(TicketError::NotFound(id))
        })
    }

    /// A person resolves a ticket. The controller reopens it if the drift is still there.
    pub fn resolve_by_human(
        &self,
        id: i64,
        note: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Ticket, TicketError> {
        self.write("resolve a ticket", |tx| {
            let ticket = self.get_tx(tx, id)?.ok_or(TicketError::NotFound(id))?;
            if ticket.status == Status::Resolved {
                return Err(TicketError::WrongState {
                    id,
                    status: ticket.status,
                    what: "it is already resolved",
                });
            }
            tx.execute(
                "UPDATE tickets SET status = 'resolved', resolved_at = ?2, resolved_by = 'human', held = 0 WHERE id = ?1",
                params![id, ts(now)],
            )
            .map_err(self.err("resolve a ticket"))?;
            if let Some(note) = note {
                self.append_tx(tx, id, EntryKind::Note, &serde_json::json!({"note": note}), now)?;
            }
            self.append_tx(tx, id, EntryKind::Resolved, &serde_json::json!({"cause": "human"}), now)?;
            self.get_tx(tx, id)?.ok_or(TicketError::NotFound(id))
        })
    }

    /// Gives an escalated ticket's service a fresh budget and reopens the ticket.
    pub fn retry(&self, id: i64, now: DateTime<Utc>) -> Result<Ticket, TicketError> {
        self.write("retry a ticket", |tx| {
            let ticket = self.get_tx(tx, id)?.ok_or(TicketError::NotFound(id))?;
            if ticket.status != Status::Escalated {
                return Err(TicketError::WrongState {
                    id,
                    status: ticket.status,
                    what: "only escalated tickets can be retried",
                });
            }
            tx.execute(
                "UPDATE budgets SET attempts = 0, next_attempt_at = NULL, repairs = '[]', escalated = 0 \
                 WHERE cluster = ?1 AND service = ?2",
                params![ticket.cluster, ticket.service],
            )
            .map_err(self.err("reset a budget"))?;
            tx.execute("UPDATE tickets SET status = 'open' WHERE id = ?1", params![id])
                .map_err(self.err("retry a ticket"))?;
            self.append_tx(tx, id, EntryKind::Retried, &serde_json::json!({"by": "human", "budget": "fresh"}), now)?;
            self.get_tx(tx, id)?.ok_or(TicketError::NotFound(id))
        })
    }

    pub fn load_budget(&self, cluster: &str, service: &str) -> Result<Option<Budget>, TicketError> {
        let conn = self.conn();
        conn.query_row(
            "SELECT attempts, next_attempt_at, repairs, escalated, healthy_since, spec_hash, created_before \
             FROM budgets WHERE cluster = ?1 AND service = ?2",
            params![cluster, service],
            |r| {
                let repairs: String = r.get(2)?;
                // A budget that cannot be read must not silently become a fresh one.
                let repairs: Vec<String> = serde_json::from_str(&repairs).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, Box::new(e))
                })?;
                Ok(Budget {
                    attempts: r.get::<_, i64>(0)?.clamp(0, i64::from(u32::MAX)) as u32,
                    next_attempt_at: parse_opt_ts(r.get(1)?),
                    repairs: repairs.iter().map(|s| parse_ts(s)).collect(),
                    escalated: r.get::<_, i64>(3)? != 0,
                    healthy_since: parse_opt_ts(r.get(4)?),
                    spec_hash: r.get(5)?,
                    created_before: r.get::<_, i64>(6)? != 0,
                })
            },
        )
        .optional()
        .map_err(self.err("read a budget"))
    }

    fn save_budget_tx(
        &self,
        tx: &Transaction<'_>,
        cluster: &str,
        service: &str,
        b: &Budget,
    ) -> Result<(), TicketError> {
        let repairs: Vec<String> = b.repairs.iter().map(|t| ts(*t)).collect();
        tx.execute(
            "INSERT INTO budgets (cluster, service, attempts, next_attempt_at, repairs, escalated, healthy_since, spec_hash, created_before) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
             ON CONFLICT (cluster, service) DO UPDATE SET attempts = excluded.attempts, \
             next_attempt_at = excluded.next_attempt_at, repairs = excluded.repairs, escalated = excluded.escalated, \
             healthy_since = excluded.healthy_since, spec_hash = excluded.spec_hash, created_before = excluded.created_before",
            params![
                cluster,
                service,
                i64::from(b.attempts),
                b.next_attempt_at.map(ts),
                serde_json::to_string(&repairs).unwrap_or_else(|_| "[]".into()),
                b.escalated as i64,
                b.healthy_since.map(ts),
                b.spec_hash,
                b.created_before as i64,
            ],
        )
        .map_err(self.err("save a budget"))?;
        Ok(())
    }

    pub fn save_budget(&self, cluster: &str, service: &str, b: &Budget) -> Result<(), TicketError> {
        self.write("save a budget", |tx| {
            self.save_budget_tx(tx, cluster, service, b)
        })
    }

    /// Unresolved tickets by drift kind (for the metrics gauge).
    pub fn open_counts(&self) -> Result<Vec<(String, i64)>, TicketError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT drift, count(*) FROM tickets WHERE status != 'resolved' GROUP BY drift ORDER BY drift")
            .map_err(self.err("count open tickets"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(self.err("count open tickets"))?;
        rows.collect::<Result<_, _>>()
            .map_err(self.err("count open tickets"))
    }

    /// After a crash: actions that started and never reported a result get one saying so,
    /// so every timeline reads to its end.
    pub fn close_interrupted_actions(&self, now: DateTime<Utc>) -> Result<usize, TicketError> {
        self.write("close interrupted actions", |tx| {
            let mut stmt = tx
                .prepare(
                    "SELECT DISTINCT s.ticket_id FROM timeline s JOIN tickets t ON t.id = s.ticket_id \
                     WHERE t.status != 'resolved' AND s.kind = 'action-started' AND NOT EXISTS \
                     (SELECT 1 FROM timeline r WHERE r.ticket_id = s.ticket_id AND r.kind = 'action-result' AND r.id > s.id)",
                )
                .map_err(self.err("find interrupted actions"))?;
            let ids: Vec<i64> = stmt
                .query_map([], |r| r.get(0))
                .map_err(self.err("find interrupted actions"))?
                .collect::<Result<_, _>>()
                .map_err(self.err("find interrupted actions"))?;
            drop(stmt);
            for id in &ids {
                self.append_tx(
                    tx,
                    *id,
                    EntryKind::ActionResult,
                    &serde_json::json!({"result": "interrupted", "error": "the controller stopped before the action reported back; the next reconcile re-checks"}),
                    now,
                )?;
            }
            Ok(ids.len())
        })
    }
}
