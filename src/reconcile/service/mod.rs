//! One key's reconcile: read the service from the observed store, diff, [`decide`], carry
//! the decision out, and save the key's repair budget once at the end.
//!
//! # Guarantees
//! - Level-triggered: the service is read from the observed store, never from the event that
//!   woke the reconcile, and only while the store is fresh for it (no look the watcher owes it
//!   is under way; it was listed with the manifests' current adoption set); while the event
//!   stream is down nothing is concluded. The engine is asked directly only as the
//!   precondition of an action: who holds the name of a container to create, whether the
//!   image is there, and (inside the actions) the state of a container to stop.
//! - A drift is recorded on its ticket, and an attempt on the ticket with the budget that
//!   counts it, before any remediator runs. Nothing is done that could not be recorded.
//! - Every remediator passes the same budget-and-backoff gate.
//! - Tickets resolve only on this fresh observation, in the name of whoever acted last.
//!
//! # Where each part is
//! - [`observe`]: what the reconcile reads (the store, and the engine's precondition looks)
//!   and the last look of `run --once`.
//! - [`look`]: one reconcile's look and decision: clean, settling, or drifting.
//! - [`attempt`]: a decided repair through the planner to the remediator, and its record.
//! - [`gate`]: the quorum gate around an action that takes a member down, and following a
//!   member the controller took down until it is live again.
//! - [`follow`]: what a look follows up besides its own drift: a check's restart, a
//!   `restartWith` dependency, a stop between two looks.
//! - [`record`]: the ticket store: the budget, the sightings, the resolutions, adoptions.

mod attempt;
mod follow;
mod gate;
mod look;
mod observe;
mod record;
#[cfg(test)]
mod tests;

pub(super) use observe::{find_container, last_look, observe, settling};

use std::sync::Mutex;

use tracing::error;

use crate::docker::{ObservedContainer, ServiceKey};
use crate::drift::{Drift, DriftKind};
use crate::manifest::{Cluster, Policy, Remediation, Service};
use crate::remediation::Action;
use crate::tickets::{Journal, Ticket};

use super::events::Event;
use super::outcome::Outcome;
use super::shared::{Shared, lock};
use super::state::Clock;

/// How soon an action the quorum gate held back is looked at again.
const GATE_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// How often a member the controller took down is looked at until it is live again.
const LIVE_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// Why an attempt is made, as recorded on its ticket.
enum Reason<'a> {
    Drifts(&'a [Drift]),
    /// A failing check with `policy: restart`.
    Check(&'a str),
    /// A `restartWith` dependency started after this service's container did.
    Dependency(&'a str),
}

impl Reason<'_> {
    /// The `drifts` field of an `action-started` entry (its text is part of the timeline's
    /// documented shape).
    fn labels(&self) -> Vec<String> {
        match self {
            Reason::Drifts(drifts) => drifts.iter().map(|d| d.kind.to_string()).collect(),
            Reason::Check(check) => vec![format!("{}:{check}", DriftKind::CheckFailed)],
            Reason::Dependency(dependency) => vec![format!("dependency-restarted:{dependency}")],
        }
    }

    fn drifts(&self) -> &[Drift] {
        match self {
            Reason::Drifts(d) => d,
            Reason::Check(_) | Reason::Dependency(_) => &[],
        }
    }
}

/// One gated try of a remediation.
struct Attempt<'a> {
    cluster: &'a Cluster,
    service: &'a Service,
    policy: Policy,
    action: Option<Action>,
    budgeted: bool,
    /// Whose budget window and backoff apply (the service's).
    remediation: &'a Remediation,
    ticket: Option<i64>,
    reason: Reason<'a>,
    detail: String,
    container: Option<&'a ObservedContainer>,
}

