//! The controller's side of health checks: turn each evaluation round into tickets.
//!
//! # Guarantees
//! - While a cluster's Prometheus cannot be asked, it has one `observability-lost` ticket
//!   and no check ticket of the cluster is opened, bumped or resolved.
//! - While a service's container is down (missing, stopped, paused), its failing checks are
//!   noted on the container's ticket instead of opening tickets of their own.
//! - A check ticket resolves only when a fresh, successful evaluation shows its target no
//!   longer failing (not merely "no data").

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::docker::actions::Actions;
use crate::docker::{ContainerStatus, ServiceKey, Store as Observed};
use crate::drift::{DriftKind, Fingerprint, Target};
use crate::health::{CheckState, ClusterHealth, Monitor, Observability};
use crate::manifest::{DesiredState, Policy};
use crate::metrics::Metrics;
use crate::tickets::{DriftSighting, EntryKind, Journal, Selector, Sighting, Ticket, TicketError};

use super::shared::lock;

/// The shortest evaluation interval among clusters with checks (default 5 s).
fn round_interval(desired: &DesiredState) -> Duration {
    desired
        .clusters
        .iter()
        .filter(|c| !c.checks.is_empty())
        .map(|c| c.prometheus.interval)
        .min()
        .unwrap_or(Duration::from_secs(5))
}

