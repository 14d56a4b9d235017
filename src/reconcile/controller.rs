//! The controller loop: watcher events, a periodic resync, ticket-store changes, check
//! repair requests and remediation completions feed a work queue; workers take one key at a
//! time and hand it to [`service::reconcile`](super::service). What a reconcile does lives
//! there and in [`decide`](super::decide); this file only runs the loop.
//!
//! # Guarantees
//! - A key is never reconciled concurrently with itself (see
//!   [`WorkQueue`](super::queue::WorkQueue)).
//! - Nothing is reconciled before the watcher's first full list is in.
//! - A long-running remediation (an agent session) never holds a worker: its key is leased
//!   until its completion arrives, then re-checked.
//! - On shutdown, in-flight reconciles finish (bounded by `shutdown_grace`); no new ones
//!   start. Sessions still running are the remediator's to stop; the next start closes
//!   their actions as interrupted.
//! - Only containers carrying the controller's labels are acted on.
//!
//! Beside it: its settings ([`super::config`]), how it is built ([`super::builder`]), what it
//! shares with the workers ([`super::shared`]), the leases of long-running remediators
//! ([`super::leases`]), what a reconcile returns ([`super::outcome`]) and `run --once`
//! ([`super::once`]).

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::docker::store::{Adoption, adoptable};
use crate::docker::watcher::{WatchEvent, Watcher};
use crate::docker::{DockerError, ServiceKey, Store};
use crate::manifest::DesiredState;
use crate::metrics::Metrics;

use super::checks::{CheckRecorder, CheckRestartMessage};
use super::outcome::Outcome;
use super::passes::{Finished, PassKind};
use super::queue::Why;
use super::shared::{Shared, lock};

/// How often the ticket store is checked for changes made by other processes.
const STORE_POLL: Duration = Duration::from_secs(1);

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

/// Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Controller {
    pub(super) shared: Arc<Shared>,
}

impl Controller {
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
        let escalated = shared.keys.prune(&desired);
        shared.metrics.escalated.set(escalated as i64);
        forget_check_series(&shared.metrics, &self.desired(), &desired);
        lock(&shared.leases).active.retain(|k, _| declared(k));
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

    pub(super) fn enqueue(&self, key: ServiceKey, why: Why) {
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
                        // Only a declared key keeps state: on a shared engine the watcher
                        // also sees other clusters' containers (their reconcile is a cheap
                        // `undeclared`).
                        if self.desired().cluster(&key.cluster).is_some_and(|c| c.service(&key.service).is_some()) {
                            shared.keys.with(&key, |state| {
                                state.pending_event.get_or_insert(at);
                            });
                        }
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
    /// (see [`WorkQueue::run_each`](super::queue::WorkQueue::run_each)), so a repair waiting on
    /// the engine never holds up another service's.
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

    fn check_restart_message(&self, message: CheckRestartMessage) {
        let shared = &self.shared;
        match message {
            CheckRestartMessage::Request { key, repair } => {
                shared
                    .keys
                    .with(&key, |state| state.check_restart = Some(repair));
                self.enqueue(key, Why::Check);
            }
            CheckRestartMessage::Withdraw {
                cluster,
                check,
                keep,
            } => shared
                .keys
                .withdraw_check_restarts(&cluster, check.as_deref(), &keep),
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
