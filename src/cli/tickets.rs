//! `operator tickets ...`: read and act on the ticket store.

use std::process::ExitCode;

use chrono::{SecondsFormat, Utc};

use crate::tickets::{Status, Store, Ticket};

use super::table::Table;
use super::{Failure, TicketsCommand, outln};

fn time(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn json(ticket: &Ticket) -> serde_json::Value {
    serde_json::json!({
        "id": ticket.id,
        "cluster": ticket.cluster,
        "service": ticket.service,
        "drift": ticket.drift,
        "status": ticket.status,
        "held": ticket.held,
        "occurrences": ticket.occurrences,
        "flaps": ticket.flaps,
        "actions": ticket.actions,
        "detail": ticket.detail,
        "opened_at": ticket.opened_at,
        "last_seen_at": ticket.last_seen_at,
        "resolved_at": ticket.resolved_at,
        "resolved_by": ticket.resolved_by,
    })
}

fn print_table(tickets: &[Ticket]) -> Result<(), Failure> {
    let mut table = Table::new(&[
        "ID", "STATUS", "HELD", "CLUSTER", "SERVICE", "DRIFT", "SEEN", "OPENED", "DETAIL",
    ]);
    for t in tickets {
        let status = match (t.status, t.resolved_by) {
            (Status::Resolved, Some(cause)) => format!("resolved:{}", cause.as_str()),
            (status, _) => status.as_str().to_string(),
        };
        table.row(vec![
            t.id.to_string(),
            status,
            if t.held { "held" } else { "-" }.to_string(),
            t.cluster.clone(),
            t.service.clone(),
            t.drift.to_string(),
            t.occurrences.to_string(),
            time(t.opened_at),
            t.detail.clone(),
        ]);
    }
    table.print()?;
    if tickets.is_empty() {
        outln!("(no tickets)");
    }
    Ok(())
}

fn print_one(ticket: &Ticket, json_out: bool) -> Result<(), Failure> {
    if json_out {
        outln!("{}", serde_json::to_string_pretty(&json(ticket))?);
    } else {
        print_table(std::slice::from_ref(ticket))?;
    }
    Ok(())
}

/// Opens an existing database only to read it: nothing is created, migrated or written, so
/// listing works on a full disk, a read-only mount or a folder this user may not write, and
/// beside a running controller. A database an older operator wrote is refused with the fix.
pub(super) fn open_to_read(path: &std::path::Path) -> Result<Store, crate::tickets::TicketError> {
    Store::open_read_only(path)
}

/// Opens an existing database to change it; a mistyped `--db` is an error, not a new file.
pub(super) fn open_to_change(path: &std::path::Path) -> Result<Store, crate::tickets::TicketError> {
    crate::tickets::require_existing(path)?;
    Store::open(path)
}

pub fn run(command: TicketsCommand) -> Result<ExitCode, Failure> {
    let now = Utc::now();
    match command {
        TicketsCommand::List {
            status,
            json: as_json,
            db,
        } => {
            let store = open_to_read(&db.path())?;
            let tickets = match status.as_deref() {
                Some("held") => {
                    let mut all = store.list(None)?;
                    all.retain(|t| t.held);
                    all
                }
                other => store.list(other.and_then(Status::parse))?,
            };
            if as_json {
                let rows: Vec<_> = tickets.iter().map(json).collect();
                outln!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print_table(&tickets)?;
            }
        }
        TicketsCommand::Show {
            id,
            json: as_json,
            db,
        } => {
            let store = open_to_read(&db.path())?;
            let ticket = store
                .get(id)?
                .ok_or(crate::tickets::TicketError::NotFound(id))?;
            let timeline = store.timeline(id)?;
            let sessions = store.sessions_of_ticket(id)?;
            if as_json {
                let mut value = json(&ticket);
                value["fingerprint"] = ticket.fingerprint.to_string().into();
                value["timeline"] = serde_json::to_value(&timeline)?;
                value["sessions"] = serde_json::to_value(&sessions)?;
                outln!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                print_table(std::slice::from_ref(&ticket))?;
                outln!("\nTIMELINE");
                for e in &timeline {
                    outln!("  {}  {:<16} {}", time(e.at), e.kind, e.detail);
                }
                if !sessions.is_empty() {
                    outln!("\nAGENT SESSIONS (operator audit show SESSION)");
                    for s in &sessions {
                        outln!(
                            "  {}  started {}  stop {}  verdict {}",
                            s.id,
                            time(s.started_at),
                            super::audit::stop(s),
                            s.verdict.map_or("-".into(), |v| v.to_string())
                        );
                    }
                }
            }
        }
        TicketsCommand::Resolve { id, note, db } => {
            let store = open_to_change(&db.path())?;
            print_one(&store.resolve_by_human(id, note.as_deref(), now)?, false)?;
        }
        TicketsCommand::Hold { id, db } => {
            let store = open_to_change(&db.path())?;
            print_one(&store.set_held(id, true, now)?, false)?;
        }
        TicketsCommand::Unhold { id, db } => {
            let store = open_to_change(&db.path())?;
            print_one(&store.set_held(id, false, now)?, false)?;
        }
        TicketsCommand::Retry {
            id,
            force,
            reason,
            db,
        } => {
            let store = open_to_change(&db.path())?;
            let force = force.then(|| crate::tickets::Override {
                user: std::env::var("USER").unwrap_or_else(|_| "a person".into()),
                reason,
            });
            print_one(&store.retry(id, force.as_ref(), now)?, false)?;
        }
        TicketsCommand::Approve { id, reason, db } => {
            decide(&db, id, crate::tickets::Decision::Approved, reason, now)?;
        }
        TicketsCommand::Reject { id, reason, db } => {
            decide(&db, id, crate::tickets::Decision::Rejected, reason, now)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Decides the command an agent session of ticket `id` waits on. Exactly one must wait: none
/// is an error, and so are several (each is decided in turn as the session asks).
fn decide(
    db: &super::DbArgs,
    id: i64,
    decision: crate::tickets::Decision,
    reason: Option<String>,
    now: chrono::DateTime<Utc>,
) -> Result<(), Failure> {
    let store = open_to_change(&db.path())?;
    store
        .get(id)?
        .ok_or(crate::tickets::TicketError::NotFound(id))?;
    let waiting = store.pending_approvals(Some(id))?;
    let Some(asked) = waiting.first() else {
        return Err(Failure::new(format!(
            "ticket {id} has no agent command waiting for a decision"
        )));
    };
    let by = std::env::var("USER").unwrap_or_else(|_| "a person".into());
    let decided = store.decide_approval(asked.id, decision, &by, reason.as_deref(), now)?;
    outln!(
        "{} for ticket {id} (session {}): {}",
        decision.as_str(),
        decided.session_id,
        crate::agent::safety::escape_for_display(&decided.command)
    );
    Ok(())
}
