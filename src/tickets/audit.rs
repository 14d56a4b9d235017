//! The agent's audit in the ticket database: sessions with their ordered entries, the claims
//! that keep two dispatchers off one ticket, and the approvals a person gives or refuses.
//! Blocking calls on [`Store`]; [`super::Journal`] is the async way in, as for tickets.
//!
//! # Guarantees
//! - Entries of a session are numbered 1, 2, 3... in one immediate transaction each, so two
//!   writers never share a number and the order read back is the order written.
//! - A ticket has at most one claim; a claim is taken only if no unexpired claim of another
//!   holder exists (one immediate transaction), renewed only by its holder, and an expired
//!   claim is free for anyone.
//! - An approval is decided once; deciding it again is an error naming the first decision.
//! - Everything read back is parsed strictly: a value that cannot be read is
//!   [`TicketError::Corrupt`] naming the file, table, row and column.
//!
//! # Caveats
//! Nothing here redacts: callers pass text already cleaned (`agent::audit::AuditLog` does).

use chrono::{DateTime, NaiveDateTime, SubsecRound, Utc};
use rusqlite::{OptionalExtension, Transaction, params};
use serde::Serialize;

use super::TicketError;
use super::row::raw_row;
use super::store::{At, Store, ts};

/// Declares a closed set of names stored as text, with `as_str`, `parse`, `ALL`, `Display`
/// and serialisation as the text.
macro_rules! text_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vmeta])* $variant,)+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }

            pub fn parse(s: &str) -> Option<$name> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

text_enum! {
    /// What a session may do (`OPERATOR_SAFETY_MODE`), as recorded on it.
    pub enum SafetyMode {
        Observe => "observe",
        Approve => "approve",
        Execute => "execute",
    }
}

text_enum! {
    /// Where a session is in its life.
    pub enum Outcome {
        Running => "running",
        /// It ran to its end (any stop reason the session loop handled).
        Ended => "ended",
        /// Its process died or stopped under it; marked by whoever found it.
        Interrupted => "interrupted",
        /// It could not go on (the API refused, the audit could not be written...).
        Failed => "failed",
    }
}

text_enum! {
    /// Why a session stopped: the API's last `stop_reason` (spelled as the API spells it),
    /// or why the controller ended it.
    pub enum StopReason {
        EndTurn => "end_turn",
        ToolUse => "tool_use",
        MaxTokens => "max_tokens",
        StopSequence => "stop_sequence",
        PauseTurn => "pause_turn",
        Refusal => "refusal",
        ContextWindowExceeded => "model_context_window_exceeded",
        /// A turn, token or wall-time budget was spent (the `budget` entry says which).
        Budget => "budget",
        /// The controller shut down or the ticket was held or resolved meanwhile.
        Cancelled => "cancelled",
        /// Its process died: found by [`Store::mark_interrupted`].
        Interrupted => "interrupted",
        /// The API answered with an error that ends the session (the `api-error` entry
        /// holds it: 401, 403, spend limit, retries exhausted, a malformed answer).
        ApiError => "api-error",
        /// A tool could not be run at all (not a command that failed: that is a result).
        ToolError => "tool-error",
    }
}

text_enum! {
    /// The controller's own re-check after a session: the only thing that resolves a ticket.
    pub enum Verdict {
        Resolved => "resolved",
        NotResolved => "not-resolved",
    }
}

text_enum! {
    /// Kinds of session entries.
    pub enum AuditKind {
        /// Text the model wrote.
        ModelText => "model-text",
        /// A `tool_use` block: `tool_use_id`, `tool`, and its input in the detail.
        ToolCall => "tool-call",
        /// What went back for a call (same `tool_use_id`): exit code, duration, timed out,
        /// the capped output.
        ToolResult => "tool-result",
        /// The model refused (`stop_reason: refusal`, with its details).
        Refusal => "refusal",
        ApprovalRequested => "approval-requested",
        Approved => "approved",
        Rejected => "rejected",
        /// A shell command let run (why), or a Docker API request the session's proxy let
        /// through (tool `docker-api`: the request, target, reason and the engine's status).
        Allowed => "allowed",
        /// A Docker API request the session's proxy refused, with its reason.
        Denied => "denied",
        /// One Messages API answer: request id, stop reason, usage.
        ApiResponse => "api-response",
        /// A request retried (status, wait).
        ApiRetry => "api-retry",
        ApiError => "api-error",
        /// A budget was spent.
        Budget => "budget",
        /// The controller's re-check after the session.
        Verdict => "verdict",
        /// The session was found with its process gone.
        Interrupted => "interrupted",
        Note => "note",
    }
}

text_enum! {
    /// A person's (or the approval timeout's) answer to a command waiting for approval.
    pub enum Decision {
        Approved => "approved",
        Rejected => "rejected",
    }
}

/// Tokens, as the Messages API counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
}

