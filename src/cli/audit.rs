//! `operator audit ...`: read what agent sessions did, step by step, from the ticket database.

use std::process::ExitCode;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

use crate::tickets::{
    AgentSession, AuditKind, Outcome, SessionEntry, SessionQuery, TicketError, is_session_id,
};

use super::table::Table;
use super::tickets::open_to_change;
use super::{AuditCommand, Failure, outln};

/// Lines of a command's output shown under it by `audit show` (`--json` has all of it).
const OUTPUT_HEAD_LINES: usize = 10;
/// Characters of one output line shown.
const OUTPUT_LINE_CHARS: usize = 200;

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `45s`, `1m23s`, `2h05m`.
pub(super) fn human(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// The stop reason, with the outcome when it is not a plain end (`failed:api-error`,
/// `interrupted`, `running`).
pub(super) fn stop(s: &AgentSession) -> String {
    match (s.outcome, s.stop_reason) {
        (Outcome::Running, _) => "running".into(),
        (Outcome::Ended, Some(r)) => r.as_str().into(),
        (Outcome::Interrupted, _) => "interrupted".into(),
        (outcome, Some(r)) => format!("{outcome}:{r}"),
        (outcome, None) => outcome.as_str().into(),
    }
}

fn duration(s: &AgentSession, now: DateTime<Utc>) -> String {
    match s.ended_at {
        Some(end) => human(end - s.started_at),
        None if s.outcome == Outcome::Running => format!("{} so far", human(now - s.started_at)),
        None => "-".into(),
    }
}

fn print_list(sessions: &[AgentSession], now: DateTime<Utc>) -> Result<(), Failure> {
    let mut table = Table::new(&[
        "SESSION",
        "TICKET",
        "SERVICE",
        "MODEL",
        "MODE",
        "STARTED",
        "DURATION",
        "TURNS",
        "TOKENS IN/OUT/CACHE-R/CACHE-W",
        "STOP",
        "VERDICT",
    ]);
    for s in sessions {
        table.row(vec![
            s.id.clone(),
            s.ticket_id.to_string(),
            format!("{}/{}", s.cluster, s.service),
            s.model.clone(),
            s.mode.to_string(),
            time(s.started_at),
            duration(s, now),
            s.turns.to_string(),
            format!(
                "{}/{}/{}/{}",
                s.tokens.input, s.tokens.output, s.tokens.cache_read, s.tokens.cache_write
            ),
            stop(s),
            s.verdict.map_or("-".into(), |v| v.to_string()),
        ]);
    }
    table.print()?;
    if sessions.is_empty() {
        outln!("(no agent sessions)");
    }
    Ok(())
}

/// A tool call's command as a person reads it: the `command` of its input, else the input.
fn call_text(entry: &SessionEntry) -> String {
    let input = &entry.detail["input"];
    match input.get("command").and_then(Value::as_str) {
        Some(command) => crate::agent::safety::escape_for_display(command),
        None if input.is_null() => entry.detail.to_string(),
        None => input.to_string(),
    }
}

/// The first lines of a text, each cut to a readable width, and how many were left out.
fn head(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<String> = lines
        .iter()
        .take(OUTPUT_HEAD_LINES)
        .map(|l| {
            if l.chars().count() > OUTPUT_LINE_CHARS {
                let cut: String = l.chars().take(OUTPUT_LINE_CHARS).collect();
                format!("{cut}…")
            } else {
                l.to_string()
            }
        })
        .collect();
    if lines.len() > OUTPUT_HEAD_LINES {
        out.push(format!(
            "… {} more lines (audit show --json has them)",
            lines.len() - OUTPUT_HEAD_LINES
        ));
    }
    out
}

/// A tool result under its call: exit code, duration, then the head of each output.
fn print_result(result: &SessionEntry, pad: &str) -> Result<(), Failure> {
    let d = &result.detail;
    let mut summary = Vec::new();
    if let Some(code) = d["exit_code"].as_i64() {
        summary.push(format!("exit {code}"));
    }
    if let Some(ms) = d["duration_ms"].as_u64() {
        summary.push(format!("{:.1}s", ms as f64 / 1000.0));
    }
    if d["timed_out"].as_bool() == Some(true) {
        summary.push("TIMED OUT".into());
    }
    if d["is_error"].as_bool() == Some(true) {
        summary.push("error".into());
    }
    if let Some(cut) = d["truncated"].as_str() {
        summary.push(format!("output cut: {cut}"));
    }
    outln!(
        "{pad}→ #{} {}",
        result.seq,
        if summary.is_empty() {
            "result".to_string()
        } else {
            summary.join(", ")
        }
    );
    for stream in ["stdout", "stderr", "output", "error"] {
        if let Some(text) = d[stream].as_str().filter(|t| !t.trim().is_empty()) {
            outln!("{pad}  {stream}:");
            for line in head(text) {
                outln!("{pad}    {line}");
            }
        }
    }
    Ok(())
}

fn print_session(
    s: &AgentSession,
    entries: &[SessionEntry],
    now: DateTime<Utc>,
) -> Result<(), Failure> {
    outln!("session   {}", s.id);
    outln!("ticket    {}  {}/{}", s.ticket_id, s.cluster, s.service);
    outln!(
        "model     {}  mode {}  run by {}",
        s.model,
        s.mode,
        s.holder
    );
    match s.ended_at {
        Some(end) => outln!(
            "started   {}  ended {} ({})",
            time(s.started_at),
            time(end),
            human(end - s.started_at)
        ),
        None => outln!("started   {}  ({})", time(s.started_at), duration(s, now)),
    }
    outln!(
        "outcome   {}  stop {}  verdict {}",
        s.outcome,
        s.stop_reason.map_or("-".into(), |r| r.to_string()),
        s.verdict
            .map_or("- (not re-checked yet)".into(), |v| v.to_string())
    );
    outln!(
        "usage     {} turns; tokens in {}, out {}, cache read {}, cache write {}",
        s.turns,
        s.tokens.input,
        s.tokens.output,
        s.tokens.cache_read,
        s.tokens.cache_write
    );
    if !s.request_ids.is_empty() {
        outln!("requests  {}", s.request_ids.join(" "));
    }
    if let Some(claim) = &s.claim {
        outln!("claim     (the model's word; the verdict is the controller's)");
        for line in claim.lines() {
            outln!("          {line}");
        }
    }
    outln!("\nSTEPS");
    if entries.is_empty() {
        outln!("  (none)");
    }
    let pad = " ".repeat(16);
    for e in entries {
        let linked = |kind: AuditKind| {
            e.tool_use_id.is_some()
                && entries
                    .iter()
                    .any(|c| c.kind == kind && c.tool_use_id == e.tool_use_id)
        };
        // A result is printed under its call; one whose call is missing stands alone.
        if e.kind == AuditKind::ToolResult && linked(AuditKind::ToolCall) {
            continue;
        }
        let at = e.at.format("%H:%M:%S");
        let id = e
            .tool_use_id
            .as_deref()
            .map(|i| format!(" [{i}]"))
            .unwrap_or_default();
        let tool = e.tool.as_deref().unwrap_or("");
        let text = match e.kind {
            AuditKind::ModelText => e.detail["text"]
                .as_str()
                .map_or_else(|| e.detail.to_string(), str::to_string),
            AuditKind::ToolCall => format!("{tool}{id}: {}", call_text(e)),
            AuditKind::Allowed
            | AuditKind::Denied
            | AuditKind::Approved
            | AuditKind::Rejected
            | AuditKind::ApprovalRequested => {
                let command = crate::agent::safety::escape_for_display(
                    e.detail["command"]
                        .as_str()
                        .or(e.detail["docker_api"].as_str())
                        .unwrap_or(""),
                );
                match e.detail["reason"].as_str() {
                    Some(reason) => format!("{tool}{id}: {command} ({reason})"),
                    None => format!("{tool}{id}: {command}"),
                }
            }
            _ => format!("{tool}{id} {}", e.detail).trim().to_string(),
        };
        let mut lines = text.lines();
        outln!(
            "  {:>4}  {at}  {:<18} {}",
            e.seq,
            e.kind,
            lines.next().unwrap_or("")
        );
        for more in lines {
            // Under the first line's text: after "  SEQ  HH:MM:SS  KIND ".
            outln!("{:37}{more}", "");
        }
        if e.kind == AuditKind::ToolCall {
            for result in entries
                .iter()
                .filter(|r| r.kind == AuditKind::ToolResult && r.tool_use_id == e.tool_use_id)
            {
                print_result(result, &pad)?;
            }
        }
    }
    Ok(())
}

pub fn run(command: AuditCommand) -> Result<ExitCode, Failure> {
    let now = Utc::now();
    match command {
        AuditCommand::List {
            ticket,
            since,
            json,
            db,
        } => {
            let store = open_to_change(&db.path())?;
            let since = since
                .map(|d| chrono::Duration::from_std(d).map(|d| now - d))
                .transpose()
                .map_err(|e| Failure::new(format!("--since is too long: {e}")))?;
            let sessions = store.sessions(&SessionQuery { ticket, since })?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&sessions)?);
            } else {
                print_list(&sessions, now)?;
            }
        }
        AuditCommand::Show { session, json, db } => {
            if !is_session_id(&session) {
                return Err(TicketError::BadSessionId(session).into());
            }
            let store = open_to_change(&db.path())?;
            let log = store
                .session(&session)?
                .ok_or(TicketError::SessionNotFound(session))?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&log)?);
            } else {
                print_session(&log.session, &log.entries, now)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        let s = chrono::Duration::seconds;
        assert_eq!(human(s(0)), "0s");
        assert_eq!(human(s(59)), "59s");
        assert_eq!(human(s(83)), "1m23s");
        assert_eq!(human(s(7500)), "2h05m");
        assert_eq!(human(s(-3)), "0s");
    }

    #[test]
    fn an_output_head_keeps_ten_lines_and_says_how_many_more() {
        let text: String = (0..25).map(|i| format!("line {i}\n")).collect();
        let h = head(&text);
        assert_eq!(h.len(), 11);
        assert_eq!(h[0], "line 0");
        assert!(h[10].contains("15 more lines"), "{}", h[10]);
        let long = "x".repeat(500);
        assert_eq!(head(&long)[0].chars().count(), OUTPUT_LINE_CHARS + 1);
    }
}
