//! The controller loop: watcher events, a periodic resync, ticket-store changes, check
//! repair requests and remediation completions feed a work queue; workers take one key at a
//! time and hand it to [`service::reconcile`](super::service). What a reconcile does lives
//! there and in [`decide`](super::decide); this file only runs the loop.
//!
//! # Guarantees
//! - A key is never reconciled concurrently with itself (see [`WorkQueue`]).
//! - Nothing is reconciled before the watcher's first full list is in.
//! - A long-running remediation (an agent session) never holds a worker: its key is leased
//!   until its completion arrives, then re-checked.
//! - On shutdown, in-flight reconciles finish (bounded by `shutdown_grace`); no new ones
//!   start. Sessions still running are the remediator's to stop; the next start closes
//!   their actions as interrupted.
//! - Only containers carrying the controller's labels are acted on.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use bollard::Docker;
use futures::FutureExt;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::docker::actions::{Actions, Limits};
use crate::docker::store::{Adoption, Writer, adoptable};
use crate::docker::watcher::{WatchEvent, Watcher, list_owned};
use crate::docker::{DockerError, ServiceKey, Store};
use crate::drift::DriftKind;
use crate::manifest::{DesiredState, Policy};
use crate::metrics::Metrics;
use crate::remediation::{
    Action, Actor, Completed, Completions, RemediationError, Remediator, SessionId,
};
use crate::tickets::Journal;

use super::builtin::BuiltIn;
use super::checks::{CheckRecorder, CheckRestartMessage, CheckViews};
use super::disruption::Disruptions;
use super::passes::{Finished, PassKind, Passes};
use super::queue::{Why, WorkQueue};
use super::resync::Quiet;
use super::state::RepairBudget;

/// How long `--once` waits past the settle time for a repaired service's healthcheck.
const ONCE_HEALTH_WAIT: Duration = Duration::from_secs(30);

/// How often the ticket store is checked for changes made by other processes.
const STORE_POLL: Duration = Duration::from_secs(1);

/// Keys reconciled at once by default. A repair spends most of its time waiting on the
/// engine (half a second and more for a container it is still cleaning up after), so this is
/// set for many services repaired side by side, as the engine restarts its own, not for the
/// CPU count; the bound keeps engine connections and store threads within a process's limits.
pub const DEFAULT_WORKERS: usize = 256;

/// Settings of the loop, defaults in one place.
#[derive(Debug, Clone)]
#[must_use]
pub struct ControllerConfig {
    /// How often every key is looked at again, whatever the events say: from the observed
    /// store, without asking the engine (see [`super::resync`]).
    pub resync: Duration,
    /// How often the watcher lists the engine again while its event stream is healthy: the
    /// bound on how long a change the stream missed can go unseen.
    pub relist: Duration,
    /// Keys reconciled in parallel, each in a task of its own (never the same key twice).
    pub workers: usize,
    /// How often a service waiting for a dependency looks again.
    pub dependency_poll: Duration,
    /// How often a failed observation (engine unreachable) is retried.
    pub observe_retry: Duration,
    /// The most a shutdown waits for in-flight repairs.
    pub shutdown_grace: Duration,
    /// The most a long-running remediator may hold a key without reporting back; past it
    /// the attempt is recorded as failed and the key looked at again.
    pub lease_timeout: Duration,
    /// How long a (re)started container must stay running before the controller believes
    /// it is repaired: a crash-looping process is up for a moment after every start.
    pub settle: Duration,
    pub limits: Limits,
    /// Act on nothing, whatever the policies say: drifts open and close tickets, nothing
    /// repairs them (what a chaos drill's `--baseline` compares the controller against).
    pub observe_only: bool,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            resync: Duration::from_secs(30),
            relist: Duration::from_secs(300),
            workers: DEFAULT_WORKERS,
            dependency_poll: Duration::from_secs(1),
            observe_retry: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(60),
            lease_timeout: Duration::from_secs(30 * 60),
            settle: Duration::from_secs(3),
            limits: Limits::default(),
            observe_only: false,
        }
    }
}

impl ControllerConfig {
    pub fn resync(mut self, resync: Duration) -> Self {
        self.resync = resync;
        self
    }

    pub fn relist(mut self, relist: Duration) -> Self {
        self.relist = relist;
        self
    }

    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    pub fn settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    pub fn lease_timeout(mut self, timeout: Duration) -> Self {
        self.lease_timeout = timeout;
        self
    }

