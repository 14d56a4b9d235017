//! The quorum gate around one key: who is live for it, a member the controller took down
//! followed until it is live again (or its rollout stopped), a person's override, and an
//! action held back.

use tracing::error;

use crate::docker::ServiceKey;
use crate::drift::DriftKind;
use crate::manifest::{Cluster, Policy, Service};
use crate::remediation::Action;
use crate::tickets::{EntryKind, TicketError};

use super::super::events::Event;
use super::super::outcome::Outcome;
use super::super::planner::{self, QuorumStep, Step};
use super::super::quorum;
use super::super::state::RepairBudget;
use super::{Attempt, GATE_RETRY, KeyRun, LIVE_POLL};

impl KeyRun<'_> {
    /// Who runs and who is live now, for the quorum gate, per service of the cluster: live
    /// when its container runs (not paused), has settled, is not unhealthy, and (for members
    /// of a group) none of the group's live checks has an unresolved ticket on it. A ticket
    /// store that cannot be read is an error: the gate judges nothing it cannot see.
    pub(super) async fn liveness(
        &self,
        cluster: &Cluster,
    ) -> Result<std::collections::HashMap<String, (bool, bool)>, TicketError> {
        let failing = match self.journal() {
            Some(journal) => quorum::LiveCheckFailures::read(journal, cluster).await?,
            None => quorum::LiveCheckFailures::default(),
        };
        let settled_before = self.clock.wall
            - chrono::Duration::from_std(self.shared.config.settle).unwrap_or_default();
        Ok(cluster
            .services
            .iter()
            .map(|s| {
                let container = self
                    .shared
                    .store
                    .get(&ServiceKey::new(cluster.name.clone(), s.name.clone()));
                let state = quorum::member_state(
                    container.as_ref(),
                    settled_before,
                    failing.fail(cluster, &s.name),
                );
                (s.name.clone(), state)
            })
            .collect())
    }

    /// How long the service has to be live again after the controller took it down: the
    /// shortest `live.timeout` of its groups (`None`: in no group, nothing to wait for).
    pub(super) fn live_timeout(cluster: &Cluster, service: &str) -> Option<std::time::Duration> {
        cluster.groups_of(service).map(|g| g.live_timeout).min()
    }

    /// A member the controller took down: once it is live again (running, settled, healthy,
    /// and each of its groups' live checks evaluated passing on it since), it is no longer
    /// under way and the rest of its groups may go. Past its deadline a rollout stops there
    /// (escalated, and the member stays under way so no other member follows it); any other
    /// action is simply no longer waited for.
    pub(super) async fn follow_taken(
        &self,
        cluster: &Cluster,
        service: &Service,
        verified: bool,
        ticket: Option<i64>,
        budget: &mut RepairBudget,
    ) -> bool {
        let (shared, key, now) = (self.shared, self.key, self.clock.now);
        let Some(taken) = shared.disruptions.get(key) else {
            return false;
        };
        let groups: Vec<&crate::manifest::Group> = cluster.groups_of(&service.name).collect();
        if verified {
            let clean_at = shared.disruptions.seen_clean(key, now).unwrap_or(now);
            let fresh = groups.iter().flat_map(|g| &g.live_checks).all(|c| {
                shared
                    .check_views
                    .passed_since(&cluster.name, c, &service.name, clean_at)
            });
            if fresh
                && self
                    .liveness(cluster)
                    .await
                    .is_ok_and(|live| live.get(&service.name).is_some_and(|&(_, live)| live))
            {
                shared.disruptions.release(key);
                self.emit(Event::LiveAgain {
                    key,
                    rollout: taken.rollout,
                });
                for member in groups.iter().flat_map(|g| &g.members) {
                    if member != &service.name {
                        shared.queue.schedule_why(
                            ServiceKey::new(&key.cluster, member),
                            now,
                            super::super::queue::Why::Dependency,
                        );
                    }
                }
                return false;
            }
        }
        let Some(deadline) = taken.deadline else {
            return false;
        };
        if now < deadline {
            // Running: look again soon for the fresh verdict. Down: its own events bring it
            // back here; the deadline is looked at in any case.
            let next = if verified {
                (now + LIVE_POLL).min(deadline)
            } else {
                deadline
            };
            self.again_at(next);
            return false;
        }
        if !taken.rollout {
            shared.disruptions.release(key);
            self.emit(Event::NotLiveInTime { key });
            return false;
        }
        if taken.gave_up {
            // Escalated once already; stays under way until it is live again.
            self.again_at(now + LIVE_POLL * 4);
            return false;
        }
        shared.disruptions.give_up(key);
        let waited = Self::live_timeout(cluster, &service.name).unwrap_or_default();
        let reason = format!(
            "the rollout stopped at {}: not live within {}s of being recreated with the new spec; the rest of {} keep their old spec until it is live or the manifest changes",
            service.name,
            waited.as_secs(),
            groups
                .iter()
                .map(|g| g.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        );
        self.emit(Event::RolloutStopped {
            key,
            ticket,
            reason: &reason,
        });
        self.again_at(now + LIVE_POLL * 4);
        // Escalated on the ticket that shows why it is not live (its drift, or a failing live
        // check): a budget marked escalated with no ticket to end it would never end.
        let (Some(journal), Some(id)) = (self.journal(), ticket) else {
            return false;
        };
        let why = serde_json::json!({"reason": "rollout stopped", "rollout": reason});
        if let Err(e) = journal.escalate(id, why, self.clock.wall).await {
            error!(service = %key, error = %e, "cannot mark the ticket escalated");
            return false;
        }
        budget.escalated = true;
        true
    }

    /// Whether a person overrode the gate for the ticket's next action (`tickets retry ID
    /// --force`, not yet used by an action): who, as recorded.
    pub(super) async fn forced(&self, ticket: Option<i64>) -> Option<serde_json::Value> {
        let (journal, id) = (self.journal()?, ticket?);
        let timeline = journal.timeline(id).await.ok()?;
        let last = timeline
            .iter()
            .rev()
            .find(|e| e.kind == EntryKind::ActionStarted || e.kind == EntryKind::Retried)?;
        (last.kind == EntryKind::Retried && last.detail["force"] == true)
            .then(|| last.detail.clone())
    }

    /// Holds the attempt back for the quorum: said on its ticket once per reason, counted,
    /// and looked at again shortly (the group's recovery may not touch this key).
    pub(super) async fn gated(&self, a: &Attempt<'_>, refusal: quorum::Refusal) -> Outcome {
        let (shared, key) = (self.shared, self.key);
        let reason = refusal.to_string();
        let new = shared
            .keys
            .with(key, |state| state.gated.replace(reason.clone()))
            != Some(reason.clone());
        if new {
            // Once per hold (and per changed reason), not per look every 2 s.
            shared
                .metrics
                .actions_gated
                .get_or_create(&vec![
                    ("cluster", key.cluster.clone()),
                    ("group", refusal.group().to_string()),
                    ("reason", refusal.rule().to_string()),
                ])
                .inc();
            self.emit(Event::Gated {
                key,
                ticket: a.ticket,
                action: a.action.as_ref().map(|x| x.as_str()),
                reason: &reason,
            });
            if let (Some(journal), Some(id)) = (self.journal(), a.ticket)
                && let Err(e) = journal
                    .note(
                        id,
                        EntryKind::Note,
                        serde_json::json!({"note": format!("{} held back: {reason}", a.action.as_ref().map_or("the action", |x| x.as_str()))}),
                    )
                    .await
            {
                error!(service = %key, error = %e, "cannot note on the ticket");
            }
        }
        self.again_at(self.clock.now + GATE_RETRY);
        Outcome::Gated { reason }
    }

    /// The quorum gate: a built-in action that takes a running container down waits while
    /// its group could not spare it (or the cluster has enough under way already), unless a
    /// person forced it. `Ok(true)`: the member is now under way, recorded durably; `Err`:
    /// the attempt ends with this outcome.
    pub(super) async fn quorum_gate(
        &self,
        a: &Attempt<'_>,
        budget: &mut RepairBudget,
    ) -> Result<bool, Outcome> {
        let (shared, key, now) = (self.shared, self.key, self.clock.now);
        let mut taken = false;
        if !(a.policy == Policy::Restart
            && matches!(a.action, Some(Action::Restart) | Some(Action::Recreate)))
        {
            return Ok(false);
        }
        let what = quorum::Disruption {
            rollout: a
                .reason
                .drifts()
                .iter()
                .any(|d| d.kind == DriftKind::SpecChanged),
            repair: a.budgeted,
        };
        let states = match self.liveness(a.cluster).await {
            Ok(states) => states,
            Err(e) => {
                return Err(Outcome::Unknown {
                    error: format!("the quorum gate cannot read the live checks: {e}"),
                });
            }
        };
        let running = |m: &str| states.get(m).is_some_and(|&(running, _)| running);
        let live = |m: &str| states.get(m).is_some_and(|&(_, live)| live);
        let disruptions = &shared.disruptions;
        // A statement of its own: the view (not `Sync`) must not live across an await.
        let first = disruptions.take(a.cluster, key, what, (&running, &live), now, false);
        let refused = first.as_ref().err().map(ToString::to_string);
        let verdict = first.map(|t| {
            taken = t;
        });
        let forced = match &verdict {
            Ok(()) => None,
            Err(_) => self.forced(a.ticket).await,
        };
        match planner::quorum(verdict, forced.is_some()) {
            QuorumStep::Go { forced: false } => {}
            QuorumStep::Go { forced: true } => {
                let refusal = refused.unwrap_or_default();
                self.emit(Event::GateOverridden {
                    key,
                    ticket: a.ticket,
                    refusal: &refusal,
                });
                if let (Some(journal), Some(id)) = (self.journal(), a.ticket)
                    && let Err(e) = journal
                        .note(
                            id,
                            EntryKind::Note,
                            serde_json::json!({
                                "note": format!("gate overridden (tickets retry --force): {refusal}"),
                                "override": forced,
                            }),
                        )
                        .await
                {
                    error!(service = %key, error = %e, "cannot note on the ticket");
                }
                taken = disruptions
                    .take(a.cluster, key, what, (&running, &live), now, true)
                    .unwrap_or(false);
            }
            QuorumStep::Gated(refusal) => return Err(self.gated(a, refusal).await),
            QuorumStep::Escalate(why) => {
                return Err(self.carry_out(a, Step::Escalate { why }, budget).await);
            }
        }
        // Durable before acting, like the attempt: a controller killed during the action
        // comes back with the member under way and the window counting it.
        if taken && let Err(e) = shared.persist_gate().await {
            shared.disruptions.release(key);
            return Err(Outcome::Unrecorded {
                error: format!("the quorum gate's state could not be recorded: {e}"),
            });
        }
        Ok(taken)
    }
}
