//! One key's reconcile: read the service from the observed store, diff, [`decide`], carry
//! the decision out, and save the key's repair budget once at the end.
//!
//! # Guarantees
//! - Level-triggered: the service is read from the observed store, never from the event that
//!   woke the reconcile, and only while the store is fresh for it (no look the watcher owes it
//!   is under way; it was listed with the manifests' current adoption set); while the event
//!   stream is down nothing is concluded. The engine is asked directly only as the
//!   precondition of an action: who holds the name of a container to create, whether the
//!   image is there, and (inside the actions) the state of a container to stop.
//! - A drift is recorded on its ticket, and an attempt on the ticket with the budget that
//!   counts it, before any remediator runs. Nothing is done that could not be recorded.
//! - Every remediator passes the same budget-and-backoff gate.
//! - Tickets resolve only on this fresh observation, in the name of whoever acted last.

use std::collections::HashSet;
use std::time::SystemTime;

use chrono::{DateTime, Utc};

use tracing::{debug, error, info, warn};

use crate::docker::actions::Actions;
use crate::docker::{ContainerStatus, DockerError, ObservedContainer, ServiceKey};
use crate::drift::{Drift, DriftKind, Fingerprint};
use crate::manifest::{Cluster, Policy, Remediation, Service};
use crate::remediation::{Action, Actor, Dispatch, RemediationError, RemediationRequest};
use crate::tickets::{
    DriftSighting, EntryKind, Journal, Selector, Sighting, Status, Ticket, TicketError,
};

use super::controller::{CheckRestart, Lease, Outcome, Shared, lock};
use super::decide::{Decision, Holds, decide};
use super::diff::{Observation, diff};
use super::planner::{self, BackOffUntil, Escalation, QuorumStep, Step};
use super::quorum;
use super::state::{Clock, RepairBudget, agent_gate};

/// How soon an action the quorum gate held back is looked at again.
const GATE_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// How often a member the controller took down is looked at until it is live again.
const LIVE_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// Observes one service: its container as the observed store has it (the store is fresh for
/// the key: see [`reconcile`]); when the store has none, who holds the name, asked of the
/// engine (the precondition of a create); whether its image is present when it must be
/// created; and the cluster network's options while it runs on it.
pub(super) async fn observe(
    store: &crate::docker::Store,
    actions: &Actions,
    cluster: &Cluster,
    service: &Service,
    recent_repairs: u32,
) -> Result<Observation, DockerError> {
    let key = ServiceKey::new(&cluster.name, &service.name);
    let (container, name_conflict) = match store.get(&key) {
        Some(c) => (Some(c), None),
        None => find_container(actions, cluster, service).await?,
    };
    let needs_create = name_conflict.is_none()
        && container
            .as_ref()
            .is_none_or(|c| super::diff::spec_differs(c, service));
    let image_present = if needs_create {
        Some(actions.image_present(&service.image).await?)
    } else {
        None
    };
    // Only while the container runs on the cluster's own network: that is when the network's
    // options matter, and a mass repair of stopped containers pays no extra engine call.
    let on_cluster_network =
        crate::docker::spec::service_network(cluster, service) == Some(&cluster.network.name);
    let network_difference = match &container {
        Some(c) if on_cluster_network && c.status == ContainerStatus::Running => {
            actions.network_difference(cluster).await?
        }
        _ => None,
    };
    Ok(Observation {
        container,
        image_present,
        name_conflict,
        recent_repairs,
        network_difference,
        // The caller knows when the service was last paused, and how long it must settle.
        health_trusted_after: None,
        settling: false,
    })
}

/// The service's container, fresh from the engine: ours by its labels, or the one its
/// manifest adopts (by name, or by compose's labels). Else who holds the service's name, if
/// someone does: `(None, Some(why))`.
pub(super) async fn find_container(
    actions: &Actions,
    cluster: &Cluster,
    service: &Service,
) -> Result<(Option<ObservedContainer>, Option<String>), DockerError> {
    let key = ServiceKey::new(&cluster.name, &service.name);
    let mut by_name = actions.inspect(&service.name).await?;
    // `adopt.compose`: compose's container is found by its labels, whatever its name.
    if let (None, Some(compose)) = (&by_name, &service.compose)
        && service.adopt.is_some()
    {
        by_name = actions.inspect_compose(compose).await?;
    }
    Ok(match by_name {
        None => (None, None),
        // A container of the service's name without our labels is adopted only when the
        // manifest says so: ownership is never taken silently.
        Some(raw) => match ObservedContainer::recognise(&raw, |_| {
            service.adopt.is_some().then(|| key.clone())
        }) {
            None => (
                None,
                Some(
                    "is not managed by operator (no operator.managed-by label; set `adopt: \
                     true` on the service to take it over)"
                        .to_string(),
                ),
            ),
            Some(c) if c.key != key => (
                None,
                Some(format!("belongs to {} (another cluster or service)", c.key)),
            ),
            Some(c) => (Some(c), None),
        },
    })
}

/// Whether a running container started less than `settle` ago (by the engine's clock, which
/// is this host's).
pub(super) fn settling(
    observed: &Observation,
    wall: DateTime<Utc>,
    settle: std::time::Duration,
) -> bool {
    observed.container.as_ref().is_some_and(|c| {
        c.status == ContainerStatus::Running
            && c.started_at.is_some_and(|started| {
                (wall - started)
                    .to_std()
                    .map_or(true, |running| running < settle)
            })
    })
}

/// The last look of `run --once`: observe and judge, acting on nothing and recording nothing.
/// `Clean` only for a container that runs, settled, and is healthy when it has a healthcheck.
pub(super) async fn last_look(shared: &Shared, key: &ServiceKey) -> Outcome {
    let desired = shared.desired();
    let Some(cluster) = desired.cluster(&key.cluster) else {
        return Outcome::Undeclared;
    };
    let Some(service) = cluster.service(&key.service) else {
        return Outcome::Undeclared;
    };
    let mut observed = match observe(&shared.store, &shared.actions, cluster, service, 0).await {
        Ok(o) => o,
        Err(e) => {
            return Outcome::Unknown {
                error: e.to_string(),
            };
        }
    };
    observed.settling = settling(&observed, Utc::now(), shared.config.settle);
    let drifts = diff(cluster, service, &observed);
    if let Some(first) = drifts.first() {
        return Outcome::NotRepaired {
            drift: first.kind,
            detail: first.detail.clone(),
        };
    }
    // No drift: whether it is believed repaired is `decide`'s rule (settled, and healthy
    // when it has a healthcheck), not a second copy of it.
    let verdict = decide(
        &[],
        &observed,
        &RepairBudget::default(),
        &service.remediation,
        &Holds::default(),
        |_| false,
    );
    if verdict == (Decision::Clean { verified: true }) {
        Outcome::Clean
    } else {
        Outcome::Settling
    }
}

