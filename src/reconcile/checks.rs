//! The controller's side of health checks: turn each evaluation round into tickets.
//!
//! # Guarantees
//! - While a cluster's Prometheus cannot be asked, it has one `observability-lost` ticket
//!   and no check ticket of the cluster is opened, bumped or resolved.
//! - While a service's container is down (missing, stopped, paused), its failing checks are
//!   noted on the container's ticket instead of opening tickets of their own.
//! - A check ticket resolves only when a fresh, successful evaluation shows its target no
//!   longer failing (not merely "no data").

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::docker::{ContainerStatus, ServiceKey};
use crate::health::{CheckState, ClusterHealth, Monitor, Observability};
use crate::manifest::{DesiredState, Policy};
use crate::tickets::{
    CLUSTER_TARGET, Cause, DriftSighting, EntryKind, Sighting, Status, Store, TicketError,
    check_fingerprint, fingerprint, is_container_down, like_escape,
};

use super::controller::{CheckRepair, Controller, blocking};
use super::diff::DriftKind;

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

/// Which unresolved tickets a resolution is about.
enum Lookup {
    Exact(String),
    /// Fingerprints matching `pattern`, except those in `keep`, and (if given) only those in
    /// `only`.
    Like {
        pattern: String,
        keep: HashSet<String>,
        only: Option<HashSet<String>>,
    },
}

/// Memory between rounds, for logging transitions once.
#[derive(Default)]
pub(super) struct CheckMemory {
    no_data: HashSet<(String, String)>,
    invalid: HashSet<(String, String)>,
    /// (cluster, check, service) already noted on the service's container ticket.
    attached: HashSet<(String, String, String)>,
    /// Since when each cluster's Prometheus has been unreachable.
    lost_since: std::collections::HashMap<String, tokio::time::Instant>,
}

/// How long Prometheus must stay unreachable before it is a ticket (verdicts freeze at
/// once): a Prometheus that is still starting up, or one slow round, is not an incident.
fn lost_grace(interval: Duration) -> Duration {
    (interval * 3).max(Duration::from_secs(5))
}

