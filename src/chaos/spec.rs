//! A drill as the runner sees it: validated, defaults applied, durations typed. Built by
//! `chaos::drill` from a drill file; every other part of `chaos` reads only these types.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// One drill file's drill.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Drill {
    /// `metadata.name`, or the file's stem.
    pub name: String,
    /// The drill file (for messages and for resolving `manifest`).
    pub source: PathBuf,
    pub description: Option<String>,
    /// The manifest file or folder of the cluster the drill targets, resolved against the
    /// drill file's folder.
    pub manifest: PathBuf,
    /// The cluster in that manifest (`cluster:`; may be omitted when it declares one).
    pub cluster: String,
    pub steady_state: SteadyState,
    pub faults: Vec<FaultSpec>,
    /// After the last fault ends, how long the steady state has to come back.
    pub recovery_timeout: Duration,
    pub workload: Option<Workload>,
    pub trials: u32,
    pub remediation: Remediation,
    /// Seed for random target picks; `None` lets the runner draw one (and record it).
    pub seed: Option<u64>,
}

/// What must hold before a trial starts and again for the trial to pass.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SteadyState {
    /// The controller's own view: every declared service matches its desired state, every
    /// check passes and no ticket of the cluster is open (default true).
    pub controller: bool,
    pub probes: Vec<Probe>,
    /// How long the steady state must hold without a break to count as back (default 5s):
    /// a cluster that flaps is not recovered.
    pub hold: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Probe {
    pub name: String,
    pub kind: ProbeKind,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ProbeKind {
    /// An instant PromQL query against the cluster's Prometheus; every returned sample must
    /// be within the tolerance, and at least one must be returned.
    Promql { query: String, tolerance: Tolerance },
    /// An HTTP GET (loopback or a container of the cluster) answering `status`.
    Http {
        url: String,
        status: u16,
        timeout: Duration,
    },
    /// `sh -c COMMAND` exiting 0 within `timeout`.
    Command { command: String, timeout: Duration },
}

/// A sample's accepted range (both ends inclusive), or one exact value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Tolerance {
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl Tolerance {
    pub fn accepts(&self, v: f64) -> bool {
        self.min.is_none_or(|m| v >= m) && self.max.is_none_or(|m| v <= m)
    }
}

/// One fault of a trial.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultSpec {
    pub target: Target,
    pub kind: FaultKind,
    /// From the trial's injection start (default 0s).
    pub start: Duration,
    /// How long the fault is held before it is undone. `None` for instant faults (kill,
    /// restart, remove) and for faults held until the trial ends.
    pub duration: Option<Duration>,
}

/// Which containers a fault hits (service names of the drill's cluster).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "by", rename_all = "kebab-case")]
pub enum Target {
    /// These services (one or more by name).
    Services { services: Vec<String> },
    /// Every service whose manifest labels include all of these.
    Selector { labels: BTreeMap<String, String> },
    /// `count` services picked at random (seeded) from `among` (all services when empty).
    Random { among: Vec<String>, count: u32 },
}

/// A fault and its parameters.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum FaultKind {
    /// Send a signal to the container (`SIGKILL` by default). Instant.
    Kill { signal: String },
    /// `docker stop` (with the service's stop timeout). Undone by a start when held.
    Stop,
    /// `docker pause` (cgroup freezer) for `duration`; undone by unpause.
    Pause,
    /// `SIGSTOP` to the container's main process for `duration`; undone by `SIGCONT`.
    Freeze,
    /// `docker restart`. Instant.
    Restart,
    /// `docker rm -f` (volumes kept). Instant; nothing to undo: the controller recreates it.
    Remove,
    /// Disconnect from `network` (the cluster network when `None`); undone by reconnecting
    /// under the same aliases.
    NetworkDisconnect { network: Option<String> },
    /// Drop this share (0 < p <= 1) of packets both ways (iptables statistic match in the
    /// target's network namespace).
    Loss { probability: f64 },
    /// Limit egress to `rate` bits/s (tbf on every interface but `lo`).
    Bandwidth {
        rate_bits: u64,
        burst_bytes: u64,
        latency: Duration,
    },
    /// Add `delay` (± `jitter`) to egress (netem; refused where the kernel lacks it).
    Delay {
        delay: Duration,
        jitter: Option<Duration>,
    },
    /// Drop all traffic between the target and each of these services, in both
    /// directions (rules in both namespaces).
    Partition { from: Vec<String> },
    /// Fill the volume mounted at `volume` (a named volume or its mount target in the
    /// container) to `percent` of its filesystem; undone by deleting the fill file.
    DiskFill { volume: String, percent: u8 },
    /// `workers` busy loops in the target's cgroup for `duration`.
    CpuStress { workers: u32 },
}

impl FaultKind {
    /// The name the drill file uses.
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::Kill { .. } => "kill",
            FaultKind::Stop => "stop",
            FaultKind::Pause => "pause",
            FaultKind::Freeze => "freeze",
            FaultKind::Restart => "restart",
            FaultKind::Remove => "remove",
            FaultKind::NetworkDisconnect { .. } => "network-disconnect",
            FaultKind::Loss { .. } => "loss",
            FaultKind::Bandwidth { .. } => "bandwidth",
            FaultKind::Delay { .. } => "delay",
            FaultKind::Partition { .. } => "partition",
            FaultKind::DiskFill { .. } => "disk-fill",
            FaultKind::CpuStress { .. } => "cpu-stress",
        }
    }

    /// Instant faults are done once applied; the others are held and undone.
    pub fn is_instant(&self) -> bool {
        matches!(
            self,
            FaultKind::Kill { .. } | FaultKind::Restart | FaultKind::Remove
        )
    }

    /// Faults that work inside the target's network namespace (refused on host-networked
    /// targets: that namespace is the host's).
    pub fn is_network(&self) -> bool {
        matches!(
            self,
            FaultKind::Loss { .. }
                | FaultKind::Bandwidth { .. }
                | FaultKind::Delay { .. }
                | FaultKind::Partition { .. }
        )
    }
}

/// The load a trial runs before, during and after its faults.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Workload {
    /// The built-in canary: sequence-numbered keys written to an etcd cluster's v3 HTTP
    /// gateway at `endpoints`, each counted only once acknowledged, read back after recovery.
    EtcdCanary {
        endpoints: Vec<String>,
        /// Writes per second (default 20).
        rate: u32,
    },
    /// `sh -c COMMAND` started before the faults and stopped (SIGTERM to its group) after
    /// recovery; it must exit 0 then, or within `timeout` if it ends by itself.
    Command { command: String, timeout: Duration },
}

/// Who repairs during the drill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Remediation {
    /// The controller's built-in actions (as the manifest declares).
    Controller,
    /// The manifest's policies, with the agent paged where they say so.
    Agent,
    /// The controller only observes (tickets open and close, nothing acts) and the engine's
    /// restart policy (`unless-stopped`) is set on the cluster's containers for the trial.
    Baseline,
}

impl Remediation {
    pub fn as_str(self) -> &'static str {
        match self {
            Remediation::Controller => "controller",
            Remediation::Agent => "agent",
            Remediation::Baseline => "baseline",
        }
    }
}
