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

/// Evaluates one check once. `prometheus` is the cluster's client, or why there is none;
/// `probe_selectors`: also ask whether the query's selectors see any series (needed until
/// the check has seen data once).
async fn read(
    check: &Check,
    cluster: &Cluster,
    prometheus: Result<&Prometheus, &QueryError>,
    http: &reqwest::Client,
    probe_selectors: bool,
) -> Reading {
    let query = |expr: String| async move {
        match prometheus {
            Ok(p) => p.query(&expr).await,
            Err(why) => Err(why.clone()),
        }
    };
    let result = match &check.probe {
        Probe::Http(p) => {
            let failing = match probe::run(http, p).await {
                Ok(()) => BTreeMap::new(),
                Err(error) => {
                    let target = match &check.blame {
                        Blame::Service(s) => Some(s.clone()),
                        _ => None,
                    };
                    let series = Series {
                        labels: BTreeMap::from([
                            ("url".to_string(), p.url.clone()),
                            ("error".to_string(), error.to_string()),
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

/// Which declared check a tracker belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CheckKey {
    cluster: String,
    check: String,
}

impl CheckKey {
    fn of(cluster: &Cluster, check: &Check) -> CheckKey {
        CheckKey {
            cluster: cluster.name.clone(),
            check: check.name.clone(),
        }
    }
}

/// A check's memory, with the probe it was built for: an edited probe under the same name
/// is a different check and starts afresh.
struct Tracked {
    probe: Probe,
    tracker: Tracker,
}

/// Evaluates checks round after round, remembering each check's windows.
pub struct Monitor {
    /// Judge each round on its own (no `for` window, no grace): for one-shot `status`.
    instant: bool,
    http: reqwest::Client,
    /// Per declared check; see [`Tracked`].
    trackers: HashMap<CheckKey, Tracked>,
    clients: HashMap<String, (String, Duration, Prometheus)>,
    /// Clusters whose Prometheus could not be asked in their last round: when it answers
    /// again, that is said once.
    unanswered: BTreeSet<String>,
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
            unanswered: BTreeSet::new(),
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

    /// The Prometheus client for a cluster (rebuilt when its URL or timeout changes), or
    /// why there is none, to be reported by every check that needs it.
    fn prometheus(&mut self, cluster: &Cluster) -> Result<Prometheus, QueryError> {
        let Some(url) = cluster.prometheus.url.clone() else {
            return Err(QueryError::Unreachable {
                url: "(none)".into(),
                reason: "no Prometheus URL: set spec.prometheus.url or PROMETHEUS_URL".into(),
            });
        };
        let timeout = cluster.prometheus.timeout;
        if let Some((u, t, p)) = self.clients.get(&cluster.name)
            && *u == url
            && *t == timeout
        {
            return Ok(p.clone());
        }
        let p = Prometheus::new(&url, timeout).map_err(|e| match e {
            // A client that cannot be built cannot ask anything: like a Prometheus that is
            // down, its checks are unknown and observability is lost, for the real reason.
            QueryError::Invalid { url, reason } => QueryError::Unreachable { url, reason },
            unreachable => unreachable,
        })?;
        self.clients
            .insert(cluster.name.clone(), (url, timeout, p.clone()));
        Ok(p)
    }

    /// One round over every cluster that declares checks.
    pub async fn round(&mut self, desired: &DesiredState) -> Vec<ClusterHealth> {
        let now = Instant::now();
        // Forget checks that are no longer declared.
        self.trackers.retain(|key, tracked| {
            desired
                .cluster(&key.cluster)
                .and_then(|c| c.check(&key.check))
                .is_some_and(|k| k.probe == tracked.probe)
        });
        self.clients
            .retain(|cluster, _| desired.cluster(cluster).is_some());
        self.unanswered
            .retain(|cluster| desired.cluster(cluster).is_some());
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
                        .get(&CheckKey::of(cluster, check))
                        .is_none_or(|t| !t.tracker.data_seen());
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
            self.follow(cluster, &observability);
            let no_data_after = cluster.prometheus.interval;
            let mut checks = Vec::new();
            for (check, reading) in readings {
                let tracker = &mut self
                    .trackers
                    .entry(CheckKey::of(cluster, check))
                    .or_insert_with(|| Tracked {
                        probe: check.probe.clone(),
                        tracker: Tracker::new(now),
                    })
                    .tracker;
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

impl Monitor {
    /// Says when a cluster's Prometheus answers again after it could not be asked (at
    /// start, or later), so that the log that said it was lost also says it is back. A
    /// one-shot look (`instant`) says nothing.
    fn follow(&mut self, cluster: &Cluster, observability: &Observability) {
        if self.instant {
            return;
        }
        match observability {
            Observability::Lost { .. } => {
                self.unanswered.insert(cluster.name.clone());
            }
            Observability::Up => {
                if self.unanswered.remove(&cluster.name) {
                    tracing::info!(
                        cluster = %cluster.name,
                        prometheus = cluster.prometheus.url.as_deref().unwrap_or_default(),
                        "Prometheus answers again: check verdicts are read again"
                    );
                }
            }
            Observability::NotNeeded => {
                self.unanswered.remove(&cluster.name);
            }
        }
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::health::CheckState;
    use crate::manifest::{NetworkSpec, PrometheusSpec, Remediation};

    fn alert(name: &str, expr: &str) -> Check {
        Check {
            name: name.into(),
            probe: Probe::Alert { expr: expr.into() },
            for_duration: Duration::ZERO,
            severity: Severity::Warning,
            blame: Blame::Cluster,
            remediation: Remediation::default(),
        }
    }

    fn desired(url: Option<&str>, checks: Vec<Check>) -> DesiredState {
        DesiredState {
            clusters: vec![Cluster {
                name: "demo".into(),
                source: PathBuf::from("demo.yaml"),
                network: NetworkSpec {
                    name: "demo".into(),
                    external: false,
                    internal: false,
                },
                services: Vec::new(),
                prometheus: PrometheusSpec {
                    url: url.map(str::to_string),
                    ..PrometheusSpec::default()
                },
                checks,
                agent: Default::default(),
                groups: Vec::new(),
                max_concurrent_disruptions: None,
            }],
        }
    }

    fn lost_reason(health: &[ClusterHealth]) -> String {
        match &health[0].observability {
            Observability::Lost { reason } => reason.clone(),
            other => panic!("expected lost observability, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_missing_url_is_reported_as_such() {
        let health = Monitor::instant()
            .round(&desired(None, vec![alert("down", "up == 0")]))
            .await;
        assert!(lost_reason(&health).starts_with("no Prometheus URL"));
        assert_eq!(health[0].checks[0].verdict.state, CheckState::Unknown);
    }

    #[tokio::test]
    async fn an_unusable_url_is_reported_with_its_own_reason() {
        let health = Monitor::instant()
            .round(&desired(Some("not a url"), vec![alert("down", "up == 0")]))
            .await;
        let reason = lost_reason(&health);
        assert!(reason.starts_with("not a usable URL"), "{reason}");
        let verdict = &health[0].checks[0].verdict;
        assert_eq!(verdict.state, CheckState::Unknown);
        assert_eq!(verdict.error.as_deref(), Some(reason.as_str()));
    }

    /// Answers every query with no series, for as long as the test runs.
    async fn answering_prometheus() -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let body = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(answer.as_bytes()).await;
                });
            }
        });
        url
    }

    /// Log lines written while the guard lives, as text.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
        }
    }

    #[tokio::test]
    async fn prometheus_answering_again_is_logged_once() {
        let log = Captured::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);

        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            format!("http://{}", l.local_addr().expect("addr"))
        };
        let up = answering_prometheus().await;
        let mut monitor = Monitor::new();
        let checks = || vec![alert("down", "up == 0")];
        monitor.round(&desired(Some(&refused), checks())).await;
        assert!(!log.text().contains("answers again"), "{}", log.text());
        monitor.round(&desired(Some(&up), checks())).await;
        monitor.round(&desired(Some(&up), checks())).await;
        let text = log.text();
        assert_eq!(
            text.matches("Prometheus answers again").count(),
            1,
            "{text}"
        );
        assert!(text.contains("cluster=demo"), "{text}");
    }

    #[tokio::test]
    async fn trackers_follow_the_declared_checks_and_their_probes() {
        let mut monitor = Monitor::instant();
        let key = CheckKey {
            cluster: "demo".into(),
            check: "down".into(),
        };
        monitor
            .round(&desired(None, vec![alert("down", "up == 0")]))
            .await;
        assert_eq!(monitor.trackers[&key].probe, alert("down", "up == 0").probe);

        // Same name, edited expression: a new tracker for the new probe.
        monitor
            .round(&desired(None, vec![alert("down", "up < 1")]))
            .await;
        assert_eq!(monitor.trackers.len(), 1);
        assert_eq!(monitor.trackers[&key].probe, alert("down", "up < 1").probe);

        // No longer declared: forgotten.
        monitor
            .round(&desired(None, vec![alert("other", "up < 1")]))
            .await;
        assert!(!monitor.trackers.contains_key(&key));
    }
}
