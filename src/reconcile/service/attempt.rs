//! One attempt of a repair: the planner's first and agent stages, the quorum gate, the
//! attempt recorded durably before the remediator runs, and its result recorded after.
//! Steps that end the attempt without acting (a wait, a backoff, an escalation) are carried
//! out here too.

use tracing::error;

use crate::docker::DockerError;
use crate::manifest::Policy;
use crate::remediation::{Action, Actor, Dispatch, RemediationError, RemediationRequest};
use crate::tickets::{EntryKind, TicketError};

use super::super::events::Event;
use super::super::leases::Lease;
use super::super::outcome::Outcome;
use super::super::planner::{self, BackOffUntil, Escalation, Step};
use super::super::shared::lock;
use super::super::state::{RepairBudget, agent_gate};
use super::{Attempt, KeyRun};

impl KeyRun<'_> {
    /// Escalates the attempt's ticket to a person (the budget is already marked escalated).
    pub(super) async fn escalate(
        &self,
        a: &Attempt<'_>,
        mut why: serde_json::Value,
        what: &str,
    ) -> Outcome {
        let key = self.key;
        if self.shared.disruptions.get(key).is_some_and(|t| t.rollout) {
            // It stays under way: no other member of its group follows it onto the new spec.
            self.shared.disruptions.give_up(key);
            why["rollout"] = serde_json::json!(format!(
                "stopped at {}: the rest of its group keep their old spec until it is live or the manifest changes",
                a.service.name
            ));
        }
        let labels = a.reason.labels();
        let newly = match (self.journal(), a.ticket) {
            (Some(journal), Some(id)) => match journal.escalate(id, why, self.clock.wall).await {
                Ok(changed) => changed,
                Err(e) => {
                    error!(service = %key, error = %e, "cannot mark the ticket escalated");
                    false
                }
            },
            _ => !self.escalated_before,
        };
        let told = self.shared.keys.with(key, |state| {
            std::mem::replace(&mut state.escalation_told, true)
        });
        if newly {
            // Every escalated ticket has its ERROR line, whoever escalated the service first.
            self.emit(Event::Escalated {
                key,
                ticket: a.ticket,
                drifts: &labels,
                detail: &a.detail,
                max_restarts: a.remediation.max_restarts,
                window_s: a.remediation.window.as_secs(),
                what,
            });
        } else if !told {
            // Escalated before this process looked (by an earlier run): a service left down
            // must not be silent after a restart of the controller.
            self.emit(Event::StillEscalated {
                key,
                ticket: a.ticket,
                drifts: &labels,
                detail: &a.detail,
            });
        }
        Outcome::Escalated
    }

    /// Carries out a step of the planner that ends the attempt without acting: a wait, a
    /// backoff, an escalation, or only observing.
    pub(super) async fn carry_out(
        &self,
        a: &Attempt<'_>,
        step: Step,
        budget: &mut RepairBudget,
    ) -> Outcome {
        let (shared, key, clock) = (self.shared, self.key, self.clock);
        match step {
            Step::Act { .. } => unreachable!("the caller acts"),
            Step::Observe => Outcome::Observed,
            Step::WaitFor { dependency } => {
                // Said once per wait (not per look): `status` and `plan` show it too, as
                // "waiting for <dependency>".
                let told = shared
                    .keys
                    .with(key, |state| state.waiting_on.replace(dependency.clone()));
                if told.as_ref() != Some(&dependency) {
                    self.emit(Event::Waiting {
                        key,
                        ticket: a.ticket,
                        dependency: &dependency,
                    });
                }
                self.again_at(clock.now + shared.config.dependency_poll);
                Outcome::Waiting { dependency }
            }
            Step::BackOff { until } => {
                let wait = match until {
                    BackOffUntil::Instant(at) => at.saturating_duration_since(clock.now),
                    BackOffUntil::Wall(at) => (at - clock.wall).to_std().unwrap_or_default(),
                };
                self.again_at(clock.now + wait);
                Outcome::BackingOff {
                    retry_in_ms: wait.as_millis() as u64,
                }
            }
            Step::Escalate { why } => {
                budget.escalated = true;
                let drift = a.reason.labels().into_iter().next();
                let reason = why.as_str();
                let detail = match &why {
                    Escalation::RestartBudgetSpent => serde_json::json!({
                        "reason": reason,
                        "max_restarts": a.remediation.max_restarts,
                        "window_s": a.remediation.window.as_secs(),
                        "drift": drift,
                    }),
                    Escalation::AgentSessionsSpent {
                        sessions,
                        last_error,
                    } => serde_json::json!({
                        "reason": reason,
                        "sessions": sessions,
                        "last_session": last_error.clone().unwrap_or_else(|| "ended, and the re-check still found the drift".into()),
                        "drift": drift,
                    }),
                    Escalation::AgentTokenBudgetSpent { detail } => serde_json::json!({
                        "reason": reason,
                        "detail": detail,
                        "drift": drift,
                    }),
                    Escalation::GroupReplacementsSpent { group, detail } => serde_json::json!({
                        "reason": reason,
                        "group": group,
                        "detail": detail,
                        "drift": drift,
                    }),
                };
                self.escalate(a, detail, reason).await
            }
        }
    }

    /// Applies the budget and backoff to an attempt, records it durably in the remediator's
    /// name, hands it to the remediator and records what came of it.
    pub(super) async fn attempt(&self, mut a: Attempt<'_>, budget: &mut RepairBudget) -> Outcome {
        let (shared, key, clock) = (self.shared, self.key, self.clock);
        let now = clock.now;
        let dependency_down = a
            .service
            .depends_on
            .iter()
            .find(|d| !self.dependency_running(a.cluster, d))
            .cloned();
        let planned = planner::first(
            &planner::Attempt {
                policy: a.policy,
                action: a.action.as_ref(),
                budgeted: a.budgeted,
                ticketed: a.ticket.is_some(),
            },
            &planner::Context {
                observe_only: shared.config.observe_only,
                remediation: a.remediation,
                budget,
                now,
                serves: &|p| shared.remediator(p).is_some(),
                dependency_down: dependency_down.as_deref(),
            },
        );
        if !matches!(planned, Step::WaitFor { .. }) {
            shared.keys.with(key, |state| state.waiting_on = None);
        }
        match planned {
            Step::Act { policy, budgeted } => {
                a.policy = policy;
                a.budgeted = budgeted;
            }
            step => return self.carry_out(&a, step, budget).await,
        }
        let Some(remediator) = shared.remediator(a.policy) else {
            return Outcome::Observed;
        };
        if a.policy == Policy::Agent {
            let sessions = match (self.journal(), a.ticket) {
                (Some(journal), Some(id)) => {
                    let gate = async {
                        let ticket = journal.get(id).await?;
                        let timeline = journal.timeline(id).await?;
                        Ok::<_, TicketError>(ticket.map(|t| {
                            agent_gate(&timeline, t.episode_at, &a.cluster.agent, clock.wall)
                        }))
                    };
                    match gate.await {
                        Ok(gate) => gate,
                        Err(e) => {
                            return Outcome::Unknown {
                                error: format!("cannot read the ticket's sessions: {e}"),
                            };
                        }
                    }
                }
                _ => None,
            };
            let tokens_spent = remediator.exhausted().await;
            match planner::agent(sessions, tokens_spent) {
                Step::Act { .. } => {}
                step => return self.carry_out(&a, step, budget).await,
            }
        }

        let taken = match self.quorum_gate(&a, budget).await {
            Ok(taken) => taken,
            Err(outcome) => return outcome,
        };
        shared.keys.with(key, |state| state.gated = None);
        self.act(a, budget, remediator, taken).await
    }

    /// Records the attempt durably (its budget with it), hands it to the remediator, and
    /// records what came of it. `taken`: the quorum gate has the member under way for it.
    async fn act(
        &self,
        a: Attempt<'_>,
        budget: &mut RepairBudget,
        remediator: std::sync::Arc<dyn crate::remediation::Remediator>,
        taken: bool,
    ) -> Outcome {
        let (shared, key, clock) = (self.shared, self.key, self.clock);
        let now = clock.now;
        let labels = a.reason.labels();
        // The controller's own start is no stop between looks (see `unseen_stop`).
        shared.keys.with(key, |state| state.last_run = None);
        // Kept to undo the attempt if it cannot be recorded: an attempt that never ran must
        // not be saved as spent.
        let unspent = budget.clone();
        let next_at = budget.record_attempt(now, a.budgeted, a.remediation);
        let retry_after_ms = next_at.saturating_duration_since(now).as_millis() as u64;
        let actor = remediator.actor();
        // What the timeline and `operator_actions_total{kind}` call it: the built-in step, or a
        // session (an agent does what it finds right, not the step the diff proposed).
        let kind = match (actor, a.action.as_ref()) {
            (Actor::Controller, Some(action)) => action.as_str(),
            (Actor::Agent, _) => "agent-session",
            (other, _) => other.as_str(),
        };
        // Durable before acting: a crash from here on never hands out this attempt again.
        if let (Some(journal), Some(id)) = (self.journal(), a.ticket) {
            let what = serde_json::json!({
                "action": kind,
                "attempt": budget.attempts,
                "budgeted": a.budgeted,
                "drifts": labels,
            });
            let counted = budget.to_stored(clock);
            match journal
                .start_action(
                    id,
                    actor,
                    what,
                    Some((key.cluster.clone(), key.service.clone(), counted.clone())),
                    clock.wall,
                )
                .await
            {
                Ok(true) => *lock(&self.stored) = Some(counted),
                // Held or resolved since this reconcile began: hands off.
                Ok(false) => {
                    *budget = unspent;
                    shared.disruptions.release(key);
                    return Outcome::Held;
                }
                Err(e) => {
                    *budget = unspent;
                    shared.disruptions.release(key);
                    return Outcome::Unrecorded {
                        error: format!("the attempt could not be recorded: {e}"),
                    };
                }
            }
        }
        self.emit(Event::Repairing {
            key,
            ticket: a.ticket,
            drifts: &labels,
            detail: &a.detail,
            action: kind,
            actor,
            attempt: budget.attempts,
            budgeted: a.budgeted,
            retry_after_ms,
        });
        let dispatch = remediator
            .remediate(RemediationRequest {
                ticket: a.ticket,
                key,
                cluster: a.cluster,
                service: a.service,
                drifts: a.reason.drifts(),
                action: a.action.as_ref(),
                container: a.container,
                attempt: budget.attempts,
                completions: &shared.completions,
            })
            .await;
        let result = match dispatch {
            Dispatch::Started { session } => {
                shared.disruptions.release(key);
                // Leased until the session reports back; this worker and key are free now.
                let early = lock(&shared.leases).grant(
                    key.clone(),
                    Lease {
                        session: session.clone(),
                        ticket: a.ticket,
                        actor,
                        kind: kind.to_string(),
                        since: tokio::time::Instant::now(),
                    },
                );
                if let (Some(journal), Some(id)) = (self.journal(), a.ticket)
                    && let Err(e) = journal
                        .note(
                            id,
                            EntryKind::AgentDispatched,
                            serde_json::json!({"session": session, "actor": actor}),
                        )
                        .await
                {
                    error!(service = %key, error = %e, "cannot record the dispatch");
                }
                if let Some(done) = early {
                    // It finished before its lease was recorded: deliver it again now.
                    let _ = shared.completions.send(done);
                }
                self.emit(Event::Dispatched {
                    key,
                    ticket: a.ticket,
                    session: &session.0,
                    actor,
                });
                return Outcome::Dispatched { session };
            }
            Dispatch::Done(result) => result,
        };
        if taken {
            match &result {
                // Under way until it is live again (or its group's live.timeout).
                Ok(()) => {
                    let timeout = Self::live_timeout(a.cluster, &a.service.name);
                    if let Some(deadline) = shared.disruptions.acted(key, timeout) {
                        self.again_at(deadline);
                    }
                }
                Err(_) => {
                    shared.disruptions.release(key);
                }
            }
        }
        let (outcome, ok, entry) = match result {
            Ok(()) => {
                shared.metrics.action(kind, "ok");
                budget.created_before = true;
                if actor == Actor::Controller
                    && let Some(expectation) = a.action.as_ref().and_then(|action| {
                        super::super::expect::Expectation::of(
                            action,
                            a.container,
                            tokio::time::Instant::now(),
                        )
                    })
                {
                    shared
                        .keys
                        .with(key, |state| state.expectation = Some(expectation));
                }
                if !a.budgeted {
                    // A deliberate change that was applied leaves no backoff behind: the next
                    // edit (a network option flipped back, say) is deliberate again.
                    budget.attempts = 0;
                    budget.next_attempt_at = None;
                }
                if a.action == Some(Action::Unpause) {
                    // Its health verdicts so far were drawn while it was frozen.
                    let now = chrono::Utc::now();
                    shared.keys.with(key, |state| state.paused_at = Some(now));
                    self.save_paused_at(Some(now)).await;
                }
                let outcome = match &a.action {
                    Some(action) if actor == Actor::Controller => Outcome::Acted {
                        action: action.clone(),
                    },
                    _ => Outcome::Remediated { actor },
                };
                (
                    outcome,
                    true,
                    serde_json::json!({"action": kind, "result": "ok"}),
                )
            }
            Err(e) => {
                shared.metrics.action(kind, "error");
                if matches!(a.action, Some(Action::Create | Action::Recreate))
                    && !matches!(e, RemediationError::Docker(DockerError::NotOwned { .. }))
                {
                    // The container may exist now even though the action failed later on.
                    budget.created_before = true;
                }
                self.again_at(next_at);
                let entry =
                    serde_json::json!({"action": kind, "result": "error", "error": e.to_string()});
                let outcome = match &a.action {
                    Some(action) if actor == Actor::Controller => Outcome::Failed {
                        action: action.clone(),
                        error: e.to_string(),
                    },
                    _ => Outcome::RemediationFailed {
                        actor,
                        error: e.to_string(),
                    },
                };
                (outcome, false, entry)
            }
        };
        if let (Some(journal), Some(id)) = (self.journal(), a.ticket) {
            match journal
                .finish_action_viewed(
                    id,
                    actor,
                    ok,
                    entry,
                    (key.cluster.clone(), key.service.clone()),
                )
                .await
            {
                Ok(view) => self.keep_view(view),
                Err(e) => error!(service = %key, error = %e, "cannot record the action's result"),
            }
        }
        outcome
    }
}
