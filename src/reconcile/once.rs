//! `operator run --once`: one pass over every service in dependency order, without the
//! watcher, then a last look at what was repaired once it had time to settle. Apart from the
//! loop because in this mode the pass itself is the observed store's only writer.

use std::time::Duration;

use tokio::time::Instant;

use crate::docker::ServiceKey;
use crate::docker::watcher::list_owned;

use super::controller::{Controller, ControllerError};
use super::outcome::Outcome;
use super::shared::lock;

/// How long `--once` waits past the settle time for a repaired service's healthcheck.
const ONCE_HEALTH_WAIT: Duration = Duration::from_secs(30);

impl Controller {
    /// One pass over every service in dependency order, without the watcher: list, then
    /// reconcile each key once. For `operator run --once`.
    pub async fn reconcile_once(&self) -> Result<Vec<(ServiceKey, Outcome)>, ControllerError> {
        let shared = &self.shared;
        shared.restore_gate().await;
        let adoption = shared.adoption.borrow().clone();
        let listed = list_owned(shared.actions.docker(), &adoption.names)
            .await
            .map_err(ControllerError::List)?;
        {
            // No watcher runs in this mode: this list is the store's only writer.
            let writer = lock(&shared.writer);
            let writer = writer.as_ref().ok_or(ControllerError::AlreadyRunning)?;
            writer.replace_all(listed, adoption.generation);
            writer.set_connected(true);
        }
        let desired = self.desired();
        let mut outcomes = Vec::new();
        for cluster in &desired.clusters {
            for service in cluster.topo_order() {
                let key = ServiceKey::new(&cluster.name, &service.name);
                let outcome = self.reconcile(&key).await;
                if matches!(
                    outcome,
                    Outcome::Acted { .. }
                        | Outcome::Failed { .. }
                        | Outcome::Remediated { .. }
                        | Outcome::RemediationFailed { .. }
                ) {
                    // What it did, for the services that depend on it and for its last look.
                    self.refresh(&key).await;
                }
                outcomes.push((key, outcome));
            }
        }
        // A repair is believed only after it settled: wait (bounded by the settle time and
        // a few healthcheck rounds) and take a last look, acting on nothing.
        let pending = |o: &Outcome| matches!(o, Outcome::Acted { .. } | Outcome::Settling);
        if outcomes.iter().any(|(_, o)| pending(o)) {
            let deadline = Instant::now() + shared.config.settle + ONCE_HEALTH_WAIT;
            tokio::time::sleep(shared.config.settle).await;
            for (key, outcome) in outcomes.iter_mut().filter(|(_, o)| pending(o)) {
                let last = loop {
                    self.refresh(key).await;
                    let look = super::service::last_look(shared, key).await;
                    if look != Outcome::Settling || Instant::now() >= deadline {
                        break look;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                };
                // Keep "repaired: X" for a repair that held; anything else is the truth now.
                if last != Outcome::Clean {
                    *outcome = last;
                } else if *outcome == Outcome::Settling {
                    *outcome = Outcome::Clean;
                }
            }
        }
        Ok(outcomes)
    }

    /// Looks at `key`'s container in the engine and puts what it shows in the store (`run
    /// --once`, whose pass is the store's writer: no watcher runs). A failed look leaves the
    /// store as it was; the last look then judges what it last knew.
    pub(super) async fn refresh(&self, key: &ServiceKey) {
        let shared = &self.shared;
        let desired = self.desired();
        let Some((cluster, service)) = desired
            .cluster(&key.cluster)
            .and_then(|c| Some((c, c.service(&key.service)?)))
        else {
            return;
        };
        let Ok((container, _)) =
            super::service::find_container(shared.engine.as_ref(), cluster, service).await
        else {
            return;
        };
        if let Some(writer) = lock(&shared.writer).as_ref() {
            writer.set_key(key, container);
        }
    }
}
