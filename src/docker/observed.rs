//! Observed state: what the engine says about one owned container, reduced to plain data
//! that the diff can read without Docker.

use std::collections::{BTreeMap, BTreeSet};

use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum, HealthStatusEnum};
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::ServiceKey;
use super::spec::{COMPOSE_ONEOFF, COMPOSE_PROJECT, COMPOSE_SERVICE};
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
    /// When the newest healthcheck probe began: `health` is no fresher than this.
    pub health_probed_at: Option<DateTime<Utc>>,
    /// Not created by the controller but adopted by name (`adopt` in the manifest): it has
    /// none of our labels, so no spec hash either.
    pub adopted: bool,
}

/// Whose a container with these labels and this name is, and whether it is adopted: ours
/// by our labels (`None` if they name no cluster and service), or else adopted when the
/// manifests adopt its name or, for a container compose started, its compose service
/// (`adoptable` gives the key a name or a [`compose_identity`] is adopted for). One rule
/// for an inspect ([`ObservedContainer::recognise`]) and a list line (the resync's).
pub fn owner(
    labels: &BTreeMap<String, String>,
    name: &str,
    adoptable: impl Fn(&str) -> Option<ServiceKey>,
) -> Option<(ServiceKey, bool)> {
    if is_managed(labels) {
        let key = ServiceKey::new(labels.get(LABEL_CLUSTER)?, labels.get(LABEL_SERVICE)?);
        return Some((key, false));
    }
    if let Some(key) = adoptable(name) {
        return Some((key, true));
    }
    Some((adoptable(&compose_identity_of(labels)?)?, true))
}

/// What a manifest's `adopt.compose` adopts, as a key beside the adopted container names
/// (no container name has a `/`, so the two never meet).
pub fn compose_identity(project: &str, service: &str) -> String {
    format!("compose:{project}/{service}")
}

/// The [`compose_identity`] of a container compose started for a service (not a one-off
/// `docker-compose run` container), from its labels.
pub fn compose_identity_of(labels: &BTreeMap<String, String>) -> Option<String> {
    if labels.get(COMPOSE_ONEOFF).is_some_and(|v| v == "True") {
        return None;
    }
    Some(compose_identity(
        labels.get(COMPOSE_PROJECT)?,
        labels.get(COMPOSE_SERVICE)?,
    ))
}

/// Whether a label set marks a container as ours.
pub fn is_managed(labels: &BTreeMap<String, String>) -> bool {
    labels.get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGED_BY_VALUE)
}

impl ObservedContainer {
    /// Reduces an inspect response. `None` when the container is not owned by the
    /// controller (no managed-by label, or no cluster/service labels).
    pub fn from_inspect(c: &ContainerInspectResponse) -> Option<ObservedContainer> {
        let labels = labels_of(c);
        if !is_managed(&labels) {
            return None;
        }
        let key = ServiceKey::new(labels.get(LABEL_CLUSTER)?, labels.get(LABEL_SERVICE)?);
        Some(Self::reduce(c, key, &labels, false))
    }

    /// Ours by its labels, or adopted: its name or compose service is one the manifests
    /// adopt (`adoptable`, as [`owner`] says).
    pub fn recognise(
        c: &ContainerInspectResponse,
        adoptable: impl Fn(&str) -> Option<ServiceKey>,
    ) -> Option<ObservedContainer> {
        let labels = labels_of(c);
        let (key, adopted) = owner(&labels, &name_of(c), adoptable)?;
        Some(Self::reduce(c, key, &labels, adopted))
    }

