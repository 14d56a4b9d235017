//! Observed state: what the engine says about one owned container, reduced to plain data
//! that the diff can read without Docker.

use std::collections::{BTreeMap, BTreeSet};

use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum, HealthStatusEnum};
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::ServiceKey;
use super::{LABEL_CLUSTER, LABEL_MANAGED_BY, LABEL_SERVICE, LABEL_SPEC_HASH, MANAGED_BY_VALUE};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerStatus {
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
}

impl ContainerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerStatus::Created => "created",
            ContainerStatus::Running => "running",
            ContainerStatus::Paused => "paused",
            ContainerStatus::Restarting => "restarting",
            ContainerStatus::Removing => "removing",
            ContainerStatus::Exited => "exited",
            ContainerStatus::Dead => "dead",
        }
    }
}

/// Docker's own healthcheck verdict, when the container has a healthcheck.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    Starting,
    Healthy,
    Unhealthy,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Starting => "starting",
            HealthState::Healthy => "healthy",
            HealthState::Unhealthy => "unhealthy",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObservedContainer {
    pub id: String,
    /// Container name without Docker's leading `/`.
    pub name: String,
    pub key: ServiceKey,
    pub spec_hash: String,
    pub image: String,
    pub status: ContainerStatus,
    pub health: Option<HealthState>,
    /// Names of the networks the container is attached to.
    pub networks: BTreeSet<String>,
    pub network_mode: String,
    pub exit_code: Option<i64>,
    pub pid: Option<i64>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Whether a label set marks a container as ours.
pub fn is_managed(labels: &BTreeMap<String, String>) -> bool {
    labels.get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGED_BY_VALUE)
}

impl ObservedContainer {
    /// Reduces an inspect response. `None` when the container is not owned by the
    /// controller (no managed-by label, or no cluster/service labels).
    pub fn from_inspect(c: &ContainerInspectResponse) -> Option<ObservedContainer> {
        let labels: BTreeMap<String, String> = c
            .config
            .as_ref()
            .and_then(|cfg| cfg.labels.clone())
            .unwrap_or_default()
            .into_iter()
            .collect();
        if !is_managed(&labels) {
            return None;
        }
        let key = ServiceKey::new(labels.get(LABEL_CLUSTER)?, labels.get(LABEL_SERVICE)?);
        let state = c.state.clone().unwrap_or_default();
        let status = match state.status {
            Some(ContainerStateStatusEnum::RUNNING) => ContainerStatus::Running,
            Some(ContainerStateStatusEnum::PAUSED) => ContainerStatus::Paused,
            Some(ContainerStateStatusEnum::RESTARTING) => ContainerStatus::Restarting,
            Some(ContainerStateStatusEnum::REMOVING) => ContainerStatus::Removing,
            Some(ContainerStateStatusEnum::EXITED) => ContainerStatus::Exited,
            Some(ContainerStateStatusEnum::DEAD) => ContainerStatus::Dead,
            // "stopping" is the engine's in-between state: not running any more.
            Some(ContainerStateStatusEnum::STOPPING) => ContainerStatus::Exited,
            Some(ContainerStateStatusEnum::CREATED)
            | Some(ContainerStateStatusEnum::EMPTY)
            | None => ContainerStatus::Created,
        };
        let health = state
            .health
            .as_ref()
            .and_then(|h| h.status)
            .and_then(|s| match s {
                HealthStatusEnum::STARTING => Some(HealthState::Starting),
                HealthStatusEnum::HEALTHY => Some(HealthState::Healthy),
                HealthStatusEnum::UNHEALTHY => Some(HealthState::Unhealthy),
                HealthStatusEnum::NONE | HealthStatusEnum::EMPTY => None,
            });
        let networks = c
            .network_settings
            .as_ref()
            .and_then(|n| n.networks.as_ref())
            .map(|n| n.keys().cloned().collect())
            .unwrap_or_default();
        let network_mode = c
            .host_config
            .as_ref()
            .and_then(|h| h.network_mode.clone())
            .unwrap_or_default();
        Some(ObservedContainer {
            id: c.id.clone().unwrap_or_default(),
            name: c
                .name
                .as_deref()
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            spec_hash: labels.get(LABEL_SPEC_HASH).cloned().unwrap_or_default(),
            key,
            image: c
                .config
                .as_ref()
                .and_then(|cfg| cfg.image.clone())
                .unwrap_or_default(),
            status,
            health,
            networks,
            network_mode,
            exit_code: state.exit_code,
            pid: state.pid.filter(|p| *p > 0),
            started_at: parse_time(state.started_at.as_deref()),
            finished_at: parse_time(state.finished_at.as_deref()),
        })
    }
}

/// Docker reports "0001-01-01T00:00:00Z" for "never"; that is `None` here.
fn parse_time(s: Option<&str>) -> Option<DateTime<Utc>> {
    let t = DateTime::parse_from_rfc3339(s?).ok()?.with_timezone(&Utc);
    (t.timestamp() > 0).then_some(t)
}