/// Why an attempt is made, as recorded on its ticket.
enum Reason<'a> {
    Drifts(&'a [Drift]),
    /// A failing check with `policy: restart`.
    Check(&'a str),
    /// A `restartWith` dependency started after this service's container did.
    Dependency(&'a str),
}

impl Reason<'_> {
    /// The `drifts` field of an `action-started` entry (its text is part of the timeline's
    /// documented shape).
    fn labels(&self) -> Vec<String> {
        match self {
            Reason::Drifts(drifts) => drifts.iter().map(|d| d.kind.to_string()).collect(),
            Reason::Check(check) => vec![format!("{}:{check}", DriftKind::CheckFailed)],
            Reason::Dependency(dependency) => vec![format!("dependency-restarted:{dependency}")],
        }
    }

    fn drifts(&self) -> &[Drift] {
        match self {
            Reason::Drifts(d) => d,
            Reason::Check(_) | Reason::Dependency(_) => &[],
        }
    }
}

/// One gated try of a remediation.
struct Attempt<'a> {
    cluster: &'a Cluster,
    service: &'a Service,
    policy: Policy,
    action: Option<Action>,
    budgeted: bool,
    /// Whose budget window and backoff apply (the service's).
    remediation: &'a Remediation,
    ticket: Option<i64>,
    reason: Reason<'a>,
    detail: String,
    container: Option<&'a ObservedContainer>,
}

/// The key being reconciled, with what every step needs.
struct KeyRun<'a> {
    shared: &'a Shared,
    key: &'a ServiceKey,
    clock: Clock,
    /// The budget was already escalated when this reconcile began (log escalation once).
    escalated_before: bool,
    /// The budget as the store holds it now: as loaded, or as an attempt's record wrote it
    /// (so a `tickets retry` made while the action ran is not overwritten by an unchanged
    /// budget).
    stored: std::sync::Mutex<Option<crate::tickets::Budget>>,
    /// The quiet keys' generation when this reconcile began (see [`super::resync`]).
    looks_generation: u64,
    /// The store's revision of the key when this reconcile began.
    revision: u64,
    /// The service's unresolved tickets, read with the budget (taken by the look).
    tickets: std::sync::Mutex<Option<Vec<Ticket>>>,
}

/// Reconciles one key: observe, diff, decide, and (policy, budget and backoff permitting)
/// remediate.
pub(super) async fn reconcile(shared: &Shared, key: &ServiceKey) -> Outcome {
    // Whatever this look finds, the last clean one no longer speaks for the key.
    let looks_generation = lock(&shared.quiet).forget(key);
    let desired = shared.desired();
    let Some(cluster) = desired.cluster(&key.cluster) else {
        return Outcome::Undeclared;
    };
    let Some(service) = cluster.service(&key.service) else {
        return Outcome::Undeclared;
    };
    if !shared.store.is_connected() {
        // Unknown is not healthy: conclude nothing until the watcher has re-listed (its
        // Relisted event enqueues every key again).
        return Outcome::Unknown {
            error: "the Docker event stream is disconnected; waiting to re-list".into(),
        };
    }
    if let Some(why) = shared.store_behind(key) {
        // The watcher announces the key once its look lands (or its re-list is in); the
        // retry only bounds the wait should that never come.
        shared.queue.schedule(
            key.clone(),
            tokio::time::Instant::now() + shared.config.observe_retry,
        );
        return Outcome::Pending { why };
    }
    // Taken only now: a pending look leaves the event's time for the reconcile that finds
    // the drift.
    let event_at = lock(&shared.pending_events).remove(key);
    let revision = shared.store.revision(key);
    let mut run = KeyRun {
        shared,
        key,
        clock: Clock::now(),
        escalated_before: false,
        stored: std::sync::Mutex::new(None),
        looks_generation,
        revision,
        tickets: std::sync::Mutex::new(None),
    };
    let mut budget = match run.load_budget().await {
        Ok(budget) => budget,
        Err(e) => {
            run.retry_soon();
            return Outcome::Unknown {
                error: e.to_string(),
            };
        }
    };
    let before = budget.to_stored(run.clock);
    run.escalated_before = before.escalated;
    *lock(&run.stored) = Some(before);
    let outcome = run.reconcile(cluster, service, &mut budget, event_at).await;
    run.save_budget(&budget).await;
    if let Err(e) = shared.persist_gate().await {
        error!(service = %key, error = %e, "cannot save the quorum gate's state; will try again");
    }
    outcome
}

