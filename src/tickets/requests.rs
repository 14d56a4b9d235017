//! Requests for agent sessions: the queue between the controller, which decides that a ticket
//! needs the agent, and the dispatchers that run sessions (in the controller's process, or
//! `operator agent` processes beside it on the same database).
//!
//! # Guarantees
//! - A request is taken by one dispatcher only: taking it claims its ticket (an
//!   `agent_claims` lease) and marks it `running` in one immediate transaction, and a ticket
//!   with a live claim (anyone's, this dispatcher's too) is skipped: one session per ticket.
//! - Requests are taken in ticket order (oldest ticket first), then in request order.
//! - A `running` request whose claim lapsed (its dispatcher died) is ended as failed by the
//!   next sweep, so the controller's lease on the key ends and it can page again within budget.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::TicketError;
use super::audit::rows;
use super::row::raw_row;
use super::store::{At, Store, ts};

/// The schema step that adds the queue (appended to `MIGRATIONS`).
pub(super) const MIGRATION: &str = r#"
    CREATE TABLE agent_requests (
        session_id    TEXT PRIMARY KEY,
        ticket_id     INTEGER NOT NULL REFERENCES tickets (id),
        cluster       TEXT NOT NULL,
        service       TEXT NOT NULL,
        requested_at  TEXT NOT NULL,
        state         TEXT NOT NULL CHECK (state IN ('queued','running','done')),
        holder        TEXT,
        ok            INTEGER,
        reason        TEXT,
        finished_at   TEXT
    );
    CREATE INDEX agent_requests_by_state ON agent_requests (state, ticket_id, requested_at);
"#;

/// One request for a session.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentRequest {
    /// Also the id of the session that serves it.
    pub session_id: String,
    pub ticket_id: i64,
    pub cluster: String,
    pub service: String,
    pub requested_at: DateTime<Utc>,
    /// `queued`, `running` or `done`.
    pub state: String,
    /// Who took it.
    pub holder: Option<String>,
    /// Once done: whether the model finished its turn (not whether the ticket is fixed).
    pub ok: Option<bool>,
    pub reason: Option<String>,
}

raw_row! {
    /// A request's row as SQLite holds it.
    struct Raw {
        row: i64 = "rowid",
        session_id: String,
        ticket_id: i64,
        cluster: String,
        service: String,
        requested_at: String,
        state: String,
        holder: Option<String>,
        ok: Option<bool>,
        reason: Option<String>,
    }
}

const COLUMNS: &str = Raw::COLUMNS;

impl Store {
    fn request_of(&self, r: Raw) -> Result<AgentRequest, TicketError> {
        let at = At {
            path: self.path(),
            table: "agent_requests",
            row: r.row,
        };
        if !["queued", "running", "done"].contains(&r.state.as_str()) {
            return Err(at.corrupt("state", &r.state));
        }
        Ok(AgentRequest {
            requested_at: at.time("requested_at", &r.requested_at)?,
            session_id: r.session_id,
            ticket_id: r.ticket_id,
            cluster: r.cluster,
            service: r.service,
            state: r.state,
            holder: r.holder,
            ok: r.ok,
            reason: r.reason,
        })
    }

    /// Queues a request for a session of `ticket_id`.
    pub fn request_session(
        &self,
        session_id: &str,
        ticket_id: i64,
        cluster: &str,
        service: &str,
        now: DateTime<Utc>,
    ) -> Result<(), TicketError> {
        self.write("queue an agent request", |tx| {
            tx.execute(
                "INSERT INTO agent_requests (session_id, ticket_id, cluster, service, requested_at, state) \
                 VALUES (?1, ?2, ?3, ?4, ?5, 'queued')",
                params![session_id, ticket_id, cluster, service, ts(now)],
            )
            .map_err(self.err("queue an agent request"))?;
            Ok(())
        })
    }

