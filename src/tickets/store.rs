//! The ticket SQL: tickets, their timeline and the per-service budgets, run on the calling
//! (blocking) thread. One connection per process; WAL and a busy timeout let the daemon, the
//! CLI and a dispatcher share one file. The async way in is [`super::Journal`].
//!
//! Everything read back is parsed strictly: a timestamp, status, drift, fingerprint or actor
//! that cannot be read is an error naming the row, never a default.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::TicketError;
use super::budget::Budget;
use super::db::Db;
use super::model::{Actor, Cause, EntryKind, Sighting, Status, Ticket, TimelineEntry};
use super::row::raw_row;
use crate::drift::{DriftKind, Fingerprint};

/// A time as stored: UTC, RFC 3339 with microseconds.
pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Where a stored value sits, for the error that says it cannot be read.
pub(super) struct At<'a> {
    pub(super) path: &'a Path,
    pub(super) table: &'static str,
    pub(super) row: i64,
}

impl At<'_> {
    pub(super) fn corrupt(&self, column: &'static str, value: &str) -> TicketError {
        TicketError::Corrupt {
            path: self.path.to_path_buf(),
            table: self.table,
            row: self.row,
            column,
            value: value.to_string(),
        }
    }

    pub(super) fn time(
        &self,
        column: &'static str,
        text: &str,
    ) -> Result<DateTime<Utc>, TicketError> {
        DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| self.corrupt(column, text))
    }

    pub(super) fn opt_time(
        &self,
        column: &'static str,
        text: Option<&str>,
    ) -> Result<Option<DateTime<Utc>>, TicketError> {
        text.map(|t| self.time(column, t)).transpose()
    }
}

raw_row! {
    /// A ticket row as SQLite holds it; [`RawTicket::parse`] makes it a [`Ticket`] or says
    /// which column of which row cannot be read.
    struct RawTicket {
        id: i64,
        fingerprint: String,
        cluster: String,
        service: String,
        drift: String,
        status: String,
        held: bool,
        occurrences: i64,
        flaps: i64,
        detail: String,
        opened_at: String,
        last_seen_at: String,
        resolved_at: Option<String>,
        resolved_by: Option<String>,
        actions: i64,
        episode_at: String,
    }
}

/// The `SELECT` list of a ticket (see [`RawTicket`]).
pub(super) const TICKET_COLUMNS: &str = RawTicket::COLUMNS;

impl RawTicket {
    fn parse(self, path: &Path) -> Result<Ticket, TicketError> {
        let at = At {
            path,
            table: "tickets",
            row: self.id,
        };
        let fingerprint = Fingerprint::parse(&self.fingerprint)
            .filter(|f| f.cluster == self.cluster && f.target.as_str() == self.service)
            .ok_or_else(|| at.corrupt("fingerprint", &self.fingerprint))?;
        Ok(Ticket {
            id: self.id,
            drift: DriftKind::parse(&self.drift).ok_or_else(|| at.corrupt("drift", &self.drift))?,
            status: Status::parse(&self.status)
                .ok_or_else(|| at.corrupt("status", &self.status))?,
            resolved_by: match self.resolved_by.as_deref() {
                None => None,
                Some(c) => Some(Cause::parse(c).ok_or_else(|| at.corrupt("resolved_by", c))?),
            },
            opened_at: at.time("opened_at", &self.opened_at)?,
            last_seen_at: at.time("last_seen_at", &self.last_seen_at)?,
            resolved_at: at.opt_time("resolved_at", self.resolved_at.as_deref())?,
            episode_at: at.time("episode_at", &self.episode_at)?,
            fingerprint,
            cluster: self.cluster,
            service: self.service,
            held: self.held,
            occurrences: self.occurrences,
            flaps: self.flaps,
            detail: self.detail,
            actions: self.actions,
        })
    }
}

/// What is recorded about one drift sighting. The cluster and target are the fingerprint's.
#[derive(Debug, Clone)]
pub struct DriftSighting {
    pub fingerprint: Fingerprint,
    /// The kind seen now (within the fingerprint's family, or `check-failed`).
    pub drift: DriftKind,
    pub detail: String,
    /// Reopen a ticket resolved less than this long ago instead of opening a new one.
    pub cooldown: Duration,
    /// What was seen (offending series...), for the timeline of a new or reopened episode.
    pub evidence: Option<serde_json::Value>,
}

