//! What a periodic resync looks at in full, and what one list of the engine shows unchanged.
//!
//! The resync is there for what the event stream missed. Looking at every service in full
//! (an inspect and two store reads each) costs about 0.75 ms per service, so at 1000 a pass
//! took 750 ms and the idle controller 2.4 % of a core. Instead the controller remembers,
//! for each service whose last reconcile found it clean and quiet (verified, no ticket, no
//! budget or gate state to follow), what the engine showed then: an [`Appearance`]. At a
//! resync it lists the engine once; a service whose container's line in that list still
//! matches that appearance is counted as looked at, every other is reconciled in full.
//!
//! # Guarantees
//! - A skip needs a match on everything the list shows of the container that a clean
//!   verdict rests on: its id (a recreate), state, health, spec hash, owner and networks.
//!   What a list line cannot show (a restart in place, whose `die` and `start` the event
//!   stream missed; the options of the cluster's network; when the last healthcheck probe
//!   ran) is caught by the full look every key gets at least every [`FULL_LOOK_EVERY`]
//!   resyncs, 5 to 10 resyncs after its last (2.5 to 5 minutes at the default 30 s) instead
//!   of at the next. The keys' turns are spread over resyncs (by a hash of the key), so no
//!   one resync pays for all of them.
//! - The controller forgets a key's appearance when its reconcile begins, and every manifest
//!   change forgets them all: an appearance is only ever as new as the last clean verdict.
//! - A failed list skips nothing.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::time::Duration;

use tokio::time::Instant;

use bollard::models::{
    ContainerSummary, ContainerSummaryHealthStatusEnum, ContainerSummaryStateEnum,
};

use crate::docker::observed::owner;
use crate::docker::{ContainerStatus, HealthState, LABEL_SPEC_HASH, ObservedContainer, ServiceKey};

/// A key is looked at in full at least once every this many resyncs (and at most half as
/// often: its turn is jittered between the two).
pub const FULL_LOOK_EVERY: u32 = 10;

/// What the engine showed of a service's container, as far as one list line tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appearance {
    pub id: String,
    pub key: ServiceKey,
    pub status: ContainerStatus,
    pub health: Option<HealthState>,
    pub spec_hash: String,
    pub networks: BTreeSet<String>,
}

impl Appearance {
    /// From a full look (an inspect).
    pub fn observed(c: &ObservedContainer) -> Appearance {
        Appearance {
            id: c.id.clone(),
            key: c.key.clone(),
            status: c.status,
            health: c.health,
            spec_hash: c.spec_hash.clone(),
            networks: c.networks.clone(),
        }
    }