fn labels(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
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

/// A check's restart requests, as messages to the controller loop (which owns the queue).
#[derive(Debug)]
pub(super) enum CheckRestartMessage {
    /// Restart this service for this check (under the service's budget).
    Request {
        key: ServiceKey,
        repair: CheckRestart,
    },
    /// Withdraw the requests of a cluster: all of them (`check` none), or one check's except
    /// on the services in `keep`.
    Withdraw {
        cluster: String,
        check: Option<String>,
        keep: HashSet<String>,
    },
}

/// The last round's verdict of each check, as the quorum gate reads it to tell when a member
/// the controller took down is live again: which services the check failed on or was about
/// to fail on, and when that round began. Tickets say the same only after a check's `for`.
#[derive(Default)]
pub(super) struct CheckViews {
    views: std::sync::Mutex<HashMap<(String, String), CheckView>>,
}

#[derive(Debug, Clone)]
struct CheckView {
    /// When the round that drew it began.
    from: Instant,
    /// A verdict (passing, pending or failing), not "no data", invalid or unknown.
    known: bool,
    /// Services it fails or is about to fail on.
    bad: HashSet<String>,
    /// It fails on the cluster as a whole (then on every member).
    bad_all: bool,
}

impl CheckViews {
    fn record(&self, health: &ClusterHealth, from: Instant) {
        if matches!(health.observability, Observability::Lost { .. }) {
            // Nothing was seen: the views stay as old as they are.
            return;
        }
        let mut views = lock(&self.views);
        for report in &health.checks {
            let v = &report.verdict;
            let targets = v.failing.iter().map(|f| &f.target).chain(v.pending.iter());
            let mut bad = HashSet::new();
            let mut bad_all = false;
            for t in targets {
                match t {
                    Some(service) => {
                        bad.insert(service.clone());
                    }
                    None => bad_all = true,
                }
            }
            let known = matches!(
                v.state,
                CheckState::Passing | CheckState::Pending | CheckState::Failing
            );
            views.insert(
                (health.cluster.clone(), report.check.clone()),
                CheckView {
                    from,
                    known,
                    bad,
                    bad_all,
                },
            );
        }
    }

    /// Whether a round begun after `since` evaluated `check` and found it passing on
    /// `service`.
    pub(super) fn passed_since(
        &self,
        cluster: &str,
        check: &str,
        service: &str,
        since: Instant,
    ) -> bool {
        lock(&self.views)
            .get(&(cluster.to_string(), check.to_string()))
            .is_some_and(|v| v.from > since && v.known && !v.bad_all && !v.bad.contains(service))
    }
}

/// Memory between rounds, for logging transitions once.
#[derive(Default)]
pub(super) struct CheckMemory {
    no_data: HashSet<(String, String)>,
    invalid: HashSet<(String, String)>,
    /// (cluster, check, service) already noted on the service's container ticket.
    attached: HashSet<(String, String, String)>,
    /// Since when each cluster's Prometheus has been unreachable.
    lost_since: HashMap<String, Instant>,
}

/// Turns each evaluation round into tickets, and asks for the restarts that failing checks
/// with `policy: restart` call for. Owns its memory; shares only the journal, the metrics
/// and a read of the observed store with the controller.
pub(super) struct CheckRecorder {
    journal: Journal,
    metrics: Arc<Metrics>,
    observed: Observed,
    /// Asks the engine itself when the store says a failing target's container runs (see
    /// `down_behind_the_cache`); `None` in unit tests, where the cache alone decides.
    engine: Option<Actions>,
    repairs: mpsc::UnboundedSender<CheckRestartMessage>,
    memory: CheckMemory,
    views: Arc<CheckViews>,
    /// When the round being applied began (`None`: unknown, as in unit tests).
    round_from: Option<Instant>,
}

/// How long Prometheus must stay unreachable before it is a ticket (verdicts freeze at
/// once): a Prometheus that is still starting up, or one slow round, is not an incident.
fn lost_grace(interval: Duration) -> Duration {
    (interval * 3).max(Duration::from_secs(5))
}

impl CheckRecorder {
    pub(super) fn new(
        journal: Journal,
        metrics: Arc<Metrics>,
        observed: Observed,
        engine: Option<Actions>,
        repairs: mpsc::UnboundedSender<CheckRestartMessage>,
        views: Arc<CheckViews>,
    ) -> Self {
        CheckRecorder {
            journal,
            metrics,
            observed,
            engine,
            repairs,
            memory: CheckMemory::default(),
            views,
            round_from: None,
        }
    }

    /// Evaluates every check on its interval until cancelled, recording the verdicts.
    pub(super) async fn run(
        mut self,
        desired_now: impl Fn() -> Arc<DesiredState>,
        cancel: CancellationToken,
    ) {
        let mut monitor = Monitor::new();
        loop {
            let desired = desired_now();
            if desired.clusters.iter().any(|c| !c.checks.is_empty()) {
                let started = std::time::Instant::now();
                let from = Instant::now();
                let health = tokio::select! {
                    _ = cancel.cancelled() => return,
                    h = monitor.round(&desired) => h,
                };
                self.metrics
                    .check_round_seconds
                    .observe(started.elapsed().as_secs_f64());
                // The manifests may have been edited during the round: record against the
                // checks declared now.
                let desired = desired_now();
                self.round_from = Some(from);
                for cluster in health {
                    if let Err(e) = self.apply(&desired, &cluster).await {
                        error!(cluster = %cluster.cluster, error = %e, "cannot record check verdicts; will try next round");
                    }
                    self.views.record(&cluster, from);
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(round_interval(&desired)) => {}
            }
        }
    }

    /// Whether the round being applied began before `service`'s container last changed
    /// state (as the observed store saw it).
    fn drawn_before_a_change(&self, cluster: &str, service: &str) -> bool {
        let Some(from) = self.round_from else {
            return false;
        };
        self.observed
            .changed_at(&ServiceKey::new(cluster, service))
            .is_some_and(|changed| changed >= from)
    }

    fn withdraw(&self, cluster: &str, check: Option<&str>, keep: HashSet<String>) {
        // The loop is gone only on shutdown, when nothing is repaired any more.
        let _ = self.repairs.send(CheckRestartMessage::Withdraw {
            cluster: cluster.to_string(),
            check: check.map(str::to_string),
            keep,
        });
    }

    fn request(&self, key: ServiceKey, repair: CheckRestart) {
        let _ = self
            .repairs
            .send(CheckRestartMessage::Request { key, repair });
    }

    /// Records one cluster's round.
    pub(super) async fn apply(
        &mut self,
        desired: &DesiredState,
        health: &ClusterHealth,
    ) -> Result<(), TicketError> {
        let metrics = self.metrics.clone();
        let cluster = health.cluster.as_str();
        let Some(spec) = desired.cluster(cluster) else {
            return Ok(());
        };
        let wall = Utc::now();
        let lost_fp = Fingerprint::drift(cluster, Target::Cluster, DriftKind::ObservabilityLost);
        match &health.observability {
            Observability::Lost { reason } => {
                metrics
                    .observability_up
                    .get_or_create(&labels(&[("cluster", cluster)]))
                    .set(0);
                // Frozen: no check ticket changes while nothing can be seen, and no repair
                // is made on an unknown.
                self.withdraw(cluster, None, HashSet::new());
                let since = *self
                    .memory
                    .lost_since
                    .entry(cluster.to_string())
                    .or_insert_with(Instant::now);
                if since.elapsed() < lost_grace(spec.prometheus.interval) {
                    return Ok(());
                }
                let (ticket, sighting) = self
                    .journal
                    .sighting(
                        DriftSighting {
                            fingerprint: lost_fp,
                            drift: DriftKind::ObservabilityLost,
                            detail: reason.clone(),
                            cooldown: Duration::from_secs(600),
                            evidence: Some(serde_json::json!({"prometheus": spec.prometheus.url})),
                        },
                        wall,
                    )
                    .await?;
                if sighting != Sighting::Seen {
                    info!(cluster, ticket = ticket.id, drift = "observability-lost", detail = %reason, "ticket {}", if sighting == Sighting::Opened { "opened" } else { "reopened" });
                    warn!(cluster, ticket = ticket.id, %reason, "observability lost: check verdicts frozen until Prometheus answers");
                }
                return Ok(());
            }
            Observability::Up => {
                self.memory.lost_since.remove(cluster);
                metrics
                    .observability_up
                    .get_or_create(&labels(&[("cluster", cluster)]))
                    .set(1);
                self.resolve(
                    Selector::Exact(lost_fp),
                    |_| true,
                    "Prometheus answers again",
                )
                .await?;
            }
            // No check needs Prometheus any more: a lost observation is moot.
            Observability::NotNeeded => {
                self.memory.lost_since.remove(cluster);
                self.resolve(
                    Selector::Exact(lost_fp),
                    |_| true,
                    "no check needs Prometheus now",
                )
                .await?;
            }
        }
        for report in &health.checks {
            let Some(check) = spec.check(&report.check) else {
                continue;
            };
            let name = report.check.as_str();
            let id = (cluster.to_string(), name.to_string());
            let verdict = &report.verdict;
            metrics
                .check_no_data
                .get_or_create(&labels(&[("cluster", cluster), ("check", name)]))
                .set(i64::from(verdict.no_data));
            metrics
                .check_failing
                .get_or_create(&labels(&[("cluster", cluster), ("check", name)]))
                .set(i64::from(verdict.state == CheckState::Failing));
            if verdict.no_data {
                if self.memory.no_data.insert(id.clone()) {
                    warn!(
                        cluster,
                        check = name,
                        "check returns no data at all: a misspelled metric or label? it cannot fire until it sees a series"
                    );
                }
            } else if self.memory.no_data.remove(&id) {
                info!(cluster, check = name, "check sees data now");
            }
            if verdict.state == CheckState::Invalid {
                self.withdraw(cluster, Some(name), HashSet::new());
                if self.memory.invalid.insert(id.clone()) {
                    error!(
                        cluster,
                        check = name,
                        error = verdict.error.as_deref(),
                        "check query is invalid; fix the manifest"
                    );
                }
                continue;
            }
            self.memory.invalid.remove(&id);
            if matches!(verdict.state, CheckState::Unknown | CheckState::NoData)
                && verdict.failing.is_empty()
            {
                // Neither healthy nor broken: leave its tickets as they are, and repair
                // nothing on it.
                self.withdraw(cluster, Some(name), HashSet::new());
                continue;
            }

            let mut still: HashSet<Fingerprint> = HashSet::new();
            for target in verdict.pending.iter() {
                still.insert(Fingerprint::check(
                    cluster,
                    Target::from_option(target.as_deref()),
                    name,
                ));
            }
            for failing in &verdict.failing {
                let target = Target::from_option(failing.target.as_deref());
                let fp = Fingerprint::check(cluster, target, name);
                still.insert(fp.clone());
                let evidence = serde_json::json!({
                    "check": name,
                    "severity": check.severity,
                    "series": failing.series,
                });
                if let Some(service) = &failing.target
                    && (self.container_down(cluster, service)
                        || self.down_behind_the_cache(cluster, service).await)
                {
                    self.attach_to_container_ticket(cluster, service, name, evidence)
                        .await?;
                    continue;
                }
                if let Some(service) = &failing.target
                    && self.drawn_before_a_change(cluster, service)
                {
                    // Drawn (at least partly) before the target's last state change: a
                    // verdict from while it was paused says nothing about it unpaused. Its
                    // ticket is neither opened, bumped nor resolved; the next round decides.
                    continue;
                }
                let detail = format!(
                    "check {name} failing: {} series, e.g. {}",
                    failing.series.len(),
                    failing
                        .series
                        .first()
                        .map(|s| format!("{:?} = {}", s.labels, s.value))
                        .unwrap_or_default()
                );
                let (ticket, sighting) = self
                    .journal
                    .sighting(
                        DriftSighting {
                            fingerprint: fp,
                            drift: DriftKind::CheckFailed,
                            detail,
                            cooldown: check.remediation.window,
                            evidence: Some(evidence),
                        },
                        wall,
                    )
                    .await?;
                if sighting != Sighting::Seen {
                    info!(cluster, check = name, target = %ticket.service, ticket = ticket.id, severity = check.severity.as_str(), "check failed: ticket {}", if sighting == Sighting::Opened { "opened" } else { "reopened" });
                }
                if matches!(check.remediation.policy, Policy::Restart | Policy::Agent)
                    && let Some(service) = &failing.target
                {
                    self.request(
                        ServiceKey::new(cluster, service),
                        CheckRestart {
                            check: name.to_string(),
                            ticket: ticket.id,
                            detail: ticket.detail.clone(),
                            settle: check.for_duration + spec.prometheus.interval * 2,
                        },
                    );
                }
            }
            // Only failing targets of a check that (still) says restart, with their container
            // up, keep their repair request.
            let failing_services: HashSet<String> =
                if matches!(check.remediation.policy, Policy::Restart | Policy::Agent) {
                    verdict
                        .failing
                        .iter()
                        .filter_map(|f| f.target.clone())
                        .filter(|service| !self.container_down(cluster, service))
                        .collect()
                } else {
                    HashSet::new()
                };
            self.withdraw(cluster, Some(name), failing_services);
            // Targets no longer failing: their tickets resolve (and their notes may be
            // attached afresh next episode).
            self.memory.attached.retain(|(c, k, service)| {
                !(c == cluster
                    && k == name
                    && !verdict
                        .failing
                        .iter()
                        .any(|f| f.target.as_deref() == Some(service.as_str())))
            });
            // Every target of this check; for a `healthy` check only the targets positively
            // seen healthy may resolve (a target whose series vanished is not healthy).
            let healthy: Option<HashSet<Target>> = verdict.healthy.as_ref().map(|targets| {
                targets
                    .iter()
                    .map(|t| Target::from_option(t.as_deref()))
                    .collect()
            });
            self.resolve(
                Selector::Checks {
                    cluster: cluster.to_string(),
                    check: Some(name.to_string()),
                },
                |t| {
                    !still.contains(&t.fingerprint)
                        && healthy.as_ref().is_none_or(|h| h.contains(t.target()))
                },
                "check passes",
            )
            .await?;
        }
        Ok(())
    }

    /// Whether the store says the service's container is not running (or absent).
    fn container_down(&self, cluster: &str, service: &str) -> bool {
        self.observed.is_connected()
            && self
                .observed
                .get(&ServiceKey::new(cluster, service))
                .is_none_or(|c| c.status != ContainerStatus::Running)
    }

    /// Whether the engine says the container is not running although the store has not
    /// heard so yet. A stopped member fails its check about as soon as its `die` event
    /// arrives; on a loaded machine the check round can win that race, and would open a
    /// check ticket beside the container's. Asked only for a failing target, so rarely.
    async fn down_behind_the_cache(&self, cluster: &str, service: &str) -> bool {
        let (Some(engine), Some(cached)) = (
            &self.engine,
            self.observed.get(&ServiceKey::new(cluster, service)),
        ) else {
            return false;
        };
        match engine.inspect(&cached.id).await {
            Ok(Some(c)) => c.state.and_then(|s| s.running) == Some(false),
            Ok(None) => true,
            // The engine cannot be asked: the store's word stands.
            Err(_) => false,
        }
    }

    async fn attach_to_container_ticket(
        &mut self,
        cluster: &str,
        service: &str,
        check: &str,
        evidence: serde_json::Value,
    ) -> Result<(), TicketError> {
        let key = (cluster.to_string(), check.to_string(), service.to_string());
        if self.memory.attached.contains(&key) {
            return Ok(());
        }
        let tickets = self
            .journal
            .unresolved(Selector::Target {
                cluster: cluster.to_string(),
                target: service.to_string(),
            })
            .await?;
        // No container ticket yet (the reconcile has not recorded it): wait, open nothing.
        let Some(ticket) = tickets.into_iter().find(|t| t.drift.is_container_down()) else {
            return Ok(());
        };
        let note = serde_json::json!({"check-failed": evidence, "note": "the service's container is down: the check is attached here, not ticketed separately"});
        self.journal.note(ticket.id, EntryKind::Note, note).await?;
        info!(
            cluster,
            service,
            check,
            ticket = ticket.id,
            "failing check attached to the container's ticket"
        );
        self.memory.attached.insert(key);
        Ok(())
    }

    /// Resolves the unresolved tickets a selector picks and `keep` accepts (after a fresh,
    /// successful check).
    async fn resolve(
        &self,
        selector: Selector,
        keep: impl Fn(&Ticket) -> bool,
        why: &'static str,
    ) -> Result<(), TicketError> {
        let mut open = self.journal.unresolved(selector).await?;
        open.retain(|t| keep(t));
        self.journal
            .resolve_rechecked(open, serde_json::json!({"result": why}), Utc::now())
            .await
    }
}

#[cfg(test)]
mod tests;
