//! What the controller has taken down and not yet seen live again, per cluster: the state
//! the quorum gate ([`super::quorum::judge`]) is asked against. Checking and taking happen
//! under one lock, so two members reconciled side by side can never both pass the gate on
//! the same view of the group.
//!
//! Durable: every change marks its cluster dirty, and the controller writes the dirty
//! clusters' state to the ticket store ([`Disruptions::dirty`], `tickets::GateState`) before
//! the action it allowed runs and at the end of each reconcile; a restarted controller
//! [`restore`](Disruptions::restore)s it, so a rollout or a replacement window interrupted by
//! a crash resumes with the gate and the caps as they were.

use std::collections::{BTreeSet, HashMap, VecDeque};

use chrono::{DateTime, Utc};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::docker::ServiceKey;
use crate::manifest::Cluster;
use crate::tickets::{GateState, UnderWay};

use super::quorum::{Disruption, Refusal, Snapshot, judge};
use super::shared::lock;
use super::state::{to_instant, to_wall};

/// The caller's view of the cluster's services: whether each runs, and whether it is live.
pub type View<'a> = (&'a dyn Fn(&str) -> bool, &'a dyn Fn(&str) -> bool);

/// A running container the controller took down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    pub rollout: bool,
    /// When the action finished: from then on the member has until `deadline` to be live.
    pub deadline: Option<Instant>,
    /// When it was first seen running, settled and healthy again after the action (its live
    /// checks must be evaluated after that, and pass, before it counts as live).
    pub clean_at: Option<Instant>,
    /// A rollout that stopped here (escalated once): it stays under way until it is live.
    pub gave_up: bool,
}

#[derive(Default)]
struct Inner {
    taken: HashMap<ServiceKey, Taken>,
    /// When repairs took a live member of each (cluster, group) down.
    repairs: HashMap<(String, String), VecDeque<Instant>>,
    /// Clusters changed since their state was last handed out to be stored.
    dirty: BTreeSet<String>,
}

/// The registry of what is under way (one per controller).
#[derive(Default)]
pub struct Disruptions {
    inner: Mutex<Inner>,
}

