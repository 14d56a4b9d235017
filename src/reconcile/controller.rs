//! The controller: watcher events and a periodic resync feed a work queue; workers take one
//! key at a time, observe, diff and repair.
//!
//! # Guarantees
//! - Level-triggered: a reconcile observes the service fresh from the engine, never trusting
//!   the event that woke it; the cache only says when to look and whether the view is live.
//! - A drift is recorded on its ticket, and an action on the ticket (with the budget that
//!   counts it), before the action runs. Tickets resolve only on a fresh, verified observation.
//! - A key is never reconciled concurrently with itself (see [`WorkQueue`]).
//! - Nothing is reconciled before the watcher's first full list is in.
//! - On shutdown, in-flight repairs finish (bounded by `shutdown_grace`); no new ones start.
//! - Only containers carrying the controller's labels are acted on.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use bollard::Docker;
use chrono::{DateTime, Utc};
use futures::FutureExt;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::docker::actions::{Actions, Limits};
use crate::docker::watcher::{WatchEvent, Watcher, list_owned};
use crate::docker::{
    Cache, ContainerStatus, DockerError, HealthState, ObservedContainer, ServiceKey,
};
use crate::manifest::{Cluster, DesiredState, Policy, Remediation, Service};
use crate::metrics::Metrics;
use crate::tickets::{
    Budget, Cause, DriftSighting, EntryKind, Sighting, Status, Store, Ticket, TicketError,
    fingerprint, is_check_fingerprint,
};

use super::diff::{Action, Drift, DriftKind, Observation, diff, is_budgeted, repair};
use super::queue::WorkQueue;
use super::state::{Gate, KeyState};

/// A repair chosen for a key, with everything needed to gate, record and perform it.
pub(super) struct Repair<'a> {
    pub key: &'a ServiceKey,
    pub cluster: &'a Cluster,
    pub service: &'a Service,
    pub action: Action,
    /// Whether it spends the restart budget.
    pub budgeted: bool,
    /// Whose budget window and backoff apply (the service's, or a check's).
    pub remediation: &'a Remediation,
    pub ticket_id: Option<i64>,
    pub kinds: Vec<String>,
    pub detail: String,
    pub container: Option<&'a ObservedContainer>,
    pub now: Instant,
    pub wall: DateTime<Utc>,
}

/// How often the ticket store is checked for changes made by other processes.
const STORE_POLL: Duration = Duration::from_secs(1);

/// Settings of the loop, defaults in one place.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Every key is re-diffed this often, whatever the events say.
    pub resync: Duration,
    /// Keys reconciled in parallel (never the same key twice).
    pub workers: usize,
    /// How often a service waiting for a dependency looks again.
    pub dependency_poll: Duration,
    /// How often a failed observation (engine unreachable) is retried.
    pub observe_retry: Duration,
    /// The most a shutdown waits for in-flight repairs.
    pub shutdown_grace: Duration,
    pub limits: Limits,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            resync: Duration::from_secs(30),
            workers: 4,
            dependency_poll: Duration::from_secs(1),
            observe_retry: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(60),
            limits: Limits::default(),
        }
    }
}

impl ControllerConfig {
    pub fn resync(mut self, resync: Duration) -> Self {
        self.resync = resync;
        self
    }

    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("could not list the owned containers: {0}")]
    List(#[source] DockerError),
    #[error(
        "the Docker watcher stopped unexpectedly (see the log); the controller cannot see changes"
    )]
    WatcherStopped,
}

/// What one reconcile of a key did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "outcome")]
pub enum Outcome {
    /// The service is in its desired state.
    Clean,
    /// A repair ran and succeeded.
    Acted { action: Action },
    /// A repair ran and failed.
    Failed { action: Action, error: String },
    /// The engine could not be asked; nothing was concluded.
    Unknown { error: String },
    /// A dependency is not running yet.
    Waiting { dependency: String },
    /// Backing off; the next attempt is due later.
    BackingOff { retry_in_ms: u64 },
    /// The restart budget is spent; the controller no longer acts on this service.
    Escalated,
    /// The policy says report only.
    Observed,
    /// A person holds the ticket: hands off.
    Held,
    /// Drift that no built-in action can repair (a name held by a foreign container).
    Blocked,
    /// The key is not declared (anymore).
    Undeclared,
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Clean => "clean",
            Outcome::Acted { .. } => "acted",
            Outcome::Failed { .. } => "failed",
            Outcome::Unknown { .. } => "unknown",
            Outcome::Waiting { .. } => "waiting",
            Outcome::BackingOff { .. } => "backoff",
            Outcome::Escalated => "escalated",
            Outcome::Observed => "observed",
            Outcome::Held => "held",
            Outcome::Blocked => "blocked",
            Outcome::Undeclared => "undeclared",
        }
    }
}

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
    /// Set when the service could not be observed: its state is unknown.
    pub error: Option<String>,
}

