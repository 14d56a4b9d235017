//! Tickets: every drift episode is one durable SQLite row with a timeline. The ticket store
//! is the controller's memory: what broke, what was done, whether it helped, and the
//! per-service repair budget, all surviving a controller crash.
//!
//! # Guarantees
//! - At most one unresolved ticket per fingerprint (cluster, service, drift family),
//!   enforced by a unique partial index and an upsert in one immediate transaction, so
//!   concurrent writers (threads or processes) never duplicate a ticket.
//! - A drift that returns within the cooldown after its ticket resolved reopens that ticket
//!   and counts a flap.
//! - Times are UTC, RFC 3339 with microseconds.
//! - The database and its folder are readable by their owner only; a file that is not an
//!   operator ticket database (or is from a newer version) is refused and never written.

//!
//! # Layout
//! `db` opens the file and owns the migrations; `store` is the blocking SQL; `journal` is
//! the async facade everyone else uses; `query` the read-only episode views; `audit` the
//! agent's sessions, claims and approvals (reached, like the tickets, through `Journal`).
//! `chaos` the fault ledger of chaos drills (runs, and every fault written before it is applied).
//! `row` declares each raw row once: its `SELECT` list and its reading by column name.

mod adoptions;
mod audit;
mod budget;
mod chaos;
mod db;
mod gate;
mod journal;
mod model;
mod owner;
mod query;
mod requests;
mod row;
mod store;

pub use adoptions::Adoption;
pub use audit::{
    AgentSession, Approval, AuditKind, Claim, ClaimOutcome, Decision, NewEntry, NewSession,
    Outcome, SafetyMode, SessionEnd, SessionEntry, SessionLog, SessionQuery, StopReason, Usage,
    Verdict, is_session_id,
};
pub use budget::Budget;
pub use chaos::{ChaosRun, FaultRow, FaultState, NewFault};
pub use db::{DEFAULT_DB, MIGRATIONS, Migration, default_path, require_existing};
pub use gate::{GateState, UnderWay};
pub use journal::{Journal, Recheck};
pub use model::{Actor, Cause, EntryKind, Sighting, Status, Ticket, TimelineEntry};
pub use owner::{Ownership, host as host_name, lock_path};
pub use query::{Episode, TicketQuery};
pub use requests::AgentRequest;
pub use store::{DriftSighting, Override, Selector, ServiceView, Store};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TicketError {
    #[error("cannot create the folder {path} for the ticket database: {source}")]
    Folder {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the ticket database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "{path} is not an operator ticket database ({reason}); refusing to touch it \
         (point --db or OPERATOR_DB at another file)"
    )]
    Foreign { path: PathBuf, reason: String },
    #[error(
        "{path} was written by a newer operator (schema version {found}, this one knows up to \
         {known}); refusing to touch it: upgrade operator"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("{path}: schema migration {step} failed: {reason}; the file is unchanged")]
    Migration {
        path: PathBuf,
        step: usize,
        reason: String,
    },
    #[error(
        "{path} has schema version {found}, written by an older operator; this one reads {known}. \
         It is migrated by `operator run` or an `operator tickets` command that changes a \
         ticket (a command that only reads, such as `status` or `tickets list`, never changes \
         it); an older operator cannot read it afterwards"
    )]
    NotMigrated {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error(
        "{db} is in use by another controller ({holder}); one controller may act on a ticket \
         database at a time: stop that one, or point --db / OPERATOR_DB at another file"
    )]
    Owned { db: PathBuf, holder: String },
    #[error("cannot lock {path}: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set the permissions of {path}: {source}")]
    Permissions {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("ticket database {path}: failed to {doing}: {source}")]
    Query {
        path: PathBuf,
        doing: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "no ticket database at {path} (the controller creates it: `operator run`; or point --db / OPERATOR_DB at it)"
    )]
    Missing { path: PathBuf },
    #[error(
        "{path} is a folder, not a ticket database file: point --db / OPERATOR_DB at a file \
         (e.g. {}/tickets.db)",
        path.display()
    )]
    IsFolder { path: PathBuf },
    #[error("cannot read the ticket database {path}: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A failure to open or lock the database, explained from the file system's side (see
    /// `db::explain`): what is wrong, what the system said, and the fix.
    #[error("cannot use the ticket database {path}: {problem} ({cause}); {fix}")]
    Unusable {
        path: PathBuf,
        problem: String,
        cause: String,
        fix: String,
    },
    #[error("no ticket with id {0} (see `operator tickets list`)")]
    NotFound(i64),
    #[error("ticket {id} is {status}; {what}")]
    WrongState {
        id: i64,
        status: Status,
        what: &'static str,
    },
    #[error(
        "ticket database {path}: {table} row {row} has an unreadable {column} {value:?}; \
         the file was edited by hand or is damaged (restore it, or move it aside and let \
         `operator run` start a new one)"
    )]
    Corrupt {
        path: PathBuf,
        table: &'static str,
        row: i64,
        column: &'static str,
        value: String,
    },
    #[error("no agent session {0} (see `operator audit list`)")]
    SessionNotFound(String),
    #[error(
        "{0:?} is not a session id (the form is {{UTC time}}-{{8 hex}}, e.g. 20261201T031500Z-1a2b3c4d)"
    )]
    BadSessionId(String),
    #[error("no approval with id {0}")]
    ApprovalNotFound(i64),
    #[error("approval {id} was already {decision} by {by} at {at}; a decision is final")]
    ApprovalDecided {
        id: i64,
        decision: &'static str,
        by: String,
        at: String,
    },
    #[error(
        "the claim of {holder} on ticket {ticket} is gone ({}); stop working on it",
        match now_held_by { Some(h) => format!("now held by {h}"), None => "released".to_string() }
    )]
    ClaimLost {
        ticket: i64,
        holder: String,
        now_held_by: Option<String>,
    },
    #[error("the ticket database task stopped unexpectedly: {0}")]
    Task(String),
}

#[cfg(test)]
mod tests;