impl Disruptions {
    /// Takes `key` down for `what` if the gate allows it now (or `force`: a person said so),
    /// and records it as under way. `running` and `live` are the caller's view of the
    /// cluster's services. A container that does not run is not a disruption: allowed, and
    /// not recorded. Returns whether it is now recorded (then [`Disruptions::acted`] or
    /// [`Disruptions::release`] must follow).
    pub fn take(
        &self,
        cluster: &Cluster,
        key: &ServiceKey,
        what: Disruption,
        (running, live): View<'_>,
        now: Instant,
        force: bool,
    ) -> Result<bool, Refusal> {
        let mut inner = lock(&self.inner);
        if let Some(taken) = inner.taken.get_mut(key) {
            // Still under way from an earlier action: this one is its next step (a crashed
            // member started again, a stopped rollout's member recreated on a fixed spec).
            // Its wait for the member to be live starts again when this action finishes.
            taken.rollout |= what.rollout;
            taken.deadline = None;
            taken.clean_at = None;
            taken.gave_up = false;
            inner.dirty.insert(key.cluster.clone());
            return Ok(true);
        }
        if !running(&key.service) {
            return Ok(false);
        }
        let mine = |k: &&ServiceKey| k.cluster == key.cluster;
        let taken: BTreeSet<String> = inner
            .taken
            .keys()
            .filter(mine)
            .map(|k| k.service.clone())
            .collect();
        let stopped: BTreeSet<String> = inner
            .taken
            .iter()
            .filter(|(k, t)| mine(k) && t.gave_up)
            .map(|(k, _)| k.service.clone())
            .collect();
        let mut recent: HashMap<String, usize> = HashMap::new();
        for g in &cluster.groups {
            let at = inner
                .repairs
                .entry((cluster.name.clone(), g.name.clone()))
                .or_default();
            while at
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= g.replacements.window)
            {
                at.pop_front();
            }
            recent.insert(g.name.clone(), at.len());
        }
        let verdict = judge(
            cluster,
            &key.service,
            what,
            &Snapshot {
                running,
                live,
                taken: &taken,
                stopped: &stopped,
                recent: &|g| recent.get(g).copied().unwrap_or(0),
            },
        );
        if !force {
            verdict?;
        }
        if what.repair && live(&key.service) {
            for g in cluster.groups_of(&key.service) {
                inner
                    .repairs
                    .entry((cluster.name.clone(), g.name.clone()))
                    .or_default()
                    .push_back(now);
            }
        }
        inner.taken.insert(
            key.clone(),
            Taken {
                rollout: what.rollout,
                deadline: None,
                clean_at: None,
                gave_up: false,
            },
        );
        inner.dirty.insert(key.cluster.clone());
        Ok(true)
    }

    /// The action on `key` finished: a member of a group now has `live_timeout` to be live
    /// again (`None`: not in a group, nothing to wait for). Returns the deadline set.
    pub fn acted(&self, key: &ServiceKey, live_timeout: Option<Duration>) -> Option<Instant> {
        let mut inner = lock(&self.inner);
        inner.dirty.insert(key.cluster.clone());
        let Some(timeout) = live_timeout else {
            inner.taken.remove(key);
            return None;
        };
        let taken = inner.taken.get_mut(key)?;
        Some(
            *taken
                .deadline
                .get_or_insert_with(|| Instant::now() + timeout),
        )
    }

    pub fn get(&self, key: &ServiceKey) -> Option<Taken> {
        lock(&self.inner).taken.get(key).cloned()
    }

    /// Notes when the member was first seen clean again; returns that moment.
    pub fn seen_clean(&self, key: &ServiceKey, now: Instant) -> Option<Instant> {
        let mut inner = lock(&self.inner);
        let taken = inner.taken.get_mut(key)?;
        if let Some(at) = taken.clean_at {
            return Some(at);
        }
        taken.clean_at = Some(now);
        inner.dirty.insert(key.cluster.clone());
        Some(now)
    }

    /// A rollout stopped at `key`: escalated once, and it stays under way.
    pub fn give_up(&self, key: &ServiceKey) {
        let mut inner = lock(&self.inner);
        if let Some(t) = inner.taken.get_mut(key) {
            t.gave_up = true;
            inner.dirty.insert(key.cluster.clone());
        }
    }

    /// The member is live again, gave up on, or the action failed: no longer under way.
    pub fn release(&self, key: &ServiceKey) -> Option<Taken> {
        let mut inner = lock(&self.inner);
        let gone = inner.taken.remove(key)?;
        inner.dirty.insert(key.cluster.clone());
        Some(gone)
    }

    /// The services of `cluster` under way now.
    pub fn under_way(&self, cluster: &str) -> BTreeSet<String> {
        lock(&self.inner)
            .taken
            .keys()
            .filter(|k| k.cluster == cluster)
            .map(|k| k.service.clone())
            .collect()
    }

    /// Forgets everything about services the manifests no longer declare.
    pub fn retain(&self, declared: impl Fn(&ServiceKey) -> bool) {
        let mut inner = lock(&self.inner);
        let gone: Vec<String> = inner
            .taken
            .keys()
            .filter(|k| !declared(k))
            .map(|k| k.cluster.clone())
            .collect();
        inner.taken.retain(|k, _| declared(k));
        inner.dirty.extend(gone);
    }

    /// The state of each cluster changed since the last call, to be stored (`now` and `wall`
    /// are one moment by both clocks); they are no longer dirty. A failed write hands them
    /// back with [`Disruptions::mark_dirty`].
    pub fn dirty(&self, now: Instant, wall: DateTime<Utc>) -> Vec<(String, GateState)> {
        let mut inner = lock(&self.inner);
        let clusters = std::mem::take(&mut inner.dirty);
        clusters
            .into_iter()
            .map(|cluster| {
                let mut state = GateState::default();
                for (k, t) in inner.taken.iter().filter(|(k, _)| k.cluster == cluster) {
                    state.under_way.push(UnderWay {
                        service: k.service.clone(),
                        rollout: t.rollout,
                        deadline: t.deadline.map(|d| to_wall(d, now, wall)),
                        clean_at: t.clean_at.map(|d| to_wall(d, now, wall)),
                        gave_up: t.gave_up,
                    });
                }
                state.under_way.sort_by(|a, b| a.service.cmp(&b.service));
                for ((c, group), at) in &inner.repairs {
                    if *c == cluster {
                        state
                            .replacements
                            .extend(at.iter().map(|t| (group.clone(), to_wall(*t, now, wall))));
                    }
                }
                state.replacements.sort();
                (cluster, state)
            })
            .collect()
    }

    /// `cluster`'s state must be stored again (its last write failed).
    pub fn mark_dirty(&self, cluster: &str) {
        lock(&self.inner).dirty.insert(cluster.to_string());
    }

    /// Takes back what a controller before this one stored (see the module's doc); a time
    /// too far in the past for this process's clock counts as now.
    pub fn restore(&self, states: Vec<(String, GateState)>, now: Instant, wall: DateTime<Utc>) {
        let at = |t: DateTime<Utc>| to_instant(t, now, wall).unwrap_or(now);
        let mut inner = lock(&self.inner);
        for (cluster, state) in states {
            for u in state.under_way {
                inner.taken.insert(
                    ServiceKey::new(&cluster, &u.service),
                    Taken {
                        rollout: u.rollout,
                        deadline: u.deadline.map(at),
                        clean_at: u.clean_at.map(at),
                        gave_up: u.gave_up,
                    },
                );
            }
            for (group, t) in state.replacements {
                inner
                    .repairs
                    .entry((cluster.clone(), group))
                    .or_default()
                    .push_back(at(t));
            }
        }
        for window in inner.repairs.values_mut() {
            window.make_contiguous().sort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Quorum;

    /// Three members `m0`..`m2`, two repairs per window.
    fn cluster() -> Cluster {
        let mut c = super::super::quorum::tests::cluster(3, Quorum::Majority);
        c.groups[0].replacements.max = 2;
        c
    }

    const REPAIR: Disruption = Disruption {
        rollout: false,
        repair: true,
    };

    #[tokio::test(start_paused = true)]
    async fn the_second_of_two_members_taken_at_once_waits_until_the_first_is_released() {
        let (c, d) = (cluster(), Disruptions::default());
        let (a, b) = (ServiceKey::new("c", "m0"), ServiceKey::new("c", "m1"));
        let now = Instant::now();
        assert_eq!(
            d.take(&c, &a, REPAIR, (&|_| true, &|_| true), now, false),
            Ok(true)
        );
        let refused = d
            .take(&c, &b, REPAIR, (&|_| true, &|_| true), now, false)
            .unwrap_err();
        assert_eq!(refused.rule(), "group-concurrency");
        // The action finished: m0 has a minute to be live again, and is still under way.
        let deadline = d.acted(&a, Some(Duration::from_secs(60))).unwrap();
        assert_eq!(deadline, now + Duration::from_secs(60));
        assert!(
            d.take(&c, &b, REPAIR, (&|_| true, &|_| true), now, false)
                .is_err()
        );
        // Forced by a person: taken all the same.
        assert_eq!(
            d.take(&c, &b, REPAIR, (&|_| true, &|_| true), now, true),
            Ok(true)
        );
        d.release(&a);
        d.release(&b);
        // A container that does not run is not a disruption: allowed and not recorded.
        assert_eq!(
            d.take(&c, &b, REPAIR, (&|m| m != "m1", &|m| m != "m1"), now, false),
            Ok(false)
        );
        assert!(d.get(&b).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn what_is_under_way_and_the_window_survive_a_store_and_restore_and_only_changes_are_dirty()
     {
        let (c, d) = (cluster(), Disruptions::default());
        let (a, b) = (ServiceKey::new("c", "m0"), ServiceKey::new("c", "m1"));
        let (now, wall) = (Instant::now(), Utc::now());
        assert!(d.dirty(now, wall).is_empty());
        assert_eq!(
            d.take(&c, &a, REPAIR, (&|_| true, &|_| true), now, false),
            Ok(true)
        );
        d.acted(&a, Some(Duration::from_secs(60)));
        let stored = d.dirty(now, wall);
        assert_eq!(stored.len(), 1, "one cluster changed");
        assert!(d.dirty(now, wall).is_empty(), "handed out once");
        let (_, state) = &stored[0];
        assert_eq!(state.under_way.len(), 1);
        assert_eq!(
            state.under_way[0].deadline,
            Some(wall + chrono::Duration::seconds(60))
        );
        assert_eq!(state.replacements.len(), 1);

        // A new controller, ten seconds later by both clocks.
        tokio::time::advance(Duration::from_secs(10)).await;
        let (later, later_wall) = (Instant::now(), wall + chrono::Duration::seconds(10));
        let restored = Disruptions::default();
        restored.restore(stored, later, later_wall);
        let taken = restored.get(&a).expect("still under way");
        assert_eq!(taken.deadline, Some(now + Duration::from_secs(60)));
        assert!(
            restored.dirty(later, later_wall).is_empty(),
            "nothing changed yet"
        );
        // The gate judges as the old controller would have: m0 is under way, so m1 waits.
        let refused = restored
            .take(&c, &b, REPAIR, (&|_| true, &|_| true), later, false)
            .unwrap_err();
        assert_eq!(refused.rule(), "group-concurrency");
        // And the window still counts m0's repair: one more, then the cap.
        restored.release(&a);
        assert_eq!(restored.dirty(later, later_wall).len(), 1);
        assert_eq!(
            restored.take(&c, &b, REPAIR, (&|_| true, &|_| true), later, false),
            Ok(true)
        );
        restored.release(&b);
        assert!(
            restored
                .take(&c, &a, REPAIR, (&|_| true, &|_| true), later, false)
                .unwrap_err()
                .escalates()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn repairs_in_the_window_are_counted_and_forgotten_after_it() {
        let (c, d) = (cluster(), Disruptions::default());
        let a = ServiceKey::new("c", "m0");
        let now = Instant::now();
        for _ in 0..2 {
            assert_eq!(
                d.take(&c, &a, REPAIR, (&|_| true, &|_| true), now, false),
                Ok(true)
            );
            d.release(&a);
        }
        let churn = d
            .take(&c, &a, REPAIR, (&|_| true, &|_| true), now, false)
            .unwrap_err();
        assert!(churn.escalates(), "{churn}");
        let later = now + Duration::from_secs(600);
        assert_eq!(
            d.take(&c, &a, REPAIR, (&|_| true, &|_| true), later, false),
            Ok(true)
        );
    }
}
