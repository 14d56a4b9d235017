//! The controller: watcher events and a periodic resync feed a work queue; workers take one
//! key at a time, observe, diff and repair.
//!
//! # Guarantees
//! - Level-triggered: a reconcile reads the cache (and asks the engine what the cache cannot
//!   know, like image presence), never the event that woke it.
//! - A key is never reconciled concurrently with itself (see [`WorkQueue`]).
//! - Nothing is reconciled before the watcher's first full list is in.
//! - On shutdown, in-flight repairs finish (bounded by `shutdown_grace`); no new ones start.
//! - Only containers carrying the controller's labels are acted on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use bollard::Docker;
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
use crate::manifest::{Cluster, DesiredState, Policy, Service};
use crate::metrics::Metrics;

use super::diff::{Action, Drift, DriftKind, Observation, diff, is_budgeted, repair};
use super::queue::WorkQueue;
use super::state::{Gate, KeyState};

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
    /// How long `run` waits for the first full list before giving up (`None`: forever).
    pub ready_timeout: Option<Duration>,
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
            ready_timeout: None,
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

    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = Some(timeout);
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("the first list of containers did not complete within {0:?}; is the Docker engine up?")]
    NotReady(Duration),
    #[error("could not list the owned containers: {0}")]
    List(#[source] DockerError),
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
    pub escalated: bool,
    pub last_error: Option<String>,
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
}

/// Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Controller {
    inner: Arc<Inner>,
}

