//! The steady-state hypothesis of a drill, looked at once: the controller's own view (every
//! declared service matches its desired state, every check passes, no ticket of the cluster
//! is unresolved) and the drill's probes. A trial starts only from a steady cluster and is
//! recovered only once the steady state holds again for the drill's `hold`.

use std::sync::Arc;
use std::time::Duration;

use rustix::process::{Signal, kill_process_group};

use crate::health::{CheckState, Monitor, Prometheus};
use crate::manifest::{Cluster, DesiredState};
use crate::metrics::Metrics;
use crate::tickets::{Journal, Status, Store};

use super::fault::procfs;
use super::spec::{Probe, ProbeKind, SteadyState};

/// One look: empty `problems` means the steady state holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Look {
    pub problems: Vec<String>,
}

impl Look {
    pub fn holds(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Looks at one cluster's steady state, as often as asked.
pub struct Steady {
    docker: bollard::Docker,
    cluster: Cluster,
    spec: SteadyState,
    /// Opened read-only per look (the controller is its writer).
    db: std::path::PathBuf,
    monitor: Monitor,
    http: reqwest::Client,
    /// Where command probes run (the drill file's folder).
    dir: std::path::PathBuf,
}

impl Steady {
    pub fn new(
        docker: bollard::Docker,
        cluster: Cluster,
        spec: SteadyState,
        db: std::path::PathBuf,
        dir: std::path::PathBuf,
    ) -> Steady {
        Steady {
            docker,
            cluster,
            spec,
            db,
            monitor: Monitor::instant(),
            // Never followed: a redirect would aim the probe beyond the cluster.
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("a plain HTTP client builds"),
            dir,
        }
    }

    pub async fn look(&mut self) -> Look {
        let mut problems = Vec::new();
        if self.spec.controller {
            self.controller_view(&mut problems).await;
        }
        for probe in &self.spec.probes {
            if let Err(why) = probe_once(&self.http, &self.cluster, probe, &self.dir).await {
                problems.push(format!("probe {}: {why}", probe.name));
            }
        }
        Look { problems }
    }

    async fn controller_view(&mut self, problems: &mut Vec<String>) {
        let desired = DesiredState {
            clusters: vec![self.cluster.clone()],
        };
        let store = match Store::open_read_only(&self.db) {
            Ok(store) => Some(Arc::new(store)),
            Err(e) => {
                problems.push(format!("the ticket database cannot be read: {e}"));
                None
            }
        };
        let journal = store
            .clone()
            .map(|s| Journal::new(s, Arc::new(Metrics::new())));
        for report in
            crate::reconcile::report(self.docker.clone(), &desired, journal.as_ref(), false).await
        {
            if let Some(e) = &report.error {
                problems.push(format!("service {}: not observed: {e}", report.service));
            } else if !report.drifts.is_empty() {
                let drifts: Vec<String> = report
                    .drifts
                    .iter()
                    .map(|d| format!("{} ({})", d.kind.as_str(), d.detail))
                    .collect();
                problems.push(format!("service {}: {}", report.service, drifts.join("; ")));
            }
        }
        if let Some(store) = &store {
            match store.list(None) {
                Ok(tickets) => {
                    for t in tickets
                        .iter()
                        .filter(|t| t.cluster == self.cluster.name && t.status != Status::Resolved)
                    {
                        problems.push(format!(
                            "ticket {} ({} on {}) is {}",
                            t.id,
                            t.drift.as_str(),
                            t.fingerprint.target,
                            t.status.as_str()
                        ));
                    }
                }
                Err(e) => problems.push(format!("the tickets cannot be read: {e}")),
            }
        }
        for health in self.monitor.round(&desired).await {
            for check in &health.checks {
                let state = check.verdict.state;
                if state != CheckState::Passing {
                    let why = check
                        .verdict
                        .error
                        .clone()
                        .unwrap_or_else(|| format!("{state:?}").to_lowercase());
                    problems.push(format!("check {}: {why}", check.check));
                }
            }
        }
    }
}

/// Runs one probe: `Err` says why it does not hold.
pub async fn probe_once(
    http: &reqwest::Client,
    cluster: &Cluster,
    probe: &Probe,
    dir: &std::path::Path,
) -> Result<(), String> {
    match &probe.kind {
        ProbeKind::Promql { query, tolerance } => {
            let url = cluster
                .prometheus
                .url
                .as_deref()
                .ok_or("the cluster declares no Prometheus (spec.prometheus.url)")?;
            let prometheus =
                Prometheus::new(url, cluster.prometheus.timeout).map_err(|e| e.to_string())?;
            let series = prometheus.query(query).await.map_err(|e| e.to_string())?;
            if series.is_empty() {
                return Err(format!("{query} returned no series"));
            }
            match series.iter().find(|s| !tolerance.accepts(s.value)) {
                Some(s) => Err(format!(
                    "{query} = {} for {:?}, outside the tolerance",
                    s.value, s.labels
                )),
                None => Ok(()),
            }
        }
        ProbeKind::Http {
            url,
            status,
            timeout,
        } => {
            let r = http
                .get(url)
                .timeout(*timeout)
                .send()
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            if r.status().as_u16() == *status {
                Ok(())
            } else {
                Err(format!("GET {url}: {} (wanted {status})", r.status()))
            }
        }
        ProbeKind::Command { command, timeout } => run_command(command, *timeout, dir).await,
    }
}

/// `sh -c COMMAND` in its own process group, killed as a group past `timeout`.
pub async fn run_command(
    command: &str,
    timeout: Duration,
    dir: &std::path::Path,
) -> Result<(), String> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run sh: {e}"))?;
    let pid = child.id();
    let stderr = child.stderr.take();
    let read = async move {
        let mut buf = Vec::new();
        if let Some(mut s) = stderr {
            use tokio::io::AsyncReadExt;
            let _ = (&mut s).take(4096).read_to_end(&mut buf).await;
        }
        buf
    };
    match tokio::time::timeout(timeout, async { tokio::join!(child.wait(), read) }).await {
        Ok((Ok(status), err)) if status.success() => {
            let _ = err;
            Ok(())
        }
        Ok((Ok(status), err)) => Err(format!(
            "`{command}` exited with {status}: {}",
            String::from_utf8_lossy(&err).trim()
        )),
        Ok((Err(e), _)) => Err(format!("`{command}`: {e}")),
        Err(_) => {
            // The group this child leads; it has not been reaped (we never saw it exit), so
            // the id is still ours.
            if let Some(pid) = pid.and_then(procfs::pid) {
                let _ = kill_process_group(pid, Signal::KILL);
            }
            Err(format!(
                "`{command}` did not finish within {} s",
                timeout.as_secs()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[tokio::test]
    async fn a_command_probe_passes_on_exit_0_and_says_why_otherwise() {
        assert!(
            run_command("true", Duration::from_secs(5), Path::new("."))
                .await
                .is_ok()
        );
        let e = run_command(
            "echo broken >&2; exit 3",
            Duration::from_secs(5),
            Path::new("."),
        )
        .await
        .unwrap_err();
        assert!(e.contains("broken") && e.contains('3'), "{e}");
    }

    #[tokio::test]
    async fn a_command_past_its_timeout_is_killed_with_its_group() {
        let marker = format!("chaos-probe-{}", std::process::id());
        let e = run_command(
            &format!("sleep 30 & sleep 31; echo {marker}"),
            Duration::from_millis(300),
            Path::new("."),
        )
        .await
        .unwrap_err();
        assert!(e.contains("did not finish"), "{e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let left = std::process::Command::new("pgrep")
            .args(["-f", &marker])
            .output()
            .unwrap();
        assert!(!left.status.success(), "the group outlived the timeout");
    }
}
