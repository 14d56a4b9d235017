//! The diff: a pure function from (desired, observed) to drifts, and from drifts to the one
//! repair that addresses them. No Docker, no clock: unit-tested on plain data.

use chrono::{DateTime, Utc};

use crate::docker::spec::service_network;
use crate::docker::{ContainerStatus, HealthState, ObservedContainer};
use crate::drift::{Drift, DriftKind};
use crate::manifest::{Cluster, Service};
use crate::remediation::Action;

/// Repairs within the budget window after which a container that keeps stopping is called
/// crash-looping rather than merely stopped.
pub const CRASH_LOOP_REPAIRS: u32 = 3;

/// A container that ran at least this long before it stopped did not crash-loop, whatever
/// the repairs before: one-off kills minutes apart are separate stops.
pub const CRASH_LOOP_UPTIME: std::time::Duration = std::time::Duration::from_secs(60);

/// Everything the diff needs to know about one service's current state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    pub container: Option<ObservedContainer>,
    /// Whether the service's image is present locally; `None` when not checked (only
    /// needed when the container has to be created).
    pub image_present: Option<bool>,
    /// Someone else holds the service's container name: a container without our labels,
    /// or one of ours that realises another cluster or service. Says who.
    pub name_conflict: Option<String>,
    /// Budgeted repairs of this service within its window.
    pub recent_repairs: u32,
    /// Healthcheck verdicts from probes that began before this moment are stale: the
    /// container was paused then (the engine reports a paused container `unhealthy` until its
    /// first probe after the unpause).
    pub health_trusted_after: Option<DateTime<Utc>>,
    /// The container started less than the settle time ago: running, but not yet believed.
    pub settling: bool,
    /// How the cluster's own network differs from its declaration (looked at only while the
    /// container runs on it).
    pub network_difference: Option<String>,
}

impl Observation {
    /// Whether the container's `unhealthy` is a verdict on it as it runs now.
    pub fn unhealthy_is_current(&self) -> bool {
        let Some(c) = &self.container else {
            return false;
        };
        c.health == Some(HealthState::Unhealthy)
            && self
                .health_trusted_after
                .is_none_or(|after| c.health_probed_at.is_some_and(|probed| probed > after))
    }
}