/// The key being reconciled, with what every step needs.
struct KeyRun<'a> {
    shared: &'a Shared,
    key: &'a ServiceKey,
    clock: Clock,
    /// The budget was already escalated when this reconcile began (log escalation once).
    escalated_before: bool,
    /// The budget as the store holds it now: as loaded, or as an attempt's record wrote it
    /// (so a `tickets retry` made while the action ran is not overwritten by an unchanged
    /// budget).
    stored: Mutex<Option<crate::tickets::Budget>>,
    /// The quiet keys' generation when this reconcile began (see [`super::resync`]).
    looks_generation: u64,
    /// The store's revision of the key when this reconcile began.
    revision: u64,
    /// The service's unresolved tickets, read with the budget (taken by the look).
    tickets: Mutex<Option<Vec<Ticket>>>,
    /// When the key is to be looked at again: the earliest any step asked for, handed to
    /// the queue once, when the reconcile ends (see [`KeyRun::again_at`]).
    requeue: Mutex<Option<tokio::time::Instant>>,
}

/// Reconciles one key: observe, diff, decide, and (policy, budget and backoff permitting)
/// remediate.
pub(super) async fn reconcile(shared: &Shared, key: &ServiceKey) -> Outcome {
    // Whatever this look finds, the last clean one no longer speaks for the key.
    let looks_generation = lock(&shared.quiet).forget(key);
    let desired = shared.desired();
    let Some(cluster) = desired.cluster(&key.cluster) else {
        return Outcome::Undeclared;
    };
    let Some(service) = cluster.service(&key.service) else {
        return Outcome::Undeclared;
    };
    if !shared.store.is_connected() {
        // Unknown is not healthy: conclude nothing until the watcher has re-listed (its
        // Relisted event enqueues every key again).
        return Outcome::Unknown {
            error: "the Docker event stream is disconnected; waiting to re-list".into(),
        };
    }
    if let Some(why) = shared.store_behind(key) {
        // The watcher announces the key once its look lands (or its re-list is in); the
        // retry only bounds the wait should that never come.
        shared.queue.schedule(
            key.clone(),
            tokio::time::Instant::now() + shared.config.observe_retry,
        );
        return Outcome::Pending { why };
    }
    // Taken only now: a pending look leaves the event's time for the reconcile that finds
    // the drift.
    let event_at = shared.keys.with(key, |state| state.pending_event.take());
    let revision = shared.store.revision(key);
    let mut run = KeyRun {
        shared,
        key,
        clock: Clock::now(),
        escalated_before: false,
        stored: Mutex::new(None),
        looks_generation,
        revision,
        tickets: Mutex::new(None),
        requeue: Mutex::new(None),
    };
    let outcome = match run.load_budget().await {
        Ok(mut budget) => {
            let before = budget.to_stored(run.clock);
            run.escalated_before = before.escalated;
            *lock(&run.stored) = Some(before);
            let outcome = run.look(cluster, service, &mut budget, event_at).await;
            run.save_budget(&budget).await;
            if let Err(e) = shared.persist_gate().await {
                error!(service = %key, error = %e, "cannot save the quorum gate's state; will try again");
            }
            outcome
        }
        Err(e) => Outcome::Unknown {
            error: e.to_string(),
        },
    };
    // The one error policy: what could not be observed, read or recorded concluded nothing
    // and is looked at again after `observe_retry`, whichever step failed.
    if matches!(
        outcome,
        Outcome::Unknown { .. } | Outcome::Unrecorded { .. }
    ) {
        run.retry_soon();
    }
    if let Some(at) = run.requeue.into_inner().unwrap_or_else(|e| e.into_inner()) {
        shared.queue.schedule(key.clone(), at);
    }
    outcome
}

impl KeyRun<'_> {
    /// Asks for the key to be looked at again at `at`. Only the earliest ask counts, and it
    /// reaches the queue once, when the reconcile ends: the steps say when they want to look
    /// again; none of them schedules.
    fn again_at(&self, at: tokio::time::Instant) {
        let mut requeue = lock(&self.requeue);
        if requeue.is_none_or(|earliest| at < earliest) {
            *requeue = Some(at);
        }
    }

    /// Asks for a look after `observe_retry`: something could not be read or recorded.
    fn retry_soon(&self) {
        self.again_at(self.clock.now + self.shared.config.observe_retry);
    }

    /// Says what happened: its log line and its count (see [`super::events`]).
    fn emit(&self, event: Event<'_>) {
        event.emit(&self.shared.metrics);
    }

    fn journal(&self) -> Option<&Journal> {
        self.shared.journal.as_ref()
    }
}