    fn reduce(
        c: &ContainerInspectResponse,
        key: ServiceKey,
        labels: &BTreeMap<String, String>,
        adopted: bool,
    ) -> ObservedContainer {
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
        let health_probed_at = state
            .health
            .as_ref()
            .and_then(|h| h.log.as_ref())
            .and_then(|log| {
                log.iter()
                    .filter_map(|r| parse_time(r.start.as_deref()))
                    .max()
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
        ObservedContainer {
            id: c.id.clone().unwrap_or_default(),
            name: name_of(c),
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
            health_probed_at,
            adopted,
        }
    }
}

fn labels_of(c: &ContainerInspectResponse) -> BTreeMap<String, String> {
    c.config
        .as_ref()
        .and_then(|cfg| cfg.labels.clone())
        .unwrap_or_default()
        .into_iter()
        .collect()
}

/// The container's name without Docker's leading `/`.
fn name_of(c: &ContainerInspectResponse) -> String {
    c.name
        .as_deref()
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_string()
}

#[cfg(test)]
impl ObservedContainer {
    /// A container of `key` named after its service, in `status`, everything else empty:
    /// for unit tests, which set what they are about with `..` or by assignment.
    pub fn example(id: &str, key: ServiceKey, status: ContainerStatus) -> ObservedContainer {
        ObservedContainer {
            id: id.into(),
            name: key.service.clone(),
            key,
            spec_hash: String::new(),
            image: String::new(),
            status,
            health: None,
            networks: BTreeSet::new(),
            network_mode: String::new(),
            exit_code: None,
            pid: None,
            started_at: None,
            finished_at: None,
            health_probed_at: None,
            adopted: false,
        }
    }
}

/// Docker reports "0001-01-01T00:00:00Z" for "never"; that is `None` here.
fn parse_time(s: Option<&str>) -> Option<DateTime<Utc>> {
    let t = DateTime::parse_from_rfc3339(s?).ok()?.with_timezone(&Utc);
    (t.timestamp() > 0).then_some(t)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bollard::models::{
        ContainerConfig, ContainerState, EndpointSettings, Health, HostConfig, NetworkSettings,
    };

    use super::*;

    fn owned_labels() -> HashMap<String, String> {
        HashMap::from([
            (LABEL_MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string()),
            (LABEL_CLUSTER.to_string(), "demo".to_string()),
            (LABEL_SERVICE.to_string(), "web".to_string()),
            (LABEL_SPEC_HASH.to_string(), "0123456789abcdef".to_string()),
            ("team".to_string(), "infra".to_string()),
        ])
    }

    fn inspect(labels: HashMap<String, String>, state: ContainerState) -> ContainerInspectResponse {
        ContainerInspectResponse {
            id: Some("c0ffee".into()),
            name: Some("/web".into()),
            config: Some(ContainerConfig {
                image: Some("busybox:1.36".into()),
                labels: Some(labels),
                ..Default::default()
            }),
            state: Some(state),
            network_settings: Some(NetworkSettings {
                networks: Some(HashMap::from([
                    ("demo".to_string(), EndpointSettings::default()),
                    ("extra".to_string(), EndpointSettings::default()),
                ])),
                ..Default::default()
            }),
            host_config: Some(HostConfig {
                network_mode: Some("demo".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn running() -> ContainerState {
        ContainerState {
            status: Some(ContainerStateStatusEnum::RUNNING),
            pid: Some(4242),
            exit_code: Some(0),
            started_at: Some("2025-01-02T03:04:05.123456789Z".into()),
            finished_at: Some("0001-01-01T00:00:00Z".into()),
            ..Default::default()
        }
    }

    fn with_status(status: Option<ContainerStateStatusEnum>) -> ContainerStatus {
        let state = ContainerState {
            status,
            ..Default::default()
        };
        ObservedContainer::from_inspect(&inspect(owned_labels(), state))
            .expect("owned")
            .status
    }

    fn with_health(status: Option<HealthStatusEnum>) -> Option<HealthState> {
        let state = ContainerState {
            health: Some(Health {
                status,
                ..Default::default()
            }),
            ..running()
        };
        ObservedContainer::from_inspect(&inspect(owned_labels(), state))
            .expect("owned")
            .health
    }

    #[test]
    fn owned_container_is_reduced_to_plain_data() {
        let c =
            ObservedContainer::from_inspect(&inspect(owned_labels(), running())).expect("owned");
        assert_eq!(c.id, "c0ffee");
        assert_eq!(c.name, "web", "Docker's leading / is dropped");
        assert_eq!(c.key, ServiceKey::new("demo", "web"));
        assert_eq!(c.spec_hash, "0123456789abcdef");
        assert_eq!(c.image, "busybox:1.36");
        assert_eq!(c.status, ContainerStatus::Running);
        assert_eq!(c.health, None, "no healthcheck, no health");
        assert_eq!(
            c.networks,
            BTreeSet::from(["demo".to_string(), "extra".to_string()])
        );
        assert_eq!(c.network_mode, "demo");
        assert_eq!(c.exit_code, Some(0));
        assert_eq!(c.pid, Some(4242));
        assert_eq!(
            c.started_at.map(|t| t.to_rfc3339()),
            Some("2025-01-02T03:04:05.123456789+00:00".to_string())
        );
        assert_eq!(c.finished_at, None, "Docker's year 1 means never");
    }

    #[test]
    fn foreign_containers_are_none() {
        let mut foreign = owned_labels();
        foreign.remove(LABEL_MANAGED_BY);
        assert!(ObservedContainer::from_inspect(&inspect(foreign, running())).is_none());

        let mut someone_else = owned_labels();
        someone_else.insert(LABEL_MANAGED_BY.into(), "compose".into());
        assert!(ObservedContainer::from_inspect(&inspect(someone_else, running())).is_none());

        for missing in [LABEL_CLUSTER, LABEL_SERVICE] {
            let mut labels = owned_labels();
            labels.remove(missing);
            assert!(
                ObservedContainer::from_inspect(&inspect(labels, running())).is_none(),
                "without {missing}"
            );
        }

        let no_config = ContainerInspectResponse {
            config: None,
            ..inspect(owned_labels(), running())
        };
        assert!(ObservedContainer::from_inspect(&no_config).is_none());
    }

    #[test]
    fn a_missing_spec_hash_is_empty_so_the_diff_sees_a_changed_spec() {
        let mut labels = owned_labels();
        labels.remove(LABEL_SPEC_HASH);
        let c = ObservedContainer::from_inspect(&inspect(labels, running())).expect("owned");
        assert_eq!(c.spec_hash, "");
    }

    #[test]
    fn engine_states_map_to_statuses() {
        use ContainerStateStatusEnum as E;
        for (engine, status) in [
            (Some(E::CREATED), ContainerStatus::Created),
            (Some(E::RUNNING), ContainerStatus::Running),
            (Some(E::PAUSED), ContainerStatus::Paused),
            (Some(E::RESTARTING), ContainerStatus::Restarting),
            (Some(E::REMOVING), ContainerStatus::Removing),
            (Some(E::EXITED), ContainerStatus::Exited),
            (Some(E::DEAD), ContainerStatus::Dead),
            (Some(E::STOPPING), ContainerStatus::Exited),
            (Some(E::EMPTY), ContainerStatus::Created),
            (None, ContainerStatus::Created),
        ] {
            assert_eq!(with_status(engine), status, "{engine:?}");
        }
    }

    #[test]
    fn engine_health_maps_to_health_state() {
        use HealthStatusEnum as E;
        assert_eq!(with_health(Some(E::STARTING)), Some(HealthState::Starting));
        assert_eq!(with_health(Some(E::HEALTHY)), Some(HealthState::Healthy));
        assert_eq!(
            with_health(Some(E::UNHEALTHY)),
            Some(HealthState::Unhealthy)
        );
        assert_eq!(with_health(Some(E::NONE)), None);
        assert_eq!(with_health(Some(E::EMPTY)), None);
        assert_eq!(with_health(None), None);
    }

    #[test]
    fn a_stopped_container_has_no_pid_and_its_times() {
        let state = ContainerState {
            status: Some(ContainerStateStatusEnum::EXITED),
            pid: Some(0),
            exit_code: Some(137),
            started_at: Some("2025-01-02T03:04:05Z".into()),
            finished_at: Some("2025-01-02T03:05:00Z".into()),
            ..Default::default()
        };
        let c = ObservedContainer::from_inspect(&inspect(owned_labels(), state)).expect("owned");
        assert_eq!(c.pid, None, "pid 0 is no process");
        assert_eq!(c.exit_code, Some(137));
        assert!(c.finished_at > c.started_at);
    }

    /// `as_str` is what `status` prints and serde what `--json` prints: they must agree.
    #[test]
    fn as_str_is_the_serde_name() {
        use ContainerStatus as S;
        for status in [
            S::Created,
            S::Running,
            S::Paused,
            S::Restarting,
            S::Removing,
            S::Exited,
            S::Dead,
        ] {
            assert_eq!(serde_json::json!(status), status.as_str());
        }
        for health in [
            HealthState::Starting,
            HealthState::Healthy,
            HealthState::Unhealthy,
        ] {
            assert_eq!(serde_json::json!(health), health.as_str());
        }
    }
}
