//! One reconcile's records in the ticket store: the repair budget read once and saved once,
//! the service's unresolved tickets, the sightings of its drifts, the resolutions a fresh
//! look shows, and the adoption of a container the manifest takes over.

use std::collections::HashSet;

use tracing::{error, warn};

use crate::docker::{ContainerStatus, ObservedContainer};
use crate::drift::{Drift, Fingerprint};
use crate::manifest::Service;
use crate::tickets::{DriftSighting, Selector, ServiceView, Sighting, Status, Ticket, TicketError};

use super::super::events::Event;
use super::super::shared::lock;
use super::super::state::RepairBudget;
use super::KeyRun;

impl KeyRun<'_> {
    /// Records, once per container, that the manifest's `adopt` took `c` over, and says so
    /// in the log.
    pub(super) async fn record_adoption(
        &self,
        service: &Service,
        c: &ObservedContainer,
    ) -> Result<(), TicketError> {
        let (shared, key) = (self.shared, self.key);
        if shared
            .keys
            .read(key, |state| state.adopted.as_ref() == Some(&c.id))
            .unwrap_or(false)
        {
            return Ok(());
        }
        if let Some(journal) = self.journal() {
            let first = journal
                .record_adoption(crate::tickets::Adoption {
                    cluster: key.cluster.clone(),
                    service: key.service.clone(),
                    container_id: c.id.clone(),
                    name: c.name.clone(),
                    adopted_at: self.clock.wall,
                })
                .await?;
            if first {
                self.emit(Event::Adopted {
                    key,
                    container: &c.id,
                    name: &c.name,
                    spec: service.adopt.map_or("observed", |a| a.as_str()),
                    how: match &service.compose {
                        Some(compose) if c.name != service.name => format!(
                            "found by its compose labels: project {}, service {}",
                            compose.project, compose.service
                        ),
                        _ => "named by the manifest's adopt".to_string(),
                    },
                });
            }
        }
        shared
            .keys
            .with(key, |state| state.adopted = Some(c.id.clone()));
        Ok(())
    }

    /// The key's repair budget: from the ticket store when there is one (the truth, which a
    /// person may have changed with `tickets retry`), else from memory.
    /// Also keeps the service's unresolved tickets, read in the same round trip, for this
    /// reconcile's look ([`KeyRun::tickets`]).
    ///
    /// The read is the view the key's last reconcile left (read with its last write) while
    /// the store has not changed since, which costs no round trip; else it is read afresh.
    pub(super) async fn load_budget(&self) -> Result<RepairBudget, TicketError> {
        let Some(journal) = self.journal() else {
            return Ok(self
                .shared
                .keys
                .read(self.key, |state| state.budget.clone())
                .flatten()
                .unwrap_or_default());
        };
        let kept = self
            .shared
            .keys
            .read(self.key, |state| state.view.clone())
            .flatten()
            .filter(|view| journal.is_current(view));
        let view = match kept {
            Some(view) => view,
            None => {
                let view = journal
                    .service_view(&self.key.cluster, &self.key.service)
                    .await?;
                self.keep_view(view.clone());
                view
            }
        };
        *lock(&self.tickets) = Some(view.tickets);
        Ok(view
            .budget
            .map(|b| RepairBudget::from_stored(&b, self.clock))
            .unwrap_or_default())
    }

    /// Keeps the view a write of this reconcile read back, for the key's next reconcile.
    pub(super) fn keep_view(&self, view: ServiceView) {
        self.shared
            .keys
            .with(self.key, |state| state.view = Some(view));
    }

    /// The service's unresolved tickets: as read with the budget when this reconcile began,
    /// or read again when this reconcile recorded a sighting since (`fresh`).
    pub(super) async fn tickets(&self, fresh: bool) -> Result<Vec<Ticket>, TicketError> {
        let Some(journal) = self.journal() else {
            return Ok(Vec::new());
        };
        if !fresh && let Some(tickets) = lock(&self.tickets).take() {
            return Ok(tickets);
        }
        journal
            .unresolved(Selector::Target {
                cluster: self.key.cluster.clone(),
                target: self.key.service.clone(),
            })
            .await
    }

    /// Keeps the budget in memory and, when it differs from what the store holds, in the
    /// store.
    pub(super) async fn save_budget(&self, budget: &RepairBudget) {
        if self.shared.config.observe_only {
            // An observer repairs nothing, so it spends and escalates nothing either: the
            // budget is the acting controller's, whatever an observer's look concluded.
            return;
        }
        let escalated = self.shared.keys.save_budget(self.key, budget.clone());
        self.shared.metrics.escalated.set(escalated as i64);
        let Some(journal) = self.journal() else {
            return;
        };
        let stored = budget.to_stored(self.clock);
        if lock(&self.stored).as_ref() == Some(&stored) {
            return;
        }
        match journal
            .save_budget_viewed(&self.key.cluster, &self.key.service, stored.clone())
            .await
        {
            Ok(view) => {
                *lock(&self.stored) = Some(stored);
                self.keep_view(view);
            }
            Err(e) => error!(service = %self.key, error = %e, "cannot save the repair budget"),
        }
    }

    /// Keeps when the service was last seen paused in the ticket store (see
    /// [`crate::tickets::Store::save_paused_at`]). A failure only costs a controller started
    /// later that knowledge: said, not retried.
    pub(super) async fn save_paused_at(&self, at: Option<chrono::DateTime<chrono::Utc>>) {
        let (Some(journal), Some(at)) = (self.journal(), at) else {
            return;
        };
        if let Err(e) = journal
            .save_paused_at(&self.key.cluster, &self.key.service, at)
            .await
        {
            error!(service = %self.key, error = %e, "cannot record when the service was paused");
        }
    }

    /// Records every drift on its ticket. Returns the ticket of the first (primary) drift and
    /// whether this sighting began a new episode (opened or reopened a ticket).
    pub(super) async fn record_drifts(
        &self,
        drifts: &[Drift],
        cooldown: std::time::Duration,
    ) -> Result<(Option<Ticket>, bool), TicketError> {
        let Some(journal) = self.journal() else {
            return Ok((None, true));
        };
        let key = self.key;
        let mut primary = None;
        let mut new_episode = false;
        let mut seen = HashSet::new();
        for d in drifts {
            let fingerprint = Fingerprint::service(&key.cluster, &key.service, d.kind);
            if !seen.insert(fingerprint.clone()) {
                continue;
            }
            let (ticket, sighting) = journal
                .sighting(
                    DriftSighting {
                        fingerprint,
                        drift: d.kind,
                        detail: d.detail.clone(),
                        cooldown,
                        evidence: None,
                    },
                    self.clock.wall,
                )
                .await?;
            if sighting != Sighting::Seen {
                self.emit(Event::TicketOpened {
                    key,
                    ticket: ticket.id,
                    drift: d.kind.as_str(),
                    detail: &d.detail,
                    flaps: ticket.flaps,
                    reopened: sighting != Sighting::Opened,
                });
                new_episode = true;
            }
            primary.get_or_insert(ticket);
        }
        Ok((primary, new_episode))
    }

    /// A fresh observation shows the drift of these tickets gone: resolves every unresolved
    /// container ticket of the service whose fingerprint is not in `still`, ending the
    /// service's escalation in `budget` when an escalated one was among them. The budget is
    /// saved, and the key's view read back, in the same round trip.
    pub(super) async fn resolve_over(
        &self,
        tickets: Vec<Ticket>,
        still: &HashSet<Fingerprint>,
        service_drifts: bool,
        container: Option<&ObservedContainer>,
        budget: &mut RepairBudget,
    ) {
        let Some(journal) = self.journal() else {
            return;
        };
        // Check tickets are the check evaluations' to resolve: a running container says
        // nothing about whether its checks pass. A held ticket is a person's: while the
        // service still drifts in any way it stays open (and held), even if its own kind of
        // drift changed.
        let (kept, over): (Vec<Ticket>, Vec<Ticket>) = tickets.into_iter().partition(|t| {
            still.contains(&t.fingerprint) || t.fingerprint.is_check() || (service_drifts && t.held)
        });
        if over.is_empty() {
            return;
        }
        let escalated = |ts: &[Ticket]| ts.iter().any(|t| t.status == Status::Escalated);
        let before = budget.clone();
        if escalated(&over) && !escalated(&kept) {
            budget.end_escalation();
        }
        // "desired state" only when it is: running, and healthy by its healthcheck if it has
        // one, with no drift of another kind. Otherwise only the ended episodes are over.
        let desired = still.is_empty()
            && container.is_some_and(|c| {
                c.status == ContainerStatus::Running
                    && c.health
                        .is_none_or(|h| h == crate::docker::HealthState::Healthy)
            });
        let mut now_drifting: Vec<&str> = still
            .iter()
            .filter_map(|f| match &f.subject {
                crate::drift::Subject::Drift(family) => Some(family.as_str()),
                crate::drift::Subject::Check(_) => None,
            })
            .collect();
        now_drifting.sort_unstable();
        let result = if desired {
            "desired state".to_string()
        } else {
            format!(
                "episode over; the service now shows {}",
                now_drifting.join(", ")
            )
        };
        let seen = serde_json::json!({
            "result": result,
            "container": container.map(|c| &c.id),
            "status": container.map(|c| c.status.as_str()),
            "health": container.and_then(|c| c.health),
        });
        // An observer saves no budget (see `save_budget`); an unchanged one is not saved.
        let stored = budget.to_stored(self.clock);
        let save = (!self.shared.config.observe_only
            && lock(&self.stored).as_ref() != Some(&stored))
        .then(|| stored.clone());
        let saving = save.is_some();
        match journal
            .resolve_rechecked_saving(
                over,
                seen,
                self.clock.wall,
                (self.key.cluster.clone(), self.key.service.clone(), save),
            )
            .await
        {
            Ok(view) => {
                if saving {
                    *lock(&self.stored) = Some(stored);
                }
                self.keep_view(view);
            }
            Err(e) => {
                *budget = before;
                warn!(service = %self.key, error = %e, "cannot resolve tickets; will re-check");
                self.retry_soon();
            }
        }
    }
}