    /// From one line of the engine's container list, with the names the manifests adopt
    /// (`adoptable`); `None` for a container neither ours nor adopted, or a line missing
    /// what an appearance needs (then the key is looked at in full).
    pub fn listed(
        s: &ContainerSummary,
        adoptable: &HashMap<String, ServiceKey>,
    ) -> Option<(String, Appearance)> {
        let name = s
            .names
            .as_ref()?
            .first()?
            .trim_start_matches('/')
            .to_string();
        let labels: std::collections::BTreeMap<String, String> =
            s.labels.clone().unwrap_or_default().into_iter().collect();
        let (key, _) = owner(&labels, &name, |name| adoptable.get(name).cloned())?;
        // As an inspect reads them ("stopping" is no longer running); an empty state is
        // nothing to match on.
        let status = match s.state? {
            ContainerSummaryStateEnum::CREATED => ContainerStatus::Created,
            ContainerSummaryStateEnum::RUNNING => ContainerStatus::Running,
            ContainerSummaryStateEnum::PAUSED => ContainerStatus::Paused,
            ContainerSummaryStateEnum::RESTARTING => ContainerStatus::Restarting,
            ContainerSummaryStateEnum::EXITED | ContainerSummaryStateEnum::STOPPING => {
                ContainerStatus::Exited
            }
            ContainerSummaryStateEnum::REMOVING => ContainerStatus::Removing,
            ContainerSummaryStateEnum::DEAD => ContainerStatus::Dead,
            ContainerSummaryStateEnum::EMPTY => return None,
        };
        let health = match s.health.as_ref().and_then(|h| h.status) {
            Some(ContainerSummaryHealthStatusEnum::STARTING) => Some(HealthState::Starting),
            Some(ContainerSummaryHealthStatusEnum::HEALTHY) => Some(HealthState::Healthy),
            Some(ContainerSummaryHealthStatusEnum::UNHEALTHY) => Some(HealthState::Unhealthy),
            Some(ContainerSummaryHealthStatusEnum::NONE) => None,
            // Engines before API 1.52 say it only in the status line.
            Some(ContainerSummaryHealthStatusEnum::EMPTY) | None => {
                health_in_status(s.status.as_deref().unwrap_or_default())
            }
        };
        let networks = s
            .network_settings
            .as_ref()
            .and_then(|n| n.networks.as_ref())
            .map(|n| n.keys().cloned().collect())
            .unwrap_or_default();
        let appearance = Appearance {
            id: s.id.clone()?,
            key,
            status,
            health,
            spec_hash: labels.get(LABEL_SPEC_HASH).cloned().unwrap_or_default(),
            networks,
        };
        Some((name, appearance))
    }
}

/// The health the engine's status line ends with: `Up 5 minutes (healthy)`,
/// `(unhealthy)`, `(health: starting)`.
fn health_in_status(status: &str) -> Option<HealthState> {
    if status.ends_with("(healthy)") {
        Some(HealthState::Healthy)
    } else if status.ends_with("(unhealthy)") {
        Some(HealthState::Unhealthy)
    } else if status.ends_with("(health: starting)") {
        Some(HealthState::Starting)
    } else {
        None
    }
}

#[derive(Debug, Clone)]
struct CleanLook {
    seen: Appearance,
    at: Instant,
}

/// Each quiet, clean key's last appearance (see the module's documentation).
#[derive(Debug, Default)]
pub struct CleanLooks {
    looks: HashMap<ServiceKey, CleanLook>,
    /// Counts manifest changes: a look begun under an older manifest is not recorded.
    generation: u64,
}

/// What a resync does with each key.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Shown unchanged by the list: counted as looked at.
    pub unchanged: Vec<ServiceKey>,
    /// To reconcile in full.
    pub look: Vec<ServiceKey>,
}

impl CleanLooks {
    /// `key` was found clean and quiet at `now`, its container as `seen`, by a look that
    /// began at `generation` (what [`CleanLooks::forget`] returned): recorded unless the
    /// manifests changed since.
    pub fn record(&mut self, key: ServiceKey, seen: Appearance, now: Instant, generation: u64) {
        if generation == self.generation {
            self.looks.insert(key, CleanLook { seen, at: now });
        }
    }

    /// A look at `key` begins: its appearance no longer speaks for it. Returns the
    /// generation to record the look's verdict with.
    pub fn forget(&mut self, key: &ServiceKey) -> u64 {
        self.looks.remove(key);
        self.generation
    }

    /// The manifests changed: no appearance speaks for the new desired state, nor will one
    /// from a look begun before.
    pub fn clear(&mut self) {
        self.looks.clear();
        self.generation += 1;
    }

    pub fn len(&self) -> usize {
        self.looks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.looks.is_empty()
    }

    /// Splits `keys` for a resync at `now` (one every `resync`) by the engine's list
    /// (`listed`: container name to appearance; the service's container is named after it).
    pub fn plan(
        &self,
        keys: impl IntoIterator<Item = ServiceKey>,
        listed: &HashMap<String, Appearance>,
        now: Instant,
        resync: Duration,
    ) -> Plan {
        let mut plan = Plan::default();
        for key in keys {
            let unchanged = self.looks.get(&key).is_some_and(|look| {
                now.saturating_duration_since(look.at) < full_look_after(&key, resync)
                    && listed.get(&key.service) == Some(&look.seen)
            });
            if unchanged {
                plan.unchanged.push(key);
            } else {
                plan.look.push(key);
            }
        }
        plan
    }
}

