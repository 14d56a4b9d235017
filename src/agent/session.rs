//! One agent session: the tool-use loop between the model and the tools, bounded and audited
//! step by step. It never decides whether the ticket is fixed: it returns how it ended, and
//! the controller's own re-check decides.
//!
//! # Guarantees
//! - Every request carries the whole conversation: each assistant turn is appended exactly as
//!   it came (unknown blocks included), and every `tool_use` is answered by one `tool_result`,
//!   all of them opening the next user message, in the order of the calls (`is_error` for a
//!   refusal, an unknown tool or a failure).
//! - Bounded: model turns, wall time (each request is cut at the session's deadline), input
//!   and output tokens; on the last allowed turn the tools are withheld (`tool_choice: none`)
//!   so the model summarises instead of starting something it cannot finish.
//! - Every shell command runs in the session's toolbox ([`super::toolbox`]), whose only route
//!   to Docker is the session's authorising proxy ([`super::proxy`]): the boundaries, not
//!   the command's text, decide what it can reach. In `approve` every command first waits
//!   for a person (`operator tickets approve|reject`), bounded by the approval timeout.
//! - An identical call (same tool, same input) is run at most `repeat_limit` times; after
//!   that the model is told so instead (HolmesGPT's loop guard).
//! - Every step is written to the audit before the next one; a step that cannot be written
//!   ends the session (nothing runs unaudited).

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::tickets::{
    AuditKind, Decision, Journal, NewEntry, Outcome, SessionEnd, StopReason as EndReason,
    Usage as Tokens,
};

use super::api::{
    self, ContentBlock, Fatal, Message, MessagesRequest, StopReason, SystemBlock, Tool, ToolChoice,
};
use super::audit::{AuditError, AuditLog, ToolResultDetail};
use super::prompt;
use super::shell::{ChildEnv, ShellLimits};
use super::toolbox::Toolbox;
use super::tools::{self, ToolContext};
use crate::manifest::SafetyMode;

/// Bytes of one read-only tool's answer sent back to the model (head and tail kept).
pub const TOOL_OUTPUT_CAP: usize = 100_000;

/// The limits and choices of one session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub model: String,
    pub mode: SafetyMode,
    /// `max_tokens` of each request.
    pub max_tokens_per_turn: u32,
    pub max_turns: u32,
    pub max_time: Duration,
    pub max_input_tokens: u64,
    pub max_output_tokens: u64,
    pub command_timeout: Duration,
    /// How long a command in `approve` mode waits for a person before it is refused.
    pub approval_timeout: Duration,
    /// Runs allowed of one identical call.
    pub repeat_limit: usize,
}

/// What a session works with.
pub struct SessionDeps {
    pub client: api::Client,
    pub tools: ToolContext,
    /// The secret values a command's output is redacted of (a second line: the toolbox
    /// holds none of them, and the proxy masks them in the engine's answers).
    pub env: ChildEnv,
    /// Where the session's commands run.
    pub toolbox: std::sync::Arc<Toolbox>,
    pub audit: AuditLog,
    /// For approvals: a person decides them from another process.
    pub approvals: Journal,
}

/// How a session ended (never whether the ticket is fixed).
#[derive(Debug, Clone)]
pub struct SessionSummary {
    pub stop: EndReason,
    /// The model's closing text: its claim, recorded, never trusted.
    pub claim: Option<String>,
    pub tokens: Tokens,
    pub turns: u32,
    pub request_ids: Vec<String>,
    /// The API refused to serve at all (key, permission, spend limit): stop dispatching.
    pub fatal: Option<Fatal>,
    /// Why it ended, when it was not the model finishing.
    pub error: Option<String>,
    /// Time the controller spent per turn outside the HTTP call and the commands.
    pub overhead: Duration,
}

impl SessionSummary {
    /// The model finished its turn (it may still be wrong: the re-check decides).
    pub fn finished(&self) -> bool {
        matches!(self.stop, EndReason::EndTurn | EndReason::StopSequence)
    }
}