/// Reads what the cache cannot know (image presence, a foreign container holding the name)
/// and assembles the diff's input.
async fn observe(
    actions: &Actions,
    cache: &Cache,
    cluster: &Cluster,
    service: &Service,
    recent_repairs: u32,
) -> Result<Observation, DockerError> {
    let key = ServiceKey::new(&cluster.name, &service.name);
    let container = cache.get(&key);
    let needs_create = container
        .as_ref()
        .is_none_or(|c| c.spec_hash != service.spec_hash());
    let image_present = if needs_create {
        Some(actions.image_present(&service.image).await?)
    } else {
        None
    };
    let name_conflict = if container.is_none() {
        actions.name_taken_by_unmanaged(&service.name).await?
    } else {
        false
    };
    Ok(Observation {
        container,
        image_present,
        name_conflict,
        recent_repairs,
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Controller {
    pub fn new(
        docker: Docker,
        desired: DesiredState,
        metrics: Arc<Metrics>,
        config: ControllerConfig,
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

        let ready = self.inner.cache.wait_ready();
        let became_ready = match self.inner.config.ready_timeout {
            Some(limit) => tokio::select! {
                _ = cancel.cancelled() => false,
                r = tokio::time::timeout(limit, ready) => {
                    if r.is_err() {
                        watch_cancel.cancel();
                        let _ = watcher_task.await;
                        return Err(ControllerError::NotReady(limit));
                    }
                    true
                }
            },
            None => tokio::select! {
                _ = cancel.cancelled() => false,
                _ = ready => true,
            },
        };
        if !became_ready {
            watch_cancel.cancel();
            let _ = watcher_task.await;
            return Ok(());
        }
        info!(services = self.keys().len(), "controller ready");
        self.enqueue_all();

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
                    None => break,
                },
                _ = resync.tick() => {
                    debug!("periodic resync");
                    self.enqueue_all();
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
        watch_cancel.cancel();
        let _ = watcher_task.await;
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
            // Not raced against `stop`: a repair that started is allowed to finish.
            self.reconcile(&key).await;
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

    fn state(&self, key: &ServiceKey) -> KeyState {
        lock(&self.inner.states)
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    fn put_state(&self, key: &ServiceKey, state: KeyState) {
        let mut states = lock(&self.inner.states);
        states.insert(key.clone(), state);
        let escalated = states.values().filter(|s| s.escalated).count();
        self.inner.metrics.escalated.set(escalated as i64);
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

        let mut state = self.state(key);
        state.track_spec(&service.spec_hash());
        let now = Instant::now();
        let recent = state.recent_repairs(now, r);
        let observed = match observe(&inner.actions, &inner.cache, cluster, service, recent).await {
            Ok(o) => o,
            Err(e) => {
                // Unknown is not healthy: conclude nothing, look again soon.
                inner
                    .queue
                    .schedule(key.clone(), now + inner.config.observe_retry);
                self.put_state(key, state);
                return Outcome::Unknown {
                    error: e.to_string(),
                };
            }
        };
        let drifts = diff(cluster, service, &observed);

        if drifts.is_empty() {
            let verified = observed.container.as_ref().is_some_and(|c| {
                c.status == ContainerStatus::Running
                    && (service.healthcheck.is_none() || c.health == Some(HealthState::Healthy))
            });
            if let Some(reset_at) = state.saw_clean(now, verified, r) {
                // Look again when the backoff is due to reset.
                inner.queue.schedule(key.clone(), reset_at);
            }
            state.last_error = None;
            self.put_state(key, state);
            return Outcome::Clean;
        }

        for d in &drifts {
            inner.metrics.drift(d.kind.as_str());
        }
        if let Some(at) = event_at {
            let latency = SystemTime::now().duration_since(at).unwrap_or_default();
            inner.metrics.event_to_drift(latency);
            debug!(service = %key, event_to_drift_us = latency.as_micros() as u64, "drift detected after event");
        }
        state.saw_drift(now, r);
        let kinds: Vec<&str> = drifts.iter().map(|d| d.kind.as_str()).collect();
        let detail = &drifts[0].detail;

        if r.policy != Policy::Restart {
            info!(service = %key, drifts = ?kinds, %detail, policy = ?r.policy, "drift observed; policy forbids repair");
            self.put_state(key, state);
            return Outcome::Observed;
        }
        let Some(action) = repair(&drifts, &observed) else {
            if drifts[0].kind == DriftKind::NameConflict {
                warn!(service = %key, %detail, "cannot create: the name is held by a container operator does not own; leaving it alone");
            } else {
                info!(service = %key, drifts = ?kinds, %detail, "drift has no built-in repair");
            }
            self.put_state(key, state);
            return Outcome::Blocked;
        };

        if matches!(action, Action::Create | Action::Start | Action::Recreate) {
            for dependency in &service.depends_on {
                let dep_key = ServiceKey::new(&cluster.name, dependency);
                let running = inner
                    .cache
                    .get(&dep_key)
                    .is_some_and(|c| c.status == ContainerStatus::Running);
                if !running {
                    info!(service = %key, %dependency, "waiting for dependency to run first");
                    inner
                        .queue
                        .schedule(key.clone(), now + inner.config.dependency_poll);
                    self.put_state(key, state);
                    return Outcome::Waiting {
                        dependency: dependency.clone(),
                    };
                }
            }
        }

        let budgeted = is_budgeted(&action, &drifts, state.created_before);
        match state.gate(now, budgeted, r) {
            Gate::Act => {}
            Gate::WaitUntil(at) => {
                inner.queue.schedule(key.clone(), at);
                self.put_state(key, state);
                return Outcome::BackingOff {
                    retry_in_ms: at.saturating_duration_since(now).as_millis() as u64,
                };
            }
            Gate::Escalate => {
                let first_time = !self.state(key).escalated;
                if first_time {
                    error!(
                        service = %key, drifts = ?kinds, %detail,
                        max_restarts = r.max_restarts, window_s = r.window.as_secs(),
                        "restart budget spent: escalated, no more repairs for this service"
                    );
                }
                self.put_state(key, state);
                return Outcome::Escalated;
            }
        }

        let next_at = state.record_attempt(now, budgeted, r);
        info!(service = %key, drifts = ?kinds, %detail, %action, attempt = state.attempts, "repairing");
        // Saved before acting, so a concurrent status read sees the attempt.
        self.put_state(key, state.clone());
        let result = match &action {
            Action::Create => inner.actions.create(cluster, service).await,
            Action::Start
            | Action::Unpause
            | Action::Restart
            | Action::Recreate
            | Action::Connect { .. } => {
                let Some(container) = observed.container.as_ref() else {
                    return Outcome::Blocked;
                };
                match &action {
                    Action::Start => inner.actions.start(&container.id).await,
                    Action::Unpause => inner.actions.unpause(&container.id).await,
                    Action::Restart => inner.actions.restart(&container.id).await,
                    Action::Recreate => {
                        inner
                            .actions
                            .recreate(cluster, service, &container.id)
                            .await
                    }
                    Action::Connect { network } => {
                        inner
                            .actions
                            .connect(cluster, &container.id, network, &service.name)
                            .await
                    }
                    Action::Create => unreachable!("handled above"),
                }
            }
        };
        match result {
            Ok(fresh) => {
                if let Some(fresh) = fresh {
                    // Write-through: the next reconcile (and dependants) see the result now.
                    inner.cache.upsert(fresh);
                }
                inner.metrics.action(action.as_str(), "ok");
                state.created_before = true;
                state.last_error = None;
                self.put_state(key, state);
                Outcome::Acted { action }
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
                self.put_state(key, state);
                inner.queue.schedule(key.clone(), next_at);
                Outcome::Failed {
                    action,
                    error: e.to_string(),
                }
            }
        }
    }

    /// Desired against observed for every service, from a fresh list. Changes nothing.
    pub async fn report(&self) -> Result<Vec<ServiceReport>, ControllerError> {
        let listed = list_owned(self.inner.actions.docker())
            .await
            .map_err(ControllerError::List)?;
        self.inner.cache.replace_all(listed);
        let desired = self.desired();
        let mut reports = Vec::new();
        for cluster in &desired.clusters {
            for service in cluster.topo_order() {
                let key = ServiceKey::new(&cluster.name, &service.name);
                let mut state = self.state(&key);
                let recent = state.recent_repairs(Instant::now(), &service.remediation);
                let (drifts, action, container, last_error) = match observe(
                    &self.inner.actions,
                    &self.inner.cache,
                    cluster,
                    service,
                    recent,
                )
                .await
                {
                    Ok(observed) => {
                        let drifts = diff(cluster, service, &observed);
                        let action = repair(&drifts, &observed);
                        (drifts, action, observed.container, state.last_error.clone())
                    }
                    Err(e) => (
                        Vec::new(),
                        None,
                        self.inner.cache.get(&key),
                        Some(e.to_string()),
                    ),
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
                    last_error,
                });
            }
        }
        Ok(reports)
    }
}