/// Which unresolved tickets to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// The one episode of a fingerprint.
    Exact(Fingerprint),
    /// Every ticket of one service (or the cluster), whatever its drift or check.
    Target { cluster: String, target: String },
    /// The tickets of a cluster's checks: of one check, or of all of them.
    Checks {
        cluster: String,
        check: Option<String>,
    },
    /// Every unresolved ticket (to find those of things no longer declared).
    All,
}

/// A person's override of the quorum gate for a ticket's next action (`tickets retry
/// --force`), recorded on its timeline.
#[derive(Debug, Clone)]
pub struct Override {
    /// Who, as the shell says (`$USER`).
    pub user: String,
    pub reason: Option<String>,
}

/// The ticket database: blocking calls.
/// A service's budget and unresolved tickets as read at one generation of the store.
#[derive(Debug, Clone)]
pub struct ServiceView {
    pub generation: u64,
    pub budget: Option<Budget>,
    pub tickets: Vec<Ticket>,
}

pub struct Store {
    db: Db,
}

impl Store {
    /// Opens (creating if missing) the ticket database at `path`, applying migrations.
    /// The folder is created with mode 0700 and the file set to 0600.
    pub fn open(path: &Path) -> Result<Store, TicketError> {
        Ok(Store {
            db: Db::open(path)?,
        })
    }

    /// Opens an existing ticket database for reading only: never creates, migrates or
    /// changes it (for `status`, observers and the drills). Writes through it fail.
    pub fn open_read_only(path: &Path) -> Result<Store, TicketError> {
        Ok(Store {
            db: Db::open_read_only(path)?,
        })
    }

    pub fn path(&self) -> &Path {
        self.db.path()
    }

    pub fn is_read_only(&self) -> bool {
        self.db.is_read_only()
    }