    pub fn observe_only(mut self, observe_only: bool) -> Self {
        self.observe_only = observe_only;
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
    #[error("this controller is already running (run may be called once)")]
    AlreadyRunning,
}

/// What one reconcile of a key did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "outcome")]
pub enum Outcome {
    /// The service is in its desired state.
    Clean,
    /// A repair ran and succeeded.
    Acted { action: Action },
    /// A built-in action ran and failed.
    Failed { action: Action, error: String },
    /// Another remediator finished inside the reconcile and succeeded.
    Remediated { actor: Actor },
    /// Another remediator finished inside the reconcile and failed.
    RemediationFailed { actor: Actor, error: String },
    /// Running, but not for the settle time yet (or not yet healthy): not called repaired.
    Settling,
    /// The last look of `--once` still found the service drifting.
    NotRepaired { drift: DriftKind, detail: String },
    /// A long-running remediator started a session; the key is leased until it reports.
    Dispatched { session: SessionId },
    /// A session is at work on the key: hands off.
    Leased { session: SessionId },
    /// The engine could not be asked; nothing was concluded.
    Unknown { error: String },
    /// The observed store is behind on the key (the watcher owes it a look, or a list with
    /// the manifests' current adoption set): nothing concluded; the watcher announces the
    /// key again when it is in.
    Pending { why: String },
    /// The ticket store cannot be written: nothing is done that cannot be recorded.
    Unrecorded { error: String },
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
    /// The quorum gate holds the action back: taking this member down now would leave its
    /// group below quorum. Looked at again shortly; nothing is spent from the budget.
    Gated { reason: String },
    /// The key is not declared (anymore).
    Undeclared,
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Clean => "clean",
            Outcome::Acted { .. } => "acted",
            Outcome::Failed { .. } => "failed",
            Outcome::Remediated { .. } => "remediated",
            Outcome::RemediationFailed { .. } => "remediation-failed",
            Outcome::Dispatched { .. } => "dispatched",
            Outcome::Settling => "settling",
            Outcome::NotRepaired { .. } => "not-repaired",
            Outcome::Leased { .. } => "leased",
            Outcome::Unknown { .. } => "unknown",
            Outcome::Pending { .. } => "pending",
            Outcome::Unrecorded { .. } => "unrecorded",
            Outcome::Waiting { .. } => "waiting",
            Outcome::BackingOff { .. } => "backoff",
            Outcome::Escalated => "escalated",
            Outcome::Observed => "observed",
            Outcome::Held => "held",
            Outcome::Blocked => "blocked",
            Outcome::Gated { .. } => "gated",
            Outcome::Undeclared => "undeclared",
        }
    }
}

/// A failing check asks for its service to be restarted.
#[derive(Debug, Clone)]
pub(super) struct CheckRestart {
    pub check: String,
    pub ticket: i64,
    pub detail: String,
    /// How long after a restart the check needs to give a fresh verdict (`for` plus one
    /// evaluation interval).
    pub settle: Duration,
}

/// A key handed to a long-running remediator.
#[derive(Debug, Clone)]
pub(super) struct Lease {
    pub session: SessionId,
    pub ticket: Option<i64>,
    pub actor: Actor,
    /// What was started (the action, or the actor's name), for the metrics.
    pub kind: String,
    pub since: Instant,
}

/// Completions kept for a lease not yet recorded: at most this many.
const EARLY_COMPLETIONS: usize = 64;

/// The keys long-running remediators are at work on.
#[derive(Debug, Default)]
pub(super) struct Leases {
    active: HashMap<ServiceKey, Lease>,
    /// Completions that arrived before their lease was recorded (a session that finished
    /// before its remediator returned), kept until it is.
    early: Vec<Completed>,
}

impl Leases {
    pub fn session(&self, key: &ServiceKey) -> Option<SessionId> {
        self.active.get(key).map(|l| l.session.clone())
    }

    /// Records a lease; returns its completion if it already arrived.
    pub fn grant(&mut self, key: ServiceKey, lease: Lease) -> Option<Completed> {
        let early = self
            .early
            .iter()
            .position(|c| c.key == key && c.session == lease.session)
            .map(|i| self.early.remove(i));
        self.active.insert(key, lease);
        early
    }

    /// Ends the lease a completion is for; keeps the completion if its lease is not recorded
    /// yet. `None`: nothing to do now.
    fn release(&mut self, done: Completed) -> Option<(Completed, Lease)> {
        match self.active.get(&done.key) {
            Some(l) if l.session == done.session => {
                let lease = self.active.remove(&done.key)?;
                Some((done, lease))
            }
            _ => {
                if self.early.len() >= EARLY_COMPLETIONS {
                    self.early.remove(0);
                }
                self.early.push(done);
                None
            }
        }
    }

    /// Removes and returns the leases held longer than `timeout`.
    fn expire(&mut self, now: Instant, timeout: Duration) -> Vec<(ServiceKey, Lease)> {
        let over: Vec<ServiceKey> = self
            .active
            .iter()
            .filter(|(_, l)| now.saturating_duration_since(l.since) >= timeout)
            .map(|(k, _)| k.clone())
            .collect();
        over.into_iter()
            .filter_map(|k| self.active.remove(&k).map(|l| (k, l)))
            .collect()
    }
}

