//! What a look follows up besides its own drift: a failing check's restart, a
//! `restartWith` dependency that started after this service, a stop between two looks, and
//! whether a dependency runs.

use crate::docker::{ContainerStatus, ObservedContainer, ServiceKey};
use crate::drift::{Drift, DriftKind};
use crate::manifest::{Cluster, Policy, Service};
use crate::remediation::Action;
use crate::tickets::Status;

use super::super::checks::CheckRestart;
use super::super::diff::Observation;
use super::super::outcome::Outcome;
use super::super::shared::lock;
use super::super::state::RepairBudget;
use super::{Attempt, KeyRun, Reason};

impl KeyRun<'_> {
    /// A running container whose check fails with `policy: restart`: restart it under the
    /// service's budget, recorded on the check's ticket. `None`: nothing to do for the check
    /// now, so the service's normal path runs.
    pub(super) async fn restart_for_check(
        &self,
        cluster: &Cluster,
        service: &Service,
        observed: &Observation,
        repair: CheckRestart,
        budget: &mut RepairBudget,
    ) -> Option<Outcome> {
        let (shared, key, now) = (self.shared, self.key, self.clock.now);
        // The manifest may have changed since the verdict: only a declared check that still
        // says `restart` (or `agent`, with an agent that serves) may act.
        let policy = cluster
            .check(&repair.check)
            .map(|c| c.remediation.policy)
            .filter(|p| match p {
                Policy::Restart => true,
                Policy::Agent => shared.remediator(Policy::Agent).is_some(),
                Policy::Observe => false,
            });
        let journal = self.journal()?;
        let ticket = journal.get(repair.ticket).await.ok().flatten();
        let live = ticket
            .as_ref()
            .is_some_and(|t| t.status != Status::Resolved && !t.held);
        if policy.is_none() || !live {
            shared.keys.with(key, |state| state.check_restart = None);
            return None;
        }
        // The last restart for a check must have had time to show in a fresh verdict.
        if let Some(at) = shared.keys.with(key, |state| state.check_restarted_at)
            && now < at + repair.settle
        {
            self.again_at(at + repair.settle);
            return None;
        }
        // Withdrawn by the check recorder meanwhile (the check passes, Prometheus is gone...)?
        shared.keys.with(key, |state| state.check_restart.take())?;
        let r = &service.remediation;
        budget.saw_drift(now, r);
        let outcome = self
            .attempt(
                Attempt {
                    cluster,
                    service,
                    policy: policy.unwrap_or(Policy::Restart),
                    action: Some(Action::Restart),
                    budgeted: true,
                    remediation: r,
                    ticket: Some(repair.ticket),
                    reason: Reason::Check(&repair.check),
                    detail: repair.detail.clone(),
                    container: observed.container.as_ref(),
                },
                budget,
            )
            .await;
        if matches!(outcome, Outcome::Acted { .. } | Outcome::Failed { .. }) {
            // From when the restart finished: a restart may take the whole stop grace.
            let now = tokio::time::Instant::now();
            shared
                .keys
                .with(key, |state| state.check_restarted_at = Some(now));
        }
        Some(outcome)
    }

    /// The first `restartWith` dependency whose running container started after this
    /// service's did (by the engine's clock): this one still talks to the one before it.
    pub(super) fn restarted_dependency(
        &self,
        service: &Service,
        observed: &Observation,
    ) -> Option<String> {
        let mine = observed.container.as_ref()?.started_at?;
        // Only once the dependency has settled: a dependent restarted against a dependency
        // that is still starting (or crash-looping) would only have to be restarted again.
        let settled_before = self.clock.wall
            - chrono::Duration::from_std(self.shared.config.settle).unwrap_or_default();
        service
            .restart_with
            .iter()
            .find(|dependency| {
                self.shared
                    .store
                    .get(&ServiceKey::new(&self.key.cluster, dependency.as_str()))
                    .is_some_and(|c| {
                        c.status == ContainerStatus::Running
                            && c.started_at
                                .is_some_and(|started| started > mine && started <= settled_before)
                    })
            })
            .cloned()
    }

    /// A stop this controller never saw: the container its last look saw running has been
    /// started again since, by someone else (the engine's restart policy, a person) before an
    /// event's look found it stopped, as happens on a loaded host or to a paused
    /// controller. A drift whoever repaired it: its ticket ends self-healed.
    pub(super) fn unseen_stop(&self, container: Option<&ObservedContainer>) -> Option<Drift> {
        let c = container?;
        let leased = lock(&self.shared.leases).session(self.key).is_some();
        let before = self.shared.keys.with(self.key, |state| {
            if c.status != ContainerStatus::Running || leased {
                // Seen not running: whatever start follows, this stop was seen. Leased: a
                // session at work on it may restart it, and that is its repair, not a drift.
                state.last_run = None;
                return None;
            }
            state.last_run.replace((c.id.clone(), c.started_at))
        })?;
        let (id, Some(seen_start)) = before else {
            return None;
        };
        let (Some(started), Some(finished)) = (c.started_at, c.finished_at) else {
            return None;
        };
        (id == c.id
            && started > seen_start
            && finished > seen_start)
            .then(|| {
                Drift::new(
                    DriftKind::Stopped,
                    format!(
                        "stopped at {} and started again at {} by someone else (the engine's restart policy, or a person) before the controller looked",
                        finished.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                        started.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                    ),
                )
            })
    }

    /// Whether a dependency's container is running now, as the observed store has it (found
    /// as the dependency's own reconcile finds it: ours by its labels, or the container its
    /// manifest adopts, by name or by compose's labels).
    pub(super) fn dependency_running(&self, cluster: &Cluster, dependency: &str) -> bool {
        cluster.service(dependency).is_some()
            && self
                .shared
                .store
                .get(&ServiceKey::new(&cluster.name, dependency))
                .is_some_and(|c| c.status == ContainerStatus::Running)
    }
}
