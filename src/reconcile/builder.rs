//! How a [`Controller`] is put together: [`Controller::builder`] takes the engine and the
//! desired state, [`ControllerBuilder`] everything optional, and `build` makes the state the
//! loop and the workers share. Apart from the loop, which only runs what was built.

use std::sync::{Arc, Mutex, RwLock};

use bollard::Docker;
use tokio::sync::mpsc;

use crate::docker::actions::Actions;
use crate::docker::store::{Adoption, Writer, adoptable};
use crate::manifest::{DesiredState, Policy};
use crate::metrics::Metrics;
use crate::remediation::Remediator;
use crate::tickets::Journal;

use super::builtin::BuiltIn;
use super::config::ControllerConfig;
use super::controller::Controller;
use super::disruption::Disruptions;
use super::engine::Engine;
use super::keys::Keys;
use super::leases::Leases;
use super::passes::Passes;
use super::queue::WorkQueue;
use super::resync::Quiet;
use super::shared::Shared;

/// Builds a [`Controller`]; everything but the engine and the desired state is optional.
#[must_use]
pub struct ControllerBuilder {
    docker: Docker,
    desired: DesiredState,
    metrics: Arc<Metrics>,
    config: ControllerConfig,
    journal: Option<Journal>,
    remediators: Vec<(Policy, Arc<dyn Remediator>)>,
    store: Option<Writer>,
    engine: Option<Arc<dyn Engine>>,
}

impl ControllerBuilder {
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn config(mut self, config: ControllerConfig) -> Self {
        self.config = config;
        self
    }

    /// The observed store the watcher fills, by its writer (its readers may be serving
    /// `/healthz` before the controller is built).
    pub fn store(mut self, writer: Writer) -> Self {
        self.store = Some(writer);
        self
    }

    /// The ticket journal; without one (for `plan`), nothing is remembered across
    /// reconciles but memory.
    pub fn journal(mut self, journal: Journal) -> Self {
        self.journal = Some(journal);
        self
    }

    /// Who remediates drifts whose policy is `policy` (`restart` is always the built-in
    /// executor; `observe` never remediates).
    pub fn remediator(mut self, policy: Policy, remediator: Arc<dyn Remediator>) -> Self {
        self.remediators.retain(|(p, _)| *p != policy);
        self.remediators.push((policy, remediator));
        self
    }

    /// What the reconcile asks of the engine and acts through, in place of the real engine
    /// (the unit tests' in-memory one). The watcher and the lists still use `docker`.
    #[cfg(test)]
    pub fn engine(mut self, engine: Arc<dyn Engine>) -> Self {
        self.engine = Some(engine);
        self
    }

    pub fn build(self) -> Controller {
        let actions = Actions::new(self.docker, self.config.limits.clone());
        let (completions, completions_rx) = mpsc::unbounded_channel();
        let writer = self.store.unwrap_or_default();
        let adoption = Adoption {
            generation: 0,
            names: adoptable(&self.desired),
        };
        let engine = self
            .engine
            .unwrap_or_else(|| Arc::new(actions.clone()) as Arc<dyn Engine>);
        Controller {
            shared: Arc::new(Shared {
                builtin: Arc::new(BuiltIn::new(engine.clone())),
                engine,
                actions,
                store: writer.reader(),
                writer: Mutex::new(Some(writer)),
                adoption: tokio::sync::watch::Sender::new(Arc::new(adoption)),
                desired: RwLock::new(Arc::new(self.desired)),
                queue: WorkQueue::new(),
                keys: Keys::default(),
                metrics: self.metrics,
                config: self.config,
                journal: self.journal,
                leases: Mutex::new(Leases::default()),
                disruptions: Disruptions::default(),
                check_views: Arc::default(),
                remediators: self.remediators,
                completions,
                completions_rx: Mutex::new(Some(completions_rx)),
                desired_changed: tokio::sync::Notify::new(),
                passes: Mutex::new(Passes::new()),
                quiet: Mutex::new(Quiet::default()),
            }),
        }
    }
}

impl Controller {
    pub fn builder(docker: Docker, desired: DesiredState) -> ControllerBuilder {
        ControllerBuilder {
            docker,
            desired,
            metrics: Arc::new(Metrics::new()),
            config: ControllerConfig::default(),
            journal: None,
            remediators: Vec::new(),
            store: None,
            engine: None,
        }
    }
}
