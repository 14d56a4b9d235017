//! One reconcile's look: the container observed, the stops between looks recorded, the
//! tickets read, the decision made, and each kind of decision carried on: clean (resolve,
//! follow up), settling (look again when settled), or drifting (record, then attempt).

use std::collections::HashSet;
use std::time::SystemTime;

use tracing::{debug, error};

use crate::docker::{ContainerStatus, ServiceKey};
use crate::drift::Drift;
use crate::drift::Fingerprint;
use crate::manifest::{Cluster, Policy, Remediation, Service};
use crate::remediation::Action;
use crate::tickets::{EntryKind, Ticket};

use super::super::decide::{Decision, Holds, decide};
use super::super::diff::{Observation, diff};
use super::super::events::Event;
use super::super::outcome::Outcome;
use super::super::shared::lock;
use super::super::state::RepairBudget;
use super::{Attempt, KeyRun, Reason, observe, settling};

impl KeyRun<'_> {
    /// Observes, diffs, decides, and carries the decision on.
    pub(super) async fn look(
        &self,
        cluster: &Cluster,
        service: &Service,
        budget: &mut RepairBudget,
        event_at: Option<SystemTime>,
    ) -> Outcome {
        let (shared, key, now) = (self.shared, self.key, self.clock.now);
        let r = &service.remediation;
        budget.track_spec(&service.spec_hash());
        let recent = budget.recent_repairs(now, r);
        let mut observed = match observe(
            &shared.store,
            shared.engine.as_ref(),
            cluster,
            service,
            recent,
        )
        .await
        {
            Ok(o) => o,
            Err(e) => {
                return Outcome::Unknown {
                    error: e.to_string(),
                };
            }
        };
        if let Some(c) = observed.container.as_ref().filter(|c| c.adopted) {
            if let Err(e) = self.record_adoption(service, c).await {
                // Nothing is done to a container whose adoption could not be recorded.
                return Outcome::Unknown {
                    error: e.to_string(),
                };
            }
            // The service has had its container: should it disappear, that is a drift to
            // ticket whoever created it, not the first creation of a new service.
            budget.created_before = true;
        }
        let paused = observed
            .container
            .as_ref()
            .is_some_and(|c| c.status == ContainerStatus::Paused);
        let remembered = shared.keys.with(key, |state| {
            if paused {
                state.paused_at = Some(self.clock.wall);
            }
            state.paused_at
        });
        if !paused && remembered > budget.paused_at {
            // A pause this process saw has ended: kept in the ticket store too (once per
            // pause), so a controller started after it still knows the verdicts before it.
            self.save_paused_at(remembered).await;
        }
        observed.health_trusted_after = remembered.max(budget.paused_at);
        if observed
            .container
            .as_ref()
            .is_some_and(|c| c.health == Some(crate::docker::HealthState::Unhealthy))
            && !observed.unhealthy_is_current()
        {
            // A verdict from before the pause: look again once a fresh probe may have run
            // (its result may come without an event the watcher passes on).
            self.again_at(now + shared.config.dependency_poll);
        }
        observed.settling = settling(&observed, self.clock.wall, shared.config.settle);
        let drifts = diff(cluster, service, &observed);
        let unseen = self.unseen_stop(observed.container.as_ref());
        let recorded_unseen = unseen.is_some();
        if let Some(stop) = unseen {
            // Recorded before the service's tickets are read: this look's re-check may end it
            // (self-healed) once the container has settled.
            if let Err(e) = self
                .record_drifts(std::slice::from_ref(&stop), r.window)
                .await
            {
                return Outcome::Unrecorded {
                    error: e.to_string(),
                };
            }
            self.emit(Event::StopBetweenLooks {
                key,
                detail: &stop.detail,
            });
        }
        // The service's tickets: who holds them, and which this look shows over (read with
        // the budget, unless a stop between looks was just recorded on one).
        let tickets = match self.tickets(recorded_unseen).await {
            Ok(t) => t,
            Err(e) => {
                // Never act on (or resolve) what cannot be read.
                return Outcome::Unknown {
                    error: e.to_string(),
                };
            }
        };
        let holds = Holds {
            held: tickets.iter().any(|t| t.held),
            leased: lock(&shared.leases).session(key),
        };
        if !drifts.is_empty() {
            // A long enough healthy spell before this drift resets the backoff first: the
            // decision (is this a first try?) must see the reset.
            budget.saw_drift(now, r);
        }
        let decision = decide(&drifts, &observed, budget, r, &holds, |p| {
            shared.remediator(p).is_some()
        });

        let seen = Seen {
            observed,
            drifts,
            tickets,
            holds,
        };
        match decision {
            Decision::Leased { session } => Outcome::Leased { session },
            Decision::Settling => self.settling(&seen, budget, r),
            Decision::Clean { verified } => {
                self.clean(cluster, service, seen, verified, budget).await
            }
            decision => {
                self.drifting(cluster, service, seen, decision, budget, event_at)
                    .await
            }
        }
    }

    /// Running, but started too recently to be believed: no resolution, no stability; look
    /// again when it would have settled (a crash before then is the same episode, not a
    /// flap).
    fn settling(&self, seen: &Seen, budget: &mut RepairBudget, r: &Remediation) -> Outcome {
        let (shared, now) = (self.shared, self.clock.now);
        let observed = &seen.observed;
        budget.saw_clean(now, false, r);
        let left = observed
            .container
            .as_ref()
            .and_then(|c| c.started_at)
            .and_then(|started| (self.clock.wall - started).to_std().ok())
            .map_or(shared.config.settle, |since| {
                shared.config.settle.saturating_sub(since)
            });
        self.again_at(now + left + std::time::Duration::from_millis(50));
        Outcome::Settling
    }

    /// No drift: resolve what this look shows over, follow up what only a look sees (a
    /// member the gate waits for, a check's restart, a backoff to reset, `restartWith`), and
    /// remember a quiet key for the resync.
    async fn clean(
        &self,
        cluster: &Cluster,
        service: &Service,
        seen: Seen,
        verified: bool,
        budget: &mut RepairBudget,
    ) -> Outcome {
        let (shared, key, now) = (self.shared, self.key, self.clock.now);
        let r = &service.remediation;
        let Seen {
            observed,
            tickets,
            holds,
            ..
        } = seen;
        // Quiet: nothing to follow up that only a full look would see (a ticket to
        // resolve, a check's restart, a member the gate waits for, a backoff to
        // reset, restartWith); a resync may then trust the engine's list for it.
        let mut quiet = verified
            && tickets.is_empty()
            && service.restart_with.is_empty()
            && shared
                .keys
                .read(key, |state| state.check_restart.is_none())
                .unwrap_or(true);
        let why_not_live = tickets
            .iter()
            .find(|t| t.fingerprint.is_check())
            .map(|t| t.id);
        self.follow_taken(cluster, service, verified, why_not_live, budget)
            .await;
        let check_restart = shared
            .keys
            .read(key, |state| state.check_restart.clone())
            .flatten();
        if let Some(repair) = check_restart
            && let Some(outcome) = self
                .restart_for_check(cluster, service, &observed, repair, budget)
                .await
        {
            return outcome;
        }
        if let Some(reset_at) = budget.saw_clean(now, verified, r) {
            // Look again when the backoff is due to reset.
            self.again_at(reset_at);
            quiet = false;
        }
        if verified {
            self.resolve_over(
                tickets,
                &HashSet::new(),
                false,
                observed.container.as_ref(),
                budget,
            )
            .await;
        } else if !tickets.is_empty() {
            // With a healthcheck the desired state is `healthy`: a container still
            // `starting`, or whose `unhealthy` predates its unpause, ends no episode
            // yet. Look again once a probe may have run (its verdict may come
            // without an event the watcher passes on).
            self.again_at(now + shared.config.dependency_poll);
        }
        if verified {
            // Settled: whatever restarts with it may follow now.
            for dependent in cluster
                .services
                .iter()
                .filter(|s| s.restart_with.contains(&service.name))
            {
                shared.queue.schedule_why(
                    ServiceKey::new(&key.cluster, &dependent.name),
                    now,
                    super::super::queue::Why::Dependency,
                );
            }
            // After its tickets are resolved: the restart is a deliberate step, not
            // a reason to keep an incident open.
            if !holds.held
                && service.remediation.policy != Policy::Observe
                && let Some(dependency) = self.restarted_dependency(service, &observed)
            {
                let detail = format!(
                    "{dependency} was restarted or recreated after this container started (restartWith)"
                );
                return self
                    .attempt(
                        Attempt {
                            cluster,
                            service,
                            policy: Policy::Restart,
                            action: Some(Action::Restart),
                            budgeted: false,
                            remediation: r,
                            ticket: None,
                            reason: Reason::Dependency(&dependency),
                            detail,
                            container: observed.container.as_ref(),
                        },
                        budget,
                    )
                    .await;
            }
        }
        if quiet
            && !budget.escalated
            && shared.disruptions.get(key).is_none()
            && observed.container.is_some()
        {
            lock(&shared.quiet).record(key.clone(), self.revision, self.looks_generation);
        }
        Outcome::Clean
    }

    /// Drifting: record the sighting on the drift's ticket, resolve the episodes of other
    /// kinds this look shows over, then carry the decision out (hands off, observe only,
    /// blocked, or an attempt).
    async fn drifting(
        &self,
        cluster: &Cluster,
        service: &Service,
        seen: Seen,
        decision: Decision,
        budget: &mut RepairBudget,
        event_at: Option<SystemTime>,
    ) -> Outcome {
        let (shared, key) = (self.shared, self.key);
        let r = &service.remediation;
        let Seen {
            observed,
            drifts,
            tickets,
            ..
        } = seen;

        if let Some(at) = event_at {
            let latency = SystemTime::now().duration_since(at).unwrap_or_default();
            shared.metrics.event_to_drift(latency);
            debug!(service = %key, event_to_drift_us = latency.as_micros() as u64, "drift detected after event");
        }
        let (ticket, new_episode) = if decision.records_ticket() {
            match self.record_drifts(&drifts, r.window).await {
                Ok(t) => t,
                Err(e) => {
                    // Never act on what cannot be recorded.
                    return Outcome::Unrecorded {
                        error: e.to_string(),
                    };
                }
            }
        } else {
            (None, true)
        };
        // Episodes of other kinds that this observation shows over (the container exists
        // again, is no longer paused...) are resolved.
        let still: HashSet<Fingerprint> = drifts
            .iter()
            .map(|d| Fingerprint::service(&key.cluster, &key.service, d.kind))
            .collect();
        self.resolve_over(tickets, &still, true, observed.container.as_ref(), budget)
            .await;

        let ticket_id = ticket.as_ref().map(|t| t.id);
        if !budget.escalated {
            // Taken down by the controller and drifting still: past its deadline a rollout
            // stops here.
            if self
                .follow_taken(cluster, service, false, ticket_id, budget)
                .await
            {
                return Outcome::Escalated;
            }
        }
        let kinds: Vec<&str> = drifts.iter().map(|d| d.kind.as_str()).collect();
        let detail = drifts[0].detail.clone();
        match decision {
            Decision::Leased { .. } | Decision::Clean { .. } | Decision::Settling => {
                unreachable!("handled above")
            }
            Decision::Held { .. } => {
                if new_episode {
                    self.emit(Event::DriftHeld {
                        key,
                        ticket: ticket_id,
                        drifts: &kinds.join(","),
                        detail: &detail,
                    });
                }
                Outcome::Held
            }
            Decision::Observe { .. } => {
                if new_episode {
                    self.emit(Event::DriftObserved {
                        key,
                        ticket: ticket_id,
                        drifts: &kinds.join(","),
                        detail: &detail,
                        policy: r.policy.as_str(),
                    });
                    if r.policy == Policy::Agent
                        && let (Some(journal), Some(id)) = (self.journal(), ticket_id)
                    {
                        let why = if self.shared.registered(Policy::Agent) {
                            "the agent is not dispatching (the API refused to serve; see the log): left open for a person"
                        } else {
                            "the agent is disabled (ANTHROPIC_API_KEY is not set): left open for a person"
                        };
                        if let Err(e) = journal
                            .note(id, EntryKind::Note, serde_json::json!({"note": why}))
                            .await
                        {
                            error!(service = %key, error = %e, "cannot note on the ticket");
                        }
                    }
                }
                Outcome::Observed
            }
            Decision::Blocked { name_conflict } => {
                if new_episode {
                    self.emit(Event::DriftBlocked {
                        key,
                        ticket: ticket_id,
                        drifts: &kinds.join(","),
                        detail: &detail,
                        name_conflict,
                    });
                }
                Outcome::Blocked
            }
            Decision::Remediate {
                policy,
                action,
                deliberate,
            } => {
                self.attempt(
                    Attempt {
                        cluster,
                        service,
                        policy,
                        action,
                        budgeted: !deliberate,
                        remediation: r,
                        ticket: ticket_id,
                        reason: Reason::Drifts(&drifts),
                        detail,
                        container: observed.container.as_ref(),
                    },
                    budget,
                )
                .await
            }
        }
    }
}

/// What one look saw, for the step its decision leads to.
struct Seen {
    observed: Observation,
    drifts: Vec<Drift>,
    tickets: Vec<Ticket>,
    holds: Holds,
}