impl Controller {
    /// Evaluates every check on its interval until cancelled, recording the verdicts.
    pub(super) async fn run_checks(&self, cancel: CancellationToken) {
        let mut monitor = Monitor::new();
        let mut memory = CheckMemory::default();
        loop {
            let desired = self.desired();
            if desired.clusters.iter().any(|c| !c.checks.is_empty()) {
                let started = std::time::Instant::now();
                let health = tokio::select! {
                    _ = cancel.cancelled() => return,
                    h = monitor.round(&desired) => h,
                };
                self.metrics()
                    .check_round_seconds
                    .observe(started.elapsed().as_secs_f64());
                for cluster in health {
                    if let Err(e) = self.apply_health(&cluster, &mut memory).await {
                        error!(cluster = %cluster.cluster, error = %e, "cannot record check verdicts; will try next round");
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(round_interval(&desired)) => {}
            }
        }
    }

    async fn apply_health(
        &self,
        health: &ClusterHealth,
        memory: &mut CheckMemory,
    ) -> Result<(), TicketError> {
        let metrics = self.metrics();
        let cluster = health.cluster.as_str();
        let desired = self.desired();
        let Some(spec) = desired.cluster(cluster) else {
            return Ok(());
        };
        let Some(store) = self.store().cloned() else {
            return Ok(());
        };
        let wall = Utc::now();
        let lost_fp = fingerprint(cluster, CLUSTER_TARGET, DriftKind::ObservabilityLost);
        match &health.observability {
            Observability::Lost { reason } => {
                metrics
                    .observability_up
                    .get_or_create(&labels(&[("cluster", cluster)]))
                    .set(0);
                // Frozen: no check ticket changes while nothing can be seen, and no repair
                // is made on an unknown.
                self.withdraw_check_repairs(cluster, None, &HashSet::new());
                let since = *memory
                    .lost_since
                    .entry(cluster.to_string())
                    .or_insert_with(tokio::time::Instant::now);
                if since.elapsed() < lost_grace(spec.prometheus.interval) {
                    return Ok(());
                }
                let (c, fp, detail) = (cluster.to_string(), lost_fp, reason.clone());
                let url = spec.prometheus.url.clone();
                let (ticket, sighting) = blocking(&store, move |s| {
                    s.record_drift(
                        &DriftSighting {
                            fingerprint: &fp,
                            cluster: &c,
                            service: CLUSTER_TARGET,
                            drift: DriftKind::ObservabilityLost.as_str(),
                            detail: &detail,
                            cooldown: Duration::from_secs(600),
                            evidence: Some(serde_json::json!({"prometheus": url})),
                        },
                        wall,
                    )
                })
                .await?;
                if sighting != Sighting::Seen {
                    metrics.tickets_opened.inc();
                    metrics.drift(DriftKind::ObservabilityLost.as_str());
                    warn!(cluster, ticket = ticket.id, %reason, "observability lost: check verdicts frozen until Prometheus answers");
                    self.refresh_ticket_gauges().await;
                }
                return Ok(());
            }
            Observability::Up => {
                memory.lost_since.remove(cluster);
                metrics
                    .observability_up
                    .get_or_create(&labels(&[("cluster", cluster)]))
                    .set(1);
                self.resolve_matching(&store, Lookup::Exact(lost_fp), "Prometheus answers again")
                    .await?;
            }
            // No check needs Prometheus any more: a lost observation is moot.
            Observability::NotNeeded => {
                memory.lost_since.remove(cluster);
                self.resolve_matching(
                    &store,
                    Lookup::Exact(lost_fp),
                    "no check needs Prometheus now",
                )
                .await?;
            }
        }
        // Tickets of checks no longer declared can never be re-checked: they close.
        let declared: HashSet<&str> = spec.checks.iter().map(|c| c.name.as_str()).collect();
        let all_checks = format!("{}/%/check-failed/%", like_escape(cluster));
        let removed: Vec<String> = {
            let p = all_checks.clone();
            blocking(&store, move |s| s.unresolved_like(&p))
                .await?
                .into_iter()
                .filter(|t| {
                    t.fingerprint
                        .rsplit('/')
                        .next()
                        .is_some_and(|check| !declared.contains(check))
                })
                .map(|t| t.fingerprint)
                .collect()
        };
        for fp in removed {
            self.resolve_matching(&store, Lookup::Exact(fp), "the check is no longer declared")
                .await?;
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
                if memory.no_data.insert(id.clone()) {
                    warn!(
                        cluster,
                        check = name,
                        "check returns no data at all: a misspelled metric or label? it cannot fire until it sees a series"
                    );
                }
            } else if memory.no_data.remove(&id) {
                info!(cluster, check = name, "check sees data now");
            }
            if verdict.state == CheckState::Invalid {
                self.withdraw_check_repairs(cluster, Some(name), &HashSet::new());
                if memory.invalid.insert(id.clone()) {
                    error!(cluster, check = name, error = ?verdict.error, "check query is invalid; fix the manifest");
                }
                continue;
            }
            memory.invalid.remove(&id);
            if matches!(verdict.state, CheckState::Unknown | CheckState::NoData)
                && verdict.failing.is_empty()
            {
                // Neither healthy nor broken: leave its tickets as they are, and repair
                // nothing on it.
                self.withdraw_check_repairs(cluster, Some(name), &HashSet::new());
                continue;
            }

            let mut still: HashSet<String> = HashSet::new();
            for target in verdict.pending.iter() {
                still.insert(check_fingerprint(cluster, target.as_deref(), name));
            }
            for failing in &verdict.failing {
                let fp = check_fingerprint(cluster, failing.target.as_deref(), name);
                still.insert(fp.clone());
                let evidence = serde_json::json!({
                    "check": name,
                    "severity": check.severity,
                    "series": failing.series,
                });
                if let Some(service) = &failing.target
                    && self.container_down(cluster, service)
                {
                    self.attach_to_container_ticket(
                        &store, cluster, service, name, evidence, memory,
                    )
                    .await?;
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
                let (c, target) = (
                    cluster.to_string(),
                    failing
                        .target
                        .clone()
                        .unwrap_or_else(|| CLUSTER_TARGET.to_string()),
                );
                let cooldown = check.remediation.window;
                let (ticket, sighting) = blocking(&store, move |s| {
                    s.record_drift(
                        &DriftSighting {
                            fingerprint: &fp,
                            cluster: &c,
                            service: &target,
                            drift: DriftKind::CheckFailed.as_str(),
                            detail: &detail,
                            cooldown,
                            evidence: Some(evidence),
                        },
                        wall,
                    )
                })
                .await?;
                if sighting != Sighting::Seen {
                    metrics.tickets_opened.inc();
                    metrics.drift(DriftKind::CheckFailed.as_str());
                    info!(cluster, check = name, target = %ticket.service, ticket = ticket.id, severity = ?check.severity, "check failed: ticket {}", if sighting == Sighting::Opened { "opened" } else { "reopened" });
                    self.refresh_ticket_gauges().await;
                }
                if check.remediation.policy == Policy::Restart
                    && let Some(service) = &failing.target
                {
                    self.request_check_repair(
                        ServiceKey::new(cluster, service),
                        CheckRepair {
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
            let failing_services: HashSet<String> = if check.remediation.policy == Policy::Restart {
                verdict
                    .failing
                    .iter()
                    .filter_map(|f| f.target.clone())
                    .filter(|service| !self.container_down(cluster, service))
                    .collect()
            } else {
                HashSet::new()
            };
            self.withdraw_check_repairs(cluster, Some(name), &failing_services);
            // Targets no longer failing: their tickets resolve (and their notes may be
            // attached afresh next episode).
            memory.attached.retain(|(c, k, service)| {
                !(c == cluster
                    && k == name
                    && !verdict
                        .failing
                        .iter()
                        .any(|f| f.target.as_deref() == Some(service.as_str())))
            });
            // Every target of this check; for a `healthy` check only the targets positively
            // seen healthy may resolve (a target whose series vanished is not healthy).
            let pattern = format!(
                "{}/%/check-failed/{}",
                like_escape(cluster),
                like_escape(name)
            );
            let healthy: Option<HashSet<String>> = verdict.healthy.as_ref().map(|targets| {
                targets
                    .iter()
                    .map(|t| check_fingerprint(cluster, t.as_deref(), name))
                    .collect()
            });
            self.resolve_matching(
                &store,
                Lookup::Like {
                    pattern,
                    keep: still,
                    only: healthy,
                },
                "check passes",
            )
            .await?;
        }
        Ok(())
    }

    /// Whether the cache says the service's container is not running (or absent).
    fn container_down(&self, cluster: &str, service: &str) -> bool {
        let cache = self.cache();
        cache.is_connected()
            && cache
                .get(&ServiceKey::new(cluster, service))
                .is_none_or(|c| c.status != ContainerStatus::Running)
    }

    async fn attach_to_container_ticket(
        &self,
        store: &Arc<Store>,
        cluster: &str,
        service: &str,
        check: &str,
        evidence: serde_json::Value,
        memory: &mut CheckMemory,
    ) -> Result<(), TicketError> {
        let key = (cluster.to_string(), check.to_string(), service.to_string());
        if memory.attached.contains(&key) {
            return Ok(());
        }
        let (c, s) = (cluster.to_string(), service.to_string());
        let tickets = blocking(store, move |st| st.unresolved_for(&c, &s)).await?;
        // No container ticket yet (the reconcile has not recorded it): wait, open nothing.
        let Some(ticket) = tickets.into_iter().find(|t| is_container_down(&t.drift)) else {
            return Ok(());
        };
        let id = ticket.id;
        let note = serde_json::json!({"check-failed": evidence, "note": "the service's container is down: the check is attached here, not ticketed separately"});
        blocking(store, move |st| {
            st.append(id, EntryKind::Note, note, Utc::now())
        })
        .await?;
        info!(
            cluster,
            service,
            check,
            ticket = id,
            "failing check attached to the container's ticket"
        );
        memory.attached.insert(key);
        Ok(())
    }

    /// Resolves the unresolved tickets a lookup selects (after a fresh, successful check).
    async fn resolve_matching(
        &self,
        store: &Arc<Store>,
        lookup: Lookup,
        why: &'static str,
    ) -> Result<(), TicketError> {
        let open = match lookup {
            Lookup::Exact(fp) => blocking(store, move |s| s.unresolved_by_fingerprint(&fp)).await?,
            Lookup::Like {
                pattern,
                keep,
                only,
            } => {
                let mut open = blocking(store, move |s| s.unresolved_like(&pattern)).await?;
                open.retain(|t| {
                    !keep.contains(&t.fingerprint)
                        && only.as_ref().is_none_or(|o| o.contains(&t.fingerprint))
                });
                open
            }
        };
        if open.is_empty() {
            return Ok(());
        }
        let wall = Utc::now();
        for ticket in open {
            let cause = if ticket.status == Status::Remediating {
                Cause::Controller
            } else {
                Cause::SelfHealed
            };
            let id = ticket.id;
            let resolved = blocking(store, move |s| {
                s.append(
                    id,
                    EntryKind::Recheck,
                    serde_json::json!({"result": why}),
                    wall,
                )?;
                s.resolve(id, cause, serde_json::json!({}), wall)
            })
            .await?;
            if resolved {
                let took = (wall - ticket.episode_at).to_std().unwrap_or_default();
                self.metrics().ticket_resolved(cause.as_str(), took);
                info!(cluster = %ticket.cluster, target = %ticket.service, ticket = id, drift = %ticket.drift, cause = cause.as_str(), "ticket resolved");
            }
        }
        self.refresh_ticket_gauges().await;
        Ok(())
    }
}
