//! What the loop, the workers and the check recorder share ([`Shared`]), behind one `Arc`,
//! and [`lock`], which takes one of its mutexes even after a panic poisoned it (a panicked
//! reconcile is looked at again, not the end of the controller). Apart from the loop because
//! every reconcile reads it: the loop (`controller`) only builds and drives it.

use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, error, info};

use crate::docker::actions::Actions;
use crate::docker::store::{Adoption, Writer};
use crate::docker::{ServiceKey, Store};
use crate::manifest::{DesiredState, Policy};
use crate::metrics::Metrics;
use crate::remediation::{Completed, Completions, Remediator};
use crate::tickets::Journal;

use super::builtin::BuiltIn;
use super::checks::CheckViews;
use super::config::ControllerConfig;
use super::disruption::Disruptions;
use super::engine::Engine;
use super::keys::Keys;
use super::leases::Leases;
use super::passes::Passes;
use super::queue::WorkQueue;
use super::resync::Quiet;

/// What the loop, the workers and the check recorder share.
pub(super) struct Shared {
    pub actions: Actions,
    /// What the reconcile asks of the engine, and acts through (see [`super::engine`]).
    pub engine: Arc<dyn Engine>,
    /// The observed containers (see [`crate::docker::store`]).
    pub store: Store,
    /// The store's writer, until `run` hands it to the watcher (`run --once` lists with it).
    pub(super) writer: Mutex<Option<Writer>>,
    /// What the manifests adopt, for the watcher (which lists again when it changes).
    pub(super) adoption: tokio::sync::watch::Sender<Arc<Adoption>>,
    pub(super) desired: RwLock<Arc<DesiredState>>,
    pub queue: WorkQueue<ServiceKey>,
    /// What the controller remembers of each key (see [`super::keys`]).
    pub keys: Keys,
    pub metrics: Arc<Metrics>,
    pub config: ControllerConfig,
    pub journal: Option<Journal>,
    /// Keys a long-running remediator is at work on.
    pub leases: Mutex<Leases>,
    /// What the controller has taken down and not yet seen live again (the gate's state).
    pub disruptions: Disruptions,
    /// The last verdict of each check, for telling when a member is live again.
    pub check_views: Arc<CheckViews>,
    pub(super) builtin: Arc<BuiltIn>,
    /// Remediators for policies other than `restart` (the agent).
    pub(super) remediators: Vec<(Policy, Arc<dyn Remediator>)>,
    pub completions: Completions,
    pub(super) completions_rx: Mutex<Option<mpsc::UnboundedReceiver<Completed>>>,
    /// Signalled by `set_desired`: the loop closes the tickets of what was removed.
    pub(super) desired_changed: tokio::sync::Notify,
    /// The first pass and the resync under way, for their timings.
    pub(super) passes: Mutex<Passes<ServiceKey>>,
    /// The store revision each quiet, clean key had at its last reconcile, so a resync need
    /// not reconcile it while the store shows it unchanged.
    pub quiet: Mutex<Quiet>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Writes the quorum gate's changed state to the ticket store (see
    /// [`super::disruption`]). An observer stores nothing: the gate is the acting
    /// controller's. A cluster whose write fails stays dirty for the next call.
    pub async fn persist_gate(&self) -> Result<(), crate::tickets::TicketError> {
        let (now, wall) = (Instant::now(), chrono::Utc::now());
        let dirty = self.disruptions.dirty(now, wall);
        let Some(journal) = self.journal.as_ref().filter(|_| !self.config.observe_only) else {
            return Ok(());
        };
        let mut first_error = None;
        for (cluster, state) in dirty {
            if let Err(e) = journal.save_gate(&cluster, state).await {
                self.disruptions.mark_dirty(&cluster);
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Takes back the quorum gate's state a controller before this one stored.
    pub(super) async fn restore_gate(&self) {
        let Some(journal) = &self.journal else {
            return;
        };
        match journal.load_gates().await {
            Ok(states) => {
                let under_way: usize = states.iter().map(|(_, s)| s.under_way.len()).sum();
                if under_way > 0 {
                    info!(
                        members = under_way,
                        "resuming the quorum gate: {under_way} member(s) taken down by the last run are still under way"
                    );
                }
                self.disruptions
                    .restore(states, Instant::now(), chrono::Utc::now());
            }
            // Nothing under way is what a first start has too; the gate then judges from what
            // runs and what is live, as it always also does.
            Err(e) => {
                error!(error = %e, "cannot read the quorum gate's stored state; starting with nothing under way")
            }
        }
    }

    /// Why the observed store cannot be read for `key` yet, if it cannot: a look at one of its
    /// containers is under way, or the store was listed with another adoption set than the
    /// manifests' current one.
    pub fn store_behind(&self, key: &ServiceKey) -> Option<String> {
        if self.store.adoption() != self.adoption.borrow().generation {
            return Some("the watcher is listing the engine again for the changed adopt".into());
        }
        if !self.store.fresh(key) {
            return Some("the watcher is looking at its container after an event".into());
        }
        // Only this key's reconcile sets or clears its expectation, and it is the caller: the
        // store is read (a clone) only when there is one, and outside the keys' lock.
        let expectation = self
            .keys
            .read(key, |state| state.expectation.clone())
            .flatten()?;
        let met = expectation.met(self.store.get(key).as_ref());
        if !met && !expectation.expired(Instant::now()) {
            return Some(
                "the engine has not yet shown the effect of the controller's last action".into(),
            );
        }
        if !met {
            debug!(service = %key, "the store never showed the last action's effect; reading it as it is");
        }
        self.keys.with(key, |state| state.expectation = None);
        None
    }

    pub fn desired(&self) -> Arc<DesiredState> {
        self.desired
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Who serves a policy: the built-in executor for `restart`, a registered remediator
    /// otherwise (none: the drift is only observed).
    /// Whether something is registered for `policy`, available or not.
    pub fn registered(&self, policy: Policy) -> bool {
        self.registered_remediator(policy).is_some()
    }

    /// What is registered for `policy`, available or not.
    pub fn registered_remediator(&self, policy: Policy) -> Option<Arc<dyn Remediator>> {
        self.remediators
            .iter()
            .find(|(p, _)| *p == policy)
            .map(|(_, r)| r.clone())
    }

    pub fn remediator(&self, policy: Policy) -> Option<Arc<dyn Remediator>> {
        if self.config.observe_only {
            return None;
        }
        match policy {
            Policy::Restart => Some(self.builtin.clone()),
            Policy::Observe => None,
            other => self
                .remediators
                .iter()
                .find(|(p, r)| *p == other && r.available())
                .map(|(_, r)| r.clone()),
        }
    }
}

/// A container a look saw running: its id, and when it started.
pub type SeenRun = (String, Option<chrono::DateTime<chrono::Utc>>);
