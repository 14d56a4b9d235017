//! One state per key: what the controller remembers of each service between two of its
//! reconciles, in one map behind one lock, pruned in one place ([`Keys::prune`]).
//!
//! This is the volatile part, lost with the process and rebuilt by the next looks. The
//! persisted part is written through the ticket store, so a controller killed mid-repair or
//! mid-rollout resumes with it as it was: the repair budget and when the service was last
//! paused (`tickets::budget`, read at most once per reconcile, and not at all while the
//! `view` the key's last store call read back is current), and what the quorum gate
//! has under way with each group's replacement window (`tickets::gate`, see
//! [`super::disruption`]).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::SystemTime;

use tokio::time::Instant;

use crate::docker::ServiceKey;
use crate::manifest::DesiredState;

use super::checks::CheckRestart;
use super::expect::Expectation;
use super::shared::{SeenRun, lock};
use super::state::RepairBudget;

/// What the controller keeps of one key in memory.
#[derive(Debug, Default)]
pub(super) struct KeyState {
    /// The budget as last saved (the ticket store is the truth when there is one; without
    /// one, as for `plan`, this is all there is).
    pub budget: Option<RepairBudget>,
    /// Engine time of the earliest event not yet looked at.
    pub pending_event: Option<SystemTime>,
    /// A restart a failing check with `policy: restart` asks for.
    pub check_restart: Option<CheckRestart>,
    /// When a check last had the service restarted: the next waits for a fresh verdict.
    pub check_restarted_at: Option<Instant>,
    /// When the service was last seen paused, or unpaused by the controller: healthcheck
    /// verdicts from probes begun before then are stale.
    pub paused_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Why the quorum gate holds the key's action back (noted on its ticket once per reason).
    pub gated: Option<String>,
    /// This process has told the log the service is escalated (once, not per look).
    pub escalation_told: bool,
    /// The dependency the key waits for before its container may start (logged once).
    pub waiting_on: Option<String>,
    /// The container and start time the last look saw (a start the controller did not make
    /// and no look saw stopping is a stop between looks).
    pub last_run: Option<SeenRun>,
    /// The adopted container this process recorded (the record is written once each).
    pub adopted: Option<String>,
    /// The effect the key's last action must show in the store before it is read again.
    pub expectation: Option<Expectation>,
    /// The key's budget and tickets as its last reconcile's last store call read them: the
    /// next reconcile's read while the store's generation is the same (a cache of the
    /// ticket store, never its truth).
    pub view: Option<crate::tickets::ServiceView>,
}

/// Every key's [`KeyState`].
#[derive(Debug, Default)]
pub(super) struct Keys {
    states: Mutex<HashMap<ServiceKey, KeyState>>,
}

impl Keys {
    /// Runs `f` on `key`'s state (an empty one if it has none yet), under the one lock.
    pub fn with<R>(&self, key: &ServiceKey, f: impl FnOnce(&mut KeyState) -> R) -> R {
        let mut states = lock(&self.states);
        f(states.entry(key.clone()).or_default())
    }

    /// Reads `key`'s state without making one.
    pub fn read<R>(&self, key: &ServiceKey, f: impl FnOnce(&KeyState) -> R) -> Option<R> {
        lock(&self.states).get(key).map(f)
    }

    /// Forgets every key `desired` no longer declares, and check restarts asked for by a
    /// check it no longer declares. The one place key state is pruned. Returns how many of
    /// the services left are escalated.
    pub fn prune(&self, desired: &DesiredState) -> usize {
        let mut states = lock(&self.states);
        states.retain(|k, state| {
            let Some(cluster) = desired.cluster(&k.cluster) else {
                return false;
            };
            if cluster.service(&k.service).is_none() {
                return false;
            }
            if state
                .check_restart
                .as_ref()
                .is_some_and(|r| cluster.check(&r.check).is_none())
            {
                state.check_restart = None;
            }
            true
        });
        escalated(&states)
    }

    /// Keeps `key`'s budget as last saved; returns how many services are escalated now
    /// (counted under the same lock, so two reconciles cannot leave a stale count).
    pub fn save_budget(&self, key: &ServiceKey, budget: RepairBudget) -> usize {
        let mut states = lock(&self.states);
        states.entry(key.clone()).or_default().budget = Some(budget);
        escalated(&states)
    }

    /// Withdraws the check restarts of `cluster`: all of them (`check` none), or one check's
    /// except on the services in `keep`.
    pub fn withdraw_check_restarts(
        &self,
        cluster: &str,
        check: Option<&str>,
        keep: &HashSet<String>,
    ) {
        for (key, state) in lock(&self.states).iter_mut() {
            let Some(r) = &state.check_restart else {
                continue;
            };
            let kept = key.cluster != cluster
                || check.is_some_and(|c| c != r.check)
                || (check.is_some() && keep.contains(&key.service));
            if !kept {
                state.check_restart = None;
            }
        }
    }
}

/// How many services are escalated, by their budgets as last saved.
fn escalated(states: &HashMap<ServiceKey, KeyState>) -> usize {
    states
        .values()
        .filter(|s| s.budget.as_ref().is_some_and(|b| b.escalated))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn restart(check: &str) -> CheckRestart {
        CheckRestart {
            check: check.into(),
            ticket: 1,
            detail: String::new(),
            settle: std::time::Duration::ZERO,
        }
    }

    #[test]
    fn check_restarts_are_withdrawn_by_cluster_and_check_keeping_the_services_named() {
        let keys = Keys::default();
        let a = ServiceKey::new("c", "a");
        let b = ServiceKey::new("c", "b");
        let other = ServiceKey::new("d", "a");
        for k in [&a, &b, &other] {
            keys.with(k, |s| s.check_restart = Some(restart("up")));
        }
        keys.withdraw_check_restarts("c", Some("down"), &HashSet::new());
        assert!(
            keys.read(&a, |s| s.check_restart.is_some()).unwrap(),
            "another check's"
        );
        keys.withdraw_check_restarts("c", Some("up"), &HashSet::from(["b".to_string()]));
        assert!(keys.read(&a, |s| s.check_restart.is_none()).unwrap());
        assert!(
            keys.read(&b, |s| s.check_restart.is_some()).unwrap(),
            "kept"
        );
        keys.withdraw_check_restarts("c", None, &HashSet::new());
        assert!(keys.read(&b, |s| s.check_restart.is_none()).unwrap());
        assert!(
            keys.read(&other, |s| s.check_restart.is_some()).unwrap(),
            "another cluster's"
        );
    }

    #[test]
    fn escalated_counts_the_budgets_last_saved() {
        let keys = Keys::default();
        let mut escalated = RepairBudget::default();
        escalated.escalated = true;
        assert_eq!(keys.save_budget(&ServiceKey::new("c", "a"), escalated), 1);
        keys.with(&ServiceKey::new("c", "x"), |_| {});
        assert_eq!(
            keys.save_budget(&ServiceKey::new("c", "b"), RepairBudget::default()),
            1
        );
    }
}
