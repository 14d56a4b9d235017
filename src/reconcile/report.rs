//! Desired against observed for `plan` and `status`: the same observation and diff a
//! reconcile makes, changing nothing in Docker or in the ticket store.

use serde::Serialize;

use crate::docker::actions::{Actions, Limits};
use crate::docker::{ContainerStatus, ObservedContainer, ServiceKey};
use crate::drift::{Drift, DriftKind};
use crate::manifest::{Cluster, DesiredState, Policy};
use crate::remediation::Action;
use crate::tickets::{Journal, Selector};

use super::diff::{action_for, diff};
use super::quorum::{Disruption, LiveCheckFailures, Snapshot, judge};
use super::service::observe;
use super::state::{Clock, RepairBudget};

/// One service, desired against observed (for `plan` and `status`).
#[derive(Debug, Clone, Serialize)]
pub struct ServiceReport {
    pub cluster: String,
    pub service: String,
    pub image: String,
    pub policy: Policy,
    pub desired_hash: String,
    pub container: Option<ObservedContainer>,
    pub drifts: Vec<Drift>,
    /// The repair a reconcile would make now (ignoring backoff and budget).
    pub action: Option<Action>,
    /// Past its restart budget (from the ticket store, when given one).
    pub escalated: bool,
    /// The service's unresolved tickets (from the ticket store, when given one).
    pub tickets: Vec<i64>,
    /// A person holds one of them: the controller keeps its hands off.
    pub held: bool,
    /// The repair would wait for this dependency, which is not running.
    pub waiting_for: Option<String>,
    /// Set when the service could not be observed: its state is unknown.
    pub error: Option<String>,
    /// The quorum gate would hold the action back: why (`would leave pd with 1 of 3 live;
    /// needs 2`).
    pub gated: Option<String>,
}

/// Every service, observed fresh, in dependency order. `journal` adds what the ticket store
/// remembers (escalation, unresolved tickets); a service whose store or engine could not be
/// read says so in `error` rather than guessing.
pub async fn report(
    docker: bollard::Docker,
    desired: &DesiredState,
    journal: Option<&Journal>,
) -> Vec<ServiceReport> {
    // One list of the engine into a store of its own, read as the controller reads its own.
    let observed = crate::docker::store::Writer::new();
    let listed =
        crate::docker::watcher::list_owned(&docker, &crate::docker::store::adoptable(desired))
            .await;
    let list_error = match listed {
        Ok(containers) => {
            observed.replace_all(containers, 0);
            None
        }
        Err(e) => Some(e.to_string()),
    };
    let store = observed.reader();
    let actions = Actions::new(docker, Limits::default());
    let clock = Clock::now();
    let mut reports = Vec::new();
    for cluster in &desired.clusters {
        for service in cluster.topo_order() {
            let key = ServiceKey::new(&cluster.name, &service.name);
            let mut error = None;
            let mut budget = RepairBudget::default();
            let mut tickets = Vec::new();
            let mut held = false;
            if let Some(journal) = journal {
                match journal.load_budget(&key.cluster, &key.service).await {
                    Ok(stored) => {
                        if let Some(b) = stored {
                            budget = RepairBudget::from_stored(&b, clock);
                        }
                    }
                    Err(e) => error = Some(e.to_string()),
                }
                let selector = Selector::Target {
                    cluster: key.cluster.clone(),
                    target: key.service.clone(),
                };
                match journal.unresolved(selector).await {
                    Ok(ts) => {
                        held = ts.iter().any(|t| t.held);
                        tickets = ts.iter().map(|t| t.id).collect();
                    }
                    Err(e) => {
                        error.get_or_insert(e.to_string());
                    }
                }
            }
            let recent = budget.recent_repairs(clock.now, &service.remediation);
            let looked = match &list_error {
                Some(e) => Err(e.clone()),
                None => observe(&store, &actions, cluster, service, recent)
                    .await
                    .map_err(|e| e.to_string()),
            };
            let (drifts, action, container) = match looked {
                Ok(observed) => {
                    let drifts = diff(cluster, service, &observed);
                    let action = action_for(&drifts, &observed);
                    (drifts, action, observed.container)
                }
                Err(e) => {
                    error = Some(e);
                    (Vec::new(), None, None)
                }
            };
            // Dependencies come first in this order: their reports say whether they run.
            let waiting_for = action
                .as_ref()
                .filter(|a| a.starts_container())
                .and_then(|_| {
                    service.depends_on.iter().find(|dep| {
                        !reports.iter().any(|r: &ServiceReport| {
                            r.cluster == cluster.name
                                && &r.service == *dep
                                && r.container
                                    .as_ref()
                                    .is_some_and(|c| c.status == ContainerStatus::Running)
                        })
                    })
                })
                .cloned();
            reports.push(ServiceReport {
                cluster: cluster.name.clone(),
                service: service.name.clone(),
                image: service.image.clone(),
                policy: service.remediation.policy,
                desired_hash: service.spec_hash(),
                container,
                drifts,
                action,
                escalated: budget.escalated,
                tickets,
                held,
                waiting_for,
                error,
                gated: None,
            });
        }
        gate(cluster, journal, &mut reports).await;
    }
    reports
}