/// What the loop, the workers and the check recorder share.
pub(super) struct Shared {
    pub actions: Actions,
    /// The observed containers (see [`crate::docker::store`]).
    pub store: Store,
    /// The store's writer, until `run` hands it to the watcher (`run --once` lists with it).
    writer: Mutex<Option<Writer>>,
    /// What the manifests adopt, for the watcher (which lists again when it changes).
    adoption: tokio::sync::watch::Sender<Arc<Adoption>>,
    desired: RwLock<Arc<DesiredState>>,
    pub queue: WorkQueue<ServiceKey>,
    /// Each key's repair budget as last saved (the store is the truth when there is one).
    pub budgets: Mutex<HashMap<ServiceKey, RepairBudget>>,
    /// Engine time of the earliest event not yet looked at, per key.
    pub pending_events: Mutex<HashMap<ServiceKey, SystemTime>>,
    pub metrics: Arc<Metrics>,
    pub config: ControllerConfig,
    pub journal: Option<Journal>,
    /// Restarts asked for by failing checks with `policy: restart`, per service.
    pub check_restarts: Mutex<HashMap<ServiceKey, CheckRestart>>,
    /// When a check last had a service restarted, so the next one waits for a fresh verdict.
    pub check_restarted_at: Mutex<HashMap<ServiceKey, Instant>>,
    /// Keys a long-running remediator is at work on.
    pub leases: Mutex<Leases>,
    /// When each service was last seen paused or unpaused by the controller: healthcheck
    /// verdicts from probes begun before then are stale.
    pub paused_at: Mutex<HashMap<ServiceKey, chrono::DateTime<chrono::Utc>>>,
    /// Why the quorum gate holds each key's action back (noted on its ticket once per reason).
    pub gated: Mutex<HashMap<ServiceKey, String>>,
    /// Services whose escalation this process has already told the log about (an ERROR when
    /// it escalated a ticket, a WARN for one it found escalated): once each, not per look.
    pub escalations_told: Mutex<std::collections::HashSet<ServiceKey>>,
    /// The dependency each key waits for before its container may start (logged once per
    /// wait).
    pub waiting_on: Mutex<HashMap<ServiceKey, String>>,
    /// The container and start time each key's last look saw (a start the controller did
    /// not make and no look saw stopping is a stop between looks).
    pub last_runs: Mutex<HashMap<ServiceKey, SeenRun>>,
    /// The adopted container recorded for each key by this process (see
    /// [`crate::tickets::Adoption`]), so the record is written once per container.
    pub adopted: Mutex<HashMap<ServiceKey, String>>,
    /// What the controller has taken down and not yet seen live again (the gate's state).
    pub disruptions: Disruptions,
    /// The last verdict of each check, for telling when a member is live again.
    pub check_views: Arc<CheckViews>,
    builtin: Arc<BuiltIn>,
    /// Remediators for policies other than `restart` (the agent).
    remediators: Vec<(Policy, Arc<dyn Remediator>)>,
    pub completions: Completions,
    completions_rx: Mutex<Option<mpsc::UnboundedReceiver<Completed>>>,
    /// Signalled by `set_desired`: the loop closes the tickets of what was removed.
    desired_changed: tokio::sync::Notify,
    /// The first pass and the resync under way, for their timings.
    passes: Mutex<Passes<ServiceKey>>,
    /// The store revision each quiet, clean key had at its last reconcile, so a resync need
    /// not reconcile it while the store shows it unchanged.
    pub quiet: Mutex<Quiet>,
    /// The effect each key's last action must show in the store before it is read again
    /// (see [`super::expect`]).
    pub expectations: Mutex<HashMap<ServiceKey, super::expect::Expectation>>,
}

