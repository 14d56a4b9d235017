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
    CLUSTER_TARGET, DriftSighting, EntryKind, Sighting, Store, TicketError, check_fingerprint,
    fingerprint, is_container_down, like_escape,
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
    /// The checks each cluster declared when its stale tickets were last looked for.
    declared: std::collections::HashMap<String, Vec<String>>,
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
        // Tickets of checks no longer declared can never be re-checked: they close. Looked
        // for when the declared checks change (and at the first round), not every round.
        let declared: Vec<String> = spec.checks.iter().map(|c| c.name.clone()).collect();
        if memory.declared.get(cluster) != Some(&declared) {
            let pattern = format!("{}/%/check-failed/%", like_escape(cluster));
            let removed: Vec<String> = blocking(&store, move |s| s.unresolved_like(&pattern))
                .await?
                .into_iter()
                .filter(|t| {
                    t.fingerprint
                        .rsplit('/')
                        .next()
                        .is_some_and(|check| !declared.iter().any(|d| d == check))
                })
                .map(|t| t.fingerprint)
                .collect();
            for fp in removed {
                self.resolve_matching(&store, Lookup::Exact(fp), "the check is no longer declared")
                    .await?;
            }
            memory.declared.insert(
                cluster.to_string(),
                spec.checks.iter().map(|c| c.name.clone()).collect(),
            );
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
        self.resolve_after_recheck(store, open, serde_json::json!({"result": why}), Utc::now())
            .await
    }
}

#[cfg(test)]
mod tests {
    //! The rules of `apply_health` on a real SQLite store, with no Docker and no
    //! Prometheus: verdicts are made by hand, the cache is filled by hand.

    use std::collections::BTreeSet;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::docker::{ContainerStatus, ObservedContainer};
    use crate::health::{CheckReport, FailingTarget, Verdict};
    use crate::manifest::Severity;
    use crate::metrics::Metrics;
    use crate::reconcile::ControllerConfig;
    use crate::tickets::{Cause, Status};

    struct Setup {
        dir: PathBuf,
        controller: Controller,
        store: Arc<Store>,
    }