/// What the quorum gate would hold back now, from the fresh observations of the cluster's
/// services and its unresolved check tickets (as the controller judges it).
async fn gate(cluster: &Cluster, journal: Option<&Journal>, reports: &mut [ServiceReport]) {
    if cluster.groups.is_empty() && cluster.max_concurrent_disruptions.is_none() {
        return;
    }
    // A store that cannot be read shows every member by its container alone: `plan` says
    // what it can see rather than nothing.
    let failing = match journal {
        Some(journal) => LiveCheckFailures::read(journal, cluster)
            .await
            .unwrap_or_default(),
        None => LiveCheckFailures::default(),
    };
    let ours = |r: &ServiceReport| r.cluster == cluster.name;
    let running: std::collections::HashSet<String> = reports
        .iter()
        .filter(|r| ours(r))
        .filter(|r| {
            r.container
                .as_ref()
                .is_some_and(|c| c.status == ContainerStatus::Running)
        })
        .map(|r| r.service.clone())
        .collect();
    let runs = |m: &str| running.contains(m);
    let live = |m: &str| running.contains(m) && !failing.fail(cluster, m);
    // Taken in turn, as the controller would: the first that may go is under way when the
    // next is judged (a rollout goes one member at a time).
    let mut taken = std::collections::BTreeSet::new();
    for r in reports.iter_mut().filter(|r| r.cluster == cluster.name) {
        let rollout = r.drifts.iter().any(|d| d.kind == DriftKind::SpecChanged);
        // What the controller would carry out: a rollout under any policy that acts, a
        // repair under `restart`.
        if !matches!(r.action, Some(Action::Restart) | Some(Action::Recreate))
            || r.policy == Policy::Observe
            || (r.policy != Policy::Restart && !rollout)
        {
            continue;
        }
        let what = Disruption {
            rollout,
            repair: !rollout,
        };
        let now = Snapshot {
            taken: &taken,
            ..Snapshot::nothing_under_way(&runs, &live)
        };
        match judge(cluster, &r.service, what, &now) {
            Ok(()) if running.contains(&r.service) => {
                taken.insert(r.service.clone());
            }
            Ok(()) => {}
            Err(refusal) => r.gated = Some(refusal.to_string()),
        }
    }
}

/// Containers the controller owns (by label) that no manifest declares: a service or
/// cluster removed from the manifests. The controller leaves them alone; `status` and `plan`
/// show them so a person can remove them.
pub async fn undeclared(
    docker: &bollard::Docker,
    desired: &DesiredState,
) -> Result<Vec<ObservedContainer>, crate::docker::DockerError> {
    let mut owned = crate::docker::watcher::list_owned(docker, &Default::default()).await?;
    owned.retain(|c| {
        desired
            .cluster(&c.key.cluster)
            .is_none_or(|cluster| cluster.service(&c.key.service).is_none())
    });
    owned.sort_by(|a, b| (&a.key.cluster, &a.name).cmp(&(&b.key.cluster, &b.name)));
    Ok(owned)
}