impl KeyRun<'_> {
    fn retry_soon(&self) {
        self.shared.queue.schedule(
            self.key.clone(),
            self.clock.now + self.shared.config.observe_retry,
        );
    }

    fn journal(&self) -> Option<&Journal> {
        self.shared.journal.as_ref()
    }

    /// Records, once per container, that the manifest's `adopt` took `c` over, and says so
    /// in the log.
    async fn record_adoption(
        &self,
        service: &Service,
        c: &ObservedContainer,
    ) -> Result<(), TicketError> {
        let (shared, key) = (self.shared, self.key);
        if lock(&shared.adopted).get(key) == Some(&c.id) {
            return Ok(());
        }
        if let Some(journal) = self.journal() {
            let first = journal
                .record_adoption(crate::tickets::Adoption {
                    cluster: key.cluster.clone(),
                    service: key.service.clone(),
                    container_id: c.id.clone(),
                    name: c.name.clone(),
                    adopted_at: self.clock.wall,
                })
                .await?;
            if first {
                info!(
                    cluster = %key.cluster,
                    service = %key.service,
                    container = %c.id.get(..12).unwrap_or(&c.id),
                    spec = service.adopt.map_or("observed", |a| a.as_str()),
                    "adopted container {} ({})",
                    c.name,
                    match &service.compose {
                        Some(compose) if c.name != service.name => format!(
                            "found by its compose labels: project {}, service {}",
                            compose.project, compose.service
                        ),
                        _ => "named by the manifest's adopt".to_string(),
                    }
                );
            }
        }
        lock(&shared.adopted).insert(key.clone(), c.id.clone());
        Ok(())
    }

    async fn reconcile(
        &self,
        cluster: &Cluster,
        service: &Service,
        budget: &mut RepairBudget,
        event_at: Option<SystemTime>,
    ) -> Outcome {
        let (shared, key, now) = (self.shared, self.key, self.clock.now);
        let r = &service.remediation;
        budget.track_spec(&service.spec_hash());
        let recent = budget.recent_repairs(now, r);
        let mut observed =
            match observe(&shared.store, &shared.actions, cluster, service, recent).await {
                Ok(o) => o,
                Err(e) => {
                    self.retry_soon();
                    return Outcome::Unknown {
                        error: e.to_string(),
                    };
                }
            };
        if let Some(c) = observed.container.as_ref().filter(|c| c.adopted) {
            if let Err(e) = self.record_adoption(service, c).await {
                // Nothing is done to a container whose adoption could not be recorded.
                self.retry_soon();
                return Outcome::Unknown {
                    error: e.to_string(),
                };
            }
            // The service has had its container: should it disappear, that is a drift to
            // ticket whoever created it, not the first creation of a new service.
            budget.created_before = true;
        }
        observed.health_trusted_after = {
            let mut paused_at = lock(&shared.paused_at);
            if observed
                .container
                .as_ref()
                .is_some_and(|c| c.status == ContainerStatus::Paused)
            {
                paused_at.insert(key.clone(), self.clock.wall);
            }
            paused_at.get(key).copied()
        };
        if observed
            .container
            .as_ref()
            .is_some_and(|c| c.health == Some(crate::docker::HealthState::Unhealthy))
            && !observed.unhealthy_is_current()
        {
            // A verdict from before the pause: look again once a fresh probe may have run
            // (its result may come without an event the watcher passes on).
            shared
                .queue
                .schedule(key.clone(), now + shared.config.dependency_poll);
        }
        observed.settling = settling(&observed, self.clock.wall, shared.config.settle);
        let drifts = diff(cluster, service, &observed);
        let unseen = self.unseen_stop(observed.container.as_ref());
        let recorded_unseen = unseen.is_some();
        if let Some(stop) = unseen {
            // Recorded before the service's tickets are read: this look's re-check may end it
            // (self-healed) once the container has settled.
            if let Err(e) = self
                .record_drifts(std::slice::from_ref(&stop), r.window)
                .await
            {
                self.retry_soon();
                return Outcome::Unrecorded {
                    error: e.to_string(),
                };
            }
            info!(service = %key, detail = %stop.detail, "a stop between two looks");
        }
        // The service's tickets: who holds them, and which this look shows over (read with
        // the budget, unless a stop between looks was just recorded on one).
        let tickets = match self.tickets(recorded_unseen).await {
            Ok(t) => t,
            Err(e) => {
                // Never act on (or resolve) what cannot be read.
                self.retry_soon();
                return Outcome::Unknown {
                    error: e.to_string(),
                };
            }
        };
        let holds = Holds {
            held: tickets.iter().any(|t| t.held),
            leased: lock(&shared.leases).session(key),
        };
        if !drifts.is_empty() {
            // A long enough healthy spell before this drift resets the backoff first: the
            // decision (is this a first try?) must see the reset.
            budget.saw_drift(now, r);
        }
        let decision = decide(&drifts, &observed, budget, r, &holds, |p| {
            shared.remediator(p).is_some()
        });

        match decision {
            Decision::Leased { session } => return Outcome::Leased { session },
            Decision::Settling => {
                // Not yet believed: no resolution, no stability; look again when it would
                // have settled (a crash before then is the same episode, not a flap).
                budget.saw_clean(now, false, r);
                let left = observed
                    .container
                    .as_ref()
                    .and_then(|c| c.started_at)
                    .and_then(|started| (self.clock.wall - started).to_std().ok())
                    .map_or(shared.config.settle, |since| {
                        shared.config.settle.saturating_sub(since)
                    });
                shared.queue.schedule(
                    key.clone(),
                    now + left + std::time::Duration::from_millis(50),
                );
                return Outcome::Settling;
            }
            Decision::Clean { verified } => {
                // Quiet: nothing to follow up that only a full look would see (a ticket to
                // resolve, a check's restart, a member the gate waits for, a backoff to
                // reset, restartWith); a resync may then trust the engine's list for it.
                let mut quiet = verified
                    && tickets.is_empty()
                    && service.restart_with.is_empty()
                    && !lock(&shared.check_restarts).contains_key(key);
                let why_not_live = tickets
                    .iter()
                    .find(|t| t.fingerprint.is_check())
                    .map(|t| t.id);
                self.follow_taken(cluster, service, verified, why_not_live, budget)
                    .await;
                let check_restart = lock(&shared.check_restarts).get(key).cloned();
                if let Some(repair) = check_restart
                    && let Some(outcome) = self
                        .restart_for_check(cluster, service, &observed, repair, budget)
                        .await
                {
                    return outcome;
                }
                if let Some(reset_at) = budget.saw_clean(now, verified, r) {
                    // Look again when the backoff is due to reset.
                    shared.queue.schedule(key.clone(), reset_at);
                    quiet = false;
                }
                if verified {
                    if self
                        .resolve_over(tickets, &HashSet::new(), false, observed.container.as_ref())
                        .await
                    {
                        budget.end_escalation();
                    }
                } else if !tickets.is_empty() {
                    // With a healthcheck the desired state is `healthy`: a container still
                    // `starting`, or whose `unhealthy` predates its unpause, ends no episode
                    // yet. Look again once a probe may have run (its verdict may come
                    // without an event the watcher passes on).
                    shared
                        .queue
                        .schedule(key.clone(), now + shared.config.dependency_poll);
                }
                if verified {
                    // Settled: whatever restarts with it may follow now.
                    for dependent in cluster
                        .services
                        .iter()
                        .filter(|s| s.restart_with.contains(&service.name))
                    {
                        shared.queue.schedule_why(
                            ServiceKey::new(&key.cluster, &dependent.name),
                            now,
                            super::queue::Why::Dependency,
                        );
                    }
                    // After its tickets are resolved: the restart is a deliberate step, not
                    // a reason to keep an incident open.
                    if !holds.held
                        && service.remediation.policy != Policy::Observe
                        && let Some(dependency) = self.restarted_dependency(service, &observed)
                    {
                        let detail = format!(
                            "{dependency} was restarted or recreated after this container started (restartWith)"
                        );
                        return self
                            .attempt(
                                Attempt {
                                    cluster,
                                    service,
                                    policy: Policy::Restart,
                                    action: Some(Action::Restart),
                                    budgeted: false,
                                    remediation: r,
                                    ticket: None,
                                    reason: Reason::Dependency(&dependency),
                                    detail,
                                    container: observed.container.as_ref(),
                                },
                                budget,
                            )
                            .await;
                    }
                }
                if quiet
                    && !budget.escalated
                    && shared.disruptions.get(key).is_none()
                    && observed.container.is_some()
                {
                    lock(&shared.quiet).record(key.clone(), self.revision, self.looks_generation);
                }
                return Outcome::Clean;
            }
            _ => {}
        }

        if let Some(at) = event_at {
            let latency = SystemTime::now().duration_since(at).unwrap_or_default();
            shared.metrics.event_to_drift(latency);
            debug!(service = %key, event_to_drift_us = latency.as_micros() as u64, "drift detected after event");
        }
        let (ticket, new_episode) = if decision.records_ticket() {
            match self.record_drifts(&drifts, r.window).await {
                Ok(t) => t,
                Err(e) => {
                    // Never act on what cannot be recorded.
                    self.retry_soon();
                    return Outcome::Unrecorded {
                        error: e.to_string(),
                    };
                }
            }
        } else {
            (None, true)
        };
        // Episodes of other kinds that this observation shows over (the container exists
        // again, is no longer paused...) are resolved.
        let still: HashSet<Fingerprint> = drifts
            .iter()
            .map(|d| Fingerprint::service(&key.cluster, &key.service, d.kind))
            .collect();
        if self
            .resolve_over(tickets, &still, true, observed.container.as_ref())
            .await
        {
            budget.end_escalation();
        }

        let ticket_id = ticket.as_ref().map(|t| t.id);
        if !budget.escalated {
            // Taken down by the controller and drifting still: past its deadline a rollout
            // stops here.
            if self
                .follow_taken(cluster, service, false, ticket_id, budget)
                .await
            {
                return Outcome::Escalated;
            }
        }
        let kinds: Vec<&str> = drifts.iter().map(|d| d.kind.as_str()).collect();
        let detail = drifts[0].detail.clone();
        match decision {
            Decision::Leased { .. } | Decision::Clean { .. } | Decision::Settling => {
                unreachable!("handled above")
            }
            Decision::Held { .. } => {
                if new_episode {
                    info!(service = %key, ticket = ticket_id, drifts = %kinds.join(","), %detail, "drift on a held ticket; hands off");
                }
                Outcome::Held
            }
            Decision::Observe { .. } => {
                if new_episode {
                    info!(service = %key, ticket = ticket_id, drifts = %kinds.join(","), %detail, policy = r.policy.as_str(), "drift observed; policy forbids repair");
                    if r.policy == Policy::Agent
                        && let (Some(journal), Some(id)) = (self.journal(), ticket_id)
                    {
                        let why = if self.shared.registered(Policy::Agent) {
                            "the agent is not dispatching (the API refused to serve; see the log): left open for a person"
                        } else {
                            "the agent is disabled (ANTHROPIC_API_KEY is not set): left open for a person"
                        };
                        if let Err(e) = journal
                            .note(id, EntryKind::Note, serde_json::json!({"note": why}))
                            .await
                        {
                            error!(service = %key, error = %e, "cannot note on the ticket");
                        }
                    }
                }
                Outcome::Observed
            }
            Decision::Blocked { name_conflict } => {
                if new_episode {
                    if name_conflict {
                        warn!(service = %key, ticket = ticket_id, %detail, "cannot create: the container name is held by a container this service does not own; leaving it alone");
                    } else {
                        info!(service = %key, ticket = ticket_id, drifts = %kinds.join(","), %detail, "drift has no built-in repair");
                    }
                }
                Outcome::Blocked
            }
            Decision::Remediate {
                policy,
                action,
                deliberate,
            } => {
                self.attempt(
                    Attempt {
                        cluster,
                        service,
                        policy,
                        action,
                        budgeted: !deliberate,
                        remediation: r,
                        ticket: ticket_id,
                        reason: Reason::Drifts(&drifts),
                        detail,
                        container: observed.container.as_ref(),
                    },
                    budget,
                )
                .await
            }
        }
    }

    /// Who runs and who is live now, for the quorum gate, per service of the cluster: live
    /// when its container runs (not paused), has settled, is not unhealthy, and (for members
    /// of a group) none of the group's live checks has an unresolved ticket on it. A ticket
    /// store that cannot be read is an error: the gate judges nothing it cannot see.
    async fn liveness(
        &self,
        cluster: &Cluster,
    ) -> Result<std::collections::HashMap<String, (bool, bool)>, TicketError> {
        let failing = match self.journal() {
            Some(journal) => quorum::LiveCheckFailures::read(journal, cluster).await?,
            None => quorum::LiveCheckFailures::default(),
        };
        let settled_before = self.clock.wall
            - chrono::Duration::from_std(self.shared.config.settle).unwrap_or_default();
        Ok(cluster
            .services
            .iter()
            .map(|s| {
                let container = self
                    .shared
                    .store
                    .get(&ServiceKey::new(cluster.name.clone(), s.name.clone()));
                let state = quorum::member_state(
                    container.as_ref(),
                    settled_before,
                    failing.fail(cluster, &s.name),
                );
                (s.name.clone(), state)
            })
            .collect())
    }

    /// How long the service has to be live again after the controller took it down: the
    /// shortest `live.timeout` of its groups (`None`: in no group, nothing to wait for).
    fn live_timeout(cluster: &Cluster, service: &str) -> Option<std::time::Duration> {
        cluster.groups_of(service).map(|g| g.live_timeout).min()
    }

    /// A member the controller took down: once it is live again (running, settled, healthy,
    /// and each of its groups' live checks evaluated passing on it since), it is no longer
    /// under way and the rest of its groups may go. Past its deadline a rollout stops there
    /// (escalated, and the member stays under way so no other member follows it); any other
    /// action is simply no longer waited for.
    async fn follow_taken(
        &self,
        cluster: &Cluster,
        service: &Service,
        verified: bool,
        ticket: Option<i64>,
        budget: &mut RepairBudget,
    ) -> bool {
        let (shared, key, now) = (self.shared, self.key, self.clock.now);
        let Some(taken) = shared.disruptions.get(key) else {
            return false;
        };
        let groups: Vec<&crate::manifest::Group> = cluster.groups_of(&service.name).collect();
        if verified {
            let clean_at = shared.disruptions.seen_clean(key, now).unwrap_or(now);
            let fresh = groups.iter().flat_map(|g| &g.live_checks).all(|c| {
                shared
                    .check_views
                    .passed_since(&cluster.name, c, &service.name, clean_at)
            });
            if fresh
                && self
                    .liveness(cluster)
                    .await
                    .is_ok_and(|live| live.get(&service.name).is_some_and(|&(_, live)| live))
            {
                shared.disruptions.release(key);
                info!(service = %key, rollout = taken.rollout, "live again after the controller took it down; the rest of its group may go");
                for member in groups.iter().flat_map(|g| &g.members) {
                    if member != &service.name {
                        shared.queue.schedule_why(
                            ServiceKey::new(&key.cluster, member),
                            now,
                            super::queue::Why::Dependency,
                        );
                    }
                }
                return false;
            }
        }
        let Some(deadline) = taken.deadline else {
            return false;
        };
        if now < deadline {
            // Running: look again soon for the fresh verdict. Down: its own events bring it
            // back here; the deadline is looked at in any case.
            let next = if verified {
                (now + LIVE_POLL).min(deadline)
            } else {
                deadline
            };
            shared.queue.schedule(key.clone(), next);
            return false;
        }
        if !taken.rollout {
            shared.disruptions.release(key);
            warn!(service = %key, "not live again within its group's live.timeout after the controller restarted it; no longer waiting for it");
            return false;
        }
        if taken.gave_up {
            // Escalated once already; stays under way until it is live again.
            shared.queue.schedule(key.clone(), now + LIVE_POLL * 4);
            return false;
        }
        shared.disruptions.give_up(key);
        let waited = Self::live_timeout(cluster, &service.name).unwrap_or_default();
        let reason = format!(
            "the rollout stopped at {}: not live within {}s of being recreated with the new spec; the rest of {} keep their old spec until it is live or the manifest changes",
            service.name,
            waited.as_secs(),
            groups
                .iter()
                .map(|g| g.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        );
        error!(service = %key, ticket, %reason, "rollout stopped");
        shared.queue.schedule(key.clone(), now + LIVE_POLL * 4);
        // Escalated on the ticket that shows why it is not live (its drift, or a failing live
        // check): a budget marked escalated with no ticket to end it would never end.
        let (Some(journal), Some(id)) = (self.journal(), ticket) else {
            return false;
        };
        let why = serde_json::json!({"reason": "rollout stopped", "rollout": reason});
        if let Err(e) = journal.escalate(id, why, self.clock.wall).await {
            error!(service = %key, error = %e, "cannot mark the ticket escalated");
            return false;
        }
        budget.escalated = true;
        true
    }

    /// Whether a person overrode the gate for the ticket's next action (`tickets retry ID
    /// --force`, not yet used by an action): who, as recorded.
    async fn forced(&self, ticket: Option<i64>) -> Option<serde_json::Value> {
        let (journal, id) = (self.journal()?, ticket?);
        let timeline = journal.timeline(id).await.ok()?;
        let last = timeline
            .iter()
            .rev()
            .find(|e| e.kind == EntryKind::ActionStarted || e.kind == EntryKind::Retried)?;
        (last.kind == EntryKind::Retried && last.detail["force"] == true)
            .then(|| last.detail.clone())
    }

    /// Holds the attempt back for the quorum: said on its ticket once per reason, counted,
    /// and looked at again shortly (the group's recovery may not touch this key).
    async fn gated(&self, a: &Attempt<'_>, refusal: quorum::Refusal) -> Outcome {
        let (shared, key) = (self.shared, self.key);
        let reason = refusal.to_string();
        let new = lock(&shared.gated).insert(key.clone(), reason.clone()) != Some(reason.clone());
        if new {
            // Once per hold (and per changed reason), not per look every 2 s.
            shared
                .metrics
                .actions_gated
                .get_or_create(&vec![
                    ("cluster", key.cluster.clone()),
                    ("group", refusal.group().to_string()),
                    ("reason", refusal.rule().to_string()),
                ])
                .inc();
            warn!(service = %key, ticket = a.ticket, action = a.action.as_ref().map(|x| x.as_str()), %reason, "held back by the quorum gate");
            if let (Some(journal), Some(id)) = (self.journal(), a.ticket)
                && let Err(e) = journal
                    .note(
                        id,
                        EntryKind::Note,
                        serde_json::json!({"note": format!("{} held back: {reason}", a.action.as_ref().map_or("the action", |x| x.as_str()))}),
                    )
                    .await
            {
                error!(service = %key, error = %e, "cannot note on the ticket");
            }
        }
        shared
            .queue
            .schedule(key.clone(), self.clock.now + GATE_RETRY);
        Outcome::Gated { reason }
    }

    /// Escalates the attempt's ticket to a person (the budget is already marked escalated).
    async fn escalate(&self, a: &Attempt<'_>, mut why: serde_json::Value, what: &str) -> Outcome {
        let key = self.key;
        if self.shared.disruptions.get(key).is_some_and(|t| t.rollout) {
            // It stays under way: no other member of its group follows it onto the new spec.
            self.shared.disruptions.give_up(key);
            why["rollout"] = serde_json::json!(format!(
                "stopped at {}: the rest of its group keep their old spec until it is live or the manifest changes",
                a.service.name
            ));
        }
        let labels = a.reason.labels();
        let newly = match (self.journal(), a.ticket) {
            (Some(journal), Some(id)) => match journal.escalate(id, why, self.clock.wall).await {
                Ok(changed) => changed,
                Err(e) => {
                    error!(service = %key, error = %e, "cannot mark the ticket escalated");
                    false
                }
            },
            _ => !self.escalated_before,
        };
        let told = !lock(&self.shared.escalations_told).insert(key.clone());
        if newly {
            // Every escalated ticket has its ERROR line, whoever escalated the service first.
            error!(
                service = %key, ticket = a.ticket, drifts = %labels.join(","), detail = %a.detail,
                max_restarts = a.remediation.max_restarts, window_s = a.remediation.window.as_secs(),
                "{what}: escalated, no more repairs for this service"
            );
        } else if !told {
            // Escalated before this process looked (by an earlier run): a service left down
            // must not be silent after a restart of the controller.
            warn!(
                service = %key, ticket = a.ticket, drifts = %labels.join(","), detail = %a.detail,
                "escalated earlier and still drifting: no repairs until `operator tickets retry {}`",
                a.ticket.map_or_else(|| "ID".to_string(), |id| id.to_string())
            );
        }
        Outcome::Escalated
    }

    /// Carries out a step of the planner that ends the attempt without acting: a wait, a
    /// backoff, an escalation, or only observing.
    async fn carry_out(&self, a: &Attempt<'_>, step: Step, budget: &mut RepairBudget) -> Outcome {
        let (shared, key, clock) = (self.shared, self.key, self.clock);
        match step {
            Step::Act { .. } => unreachable!("the caller acts"),
            Step::Observe => Outcome::Observed,
            Step::WaitFor { dependency } => {
                // Said once per wait (not per look): `status` and `plan` show it too, as
                // "waiting for <dependency>".
                let told = lock(&shared.waiting_on).insert(key.clone(), dependency.clone());
                if told.as_ref() != Some(&dependency) {
                    info!(service = %key, ticket = a.ticket, %dependency, "waiting for dependency {dependency} to run before starting this service");
                }
                shared
                    .queue
                    .schedule(key.clone(), clock.now + shared.config.dependency_poll);
                Outcome::Waiting { dependency }
            }
            Step::BackOff { until } => {
                let wait = match until {
                    BackOffUntil::Instant(at) => at.saturating_duration_since(clock.now),
                    BackOffUntil::Wall(at) => (at - clock.wall).to_std().unwrap_or_default(),
                };
                shared.queue.schedule(key.clone(), clock.now + wait);
                Outcome::BackingOff {
                    retry_in_ms: wait.as_millis() as u64,
                }
            }
            Step::Escalate { why } => {
                budget.escalated = true;
                let drift = a.reason.labels().into_iter().next();
                let reason = why.as_str();
                let detail = match &why {
                    Escalation::RestartBudgetSpent => serde_json::json!({
                        "reason": reason,
                        "max_restarts": a.remediation.max_restarts,
                        "window_s": a.remediation.window.as_secs(),
                        "drift": drift,
                    }),
                    Escalation::AgentSessionsSpent {
                        sessions,
                        last_error,
                    } => serde_json::json!({
                        "reason": reason,
                        "sessions": sessions,
                        "last_session": last_error.clone().unwrap_or_else(|| "ended, and the re-check still found the drift".into()),
                        "drift": drift,
                    }),
                    Escalation::AgentTokenBudgetSpent { detail } => serde_json::json!({
                        "reason": reason,
                        "detail": detail,
                        "drift": drift,
                    }),
                    Escalation::GroupReplacementsSpent { group, detail } => serde_json::json!({
                        "reason": reason,
                        "group": group,
                        "detail": detail,
                        "drift": drift,
                    }),
                };
                self.escalate(a, detail, reason).await
            }
        }
    }

    /// Applies the budget and backoff to an attempt, records it durably in the remediator's
    /// name, hands it to the remediator and records what came of it.
    async fn attempt(&self, mut a: Attempt<'_>, budget: &mut RepairBudget) -> Outcome {
        let (shared, key, clock) = (self.shared, self.key, self.clock);
        let now = clock.now;
        let labels = a.reason.labels();
        let dependency_down = a
            .service
            .depends_on
            .iter()
            .find(|d| !self.dependency_running(a.cluster, d))
            .cloned();
        let planned = planner::first(
            &planner::Attempt {
                policy: a.policy,
                action: a.action.as_ref(),
                budgeted: a.budgeted,
                ticketed: a.ticket.is_some(),
            },
            &planner::Context {
                observe_only: shared.config.observe_only,
                remediation: a.remediation,
                budget,
                now,
                serves: &|p| shared.remediator(p).is_some(),
                dependency_down: dependency_down.as_deref(),
            },
        );
        if !matches!(planned, Step::WaitFor { .. }) {
            lock(&shared.waiting_on).remove(key);
        }
        match planned {
            Step::Act { policy, budgeted } => {
                a.policy = policy;
                a.budgeted = budgeted;
            }
            step => return self.carry_out(&a, step, budget).await,
        }
        let Some(remediator) = shared.remediator(a.policy) else {
            return Outcome::Observed;
        };
        if a.policy == Policy::Agent {
            let sessions = match (self.journal(), a.ticket) {
                (Some(journal), Some(id)) => {
                    let gate = async {
                        let ticket = journal.get(id).await?;
                        let timeline = journal.timeline(id).await?;
                        Ok::<_, TicketError>(ticket.map(|t| {
                            agent_gate(&timeline, t.episode_at, &a.cluster.agent, clock.wall)
                        }))
                    };
                    match gate.await {
                        Ok(gate) => gate,
                        Err(e) => {
                            self.retry_soon();
                            return Outcome::Unknown {
                                error: format!("cannot read the ticket's sessions: {e}"),
                            };
                        }
                    }
                }
                _ => None,
            };
            let tokens_spent = remediator.exhausted().await;
            match planner::agent(sessions, tokens_spent) {
                Step::Act { .. } => {}
                step => return self.carry_out(&a, step, budget).await,
            }
        }

        // The quorum gate: a built-in action that takes a running container down waits
        // while its group could not spare it (or the cluster has enough under way already).
        let mut taken = false;
        if a.policy == Policy::Restart
            && matches!(a.action, Some(Action::Restart) | Some(Action::Recreate))
        {
            let what = quorum::Disruption {
                rollout: a
                    .reason
                    .drifts()
                    .iter()
                    .any(|d| d.kind == DriftKind::SpecChanged),
                repair: a.budgeted,
            };
            let states = match self.liveness(a.cluster).await {
                Ok(states) => states,
                Err(e) => {
                    self.retry_soon();
                    return Outcome::Unknown {
                        error: format!("the quorum gate cannot read the live checks: {e}"),
                    };
                }
            };
            let running = |m: &str| states.get(m).is_some_and(|&(running, _)| running);
            let live = |m: &str| states.get(m).is_some_and(|&(_, live)| live);
            let disruptions = &shared.disruptions;
            // A statement of its own: the view (not `Sync`) must not live across an await.
            let first = disruptions.take(a.cluster, key, what, (&running, &live), now, false);
            let refused = first.as_ref().err().map(ToString::to_string);
            let verdict = first.map(|t| {
                taken = t;
            });
            let forced = match &verdict {
                Ok(()) => None,
                Err(_) => self.forced(a.ticket).await,
            };
            match planner::quorum(verdict, forced.is_some()) {
                QuorumStep::Go { forced: false } => {}
                QuorumStep::Go { forced: true } => {
                    let refusal = refused.unwrap_or_default();
                    warn!(service = %key, ticket = a.ticket, %refusal, "the gate is overridden by a person (tickets retry --force)");
                    if let (Some(journal), Some(id)) = (self.journal(), a.ticket)
                        && let Err(e) = journal
                            .note(
                                id,
                                EntryKind::Note,
                                serde_json::json!({
                                    "note": format!("gate overridden (tickets retry --force): {refusal}"),
                                    "override": forced,
                                }),
                            )
                            .await
                    {
                        error!(service = %key, error = %e, "cannot note on the ticket");
                    }
                    taken = disruptions
                        .take(a.cluster, key, what, (&running, &live), now, true)
                        .unwrap_or(false);
                }
                QuorumStep::Gated(refusal) => return self.gated(&a, refusal).await,
                QuorumStep::Escalate(why) => {
                    return self.carry_out(&a, Step::Escalate { why }, budget).await;
                }
            }
            // Durable before acting, like the attempt: a controller killed during the action
            // comes back with the member under way and the window counting it.
            if taken && let Err(e) = shared.persist_gate().await {
                shared.disruptions.release(key);
                self.retry_soon();
                return Outcome::Unrecorded {
                    error: format!("the quorum gate's state could not be recorded: {e}"),
                };
            }
        }
        lock(&shared.gated).remove(key);

        // The controller's own start is no stop between looks (see `unseen_stop`).
        lock(&shared.last_runs).remove(key);
        // Kept to undo the attempt if it cannot be recorded: an attempt that never ran must
        // not be saved as spent.
        let unspent = budget.clone();
        let next_at = budget.record_attempt(now, a.budgeted, a.remediation);
        let retry_after_ms = next_at.saturating_duration_since(now).as_millis() as u64;
        let actor = remediator.actor();
        // What the timeline and `operator_actions_total{kind}` call it: the built-in step, or a
        // session (an agent does what it finds right, not the step the diff proposed).
        let kind = match (actor, a.action.as_ref()) {
            (Actor::Controller, Some(action)) => action.as_str(),
            (Actor::Agent, _) => "agent-session",
            (other, _) => other.as_str(),
        };
        // Durable before acting: a crash from here on never hands out this attempt again.
        if let (Some(journal), Some(id)) = (self.journal(), a.ticket) {
            let what = serde_json::json!({
                "action": kind,
                "attempt": budget.attempts,
                "budgeted": a.budgeted,
                "drifts": labels,
            });
            let counted = budget.to_stored(clock);
            match journal
                .start_action(
                    id,
                    actor,
                    what,
                    Some((key.cluster.clone(), key.service.clone(), counted.clone())),
                    clock.wall,
                )
                .await
            {
                Ok(true) => *lock(&self.stored) = Some(counted),
                // Held or resolved since this reconcile began: hands off.
                Ok(false) => {
                    *budget = unspent;
                    shared.disruptions.release(key);
                    return Outcome::Held;
                }
                Err(e) => {
                    *budget = unspent;
                    shared.disruptions.release(key);
                    self.retry_soon();
                    return Outcome::Unrecorded {
                        error: format!("the attempt could not be recorded: {e}"),
                    };
                }
            }
        }
        // A first creation or rollout is a deliberate change, not a repair.
        let doing = if a.ticket.is_none() && !a.budgeted {
            "applying a deliberate change"
        } else {
            "repairing"
        };
        info!(service = %key, ticket = a.ticket, drifts = %labels.join(","), detail = %a.detail, action = kind, %actor, attempt = budget.attempts, budgeted = a.budgeted, retry_after_ms, "{doing}");
        let dispatch = remediator
            .remediate(RemediationRequest {
                ticket: a.ticket,
                key,
                cluster: a.cluster,
                service: a.service,
                drifts: a.reason.drifts(),
                action: a.action.as_ref(),
                container: a.container,
                attempt: budget.attempts,
                completions: &shared.completions,
            })
            .await;
        let result = match dispatch {
            Dispatch::Started { session } => {
                shared.disruptions.release(key);
                // Leased until the session reports back; this worker and key are free now.
                let early = lock(&shared.leases).grant(
                    key.clone(),
                    Lease {
                        session: session.clone(),
                        ticket: a.ticket,
                        actor,
                        kind: kind.to_string(),
                        since: tokio::time::Instant::now(),
                    },
                );
                if let (Some(journal), Some(id)) = (self.journal(), a.ticket)
                    && let Err(e) = journal
                        .note(
                            id,
                            EntryKind::AgentDispatched,
                            serde_json::json!({"session": session, "actor": actor}),
                        )
                        .await
                {
                    error!(service = %key, error = %e, "cannot record the dispatch");
                }
                if let Some(done) = early {
                    // It finished before its lease was recorded: deliver it again now.
                    let _ = shared.completions.send(done);
                }
                info!(service = %key, ticket = a.ticket, %session, %actor, "remediation dispatched; the service is leased until it reports back");
                return Outcome::Dispatched { session };
            }
            Dispatch::Done(result) => result,
        };
        if taken {
            match &result {
                // Under way until it is live again (or its group's live.timeout).
                Ok(()) => {
                    let timeout = Self::live_timeout(a.cluster, &a.service.name);
                    if let Some(deadline) = shared.disruptions.acted(key, timeout) {
                        shared.queue.schedule(key.clone(), deadline);
                    }
                }
                Err(_) => {
                    shared.disruptions.release(key);
                }
            }
        }
        let (outcome, ok, entry) = match result {
            Ok(()) => {
                shared.metrics.action(kind, "ok");
                budget.created_before = true;
                if actor == Actor::Controller
                    && let Some(expectation) = a.action.as_ref().and_then(|action| {
                        super::expect::Expectation::of(
                            action,
                            a.container,
                            tokio::time::Instant::now(),
                        )
                    })
                {
                    lock(&shared.expectations).insert(key.clone(), expectation);
                }
                if !a.budgeted {
                    // A deliberate change that was applied leaves no backoff behind: the next
                    // edit (a network option flipped back, say) is deliberate again.
                    budget.attempts = 0;
                    budget.next_attempt_at = None;
                }
                if a.action == Some(Action::Unpause) {
                    // Its health verdicts so far were drawn while it was frozen.
                    lock(&shared.paused_at).insert(key.clone(), chrono::Utc::now());
                }
                let outcome = match &a.action {
                    Some(action) if actor == Actor::Controller => Outcome::Acted {
                        action: action.clone(),
                    },
                    _ => Outcome::Remediated { actor },
                };
                (
                    outcome,
                    true,
                    serde_json::json!({"action": kind, "result": "ok"}),
                )
            }
            Err(e) => {
                shared.metrics.action(kind, "error");
                if matches!(a.action, Some(Action::Create | Action::Recreate))
                    && !matches!(e, RemediationError::Docker(DockerError::NotOwned { .. }))
                {
                    // The container may exist now even though the action failed later on.
                    budget.created_before = true;
                }
                shared.queue.schedule(key.clone(), next_at);
                let entry =
                    serde_json::json!({"action": kind, "result": "error", "error": e.to_string()});
                let outcome = match &a.action {
                    Some(action) if actor == Actor::Controller => Outcome::Failed {
                        action: action.clone(),
                        error: e.to_string(),
                    },
                    _ => Outcome::RemediationFailed {
                        actor,
                        error: e.to_string(),
                    },
                };
                (outcome, false, entry)
            }
        };
        if let (Some(journal), Some(id)) = (self.journal(), a.ticket)
            && let Err(e) = journal.finish_action(id, actor, ok, entry).await
        {
            error!(service = %key, error = %e, "cannot record the action's result");
        }
        outcome
    }

    /// A running container whose check fails with `policy: restart`: restart it under the
    /// service's budget, recorded on the check's ticket. `None`: nothing to do for the check
    /// now, so the service's normal path runs.
    async fn restart_for_check(
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
            lock(&shared.check_restarts).remove(key);
            return None;
        }
        // The last restart for a check must have had time to show in a fresh verdict.
        if let Some(at) = lock(&shared.check_restarted_at).get(key).copied()
            && now < at + repair.settle
        {
            shared.queue.schedule(key.clone(), at + repair.settle);
            return None;
        }
        // Withdrawn by the check recorder meanwhile (the check passes, Prometheus is gone...)?
        lock(&shared.check_restarts).remove(key)?;
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
            lock(&shared.check_restarted_at).insert(key.clone(), tokio::time::Instant::now());
        }
        Some(outcome)
    }

    /// The key's repair budget: from the ticket store when there is one (the truth, which a
    /// person may have changed with `tickets retry`), else from memory.
    /// Also keeps the service's unresolved tickets, read in the same round trip, for this
    /// reconcile's look ([`KeyRun::tickets`]).
    async fn load_budget(&self) -> Result<RepairBudget, TicketError> {
        let Some(journal) = self.journal() else {
            return Ok(lock(&self.shared.budgets)
                .get(self.key)
                .cloned()
                .unwrap_or_default());
        };
        let (stored, tickets) = journal
            .service_state(&self.key.cluster, &self.key.service)
            .await?;
        *lock(&self.tickets) = Some(tickets);
        Ok(stored
            .map(|b| RepairBudget::from_stored(&b, self.clock))
            .unwrap_or_default())
    }

    /// The service's unresolved tickets: as read with the budget when this reconcile began,
    /// or read again when this reconcile recorded a sighting since (`fresh`).
    async fn tickets(&self, fresh: bool) -> Result<Vec<Ticket>, TicketError> {
        let Some(journal) = self.journal() else {
            return Ok(Vec::new());
        };
        if !fresh && let Some(tickets) = lock(&self.tickets).take() {
            return Ok(tickets);
        }
        journal
            .unresolved(Selector::Target {
                cluster: self.key.cluster.clone(),
                target: self.key.service.clone(),
            })
            .await
    }

    /// Keeps the budget in memory and, when it differs from what the store holds, in the
    /// store.
    async fn save_budget(&self, budget: &RepairBudget) {
        if self.shared.config.observe_only {
            // An observer repairs nothing, so it spends and escalates nothing either: the
            // budget is the acting controller's, whatever an observer's look concluded.
            return;
        }
        {
            let mut budgets = lock(&self.shared.budgets);
            budgets.insert(self.key.clone(), budget.clone());
            let escalated = budgets.values().filter(|s| s.escalated).count();
            self.shared.metrics.escalated.set(escalated as i64);
        }
        let Some(journal) = self.journal() else {
            return;
        };
        let stored = budget.to_stored(self.clock);
        if lock(&self.stored).as_ref() == Some(&stored) {
            return;
        }
        if let Err(e) = journal
            .save_budget(&self.key.cluster, &self.key.service, stored)
            .await
        {
            error!(service = %self.key, error = %e, "cannot save the repair budget");
        }
    }

    /// Records every drift on its ticket. Returns the ticket of the first (primary) drift and
    /// whether this sighting began a new episode (opened or reopened a ticket).
    async fn record_drifts(
        &self,
        drifts: &[Drift],
        cooldown: std::time::Duration,
    ) -> Result<(Option<Ticket>, bool), TicketError> {
        let Some(journal) = self.journal() else {
            return Ok((None, true));
        };
        let key = self.key;
        let mut primary = None;
        let mut new_episode = false;
        let mut seen = HashSet::new();
        for d in drifts {
            let fingerprint = Fingerprint::service(&key.cluster, &key.service, d.kind);
            if !seen.insert(fingerprint.clone()) {
                continue;
            }
            let (ticket, sighting) = journal
                .sighting(
                    DriftSighting {
                        fingerprint,
                        drift: d.kind,
                        detail: d.detail.clone(),
                        cooldown,
                        evidence: None,
                    },
                    self.clock.wall,
                )
                .await?;
            if sighting != Sighting::Seen {
                info!(service = %key, ticket = ticket.id, drift = %d.kind, detail = %d.detail, flaps = ticket.flaps,
                      "ticket {}", if sighting == Sighting::Opened { "opened" } else { "reopened" });
                new_episode = true;
            }
            primary.get_or_insert(ticket);
        }
        Ok((primary, new_episode))
    }

    /// A fresh observation shows the drift of these tickets gone: resolves every unresolved
    /// container ticket of the service whose fingerprint is not in `still`. True when an
    /// escalated one was among them (the service's escalation ends with it).
    async fn resolve_over(
        &self,
        tickets: Vec<Ticket>,
        still: &HashSet<Fingerprint>,
        service_drifts: bool,
        container: Option<&ObservedContainer>,
    ) -> bool {
        let Some(journal) = self.journal() else {
            return false;
        };
        // Check tickets are the check evaluations' to resolve: a running container says
        // nothing about whether its checks pass. A held ticket is a person's: while the
        // service still drifts in any way it stays open (and held), even if its own kind of
        // drift changed.
        let (kept, over): (Vec<Ticket>, Vec<Ticket>) = tickets.into_iter().partition(|t| {
            still.contains(&t.fingerprint) || t.fingerprint.is_check() || (service_drifts && t.held)
        });
        if over.is_empty() {
            return false;
        }
        let escalated = |ts: &[Ticket]| ts.iter().any(|t| t.status == Status::Escalated);
        let ends_escalation = escalated(&over) && !escalated(&kept);
        // "desired state" only when it is: running, and healthy by its healthcheck if it has
        // one, with no drift of another kind. Otherwise only the ended episodes are over.
        let desired = still.is_empty()
            && container.is_some_and(|c| {
                c.status == ContainerStatus::Running
                    && c.health
                        .is_none_or(|h| h == crate::docker::HealthState::Healthy)
            });
        let mut now_drifting: Vec<&str> = still
            .iter()
            .filter_map(|f| match &f.subject {
                crate::drift::Subject::Drift(family) => Some(family.as_str()),
                crate::drift::Subject::Check(_) => None,
            })
            .collect();
        now_drifting.sort_unstable();
        let result = if desired {
            "desired state".to_string()
        } else {
            format!(
                "episode over; the service now shows {}",
                now_drifting.join(", ")
            )
        };
        let seen = serde_json::json!({
            "result": result,
            "container": container.map(|c| &c.id),
            "status": container.map(|c| c.status.as_str()),
            "health": container.and_then(|c| c.health),
        });
        match journal.resolve_rechecked(over, seen, self.clock.wall).await {
            Ok(()) => ends_escalation,
            Err(e) => {
                warn!(service = %self.key, error = %e, "cannot resolve tickets; will re-check");
                self.retry_soon();
                false
            }
        }
    }

    /// The first `restartWith` dependency whose running container started after this
    /// service's did (by the engine's clock): this one still talks to the one before it.
    fn restarted_dependency(&self, service: &Service, observed: &Observation) -> Option<String> {
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
    fn unseen_stop(&self, container: Option<&ObservedContainer>) -> Option<Drift> {
        let c = container?;
        let leased = lock(&self.shared.leases).session(self.key).is_some();
        let mut runs = lock(&self.shared.last_runs);
        if c.status != ContainerStatus::Running || leased {
            // Seen not running: whatever start follows, this stop was seen. Leased: a
            // session at work on it may restart it, and that is its repair, not a drift.
            runs.remove(self.key);
            return None;
        }
        let before = runs.insert(self.key.clone(), (c.id.clone(), c.started_at))?;
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
    fn dependency_running(&self, cluster: &Cluster, dependency: &str) -> bool {
        cluster.service(dependency).is_some()
            && self
                .shared
                .store
                .get(&ServiceKey::new(&cluster.name, dependency))
                .is_some_and(|c| c.status == ContainerStatus::Running)
    }
}