/// Cuts `text` to `cap` bytes, keeping its head and tail and saying what was cut.
pub fn cap_output(text: &str, cap: usize) -> String {
    if text.len() <= cap {
        return text.to_string();
    }
    let half = cap / 2;
    let mut head_end = half;
    while !text.is_char_boundary(head_end) {
        head_end -= 1;
    }
    let mut tail_start = text.len() - half;
    while !text.is_char_boundary(tail_start) {
        tail_start += 1;
    }
    format!(
        "{}\n[... {} bytes cut: the answer is longer than {cap} bytes; head and tail kept ...]\n{}",
        &text[..head_end],
        tail_start - head_end,
        &text[tail_start..]
    )
}

/// The system prompt and the tool definitions: constant, and marked as the cached prefix.
fn prefix() -> (Vec<SystemBlock>, Vec<Tool>) {
    let system = vec![SystemBlock::text(prompt::SYSTEM).cached()];
    let mut tools: Vec<Tool> = tools::definitions()
        .into_iter()
        .filter_map(|d| serde_json::from_value(d).ok())
        .collect();
    if let Some(last) = tools.last_mut() {
        last.cache_control = Some(api::CacheControl::Ephemeral);
    }
    (system, tools)
}

struct Loop<'a> {
    deps: &'a SessionDeps,
    cfg: &'a SessionConfig,
    cancel: &'a CancellationToken,
    deadline: Instant,
    tokens: Tokens,
    turns: u32,
    request_ids: Vec<String>,
    calls: HashMap<String, usize>,
    overhead: Duration,
    /// Since the last answer arrived (the controller's turn), and what of it was spent in
    /// commands or waiting for a person (not overhead).
    turn_began: Option<Instant>,
    excluded: Duration,
}

/// Runs one session on `incident` (the first user message) until the model finishes or a
/// limit, an error or `cancel` ends it; writes its end to the audit.
pub async fn run(
    deps: &SessionDeps,
    cfg: &SessionConfig,
    incident: String,
    cancel: &CancellationToken,
) -> SessionSummary {
    let mut l = Loop {
        deps,
        cfg,
        cancel,
        deadline: Instant::now() + cfg.max_time,
        tokens: Tokens::default(),
        turns: 0,
        request_ids: Vec::new(),
        calls: HashMap::new(),
        overhead: Duration::ZERO,
        turn_began: None,
        excluded: Duration::ZERO,
    };
    let mut summary = match l.converse(incident).await {
        Ok(summary) => summary,
        Err(e) => l.summary(EndReason::ToolError, None, None, Some(e.to_string())),
    };
    let outcome = if summary.stop == EndReason::ApiError || summary.stop == EndReason::ToolError {
        Outcome::Failed
    } else {
        Outcome::Ended
    };
    let end = SessionEnd {
        outcome,
        stop_reason: Some(summary.stop),
        claim: summary.claim.clone(),
        tokens: summary.tokens,
        turns: summary.turns,
        request_ids: summary.request_ids.clone(),
    };
    if let Err(e) = deps.audit.end(end).await {
        warn!(session = deps.audit.id(), error = %e, "cannot record the session's end");
        summary.error.get_or_insert(e.to_string());
    }
    summary
}