impl Usage {
    pub fn add(&mut self, other: Usage) {
        self.input = self.input.saturating_add(other.input);
        self.output = self.output.saturating_add(other.output);
        self.cache_read = self.cache_read.saturating_add(other.cache_read);
        self.cache_write = self.cache_write.saturating_add(other.cache_write);
    }
}

/// One agent session, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentSession {
    /// `{UTC timestamp}-{8 hex}`, e.g. `20261201T031500Z-1a2b3c4d` (see [`is_session_id`]).
    pub id: String,
    pub ticket_id: i64,
    pub cluster: String,
    pub service: String,
    pub model: String,
    pub mode: SafetyMode,
    /// Which process ran it ("pid N on HOST").
    pub holder: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub outcome: Outcome,
    pub stop_reason: Option<StopReason>,
    /// The controller's re-check, once done.
    pub verdict: Option<Verdict>,
    /// The model's closing text: its claim, recorded, never trusted.
    pub claim: Option<String>,
    pub tokens: Usage,
    pub turns: u32,
    /// The `request-id` of every API call, in order.
    pub request_ids: Vec<String>,
}

/// What is known when a session starts.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSession {
    pub id: String,
    pub ticket_id: i64,
    pub cluster: String,
    pub service: String,
    pub model: String,
    pub mode: SafetyMode,
    pub holder: String,
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionEnd {
    pub outcome: Outcome,
    pub stop_reason: Option<StopReason>,
    pub claim: Option<String>,
    /// The session's totals; they replace what [`Store::record_turn`] accumulated.
    pub tokens: Usage,
    pub turns: u32,
    pub request_ids: Vec<String>,
}

/// One step of a session.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionEntry {
    /// 1, 2, 3... within the session.
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub kind: AuditKind,
    /// Links a tool call to its result and to the decisions about it.
    pub tool_use_id: Option<String>,
    pub tool: Option<String>,
    pub detail: serde_json::Value,
}

/// An entry to append; its number and time are given by the store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEntry {
    pub kind: AuditKind,
    pub tool_use_id: Option<String>,
    pub tool: Option<String>,
    pub detail: serde_json::Value,
}

impl NewEntry {
    pub fn new(kind: AuditKind, detail: serde_json::Value) -> NewEntry {
        NewEntry {
            kind,
            tool_use_id: None,
            tool: None,
            detail,
        }
    }

    /// The entry is about one tool call.
    pub fn tool(mut self, tool_use_id: &str, tool: &str) -> NewEntry {
        self.tool_use_id = Some(tool_use_id.to_string());
        self.tool = Some(tool.to_string());
        self
    }
}

/// A session with its entries, in order: what `audit show --json` prints and the session
/// file holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionLog {
    pub session: AgentSession,
    pub entries: Vec<SessionEntry>,
}

/// Which sessions to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionQuery {
    pub ticket: Option<i64>,
    /// Started at or after.
    pub since: Option<DateTime<Utc>>,
}

/// A dispatcher's claim on a ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Claim {
    pub ticket_id: i64,
    /// "pid N on HOST": who runs (or is about to run) a session on the ticket.
    pub holder: String,
    pub session_id: Option<String>,
    pub claimed_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// What asking for a claim did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The ticket is this holder's until `expires_at` (taken, or re-taken by the same holder).
    Claimed(Claim),
    /// Another holder has an unexpired claim: hands off.
    HeldBy(Claim),
}

/// A command waiting for (or given) a person's approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Approval {
    pub id: i64,
    pub session_id: String,
    pub ticket_id: i64,
    pub tool_use_id: String,
    pub command: String,
    pub asked_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
    pub decision: Option<Decision>,
    /// Who decided: "human", or "controller" for a timeout or an interrupted session.
    pub decided_by: Option<String>,
    pub reason: Option<String>,
}

/// True for `{YYYYMMDD}T{HHMMSS}Z-{8 lowercase hex}` with a real date and time.
pub fn is_session_id(id: &str) -> bool {
    let Some((stamp, tail)) = id.split_once('-') else {
        return false;
    };
    tail.len() == 8
        && tail
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && stamp.len() == 16
        && NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ").is_ok()
}

raw_row! {
    /// A session row as SQLite holds it.
    struct RawSession {
        row: i64 = "rowid",
        id: String,
        ticket_id: i64,
        cluster: String,
        service: String,
        model: String,
        mode: String,
        holder: String,
        started_at: String,
        ended_at: Option<String>,
        outcome: String,
        stop_reason: Option<String>,
        verdict: Option<String>,
        claim: Option<String>,
        input_tokens: i64,
        output_tokens: i64,
        cache_read_tokens: i64,
        cache_write_tokens: i64,
        turns: i64,
        request_ids: String,
    }
}

fn count(at: &At<'_>, column: &'static str, n: i64) -> Result<u64, TicketError> {
    u64::try_from(n).map_err(|_| at.corrupt(column, &n.to_string()))
}

