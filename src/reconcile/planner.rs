//! The attempt planner: once [`decide`](super::decide) says a drift is to be remediated, what
//! happens now: act, wait for a dependency, back off until a time, escalate (and why), or only
//! observe. Pure: every input is read before, by whoever asks. The controller's executor
//! (`service.rs`) carries each step out; `plan` and `status` ask the same functions with what
//! they read (`report.rs`), so they cannot say what `run` would not do.
//!
//! Three stages, because each needs what the one before chose: [`first`] (dependencies, an
//! observer, who serves the policy, the restart budget and backoff, `escalateTo: agent`),
//! then for a session of the agent [`agent`] (its sessions for this episode, the token
//! budget), then for a restart or recreate of a running member [`quorum`] (the gate's
//! verdict, a person's override).

use serde::Serialize;
use tokio::time::Instant;

use crate::manifest::{EscalateTo, Policy, Remediation};
use crate::remediation::Action;

use super::quorum::Refusal;
use super::state::{AgentGate, Gate, RepairBudget};

/// The attempt a reconcile would make.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub policy: Policy,
    /// The built-in step for the drift.
    pub action: Option<&'a Action>,
    /// Counts against the restart budget (a repair, not a deliberate change).
    pub budgeted: bool,
    /// The drift has a ticket (a deliberate change has none unless it fails).
    pub ticketed: bool,
}

/// What [`first`] reads.
pub struct Context<'a> {
    /// `run --observe-only`: nothing is done, whatever the policies say.
    pub observe_only: bool,
    pub remediation: &'a Remediation,
    pub budget: &'a RepairBudget,
    pub now: Instant,
    /// Whether something serves `policy` now (the built-in executor always serves
    /// `restart`; the agent only while it is configured and dispatching).
    pub serves: &'a dyn Fn(Policy) -> bool,
    /// The first `dependsOn` of the service whose container does not run.
    pub dependency_down: Option<&'a str>,
}

/// What happens to the attempt now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "step")]
pub enum Step {
    /// Go on with `policy` (its next stage, then the remediator).
    Act { policy: Policy, budgeted: bool },
    /// The action would start the container: not before `dependency` runs.
    WaitFor { dependency: String },
    /// Not before `until` (the backoff, or the agent's pause between sessions).
    #[serde(skip)]
    BackOff { until: BackOffUntil },
    /// A person takes over: the ticket is escalated.
    Escalate { why: Escalation },
    /// Nothing is done: an observer, or nothing serves the policy now.
    Observe,
}

/// When a backoff ends, by the clock that knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackOffUntil {
    Instant(Instant),
    Wall(chrono::DateTime<chrono::Utc>),
}

/// Why a ticket escalates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "reason")]
pub enum Escalation {
    /// `maxRestarts` repairs in the window (or escalated before and not retried).
    RestartBudgetSpent,
    /// The episode had its `agent.sessions`.
    AgentSessionsSpent {
        sessions: u32,
        last_error: Option<String>,
    },
    /// The controller-wide token budget is spent.
    AgentTokenBudgetSpent { detail: String },
    /// The group's `replacements.max` in its window.
    GroupReplacementsSpent { group: String, detail: String },
}

impl Escalation {
    /// The reason as the ticket's escalation entry and the log say it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Escalation::RestartBudgetSpent => "restart budget spent",
            Escalation::AgentSessionsSpent { .. } => "agent sessions spent",
            Escalation::AgentTokenBudgetSpent { .. } => "agent token budget spent",
            Escalation::GroupReplacementsSpent { .. } => "group replacements spent",
        }
    }
}

impl Step {
    /// One word for the step, shared with the outcome labels of a reconcile (`plan`'s
    /// `next` and `run --once`'s outcome read the same for the same situation).
    pub fn label(&self) -> &'static str {
        match self {
            Step::Act { .. } => "act",
            Step::WaitFor { .. } => "waiting",
            Step::BackOff { .. } => "backoff",
            Step::Escalate { .. } => "escalated",
            Step::Observe => "observed",
        }
    }
}

/// The first stage (see the module's doc).
pub fn first(a: &Attempt<'_>, c: &Context<'_>) -> Step {
    if let (Some(dependency), true) = (
        c.dependency_down,
        a.action.is_some_and(Action::starts_container),
    ) {
        return Step::WaitFor {
            dependency: dependency.to_string(),
        };
    }
    if c.observe_only {
        // Before the budget's verdict: an observer's look must not spend or escalate it.
        return Step::Observe;
    }
    let r = c.remediation;
    let gate = c.budget.gate(c.now, a.budgeted, r);
    // `escalateTo: agent`: when the restart budget runs out (not when a person's escalation
    // is still in force), the agent is paged instead of a person. The restart budget stays
    // spent, so no built-in repair runs meanwhile.
    if gate == Gate::Escalate
        && a.policy == Policy::Restart
        && r.escalate_to == EscalateTo::Agent
        && a.ticketed
        && !c.budget.escalated
        && (c.serves)(Policy::Agent)
    {
        return Step::Act {
            policy: Policy::Agent,
            budgeted: false,
        };
    }
    if !(c.serves)(a.policy) {
        return Step::Observe;
    }
    match gate {
        Gate::Act => Step::Act {
            policy: a.policy,
            budgeted: a.budgeted,
        },
        Gate::WaitUntil(at) => Step::BackOff {
            until: BackOffUntil::Instant(at),
        },
        Gate::Escalate => Step::Escalate {
            why: Escalation::RestartBudgetSpent,
        },
    }
}