/// Compares one service's desired spec with what was observed. Drifts come in priority
/// order: the first one decides the repair.
pub fn diff(cluster: &Cluster, service: &Service, observed: &Observation) -> Vec<Drift> {
    let mut drifts = Vec::new();
    let image_missing = observed.image_present == Some(false);
    let Some(c) = &observed.container else {
        if let Some(holder) = &observed.name_conflict {
            drifts.push(Drift::new(
                DriftKind::NameConflict,
                format!("a container named {:?} exists but {holder}", service.name),
            ));
        } else if image_missing {
            drifts.push(Drift::new(
                DriftKind::ImageMissing,
                format!(
                    "no container, and image {:?} is not present locally",
                    service.image
                ),
            ));
        } else {
            drifts.push(Drift::new(
                DriftKind::Missing,
                format!("no container named {:?}", service.name),
            ));
        }
        return drifts;
    };

    if c.status == ContainerStatus::Restarting {
        drifts.push(Drift::new(
            DriftKind::CrashLooping,
            "the engine's restart policy is restarting the container",
        ));
        return drifts;
    }
    if spec_differs(c, service) {
        let desired_hash = service.spec_hash();
        let why = if c.adopted {
            format!(
                "adopted container runs its own spec; the manifest owns it (adopt.spec: owned) \
                 and says {desired_hash}"
            )
        } else {
            format!(
                "container built from spec {}, manifest now says {desired_hash}",
                if c.spec_hash.is_empty() {
                    "?"
                } else {
                    &c.spec_hash
                }
            )
        };
        drifts.push(Drift::new(DriftKind::SpecChanged, why));
        if image_missing {
            drifts.push(Drift::new(
                DriftKind::ImageMissing,
                format!("image {:?} is not present locally", service.image),
            ));
        }
    }
    match c.status {
        ContainerStatus::Exited | ContainerStatus::Dead | ContainerStatus::Created => {
            let how = match (c.status, c.exit_code) {
                (ContainerStatus::Created, _) => "created but never started".to_string(),
                (status, Some(code)) => format!("{} with code {code}", status.as_str()),
                (status, None) => status.as_str().to_string(),
            };
            // How long its last run lasted (never started, or unknown: short).
            let ran_briefly = match (c.started_at, c.finished_at) {
                (Some(started), Some(finished)) => {
                    (finished - started).to_std().unwrap_or_default() < CRASH_LOOP_UPTIME
                }
                _ => true,
            };
            if observed.recent_repairs >= CRASH_LOOP_REPAIRS && ran_briefly {
                drifts.push(Drift::new(
                    DriftKind::CrashLooping,
                    format!(
                        "{how}, after {} repairs in the window",
                        observed.recent_repairs
                    ),
                ));
            } else {
                drifts.push(Drift::new(DriftKind::Stopped, how));
            }
        }
        ContainerStatus::Paused => drifts.push(Drift::new(DriftKind::Paused, "paused")),
        ContainerStatus::Running => {
            if observed.unhealthy_is_current() {
                drifts.push(Drift::new(
                    DriftKind::Unhealthy,
                    "running, but its healthcheck fails",
                ));
            }
            if let Some(network) = service_network(cluster, service)
                && !c.networks.contains(network)
            {
                drifts.push(Drift {
                    network: Some(network.to_string()),
                    ..Drift::new(
                        DriftKind::NetworkDetached,
                        format!("not attached to network {network}"),
                    )
                });
            }
            if let Some(difference) = &observed.network_difference {
                drifts.push(Drift {
                    network: Some(cluster.network.name.clone()),
                    ..Drift::new(DriftKind::NetworkChanged, difference.clone())
                });
            }
        }
        // Transient: the destroy event follows and the next reconcile sees "missing".
        ContainerStatus::Removing | ContainerStatus::Restarting => {}
    }
    drifts
}

/// Whether the container must be recreated to match the manifest's spec. An adopted
/// container has no spec hash: it differs only when the manifest owns its spec
/// (`adopt: {spec: owned}`); by default it keeps the spec it was started with.
pub fn spec_differs(c: &ObservedContainer, service: &Service) -> bool {
    if c.adopted && service.keeps_adopted_spec() {
        return false;
    }
    c.spec_hash != service.spec_hash()
}

/// The one built-in repair that addresses the drifts, if any can.
pub fn action_for(drifts: &[Drift], observed: &Observation) -> Option<Action> {
    let first = drifts.first()?;
    let status = observed.container.as_ref().map(|c| c.status);
    match first.kind {
        DriftKind::Missing | DriftKind::ImageMissing => Some(Action::Create),
        DriftKind::SpecChanged => Some(Action::Recreate),
        DriftKind::Stopped | DriftKind::CrashLooping => match status {
            // A dead container cannot be started; only replaced.
            Some(ContainerStatus::Dead) => Some(Action::Recreate),
            Some(ContainerStatus::Exited | ContainerStatus::Created) => Some(Action::Start),
            // The engine is restarting it: its policy, not ours, is in charge.
            _ => None,
        },
        DriftKind::Paused => Some(Action::Unpause),
        DriftKind::Unhealthy => Some(Action::Restart),
        DriftKind::NetworkDetached => first
            .network
            .clone()
            .map(|network| Action::Connect { network }),
        DriftKind::NetworkChanged => first
            .network
            .clone()
            .map(|network| Action::RecreateNetwork { network }),
        DriftKind::NameConflict | DriftKind::CheckFailed | DriftKind::ObservabilityLost => None,
    }
}