fn opt_enum<T>(
    at: &At<'_>,
    column: &'static str,
    text: Option<&str>,
    parse: fn(&str) -> Option<T>,
) -> Result<Option<T>, TicketError> {
    text.map(|t| parse(t).ok_or_else(|| at.corrupt(column, t)))
        .transpose()
}

impl RawSession {
    fn parse(self, store: &Store) -> Result<AgentSession, TicketError> {
        let at = At {
            path: store.path(),
            table: "agent_sessions",
            row: self.row,
        };
        if !is_session_id(&self.id) {
            return Err(at.corrupt("id", &self.id));
        }
        let request_ids: Vec<String> = serde_json::from_str(&self.request_ids)
            .map_err(|_| at.corrupt("request_ids", &self.request_ids))?;
        Ok(AgentSession {
            mode: SafetyMode::parse(&self.mode).ok_or_else(|| at.corrupt("mode", &self.mode))?,
            started_at: at.time("started_at", &self.started_at)?,
            ended_at: at.opt_time("ended_at", self.ended_at.as_deref())?,
            outcome: Outcome::parse(&self.outcome)
                .ok_or_else(|| at.corrupt("outcome", &self.outcome))?,
            stop_reason: opt_enum(
                &at,
                "stop_reason",
                self.stop_reason.as_deref(),
                StopReason::parse,
            )?,
            verdict: opt_enum(&at, "verdict", self.verdict.as_deref(), Verdict::parse)?,
            tokens: Usage {
                input: count(&at, "input_tokens", self.input_tokens)?,
                output: count(&at, "output_tokens", self.output_tokens)?,
                cache_read: count(&at, "cache_read_tokens", self.cache_read_tokens)?,
                cache_write: count(&at, "cache_write_tokens", self.cache_write_tokens)?,
            },
            turns: u32::try_from(self.turns)
                .map_err(|_| at.corrupt("turns", &self.turns.to_string()))?,
            request_ids,
            id: self.id,
            ticket_id: self.ticket_id,
            cluster: self.cluster,
            service: self.service,
            model: self.model,
            holder: self.holder,
            claim: self.claim,
        })
    }
}

raw_row! {
    /// A claim row as SQLite holds it.
    struct RawClaim {
        ticket_id: i64,
        holder: String,
        session_id: Option<String>,
        claimed_at: String,
        expires_at: String,
    }
}

raw_row! {
    /// An approval row, with its session's ticket, as SQLite holds it.
    struct RawApproval {
        id: i64 = "a.id",
        session_id: String = "a.session_id",
        ticket_id: i64 = "s.ticket_id",
        tool_use_id: String = "a.tool_use_id",
        command: String = "a.command",
        asked_at: String = "a.asked_at",
        decided_at: Option<String> = "a.decided_at",
        decision: Option<String> = "a.decision",
        decided_by: Option<String> = "a.decided_by",
        reason: Option<String> = "a.reason",
    }
}

fn approval_of(store: &Store, raw: RawApproval) -> Result<Approval, TicketError> {
    let at = At {
        path: store.path(),
        table: "agent_approvals",
        row: raw.id,
    };
    Ok(Approval {
        asked_at: at.time("asked_at", &raw.asked_at)?,
        decided_at: at.opt_time("decided_at", raw.decided_at.as_deref())?,
        decision: opt_enum(&at, "decision", raw.decision.as_deref(), Decision::parse)?,
        id: raw.id,
        session_id: raw.session_id,
        ticket_id: raw.ticket_id,
        tool_use_id: raw.tool_use_id,
        command: raw.command,
        decided_by: raw.decided_by,
        reason: raw.reason,
    })
}