    /// Takes the first queued request whose ticket is free, claiming the ticket for `holder`
    /// until `claim_until`.
    pub fn take_request(
        &self,
        holder: &str,
        claim_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Option<AgentRequest>, TicketError> {
        self.write("take an agent request", |tx| {
            let sql = format!(
                "SELECT {COLUMNS} FROM agent_requests r WHERE state = 'queued' AND NOT EXISTS \
                 (SELECT 1 FROM agent_claims c WHERE c.ticket_id = r.ticket_id AND c.expires_at > ?1) \
                 ORDER BY ticket_id, requested_at LIMIT 1"
            );
            let found = tx
                .query_row(&sql, params![ts(now)], Raw::read)
                .optional()
                .map_err(self.err("take an agent request"))?;
            let Some(found) = found else {
                return Ok(None);
            };
            let request = self.request_of(found)?;
            tx.execute(
                "INSERT INTO agent_claims (ticket_id, holder, session_id, claimed_at, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (ticket_id) DO UPDATE SET holder = excluded.holder, \
                 session_id = excluded.session_id, claimed_at = excluded.claimed_at, expires_at = excluded.expires_at",
                params![request.ticket_id, holder, request.session_id, ts(now), ts(claim_until)],
            )
            .map_err(self.err("claim a ticket"))?;
            tx.execute(
                "UPDATE agent_requests SET state = 'running', holder = ?2 WHERE session_id = ?1",
                params![request.session_id, holder],
            )
            .map_err(self.err("take an agent request"))?;
            Ok(Some(AgentRequest {
                state: "running".into(),
                holder: Some(holder.to_string()),
                ..request
            }))
        })
    }

    /// Ends a request (once): `ok` when the model finished its turn.
    pub fn finish_request(
        &self,
        session_id: &str,
        ok: bool,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<bool, TicketError> {
        self.write("end an agent request", |tx| {
            let changed = tx
                .execute(
                    "UPDATE agent_requests SET state = 'done', ok = ?2, reason = ?3, finished_at = ?4 \
                     WHERE session_id = ?1 AND state != 'done'",
                    params![session_id, ok as i64, reason, ts(now)],
                )
                .map_err(self.err("end an agent request"))?;
            Ok(changed > 0)
        })
    }

    /// Fails every queued request (dispatching stopped for good); returns them.
    pub fn fail_queued_requests(
        &self,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<AgentRequest>, TicketError> {
        self.write("fail queued agent requests", |tx| {
            let sql = format!("SELECT {COLUMNS} FROM agent_requests WHERE state = 'queued'");
            let found = rows(self, tx, "fail queued agent requests", &sql, [], Raw::read)?;
            tx.execute(
                "UPDATE agent_requests SET state = 'done', ok = 0, reason = ?1, finished_at = ?2 \
                 WHERE state = 'queued'",
                params![reason, ts(now)],
            )
            .map_err(self.err("fail queued agent requests"))?;
            found.into_iter().map(|r| self.request_of(r)).collect()
        })
    }

    pub fn agent_request(&self, session_id: &str) -> Result<Option<AgentRequest>, TicketError> {
        let conn = self.conn();
        let sql = format!("SELECT {COLUMNS} FROM agent_requests WHERE session_id = ?1");
        let found = conn
            .query_row(&sql, params![session_id], Raw::read)
            .optional()
            .map_err(self.err("read an agent request"))?;
        found.map(|r| self.request_of(r)).transpose()
    }

    /// Ends, as failed, the running requests whose dispatcher's claim lapsed (it died).
    /// Returns them.
    pub fn abandon_orphan_requests(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<AgentRequest>, TicketError> {
        self.write("end orphaned agent requests", |tx| {
            let sql = format!(
                "SELECT {COLUMNS} FROM agent_requests r WHERE state = 'running' AND NOT EXISTS \
                 (SELECT 1 FROM agent_claims c WHERE c.ticket_id = r.ticket_id AND c.session_id = r.session_id \
                  AND c.expires_at > ?1)"
            );
            let found = rows(
                self,
                tx,
                "end orphaned agent requests",
                &sql,
                params![ts(now)],
                Raw::read,
            )?;
            let mut out = Vec::new();
            for r in found {
                let request = self.request_of(r)?;
                let why = format!(
                    "its dispatcher ({}) stopped mid-session",
                    request.holder.as_deref().unwrap_or("unknown")
                );
                tx.execute(
                    "UPDATE agent_requests SET state = 'done', ok = 0, reason = ?2, finished_at = ?3 \
                     WHERE session_id = ?1",
                    params![request.session_id, why, ts(now)],
                )
                .map_err(self.err("end orphaned agent requests"))?;
                out.push(request);
            }
            Ok(out)
        })
    }
}
