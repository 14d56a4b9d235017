//! The quorum gate as the proxy asks it, and the [`Registry`] of what sessions have under
//! way: the members they took down and have not yet seen back.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bollard::Docker;
use chrono::{DateTime, Utc};
use tokio::sync::OwnedMutexGuard;

use crate::docker::{ContainerStatus, ObservedContainer, ServiceKey};
use crate::manifest::Cluster;
use crate::reconcile::quorum::{Disruption, LiveCheckFailures, Snapshot, judge};
use crate::tickets::Journal;

/// How long a member a session stopped, killed, restarted, paused or disconnected must have
/// been seen running before it stops counting as under way. Running
/// is not yet serving: a Raft member that has just started may still be catching up, and
/// the next disruption must not count it as live before it is.
pub const SETTLE: Duration = Duration::from_secs(10);

/// The longest a look at one member may take while the gate judges; past it the member
/// counts as not running (which only protects the others more).
const INSPECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the sessions of one dispatcher have under way, shared by all of them: one change
/// to a cluster at a time, and the members each change took down.
///
/// # Guarantees
/// - Changes to one cluster are serialised (one turn at a time): the judgment, the forward
///   and the engine's answer happen under one turn, so two stops in two statements are
///   judged in turn, each seeing the other's effect.
/// - A disrupted member stays under way until it has been seen running for [`SETTLE`].
#[derive(Debug, Default)]
pub struct Registry {
    turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// By (cluster, member).
    disrupted: Mutex<BTreeMap<(String, String), Disrupted>>,
    controller: Mutex<ControllerUnderWay>,
}

/// What the controller in this process has under way in a cluster (its own restarts and
/// rollouts, until it has seen each member live again): the gate counts those too, so the
/// agent's change and the controller's never pass on the same view of a group. Absent in
/// `operator agent`, which cannot see the controller's work.
#[derive(Clone, Default)]
struct ControllerUnderWay(Option<Arc<UnderWayFn>>);

/// The services of a cluster under way, by cluster name.
type UnderWayFn = dyn Fn(&str) -> BTreeSet<String> + Send + Sync;

impl std::fmt::Debug for ControllerUnderWay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Some(..)" } else { "None" })
    }
}

/// A member a session took down.
#[derive(Debug, Clone, PartialEq)]
struct Disrupted {
    at: DateTime<Utc>,
    /// Since when it is known to have run without a break, once it runs again.
    running_since: Option<DateTime<Utc>>,
}

/// One look at a member.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Seen {
    pub running: bool,
    /// When the engine last started it.
    pub started_at: Option<DateTime<Utc>>,
}

impl Disrupted {
    /// Takes in one look; true once the member has run for [`SETTLE`] since the disruption.
    fn settled(&mut self, seen: Seen, now: DateTime<Utc>) -> bool {
        if !seen.running {
            self.running_since = None;
            return false;
        }
        // A start the engine dates after the disruption says when it came back (or came
        // back again since the last look); an unpause keeps the old start time, so it is
        // only known to run from this look on.
        let started = seen.started_at.filter(|t| *t > self.at);
        let since = match (self.running_since, started) {
            (Some(known), Some(started)) => known.max(started),
            (Some(known), None) => known,
            (None, started) => started.unwrap_or(now),
        };
        self.running_since = Some(since);
        now.signed_duration_since(since)
            .to_std()
            .is_ok_and(|ran| ran >= SETTLE)
    }
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Counts what `under_way` says the controller has under way in a cluster as under
    /// way too (see [`Registry`]).
    pub fn also_controller(
        &self,
        under_way: impl Fn(&str) -> BTreeSet<String> + Send + Sync + 'static,
    ) {
        *self.controller.lock().unwrap_or_else(|e| e.into_inner()) =
            ControllerUnderWay(Some(Arc::new(under_way)));
    }

    /// What the gate counts as under way in `cluster`: the sessions' and the controller's.
    pub(super) fn taken(&self, cluster: &str) -> BTreeSet<String> {
        let mut taken = self.under_way(cluster);
        taken.extend(self.controller_under_way(cluster));
        taken
    }

