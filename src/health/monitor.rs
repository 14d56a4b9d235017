//! One evaluation round over every cluster's checks, with bounded concurrency.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;
use tokio::time::Instant;

use crate::manifest::{Blame, Check, Cluster, DesiredState, Probe, Severity};

use super::evaluator::{Reading, Target, Tracker, Verdict};
use super::probe;
use super::prometheus::{Prometheus, QueryError, Series};
use crate::promql::selectors;

/// Checks evaluated at once, per cluster.
const CONCURRENCY: usize = 8;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum Observability {
    /// No check of the cluster needs Prometheus.
    NotNeeded,
    Up,
    /// Prometheus could not be asked this round.
    Lost {
        reason: String,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub check: String,
    pub severity: Severity,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterHealth {
    pub cluster: String,
    pub observability: Observability,
    pub checks: Vec<CheckReport>,
}

/// The service a series is held against.
pub fn blame(check: &Check, cluster: &Cluster, series: &Series) -> Target {
    match &check.blame {
        Blame::Cluster => None,
        Blame::Service(service) => Some(service.clone()),
        Blame::Label { label, services } => {
            let value = series.labels.get(label)?;
            if let Some(service) = services.get(value) {
                return Some(service.clone());
            }
            let host = value.rsplit_once(':').map_or(value.as_str(), |(h, _)| h);
            cluster.service(host).map(|s| s.name.clone())
        }
    }
}

fn group(check: &Check, cluster: &Cluster, series: Vec<Series>) -> BTreeMap<Target, Vec<Series>> {
    let mut failing: BTreeMap<Target, Vec<Series>> = BTreeMap::new();
    for s in series {
        failing
            .entry(blame(check, cluster, &s))
            .or_default()
            .push(s);
    }
    failing
}

/// Evaluates one check once. `probe_selectors`: also ask whether the query's selectors see
/// any series (needed until the check has seen data once).
async fn read(
    check: &Check,
    cluster: &Cluster,
    prometheus: Option<&Prometheus>,
    http: &reqwest::Client,
    probe_selectors: bool,
) -> Reading {
    let query = |expr: String| async move {
        match prometheus {
            Some(p) => p.query(&expr).await,
            None => Err(QueryError::Unreachable {
                url: "(none)".into(),
                reason: "no Prometheus URL: set spec.prometheus.url or PROMETHEUS_URL".into(),
            }),
        }
    };
    let result = match &check.probe {
        Probe::Http(p) => {
            let failing = match probe::run(http, p).await {
                Ok(()) => BTreeMap::new(),
                Err(reason) => {
                    let target = match &check.blame {
                        Blame::Service(s) => Some(s.clone()),
                        _ => None,
                    };
                    let series = Series {
                        labels: BTreeMap::from([
                            ("url".to_string(), p.url.clone()),
                            ("error".to_string(), reason),
                        ]),
                        value: 0.0,
                    };
                    BTreeMap::from([(target, vec![series])])
                }
            };
            return Reading::Evaluated {
                failing,
                has_data: true,
                healthy: None,
            };
        }
        Probe::Alert { expr } => query(expr.clone()).await.map(|series| {
            // Empty is "nothing wrong" once the selectors are known to see data; before
            // that, the selectors are asked below.
            let has_data = !series.is_empty() || !probe_selectors;
            (group(check, cluster, series), has_data, None)
        }),
        Probe::Healthy { expr } => query(expr.clone()).await.map(|series| {
            let has_data = !series.is_empty();
            // Only a target with a non-zero series is known healthy: one whose series went
            // missing is not (a hung member stops being scraped).
            let healthy: BTreeSet<Target> = series
                .iter()
                .filter(|s| s.value != 0.0)
                .map(|s| blame(check, cluster, s))
                .collect();
            let bad: Vec<Series> = series.into_iter().filter(|s| s.value == 0.0).collect();
            (group(check, cluster, bad), has_data, Some(healthy))
        }),
    };
    match result {
        Err(QueryError::Unreachable { reason, .. }) => Reading::Unreachable(reason),
        Err(QueryError::Invalid { reason, .. }) => Reading::Invalid(reason),
        Ok((failing, mut has_data, healthy)) => {
            // An alert query is empty when all is well; it is "no data" only if none of
            // its selectors sees any series (a misspelled metric or label value).
            if let (Probe::Alert { expr }, false, true) = (&check.probe, has_data, probe_selectors)
            {
                let wanted = selectors(expr);
                if wanted.is_empty() {
                    has_data = true;
                }
                for selector in wanted {
                    match query(format!("count({selector})")).await {
                        Ok(series) if !series.is_empty() => {
                            has_data = true;
                            break;
                        }
                        Ok(_) => {}
                        Err(QueryError::Unreachable { reason, .. }) => {
                            return Reading::Unreachable(reason);
                        }
                        Err(QueryError::Invalid { .. }) => {}
                    }
                }
            }
            Reading::Evaluated {
                failing,
                has_data,
                healthy,
            }
        }
    }
}

fn tracker_key(cluster: &Cluster, check: &Check) -> (String, String, String) {
    (
        cluster.name.clone(),
        check.name.clone(),
        format!("{:?}", check.probe),
    )
}

/// Evaluates checks round after round, remembering each check's windows.
pub struct Monitor {
    /// Judge each round on its own (no `for` window, no grace): for one-shot `status`.
    instant: bool,
    http: reqwest::Client,
    /// Per (cluster, check, probe as written): an edited expression starts afresh.
    trackers: HashMap<(String, String, String), Tracker>,
    clients: HashMap<String, (String, Duration, Prometheus)>,
}

impl Default for Monitor {
    fn default() -> Self {
        Monitor::new()
    }
}

impl Monitor {
    pub fn new() -> Monitor {
        Monitor {
            instant: false,
            http: reqwest::Client::new(),
            trackers: HashMap::new(),
            clients: HashMap::new(),
        }
    }

    /// A monitor for one look: every failure counts at once and "no data" is reported on
    /// the first round.
    pub fn instant() -> Monitor {
        Monitor {
            instant: true,
            ..Monitor::new()
        }
    }

    /// The Prometheus client for a cluster (rebuilt when its URL or timeout changes).
    fn prometheus(&mut self, cluster: &Cluster) -> Option<Prometheus> {
        let url = cluster.prometheus.url.clone()?;
        let timeout = cluster.prometheus.timeout;
        if let Some((u, t, p)) = self.clients.get(&cluster.name)
            && *u == url
            && *t == timeout
        {
            return Some(p.clone());
        }
        let p = Prometheus::new(&url, timeout).ok()?;
        self.clients
            .insert(cluster.name.clone(), (url, timeout, p.clone()));
        Some(p)
    }

    /// One round over every cluster that declares checks.
    pub async fn round(&mut self, desired: &DesiredState) -> Vec<ClusterHealth> {
        let now = Instant::now();
        // Forget checks that are no longer declared.
        self.trackers.retain(|(cluster, check, probe), _| {
            desired.cluster(cluster).is_some_and(|c| {
                c.checks
                    .iter()
                    .any(|k| &k.name == check && &format!("{:?}", k.probe) == probe)
            })
        });
        self.clients
            .retain(|cluster, _| desired.cluster(cluster).is_some());
        let mut out = Vec::new();
        for cluster in desired.clusters.iter().filter(|c| !c.checks.is_empty()) {
            let prometheus = self.prometheus(cluster);
            let needs_prometheus = cluster
                .checks
                .iter()
                .any(|c| !matches!(c.probe, Probe::Http(_)));
            let http = self.http.clone();
            let jobs: Vec<_> = cluster
                .checks
                .iter()
                .map(|check| {
                    let probe_selectors = self
                        .trackers
                        .get(&tracker_key(cluster, check))
                        .is_none_or(|t| !t.data_seen());
                    let (prometheus, http) = (prometheus.clone(), http.clone());
                    async move {
                        let reading =
                            read(check, cluster, prometheus.as_ref(), &http, probe_selectors).await;
                        (check, reading)
                    }
                })
                .collect();
            let readings: Vec<(&Check, Reading)> = futures::stream::iter(jobs)
                .buffered(CONCURRENCY)
                .collect()
                .await;
            let lost = readings.iter().find_map(|(_, r)| match r {
                Reading::Unreachable(reason) => Some(reason.clone()),
                _ => None,
            });
            let observability = match (&lost, needs_prometheus) {
                (Some(reason), true) => Observability::Lost {
                    reason: reason.clone(),
                },
                (_, false) => Observability::NotNeeded,
                (None, true) => Observability::Up,
            };
            let no_data_after = cluster.prometheus.interval;
            let mut checks = Vec::new();
            for (check, reading) in readings {
                let tracker = self
                    .trackers
                    .entry(tracker_key(cluster, check))
                    .or_insert_with(|| Tracker::new(now));
                let (for_duration, grace) = if self.instant {
                    (Duration::ZERO, Duration::ZERO)
                } else {
                    (check.for_duration, check.for_duration.max(no_data_after))
                };
                let verdict = tracker.observe(now, for_duration, grace, &reading);
                checks.push(CheckReport {
                    check: check.name.clone(),
                    severity: check.severity,
                    verdict,
                });
            }
            out.push(ClusterHealth {
                cluster: cluster.name.clone(),
                observability,
                checks,
            });
        }
        out
    }
}

/// What checking every PromQL expression against its live Prometheus found.
#[derive(Debug, Default)]
pub struct QueryCheck {
    /// `(file, cluster, check, reason)` for each expression Prometheus rejects.
    pub invalid: Vec<(std::path::PathBuf, String, String, String)>,
    /// `(cluster, url, reason)` for each Prometheus that could not be asked.
    pub unreachable: Vec<(String, String, String)>,
}

/// Asks each cluster's Prometheus to evaluate each check expression once, to find invalid
/// PromQL before anything runs. A Prometheus that cannot be reached is listed, not an error.
pub async fn check_queries(desired: &DesiredState) -> QueryCheck {
    let mut out = QueryCheck::default();
    for cluster in &desired.clusters {
        let exprs: Vec<(&str, &str)> = cluster
            .checks
            .iter()
            .filter_map(|c| match &c.probe {
                Probe::Alert { expr } | Probe::Healthy { expr } => {
                    Some((c.name.as_str(), expr.as_str()))
                }
                Probe::Http(_) => None,
            })
            .collect();
        let Some(url) = cluster.prometheus.url.as_deref() else {
            continue;
        };
        if exprs.is_empty() {
            continue;
        }
        let prometheus = match Prometheus::new(url, cluster.prometheus.timeout) {
            Ok(p) => p,
            Err(e) => {
                out.unreachable
                    .push((cluster.name.clone(), url.to_string(), e.to_string()));
                continue;
            }
        };
        for (check, expr) in exprs {
            match prometheus.query(expr).await {
                Ok(_) => {}
                Err(QueryError::Invalid { reason, .. }) => out.invalid.push((
                    cluster.source.clone(),
                    cluster.name.clone(),
                    check.to_string(),
                    reason,
                )),
                Err(QueryError::Unreachable { reason, .. }) => {
                    out.unreachable
                        .push((cluster.name.clone(), url.to_string(), reason));
                    break;
                }
            }
        }
    }
    out
}