/// Runs a query and collects its raw rows.
pub(super) fn rows<T>(
    store: &Store,
    conn: &rusqlite::Connection,
    doing: &'static str,
    sql: &str,
    params: impl rusqlite::Params,
    map: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, TicketError> {
    let mut stmt = conn.prepare(sql).map_err(store.err(doing))?;
    stmt.query_map(params, map)
        .map_err(store.err(doing))?
        .collect::<Result<_, _>>()
        .map_err(store.err(doing))
}

impl Store {
    fn sessions_where(
        &self,
        conn: &rusqlite::Connection,
        doing: &'static str,
        clause: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<AgentSession>, TicketError> {
        let sql = format!(
            "SELECT {} FROM agent_sessions {clause}",
            RawSession::COLUMNS
        );
        rows(self, conn, doing, &sql, params, RawSession::read)?
            .into_iter()
            .map(|r| r.parse(self))
            .collect()
    }

    fn session_tx(
        &self,
        conn: &rusqlite::Connection,
        id: &str,
    ) -> Result<Option<AgentSession>, TicketError> {
        Ok(self
            .sessions_where(conn, "read a session", "WHERE id = ?1", params![id])?
            .into_iter()
            .next())
    }

    fn require_session(
        &self,
        conn: &rusqlite::Connection,
        id: &str,
    ) -> Result<AgentSession, TicketError> {
        self.session_tx(conn, id)?
            .ok_or_else(|| TicketError::SessionNotFound(id.to_string()))
    }

    /// Records a session's start, `running`. The ticket must exist; the id must have the
    /// session shape and be new.
    pub fn session_started(
        &self,
        new: &NewSession,
        now: DateTime<Utc>,
    ) -> Result<AgentSession, TicketError> {
        if !is_session_id(&new.id) {
            return Err(TicketError::BadSessionId(new.id.clone()));
        }
        self.write("record a session's start", |tx| {
            let exists: Option<i64> = tx
                .query_row(
                    "SELECT id FROM tickets WHERE id = ?1",
                    params![new.ticket_id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(self.err("look up a ticket"))?;
            if exists.is_none() {
                return Err(TicketError::NotFound(new.ticket_id));
            }
            tx.execute(
                "INSERT INTO agent_sessions (id, ticket_id, cluster, service, model, mode, holder, started_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    new.id,
                    new.ticket_id,
                    new.cluster,
                    new.service,
                    new.model,
                    new.mode.as_str(),
                    new.holder,
                    ts(now)
                ],
            )
            .map_err(self.err("record a session's start"))?;
            self.require_session(tx, &new.id)
        })
    }

    /// Appends an entry to a session; its number is the next one, given in the transaction.
    pub fn append_entry(
        &self,
        session_id: &str,
        entry: &NewEntry,
        now: DateTime<Utc>,
    ) -> Result<SessionEntry, TicketError> {
        self.write("append a session entry", |tx| {
            let seq: Option<i64> = tx
                .query_row(
                    "SELECT (SELECT coalesce(max(seq), 0) + 1 FROM agent_entries WHERE session_id = ?1) \
                     FROM agent_sessions WHERE id = ?1",
                    params![session_id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(self.err("number a session entry"))?;
            let seq = seq.ok_or_else(|| TicketError::SessionNotFound(session_id.to_string()))?;
            tx.execute(
                "INSERT INTO agent_entries (session_id, seq, at, kind, tool_use_id, tool, detail) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    session_id,
                    seq,
                    ts(now),
                    entry.kind.as_str(),
                    entry.tool_use_id,
                    entry.tool,
                    entry.detail.to_string()
                ],
            )
            .map_err(self.err("append a session entry"))?;
            Ok(SessionEntry {
                seq,
                // As stored and read back: microseconds.
                at: now.trunc_subsecs(6),
                kind: entry.kind,
                tool_use_id: entry.tool_use_id.clone(),
                tool: entry.tool.clone(),
                detail: entry.detail.clone(),
            })
        })
    }

    /// Counts one API call against a session as it happens (a turn, its tokens, its request
    /// id), so a session cut short by a crash still shows what it spent.
    pub fn record_turn(
        &self,
        session_id: &str,
        request_id: Option<&str>,
        tokens: Usage,
    ) -> Result<AgentSession, TicketError> {
        self.write("count a session's turn", |tx| {
            let mut session = self.require_session(tx, session_id)?;
            session.turns = session.turns.saturating_add(1);
            session.tokens.add(tokens);
            if let Some(id) = request_id {
                session.request_ids.push(id.to_string());
            }
            self.save_totals_tx(tx, &session)?;
            Ok(session)
        })
    }

    fn save_totals_tx(&self, tx: &Transaction<'_>, s: &AgentSession) -> Result<(), TicketError> {
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        tx.execute(
            "UPDATE agent_sessions SET input_tokens = ?2, output_tokens = ?3, cache_read_tokens = ?4, \
             cache_write_tokens = ?5, turns = ?6, request_ids = ?7 WHERE id = ?1",
            params![
                s.id,
                n(s.tokens.input),
                n(s.tokens.output),
                n(s.tokens.cache_read),
                n(s.tokens.cache_write),
                i64::from(s.turns),
                serde_json::Value::from(s.request_ids.clone()).to_string()
            ],
        )
        .map_err(self.err("save a session's totals"))?;
        Ok(())
    }

    /// Records how a running session ended. Returns the session, or `None` (and changes
    /// nothing) if it was no longer running (marked interrupted meanwhile, or ended twice).
    pub fn session_ended(
        &self,
        session_id: &str,
        end: &SessionEnd,
        now: DateTime<Utc>,
    ) -> Result<Option<AgentSession>, TicketError> {
        self.write("record a session's end", |tx| {
            let mut session = self.require_session(tx, session_id)?;
            if session.outcome != Outcome::Running {
                return Ok(None);
            }
            tx.execute(
                "UPDATE agent_sessions SET outcome = ?2, stop_reason = ?3, claim = ?4, ended_at = ?5 \
                 WHERE id = ?1",
                params![
                    session_id,
                    end.outcome.as_str(),
                    end.stop_reason.map(StopReason::as_str),
                    end.claim,
                    ts(now)
                ],
            )
            .map_err(self.err("record a session's end"))?;
            session.tokens = end.tokens;
            session.turns = end.turns;
            session.request_ids = end.request_ids.clone();
            self.save_totals_tx(tx, &session)?;
            self.require_session(tx, session_id).map(Some)
        })
    }

    /// Records the controller's re-check of a session, once. False if it had one already.
    pub fn set_verdict(&self, session_id: &str, verdict: Verdict) -> Result<bool, TicketError> {
        self.write("record a session's verdict", |tx| {
            self.require_session(tx, session_id)?;
            let changed = tx
                .execute(
                    "UPDATE agent_sessions SET verdict = ?2 WHERE id = ?1 AND verdict IS NULL",
                    params![session_id, verdict.as_str()],
                )
                .map_err(self.err("record a session's verdict"))?;
            Ok(changed > 0)
        })
    }

    /// Sessions, newest first.
    pub fn sessions(&self, query: &SessionQuery) -> Result<Vec<AgentSession>, TicketError> {
        let conn = self.conn();
        self.sessions_where(
            &conn,
            "list sessions",
            "WHERE (?1 IS NULL OR ticket_id = ?1) AND (?2 IS NULL OR started_at >= ?2) \
             ORDER BY started_at DESC, id DESC",
            params![query.ticket, query.since.map(ts)],
        )
    }

    /// A ticket's sessions, oldest first (the order of its timeline).
    pub fn sessions_of_ticket(&self, ticket_id: i64) -> Result<Vec<AgentSession>, TicketError> {
        let conn = self.conn();
        self.sessions_where(
            &conn,
            "list a ticket's sessions",
            "WHERE ticket_id = ?1 ORDER BY started_at, id",
            params![ticket_id],
        )
    }

    /// One session with its entries in order, or `None` for an unknown id.
    pub fn session(&self, session_id: &str) -> Result<Option<SessionLog>, TicketError> {
        let conn = self.conn();
        let Some(session) = self.session_tx(&conn, session_id)? else {
            return Ok(None);
        };
        raw_row! {
            struct RawEntry {
                row: i64 = "rowid",
                seq: i64,
                at: String,
                kind: String,
                tool_use_id: Option<String>,
                tool: Option<String>,
                detail: String,
            }
        }
        let raw = rows(
            self,
            &conn,
            "read a session's entries",
            &format!(
                "SELECT {} FROM agent_entries WHERE session_id = ?1 ORDER BY seq",
                RawEntry::COLUMNS
            ),
            params![session_id],
            RawEntry::read,
        )?;
        let entries = raw
            .into_iter()
            .map(|e| {
                let RawEntry {
                    row,
                    seq,
                    at,
                    kind,
                    tool_use_id,
                    tool,
                    detail,
                } = e;
                let here = At {
                    path: self.path(),
                    table: "agent_entries",
                    row,
                };
                Ok(SessionEntry {
                    seq,
                    at: here.time("at", &at)?,
                    kind: AuditKind::parse(&kind).ok_or_else(|| here.corrupt("kind", &kind))?,
                    detail: serde_json::from_str(&detail)
                        .map_err(|_| here.corrupt("detail", &detail))?,
                    tool_use_id,
                    tool,
                })
            })
            .collect::<Result<_, TicketError>>()?;
        Ok(Some(SessionLog { session, entries }))
    }

    /// Tokens spent by sessions started at or after `since` (the controller's rolling budget).
    pub fn usage_since(&self, since: DateTime<Utc>) -> Result<Usage, TicketError> {
        let mut total = Usage::default();
        for s in self.sessions(&SessionQuery {
            ticket: None,
            since: Some(since),
        })? {
            total.add(s.tokens);
        }
        Ok(total)
    }

    fn claim_of(&self, raw: RawClaim) -> Result<Claim, TicketError> {
        let at = At {
            path: self.path(),
            table: "agent_claims",
            row: raw.ticket_id,
        };
        Ok(Claim {
            claimed_at: at.time("claimed_at", &raw.claimed_at)?,
            expires_at: at.time("expires_at", &raw.expires_at)?,
            ticket_id: raw.ticket_id,
            holder: raw.holder,
            session_id: raw.session_id,
        })
    }

    fn claim_tx(
        &self,
        conn: &rusqlite::Connection,
        ticket_id: i64,
    ) -> Result<Option<Claim>, TicketError> {
        let sql = format!(
            "SELECT {} FROM agent_claims WHERE ticket_id = ?1",
            RawClaim::COLUMNS
        );
        rows(
            self,
            conn,
            "read a claim",
            &sql,
            params![ticket_id],
            RawClaim::read,
        )?
        .into_iter()
        .next()
        .map(|r| self.claim_of(r))
        .transpose()
    }

    /// Claims a ticket for `holder` until `expires_at`, unless another holder has a claim
    /// that has not expired at `now`. The same holder re-claiming updates its claim (and the
    /// session it names). One immediate transaction: two dispatchers never both win.
    pub fn claim(
        &self,
        ticket_id: i64,
        holder: &str,
        session_id: Option<&str>,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<ClaimOutcome, TicketError> {
        self.write("claim a ticket", |tx| {
            let exists: Option<i64> = tx
                .query_row(
                    "SELECT id FROM tickets WHERE id = ?1",
                    params![ticket_id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(self.err("look up a ticket"))?;
            if exists.is_none() {
                return Err(TicketError::NotFound(ticket_id));
            }
            if let Some(current) = self.claim_tx(tx, ticket_id)?
                && current.holder != holder
                && current.expires_at > now
            {
                return Ok(ClaimOutcome::HeldBy(current));
            }
            tx.execute(
                "INSERT INTO agent_claims (ticket_id, holder, session_id, claimed_at, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (ticket_id) DO UPDATE SET holder = excluded.holder, \
                 session_id = excluded.session_id, claimed_at = excluded.claimed_at, \
                 expires_at = excluded.expires_at",
                params![ticket_id, holder, session_id, ts(now), ts(expires_at)],
            )
            .map_err(self.err("claim a ticket"))?;
            let claim = self
                .claim_tx(tx, ticket_id)?
                .ok_or(TicketError::NotFound(ticket_id))?;
            Ok(ClaimOutcome::Claimed(claim))
        })
    }

    /// Extends `holder`'s claim to `expires_at`. While the row is still this holder's, the
    /// claim is extended even if it lapsed (nobody took it meanwhile); once another holder
    /// took it, or it was released, [`TicketError::ClaimLost`]: stop working on the ticket.
    pub fn renew_claim(
        &self,
        ticket_id: i64,
        holder: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<Claim, TicketError> {
        self.write("renew a claim", |tx| {
            let changed = tx
                .execute(
                    "UPDATE agent_claims SET expires_at = ?3 WHERE ticket_id = ?1 AND holder = ?2",
                    params![ticket_id, holder, ts(expires_at)],
                )
                .map_err(self.err("renew a claim"))?;
            let current = self.claim_tx(tx, ticket_id)?;
            match current {
                Some(claim) if changed > 0 => Ok(claim),
                other => Err(TicketError::ClaimLost {
                    ticket: ticket_id,
                    holder: holder.to_string(),
                    now_held_by: other.map(|c| c.holder),
                }),
            }
        })
    }

    /// Drops `holder`'s claim on a ticket. False if it had none (another holder's claim is
    /// never touched).
    pub fn release_claim(&self, ticket_id: i64, holder: &str) -> Result<bool, TicketError> {
        self.write("release a claim", |tx| {
            let changed = tx
                .execute(
                    "DELETE FROM agent_claims WHERE ticket_id = ?1 AND holder = ?2",
                    params![ticket_id, holder],
                )
                .map_err(self.err("release a claim"))?;
            Ok(changed > 0)
        })
    }

    /// The claim on a ticket, expired or not.
    pub fn claim_of_ticket(&self, ticket_id: i64) -> Result<Option<Claim>, TicketError> {
        let conn = self.conn();
        self.claim_tx(&conn, ticket_id)
    }

    /// Every claim not expired at `now`, by ticket.
    pub fn live_claims(&self, now: DateTime<Utc>) -> Result<Vec<Claim>, TicketError> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {} FROM agent_claims WHERE expires_at > ?1 ORDER BY ticket_id",
            RawClaim::COLUMNS
        );
        rows(
            self,
            &conn,
            "list claims",
            &sql,
            params![ts(now)],
            RawClaim::read,
        )?
        .into_iter()
        .map(|r| self.claim_of(r))
        .collect()
    }

    fn approvals_where(
        &self,
        conn: &rusqlite::Connection,
        doing: &'static str,
        clause: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<Approval>, TicketError> {
        let sql = format!(
            "SELECT {} FROM agent_approvals a \
             JOIN agent_sessions s ON s.id = a.session_id {clause}",
            RawApproval::COLUMNS
        );
        rows(self, conn, doing, &sql, params, RawApproval::read)?
            .into_iter()
            .map(|r| approval_of(self, r))
            .collect()
    }

    /// Records that a session's command waits for a person. Asking again for the same
    /// tool call returns the approval already recorded.
    pub fn request_approval(
        &self,
        session_id: &str,
        tool_use_id: &str,
        command: &str,
        now: DateTime<Utc>,
    ) -> Result<Approval, TicketError> {
        self.write("record an approval request", |tx| {
            self.require_session(tx, session_id)?;
            tx.execute(
                "INSERT INTO agent_approvals (session_id, tool_use_id, command, asked_at) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (session_id, tool_use_id) DO NOTHING",
                params![session_id, tool_use_id, command, ts(now)],
            )
            .map_err(self.err("record an approval request"))?;
            self.approvals_where(
                tx,
                "read an approval",
                "WHERE a.session_id = ?1 AND a.tool_use_id = ?2",
                params![session_id, tool_use_id],
            )?
            .into_iter()
            .next()
            .ok_or_else(|| TicketError::SessionNotFound(session_id.to_string()))
        })
    }

    pub fn approval(&self, id: i64) -> Result<Option<Approval>, TicketError> {
        let conn = self.conn();
        Ok(self
            .approvals_where(&conn, "read an approval", "WHERE a.id = ?1", params![id])?
            .into_iter()
            .next())
    }

    /// Undecided approvals of running sessions (of one ticket, or all), oldest first: what
    /// `tickets approve|reject` act on.
    pub fn pending_approvals(&self, ticket_id: Option<i64>) -> Result<Vec<Approval>, TicketError> {
        let conn = self.conn();
        self.approvals_where(
            &conn,
            "list pending approvals",
            "WHERE a.decision IS NULL AND s.outcome = 'running' AND (?1 IS NULL OR s.ticket_id = ?1) \
             ORDER BY a.id",
            params![ticket_id],
        )
    }

    /// Decides an approval, once: deciding one already decided is
    /// [`TicketError::ApprovalDecided`] (a person and the timeout racing: the first wins).
    pub fn decide_approval(
        &self,
        id: i64,
        decision: Decision,
        by: &str,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Approval, TicketError> {
        self.write("decide an approval", |tx| {
            let before = self
                .approvals_where(tx, "read an approval", "WHERE a.id = ?1", params![id])?
                .into_iter()
                .next()
                .ok_or(TicketError::ApprovalNotFound(id))?;
            if let (Some(decision), Some(at)) = (before.decision, before.decided_at) {
                return Err(TicketError::ApprovalDecided {
                    id,
                    decision: decision.as_str(),
                    by: before.decided_by.unwrap_or_default(),
                    at: ts(at),
                });
            }
            tx.execute(
                "UPDATE agent_approvals SET decision = ?2, decided_by = ?3, reason = ?4, decided_at = ?5 \
                 WHERE id = ?1 AND decision IS NULL",
                params![id, decision.as_str(), by, reason, ts(now)],
            )
            .map_err(self.err("decide an approval"))?;
            self.approvals_where(tx, "read an approval", "WHERE a.id = ?1", params![id])?
                .into_iter()
                .next()
                .ok_or(TicketError::ApprovalNotFound(id))
        })
    }

    /// Sessions still `running` (of one holder, or any) whose holder has no unexpired claim
    /// on their ticket at `now`: left behind by a process that died. A process that runs
    /// sessions without claims must ask before it starts any (every running session of its
    /// own holder text would be listed).
    pub fn interrupted_sessions(
        &self,
        holder: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Vec<AgentSession>, TicketError> {
        let conn = self.conn();
        self.sessions_where(
            &conn,
            "find interrupted sessions",
            "WHERE outcome = 'running' AND (?1 IS NULL OR holder = ?1) AND NOT EXISTS \
             (SELECT 1 FROM agent_claims c WHERE c.ticket_id = agent_sessions.ticket_id \
              AND c.holder = agent_sessions.holder AND c.expires_at > ?2) \
             ORDER BY started_at, id",
            params![holder, ts(now)],
        )
    }

    /// Marks a running session interrupted (ended now, stop reason `interrupted`), with an
    /// `interrupted` entry saying why; rejects its undecided approvals (by `controller`) and
    /// drops its holder's claim on the ticket. Returns false if it was not running.
    pub fn mark_interrupted(
        &self,
        session_id: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, TicketError> {
        self.write("mark a session interrupted", |tx| {
            let session = self.require_session(tx, session_id)?;
            let changed = tx
                .execute(
                    "UPDATE agent_sessions SET outcome = 'interrupted', stop_reason = 'interrupted', \
                     ended_at = ?2 WHERE id = ?1 AND outcome = 'running'",
                    params![session_id, ts(now)],
                )
                .map_err(self.err("mark a session interrupted"))?;
            if changed == 0 {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO agent_entries (session_id, seq, at, kind, detail) VALUES (?1, \
                 (SELECT coalesce(max(seq), 0) + 1 FROM agent_entries WHERE session_id = ?1), ?2, 'interrupted', ?3)",
                params![
                    session_id,
                    ts(now),
                    serde_json::json!({"reason": reason}).to_string()
                ],
            )
            .map_err(self.err("mark a session interrupted"))?;
            tx.execute(
                "UPDATE agent_approvals SET decision = 'rejected', decided_by = 'controller', \
                 reason = 'the session was interrupted', decided_at = ?2 \
                 WHERE session_id = ?1 AND decision IS NULL",
                params![session_id, ts(now)],
            )
            .map_err(self.err("mark a session interrupted"))?;
            tx.execute(
                "DELETE FROM agent_claims WHERE ticket_id = ?1 AND holder = ?2",
                params![session.ticket_id, session.holder],
            )
            .map_err(self.err("mark a session interrupted"))?;
            Ok(true)
        })
    }
}

/// The audit's part of [`super::Journal`], the one async way into the store: every call
/// runs on a blocking thread, counts as a round trip, and a write keeps
/// `operator_store_writable` in step.
impl super::Journal {
    pub async fn session_started(
        &self,
        new: NewSession,
        now: DateTime<Utc>,
    ) -> Result<AgentSession, TicketError> {
        self.write(move |s| s.session_started(&new, now)).await
    }

    pub async fn append_entry(
        &self,
        session_id: String,
        entry: NewEntry,
        now: DateTime<Utc>,
    ) -> Result<SessionEntry, TicketError> {
        self.write(move |s| s.append_entry(&session_id, &entry, now))
            .await
    }

    pub async fn record_turn(
        &self,
        session_id: String,
        request_id: Option<String>,
        tokens: Usage,
    ) -> Result<AgentSession, TicketError> {
        self.write(move |s| s.record_turn(&session_id, request_id.as_deref(), tokens))
            .await
    }

    pub async fn session_ended(
        &self,
        session_id: String,
        end: SessionEnd,
        now: DateTime<Utc>,
    ) -> Result<Option<AgentSession>, TicketError> {
        self.write(move |s| s.session_ended(&session_id, &end, now))
            .await
    }

    pub async fn set_verdict(
        &self,
        session_id: String,
        verdict: Verdict,
    ) -> Result<bool, TicketError> {
        self.write(move |s| s.set_verdict(&session_id, verdict))
            .await
    }

    pub async fn sessions(&self, query: SessionQuery) -> Result<Vec<AgentSession>, TicketError> {
        self.call(move |s| s.sessions(&query)).await
    }

    pub async fn sessions_of_ticket(
        &self,
        ticket_id: i64,
    ) -> Result<Vec<AgentSession>, TicketError> {
        self.call(move |s| s.sessions_of_ticket(ticket_id)).await
    }

    pub async fn session(&self, session_id: String) -> Result<Option<SessionLog>, TicketError> {
        self.call(move |s| s.session(&session_id)).await
    }

    pub async fn usage_since(&self, since: DateTime<Utc>) -> Result<Usage, TicketError> {
        self.call(move |s| s.usage_since(since)).await
    }

    pub async fn claim(
        &self,
        ticket_id: i64,
        holder: String,
        session_id: Option<String>,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<ClaimOutcome, TicketError> {
        self.write(move |s| s.claim(ticket_id, &holder, session_id.as_deref(), expires_at, now))
            .await
    }

    pub async fn renew_claim(
        &self,
        ticket_id: i64,
        holder: String,
        expires_at: DateTime<Utc>,
    ) -> Result<Claim, TicketError> {
        self.write(move |s| s.renew_claim(ticket_id, &holder, expires_at))
            .await
    }

    pub async fn release_claim(&self, ticket_id: i64, holder: String) -> Result<bool, TicketError> {
        self.write(move |s| s.release_claim(ticket_id, &holder))
            .await
    }

    pub async fn live_claims(&self, now: DateTime<Utc>) -> Result<Vec<Claim>, TicketError> {
        self.call(move |s| s.live_claims(now)).await
    }

    pub async fn request_approval(
        &self,
        session_id: String,
        tool_use_id: String,
        command: String,
        now: DateTime<Utc>,
    ) -> Result<Approval, TicketError> {
        self.write(move |s| s.request_approval(&session_id, &tool_use_id, &command, now))
            .await
    }

    pub async fn approval(&self, id: i64) -> Result<Option<Approval>, TicketError> {
        self.call(move |s| s.approval(id)).await
    }

    pub async fn pending_approvals(
        &self,
        ticket_id: Option<i64>,
    ) -> Result<Vec<Approval>, TicketError> {
        self.call(move |s| s.pending_approvals(ticket_id)).await
    }

    pub async fn decide_approval(
        &self,
        id: i64,
        decision: Decision,
        by: String,
        reason: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<Approval, TicketError> {
        self.write(move |s| s.decide_approval(id, decision, &by, reason.as_deref(), now))
            .await
    }

    pub async fn interrupted_sessions(
        &self,
        holder: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<Vec<AgentSession>, TicketError> {
        self.call(move |s| s.interrupted_sessions(holder.as_deref(), now))
            .await
    }

    pub async fn mark_interrupted(
        &self,
        session_id: String,
        reason: String,
        now: DateTime<Utc>,
    ) -> Result<bool, TicketError> {
        self.write(move |s| s.mark_interrupted(&session_id, &reason, now))
            .await
    }
}

#[cfg(test)]
mod tests;