struct Inner {
    actions: Actions,
    cache: Arc<Cache>,
    desired: RwLock<Arc<DesiredState>>,
    queue: WorkQueue<ServiceKey>,
    states: Mutex<HashMap<ServiceKey, KeyState>>,
    /// Engine time of the earliest event not yet looked at, per key.
    pending_events: Mutex<HashMap<ServiceKey, SystemTime>>,
    metrics: Arc<Metrics>,
    config: ControllerConfig,
    store: Option<Arc<Store>>,
    /// Restarts asked for by failing checks with `policy: restart`, per service.
    check_repairs: Mutex<HashMap<ServiceKey, CheckRepair>>,
    /// When a check last had a service restarted, so the next one waits for a fresh verdict.
    check_repaired_at: Mutex<HashMap<ServiceKey, Instant>>,
}

/// A failing check asks for its service to be restarted.
#[derive(Debug, Clone)]
pub(super) struct CheckRepair {
    pub check: String,
    pub ticket: i64,
    pub detail: String,
    /// How long after a restart the check needs to give a fresh verdict (`for` plus one
    /// evaluation interval).
    pub settle: Duration,
}

/// Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Controller {
    inner: Arc<Inner>,
}

/// Observes one service fresh from the engine (never from the cache alone, so a repair is
/// never based on a stale view): its container by name, whether its image is present when it
/// must be created, and who holds the name if not this service.
async fn observe(
    actions: &Actions,
    cluster: &Cluster,
    service: &Service,
    recent_repairs: u32,
) -> Result<Observation, DockerError> {
    let key = ServiceKey::new(&cluster.name, &service.name);
    let (container, name_conflict) = match actions.inspect(&service.name).await? {
        None => (None, None),
        Some(raw) => match ObservedContainer::from_inspect(&raw) {
            None => (
                None,
                Some("is not managed by operator (no operator.managed-by label)".to_string()),
            ),
            Some(c) if c.key != key => (
                None,
                Some(format!("belongs to {} (another cluster or service)", c.key)),
            ),
            Some(c) => (Some(c), None),
        },
    };
    let needs_create = name_conflict.is_none()
        && container
            .as_ref()
            .is_none_or(|c| c.spec_hash != service.spec_hash());
    let image_present = if needs_create {
        Some(actions.image_present(&service.image).await?)
    } else {
        None
    };
    Ok(Observation {
        container,
        image_present,
        name_conflict,
        recent_repairs,
    })
}