    pub(super) fn err(
        &self,
        doing: &'static str,
    ) -> impl FnOnce(rusqlite::Error) -> TicketError + '_ {
        self.db.err(doing)
    }

    pub(super) fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.read()
    }

    pub(super) fn write<T>(
        &self,
        doing: &'static str,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, TicketError>,
    ) -> Result<T, TicketError> {
        self.db.write(doing, f)
    }

    /// A number that changes whenever another connection commits (cheap change detection).
    pub fn data_version(&self) -> Result<i64, TicketError> {
        self.db.notice_others(&self.db.writer())
    }

    /// The store's generation now, or `None` when it cannot be told without waiting: a
    /// [`ServiceView`] whose generation it still is holds what a read would (see
    /// [`super::db::Db::generation_now`]).
    pub fn generation_now(&self) -> Option<u64> {
        self.db.generation_now()
    }

    /// What a reconcile of one service reads: its repair budget and its unresolved tickets,
    /// stamped with the generation they were read at.
    pub fn service_view(&self, cluster: &str, service: &str) -> Result<ServiceView, TicketError> {
        let generation = self.db.generation();
        Ok(ServiceView {
            generation,
            budget: self.load_budget(cluster, service)?,
            tickets: self.unresolved(&Selector::Target {
                cluster: cluster.to_string(),
                target: service.to_string(),
            })?,
        })
    }

    fn append_tx(
        &self,
        tx: &Transaction<'_>,
        id: i64,
        kind: EntryKind,
        actor: Option<Actor>,
        detail: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<(), TicketError> {
        tx.execute(
            "INSERT INTO timeline (ticket_id, at, kind, actor, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                id,
                ts(now),
                kind.as_str(),
                actor.map(Actor::as_str),
                detail.to_string()
            ],
        )
        .map_err(self.err("append to the timeline"))?;
        Ok(())
    }

    /// Records one sighting of a drift: bumps the unresolved ticket, reopens one resolved
    /// within the cooldown (a flap), or opens a new one. One immediate transaction, backed
    /// by the unique index: concurrent callers never create two tickets.
    pub fn record_drift(
        &self,
        s: &DriftSighting,
        now: DateTime<Utc>,
    ) -> Result<(Ticket, Sighting), TicketError> {
        let fingerprint = s.fingerprint.to_string();
        let (drift, detail) = (s.drift.as_str(), s.detail.as_str());
        self.write("record a drift", |tx| {
            let unresolved: Option<(i64, String)> = tx
                .query_row(
                    "SELECT id, drift FROM tickets WHERE fingerprint = ?1 AND status != 'resolved'",
                    params![fingerprint],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(self.err("look up a ticket"))?;
            let (id, sighting) = if let Some((id, before)) = unresolved {
                tx.execute(
                    "UPDATE tickets SET occurrences = occurrences + 1, last_seen_at = ?2, drift = ?3, detail = ?4 WHERE id = ?1",
                    params![id, ts(now), drift, detail],
                )
                .map_err(self.err("bump a ticket"))?;
                if before != drift {
                    self.append_tx(
                        tx,
                        id,
                        EntryKind::DriftChanged,
                        None,
                        &serde_json::json!({"from": before, "to": drift, "detail": detail}),
                        now,
                    )?;
                }
                (id, Sighting::Seen)
            } else {
                let cutoff = now - chrono::Duration::from_std(s.cooldown).unwrap_or_default();
                let recent: Option<i64> = tx
                    .query_row(
                        "SELECT id FROM tickets WHERE fingerprint = ?1 AND status = 'resolved' AND resolved_at >= ?2 \
                         AND resolved_by IS NOT 'removed' ORDER BY resolved_at DESC LIMIT 1",
                        params![fingerprint, ts(cutoff)],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(self.err("look up a recent ticket"))?;
                if let Some(id) = recent {
                    tx.execute(
                        "UPDATE tickets SET status = 'open', resolved_at = NULL, resolved_by = NULL, \
                         occurrences = occurrences + 1, flaps = flaps + 1, last_seen_at = ?2, episode_at = ?2, drift = ?3, \
                         detail = ?4, actions = 0 WHERE id = ?1",
                        params![id, ts(now), drift, detail],
                    )
                    .map_err(self.err("reopen a ticket"))?;
                    self.append_tx(
                        tx,
                        id,
                        EntryKind::Reopened,
                        None,
                        &serde_json::json!({"drift": drift, "detail": detail, "evidence": s.evidence}),
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
                            params![
                                fingerprint,
                                s.fingerprint.cluster,
                                s.fingerprint.target.as_str(),
                                drift,
                                detail,
                                ts(now)
                            ],
                            |r| r.get(0),
                        )
                        .map_err(self.err("open a ticket"))?;
                    self.append_tx(
                        tx,
                        id,
                        EntryKind::Detected,
                        None,
                        &serde_json::json!({"drift": drift, "detail": detail, "evidence": s.evidence}),
                        now,
                    )?;
                    (id, Sighting::Opened)
                }
            };
            let ticket = self.get_tx(tx, id)?.ok_or(TicketError::NotFound(id))?;
            Ok((ticket, sighting))
        })
    }

    /// Runs a ticket query and parses every row strictly.
    pub(super) fn tickets(
        &self,
        conn: &Connection,
        doing: &'static str,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<Ticket>, TicketError> {
        let mut stmt = conn.prepare(sql).map_err(self.err(doing))?;
        let raw: Vec<RawTicket> = stmt
            .query_map(params, RawTicket::read)
            .map_err(self.err(doing))?
            .collect::<Result<_, _>>()
            .map_err(self.err(doing))?;
        raw.into_iter().map(|r| r.parse(self.path())).collect()
    }

    fn get_tx(&self, conn: &Connection, id: i64) -> Result<Option<Ticket>, TicketError> {
        let sql = format!("SELECT {TICKET_COLUMNS} FROM tickets WHERE id = ?1");
        Ok(self
            .tickets(conn, "read a ticket", &sql, params![id])?
            .into_iter()
            .next())
    }

    pub fn get(&self, id: i64) -> Result<Option<Ticket>, TicketError> {
        let conn = self.conn();
        self.get_tx(&conn, id)
    }

    /// Tickets, newest first, optionally of one status.
    pub fn list(&self, status: Option<Status>) -> Result<Vec<Ticket>, TicketError> {
        let sql = format!(
            "SELECT {TICKET_COLUMNS} FROM tickets WHERE (?1 IS NULL OR status = ?1) ORDER BY id DESC"
        );
        let conn = self.conn();
        self.tickets(
            &conn,
            "list tickets",
            &sql,
            params![status.map(Status::as_str)],
        )
    }

    /// The unresolved tickets a selector picks, oldest first.
    pub fn unresolved(&self, selector: &Selector) -> Result<Vec<Ticket>, TicketError> {
        let conn = self.conn();
        match selector {
            Selector::Exact(fp) => {
                let sql = format!(
                    "SELECT {TICKET_COLUMNS} FROM tickets WHERE fingerprint = ?1 AND status != 'resolved'"
                );
                self.tickets(&conn, "look up a ticket", &sql, params![fp.to_string()])
            }
            Selector::Target { cluster, target } => {
                let sql = format!(
                    "SELECT {TICKET_COLUMNS} FROM tickets WHERE cluster = ?1 AND service = ?2 AND status != 'resolved' ORDER BY id"
                );
                self.tickets(
                    &conn,
                    "list a service's tickets",
                    &sql,
                    params![cluster, target],
                )
            }
            Selector::All => {
                let sql = format!(
                    "SELECT {TICKET_COLUMNS} FROM tickets WHERE status != 'resolved' ORDER BY id"
                );
                self.tickets(&conn, "list unresolved tickets", &sql, [])
            }
            Selector::Checks { cluster, check } => {
                // A cluster has few unresolved tickets: filter the typed fingerprints here
                // rather than pattern-match their text in SQL.
                let sql = format!(
                    "SELECT {TICKET_COLUMNS} FROM tickets WHERE cluster = ?1 AND status != 'resolved' ORDER BY id"
                );
                let mut all = self.tickets(
                    &conn,
                    "list a cluster's check tickets",
                    &sql,
                    params![cluster],
                )?;
                all.retain(|t| match (t.fingerprint.check_name(), check) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some(name), Some(check)) => name == check,
                });
                Ok(all)
            }
        }
    }

    pub fn timeline(&self, id: i64) -> Result<Vec<TimelineEntry>, TicketError> {
        let conn = self.conn();
        raw_row! {
            struct RawEntry {
                id: i64,
                at: String,
                kind: String,
                actor: Option<String>,
                detail: String,
            }
        }
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {} FROM timeline WHERE ticket_id = ?1 ORDER BY id",
                RawEntry::COLUMNS
            ))
            .map_err(self.err("read a timeline"))?;
        let raw: Vec<RawEntry> = stmt
            .query_map(params![id], RawEntry::read)
            .map_err(self.err("read a timeline"))?
            .collect::<Result<_, _>>()
            .map_err(self.err("read a timeline"))?;
        raw.into_iter()
            .map(|e| {
                let RawEntry {
                    id: row,
                    at,
                    kind,
                    actor,
                    detail,
                } = e;
                let here = At {
                    path: self.path(),
                    table: "timeline",
                    row,
                };
                Ok(TimelineEntry {
                    at: here.time("at", &at)?,
                    kind: EntryKind::parse(&kind).ok_or_else(|| here.corrupt("kind", &kind))?,
                    actor: match actor.as_deref() {
                        None => None,
                        Some(a) => Some(Actor::parse(a).ok_or_else(|| here.corrupt("actor", a))?),
                    },
                    // Details are free JSON written by this program; a hand-edited one is
                    // shown as the text it is.
                    detail: serde_json::from_str(&detail)
                        .unwrap_or(serde_json::Value::String(detail)),
                })
            })
            .collect()
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
            self.append_tx(tx, id, kind, None, &detail, now)
        })
    }

    /// Marks that `actor` is starting an action on a ticket, and saves the budget that
    /// counts it (if any), in one transaction: a crash after this never repeats the attempt
    /// for free. Returns false (and records nothing) if the ticket was resolved or held
    /// meanwhile: then the action must not run.
    pub fn action_started(
        &self,
        id: i64,
        actor: Actor,
        budget: Option<(&str, &str, &Budget)>,
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
            self.append_tx(tx, id, EntryKind::ActionStarted, Some(actor), &detail, now)?;
            if let Some((cluster, service, budget)) = budget {
                self.save_budget_tx(tx, cluster, service, budget)?;
            }
            Ok(true)
        })
    }

    /// Records an action's result. A failed action puts the ticket back to `open`: only a
    /// successful one can later be credited with the resolution.
    pub fn action_finished(
        &self,
        id: i64,
        actor: Actor,
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
            self.append_tx(tx, id, EntryKind::ActionResult, Some(actor), &detail, now)
        })
    }

    /// Who made the desired state come back, as the timeline tells it: the actor of the
    /// last action, unless that action failed or the episode moved on since (escalated,
    /// retried, reopened); then nobody did and the drift healed by itself.
    fn cause_tx(&self, tx: &Transaction<'_>, id: i64) -> Result<Cause, TicketError> {
        let last: Option<(i64, String, Option<String>, Option<String>)> = tx
            .query_row(
                "SELECT id, kind, actor, json_extract(detail, '$.result') FROM timeline \
                 WHERE ticket_id = ?1 AND kind IN ('action-started','action-result','escalated','retried','reopened') \
                 ORDER BY id DESC LIMIT 1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(self.err("find who acted"))?;
        let Some((row, kind, actor, result)) = last else {
            return Ok(Cause::SelfHealed);
        };
        let acted = match kind.as_str() {
            // Still running when the re-check came (a check's restart, a session).
            "action-started" => true,
            // Only an action known to have completed is credited: one that failed, or was
            // cut short by a stop, did not (knowingly) make the desired state come back.
            "action-result" => result.as_deref() == Some("ok"),
            _ => false,
        };
        if !acted {
            return Ok(Cause::SelfHealed);
        }
        let here = At {
            path: self.path(),
            table: "timeline",
            row,
        };
        // No actor: written by an operator of schema 1 (after a newer CLI migrated the file
        // under it), when only the controller ever acted.
        let Some(actor) = actor else {
            return Ok(Cause::Controller);
        };
        Ok(Actor::parse(&actor)
            .ok_or_else(|| here.corrupt("actor", &actor))?
            .into())
    }

    /// Resolves an unresolved ticket after the controller's own re-check showed the desired
    /// state, recording what the re-check saw; the cause comes from the timeline, never from
    /// the ticket's status. Returns the cause, or `None` if it was already resolved.
    pub fn resolve_rechecked(
        &self,
        id: i64,
        recheck: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<Option<Cause>, TicketError> {
        self.write("resolve a ticket", |tx| {
            let Some(before) = self.get_tx(tx, id)? else {
                return Err(TicketError::NotFound(id));
            };
            let cause = self.cause_tx(tx, id)?;
            let changed = tx
                .execute(
                    "UPDATE tickets SET status = 'resolved', resolved_at = ?2, resolved_by = ?3, held = 0 \
                     WHERE id = ?1 AND status != 'resolved'",
                    params![id, ts(now), cause.as_str()],
                )
                .map_err(self.err("resolve a ticket"))?;
            if changed == 0 {
                return Ok(None);
            }
            self.end_escalation_tx(tx, &before)?;
            self.append_tx(tx, id, EntryKind::Recheck, None, recheck, now)?;
            self.append_tx(
                tx,
                id,
                EntryKind::Resolved,
                None,
                &serde_json::json!({"cause": cause.as_str()}),
                now,
            )?;
            Ok(Some(cause))
        })
    }

    /// Closes an unresolved ticket whose service, check or cluster is no longer declared:
    /// nobody can re-check it, so it is not "healed" but `removed`, with `reason` on its
    /// timeline. Ends the service's escalation like any other resolution. Returns the ticket
    /// as it was, or `None` if it was resolved meanwhile.
    pub fn resolve_removed(
        &self,
        id: i64,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Ticket>, TicketError> {
        self.write("close a ticket of something removed", |tx| {
            let Some(before) = self.get_tx(tx, id)? else {
                return Err(TicketError::NotFound(id));
            };
            let changed = tx
                .execute(
                    "UPDATE tickets SET status = 'resolved', resolved_at = ?2, resolved_by = 'removed', held = 0 \
                     WHERE id = ?1 AND status != 'resolved'",
                    params![id, ts(now)],
                )
                .map_err(self.err("close a ticket of something removed"))?;
            if changed == 0 {
                return Ok(None);
            }
            self.end_escalation_tx(tx, &before)?;
            self.append_tx(
                tx,
                id,
                EntryKind::Resolved,
                None,
                &serde_json::json!({"cause": Cause::Removed.as_str(), "reason": reason}),
                now,
            )?;
            Ok(Some(before))
        })
    }

    /// A service is escalated exactly while it has an escalated ticket: when its last one
    /// ends (re-checked healthy, a person resolved it, or it was removed) the escalation ends.
    /// The repairs stay in the window: at most `maxRestarts` in any `window`, whoever ended
    /// the episodes, so a next drift while the window is still full escalates at once. Only
    /// `tickets retry` (a person's explicit word) and a new spec give a fresh budget.
    fn end_escalation_tx(&self, tx: &Transaction<'_>, ended: &Ticket) -> Result<(), TicketError> {
        if ended.status != Status::Escalated {
            return Ok(());
        }
        let others: i64 = tx
            .query_row(
                "SELECT count(*) FROM tickets WHERE cluster = ?1 AND service = ?2 AND status = 'escalated' AND id != ?3",
                params![ended.cluster, ended.service, ended.id],
                |r| r.get(0),
            )
            .map_err(self.err("look for escalated tickets"))?;
        if others == 0 {
            tx.execute(
                "UPDATE budgets SET attempts = 0, next_attempt_at = NULL, escalated = 0 \
                 WHERE cluster = ?1 AND service = ?2",
                params![ended.cluster, ended.service],
            )
            .map_err(self.err("end an escalation"))?;
        }
        Ok(())
    }

    /// A fresh budget for a service (a person's `tickets retry` or `resolve` of its escalated
    /// ticket): no repairs in the window, no backoff, not escalated.
    fn fresh_budget_tx(
        &self,
        tx: &Transaction<'_>,
        cluster: &str,
        service: &str,
    ) -> Result<(), TicketError> {
        tx.execute(
            "UPDATE budgets SET attempts = 0, next_attempt_at = NULL, repairs = '[]', escalated = 0 \
             WHERE cluster = ?1 AND service = ?2",
            params![cluster, service],
        )
        .map_err(self.err("reset a budget"))?;
        Ok(())
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
                self.append_tx(tx, id, EntryKind::Escalated, None, &detail, now)?;
                // The service is escalated exactly while it has an escalated ticket: both
                // change in this one transaction.
                tx.execute(
                    "INSERT INTO budgets (cluster, service, escalated) \
                     SELECT cluster, service, 1 FROM tickets WHERE id = ?1 \
                     ON CONFLICT (cluster, service) DO UPDATE SET escalated = 1",
                    params![id],
                )
                .map_err(self.err("escalate a budget"))?;
            }
            Ok(changed > 0)
        })
    }

    /// Sets or clears the `held` flag (a person's "hands off"). Holding a `remediating`
    /// ticket puts it back to `open`: nobody remediates a held ticket, and its status must
    /// not say otherwise (an action already running still records its result).
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
            if ticket.held == held {
                // Saying so: a person who typed the wrong id must not read success.
                return Err(TicketError::WrongState {
                    id,
                    status: ticket.status,
                    what: if held {
                        "it is already held"
                    } else {
                        "it is not held, so there is nothing to release"
                    },
                });
            }
            {
                tx.execute(
                    "UPDATE tickets SET held = ?2, \
                     status = CASE WHEN ?2 = 1 AND status = 'remediating' THEN 'open' ELSE status END \
                     WHERE id = ?1",
                    params![id, held as i64],
                )
                .map_err(self.err("hold a ticket"))?;
                let kind = if held {
                    EntryKind::Held
                } else {
                    EntryKind::Unheld
                };
                self.append_tx(tx, id, kind, None, &serde_json::json!({"by": "human"}), now)?;
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
                    what: "there is nothing left to resolve",
                });
            }
            tx.execute(
                "UPDATE tickets SET status = 'resolved', resolved_at = ?2, resolved_by = 'human', held = 0 WHERE id = ?1",
                params![id, ts(now)],
            )
            .map_err(self.err("resolve a ticket"))?;
            self.end_escalation_tx(tx, &ticket)?;
            if ticket.status == Status::Escalated {
                // A person's word that the escalated service is dealt with, as `retry` is.
                self.fresh_budget_tx(tx, &ticket.cluster, &ticket.service)?;
            }
            if let Some(note) = note {
                self.append_tx(tx, id, EntryKind::Note, None, &serde_json::json!({"note": note}), now)?;
            }
            self.append_tx(tx, id, EntryKind::Resolved, None, &serde_json::json!({"cause": "human"}), now)?;
            self.get_tx(tx, id)?.ok_or(TicketError::NotFound(id))
        })
    }

    /// Gives an escalated ticket's service a fresh budget and reopens the ticket. With
    /// `force` (a person's override, recorded with who and why): also an open ticket, and
    /// its next action passes the quorum gate whatever the gate would say.
    pub fn retry(
        &self,
        id: i64,
        force: Option<&Override>,
        now: DateTime<Utc>,
    ) -> Result<Ticket, TicketError> {
        self.write("retry a ticket", |tx| {
            let ticket = self.get_tx(tx, id)?.ok_or(TicketError::NotFound(id))?;
            let allowed = match force {
                None => ticket.status == Status::Escalated,
                Some(_) => ticket.status != Status::Resolved,
            };
            if !allowed {
                return Err(TicketError::WrongState {
                    id,
                    status: ticket.status,
                    what: if force.is_some() {
                        "a resolved ticket has nothing to force"
                    } else {
                        "only escalated tickets can be retried (--force also overrides the quorum gate for an open one)"
                    },
                });
            }
            let mut detail = serde_json::json!({"by": "human"});
            if ticket.status == Status::Escalated {
                self.fresh_budget_tx(tx, &ticket.cluster, &ticket.service)?;
                tx.execute("UPDATE tickets SET status = 'open' WHERE id = ?1", params![id])
                    .map_err(self.err("retry a ticket"))?;
                detail["budget"] = serde_json::json!("fresh");
            }
            if let Some(o) = force {
                detail["force"] = serde_json::json!(true);
                detail["user"] = serde_json::json!(o.user);
                detail["reason"] = serde_json::json!(o.reason);
            }
            self.append_tx(tx, id, EntryKind::Retried, None, &detail, now)?;
            self.get_tx(tx, id)?.ok_or(TicketError::NotFound(id))
        })
    }

    pub fn load_budget(&self, cluster: &str, service: &str) -> Result<Option<Budget>, TicketError> {
        raw_row! {
            struct RawBudget {
                row: i64 = "rowid",
                attempts: i64,
                next_attempt_at: Option<String>,
                repairs: String,
                escalated: bool,
                healthy_since: Option<String>,
                spec_hash: Option<String>,
                created_before: bool,
                paused_at: Option<String>,
            }
        }
        let raw = self
            .conn()
            .query_row(
                &format!(
                    "SELECT {} FROM budgets WHERE cluster = ?1 AND service = ?2",
                    RawBudget::COLUMNS
                ),
                params![cluster, service],
                RawBudget::read,
            )
            .optional()
            .map_err(self.err("read a budget"))?;
        let Some(RawBudget {
            row,
            attempts,
            next_attempt_at: next,
            repairs,
            escalated,
            healthy_since: healthy,
            spec_hash,
            created_before,
            paused_at: paused,
        }) = raw
        else {
            return Ok(None);
        };
        // A budget that cannot be read must never silently become a fresh one.
        let here = At {
            path: self.path(),
            table: "budgets",
            row,
        };
        let texts: Vec<String> =
            serde_json::from_str(&repairs).map_err(|_| here.corrupt("repairs", &repairs))?;
        Ok(Some(Budget {
            attempts: attempts.clamp(0, i64::from(u32::MAX)) as u32,
            next_attempt_at: here.opt_time("next_attempt_at", next.as_deref())?,
            repairs: texts
                .iter()
                .map(|t| here.time("repairs", t))
                .collect::<Result<_, _>>()?,
            escalated,
            healthy_since: here.opt_time("healthy_since", healthy.as_deref())?,
            spec_hash,
            created_before,
            paused_at: here.opt_time("paused_at", paused.as_deref())?,
        }))
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
            // `escalated` is never taken from the caller: it is whether the service has an
            // escalated ticket (see `escalate` and `end_escalation_tx`), so a budget can never
            // say escalated without one, nor an escalation be lost by an older budget's save.
            "INSERT INTO budgets (cluster, service, attempts, next_attempt_at, repairs, escalated, healthy_since, spec_hash, created_before, paused_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, \
               EXISTS (SELECT 1 FROM tickets WHERE cluster = ?1 AND service = ?2 AND status = 'escalated'), \
               ?6, ?7, ?8, ?9) \
             ON CONFLICT (cluster, service) DO UPDATE SET attempts = excluded.attempts, \
             next_attempt_at = excluded.next_attempt_at, repairs = excluded.repairs, escalated = excluded.escalated, \
             healthy_since = excluded.healthy_since, spec_hash = excluded.spec_hash, created_before = excluded.created_before",
            params![
                cluster,
                service,
                i64::from(b.attempts),
                b.next_attempt_at.map(ts),
                serde_json::to_string(&repairs).unwrap_or_else(|_| "[]".into()),
                b.healthy_since.map(ts),
                b.spec_hash,
                b.created_before as i64,
                b.paused_at.map(ts),
            ],
        )
        .map_err(self.err("save a budget"))?;
        Ok(())
    }

    /// Records that the service was seen paused (or unpaused by the controller) at `at`,
    /// unless a later time is recorded already. Apart from the budget's own save, which
    /// never writes it: a budget saved from an older read must not undo a newer pause, and a
    /// pause seen must not rewrite a budget a person reset meanwhile (`tickets retry`).
    pub fn save_paused_at(
        &self,
        cluster: &str,
        service: &str,
        at: DateTime<Utc>,
    ) -> Result<(), TicketError> {
        self.write("record a pause", |tx| {
            // The stored times are all `ts`'s fixed-width UTC form: ordered as text.
            tx.execute(
                "INSERT INTO budgets (cluster, service, paused_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (cluster, service) DO UPDATE SET paused_at = excluded.paused_at \
                 WHERE paused_at IS NULL OR paused_at < excluded.paused_at",
                params![cluster, service, ts(at)],
            )
            .map_err(self.err("record a pause"))?;
            Ok(())
        })
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

    /// After a crash: actions that started and never reported a result (a built-in action
    /// cut short, an agent session whose process is gone) get one saying so, in the name of
    /// the actor that started them, so every timeline reads to its end.
    pub fn close_interrupted_actions(&self, now: DateTime<Utc>) -> Result<usize, TicketError> {
        self.write("close interrupted actions", |tx| {
            let mut stmt = tx
                .prepare(
                    "SELECT s.ticket_id, s.actor FROM timeline s JOIN tickets t ON t.id = s.ticket_id \
                     WHERE t.status != 'resolved' AND s.kind = 'action-started' AND NOT EXISTS \
                     (SELECT 1 FROM timeline r WHERE r.ticket_id = s.ticket_id AND r.kind = 'action-result' AND r.id > s.id) \
                     ORDER BY s.id",
                )
                .map_err(self.err("find interrupted actions"))?;
            let rows: Vec<(i64, Option<String>)> = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(self.err("find interrupted actions"))?
                .collect::<Result<_, _>>()
                .map_err(self.err("find interrupted actions"))?;
            drop(stmt);
            // The last unanswered start of each ticket is the one that was cut short.
            let mut last: Vec<(i64, Option<Actor>)> = Vec::new();
            for (id, actor) in rows {
                let actor = actor.as_deref().and_then(Actor::parse);
                match last.iter_mut().find(|(t, _)| *t == id) {
                    Some(entry) => entry.1 = actor,
                    None => last.push((id, actor)),
                }
            }
            for (id, actor) in &last {
                self.append_tx(
                    tx,
                    *id,
                    EntryKind::ActionResult,
                    Some(actor.unwrap_or(Actor::Controller)),
                    &serde_json::json!({"result": "interrupted", "error": "the controller stopped before the action reported back; the next reconcile re-checks"}),
                    now,
                )?;
            }
            Ok(last.len())
        })
    }
}
