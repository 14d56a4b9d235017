//! The decision for one key: given what the diff found, what the repair budget remembers,
//! the service's remediation policy and who else has hands on it, what happens next. A pure
//! function over plain data, so every rule is unit-tested without Docker; `service/`
//! carries the decision out.
//!
//! Not decided here, because they need a fresh look at the engine or the clock: whether a
//! dependency runs yet (`service/`) and what an attempt does now, given the budget, the
//! backoff and the quorum gate (`planner.rs`, shared by every remediator and by `plan`).

use serde::Serialize;

use crate::drift::{Drift, DriftKind};
use crate::manifest::{Policy, Remediation};
use crate::remediation::{Action, SessionId};

use super::diff::{Observation, action_for, is_deliberate};
use super::state::RepairBudget;

/// Who else has hands on the service right now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holds {
    /// A person holds one of its tickets.
    pub held: bool,
    /// A long-running remediator (an agent session) is at work on it.
    pub leased: Option<SessionId>,
}

/// What a reconcile of one key does next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "decision")]
pub enum Decision {
    /// A remediator's session holds the key: do nothing until it reports back.
    Leased { session: SessionId },
    /// No drift. `verified`: running, and healthy if a healthcheck exists ("starting" is
    /// not yet healthy, so an unhealthy episode is not over).
    Clean { verified: bool },
    /// No drift, but the container started less than the settle time ago: nothing is
    /// resolved yet (a crash-looping process is up for a moment after every start).
    Settling,
    /// A person holds a ticket of the service: record, but hands off.
    Held { deliberate: bool },
    /// The policy says report only (or no remediator serves the policy).
    Observe { deliberate: bool },
    /// No remediator can address this drift (a name held by a foreign container, or no
    /// built-in action for it under `restart`).
    Blocked { name_conflict: bool },
    /// Remediate through the policy's remediator, if the gate allows.
    Remediate {
        policy: Policy,
        /// The built-in step for the drift (always present for `restart`).
        action: Option<Action>,
        /// A first creation or first rollout of an edited spec: no ticket unless it fails,
        /// and no budget spent.
        deliberate: bool,
    },
}

impl Decision {
    /// Whether the drift is an incident to ticket (not a deliberate change, not clean).
    pub fn records_ticket(&self) -> bool {
        match self {
            Decision::Leased { .. } | Decision::Clean { .. } | Decision::Settling => false,
            Decision::Held { deliberate }
            | Decision::Observe { deliberate }
            | Decision::Remediate { deliberate, .. } => !deliberate,
            Decision::Blocked { .. } => true,
        }
    }
}