impl Loop<'_> {
    /// Closes the controller's turn: its time, less commands and waits, is overhead.
    fn close_turn(&mut self) {
        if let Some(began) = self.turn_began.take() {
            self.overhead += began.elapsed().saturating_sub(self.excluded);
        }
        self.excluded = Duration::ZERO;
    }

    fn summary(
        &mut self,
        stop: EndReason,
        claim: Option<String>,
        fatal: Option<Fatal>,
        error: Option<String>,
    ) -> SessionSummary {
        self.close_turn();
        SessionSummary {
            stop,
            claim,
            tokens: self.tokens,
            turns: self.turns,
            request_ids: self.request_ids.clone(),
            fatal,
            error,
            overhead: self.overhead,
        }
    }

    /// Which budget is spent, if one is.
    fn spent(&self) -> Option<String> {
        let input = self.tokens.input + self.tokens.cache_read + self.tokens.cache_write;
        if self.turns >= self.cfg.max_turns {
            Some(format!("{} turns", self.cfg.max_turns))
        } else if Instant::now() >= self.deadline {
            Some(format!("{} s of wall time", self.cfg.max_time.as_secs()))
        } else if input >= self.cfg.max_input_tokens {
            Some(format!("{} input tokens", self.cfg.max_input_tokens))
        } else if self.tokens.output >= self.cfg.max_output_tokens {
            Some(format!("{} output tokens", self.cfg.max_output_tokens))
        } else {
            None
        }
    }

    async fn budget_end(&mut self, which: String) -> Result<SessionSummary, AuditError> {
        self.deps
            .audit
            .record(NewEntry::new(AuditKind::Budget, json!({"spent": which})))
            .await?;
        Ok(self.summary(
            EndReason::Budget,
            None,
            None,
            Some(format!("budget spent: {which}")),
        ))
    }

    async fn converse(&mut self, incident: String) -> Result<SessionSummary, AuditError> {
        let (system, tools) = prefix();
        let mut messages = vec![Message::user(vec![ContentBlock::text(incident)])];
        loop {
            if self.cancel.is_cancelled() {
                return Ok(self.summary(
                    EndReason::Cancelled,
                    None,
                    None,
                    Some("cancelled".into()),
                ));
            }
            if let Some(which) = self.spent() {
                return self.budget_end(which).await;
            }
            let last_turn = self.turns + 1 >= self.cfg.max_turns;
            let request = MessagesRequest {
                model: self.cfg.model.clone(),
                max_tokens: self.cfg.max_tokens_per_turn,
                system: system.clone(),
                tools: tools.clone(),
                tool_choice: last_turn.then_some(ToolChoice::None),
                messages: messages.clone(),
            };
            self.close_turn();
            let remaining = self.deadline.saturating_duration_since(Instant::now());
            let call = self.deps.client.create_message(&request);
            let answer = tokio::select! {
                _ = self.cancel.cancelled() => {
                    return Ok(self.summary(EndReason::Cancelled, None, None, Some("cancelled".into())));
                }
                answer = tokio::time::timeout(remaining, call) => answer,
            };
            self.turn_began = Some(Instant::now());
            let reply = match answer {
                Err(_) => {
                    return self
                        .budget_end(format!("{} s of wall time", self.cfg.max_time.as_secs()))
                        .await;
                }
                Ok(Err(e)) => {
                    if let Some(meta) = e.meta() {
                        self.request_ids
                            .extend(meta.request_ids().into_iter().map(str::to_string));
                    }
                    let fatal = e.fatal();
                    self.deps
                        .audit
                        .record(NewEntry::new(
                            AuditKind::ApiError,
                            json!({"error": e.to_string(), "status": e.status(), "fatal": fatal, "wire": e.meta()}),
                        ))
                        .await?;
                    return Ok(self.summary(EndReason::ApiError, None, fatal, Some(e.to_string())));
                }
                Ok(Ok(reply)) => reply,
            };
            self.turns += 1;
            let ids: Vec<String> = reply
                .meta
                .request_ids()
                .into_iter()
                .map(str::to_string)
                .collect();
            let usage = &reply.response.usage;
            let turn = Tokens {
                input: usage.input_tokens,
                output: usage.output_tokens,
                cache_read: usage.cache_read_input_tokens,
                cache_write: usage.cache_creation_input_tokens,
            };
            self.tokens.add(turn);
            self.deps
                .audit
                .turn(ids.last().map(String::as_str), turn)
                .await?;
            self.deps
                .audit
                .record(NewEntry::new(
                    AuditKind::ApiResponse,
                    json!({"stop_reason": reply.response.stop_reason.as_ref().map(|s| s.as_str()), "usage": turn_json(&turn), "wire": reply.meta}),
                ))
                .await?;
            self.request_ids.extend(ids);
            let response = reply.response;
            let text = response.text();
            if !text.trim().is_empty() {
                self.deps.audit.model_text(&text).await?;
            }
            messages.push(response.to_message());
            let stop = response.stop_reason.clone();
            match stop {
                Some(StopReason::EndTurn) | Some(StopReason::StopSequence) => {
                    let reason = if stop == Some(StopReason::EndTurn) {
                        EndReason::EndTurn
                    } else {
                        EndReason::StopSequence
                    };
                    return Ok(self.summary(reason, Some(text), None, None));
                }
                Some(StopReason::ToolUse) | Some(StopReason::MaxTokens) => {
                    let cut = stop == Some(StopReason::MaxTokens);
                    let uses: Vec<api::ToolUseBlock> = response.tool_uses().cloned().collect();
                    if uses.is_empty() && !cut {
                        // A tool_use stop without a call: nothing to answer; ask it to go on.
                        messages.push(Message::user(vec![ContentBlock::text(
                            "You stopped for a tool call but sent none. Call a tool or summarise.",
                        )]));
                        continue;
                    }
                    let mut results = Vec::with_capacity(uses.len() + 1);
                    for call in &uses {
                        let (content, is_error) = if cut {
                            self.deps
                                .audit
                                .tool_call(&call.id, &call.name, &call.input)
                                .await?;
                            let why = "your answer was cut at max_tokens before this call was complete: not run".to_string();
                            self.deps
                                .audit
                                .tool_result(
                                    &call.id,
                                    &call.name,
                                    &ToolResultDetail {
                                        is_error: true,
                                        error: Some(why.clone()),
                                        ..Default::default()
                                    },
                                )
                                .await?;
                            (why, true)
                        } else {
                            self.call_tool(call).await?
                        };
                        results.push(ContentBlock::tool_result(&call.id, content, is_error));
                    }
                    if cut {
                        self.deps
                            .audit
                            .record(NewEntry::new(
                                AuditKind::Note,
                                json!({"note": "answer cut at max_tokens; asked to continue"}),
                            ))
                            .await?;
                        results.push(ContentBlock::text(
                            "Your answer was cut at max_tokens. Continue where you stopped, more briefly.",
                        ));
                    }
                    messages.push(Message::user(results));
                }
                // The API paused a long turn: send the conversation back as it is to let it
                // go on.
                Some(StopReason::PauseTurn) => continue,
                Some(StopReason::Refusal) => {
                    let refusal = response.refusal();
                    self.deps
                        .audit
                        .record(NewEntry::new(
                            AuditKind::Refusal,
                            json!({"category": refusal.as_ref().and_then(|r| r.category.clone()), "explanation": refusal.as_ref().and_then(|r| r.explanation.clone()), "stop_details": response.stop_details}),
                        ))
                        .await?;
                    let why = refusal
                        .and_then(|r| r.explanation.or(r.category))
                        .unwrap_or_else(|| "no details".into());
                    return Ok(self.summary(
                        EndReason::Refusal,
                        Some(text),
                        None,
                        Some(format!("the model refused: {why}")),
                    ));
                }
                Some(StopReason::ModelContextWindowExceeded) => {
                    return Ok(self.summary(
                        EndReason::ContextWindowExceeded,
                        Some(text),
                        None,
                        Some("the conversation outgrew the model's context window".into()),
                    ));
                }
                Some(StopReason::Other(other)) => {
                    return Ok(self.summary(
                        EndReason::ApiError,
                        Some(text),
                        None,
                        Some(format!("unknown stop_reason {other:?}")),
                    ));
                }
                None => {
                    return Ok(self.summary(
                        EndReason::ApiError,
                        Some(text),
                        None,
                        Some("the answer has no stop_reason".into()),
                    ));
                }
            }
        }
    }

    /// Runs one tool call (audited), returning the `tool_result` text and whether it is an
    /// error.
    async fn call_tool(&mut self, call: &api::ToolUseBlock) -> Result<(String, bool), AuditError> {
        let audit = &self.deps.audit;
        audit.tool_call(&call.id, &call.name, &call.input).await?;
        let started = Instant::now();
        // Parallel calls run one after another: each must still fit in the session.
        if self.cancel.is_cancelled() || Instant::now() >= self.deadline {
            let why = "not run: the session is over (its time is spent, or it was cancelled)";
            return self.error_result(call, why.into(), started).await;
        }
        let key = format!("{}\u{0}{}", call.name, call.input);
        let seen = self.calls.entry(key).or_insert(0);
        *seen += 1;
        if *seen > self.cfg.repeat_limit {
            let why = format!(
                "refused: this exact call was already made {} times; its answer will not change. Try something else, or summarise.",
                self.cfg.repeat_limit
            );
            audit
                .decision(
                    AuditKind::Denied,
                    &call.id,
                    &call.name,
                    &call.input.to_string(),
                    &why,
                )
                .await?;
            return self.error_result(call, why, started).await;
        }
        if call.name == "shell" {
            return self.shell(call, started).await;
        }
        let answer = self.deps.tools.call(&call.name, &call.input).await;
        match answer {
            Ok(text) => {
                let text = cap_output(&text, TOOL_OUTPUT_CAP);
                let detail = ToolResultDetail {
                    output: Some(text.clone()),
                    ..Default::default()
                }
                .duration(started.elapsed());
                audit.tool_result(&call.id, &call.name, &detail).await?;
                Ok((text, false))
            }
            Err(e) => self.error_result(call, e.to_string(), started).await,
        }
    }

    async fn error_result(
        &self,
        call: &api::ToolUseBlock,
        why: String,
        started: Instant,
    ) -> Result<(String, bool), AuditError> {
        let detail = ToolResultDetail {
            is_error: true,
            error: Some(why.clone()),
            ..Default::default()
        }
        .duration(started.elapsed());
        self.deps
            .audit
            .tool_result(&call.id, &call.name, &detail)
            .await?;
        Ok((why, true))
    }

    async fn shell(
        &mut self,
        call: &api::ToolUseBlock,
        started: Instant,
    ) -> Result<(String, bool), AuditError> {
        let Some(command) = call
            .input
            .get("command")
            .and_then(Value::as_str)
            .filter(|c| !c.trim().is_empty())
        else {
            return self
                .error_result(
                    call,
                    "invalid input: command (a non-empty string) is required".into(),
                    started,
                )
                .await;
        };
        let audit = &self.deps.audit;
        if self.cfg.mode == SafetyMode::Approve {
            let reason = "approve mode: every command waits for a person";
            if let Some(refusal) = self.approval(call, command, reason).await? {
                return self.error_result(call, refusal, started).await;
            }
        } else {
            let why = match self.cfg.mode {
                SafetyMode::Observe => {
                    "runs in the session's toolbox: no network, reads only through the proxy"
                }
                _ => "runs in the session's toolbox: the proxy authorises each Docker request",
            };
            audit
                .decision(AuditKind::Allowed, &call.id, "shell", command, why)
                .await?;
        }
        let left = self.deadline.saturating_duration_since(Instant::now());
        let limits = ShellLimits::default().timeout(self.cfg.command_timeout.min(left));
        let ran = Instant::now();
        let output = tokio::select! {
            out = self.deps.toolbox.run(command, &limits, &self.deps.env) => out,
            // Stopped listening; the toolbox's removal at the session's end takes what runs.
            _ = self.cancel.cancelled() => {
                self.excluded += ran.elapsed();
                return self
                    .error_result(call, "cancelled while running: the session was stopped".into(), started)
                    .await;
            }
        };
        // In approve, a person approved this command, not what it leaves running.
        if self.cfg.mode == SafetyMode::Approve {
            self.deps.toolbox.kill_leftovers().await;
        }
        // Time spent in the command is not the controller's overhead.
        self.excluded += ran.elapsed();
        match output {
            Ok(out) => {
                let detail = ToolResultDetail {
                    is_error: false,
                    exit_code: out.exit_code,
                    timed_out: out.timed_out,
                    stdout: Some(out.stdout.clone()),
                    stderr: Some(out.stderr.clone()),
                    truncated: out.note.clone(),
                    ..Default::default()
                }
                .duration(out.duration);
                audit.tool_result(&call.id, "shell", &detail).await?;
                Ok((out.model_json().to_string(), false))
            }
            Err(e) => {
                self.error_result(call, format!("the command could not start: {e}"), started)
                    .await
            }
        }
    }

    /// Waits for a person's decision on a command (`approve` mode). `None` when approved;
    /// otherwise what the model is told.
    async fn approval(
        &mut self,
        call: &api::ToolUseBlock,
        command: &str,
        reason: &str,
    ) -> Result<Option<String>, AuditError> {
        let audit = &self.deps.audit;
        let asked = audit.request_approval(&call.id, "shell", command).await?;
        info!(session = audit.id(), approval = asked.id, command = %super::safety::escape_for_display(&audit.redactor().redact(command)), "command waits for a person: operator tickets approve|reject");
        let waited = Instant::now();
        let limit = self
            .cfg
            .approval_timeout
            .min(self.deadline.saturating_duration_since(waited));
        loop {
            let now = self.deps.approvals.approval(asked.id).await;
            match now {
                Ok(Some(a)) if a.decision == Some(Decision::Approved) => {
                    let why = format!(
                        "approved by {}{}",
                        a.decided_by.as_deref().unwrap_or("a person"),
                        a.reason.map(|r| format!(": {r}")).unwrap_or_default()
                    );
                    audit
                        .decision(AuditKind::Approved, &call.id, "shell", command, &why)
                        .await?;
                    // Waiting for a person is not the controller's overhead either.
                    self.excluded += waited.elapsed();
                    return Ok(None);
                }
                Ok(Some(a)) if a.decision == Some(Decision::Rejected) => {
                    let why = format!(
                        "rejected by {}: {}",
                        a.decided_by.as_deref().unwrap_or("a person"),
                        a.reason.as_deref().unwrap_or("no reason given")
                    );
                    audit
                        .decision(AuditKind::Rejected, &call.id, "shell", command, &why)
                        .await?;
                    self.excluded += waited.elapsed();
                    return Ok(Some(format!("not run: {why}")));
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "cannot read an approval; asking again"),
            }
            if waited.elapsed() >= limit || self.cancel.is_cancelled() {
                let why = format!(
                    "no decision within {} s ({reason}): not run",
                    limit.as_secs()
                );
                let refused = self
                    .deps
                    .approvals
                    .decide_approval(
                        asked.id,
                        Decision::Rejected,
                        "controller".into(),
                        Some(why.clone()),
                        chrono::Utc::now(),
                    )
                    .await;
                if refused.is_err()
                    && let Ok(Some(a)) = self.deps.approvals.approval(asked.id).await
                    && a.decision.is_some()
                {
                    // A person decided at the last moment: that decision stands.
                    continue;
                }
                audit
                    .decision(AuditKind::Rejected, &call.id, "shell", command, &why)
                    .await?;
                self.excluded += waited.elapsed();
                return Ok(Some(why));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn turn_json(t: &Tokens) -> Value {
    json!({"input": t.input, "output": t.output, "cache_read": t.cache_read, "cache_write": t.cache_write})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_answers_keep_their_head_and_tail_and_say_what_was_cut() {
        let text = format!("{}{}{}", "a".repeat(600), "b".repeat(1000), "c".repeat(600));
        let cut = cap_output(&text, 1000);
        assert!(cut.starts_with(&"a".repeat(500)));
        assert!(cut.ends_with(&"c".repeat(500)));
        assert!(cut.contains("[... 1200 bytes cut"), "{cut}");
        assert_eq!(cap_output("short", 1000), "short");
        // Never splits a character.
        let wide = "é".repeat(1000);
        let _ = cap_output(&wide, 101);
    }

    #[test]
    fn the_cached_prefix_is_the_system_prompt_and_the_tools_in_a_fixed_order() {
        let (system, tools) = prefix();
        assert_eq!(system.len(), 1);
        assert!(system[0].cache_control.is_some());
        assert_eq!(tools.len(), 1 + tools::READ_ONLY.len());
        assert!(tools.last().unwrap().cache_control.is_some());
        assert!(
            tools[..tools.len() - 1]
                .iter()
                .all(|t| t.cache_control.is_none())
        );
        let again = prefix();
        assert_eq!(
            serde_json::to_string(&again.1).unwrap(),
            serde_json::to_string(&tools).unwrap(),
            "byte-stable across sessions"
        );
    }
}