/// The agent's stage: its sessions for this episode (`None`: no ticket to count them on),
/// and the token budget (`Some(detail)`: spent).
pub fn agent(gate: Option<AgentGate>, tokens_spent: Option<String>) -> Step {
    match gate {
        Some(AgentGate::WaitUntil(at)) => {
            return Step::BackOff {
                until: BackOffUntil::Wall(at),
            };
        }
        Some(AgentGate::Spent {
            sessions,
            last_error,
        }) => {
            return Step::Escalate {
                why: Escalation::AgentSessionsSpent {
                    sessions,
                    last_error,
                },
            };
        }
        Some(AgentGate::Page) | None => {}
    }
    // A session could not run: none is started and a person is told why now, not after the
    // ticket's sessions fail one by one.
    if let Some(detail) = tokens_spent {
        return Step::Escalate {
            why: Escalation::AgentTokenBudgetSpent { detail },
        };
    }
    Step::Act {
        policy: Policy::Agent,
        budgeted: false,
    }
}

/// What the quorum gate's verdict means for the attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuorumStep {
    /// Go ahead (`forced`: only because a person overrode the gate).
    Go {
        forced: bool,
    },
    /// Held back for now, looked at again shortly.
    Gated(Refusal),
    Escalate(Escalation),
}

/// The quorum stage: the gate's verdict, and whether a person forced the next action
/// (`tickets retry --force`).
pub fn quorum(verdict: Result<(), Refusal>, forced: bool) -> QuorumStep {
    match verdict {
        Ok(()) => QuorumStep::Go { forced: false },
        Err(_) if forced => QuorumStep::Go { forced: true },
        Err(refusal) if refusal.escalates() => {
            QuorumStep::Escalate(Escalation::GroupReplacementsSpent {
                group: refusal.group().to_string(),
                detail: refusal.to_string(),
            })
        }
        Err(refusal) => QuorumStep::Gated(refusal),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn remediation() -> Remediation {
        Remediation {
            max_restarts: 2,
            ..Remediation::default()
        }
    }

    const START: Action = Action::Start;

    fn attempt(policy: Policy) -> Attempt<'static> {
        Attempt {
            policy,
            action: Some(&START),
            budgeted: true,
            ticketed: true,
        }
    }

    fn step(a: Attempt<'_>, budget: &RepairBudget, r: &Remediation, serves: &[Policy]) -> Step {
        step_with(a, budget, r, serves, None, false)
    }

    fn step_with(
        a: Attempt<'_>,
        budget: &RepairBudget,
        r: &Remediation,
        serves: &[Policy],
        dependency_down: Option<&str>,
        observe_only: bool,
    ) -> Step {
        first(
            &a,
            &Context {
                observe_only,
                remediation: r,
                budget,
                now: Instant::now(),
                serves: &|p| serves.contains(&p),
                dependency_down,
            },
        )
    }

    const RESTART: &[Policy] = &[Policy::Restart];

    #[tokio::test(start_paused = true)]
    async fn a_repair_with_budget_left_acts_and_spent_budget_escalates() {
        let r = remediation();
        let mut b = RepairBudget::default();
        assert_eq!(
            step(attempt(Policy::Restart), &b, &r, RESTART),
            Step::Act {
                policy: Policy::Restart,
                budgeted: true
            }
        );
        let now = Instant::now();
        b.record_attempt(now, true, &r);
        b.next_attempt_at = None;
        b.record_attempt(now, true, &r);
        b.next_attempt_at = None;
        assert_eq!(
            step(attempt(Policy::Restart), &b, &r, RESTART),
            Step::Escalate {
                why: Escalation::RestartBudgetSpent
            }
        );
        assert!(!b.escalated, "the planner changes nothing");
        // A deliberate change spends no budget: it goes ahead.
        let deliberate = Attempt {
            budgeted: false,
            ..attempt(Policy::Restart)
        };
        assert!(matches!(
            step(deliberate, &b, &r, RESTART),
            Step::Act { .. }
        ));
        // Escalated before (by a person's or an earlier run's count): nothing acts.
        b.escalated = true;
        assert!(matches!(
            step(deliberate, &b, &r, RESTART),
            Step::Escalate { .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_backoff_waits_until_its_time() {
        let r = remediation();
        let mut b = RepairBudget::default();
        let at = Instant::now() + Duration::from_secs(5);
        b.next_attempt_at = Some(at);
        assert_eq!(
            step(attempt(Policy::Restart), &b, &r, RESTART),
            Step::BackOff {
                until: BackOffUntil::Instant(at)
            }
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(matches!(
            step(attempt(Policy::Restart), &b, &r, RESTART),
            Step::Act { .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dependency_that_does_not_run_holds_a_start_but_not_a_restart() {
        let r = remediation();
        let b = RepairBudget::default();
        assert_eq!(
            step_with(attempt(Policy::Restart), &b, &r, RESTART, Some("db"), false),
            Step::WaitFor {
                dependency: "db".into()
            }
        );
        let restart = Attempt {
            action: Some(&Action::Restart),
            ..attempt(Policy::Restart)
        };
        assert!(matches!(
            step_with(restart, &b, &r, RESTART, Some("db"), false),
            Step::Act { .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn an_observer_and_an_unserved_policy_only_observe() {
        let r = remediation();
        let b = RepairBudget::default();
        assert_eq!(
            step_with(attempt(Policy::Restart), &b, &r, RESTART, None, true),
            Step::Observe
        );
        assert_eq!(step(attempt(Policy::Agent), &b, &r, RESTART), Step::Observe);
        assert!(matches!(
            step(
                attempt(Policy::Agent),
                &b,
                &r,
                &[Policy::Restart, Policy::Agent]
            ),
            Step::Act {
                policy: Policy::Agent,
                ..
            }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn escalate_to_agent_pages_the_agent_when_the_budget_runs_out() {
        let r = Remediation {
            max_restarts: 0,
            escalate_to: EscalateTo::Agent,
            ..Remediation::default()
        };
        let b = RepairBudget::default();
        let both = &[Policy::Restart, Policy::Agent];
        assert_eq!(
            step(attempt(Policy::Restart), &b, &r, both),
            Step::Act {
                policy: Policy::Agent,
                budgeted: false
            }
        );
        // Without an agent that serves, or without a ticket to page it on: a person.
        assert!(matches!(
            step(attempt(Policy::Restart), &b, &r, RESTART),
            Step::Escalate { .. }
        ));
        let unticketed = Attempt {
            ticketed: false,
            ..attempt(Policy::Restart)
        };
        assert!(matches!(
            step(unticketed, &b, &r, both),
            Step::Escalate { .. }
        ));
        // Escalated already (a person's call stands): not paged.
        let mut escalated = RepairBudget::default();
        escalated.escalated = true;
        assert!(matches!(
            step(attempt(Policy::Restart), &escalated, &r, both),
            Step::Escalate { .. }
        ));
    }

    #[test]
    fn the_agent_stage_pages_waits_or_escalates() {
        assert!(matches!(
            agent(Some(AgentGate::Page), None),
            Step::Act {
                policy: Policy::Agent,
                ..
            }
        ));
        assert!(matches!(agent(None, None), Step::Act { .. }));
        let at = chrono::Utc::now();
        assert_eq!(
            agent(Some(AgentGate::WaitUntil(at)), None),
            Step::BackOff {
                until: BackOffUntil::Wall(at)
            }
        );
        assert_eq!(
            agent(
                Some(AgentGate::Spent {
                    sessions: 2,
                    last_error: None
                }),
                None
            )
            .label(),
            "escalated"
        );
        assert_eq!(
            agent(Some(AgentGate::Page), Some("spent".into())),
            Step::Escalate {
                why: Escalation::AgentTokenBudgetSpent {
                    detail: "spent".into()
                }
            }
        );
    }

    #[test]
    fn the_quorum_stage_goes_holds_or_escalates_and_a_person_may_force_it() {
        let c = super::super::quorum::tests::cluster(3, crate::manifest::Quorum::Majority);
        let what = super::super::quorum::Disruption {
            rollout: false,
            repair: true,
        };
        let none = std::collections::BTreeSet::new();
        let refusal = super::super::quorum::judge(
            &c,
            "m0",
            what,
            &super::super::quorum::Snapshot {
                taken: &none,
                ..super::super::quorum::Snapshot::nothing_under_way(&|m| m != "m1", &|m| {
                    m != "m1" && m != "m2"
                })
            },
        )
        .unwrap_err();
        assert!(!refusal.escalates());
        assert_eq!(quorum(Ok(()), false), QuorumStep::Go { forced: false });
        assert_eq!(
            quorum(Err(refusal.clone()), false),
            QuorumStep::Gated(refusal.clone())
        );
        assert_eq!(quorum(Err(refusal), true), QuorumStep::Go { forced: true });
    }
}