/// Drops the series of checks (and of clusters' observability) that `before` declared and
/// `after` does not: a removed check must not keep an alert firing.
fn forget_check_series(metrics: &Metrics, before: &DesiredState, after: &DesiredState) {
    for cluster in &before.clusters {
        let now = after.cluster(&cluster.name);
        for check in &cluster.checks {
            if now.is_some_and(|c| c.check(&check.name).is_some()) {
                continue;
            }
            let series = vec![
                ("cluster", cluster.name.clone()),
                ("check", check.name.clone()),
            ];
            metrics.check_failing.remove(&series);
            metrics.check_no_data.remove(&series);
        }
        if now.is_none_or(|c| c.checks.is_empty()) {
            metrics
                .observability_up
                .remove(&vec![("cluster", cluster.name.clone())]);
        }
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Writes the quorum gate's changed state to the ticket store (see
    /// [`super::disruption`]). An observer stores nothing: the gate is the acting
    /// controller's. A cluster whose write fails stays dirty for the next call.
    pub async fn persist_gate(&self) -> Result<(), crate::tickets::TicketError> {
        let (now, wall) = (Instant::now(), chrono::Utc::now());
        let dirty = self.disruptions.dirty(now, wall);
        let Some(journal) = self.journal.as_ref().filter(|_| !self.config.observe_only) else {
            return Ok(());
        };
        let mut first_error = None;
        for (cluster, state) in dirty {
            if let Err(e) = journal.save_gate(&cluster, state).await {
                self.disruptions.mark_dirty(&cluster);
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Takes back the quorum gate's state a controller before this one stored.
    async fn restore_gate(&self) {
        let Some(journal) = &self.journal else {
            return;
        };
        match journal.load_gates().await {
            Ok(states) => {
                let under_way: usize = states.iter().map(|(_, s)| s.under_way.len()).sum();
                if under_way > 0 {
                    info!(
                        members = under_way,
                        "resuming the quorum gate: {under_way} member(s) taken down by the last run are still under way"
                    );
                }
                self.disruptions
                    .restore(states, Instant::now(), chrono::Utc::now());
            }
            // Nothing under way is what a first start has too; the gate then judges from what
            // runs and what is live, as it always also does.
            Err(e) => {
                error!(error = %e, "cannot read the quorum gate's stored state; starting with nothing under way")
            }
        }
    }

    /// Why the observed store cannot be read for `key` yet, if it cannot: a look at one of its
    /// containers is under way, or the store was listed with another adoption set than the
    /// manifests' current one.
    pub fn store_behind(&self, key: &ServiceKey) -> Option<String> {
        if self.store.adoption() != self.adoption.borrow().generation {
            return Some("the watcher is listing the engine again for the changed adopt".into());
        }
        if !self.store.fresh(key) {
            return Some("the watcher is looking at its container after an event".into());
        }
        let mut expectations = lock(&self.expectations);
        let expectation = expectations.get(key)?;
        if expectation.met(self.store.get(key).as_ref()) {
            expectations.remove(key);
            return None;
        }
        if expectation.expired(Instant::now()) {
            debug!(service = %key, "the store never showed the last action's effect; reading it as it is");
            expectations.remove(key);
            return None;
        }
        Some("the engine has not yet shown the effect of the controller's last action".into())
    }

    pub fn desired(&self) -> Arc<DesiredState> {
        self.desired
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Who serves a policy: the built-in executor for `restart`, a registered remediator
    /// otherwise (none: the drift is only observed).
    /// Whether something is registered for `policy`, available or not.
    pub fn registered(&self, policy: Policy) -> bool {
        self.registered_remediator(policy).is_some()
    }

    /// What is registered for `policy`, available or not.
    pub fn registered_remediator(&self, policy: Policy) -> Option<Arc<dyn Remediator>> {
        self.remediators
            .iter()
            .find(|(p, _)| *p == policy)
            .map(|(_, r)| r.clone())
    }

    pub fn remediator(&self, policy: Policy) -> Option<Arc<dyn Remediator>> {
        if self.config.observe_only {
            return None;
        }
        match policy {
            Policy::Restart => Some(self.builtin.clone()),
            Policy::Observe => None,
            other => self
                .remediators
                .iter()
                .find(|(p, r)| *p == other && r.available())
                .map(|(_, r)| r.clone()),
        }
    }
}

/// A container a look saw running: its id, and when it started.
pub type SeenRun = (String, Option<chrono::DateTime<chrono::Utc>>);

/// Builds a [`Controller`]; everything but the engine and the desired state is optional.
#[must_use]
pub struct ControllerBuilder {
    docker: Docker,
    desired: DesiredState,
    metrics: Arc<Metrics>,
    config: ControllerConfig,
    journal: Option<Journal>,
    remediators: Vec<(Policy, Arc<dyn Remediator>)>,
    store: Option<Writer>,
}

impl ControllerBuilder {
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn config(mut self, config: ControllerConfig) -> Self {
        self.config = config;
        self
    }

    /// The observed store the watcher fills, by its writer (its readers may be serving
    /// `/healthz` before the controller is built).
    pub fn store(mut self, writer: Writer) -> Self {
        self.store = Some(writer);
        self
    }

    /// The ticket journal; without one (for `plan`), nothing is remembered across
    /// reconciles but memory.
    pub fn journal(mut self, journal: Journal) -> Self {
        self.journal = Some(journal);
        self
    }

    /// Who remediates drifts whose policy is `policy` (`restart` is always the built-in
    /// executor; `observe` never remediates).
    pub fn remediator(mut self, policy: Policy, remediator: Arc<dyn Remediator>) -> Self {
        self.remediators.retain(|(p, _)| *p != policy);
        self.remediators.push((policy, remediator));
        self
    }

    pub fn build(self) -> Controller {
        let actions = Actions::new(self.docker, self.config.limits.clone());
        let (completions, completions_rx) = mpsc::unbounded_channel();
        let writer = self.store.unwrap_or_default();
        let adoption = Adoption {
            generation: 0,
            names: adoptable(&self.desired),
        };
        Controller {
            shared: Arc::new(Shared {
                builtin: Arc::new(BuiltIn::new(Arc::new(actions.clone()))),
                actions,
                store: writer.reader(),
                writer: Mutex::new(Some(writer)),
                adoption: tokio::sync::watch::Sender::new(Arc::new(adoption)),
                desired: RwLock::new(Arc::new(self.desired)),
                queue: WorkQueue::new(),
                budgets: Mutex::new(HashMap::new()),
                pending_events: Mutex::new(HashMap::new()),
                metrics: self.metrics,
                config: self.config,
                journal: self.journal,
                check_restarts: Mutex::new(HashMap::new()),
                check_restarted_at: Mutex::new(HashMap::new()),
                leases: Mutex::new(Leases::default()),
                paused_at: Mutex::new(HashMap::new()),
                gated: Mutex::new(HashMap::new()),
                escalations_told: Mutex::new(std::collections::HashSet::new()),
                waiting_on: Mutex::new(HashMap::new()),
                last_runs: Mutex::new(HashMap::new()),
                adopted: Mutex::new(HashMap::new()),
                disruptions: Disruptions::default(),
                check_views: Arc::default(),
                remediators: self.remediators,
                completions,
                completions_rx: Mutex::new(Some(completions_rx)),
                desired_changed: tokio::sync::Notify::new(),
                passes: Mutex::new(Passes::new()),
                quiet: Mutex::new(Quiet::default()),
                expectations: Mutex::new(HashMap::new()),
            }),
        }
    }
}

/// Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Controller {
    shared: Arc<Shared>,
}

impl Controller {
    pub fn builder(docker: Docker, desired: DesiredState) -> ControllerBuilder {
        ControllerBuilder {
            docker,
            desired,
            metrics: Arc::new(Metrics::new()),
            config: ControllerConfig::default(),
            journal: None,
            remediators: Vec::new(),
            store: None,
        }
    }

    /// The observed store (read only).
    pub fn store(&self) -> Store {
        self.shared.store.clone()
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    pub fn desired(&self) -> Arc<DesiredState> {
        self.shared.desired()
    }

    /// The services of `cluster` this controller has taken down and not yet seen live again:
    /// what the agent's proxy, in this process, counts as under way besides its own.
    pub fn under_way(&self, cluster: &str) -> std::collections::BTreeSet<String> {
        self.shared.disruptions.under_way(cluster)
    }

    /// Swaps in a new desired state (already validated) and looks at every key again.
    pub fn set_desired(&self, desired: DesiredState) {
        let declared = |k: &ServiceKey| {
            desired
                .cluster(&k.cluster)
                .is_some_and(|c| c.service(&k.service).is_some())
        };
        let shared = &self.shared;
        {
            let mut budgets = lock(&shared.budgets);
            budgets.retain(|k, _| declared(k));
            let escalated = budgets.values().filter(|b| b.escalated).count();
            shared.metrics.escalated.set(escalated as i64);
        }
        lock(&shared.check_restarts).retain(|k, r| {
            declared(k)
                && desired
                    .cluster(&k.cluster)
                    .is_some_and(|c| c.check(&r.check).is_some())
        });
        forget_check_series(&shared.metrics, &self.desired(), &desired);
        lock(&shared.check_restarted_at).retain(|k, _| declared(k));
        lock(&shared.leases).active.retain(|k, _| declared(k));
        lock(&shared.paused_at).retain(|k, _| declared(k));
        lock(&shared.gated).retain(|k, _| declared(k));
        lock(&shared.adopted).retain(|k, _| declared(k));
        lock(&shared.escalations_told).retain(|k| declared(k));
        lock(&shared.waiting_on).retain(|k, _| declared(k));
        lock(&shared.expectations).retain(|k, _| declared(k));
        lock(&shared.last_runs).retain(|k, _| declared(k));
        shared.disruptions.retain(declared);
        let done = lock(&shared.passes).retain(declared, std::time::Instant::now());
        self.passes_done(done);
        // A changed adoption set is listed again by the watcher; until then the store says
        // which set it was listed with, and the reconciles of the keys wait for it.
        let names = adoptable(&desired);
        shared.adoption.send_if_modified(|current| {
            if current.names == names {
                return false;
            }
            *current = Arc::new(Adoption {
                generation: current.generation + 1,
                names,
            });
            true
        });
        lock(&shared.quiet).clear();
        *shared.desired.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(desired);
        shared.desired_changed.notify_one();
        self.enqueue_all(Why::Manifest);
    }

    /// Closes the tickets of services, checks and clusters no longer declared.
    async fn close_removed(&self) {
        let Some(journal) = &self.shared.journal else {
            return;
        };
        match super::removed::close_removed(journal, &self.desired()).await {
            Ok(0) => {}
            Ok(n) => info!(
                tickets = n,
                "closed the tickets of what the manifests no longer declare"
            ),
            Err(e) => {
                error!(error = %e, "cannot close the tickets of what was removed; will try at the next change")
            }
        }
    }

    fn keys(&self) -> Vec<ServiceKey> {
        self.desired()
            .clusters
            .iter()
            .flat_map(|c| c.services.iter().map(|s| ServiceKey::new(&c.name, &s.name)))
            .collect()
    }

    fn enqueue(&self, key: ServiceKey, why: Why) {
        self.shared.queue.add_why(key, why);
        self.shared
            .metrics
            .queue_depth
            .set(self.shared.queue.len() as i64);
    }

    fn enqueue_all(&self, why: Why) {
        for key in self.keys() {
            self.shared.queue.add_why(key, why);
        }
        self.shared
            .metrics
            .queue_depth
            .set(self.shared.queue.len() as i64);
    }

    /// A resync: the keys the store shows unchanged since their last clean, quiet
    /// reconcile count as looked at; the rest are reconciled (see [`super::resync`]).
    fn resync(&self) {
        let shared = &self.shared;
        let plan = lock(&shared.quiet).plan(self.keys(), |k| shared.store.revision(k));
        debug!(
            unchanged = plan.unchanged.len(),
            look = plan.look.len(),
            "resync: {} of {} services unchanged in the store since their last clean look",
            plan.unchanged.len(),
            plan.unchanged.len() + plan.look.len()
        );
        for key in plan.look {
            shared.queue.add_why(key, Why::Resync);
        }
        shared.metrics.queue_depth.set(shared.queue.len() as i64);
        shared
            .metrics
            .resync_unchanged
            .inc_by(plan.unchanged.len() as u64);
        // Passes time by the process's clock (`std`), as `begin_pass` began it.
        let now = std::time::Instant::now();
        let mut passes = lock(&shared.passes);
        let done: Vec<Finished> = plan
            .unchanged
            .iter()
            .flat_map(|key| passes.reconciled(key, now, now))
            .collect();
        drop(passes);
        self.passes_done(done);
    }

    /// Begins timing a full pass over every key now declared (enqueue them right after).
    fn begin_pass(&self, kind: PassKind) {
        let begun = lock(&self.shared.passes).begin(kind, self.keys(), std::time::Instant::now());
        if let Err(done) = begun {
            self.passes_done(vec![done]);
        }
    }

    /// Reports the passes that are done: the first one's time since the process started
    /// (`operator_first_reconcile_seconds` and a log line), each resync's duration
    /// (`operator_resync_seconds`).
    fn passes_done(&self, done: Vec<Finished>) {
        let metrics = &self.shared.metrics;
        for pass in done {
            match pass.kind {
                PassKind::First => {
                    let since_start = crate::metrics::process_start().elapsed();
                    metrics.first_reconcile.set(since_start.as_secs_f64());
                    info!(
                        services = pass.keys,
                        removed = pass.removed,
                        since_start_ms = since_start.as_millis() as u64,
                        pass_ms = pass.took.as_millis() as u64,
                        "first full reconcile done in {} ms ({} service{})",
                        since_start.as_millis(),
                        pass.keys,
                        if pass.keys == 1 { "" } else { "s" }
                    );
                }
                PassKind::Resync => {
                    metrics.resync_seconds.observe(pass.took.as_secs_f64());
                    debug!(
                        services = pass.keys,
                        pass_ms = pass.took.as_millis() as u64,
                        "resync pass done"
                    );
                }
            }
        }
    }

    /// Runs the loop until `cancel` fires, then finishes in-flight reconciles.
    pub async fn run(&self, cancel: CancellationToken) -> Result<(), ControllerError> {
        let shared = &self.shared;
        let mut completions = lock(&shared.completions_rx)
            .take()
            .ok_or(ControllerError::AlreadyRunning)?;
        let writer = lock(&shared.writer)
            .take()
            .ok_or(ControllerError::AlreadyRunning)?;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let watcher = Watcher::new(
            shared.actions.docker().clone(),
            writer,
            shared.adoption.subscribe(),
            tx,
            shared.metrics.clone(),
            shared.config.relist,
        );
        let watch_cancel = cancel.child_token();
        let watcher_task = tokio::spawn(watcher.run(watch_cancel.clone()));

        // Until the first full list is in, nothing is reconciled; the watcher retries the
        // engine with backoff meanwhile and /healthz says "not ready". Bounded only by a stop.
        let became_ready = tokio::select! {
            _ = cancel.cancelled() => false,
            _ = shared.store.wait_ready() => true,
        };
        if !became_ready {
            watch_cancel.cancel();
            let _ = watcher_task.await;
            return Ok(());
        }
        info!(services = self.keys().len(), "controller ready");
        if let Some(journal) = &shared.journal {
            match journal.close_interrupted_actions().await {
                Ok(0) => {}
                Ok(n) => warn!(
                    tickets = n,
                    "actions interrupted by the last stop were marked so; re-checking"
                ),
                Err(e) => error!(error = %e, "cannot close interrupted actions"),
            }
            journal.refresh_gauges().await;
        }
        shared.restore_gate().await;
        // Whatever was removed while the controller was stopped.
        self.close_removed().await;
        self.begin_pass(PassKind::First);
        self.enqueue_all(Why::Startup);

        let (repairs_tx, mut repairs_rx) = mpsc::unbounded_channel();
        let checks_cancel = cancel.child_token();
        let checks_task = match &shared.journal {
            Some(journal) => {
                let recorder = CheckRecorder::new(
                    journal.clone(),
                    shared.metrics.clone(),
                    shared.store.clone(),
                    Some(shared.actions.clone()),
                    repairs_tx,
                    shared.check_views.clone(),
                );
                let this = self.clone();
                let stop = checks_cancel.clone();
                Some(tokio::spawn(async move {
                    recorder.run(move || this.desired(), stop).await
                }))
            }
            None => None,
        };
        let worker_cancel = CancellationToken::new();
        let workers = {
            let this = self.clone();
            let stop = worker_cancel.clone();
            tokio::spawn(async move { this.work(stop).await })
        };

        let mut resync = tokio::time::interval(shared.config.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.tick().await; // the first tick is immediate; everything was just enqueued
        // Another process (a person's `tickets hold|retry|resolve`) changed the store: look
        // again at once rather than at the next resync.
        let mut store_poll = tokio::time::interval(STORE_POLL);
        let mut store_version = None;
        let mut watcher_died = false;
        loop {
            tokio::select! {
                // A requested stop wins over everything ready at the same time, in particular
                // over the watcher's channel closing because the stop cancelled it too.
                biased;
                _ = cancel.cancelled() => break,
                event = rx.recv() => match event {
                    Some(WatchEvent::Relisted) => self.enqueue_all(Why::Relist),
                    Some(WatchEvent::Changed { key, at }) => {
                        lock(&shared.pending_events).entry(key.clone()).or_insert(at);
                        self.enqueue(key, Why::Event);
                    }
                    // The watcher only ends when cancelled; anything else is a bug to surface,
                    // not a quiet exit 0.
                    None if cancel.is_cancelled() => break,
                    None => {
                        error!("the Docker watcher stopped unexpectedly; shutting down");
                        watcher_died = true;
                        break;
                    }
                },
                Some(done) = completions.recv() => self.complete(done).await,
                Some(message) = repairs_rx.recv() => self.check_restart_message(message),
                _ = shared.desired_changed.notified() => self.close_removed().await,
                _ = resync.tick() => {
                    debug!("periodic resync");
                    self.expire_leases().await;
                    self.begin_pass(PassKind::Resync);
                    self.resync();
                }
                _ = store_poll.tick(), if shared.journal.is_some() => {
                    let Some(journal) = &shared.journal else { continue };
                    if let Ok(version) = journal.data_version().await {
                        if store_version.is_some_and(|v| v != version) {
                            debug!("ticket store changed by another process");
                            self.enqueue_all(Why::Tickets);
                        }
                        store_version = Some(version);
                    }
                }
            }
        }

        info!("shutting down: finishing in-flight repairs");
        worker_cancel.cancel();
        shared.queue.close();
        let grace = shared.config.shutdown_grace;
        if tokio::time::timeout(grace, workers).await.is_err() {
            warn!(
                grace_s = grace.as_secs(),
                "in-flight repairs did not finish in time; leaving them"
            );
        }
        checks_cancel.cancel();
        if let Some(task) = checks_task {
            let _ = task.await;
        }
        watch_cancel.cancel();
        let _ = watcher_task.await;
        if watcher_died {
            return Err(ControllerError::WatcherStopped);
        }
        Ok(())
    }

    /// Reconciles due keys until `stop`, each in a task of its own, at most `workers` at once
    /// (see [`WorkQueue::run_each`]), so a repair waiting on the engine never holds up
    /// another service's.
    async fn work(&self, stop: CancellationToken) {
        let shared = &self.shared;
        let run = |key: ServiceKey, why: super::queue::Why| {
            let this = self.clone();
            async move {
                use tracing::Instrument as _;
                let shared = &this.shared;
                let span = tracing::info_span!("reconcile", service = %key, why = why.as_str());
                // Not raced against `stop`: a repair that started is allowed to finish. A
                // panic is looked at again (the queue releases the key either way).
                let run = std::panic::AssertUnwindSafe(this.reconcile(&key).instrument(span))
                    .catch_unwind();
                if run.await.is_err() {
                    error!(service = %key, "reconcile panicked; the key will be looked at again");
                    shared
                        .queue
                        .schedule(key.clone(), Instant::now() + shared.config.observe_retry);
                }
                shared.metrics.queue_depth.set(shared.queue.len() as i64);
            }
        };
        shared
            .queue
            .run_each(shared.config.workers, &stop, run)
            .await;
    }

    /// A long-running remediation reported back: record its result in its actor's name,
    /// release the lease, and re-check the key (only that re-check may resolve its ticket).
    async fn complete(&self, done: Completed) {
        let Some((done, lease)) = lock(&self.shared.leases).release(done) else {
            debug!("a completion arrived before its lease was recorded; kept until it is");
            return;
        };
        self.finish_lease(done.key, lease, done.session, done.result)
            .await;
    }

    /// Leases held past `lease_timeout` end as failed: the remediator is expected to stop its
    /// own session by then; the controller stops waiting and looks again.
    async fn expire_leases(&self) {
        let timeout = self.shared.config.lease_timeout;
        let expired = lock(&self.shared.leases).expire(Instant::now(), timeout);
        for (key, lease) in expired {
            let session = lease.session.clone();
            let policy = match lease.actor {
                Actor::Agent => Some(Policy::Agent),
                _ => None,
            };
            if let Some(remediator) = policy.and_then(|p| self.shared.registered_remediator(p)) {
                remediator.withdraw(&session).await;
            }
            let reason = format!(
                "did not report back within the lease timeout ({} s)",
                timeout.as_secs()
            );
            let result = Err(RemediationError::Session {
                session: session.clone(),
                reason,
            });
            self.finish_lease(key, lease, session, result).await;
        }
    }

    async fn finish_lease(
        &self,
        key: ServiceKey,
        lease: Lease,
        session: SessionId,
        result: Result<(), RemediationError>,
    ) {
        let shared = &self.shared;
        let ok = result.is_ok();
        shared
            .metrics
            .action(&lease.kind, if ok { "ok" } else { "error" });
        let entry = match &result {
            Ok(()) => serde_json::json!({"action": lease.kind, "result": "ok", "session": session}),
            Err(e) => {
                serde_json::json!({"action": lease.kind, "result": "error", "error": e.to_string(), "session": session})
            }
        };
        match &result {
            Ok(()) => {
                info!(service = %key, %session, actor = %lease.actor, "remediation reported done; re-checking")
            }
            Err(e) => {
                warn!(service = %key, %session, actor = %lease.actor, error = %e, "remediation failed; re-checking")
            }
        }
        if let (Some(journal), Some(id)) = (&shared.journal, lease.ticket)
            && let Err(e) = journal.finish_action(id, lease.actor, ok, entry).await
        {
            error!(service = %key, error = %e, "cannot record the remediation's result");
        }
        self.enqueue(key, Why::Completion);
    }

    fn check_restart_message(&self, message: CheckRestartMessage) {
        let shared = &self.shared;
        match message {
            CheckRestartMessage::Request { key, repair } => {
                lock(&shared.check_restarts).insert(key.clone(), repair);
                self.enqueue(key, Why::Check);
            }
            CheckRestartMessage::Withdraw {
                cluster,
                check,
                keep,
            } => withdraw(&shared.check_restarts, &cluster, check.as_deref(), &keep),
        }
    }

    /// One pass over every service in dependency order, without the watcher: list, then
    /// reconcile each key once. For `operator run --once`.
    pub async fn reconcile_once(&self) -> Result<Vec<(ServiceKey, Outcome)>, ControllerError> {
        let shared = &self.shared;
        shared.restore_gate().await;
        let adoption = shared.adoption.borrow().clone();
        let listed = list_owned(shared.actions.docker(), &adoption.names)
            .await
            .map_err(ControllerError::List)?;
        {
            // No watcher runs in this mode: this list is the store's only writer.
            let writer = lock(&shared.writer);
            let writer = writer.as_ref().ok_or(ControllerError::AlreadyRunning)?;
            writer.replace_all(listed, adoption.generation);
            writer.set_connected(true);
        }
        let desired = self.desired();
        let mut outcomes = Vec::new();
        for cluster in &desired.clusters {
            for service in cluster.topo_order() {
                let key = ServiceKey::new(&cluster.name, &service.name);
                let outcome = self.reconcile(&key).await;
                if matches!(
                    outcome,
                    Outcome::Acted { .. }
                        | Outcome::Failed { .. }
                        | Outcome::Remediated { .. }
                        | Outcome::RemediationFailed { .. }
                ) {
                    // What it did, for the services that depend on it and for its last look.
                    self.refresh(&key).await;
                }
                outcomes.push((key, outcome));
            }
        }
        // A repair is believed only after it settled: wait (bounded by the settle time and
        // a few healthcheck rounds) and take a last look, acting on nothing.
        let pending = |o: &Outcome| matches!(o, Outcome::Acted { .. } | Outcome::Settling);
        if outcomes.iter().any(|(_, o)| pending(o)) {
            let deadline = Instant::now() + shared.config.settle + ONCE_HEALTH_WAIT;
            tokio::time::sleep(shared.config.settle).await;
            for (key, outcome) in outcomes.iter_mut().filter(|(_, o)| pending(o)) {
                let last = loop {
                    self.refresh(key).await;
                    let look = super::service::last_look(shared, key).await;
                    if look != Outcome::Settling || Instant::now() >= deadline {
                        break look;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                };
                // Keep "repaired: X" for a repair that held; anything else is the truth now.
                if last != Outcome::Clean {
                    *outcome = last;
                } else if *outcome == Outcome::Settling {
                    *outcome = Outcome::Clean;
                }
            }
        }
        Ok(outcomes)
    }

    /// Looks at `key`'s container in the engine and puts what it shows in the store (`run
    /// --once`, whose pass is the store's writer: no watcher runs). A failed look leaves the
    /// store as it was; the last look then judges what it last knew.
    async fn refresh(&self, key: &ServiceKey) {
        let shared = &self.shared;
        let desired = self.desired();
        let Some((cluster, service)) = desired
            .cluster(&key.cluster)
            .and_then(|c| Some((c, c.service(&key.service)?)))
        else {
            return;
        };
        let Ok((container, _)) =
            super::service::find_container(&shared.actions, cluster, service).await
        else {
            return;
        };
        if let Some(writer) = lock(&shared.writer).as_ref() {
            writer.set_key(key, container);
        }
    }

    /// Reconciles one key (see [`super::service`]), with its metrics and log line.
    pub async fn reconcile(&self, key: &ServiceKey) -> Outcome {
        let started = std::time::Instant::now();
        let outcome = super::service::reconcile(&self.shared, key).await;
        let ended = std::time::Instant::now();
        self.shared
            .metrics
            .reconciled(outcome.label(), ended - started);
        let done = lock(&self.shared.passes).reconciled(key, started, ended);
        self.passes_done(done);
        match &outcome {
            Outcome::Failed { action, error } => {
                warn!(service = %key, %action, %error, "repair failed");
            }
            Outcome::RemediationFailed { actor, error } => {
                warn!(service = %key, %actor, %error, "remediation failed");
            }
            Outcome::Unknown { error } => {
                warn!(service = %key, %error, "could not observe; nothing concluded");
            }
            Outcome::Unrecorded { error } => {
                warn!(service = %key, %error, "cannot record in the ticket store; not acting");
            }
            other => debug!(service = %key, outcome = other.label(), "reconciled"),
        }
        outcome
    }
}

/// Withdraws check repairs of a cluster: all of them (`check` none), or one check's except
/// on the services in `keep`.
fn withdraw(
    repairs: &Mutex<HashMap<ServiceKey, CheckRestart>>,
    cluster: &str,
    check: Option<&str>,
    keep: &HashSet<String>,
) {
    lock(repairs).retain(|key, r| {
        key.cluster != cluster
            || check.is_some_and(|c| c != r.check)
            || (check.is_some() && keep.contains(&key.service))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(session: &str) -> Lease {
        Lease {
            session: SessionId(session.into()),
            ticket: Some(1),
            actor: Actor::Agent,
            kind: "agent".into(),
            since: Instant::now(),
        }
    }

    fn done(key: &ServiceKey, session: &str) -> Completed {
        Completed {
            key: key.clone(),
            ticket: Some(1),
            session: SessionId(session.into()),
            result: Ok(()),
        }
    }

    #[test]
    fn a_completion_ends_only_its_own_sessions_lease() {
        let key = ServiceKey::new("c", "s");
        let mut leases = Leases::default();
        assert!(leases.grant(key.clone(), lease("s1")).is_none());
        assert!(leases.release(done(&key, "other")).is_none());
        assert_eq!(leases.session(&key), Some(SessionId("s1".into())));
        let (_, ended) = leases.release(done(&key, "s1")).expect("its lease");
        assert_eq!(ended.session, SessionId("s1".into()));
        assert_eq!(leases.session(&key), None);
    }

    #[test]
    fn a_completion_that_beats_its_lease_is_handed_back_when_the_lease_is_granted() {
        let key = ServiceKey::new("c", "s");
        let mut leases = Leases::default();
        assert!(leases.release(done(&key, "fast")).is_none(), "no lease yet");
        let early = leases.grant(key.clone(), lease("fast")).expect("kept");
        assert_eq!(early.session, SessionId("fast".into()));
        assert!(leases.early.is_empty());
        for i in 0..(EARLY_COMPLETIONS + 10) {
            leases.release(done(&ServiceKey::new("c", "x"), &format!("stray-{i}")));
        }
        assert_eq!(leases.early.len(), EARLY_COMPLETIONS, "bounded");
    }

    #[tokio::test(start_paused = true)]
    async fn leases_expire_after_their_timeout() {
        let key = ServiceKey::new("c", "s");
        let mut leases = Leases::default();
        leases.grant(key.clone(), lease("s1"));
        let timeout = Duration::from_secs(60);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(leases.expire(Instant::now(), timeout).is_empty());
        tokio::time::advance(Duration::from_secs(1)).await;
        let expired = leases.expire(Instant::now(), timeout);
        assert_eq!(expired.len(), 1);
        assert_eq!(leases.session(&key), None);
    }
}
