//! Desired against observed for `plan` and `status`: the same observation, diff,
//! [`decide`](super::decide) and [`planner`](super::planner) a reconcile runs, with what they
//! read (the store's budgets, tickets and the quorum gate's state), changing nothing in Docker
//! or in the ticket store. `outcome` is the label a reconcile of the service would report
//! now (`run --once --json`'s `result.outcome`): `tests/plan_matches_run.rs` holds them to it.

use serde::Serialize;

use crate::docker::actions::{Actions, Limits};
use crate::docker::{ContainerStatus, ObservedContainer, ServiceKey};
use crate::drift::{Drift, DriftKind};
use crate::manifest::{Cluster, DesiredState, Policy};
use crate::remediation::Action;
use crate::tickets::{Journal, Selector};

use super::decide::{Decision, Holds, decide};
use super::diff::{action_for, diff};
use super::disruption::Disruptions;
use super::planner::{self, QuorumStep, Step};
use super::quorum::{self, Disruption, LiveCheckFailures};
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
    /// What a reconcile of the service would report now: `clean`, `settling`, `acted`,
    /// `dispatched`, `waiting`, `backoff`, `escalated`, `observed`, `held`, `blocked`,
    /// `gated`, or `unknown` when it could not be observed.
    pub outcome: &'static str,
}

/// Every service, observed fresh, in dependency order. `journal` adds what the ticket store
/// remembers (escalation, unresolved tickets); a service whose store or engine could not be
/// read says so in `error` rather than guessing.
pub async fn report(
    docker: bollard::Docker,
    desired: &DesiredState,
    journal: Option<&Journal>,
    agent_serves: bool,
) -> Vec<ServiceReport> {
    let settle = super::config::ControllerConfig::default().settle;
    let serves = |p: Policy| p == Policy::Restart || (p == Policy::Agent && agent_serves);
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
            // Dependencies come first in this order: their reports say whether they run.
            let dependency_down = service
                .depends_on
                .iter()
                .find(|dep| {
                    !reports.iter().any(|r: &ServiceReport| {
                        r.cluster == cluster.name
                            && &r.service == *dep
                            && r.container
                                .as_ref()
                                .is_some_and(|c| c.status == ContainerStatus::Running)
                    })
                })
                .cloned();
            let mut waiting_for = None;
            let (drifts, action, container, outcome) = match looked {
                Ok(mut observed) => {
                    // As the controller judges it: a verdict from before the last pause it
                    // recorded is stale.
                    observed.health_trusted_after = budget.paused_at;
                    observed.settling = super::service::settling(&observed, clock.wall, settle);
                    let drifts = diff(cluster, service, &observed);
                    let action = action_for(&drifts, &observed);
                    let r = &service.remediation;
                    if !drifts.is_empty() {
                        budget.saw_drift(clock.now, r);
                    }
                    let holds = Holds { held, leased: None };
                    let decision = decide(&drifts, &observed, &budget, r, &holds, serves);
                    let outcome = match decision {
                        Decision::Leased { .. } => "leased",
                        Decision::Clean { .. } => "clean",
                        Decision::Settling => "settling",
                        Decision::Held { .. } => "held",
                        Decision::Observe { .. } => "observed",
                        Decision::Blocked { .. } => "blocked",
                        Decision::Remediate {
                            policy,
                            action: ref planned,
                            deliberate,
                        } => {
                            let step = planner::first(
                                &planner::Attempt {
                                    policy,
                                    action: planned.as_ref(),
                                    budgeted: !deliberate,
                                    ticketed: !deliberate && journal.is_some(),
                                },
                                &planner::Context {
                                    observe_only: false,
                                    remediation: r,
                                    budget: &budget,
                                    now: clock.now,
                                    serves: &serves,
                                    dependency_down: dependency_down.as_deref(),
                                },
                            );
                            match step {
                                Step::Act {
                                    policy: Policy::Agent,
                                    ..
                                } => "dispatched",
                                Step::Act { .. } => "acted",
                                Step::WaitFor { dependency } => {
                                    waiting_for = Some(dependency);
                                    "waiting"
                                }
                                other => other.label(),
                            }
                        }
                    };
                    (drifts, action, observed.container, outcome)
                }
                Err(e) => {
                    error = Some(e);
                    (Vec::new(), None, None, "unknown")
                }
            };
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
                outcome,
            });
        }
        gate(cluster, journal, clock, settle, &mut reports).await;
    }
    reports
}

/// What the quorum gate would hold back now, judged as the controller judges it: the same
/// rule of who is live ([`quorum::member_state`]), what its stored state has under way and
/// counts in each group's window, and the same registry taking each member in turn (on a
/// copy: nothing is stored).
async fn gate(
    cluster: &Cluster,
    journal: Option<&Journal>,
    clock: Clock,
    settle: std::time::Duration,
    reports: &mut [ServiceReport],
) {
    if cluster.groups.is_empty() && cluster.max_concurrent_disruptions.is_none() {
        return;
    }
    // A store that cannot be read shows every member by its container alone: `plan` says
    // what it can see rather than nothing.
    let (failing, stored) = match journal {
        Some(journal) => (
            LiveCheckFailures::read(journal, cluster)
                .await
                .unwrap_or_default(),
            journal.load_gates().await.unwrap_or_default(),
        ),
        None => (LiveCheckFailures::default(), Vec::new()),
    };
    let disruptions = Disruptions::default();
    disruptions.restore(
        stored
            .into_iter()
            .filter(|(c, _)| *c == cluster.name)
            .collect(),
        clock.now,
        clock.wall,
    );
    let settled_before = clock.wall - chrono::Duration::from_std(settle).unwrap_or_default();
    let states: std::collections::HashMap<String, (bool, bool)> = reports
        .iter()
        .filter(|r| r.cluster == cluster.name)
        .map(|r| {
            let failing = failing.fail(cluster, &r.service);
            (
                r.service.clone(),
                quorum::member_state(r.container.as_ref(), settled_before, failing),
            )
        })
        .collect();
    let runs = |m: &str| states.get(m).is_some_and(|&(running, _)| running);
    let live = |m: &str| states.get(m).is_some_and(|&(_, live)| live);
    for r in reports.iter_mut().filter(|r| r.cluster == cluster.name) {
        // What the controller would carry out and gate: a restart or recreate by the
        // built-in executor (a repair under `restart`, a rollout under any policy that acts).
        if r.outcome != "acted"
            || !matches!(r.action, Some(Action::Restart) | Some(Action::Recreate))
        {
            continue;
        }
        let rollout = r.drifts.iter().any(|d| d.kind == DriftKind::SpecChanged);
        let what = Disruption {
            rollout,
            repair: !rollout,
        };
        let key = ServiceKey::new(&cluster.name, &r.service);
        let verdict = disruptions
            .take(cluster, &key, what, (&runs, &live), clock.now, false)
            .map(|_| ());
        match planner::quorum(verdict.clone(), false) {
            QuorumStep::Go { .. } => {}
            QuorumStep::Gated(refusal) => {
                r.gated = Some(refusal.to_string());
                r.outcome = "gated";
            }
            QuorumStep::Escalate(_) => {
                r.gated = verdict.err().map(|e| e.to_string());
                r.outcome = "escalated";
            }
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