/// Decides what one reconcile does. `has_remediator(policy)` says whether something serves a
/// policy beyond `restart` (an agent is configured).
pub fn decide(
    drifts: &[Drift],
    observed: &Observation,
    budget: &RepairBudget,
    remediation: &Remediation,
    holds: &Holds,
    has_remediator: impl Fn(Policy) -> bool,
) -> Decision {
    if let Some(session) = &holds.leased {
        return Decision::Leased {
            session: session.clone(),
        };
    }
    if drifts.is_empty() && observed.settling {
        return Decision::Settling;
    }
    if drifts.is_empty() {
        let verified = observed.container.as_ref().is_some_and(|c| {
            c.status == crate::docker::ContainerStatus::Running
                && c.health
                    .is_none_or(|h| h == crate::docker::HealthState::Healthy)
        });
        return Decision::Clean { verified };
    }
    let action = action_for(drifts, observed);
    // The one place the rule is applied: deliberate changes open no ticket and spend no
    // budget, whatever happens to them next.
    let deliberate = action
        .as_ref()
        .is_some_and(|a| is_deliberate(a, drifts, budget.created_before, budget.attempts));
    if holds.held {
        return Decision::Held { deliberate };
    }
    match remediation.policy {
        Policy::Observe => Decision::Observe { deliberate },
        Policy::Restart => match action {
            Some(action) => Decision::Remediate {
                policy: Policy::Restart,
                action: Some(action),
                deliberate,
            },
            None => Decision::Blocked {
                name_conflict: drifts[0].kind == DriftKind::NameConflict,
            },
        },
        // A first creation, a rollout or a network replacement is the controller's own step
        // under any policy that acts: it is a change someone asked for, not an incident for
        // the agent.
        Policy::Agent if deliberate => Decision::Remediate {
            policy: Policy::Restart,
            action,
            deliberate,
        },
        // Nobody serves the policy: it only observes, as `observe` does.
        policy if !has_remediator(policy) => Decision::Observe { deliberate },
        // Nobody may touch a container that is not ours.
        _ if drifts[0].kind == DriftKind::NameConflict => Decision::Blocked {
            name_conflict: true,
        },
        policy => Decision::Remediate {
            policy,
            action,
            deliberate,
        },
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::docker::{ContainerStatus, HealthState, ObservedContainer, ServiceKey};

    fn container(status: ContainerStatus, health: Option<HealthState>) -> ObservedContainer {
        ObservedContainer {
            health,
            exit_code: Some(1),
            ..ObservedContainer::example("id", ServiceKey::new("c", "s"), status)
        }
    }

    fn observed(status: ContainerStatus) -> Observation {
        Observation {
            container: Some(container(status, None)),
            ..Default::default()
        }
    }

    fn policy(p: Policy) -> Remediation {
        Remediation {
            policy: p,
            ..Default::default()
        }
    }

    fn stopped() -> Vec<Drift> {
        vec![Drift::new(DriftKind::Stopped, "exited with code 1")]
    }

    fn no_agent(_: Policy) -> bool {
        false
    }

    fn free() -> Holds {
        Holds::default()
    }

    /// The decision for a container that exited, under a policy.
    fn exited_under(p: Policy, holds: &Holds, agent_serves: bool) -> Decision {
        decide(
            &stopped(),
            &observed(ContainerStatus::Exited),
            &RepairBudget::default(),
            &policy(p),
            holds,
            |q| agent_serves && q == Policy::Agent,
        )
    }

    #[test]
    fn a_lease_wins_over_everything() {
        let holds = Holds {
            held: true,
            leased: Some(SessionId("s1".into())),
        };
        let d = exited_under(Policy::Restart, &holds, false);
        assert_eq!(
            d,
            Decision::Leased {
                session: SessionId("s1".into())
            }
        );
        assert!(!d.records_ticket(), "a leased key is not looked at");
    }

    #[test]
    fn no_drift_is_clean_and_verified_only_when_running_and_healthy() {
        let r = policy(Policy::Restart);
        let b = RepairBudget::default();
        let verdict = |c: ObservedContainer| {
            decide(
                &[],
                &Observation {
                    container: Some(c),
                    ..Default::default()
                },
                &b,
                &r,
                &free(),
                no_agent,
            )
        };
        assert_eq!(
            verdict(container(ContainerStatus::Running, None)),
            Decision::Clean { verified: true }
        );
        assert_eq!(
            verdict(container(
                ContainerStatus::Running,
                Some(HealthState::Healthy)
            )),
            Decision::Clean { verified: true }
        );
        assert_eq!(
            verdict(container(
                ContainerStatus::Running,
                Some(HealthState::Starting)
            )),
            Decision::Clean { verified: false }
        );
        assert!(!Decision::Clean { verified: true }.records_ticket());
    }

    #[test]
    fn a_held_ticket_means_hands_off_but_the_drift_is_recorded() {
        let holds = Holds {
            held: true,
            leased: None,
        };
        let d = exited_under(Policy::Restart, &holds, false);
        assert_eq!(d, Decision::Held { deliberate: false });
        assert!(d.records_ticket());
    }

    #[test]
    fn observe_policy_never_remediates() {
        let d = exited_under(Policy::Observe, &free(), true);
        assert_eq!(d, Decision::Observe { deliberate: false });
        assert!(d.records_ticket());
    }

    #[test]
    fn restart_policy_remediates_with_the_built_in_action() {
        let d = exited_under(Policy::Restart, &free(), false);
        assert_eq!(
            d,
            Decision::Remediate {
                policy: Policy::Restart,
                action: Some(Action::Start),
                deliberate: false
            }
        );
        assert!(d.records_ticket());
    }

    #[test]
    fn a_first_creation_is_deliberate_and_opens_no_ticket_but_a_recreation_is_a_repair() {
        let missing = vec![Drift::new(DriftKind::Missing, "no container")];
        let none = Observation::default();
        let r = policy(Policy::Restart);
        let first = decide(
            &missing,
            &none,
            &RepairBudget::default(),
            &r,
            &free(),
            no_agent,
        );
        assert_eq!(
            first,
            Decision::Remediate {
                policy: Policy::Restart,
                action: Some(Action::Create),
                deliberate: true
            }
        );
        assert!(!first.records_ticket());
        let mut created = RepairBudget::default();
        created.created_before = true;
        let again = decide(&missing, &none, &created, &r, &free(), no_agent);
        assert!(matches!(
            again,
            Decision::Remediate {
                deliberate: false,
                ..
            }
        ));
        // A first create that failed and is retried is a repair too.
        let mut retried = RepairBudget::default();
        retried.attempts = 1;
        assert!(decide(&missing, &none, &retried, &r, &free(), no_agent).records_ticket());
    }

    #[test]
    fn a_rollout_is_deliberate_only_on_its_first_try() {
        let drifts = vec![Drift::new(DriftKind::SpecChanged, "spec a, manifest b")];
        let obs = observed(ContainerStatus::Running);
        let r = policy(Policy::Restart);
        let first = decide(
            &drifts,
            &obs,
            &RepairBudget::default(),
            &r,
            &free(),
            no_agent,
        );
        assert_eq!(
            first,
            Decision::Remediate {
                policy: Policy::Restart,
                action: Some(Action::Recreate),
                deliberate: true
            }
        );
        let mut failed_once = RepairBudget::default();
        failed_once.attempts = 1;
        assert!(matches!(
            decide(&drifts, &obs, &failed_once, &r, &free(), no_agent),
            Decision::Remediate {
                deliberate: false,
                ..
            }
        ));
    }

    #[test]
    fn a_name_held_by_a_foreign_container_is_blocked_whatever_the_policy() {
        let drifts = vec![Drift::new(DriftKind::NameConflict, "held by someone else")];
        let obs = Observation {
            name_conflict: Some("is not managed by operator".into()),
            ..Default::default()
        };
        for p in [Policy::Restart, Policy::Agent] {
            let d = decide(
                &drifts,
                &obs,
                &RepairBudget::default(),
                &policy(p),
                &free(),
                |_| true,
            );
            assert_eq!(
                d,
                Decision::Blocked {
                    name_conflict: true
                },
                "{p:?}"
            );
            assert!(d.records_ticket());
        }
    }

    #[test]
    fn restart_without_a_built_in_action_is_blocked() {
        // The engine's own restart policy is restarting it: not ours to touch.
        let drifts = vec![Drift::new(DriftKind::CrashLooping, "restarting")];
        let d = decide(
            &drifts,
            &observed(ContainerStatus::Restarting),
            &RepairBudget::default(),
            &policy(Policy::Restart),
            &free(),
            no_agent,
        );
        assert_eq!(
            d,
            Decision::Blocked {
                name_conflict: false
            }
        );
    }

    #[test]
    fn agent_policy_goes_to_the_agent_when_one_serves_it() {
        let d = exited_under(Policy::Agent, &free(), true);
        assert_eq!(
            d,
            Decision::Remediate {
                policy: Policy::Agent,
                action: Some(Action::Start),
                deliberate: false
            }
        );
    }

    #[test]
    fn under_agent_policy_a_first_creation_is_the_controllers_own_step_agent_or_not() {
        let missing = vec![Drift::new(DriftKind::Missing, "no container")];
        for agent_serves in [true, false] {
            let d = decide(
                &missing,
                &Observation::default(),
                &RepairBudget::default(),
                &policy(Policy::Agent),
                &free(),
                |q| agent_serves && q == Policy::Agent,
            );
            assert_eq!(
                d,
                Decision::Remediate {
                    policy: Policy::Restart,
                    action: Some(Action::Create),
                    deliberate: true
                },
                "agent serves: {agent_serves}"
            );
        }
        // Once created, a missing container is an incident: the agent's.
        let mut created = RepairBudget::default();
        created.created_before = true;
        let d = decide(
            &missing,
            &Observation::default(),
            &created,
            &policy(Policy::Agent),
            &free(),
            |q| q == Policy::Agent,
        );
        assert_eq!(
            d,
            Decision::Remediate {
                policy: Policy::Agent,
                action: Some(Action::Create),
                deliberate: false
            }
        );
    }

    #[test]
    fn agent_policy_without_an_agent_only_observes() {
        let d = exited_under(Policy::Agent, &free(), false);
        assert_eq!(d, Decision::Observe { deliberate: false });
    }

    #[test]
    fn agent_policy_without_an_agent_observes_even_a_name_conflict() {
        let drifts = vec![Drift::new(DriftKind::NameConflict, "held by someone else")];
        let d = decide(
            &drifts,
            &Observation::default(),
            &RepairBudget::default(),
            &policy(Policy::Agent),
            &free(),
            no_agent,
        );
        assert_eq!(d, Decision::Observe { deliberate: false });
    }

    #[test]
    fn a_container_up_for_less_than_the_settle_time_is_settling_not_clean() {
        let obs = Observation {
            container: Some(container(ContainerStatus::Running, None)),
            settling: true,
            ..Default::default()
        };
        let d = decide(
            &[],
            &obs,
            &RepairBudget::default(),
            &policy(Policy::Restart),
            &free(),
            no_agent,
        );
        assert_eq!(d, Decision::Settling);
        assert!(!d.records_ticket());
    }
}