    impl Drop for Setup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn setup() -> Setup {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "operator-checks-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("c.yaml"),
            "apiVersion: operator/v1\nkind: Cluster\nmetadata:\n  name: c\nspec:\n  prometheus: {url: \"http://127.0.0.1:1\", interval: 1s}\n  services:\n    - name: svc\n      image: x\n  checks:\n    - name: up\n      expr: 'up == 0'\n      service: svc\n",
        )
        .unwrap();
        let desired = crate::manifest::load(std::slice::from_ref(&dir)).unwrap();
        let store = Arc::new(Store::open(&dir.join("t.db")).unwrap());
        // Never connects: these rules touch only the cache and the store.
        let docker = bollard::Docker::connect_with_http_defaults().unwrap();
        let controller = Controller::new(
            docker,
            desired,
            Arc::new(Metrics::new()),
            ControllerConfig::default(),
            Some(store.clone()),
        );
        let setup = Setup {
            dir,
            controller,
            store,
        };
        setup.container(ContainerStatus::Running);
        setup
    }

    impl Setup {
        fn container(&self, status: ContainerStatus) {
            let cache = self.controller.cache();
            cache.replace_all(vec![ObservedContainer {
                id: "id".into(),
                name: "svc".into(),
                key: ServiceKey::new("c", "svc"),
                spec_hash: String::new(),
                image: "x".into(),
                status,
                health: None,
                networks: Default::default(),
                network_mode: String::new(),
                exit_code: None,
                pid: None,
                started_at: None,
                finished_at: None,
            }]);
            cache.set_connected(true);
        }

        async fn apply(
            &self,
            observability: Observability,
            verdict: Verdict,
            memory: &mut CheckMemory,
        ) {
            let health = ClusterHealth {
                cluster: "c".into(),
                observability,
                checks: vec![CheckReport {
                    check: "up".into(),
                    severity: Severity::Warning,
                    verdict,
                }],
            };
            self.controller.apply_health(&health, memory).await.unwrap();
        }

        fn tickets(&self) -> Vec<crate::tickets::Ticket> {
            self.store.list(None).unwrap()
        }
    }

    fn verdict(state: CheckState, failing: &[&str]) -> Verdict {
        Verdict {
            state,
            failing: failing
                .iter()
                .map(|t| FailingTarget {
                    target: Some(t.to_string()),
                    since: tokio::time::Instant::now(),
                    series: vec![],
                })
                .collect(),
            pending: vec![],
            no_data: false,
            error: None,
            healthy: None,
        }
    }

    #[tokio::test]
    async fn a_failing_check_opens_one_ticket_and_a_pass_resolves_it_self_healed() {
        let s = setup();
        let mut m = CheckMemory::default();
        for _ in 0..3 {
            s.apply(
                Observability::Up,
                verdict(CheckState::Failing, &["svc"]),
                &mut m,
            )
            .await;
        }
        let t = s.tickets();
        assert_eq!(t.len(), 1);
        assert_eq!((t[0].drift.as_str(), t[0].occurrences), ("check-failed", 3));
        s.apply(Observability::Up, verdict(CheckState::Passing, &[]), &mut m)
            .await;
        let t = s.tickets();
        assert_eq!(
            (t[0].status, t[0].resolved_by),
            (Status::Resolved, Some(Cause::SelfHealed))
        );
    }

    #[tokio::test]
    async fn no_data_and_unknown_verdicts_change_no_ticket() {
        let s = setup();
        let mut m = CheckMemory::default();
        s.apply(
            Observability::Up,
            verdict(CheckState::Failing, &["svc"]),
            &mut m,
        )
        .await;
        let before = s.tickets();
        for state in [CheckState::NoData, CheckState::Unknown, CheckState::Invalid] {
            s.apply(Observability::Up, verdict(state, &[]), &mut m)
                .await;
        }
        assert_eq!(s.tickets(), before);
    }

    #[tokio::test]
    async fn a_healthy_check_resolves_only_targets_seen_healthy() {
        let s = setup();
        let mut m = CheckMemory::default();
        s.apply(
            Observability::Up,
            verdict(CheckState::Failing, &["svc"]),
            &mut m,
        )
        .await;
        // The target's series vanished: not seen healthy, so not resolved.
        let mut v = verdict(CheckState::Passing, &[]);
        v.healthy = Some(BTreeSet::new());
        s.apply(Observability::Up, v.clone(), &mut m).await;
        assert_eq!(s.tickets()[0].status, Status::Open);
        v.healthy = Some(BTreeSet::from([Some("svc".to_string())]));
        s.apply(Observability::Up, v, &mut m).await;
        assert_eq!(s.tickets()[0].status, Status::Resolved);
    }

    #[tokio::test(start_paused = true)]
    async fn lost_prometheus_freezes_check_tickets_and_opens_one_ticket_after_its_grace() {
        let s = setup();
        let mut m = CheckMemory::default();
        s.apply(
            Observability::Up,
            verdict(CheckState::Failing, &["svc"]),
            &mut m,
        )
        .await;
        let check_ticket = s.tickets()[0].clone();
        let lost = || Observability::Lost {
            reason: "refused".into(),
        };
        // Within the grace: frozen, and no ticket yet.
        s.apply(lost(), verdict(CheckState::Unknown, &[]), &mut m)
            .await;
        assert_eq!(s.tickets().len(), 1);
        tokio::time::advance(Duration::from_secs(6)).await;
        for _ in 0..3 {
            s.apply(lost(), verdict(CheckState::Passing, &[]), &mut m)
                .await;
        }
        let t = s.tickets();
        assert_eq!(t.len(), 2, "{t:#?}");
        assert_eq!(
            t.iter().filter(|t| t.drift == "observability-lost").count(),
            1
        );
        let still = t.iter().find(|t| t.id == check_ticket.id).unwrap();
        assert_eq!(
            still, &check_ticket,
            "a check ticket moved while Prometheus was lost"
        );
        // Back: the lost ticket resolves, and verdicts count again.
        s.apply(Observability::Up, verdict(CheckState::Passing, &[]), &mut m)
            .await;
        assert!(s.tickets().iter().all(|t| t.status == Status::Resolved));
    }

    #[tokio::test]
    async fn a_check_failing_on_a_down_container_goes_on_the_container_ticket() {
        let s = setup();
        let mut m = CheckMemory::default();
        s.container(ContainerStatus::Exited);
        let fp = fingerprint("c", "svc", DriftKind::Stopped);
        let (container_ticket, _) = s
            .store
            .record_drift(
                &DriftSighting {
                    fingerprint: &fp,
                    cluster: "c",
                    service: "svc",
                    drift: "stopped",
                    detail: "exited",
                    cooldown: Duration::from_secs(600),
                    evidence: None,
                },
                Utc::now(),
            )
            .unwrap();
        for _ in 0..3 {
            s.apply(
                Observability::Up,
                verdict(CheckState::Failing, &["svc"]),
                &mut m,
            )
            .await;
        }
        assert_eq!(s.tickets().len(), 1, "no check ticket of its own");
        let notes = s
            .store
            .timeline(container_ticket.id)
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == "note")
            .count();
        assert_eq!(notes, 1, "noted once per episode");
    }

    #[tokio::test]
    async fn a_check_removed_from_the_manifest_has_its_tickets_closed() {
        let s = setup();
        let mut m = CheckMemory::default();
        s.apply(
            Observability::Up,
            verdict(CheckState::Failing, &["svc"]),
            &mut m,
        )
        .await;
        let mut desired = (*s.controller.desired()).clone();
        desired.clusters[0].checks[0].name = "renamed".into();
        s.controller.set_desired(desired);
        let health = ClusterHealth {
            cluster: "c".into(),
            observability: Observability::Up,
            checks: vec![],
        };
        s.controller.apply_health(&health, &mut m).await.unwrap();
        assert_eq!(s.tickets()[0].status, Status::Resolved);
    }
}
