//! What one reconcile reads: its container from the observed store and, only as the
//! precondition of an action, the engine (who holds the name, the image, the network); and
//! the last look of `run --once`, which judges without acting.

use chrono::{DateTime, Utc};

use crate::docker::{ContainerStatus, DockerError, ObservedContainer, ServiceKey};
use crate::manifest::{Cluster, Service};

use super::super::decide::{Decision, Holds, decide};
use super::super::diff::{Observation, diff};
use super::super::engine::Engine;
use super::super::outcome::Outcome;
use super::super::shared::Shared;
use super::super::state::RepairBudget;

/// Observes one service: its container as the observed store has it (the store is fresh for
/// the key: see [`super::reconcile`]); when the store has none, who holds the name, asked of the
/// engine (the precondition of a create); whether its image is present when it must be
/// created; and the cluster network's options while it runs on it.
pub(in crate::reconcile) async fn observe(
    store: &crate::docker::Store,
    engine: &dyn Engine,
    cluster: &Cluster,
    service: &Service,
    recent_repairs: u32,
) -> Result<Observation, DockerError> {
    let key = ServiceKey::new(&cluster.name, &service.name);
    let (container, name_conflict) = match store.get(&key) {
        Some(c) => (Some(c), None),
        None => find_container(engine, cluster, service).await?,
    };
    let needs_create = name_conflict.is_none()
        && container
            .as_ref()
            .is_none_or(|c| super::super::diff::spec_differs(c, service));
    let image_present = if needs_create {
        Some(engine.image_present(&service.image).await?)
    } else {
        None
    };
    // Only while the container runs on the cluster's own network: that is when the network's
    // options matter, and a mass repair of stopped containers pays no extra engine call.
    let on_cluster_network =
        crate::docker::spec::service_network(cluster, service) == Some(&cluster.network.name);
    let network_difference = match &container {
        Some(c) if on_cluster_network && c.status == ContainerStatus::Running => {
            engine.network_difference(cluster).await?
        }
        _ => None,
    };
    Ok(Observation {
        container,
        image_present,
        name_conflict,
        recent_repairs,
        network_difference,
        // The caller knows when the service was last paused, and how long it must settle.
        health_trusted_after: None,
        settling: false,
    })
}

/// The service's container, fresh from the engine (see [`Engine::find`]), as
/// `(container, name_conflict)`.
pub(in crate::reconcile) async fn find_container(
    engine: &dyn Engine,
    cluster: &Cluster,
    service: &Service,
) -> Result<(Option<ObservedContainer>, Option<String>), DockerError> {
    let found = engine.find(cluster, service).await?;
    Ok((found.container, found.name_conflict))
}

/// Whether a running container started less than `settle` ago (by the engine's clock, which
/// is this host's).
pub(in crate::reconcile) fn settling(
    observed: &Observation,
    wall: DateTime<Utc>,
    settle: std::time::Duration,
) -> bool {
    observed.container.as_ref().is_some_and(|c| {
        c.status == ContainerStatus::Running
            && c.started_at.is_some_and(|started| {
                (wall - started)
                    .to_std()
                    .map_or(true, |running| running < settle)
            })
    })
}

/// The last look of `run --once`: observe and judge, acting on nothing and recording nothing.
/// `Clean` only for a container that runs, settled, and is healthy when it has a healthcheck.
pub(in crate::reconcile) async fn last_look(shared: &Shared, key: &ServiceKey) -> Outcome {
    let desired = shared.desired();
    let Some(cluster) = desired.cluster(&key.cluster) else {
        return Outcome::Undeclared;
    };
    let Some(service) = cluster.service(&key.service) else {
        return Outcome::Undeclared;
    };
    let mut observed =
        match observe(&shared.store, shared.engine.as_ref(), cluster, service, 0).await {
            Ok(o) => o,
            Err(e) => {
                return Outcome::Unknown {
                    error: e.to_string(),
                };
            }
        };
    observed.settling = settling(&observed, Utc::now(), shared.config.settle);
    let drifts = diff(cluster, service, &observed);
    if let Some(first) = drifts.first() {
        return Outcome::NotRepaired {
            drift: first.kind,
            detail: first.detail.clone(),
        };
    }
    // No drift: whether it is believed repaired is `decide`'s rule (settled, and healthy
    // when it has a healthcheck), not a second copy of it.
    let verdict = decide(
        &[],
        &observed,
        &RepairBudget::default(),
        &service.remediation,
        &Holds::default(),
        |_| false,
    );
    if verdict == (Decision::Clean { verified: true }) {
        Outcome::Clean
    } else {
        Outcome::Settling
    }
}