/// Runs a ticket-store call on a blocking thread (SQLite waits on locks).
pub(super) async fn blocking<T: Send + 'static>(
    store: &Arc<Store>,
    f: impl FnOnce(&Store) -> Result<T, TicketError> + Send + 'static,
) -> Result<T, TicketError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| TicketError::Task(e.to_string()))?
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Controller {
    /// `store`: the ticket store; without one (for `plan`), nothing is remembered across
    /// reconciles but memory.
    pub fn new(
        docker: Docker,
        desired: DesiredState,
        metrics: Arc<Metrics>,
        config: ControllerConfig,
        store: Option<Arc<Store>>,
    ) -> Self {
        let actions = Actions::new(docker, config.limits.clone());
        Controller {
            inner: Arc::new(Inner {
                actions,
                cache: Arc::new(Cache::new()),
                desired: RwLock::new(Arc::new(desired)),
                queue: WorkQueue::new(),
                states: Mutex::new(HashMap::new()),
                pending_events: Mutex::new(HashMap::new()),
                metrics,
                config,
                store,
                check_repairs: Mutex::new(HashMap::new()),
                check_repaired_at: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn cache(&self) -> Arc<Cache> {
        self.inner.cache.clone()
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.inner.metrics.clone()
    }

    pub fn desired(&self) -> Arc<DesiredState> {
        self.inner
            .desired
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Swaps in a new desired state (already validated) and looks at every key again.
    pub fn set_desired(&self, desired: DesiredState) {
        let declared = |k: &ServiceKey| {
            desired
                .cluster(&k.cluster)
                .is_some_and(|c| c.service(&k.service).is_some())
        };
        lock(&self.inner.states).retain(|k, _| declared(k));
        lock(&self.inner.check_repairs).retain(|k, _| declared(k));
        lock(&self.inner.check_repaired_at).retain(|k, _| declared(k));
        *self
            .inner
            .desired
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(desired);
        self.enqueue_all();
    }

    fn keys(&self) -> Vec<ServiceKey> {
        self.desired()
            .clusters
            .iter()
            .flat_map(|c| c.services.iter().map(|s| ServiceKey::new(&c.name, &s.name)))
            .collect()
    }

    fn enqueue_all(&self) {
        for key in self.keys() {
            self.inner.queue.add(key);
        }
        self.inner
            .metrics
            .queue_depth
            .set(self.inner.queue.len() as i64);
    }

    /// Runs the loop until `cancel` fires, then finishes in-flight repairs.
    pub async fn run(&self, cancel: CancellationToken) -> Result<(), ControllerError> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let watcher = Watcher::new(
            self.inner.actions.docker().clone(),
            self.inner.cache.clone(),
            tx,
            self.inner.metrics.clone(),
        );
        let watch_cancel = cancel.child_token();
        let watcher_task = tokio::spawn(watcher.run(watch_cancel.clone()));

        // Until the first full list is in, nothing is reconciled; the watcher retries the
        // engine with backoff meanwhile and /healthz says "not ready". Bounded only by a stop.
        let became_ready = tokio::select! {
            _ = cancel.cancelled() => false,
            _ = self.inner.cache.wait_ready() => true,
        };
        if !became_ready {
            watch_cancel.cancel();
            let _ = watcher_task.await;
            return Ok(());
        }
        info!(services = self.keys().len(), "controller ready");
        if let Some(store) = self.store() {
            match blocking(store, |s| s.close_interrupted_actions(Utc::now())).await {
                Ok(0) => {}
                Ok(n) => warn!(
                    tickets = n,
                    "actions interrupted by the last stop were marked so; re-checking"
                ),
                Err(e) => error!(error = %e, "cannot close interrupted actions"),
            }
            self.refresh_ticket_gauges().await;
        }
        self.enqueue_all();

        let checks_cancel = cancel.child_token();
        let checks_task = {
            let this = self.clone();
            let stop = checks_cancel.clone();
            tokio::spawn(async move { this.run_checks(stop).await })
        };
        let worker_cancel = CancellationToken::new();
        let mut workers = Vec::new();
        for _ in 0..self.inner.config.workers.max(1) {
            let this = self.clone();
            let stop = worker_cancel.clone();
            workers.push(tokio::spawn(async move { this.worker(stop).await }));
        }

        let mut resync = tokio::time::interval(self.inner.config.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.tick().await; // the first tick is immediate; everything was just enqueued
        // Another process (a person's `tickets hold|retry|resolve`) changed the store: look
        // again at once rather than at the next resync.
        let mut store_poll = tokio::time::interval(STORE_POLL);
        let mut store_version = None;
        let mut watcher_died = false;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                event = rx.recv() => match event {
                    Some(WatchEvent::Relisted) => self.enqueue_all(),
                    Some(WatchEvent::Changed { key, at }) => {
                        lock(&self.inner.pending_events).entry(key.clone()).or_insert(at);
                        self.inner.queue.add(key);
                        self.inner.metrics.queue_depth.set(self.inner.queue.len() as i64);
                    }
                    // The watcher only ends when cancelled; anything else is a bug to surface,
                    // not a quiet exit 0.
                    None => {
                        error!("the Docker watcher stopped unexpectedly; shutting down");
                        watcher_died = true;
                        break;
                    }
                },
                _ = resync.tick() => {
                    debug!("periodic resync");
                    self.enqueue_all();
                }
                _ = store_poll.tick(), if self.store().is_some() => {
                    let Some(store) = self.store() else { continue };
                    if let Ok(version) = blocking(store, |s| s.data_version()).await {
                        if store_version.is_some_and(|v| v != version) {
                            debug!("ticket store changed by another process");
                            self.enqueue_all();
                        }
                        store_version = Some(version);
                    }
                }
            }
        }

        info!("shutting down: finishing in-flight repairs");
        worker_cancel.cancel();
        self.inner.queue.close();
        let grace = self.inner.config.shutdown_grace;
        let all = futures::future::join_all(workers);
        if tokio::time::timeout(grace, all).await.is_err() {
            warn!(
                grace_s = grace.as_secs(),
                "in-flight repairs did not finish in time; leaving them"
            );
        }
        checks_cancel.cancel();
        let _ = checks_task.await;
        watch_cancel.cancel();
        let _ = watcher_task.await;
        if watcher_died {
            return Err(ControllerError::WatcherStopped);
        }
        Ok(())
    }

    async fn worker(&self, stop: CancellationToken) {
        loop {
            let key = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                key = self.inner.queue.next() => key,
            };
            let Some(key) = key else { return };
            // Not raced against `stop`: a repair that started is allowed to finish. A panic
            // must not leave the key held forever.
            let run = std::panic::AssertUnwindSafe(self.reconcile(&key)).catch_unwind();
            if run.await.is_err() {
                error!(service = %key, "reconcile panicked; the key will be looked at again");
                self.inner.queue.schedule(
                    key.clone(),
                    Instant::now() + self.inner.config.observe_retry,
                );
            }
            self.inner.queue.done(&key);
            self.inner
                .metrics
                .queue_depth
                .set(self.inner.queue.len() as i64);
        }
    }

    /// One pass over every service in dependency order, without the watcher: list, then
    /// reconcile each key once. For `operator run --once`.
    pub async fn reconcile_once(&self) -> Result<Vec<(ServiceKey, Outcome)>, ControllerError> {
        let listed = list_owned(self.inner.actions.docker())
            .await
            .map_err(ControllerError::List)?;
        self.inner.cache.replace_all(listed);
        self.inner.cache.set_connected(true);
        let desired = self.desired();
        let mut outcomes = Vec::new();
        for cluster in &desired.clusters {
            for service in cluster.topo_order() {
                let key = ServiceKey::new(&cluster.name, &service.name);
                let outcome = self.reconcile(&key).await;
                outcomes.push((key, outcome));
            }
        }
        Ok(outcomes)
    }

    /// Reconciles one key: observe, diff, and (policy, budget and backoff permitting) repair.
    pub async fn reconcile(&self, key: &ServiceKey) -> Outcome {
        let started = std::time::Instant::now();
        let outcome = self.reconcile_inner(key).await;
        self.inner
            .metrics
            .reconciled(outcome.label(), started.elapsed());
        match &outcome {
            Outcome::Failed { action, error } => {
                warn!(service = %key, %action, %error, "repair failed");
            }
            Outcome::Unknown { error } => {
                warn!(service = %key, %error, "could not observe; nothing concluded");
            }
            other => debug!(service = %key, outcome = other.label(), "reconciled"),
        }
        outcome
    }

    /// Asks for `key` to be restarted because of a failing check (and looks at it now).
    pub(super) fn request_check_repair(&self, key: ServiceKey, repair: CheckRepair) {
        lock(&self.inner.check_repairs).insert(key.clone(), repair);
        self.inner.queue.add(key);
    }

    /// Withdraws check repairs of a cluster: all of them, or one check's except on `keep`.
    pub(super) fn withdraw_check_repairs(
        &self,
        cluster: &str,
        check: Option<&str>,
        keep: &HashSet<String>,
    ) {
        lock(&self.inner.check_repairs).retain(|key, r| {
            key.cluster != cluster
                || check.is_some_and(|c| c != r.check)
                || (check.is_some() && keep.contains(&key.service))
        });
    }

    pub(super) fn store(&self) -> Option<&Arc<Store>> {
        self.inner.store.as_ref()
    }

    /// The key's repair state: from the ticket store when there is one (the truth, which a
    /// person may have changed with `tickets retry`), else from memory.
    async fn load_state(
        &self,
        key: &ServiceKey,
        now: Instant,
        wall: DateTime<Utc>,
    ) -> Result<KeyState, TicketError> {
        let memory = lock(&self.inner.states)
            .get(key)
            .cloned()
            .unwrap_or_default();
        let Some(store) = self.store() else {
            return Ok(memory);
        };
        let (cluster, service) = (key.cluster.clone(), key.service.clone());
        let stored = blocking(store, move |s| s.load_budget(&cluster, &service)).await?;
        let mut state = stored
            .map(|b| KeyState::from_budget(&b, now, wall))
            .unwrap_or_default();
        state.last_error = memory.last_error;
        Ok(state)
    }

    /// Keeps the state in memory and, when it changed, in the store.
    async fn save_state(
        &self,
        key: &ServiceKey,
        state: &KeyState,
        before: &Budget,
        now: Instant,
        wall: DateTime<Utc>,
    ) {
        {
            let mut states = lock(&self.inner.states);
            states.insert(key.clone(), state.clone());
            let escalated = states.values().filter(|s| s.escalated).count();
            self.inner.metrics.escalated.set(escalated as i64);
        }
        let Some(store) = self.store() else { return };
        let budget = state.to_budget(now, wall);
        if &budget == before {
            return;
        }
        let (cluster, service) = (key.cluster.clone(), key.service.clone());
        if let Err(e) = blocking(store, move |s| s.save_budget(&cluster, &service, &budget)).await {
            error!(service = %key, error = %e, "cannot save the repair budget");
        }
    }

    pub(super) async fn refresh_ticket_gauges(&self) {
        let Some(store) = self.store() else { return };
        match blocking(store, |s| s.open_counts()).await {
            Ok(counts) => self.inner.metrics.set_open_tickets(&counts),
            Err(e) => warn!(error = %e, "cannot count open tickets"),
        }
    }

    /// Records every drift on its ticket. Returns the ticket of the first (primary) drift and
    /// whether this sighting began a new episode (opened or reopened a ticket).
    async fn record_drifts(
        &self,
        key: &ServiceKey,
        drifts: &[Drift],
        cooldown: Duration,
        wall: DateTime<Utc>,
    ) -> Result<(Option<Ticket>, bool), TicketError> {
        let Some(store) = self.store() else {
            return Ok((None, true));
        };
        let mut primary = None;
        let mut new_episode = false;
        let mut seen = std::collections::HashSet::new();
        for d in drifts {
            let fp = fingerprint(&key.cluster, &key.service, d.kind);
            if !seen.insert(fp.clone()) {
                continue;
            }
            let (cluster, service) = (key.cluster.clone(), key.service.clone());
            let (kind, detail) = (d.kind.as_str(), d.detail.clone());
            let (ticket, sighting) = blocking(store, move |s| {
                s.record_drift(
                    &DriftSighting {
                        fingerprint: &fp,
                        cluster: &cluster,
                        service: &service,
                        drift: kind,
                        detail: &detail,
                        cooldown,
                        evidence: None,
                    },
                    wall,
                )
            })
            .await?;
            if sighting != Sighting::Seen {
                self.inner.metrics.tickets_opened.inc();
                self.inner.metrics.drift(kind);
                info!(service = %key, ticket = ticket.id, drift = kind, detail = %d.detail, flaps = ticket.flaps,
                      "ticket {}", if sighting == Sighting::Opened { "opened" } else { "reopened" });
                new_episode = true;
            }
            if primary.is_none() {
                primary = Some(ticket);
            }
        }
        if new_episode {
            self.refresh_ticket_gauges().await;
        }
        Ok((primary, new_episode))
    }

    /// Resolves tickets a fresh re-check showed over, recording `recheck` on each. The
    /// cause: `controller` if a successful action of this episode left it `remediating`,
    /// else `self-healed` (a person's hand outside operator is what `tickets resolve` is for).
    pub(super) async fn resolve_after_recheck(
        &self,
        store: &Arc<Store>,
        tickets: Vec<Ticket>,
        recheck: serde_json::Value,
        wall: DateTime<Utc>,
    ) -> Result<(), TicketError> {
        if tickets.is_empty() {
            return Ok(());
        }
        for ticket in tickets {
            let cause = if ticket.status == Status::Remediating {
                Cause::Controller
            } else {
                Cause::SelfHealed
            };
            let (id, seen) = (ticket.id, recheck.clone());
            let resolved = blocking(store, move |s| {
                s.append(id, EntryKind::Recheck, seen, wall)?;
                s.resolve(id, cause, serde_json::json!({}), wall)
            })
            .await?;
            if resolved {
                let took = (wall - ticket.episode_at).to_std().unwrap_or_default();
                self.inner.metrics.ticket_resolved(cause.as_str(), took);
                info!(cluster = %ticket.cluster, target = %ticket.service, ticket = id, drift = %ticket.drift, cause = cause.as_str(), after_ms = took.as_millis() as u64, "ticket resolved");
            }
        }
        self.refresh_ticket_gauges().await;
        Ok(())
    }

    /// A fresh observation shows the drift of these tickets gone: resolves every unresolved
    /// container ticket of the service whose fingerprint is not in `still_drifting`, and
    /// returns the service's tickets that stay unresolved.
    async fn resolve_tickets(
        &self,
        key: &ServiceKey,
        container: Option<&ObservedContainer>,
        still_drifting: &HashSet<String>,
        wall: DateTime<Utc>,
    ) -> Result<Vec<Ticket>, TicketError> {
        let Some(store) = self.store() else {
            return Ok(Vec::new());
        };
        let (cluster, service) = (key.cluster.clone(), key.service.clone());
        let open = blocking(store, move |s| s.unresolved_for(&cluster, &service)).await?;
        // Check tickets are the check evaluations' to resolve: a running container says
        // nothing about whether its checks pass.
        // A held ticket is a person's: while the service still drifts in any way it stays
        // open (and held), even if its own kind of drift changed.
        let service_drifts = !still_drifting.is_empty();
        let (remaining, over): (Vec<Ticket>, Vec<Ticket>) = open.into_iter().partition(|t| {
            still_drifting.contains(&t.fingerprint)
                || is_check_fingerprint(&t.fingerprint)
                || (service_drifts && t.held)
        });
        let seen = serde_json::json!({
            "result": "desired state",
            "container": container.map(|c| &c.id),
            "status": container.map(|c| c.status.as_str()),
            "health": container.and_then(|c| c.health),
        });
        self.resolve_after_recheck(store, over, seen, wall).await?;
        Ok(remaining)
    }

    /// Whether a dependency's container is running now (asked fresh from the engine).
    async fn dependency_running(&self, cluster: &str, dependency: &str) -> bool {
        let key = ServiceKey::new(cluster, dependency);
        match self.inner.actions.inspect(dependency).await {
            Ok(Some(raw)) => ObservedContainer::from_inspect(&raw)
                .is_some_and(|c| c.key == key && c.status == ContainerStatus::Running),
            _ => false,
        }
    }

    async fn reconcile_inner(&self, key: &ServiceKey) -> Outcome {
        let inner = &self.inner;
        let event_at = lock(&inner.pending_events).remove(key);
        let desired = self.desired();
        let Some(cluster) = desired.cluster(&key.cluster) else {
            return Outcome::Undeclared;
        };
        let Some(service) = cluster.service(&key.service) else {
            return Outcome::Undeclared;
        };
        let r = &service.remediation;
        let now = Instant::now();
        let wall = Utc::now();
        let retry_soon = || {
            inner
                .queue
                .schedule(key.clone(), now + inner.config.observe_retry)
        };
        if !inner.cache.is_connected() {
            // Unknown is not healthy: conclude nothing until the watcher has re-listed
            // (its Relisted event enqueues every key again).
            return Outcome::Unknown {
                error: "the Docker event stream is disconnected; waiting to re-list".into(),
            };
        }

        let mut state = match self.load_state(key, now, wall).await {
            Ok(state) => state,
            Err(e) => {
                retry_soon();
                return Outcome::Unknown {
                    error: e.to_string(),
                };
            }
        };
        let before = state.to_budget(now, wall);
        state.track_spec(&service.spec_hash());
        let recent = state.recent_repairs(now, r);
        let observed = match observe(&inner.actions, cluster, service, recent).await {
            Ok(o) => o,
            Err(e) => {
                retry_soon();
                return Outcome::Unknown {
                    error: e.to_string(),
                };
            }
        };
        let drifts = diff(cluster, service, &observed);

        let check_repair = lock(&inner.check_repairs).get(key).cloned();
        if drifts.is_empty()
            && let Some(repair) = check_repair
            && let Some(outcome) = self
                .repair_for_check(
                    key,
                    cluster,
                    service,
                    &observed,
                    repair,
                    state.clone(),
                    &before,
                    now,
                    wall,
                )
                .await
        {
            return outcome;
        }

        if drifts.is_empty() {
            // Verified: running, and healthy if any healthcheck (the manifest's or the
            // image's) is defined. "Starting" is not yet healthy.
            let verified = observed.container.as_ref().is_some_and(|c| {
                c.status == ContainerStatus::Running
                    && c.health.is_none_or(|h| h == HealthState::Healthy)
            });
            if let Some(reset_at) = state.saw_clean(now, verified, r) {
                // Look again when the backoff is due to reset.
                inner.queue.schedule(key.clone(), reset_at);
            }
            state.last_error = None;
            // Running but not yet healthy: an unhealthy episode is not over yet.
            let still: HashSet<String> = if verified {
                HashSet::new()
            } else {
                HashSet::from([fingerprint(
                    &key.cluster,
                    &key.service,
                    DriftKind::Unhealthy,
                )])
            };
            if let Err(e) = self
                .resolve_tickets(key, observed.container.as_ref(), &still, wall)
                .await
            {
                warn!(service = %key, error = %e, "cannot resolve tickets; will re-check");
                retry_soon();
            }
            self.save_state(key, &state, &before, now, wall).await;
            return Outcome::Clean;
        }

        if let Some(at) = event_at {
            let latency = SystemTime::now().duration_since(at).unwrap_or_default();
            inner.metrics.event_to_drift(latency);
            debug!(service = %key, event_to_drift_us = latency.as_micros() as u64, "drift detected after event");
        }
        state.saw_drift(now, r);
        // Creating a service for the first time and rolling out an edited spec are
        // deliberate changes, not incidents: they become tickets only if the first try fails.
        let deliberate = state.attempts == 0
            && match repair(&drifts, &observed) {
                Some(Action::Create) => !state.created_before,
                Some(Action::Recreate) => drifts.iter().any(|d| d.kind == DriftKind::SpecChanged),
                _ => false,
            };
        let recorded = if deliberate {
            Ok((None, true))
        } else {
            self.record_drifts(key, &drifts, r.window, wall).await
        };
        let (ticket, new_episode) = match recorded {
            Ok(t) => t,
            Err(e) => {
                // Never act on what cannot be recorded.
                retry_soon();
                self.save_state(key, &state, &before, now, wall).await;
                return Outcome::Unknown {
                    error: e.to_string(),
                };
            }
        };
        // Episodes of other kinds that this observation shows over (the container exists
        // again, is no longer paused...) are resolved.
        let still: HashSet<String> = drifts
            .iter()
            .map(|d| fingerprint(&key.cluster, &key.service, d.kind))
            .collect();
        let remaining = self
            .resolve_tickets(key, observed.container.as_ref(), &still, wall)
            .await;
        if let Err(e) = &remaining {
            warn!(service = %key, error = %e, "cannot resolve tickets; will re-check");
        }
        let ticket_id = ticket.as_ref().map(|t| t.id);
        let kinds: Vec<&str> = drifts.iter().map(|d| d.kind.as_str()).collect();
        let detail = drifts[0].detail.clone();

        // Hands off while a person holds any ticket of the service (and when that cannot
        // be read).
        let any_held = remaining.map_or(true, |ts| ts.iter().any(|t| t.held));
        if any_held {
            if new_episode {
                info!(service = %key, ticket = ?ticket_id, drifts = ?kinds, %detail, "drift on a held ticket; hands off");
            }
            self.save_state(key, &state, &before, now, wall).await;
            return Outcome::Held;
        }
        if r.policy != Policy::Restart {
            if new_episode {
                info!(service = %key, ticket = ?ticket_id, drifts = ?kinds, %detail, policy = ?r.policy, "drift observed; policy forbids repair");
            }
            self.save_state(key, &state, &before, now, wall).await;
            return Outcome::Observed;
        }
        let Some(action) = repair(&drifts, &observed) else {
            if new_episode {
                if drifts[0].kind == DriftKind::NameConflict {
                    warn!(service = %key, ticket = ?ticket_id, %detail, "cannot create: the container name is held by a container this service does not own; leaving it alone");
                } else {
                    info!(service = %key, ticket = ?ticket_id, drifts = ?kinds, %detail, "drift has no built-in repair");
                }
            }
            self.save_state(key, &state, &before, now, wall).await;
            return Outcome::Blocked;
        };

        if matches!(action, Action::Create | Action::Start | Action::Recreate) {
            for dependency in &service.depends_on {
                if !self.dependency_running(&cluster.name, dependency).await {
                    debug!(service = %key, %dependency, "waiting for dependency to run first");
                    inner
                        .queue
                        .schedule(key.clone(), now + inner.config.dependency_poll);
                    self.save_state(key, &state, &before, now, wall).await;
                    return Outcome::Waiting {
                        dependency: dependency.clone(),
                    };
                }
            }
        }

        let budgeted = is_budgeted(&action, &drifts, state.created_before, state.attempts);
        self.gate_and_act(
            Repair {
                key,
                cluster,
                service,
                action,
                budgeted,
                remediation: r,
                ticket_id,
                kinds: kinds.iter().map(|k| k.to_string()).collect(),
                detail,
                container: observed.container.as_ref(),
                now,
                wall,
            },
            state,
            before,
        )
        .await
    }

    /// Applies the budget and backoff to a chosen repair, records it durably, performs it
    /// and records its result.
    pub(super) async fn gate_and_act(
        &self,
        repair: Repair<'_>,
        mut state: KeyState,
        before: Budget,
    ) -> Outcome {
        let inner = &self.inner;
        let Repair {
            key,
            cluster,
            service,
            action,
            budgeted,
            remediation: r,
            ticket_id,
            kinds,
            detail,
            container,
            now,
            wall,
        } = repair;
        let retry_soon = || {
            inner
                .queue
                .schedule(key.clone(), now + inner.config.observe_retry)
        };
        match state.gate(now, budgeted, r) {
            Gate::Act => {}
            Gate::WaitUntil(at) => {
                inner.queue.schedule(key.clone(), at);
                self.save_state(key, &state, &before, now, wall).await;
                return Outcome::BackingOff {
                    retry_in_ms: at.saturating_duration_since(now).as_millis() as u64,
                };
            }
            Gate::Escalate => {
                if !before.escalated {
                    error!(
                        service = %key, ticket = ?ticket_id, drifts = ?kinds, %detail,
                        max_restarts = r.max_restarts, window_s = r.window.as_secs(),
                        "restart budget spent: escalated, no more repairs for this service"
                    );
                }
                if let (Some(store), Some(id)) = (self.store(), ticket_id) {
                    let why = serde_json::json!({
                        "reason": "restart budget spent",
                        "max_restarts": r.max_restarts,
                        "window_s": r.window.as_secs(),
                        "drift": kinds.first(),
                    });
                    if let Err(e) = blocking(store, move |s| s.escalate(id, why, wall)).await {
                        error!(service = %key, error = %e, "cannot mark the ticket escalated");
                    }
                }
                self.save_state(key, &state, &before, now, wall).await;
                return Outcome::Escalated;
            }
        }

        let next_at = state.record_attempt(now, budgeted, r);
        let retry_after_ms = next_at.saturating_duration_since(now).as_millis() as u64;
        // Durable before acting: a crash from here on never hands out this attempt again.
        if let (Some(store), Some(id)) = (self.store(), ticket_id) {
            let budget = state.to_budget(now, wall);
            let (cluster_name, service_name) = (key.cluster.clone(), key.service.clone());
            let what = serde_json::json!({
                "action": action.as_str(),
                "attempt": state.attempts,
                "budgeted": budgeted,
                "drifts": kinds,
            });
            match blocking(store, move |s| {
                s.action_started(id, &cluster_name, &service_name, &budget, what, wall)
            })
            .await
            {
                Ok(true) => {}
                // Held or resolved since this reconcile began: hands off.
                Ok(false) => return Outcome::Held,
                Err(e) => {
                    retry_soon();
                    return Outcome::Unknown {
                        error: format!("not acting, the attempt could not be recorded: {e}"),
                    };
                }
            }
        }
        info!(service = %key, ticket = ?ticket_id, drifts = ?kinds, %detail, action = action.as_str(), attempt = state.attempts, budgeted, retry_after_ms, "repairing");
        let before = state.to_budget(now, wall);
        let result = self.perform(&action, cluster, service, container).await;
        let (outcome, entry) = match result {
            Ok(()) => {
                inner.metrics.action(action.as_str(), "ok");
                state.created_before = true;
                state.last_error = None;
                (
                    Outcome::Acted {
                        action: action.clone(),
                    },
                    serde_json::json!({"action": action.as_str(), "result": "ok"}),
                )
            }
            Err(e) => {
                inner.metrics.action(action.as_str(), "error");
                state.last_error = Some(e.to_string());
                if matches!(action, Action::Create | Action::Recreate)
                    && !matches!(e, DockerError::NotOwned { .. })
                {
                    // The container may exist now even though the action failed later on.
                    state.created_before = true;
                }
                inner.queue.schedule(key.clone(), next_at);
                let entry = serde_json::json!({"action": action.as_str(), "result": "error", "error": e.to_string()});
                (
                    Outcome::Failed {
                        action: action.clone(),
                        error: e.to_string(),
                    },
                    entry,
                )
            }
        };
        let ok = matches!(outcome, Outcome::Acted { .. });
        if let (Some(store), Some(id)) = (self.store(), ticket_id)
            && let Err(e) =
                blocking(store, move |s| s.action_finished(id, ok, entry, Utc::now())).await
        {
            error!(service = %key, error = %e, "cannot record the action's result");
        }
        self.save_state(key, &state, &before, now, wall).await;
        outcome
    }

    /// A running container whose check fails with `policy: restart`: restart it under the
    /// service's budget, recorded on the check's ticket. `None`: nothing to do for the check
    /// now, so the service's normal path runs.
    #[allow(clippy::too_many_arguments)]
    async fn repair_for_check(
        &self,
        key: &ServiceKey,
        cluster: &Cluster,
        service: &Service,
        observed: &Observation,
        repair: CheckRepair,
        mut state: KeyState,
        before: &Budget,
        now: Instant,
        wall: DateTime<Utc>,
    ) -> Option<Outcome> {
        // The manifest may have changed since the verdict: only a declared check that still
        // says `restart` may act.
        let still_restart = cluster
            .check(&repair.check)
            .is_some_and(|c| c.remediation.policy == Policy::Restart);
        let store = self.store()?;
        let id = repair.ticket;
        let ticket = blocking(store, move |s| s.get(id)).await.ok().flatten();
        let live = ticket
            .as_ref()
            .is_some_and(|t| t.status != Status::Resolved && !t.held);
        if !still_restart || !live {
            lock(&self.inner.check_repairs).remove(key);
            return None;
        }
        // The last restart for a check must have had time to show in a fresh verdict.
        if let Some(at) = lock(&self.inner.check_repaired_at).get(key).copied()
            && now < at + repair.settle
        {
            self.inner.queue.schedule(key.clone(), at + repair.settle);
            return None;
        }
        // Withdrawn by the monitor meanwhile (the check passes, Prometheus is gone...)?
        lock(&self.inner.check_repairs).remove(key)?;
        let r = &service.remediation;
        state.saw_drift(now, r);
        let outcome = self
            .gate_and_act(
                Repair {
                    key,
                    cluster,
                    service,
                    action: Action::Restart,
                    budgeted: true,
                    remediation: r,
                    ticket_id: Some(repair.ticket),
                    kinds: vec![format!("check-failed:{}", repair.check)],
                    detail: repair.detail.clone(),
                    container: observed.container.as_ref(),
                    now,
                    wall,
                },
                state,
                before.clone(),
            )
            .await;
        if matches!(outcome, Outcome::Acted { .. } | Outcome::Failed { .. }) {
            // From when the restart finished: a restart may take the whole stop grace.
            lock(&self.inner.check_repaired_at).insert(key.clone(), Instant::now());
        }
        Some(outcome)
    }

    async fn perform(
        &self,
        action: &Action,
        cluster: &Cluster,
        service: &Service,
        container: Option<&ObservedContainer>,
    ) -> Result<(), DockerError> {
        let actions = &self.inner.actions;
        let id = || {
            container
                .map(|c| c.id.as_str())
                .ok_or_else(|| DockerError::NotOwned {
                    name: service.name.clone(),
                })
        };
        match action {
            Action::Create => actions.create(cluster, service).await,
            Action::Start => actions.start(id()?).await,
            Action::Unpause => actions.unpause(id()?).await,
            Action::Restart => actions.restart(id()?).await,
            Action::Recreate => actions.recreate(cluster, service, id()?).await,
            Action::Connect { network } => {
                actions
                    .connect(cluster, id()?, network, &service.name)
                    .await
            }
        }
    }

    /// Desired against observed for every service, observed fresh. Changes nothing in Docker
    /// or in the ticket store.
    pub async fn report(&self) -> Result<Vec<ServiceReport>, ControllerError> {
        let desired = self.desired();
        let now = Instant::now();
        let wall = Utc::now();
        let mut reports = Vec::new();
        for cluster in &desired.clusters {
            for service in cluster.topo_order() {
                let key = ServiceKey::new(&cluster.name, &service.name);
                let (mut state, mut error) = match self.load_state(&key, now, wall).await {
                    Ok(state) => (state, None),
                    Err(e) => (KeyState::default(), Some(e.to_string())),
                };
                let tickets = match self.store() {
                    Some(store) => {
                        let (c, s) = (key.cluster.clone(), key.service.clone());
                        match blocking(store, move |st| st.unresolved_for(&c, &s)).await {
                            Ok(ts) => ts.iter().map(|t| t.id).collect(),
                            Err(e) => {
                                error.get_or_insert(e.to_string());
                                Vec::new()
                            }
                        }
                    }
                    None => Vec::new(),
                };
                let recent = state.recent_repairs(now, &service.remediation);
                let (drifts, action, container) =
                    match observe(&self.inner.actions, cluster, service, recent).await {
                        Ok(observed) => {
                            let drifts = diff(cluster, service, &observed);
                            let action = repair(&drifts, &observed);
                            (drifts, action, observed.container)
                        }
                        Err(e) => {
                            error = Some(e.to_string());
                            (Vec::new(), None, None)
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
                    escalated: state.escalated,
                    tickets,
                    error,
                });
            }
        }
        Ok(reports)
    }
}