/// How old a key's clean look may be before a resync looks again in full: between half of
/// and all of [`FULL_LOOK_EVERY`] resyncs, by a hash of the key (the same in every run).
pub fn full_look_after(key: &ServiceKey, resync: Duration) -> Duration {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    let every = resync * FULL_LOOK_EVERY;
    // 0..=1000 thousandths of the upper half; minus a tenth of a resync so that the resync
    // tick at exactly the limit (ticks are not exact) looks rather than skips.
    let jitter = (h.finish() % 1001) as u32;
    (every / 2 + every / 2 * jitter / 1000).saturating_sub(resync / 10)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerSummaryHealth, ContainerSummaryNetworkSettings};

    const RESYNC: Duration = Duration::from_secs(30);

    fn key(s: &str) -> ServiceKey {
        ServiceKey::new("c", s)
    }

    fn appearance(s: &str) -> Appearance {
        Appearance {
            id: format!("{s}-id"),
            key: key(s),
            status: ContainerStatus::Running,
            health: None,
            spec_hash: "abc".into(),
            networks: BTreeSet::from(["c_default".to_string()]),
        }
    }

    fn summary(s: &str) -> ContainerSummary {
        ContainerSummary {
            id: Some(format!("{s}-id")),
            names: Some(vec![format!("/{s}")]),
            labels: Some(HashMap::from([
                ("operator.managed-by".to_string(), "operator".to_string()),
                ("operator.cluster".to_string(), "c".to_string()),
                ("operator.service".to_string(), s.to_string()),
                ("operator.spec-hash".to_string(), "abc".to_string()),
            ])),
            state: Some(ContainerSummaryStateEnum::RUNNING),
            status: Some("Up 5 minutes".into()),
            network_settings: Some(ContainerSummaryNetworkSettings {
                networks: Some(HashMap::from([(
                    "c_default".to_string(),
                    Default::default(),
                )])),
            }),
            ..Default::default()
        }
    }

    fn listed(summaries: &[ContainerSummary]) -> HashMap<String, Appearance> {
        summaries
            .iter()
            .filter_map(|s| Appearance::listed(s, &HashMap::new()))
            .collect()
    }

    #[test]
    fn a_list_line_reads_as_the_appearance_an_inspect_gave() {
        let (name, seen) = Appearance::listed(&summary("web"), &HashMap::new()).unwrap();
        assert_eq!(name, "web");
        assert_eq!(seen, appearance("web"));

        let mut healthy = summary("web");
        healthy.status = Some("Up 5 minutes (healthy)".into());
        let seen = Appearance::listed(&healthy, &HashMap::new()).unwrap().1;
        assert_eq!(seen.health, Some(HealthState::Healthy));
        // The engine's own field wins over the status line.
        healthy.health = Some(ContainerSummaryHealth {
            status: Some(ContainerSummaryHealthStatusEnum::UNHEALTHY),
            ..Default::default()
        });
        let seen = Appearance::listed(&healthy, &HashMap::new()).unwrap().1;
        assert_eq!(seen.health, Some(HealthState::Unhealthy));
        assert_eq!(
            health_in_status("Up 2 seconds (health: starting)"),
            Some(HealthState::Starting)
        );
    }

    #[test]
    fn a_foreign_container_has_no_appearance_unless_adopted_by_its_name() {
        let mut foreign = summary("db");
        foreign.labels = Some(HashMap::from([(
            "com.docker.compose.service".to_string(),
            "db".to_string(),
        )]));
        assert!(Appearance::listed(&foreign, &HashMap::new()).is_none());
        let adoptable = HashMap::from([("db".to_string(), key("db"))]);
        let (_, seen) = Appearance::listed(&foreign, &adoptable).unwrap();
        assert_eq!(seen.key, key("db"));
        assert_eq!(seen.spec_hash, "", "an adopted container has no spec hash");
    }

    #[test]
    fn only_a_key_whose_line_matches_its_clean_look_is_skipped() {
        let t0 = Instant::now();
        let mut looks = CleanLooks::default();
        for s in ["a", "b", "c", "d", "e", "f"] {
            let g = looks.forget(&key(s));
            looks.record(key(s), appearance(s), t0, g);
        }
        let mut lines = vec![summary("a")];
        let mut stopped = summary("b");
        stopped.state = Some(ContainerSummaryStateEnum::EXITED);
        lines.push(stopped);
        let mut recreated = summary("c");
        recreated.id = Some("another-id".into());
        lines.push(recreated);
        let mut unhealthy = summary("d");
        unhealthy.status = Some("Up 1 minute (unhealthy)".into());
        lines.push(unhealthy);
        let mut detached = summary("e");
        detached.network_settings = Some(ContainerSummaryNetworkSettings {
            networks: Some(HashMap::new()),
        });
        lines.push(detached);
        // f: gone from the list. g: never looked at clean.
        let keys = ["a", "b", "c", "d", "e", "f", "g"].map(key);
        let plan = looks.plan(keys, &listed(&lines), t0 + RESYNC, RESYNC);
        assert_eq!(plan.unchanged, vec![key("a")]);
        assert_eq!(plan.look, ["b", "c", "d", "e", "f", "g"].map(key).to_vec());

        let g = looks.forget(&key("a"));
        let plan = looks.plan([key("a")], &listed(&lines), t0 + RESYNC, RESYNC);
        assert_eq!(plan.look, vec![key("a")], "forgotten: looked at in full");
        // A manifest change while that look was under way: its verdict speaks for the old
        // manifest and is not recorded; a look begun after it is.
        looks.clear();
        assert!(looks.is_empty());
        looks.record(key("a"), appearance("a"), t0, g);
        assert!(
            looks.is_empty(),
            "a look from before the change was recorded"
        );
        let g = looks.forget(&key("a"));
        looks.record(key("a"), appearance("a"), t0, g);
        assert_eq!(looks.len(), 1);
    }

    #[test]
    fn every_key_is_looked_at_in_full_within_ten_resyncs_and_the_turns_are_spread() {
        let every = RESYNC * FULL_LOOK_EVERY;
        let mut looks = CleanLooks::default();
        let t0 = Instant::now();
        let names: Vec<String> = (0..1000).map(|i| format!("s{i}")).collect();
        let mut lines = Vec::new();
        for n in &names {
            let g = looks.forget(&key(n));
            looks.record(key(n), appearance(n), t0, g);
            lines.push(summary(n));
        }
        let lines = listed(&lines);
        let keys = || names.iter().map(|n| key(n));
        // Resync k comes at t0 + k × RESYNC: none is due before the fifth, all by the tenth.
        let mut due_at = vec![0usize; FULL_LOOK_EVERY as usize + 1];
        for k in 1..=FULL_LOOK_EVERY {
            let plan = looks.plan(keys(), &lines, t0 + RESYNC * k, RESYNC);
            due_at[k as usize] = plan.look.len();
        }
        assert!(due_at[..5].iter().all(|&n| n == 0), "{due_at:?}");
        assert_eq!(due_at[FULL_LOOK_EVERY as usize], 1000, "{due_at:?}");
        // Spread: each resync from the sixth on takes its share, not all at once.
        for k in 6..=FULL_LOOK_EVERY as usize {
            let new = due_at[k] - due_at[k - 1];
            assert!((100..=300).contains(&new), "resync {k}: {due_at:?}");
        }
        for n in &names {
            let after = full_look_after(&key(n), RESYNC);
            assert!(
                after >= every / 2 - RESYNC / 10 && after < every,
                "{after:?}"
            );
        }
    }
}