    /// What the controller has under way in `cluster`, when it is known.
    fn controller_under_way(&self, cluster: &str) -> BTreeSet<String> {
        let source = self
            .controller
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        source.0.map(|f| f(cluster)).unwrap_or_default()
    }

    /// The members of `cluster` that sessions have under way.
    pub fn under_way(&self, cluster: &str) -> BTreeSet<String> {
        self.disruptions()
            .keys()
            .filter(|(c, _)| c == cluster)
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// Waits for `cluster`'s turn: one change to a cluster at a time, across sessions.
    pub(super) async fn turn(&self, cluster: &str) -> OwnedMutexGuard<()> {
        let lock = self
            .turns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(cluster.to_string())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    /// A session took `member` down at `at`.
    pub(super) fn disrupted(&self, cluster: &str, member: &str, at: DateTime<Utc>) {
        self.disruptions().insert(
            (cluster.to_string(), member.to_string()),
            Disrupted {
                at,
                running_since: None,
            },
        );
    }

    /// The disruption of `member` at `at` did not happen (the engine refused it): forgotten,
    /// unless a later one replaced it.
    pub(super) fn forget(&self, cluster: &str, member: &str, at: DateTime<Utc>) {
        let mut disruptions = self.disruptions();
        let key = (cluster.to_string(), member.to_string());
        if disruptions.get(&key).is_some_and(|d| d.at == at) {
            disruptions.remove(&key);
        }
    }

    /// Takes in a look at `member`: a disruption it has settled from is forgotten.
    pub(super) fn observe(&self, cluster: &str, member: &str, seen: Seen, now: DateTime<Utc>) {
        let mut disruptions = self.disruptions();
        let key = (cluster.to_string(), member.to_string());
        if disruptions
            .get_mut(&key)
            .is_some_and(|d| d.settled(seen, now))
        {
            disruptions.remove(&key);
        }
    }

    fn disruptions(&self) -> MutexGuard<'_, BTreeMap<(String, String), Disrupted>> {
        self.disrupted.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether `service`, a member of one of `cluster`'s groups, may be taken down now, judged
/// as the controller judges a plain restart: who runs and is live is read from the engine
/// and the ticket store now, and what sessions have under way from the registry.
/// `adoptable` gives the service a container name is adopted for.
///
/// # Errors
/// Why not, as the gate says it; or that the ticket store cannot be read (nothing can be
/// judged without it).
pub(super) async fn judge_member(
    docker: &Docker,
    journal: &Journal,
    cluster: &Cluster,
    registry: &Registry,
    adoptable: &HashMap<String, ServiceKey>,
    service: &str,
) -> Result<(), String> {
    let failing = LiveCheckFailures::read(journal, cluster)
        .await
        .map_err(|e| format!("the quorum gate cannot read the ticket store ({e})"))?;
    let members: BTreeSet<&String> = cluster.groups.iter().flat_map(|g| &g.members).collect();
    let mut running = HashSet::new();
    for member in members {
        let key = ServiceKey::new(&cluster.name, member.as_str());
        // Not found, not answering or not ours: not running, so not live.
        let ours =
            match tokio::time::timeout(INSPECT_TIMEOUT, docker.inspect_container(member, None))
                .await
            {
                Ok(Ok(raw)) => {
                    ObservedContainer::recognise(&raw, |name| adoptable.get(name).cloned())
                        .filter(|c| c.key == key)
                }
                _ => None,
            };
        let seen = Seen {
            running: ours
                .as_ref()
                .is_some_and(|c| c.status == ContainerStatus::Running),
            started_at: ours.and_then(|c| c.started_at),
        };
        if seen.running {
            running.insert(member.clone());
        }
        registry.observe(&cluster.name, member, seen, Utc::now());
    }
    let taken = registry.taken(&cluster.name);
    let runs = |m: &str| running.contains(m);
    let live = |m: &str| running.contains(m) && !failing.fail(cluster, m);
    let none = BTreeSet::new();
    let now = Snapshot {
        running: &runs,
        live: &live,
        taken: &taken,
        stopped: &none,
        recent: &|_| 0,
    };
    judge(cluster, service, Disruption::PLAIN, &now).map_err(|refusal| refusal.to_string())
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0)
            .single()
            .expect("a valid time")
    }

    const DOWN: Seen = Seen {
        running: false,
        started_at: None,
    };

    fn up(started: i64) -> Seen {
        Seen {
            running: true,
            started_at: Some(t(started)),
        }
    }

    #[test]
    fn a_disrupted_member_is_under_way_until_it_has_run_for_the_settle_time() {
        let r = Registry::new();
        r.disrupted("c", "m1", t(0));
        assert_eq!(r.under_way("c"), BTreeSet::from(["m1".to_string()]));
        assert!(r.under_way("other").is_empty());
        r.observe("c", "m1", DOWN, t(3));
        // Started again at 5: at 14 it has run 9 s, at 15 the full 10.
        r.observe("c", "m1", up(5), t(14));
        assert_eq!(r.under_way("c").len(), 1);
        r.observe("c", "m1", up(5), t(15));
        assert!(r.under_way("c").is_empty());
    }

    #[test]
    fn a_member_that_stops_again_starts_its_settle_time_over() {
        let r = Registry::new();
        r.disrupted("c", "m1", t(0));
        r.observe("c", "m1", up(2), t(8));
        r.observe("c", "m1", DOWN, t(9));
        r.observe("c", "m1", up(11), t(13));
        r.observe("c", "m1", up(11), t(20));
        assert_eq!(r.under_way("c").len(), 1, "ran 9 s since its last start");
        // Restarted between two looks: the newer start counts.
        r.observe("c", "m1", up(18), t(25));
        assert_eq!(r.under_way("c").len(), 1);
        r.observe("c", "m1", up(18), t(28));
        assert!(r.under_way("c").is_empty());
    }

    #[test]
    fn an_unpaused_member_counts_from_when_it_is_first_seen_running() {
        let r = Registry::new();
        // Paused at 100, started long before: the start time says nothing about the unpause.
        r.disrupted("c", "m1", t(100));
        r.observe("c", "m1", up(0), t(101));
        r.observe("c", "m1", up(0), t(110));
        assert_eq!(r.under_way("c").len(), 1);
        r.observe("c", "m1", up(0), t(111));
        assert!(r.under_way("c").is_empty());
    }

    #[test]
    fn a_disruption_the_engine_refused_is_forgotten_unless_replaced() {
        let r = Registry::new();
        r.disrupted("c", "m1", t(0));
        r.forget("c", "m1", t(0));
        assert!(r.under_way("c").is_empty());
        r.disrupted("c", "m1", t(1));
        r.disrupted("c", "m1", t(2));
        r.forget("c", "m1", t(1));
        assert_eq!(r.under_way("c").len(), 1, "the later disruption stands");
        r.forget("c", "m2", t(2));
        assert_eq!(r.under_way("c").len(), 1, "nothing to forget of m2");
    }

    #[tokio::test]
    async fn turns_of_one_cluster_are_taken_one_at_a_time() {
        let r = Arc::new(Registry::new());
        let first = r.turn("c").await;
        // Another cluster is not held up.
        let _other = r.turn("d").await;
        let waiting = tokio::spawn({
            let r = r.clone();
            async move {
                let _turn = r.turn("c").await;
            }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the second turn follows the first")
            .expect("no panic");
    }

    #[test]
    fn what_the_controller_has_under_way_counts_for_the_gate_but_is_not_the_sessions() {
        let r = Registry::new();
        r.disrupted("c", "m1", t(0));
        assert_eq!(r.taken("c"), BTreeSet::from(["m1".to_string()]));
        r.also_controller(|cluster| {
            if cluster == "c" {
                BTreeSet::from(["m2".to_string()])
            } else {
                BTreeSet::new()
            }
        });
        assert_eq!(
            r.taken("c"),
            BTreeSet::from(["m1".to_string(), "m2".to_string()])
        );
        assert_eq!(r.under_way("c"), BTreeSet::from(["m1".to_string()]));
        assert!(r.taken("other").is_empty());
    }
}