/// Whether a repair is a deliberate change rather than the repair of a failure: the first
/// creation of a service, the first rollout of an edited spec, and the replacement of a
/// network whose declared options were edited. A deliberate change opens no ticket unless it
/// fails, and spends no budget; retrying a creation or rollout (after it failed) is a repair,
/// so a rollout that can never succeed still escalates. `attempts` counts repairs already
/// tried for the current spec.
///
/// A network replacement stays deliberate whatever `attempts` says: the count is the
/// service's (a kill repaired a minute before the edit would otherwise make the edit an
/// incident), and the budget cannot tell its own failures from others. One that keeps
/// failing (containers of someone else attached) is retried with backoff, its failure on a
/// ticket, but never escalates.
pub fn is_deliberate(
    action: &Action,
    drifts: &[Drift],
    created_before: bool,
    attempts: u32,
) -> bool {
    match action {
        Action::RecreateNetwork { .. } => {
            drifts.iter().any(|d| d.kind == DriftKind::NetworkChanged)
        }
        Action::Create => attempts == 0 && !created_before,
        Action::Recreate => {
            attempts == 0 && drifts.iter().any(|d| d.kind == DriftKind::SpecChanged)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::PathBuf;

    use super::*;
    use crate::docker::ServiceKey;
    use crate::manifest::{NetworkMode, NetworkSpec, Remediation, RestartPolicy};

    fn cluster() -> Cluster {
        Cluster {
            name: "c".into(),
            source: PathBuf::from("/m/c.yaml"),
            network: NetworkSpec {
                name: "c_net".into(),
                external: false,
                internal: true,
            },
            services: vec![service()],
            prometheus: Default::default(),
            checks: vec![],
            agent: Default::default(),
            groups: Vec::new(),
            max_concurrent_disruptions: None,
        }
    }

    fn service() -> Service {
        Service {
            name: "web".into(),
            image: "img:1".into(),
            command: None,
            entrypoint: None,
            env: BTreeMap::new(),
            ports: vec![],
            volumes: vec![],
            network_mode: NetworkMode::Cluster,
            labels: BTreeMap::new(),
            healthcheck: None,
            depends_on: vec![],
            restart_with: vec![],
            adopt: None,
            compose: None,
            aliases: vec![],
            resources: Default::default(),
            restart_policy: RestartPolicy::No,
            stop_timeout: None,
            stop_signal: None,
            remediation: Remediation::default(),
        }
    }

    fn running() -> ObservedContainer {
        ObservedContainer {
            id: "abc".into(),
            name: "web".into(),
            key: ServiceKey::new("c", "web"),
            spec_hash: service().spec_hash(),
            image: "img:1".into(),
            status: ContainerStatus::Running,
            health: None,
            networks: BTreeSet::from(["c_net".to_string()]),
            network_mode: "c_net".into(),
            exit_code: Some(0),
            pid: Some(42),
            started_at: None,
            finished_at: None,
            health_probed_at: None,
            adopted: false,
        }
    }

    fn with(c: ObservedContainer) -> Observation {
        Observation {
            container: Some(c),
            ..Default::default()
        }
    }

    fn kinds(obs: &Observation) -> Vec<DriftKind> {
        diff(&cluster(), &service(), obs)
            .into_iter()
            .map(|d| d.kind)
            .collect()
    }

    /// A container started by compose: no labels, so no spec hash.
    fn adopted(status: ContainerStatus) -> ObservedContainer {
        ObservedContainer {
            spec_hash: String::new(),
            adopted: true,
            status,
            ..running()
        }
    }

    #[test]
    fn an_adopted_container_keeps_its_own_spec_unless_the_manifest_owns_it() {
        let mut observed = service();
        observed.adopt = Some(crate::manifest::Adopt::Observed);
        let obs = with(adopted(ContainerStatus::Running));
        assert!(diff(&cluster(), &observed, &obs).is_empty());
        // Healed all the same: stopped is started, not recreated.
        let obs = with(adopted(ContainerStatus::Exited));
        let drifts = diff(&cluster(), &observed, &obs);
        assert_eq!(
            drifts.iter().map(|d| d.kind).collect::<Vec<_>>(),
            vec![DriftKind::Stopped]
        );
        assert_eq!(action_for(&drifts, &obs), Some(Action::Start));

        let mut owned = service();
        owned.adopt = Some(crate::manifest::Adopt::Owned);
        let obs = with(adopted(ContainerStatus::Running));
        let drifts = diff(&cluster(), &owned, &obs);
        assert_eq!(drifts[0].kind, DriftKind::SpecChanged);
        assert!(drifts[0].detail.contains("adopt.spec: owned"), "{drifts:?}");
        assert_eq!(action_for(&drifts, &obs), Some(Action::Recreate));
    }

    #[test]
    fn running_container_matching_spec_has_no_drift() {
        assert!(kinds(&with(running())).is_empty());
    }

    #[test]
    fn healthy_or_starting_health_is_not_drift() {
        for h in [HealthState::Healthy, HealthState::Starting] {
            let mut c = running();
            c.health = Some(h);
            assert!(kinds(&with(c)).is_empty());
        }
    }

    #[test]
    fn absent_container_is_missing_and_created() {
        let obs = Observation::default();
        assert_eq!(kinds(&obs), vec![DriftKind::Missing]);
        assert_eq!(
            action_for(&diff(&cluster(), &service(), &obs), &obs),
            Some(Action::Create)
        );
    }

    #[test]
    fn absent_container_without_image_is_image_missing() {
        let obs = Observation {
            image_present: Some(false),
            ..Default::default()
        };
        assert_eq!(kinds(&obs), vec![DriftKind::ImageMissing]);
    }

    #[test]
    fn foreign_container_holding_the_name_is_a_conflict_with_no_repair() {
        let obs = Observation {
            name_conflict: Some("is not managed by operator".into()),
            ..Default::default()
        };
        let drifts = diff(&cluster(), &service(), &obs);
        assert_eq!(drifts[0].kind, DriftKind::NameConflict);
        assert_eq!(action_for(&drifts, &obs), None);
    }

    #[test]
    fn exited_created_and_dead_are_stopped() {
        for (status, action) in [
            (ContainerStatus::Exited, Action::Start),
            (ContainerStatus::Created, Action::Start),
            (ContainerStatus::Dead, Action::Recreate),
        ] {
            let mut c = running();
            c.status = status;
            let obs = with(c);
            assert_eq!(kinds(&obs), vec![DriftKind::Stopped]);
            assert_eq!(
                action_for(&diff(&cluster(), &service(), &obs), &obs),
                Some(action)
            );
        }
    }

    #[test]
    fn stopped_after_many_repairs_is_crash_looping_and_still_started() {
        let mut c = running();
        c.status = ContainerStatus::Exited;
        let mut obs = with(c);
        obs.recent_repairs = CRASH_LOOP_REPAIRS;
        assert_eq!(kinds(&obs), vec![DriftKind::CrashLooping]);
        assert_eq!(
            action_for(&diff(&cluster(), &service(), &obs), &obs),
            Some(Action::Start)
        );
    }

    #[test]
    fn a_stop_after_minutes_of_running_is_stopped_however_many_repairs_came_before() {
        let at = |s: &str| Some(s.parse::<DateTime<Utc>>().unwrap());
        let mut c = running();
        c.status = ContainerStatus::Exited;
        c.started_at = at("2025-01-02T03:00:00Z");
        c.finished_at = at("2025-01-02T03:04:00Z");
        let mut obs = with(c.clone());
        obs.recent_repairs = CRASH_LOOP_REPAIRS + 2;
        assert_eq!(kinds(&obs), vec![DriftKind::Stopped]);
        // The same history with a run of seconds is a crash loop.
        c.finished_at = at("2025-01-02T03:00:05Z");
        let mut obs = with(c);
        obs.recent_repairs = CRASH_LOOP_REPAIRS;
        assert_eq!(kinds(&obs), vec![DriftKind::CrashLooping]);
    }

    #[test]
    fn engine_restarting_is_crash_looping_left_to_the_engine() {
        let mut c = running();
        c.status = ContainerStatus::Restarting;
        let obs = with(c);
        assert_eq!(kinds(&obs), vec![DriftKind::CrashLooping]);
        assert_eq!(action_for(&diff(&cluster(), &service(), &obs), &obs), None);
    }

    #[test]
    fn paused_is_unpaused_and_unhealthy_restarted() {
        let mut c = running();
        c.status = ContainerStatus::Paused;
        let obs = with(c);
        assert_eq!(kinds(&obs), vec![DriftKind::Paused]);
        assert_eq!(
            action_for(&diff(&cluster(), &service(), &obs), &obs),
            Some(Action::Unpause)
        );

        let mut c = running();
        c.health = Some(HealthState::Unhealthy);
        let obs = with(c);
        assert_eq!(kinds(&obs), vec![DriftKind::Unhealthy]);
        assert_eq!(
            action_for(&diff(&cluster(), &service(), &obs), &obs),
            Some(Action::Restart)
        );
    }

    #[test]
    fn changed_hash_is_spec_changed_and_recreated_before_anything_else() {
        let mut c = running();
        c.spec_hash = "old".into();
        c.status = ContainerStatus::Exited;
        let obs = with(c);
        assert_eq!(
            kinds(&obs),
            vec![DriftKind::SpecChanged, DriftKind::Stopped]
        );
        let drifts = diff(&cluster(), &service(), &obs);
        assert_eq!(action_for(&drifts, &obs), Some(Action::Recreate));
        assert!(is_deliberate(&Action::Recreate, &drifts, true, 0));
        assert!(
            !is_deliberate(&Action::Recreate, &drifts, true, 1),
            "a failed rollout retried is a repair"
        );
    }

    #[test]
    fn detached_network_is_reconnected() {
        let mut c = running();
        c.networks.clear();
        let obs = with(c);
        assert_eq!(kinds(&obs), vec![DriftKind::NetworkDetached]);
        assert_eq!(
            action_for(&diff(&cluster(), &service(), &obs), &obs),
            Some(Action::Connect {
                network: "c_net".into()
            })
        );
    }

    #[test]
    fn host_networked_service_never_detaches() {
        let mut svc = service();
        svc.network_mode = NetworkMode::Host;
        let mut c = running();
        c.networks = BTreeSet::from(["host".to_string()]);
        c.spec_hash = svc.spec_hash();
        assert!(diff(&cluster(), &svc, &with(c)).is_empty());
    }

    #[test]
    fn first_create_and_spec_rollouts_do_not_spend_the_budget() {
        let missing = vec![Drift::new(DriftKind::Missing, "")];
        assert!(is_deliberate(&Action::Create, &missing, false, 0));
        assert!(!is_deliberate(&Action::Create, &missing, false, 1));
        assert!(!is_deliberate(&Action::Create, &missing, true, 0));
        let stopped = vec![Drift::new(DriftKind::Stopped, "")];
        assert!(!is_deliberate(&Action::Start, &stopped, false, 0));
    }

    #[test]
    fn an_unhealthy_verdict_from_before_an_unpause_is_not_a_drift() {
        let paused_at = chrono::Utc::now();
        let mut c = running();
        c.health = Some(HealthState::Unhealthy);
        c.health_probed_at = Some(paused_at - chrono::Duration::seconds(1));
        let mut obs = with(c.clone());
        obs.health_trusted_after = Some(paused_at);
        assert!(
            diff(&cluster(), &service(), &obs).is_empty(),
            "stale verdict"
        );
        // A probe that began after the unpause counts again.
        c.health_probed_at = Some(paused_at + chrono::Duration::milliseconds(1));
        obs.container = Some(c.clone());
        assert_eq!(kinds(&obs), vec![DriftKind::Unhealthy]);
        // Without a pause to distrust, the verdict stands.
        c.health_probed_at = None;
        assert_eq!(kinds(&with(c)), vec![DriftKind::Unhealthy]);
    }

    #[test]
    fn a_network_with_other_options_is_replaced_as_a_deliberate_change() {
        let obs = Observation {
            network_difference: Some("network c_net has internal: false".into()),
            ..with(running())
        };
        let drifts = diff(&cluster(), &service(), &obs);
        assert_eq!(kinds(&obs), vec![DriftKind::NetworkChanged]);
        let action = action_for(&drifts, &obs).unwrap();
        assert_eq!(
            action,
            Action::RecreateNetwork {
                network: "c_net".into()
            }
        );
        assert!(is_deliberate(&action, &drifts, true, 0));
        assert!(
            is_deliberate(&action, &drifts, true, 3),
            "repairs of other drifts before the edit do not make it an incident"
        );
    }
}
