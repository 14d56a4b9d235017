//! The journal: the one async way into the ticket store. Every call runs on a blocking
//! thread (SQLite waits on locks), so the controller, an agent dispatcher and the drills can
//! record and read tickets without stalling their runtime, and without knowing the SQL.
//!
//! It also keeps the ticket metrics (opened, resolved, open by drift) in step with what it
//! writes, so no caller has to remember to.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use super::model::{Actor, Cause, Sighting, Ticket, TimelineEntry};
use super::query::{Episode, TicketQuery};
use super::store::{DriftSighting, Selector, ServiceView, Store};
use super::{Budget, EntryKind, TicketError};
use crate::metrics::Metrics;

/// What a re-check saw, recorded on every ticket it resolves.
pub type Recheck = serde_json::Value;

/// Cheap to clone; clones share the store.
#[derive(Clone)]
pub struct Journal {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
}

impl Journal {
    pub fn new(store: Arc<Store>, metrics: Arc<Metrics>) -> Self {
        Journal { store, metrics }
    }

    /// Runs a store call on a blocking thread.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, TicketError> + Send + 'static,
    ) -> Result<T, TicketError> {
        let store = self.store.clone();
        self.metrics.store_round_trips.inc();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| TicketError::Task(e.to_string()))?
    }

    /// Runs a store write; keeps `operator_store_writable` saying whether writes succeed.
    /// Only a failure of the database itself counts (a refused change, such as a ticket held
    /// meanwhile, is an answer, not a failure).
    pub(super) async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, TicketError> + Send + 'static,
    ) -> Result<T, TicketError> {
        let result = self.call(f).await;
        self.wrote(result.as_ref().err());
        result
    }

    /// Keeps `operator_store_writable` in step with a write's result.
    fn wrote(&self, failure: Option<&TicketError>) {
        match failure {
            None => {
                self.metrics.store_writable.set(1);
            }
            Some(TicketError::Query { .. } | TicketError::Task(_)) => {
                if self.metrics.store_writable.set(0) != 0 {
                    warn!("the ticket store cannot be written: no repairs until it can");
                }
            }
            Some(_) => {}
        }
    }

    /// Records one sighting; a new or reopened episode is counted and the gauges refreshed.
    pub async fn sighting(
        &self,
        sighting: DriftSighting,
        now: DateTime<Utc>,
    ) -> Result<(Ticket, Sighting), TicketError> {
        let drift = sighting.drift;
        // The gauges are counted in the same round trip when an episode begins.
        let (ticket, seen, counts) = self
            .write(move |s| {
                let (ticket, seen) = s.record_drift(&sighting, now)?;
                let counts = if seen == Sighting::Seen {
                    None
                } else {
                    s.open_counts().ok()
                };
                Ok((ticket, seen, counts))
            })
            .await?;
        if seen != Sighting::Seen {
            self.metrics.tickets_opened.inc();
            self.metrics.drift(drift.as_str());
            self.set_gauges(counts).await;
        }
        Ok((ticket, seen))
    }

    /// The unresolved tickets a selector picks.
    pub async fn unresolved(&self, selector: Selector) -> Result<Vec<Ticket>, TicketError> {
        self.call(move |s| s.unresolved(&selector)).await
    }

    /// What a reconcile of one service reads from the store, in one round trip: its repair
    /// budget and its unresolved tickets, stamped with the store's generation.
    pub async fn service_view(
        &self,
        cluster: &str,
        service: &str,
    ) -> Result<ServiceView, TicketError> {
        let (c, s) = (cluster.to_string(), service.to_string());
        self.call(move |st| st.service_view(&c, &s)).await
    }

    /// Whether `view` still holds what the store does, told without a round trip (see
    /// [`Store::generation_now`]); false when that cannot be told at once.
    pub fn is_current(&self, view: &ServiceView) -> bool {
        self.store.generation_now() == Some(view.generation)
    }

    pub async fn get(&self, id: i64) -> Result<Option<Ticket>, TicketError> {
        self.call(move |s| s.get(id)).await
    }

    pub async fn timeline(&self, id: i64) -> Result<Vec<TimelineEntry>, TicketError> {
        self.call(move |s| s.timeline(id)).await
    }

    pub async fn episodes(&self, query: TicketQuery) -> Result<Vec<Episode>, TicketError> {
        self.call(move |s| s.episodes(&query)).await
    }

    pub async fn note(
        &self,
        id: i64,
        kind: EntryKind,
        detail: serde_json::Value,
    ) -> Result<(), TicketError> {
        self.write(move |s| s.append(id, kind, detail, Utc::now()))
            .await
    }

    /// Records that `actor` starts an action, with the budget that counts it, durably and
    /// before the action runs. False: the ticket was held or resolved meanwhile, hands off.
    pub async fn start_action(
        &self,
        id: i64,
        actor: Actor,
        what: serde_json::Value,
        budget: Option<(String, String, Budget)>,
        now: DateTime<Utc>,
    ) -> Result<bool, TicketError> {
        self.write(move |s| {
            let budget = budget
                .as_ref()
                .map(|(c, sv, b)| (c.as_str(), sv.as_str(), b));
            s.action_started(id, actor, budget, what, now)
        })
        .await
    }

    /// Records an action's result in the name of the actor that started it.
    pub async fn finish_action(
        &self,
        id: i64,
        actor: Actor,
        ok: bool,
        result: serde_json::Value,
    ) -> Result<(), TicketError> {
        self.write(move |s| s.action_finished(id, actor, ok, result, Utc::now()))
            .await
    }

    /// [`Journal::finish_action`], then the service's view read afresh in the same round
    /// trip (what its next reconcile reads, unless the store changes before).
    pub async fn finish_action_viewed(
        &self,
        id: i64,
        actor: Actor,
        ok: bool,
        result: serde_json::Value,
        (cluster, service): (String, String),
    ) -> Result<ServiceView, TicketError> {
        self.write(move |s| {
            s.action_finished(id, actor, ok, result, Utc::now())?;
            s.service_view(&cluster, &service)
        })
        .await
    }

    pub async fn escalate(
        &self,
        id: i64,
        why: serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<bool, TicketError> {
        self.write(move |s| s.escalate(id, why, now)).await
    }

    /// Resolves tickets that a fresh re-check showed over, recording what it saw on each.
    /// The cause is the actor of each ticket's last successful action, or self-healed.
    pub async fn resolve_rechecked(
        &self,
        tickets: Vec<Ticket>,
        recheck: Recheck,
        now: DateTime<Utc>,
    ) -> Result<(), TicketError> {
        self.resolve_then(tickets, recheck, now, None).await?;
        Ok(())
    }

    /// [`Journal::resolve_rechecked`] for one service's tickets, with the service's budget
    /// saved and its view read afresh in the same round trip: a reconcile's last write.
    pub async fn resolve_rechecked_saving(
        &self,
        tickets: Vec<Ticket>,
        recheck: Recheck,
        now: DateTime<Utc>,
        (cluster, service, budget): (String, String, Option<Budget>),
    ) -> Result<ServiceView, TicketError> {
        let view = self
            .resolve_then(tickets, recheck, now, Some((cluster, service, budget)))
            .await?;
        Ok(view.expect("a view is read when asked for"))
    }

    /// Resolves `tickets`, each in a transaction of its own (one refused leaves the others
    /// resolved), counts the open tickets, and, for a service, saves its budget and reads
    /// its view: all in one round trip.
    async fn resolve_then(
        &self,
        tickets: Vec<Ticket>,
        recheck: Recheck,
        now: DateTime<Utc>,
        service: Option<(String, String, Option<Budget>)>,
    ) -> Result<Option<ServiceView>, TicketError> {
        if tickets.is_empty() && service.is_none() {
            return Ok(None);
        }
        let ids: Vec<i64> = tickets.iter().map(|t| t.id).collect();
        // A failure stops the rest, as it would have stopped the caller; the tickets
        // resolved before it are still counted.
        let (causes, failed, counts, view) = self
            .write(move |s| {
                let mut causes = Vec::with_capacity(ids.len());
                for id in ids {
                    match s.resolve_rechecked(id, &recheck, now) {
                        Ok(cause) => causes.push(cause),
                        Err(e) => return Ok((causes, Some(e), s.open_counts().ok(), None)),
                    }
                }
                let counts = s.open_counts().ok();
                let view = match service {
                    Some((cluster, service, budget)) => {
                        if let Some(budget) = budget {
                            s.save_budget(&cluster, &service, &budget)?;
                        }
                        Some(s.service_view(&cluster, &service)?)
                    }
                    None => None,
                };
                Ok((causes, None, counts, view))
            })
            .await?;
        for (ticket, cause) in tickets.iter().zip(causes) {
            if let Some(cause) = cause {
                let took = (now - ticket.episode_at).to_std().unwrap_or_default();
                self.metrics.ticket_resolved(cause.as_str(), took);
                info!(cluster = %ticket.cluster, target = %ticket.service, ticket = ticket.id, drift = %ticket.drift, cause = cause.as_str(), after_ms = took.as_millis() as u64, "ticket resolved");
            }
        }
        if let Some(e) = failed {
            self.wrote(Some(&e));
            self.set_gauges(counts).await;
            return Err(e);
        }
        self.set_gauges(counts).await;
        Ok(view)
    }

    /// Closes the tickets of services, checks or clusters no longer declared (cause
    /// `removed`), each with the reason why, and refreshes the gauges.
    pub async fn resolve_removed(
        &self,
        removed: Vec<(Ticket, String)>,
        now: DateTime<Utc>,
    ) -> Result<(), TicketError> {
        if removed.is_empty() {
            return Ok(());
        }
        for (ticket, reason) in removed {
            let id = ticket.id;
            let why = reason.clone();
            let closed = self
                .write(move |s| s.resolve_removed(id, &why, now))
                .await?;
            if closed.is_some() {
                let took = (now - ticket.episode_at).to_std().unwrap_or_default();
                self.metrics.ticket_resolved(Cause::Removed.as_str(), took);
                info!(cluster = %ticket.cluster, target = %ticket.service, ticket = id, drift = %ticket.drift, cause = Cause::Removed.as_str(), %reason, "ticket closed");
            }
        }
        self.refresh_gauges().await;
        Ok(())
    }

    pub async fn load_budget(
        &self,
        cluster: &str,
        service: &str,
    ) -> Result<Option<Budget>, TicketError> {
        let (c, s) = (cluster.to_string(), service.to_string());
        self.call(move |st| st.load_budget(&c, &s)).await
    }

    pub async fn save_budget(
        &self,
        cluster: &str,
        service: &str,
        budget: Budget,
    ) -> Result<(), TicketError> {
        let (c, s) = (cluster.to_string(), service.to_string());
        self.write(move |st| st.save_budget(&c, &s, &budget)).await
    }

    /// [`Journal::save_budget`], then the service's view read afresh in the same round trip.
    pub async fn save_budget_viewed(
        &self,
        cluster: &str,
        service: &str,
        budget: Budget,
    ) -> Result<ServiceView, TicketError> {
        let (c, s) = (cluster.to_string(), service.to_string());
        self.write(move |st| {
            st.save_budget(&c, &s, &budget)?;
            st.service_view(&c, &s)
        })
        .await
    }

    /// See [`Store::save_paused_at`].
    pub async fn save_paused_at(
        &self,
        cluster: &str,
        service: &str,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), TicketError> {
        let (c, s) = (cluster.to_string(), service.to_string());
        self.write(move |st| st.save_paused_at(&c, &s, at)).await
    }

    /// Records an adopted container; true when it was not recorded before.
    pub async fn record_adoption(&self, adoption: super::Adoption) -> Result<bool, TicketError> {
        self.write(move |store| store.record_adoption(&adoption))
            .await
    }

    /// Replaces what is stored of `cluster`'s quorum gate.
    pub async fn save_gate(
        &self,
        cluster: &str,
        state: super::GateState,
    ) -> Result<(), TicketError> {
        let cluster = cluster.to_string();
        self.write(move |st| st.save_gate(&cluster, &state)).await
    }

    /// The quorum gate's stored state, by cluster.
    pub async fn load_gates(&self) -> Result<Vec<(String, super::GateState)>, TicketError> {
        self.call(|st| st.load_gates()).await
    }

    /// A number that changes when another process commits to the store.
    pub async fn data_version(&self) -> Result<i64, TicketError> {
        self.call(|s| s.data_version()).await
    }

    pub async fn close_interrupted_actions(&self) -> Result<usize, TicketError> {
        self.write(|s| s.close_interrupted_actions(Utc::now()))
            .await
    }

    /// Sets the open-tickets gauge from counts read with a write, or from the store when
    /// they could not be.
    async fn set_gauges(&self, counts: Option<Vec<(String, i64)>>) {
        match counts {
            Some(counts) => self.metrics.set_open_tickets(&counts),
            None => self.refresh_gauges().await,
        }
    }

    /// Sets the open-tickets gauge from the store.
    pub async fn refresh_gauges(&self) {
        match self.call(|s| s.open_counts()).await {
            Ok(counts) => self.metrics.set_open_tickets(&counts),
            Err(e) => warn!(error = %e, "cannot count open tickets"),
        }
    }
}
