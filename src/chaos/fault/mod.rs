//! Faults: each kind's inject and undo, every one written to the ledger (the ticket
//! database's `chaos_faults`) before it is applied, so that no fault outlives its run.
//!
//! # Guarantees
//! - Only containers the controller owns are touched: labelled
//!   `operator.managed-by=operator` and, for the target's cluster and service, with those
//!   labels (partition peers too).
//! - Order of an injection: resolve the container (id, main pid and its start time, network
//!   mode), refuse what cannot be done cleanly (a network fault on a container sharing the
//!   host's network namespace), write the ledger row with the undo recipe ([`Undo`]),
//!   apply, record what applying learnt (pids, rules), mark it applied. A failed apply is
//!   undone at once (what may have been applied) and the row says both.
//! - Every undo is idempotent and works from the ledger row alone, after a crash: undoing a
//!   fault already undone, or whose container is gone or was restarted (a new process: the
//!   fault went with the old one), is `Ok`. A frozen process is continued only if the
//!   container still runs with the same main pid and start time.
//! - [`Faults::undo_left`] undoes what a run left only once its holder is gone (pid and
//!   start time), unless forced: it is what `operator chaos cleanup` and the controller's
//!   start call.
//!
//! # Caveats
//! Freeze, CPU stress and the network faults reach the container's main process through
//! `/proc`, and disk fill writes to the volume's folder on the host: the runner must run on
//! the engine's host and share its PID namespace. The network-namespace kinds are
//! `chaos::netfault`'s; this module records and dispatches them.

pub mod disk;
pub mod procfs;
pub mod stress;

use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{
    ContainerInspectResponse, ContainerUpdateBody, EndpointSettings, NetworkConnectRequest,
    NetworkDisconnectRequest, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    RemoveContainerOptionsBuilder, RestartContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::netfault::{self, NetFaultError, NetPeer, NetTarget, NetUndo};
use super::spec::FaultKind;
use crate::docker::{
    DockerError, LABEL_CLUSTER, LABEL_MANAGED_BY, LABEL_SERVICE, MANAGED_BY_VALUE,
};
use crate::tickets::{FaultRow, FaultState, NewFault, Store, TicketError};

pub use procfs::{Holder, Liveness};

/// Bound of one engine call (a stop or restart adds its stop timeout).
pub const CALL_LIMIT: Duration = Duration::from_secs(30);
/// Where cgroup hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The prefix of a disk-fill file, followed by the ledger id.
pub const FILL_FILE_PREFIX: &str = ".operator-chaos-fill-";

#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    #[error(transparent)]
    Connect(DockerError),
    #[error("failed to {doing}: {source}")]
    Docker {
        doing: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("timed out after {seconds}s while trying to {doing}")]
    Timeout { doing: String, seconds: u64 },
    #[error("no container {container:?} (service {service}) to inject {kind} into")]
    NoContainer {
        container: String,
        service: String,
        kind: &'static str,
    },
    #[error(
        "container {container:?} is not the controller's container of service {service} in \
         cluster {cluster} (labels {LABEL_MANAGED_BY}={MANAGED_BY_VALUE}, {LABEL_CLUSTER}, \
         {LABEL_SERVICE}); chaos faults only touch the controller's own containers"
    )]
    NotOwned {
        container: String,
        cluster: String,
        service: String,
    },
    #[error("{kind} needs container {container:?} running; it is {state}")]
    NotRunning {
        container: String,
        kind: &'static str,
        state: String,
    },
    #[error(
        "{kind} refused for container {container:?}: its network mode is {mode:?}, so its \
         network namespace is not its own (the host's or another container's) and a fault \
         there would hit more than the target"
    )]
    SharedNetwork {
        container: String,
        kind: &'static str,
        mode: String,
    },
    #[error(
        "{kind} on container {container:?} needs a network: the fault names none and the \
         cluster declares none"
    )]
    NoNetwork {
        container: String,
        kind: &'static str,
    },
    #[error("container {container:?} is not connected to network {network:?} (it is on: {on})")]
    NotConnected {
        container: String,
        network: String,
        on: String,
    },
    #[error(
        "container {container:?} has no volume or mount {volume:?} (give a named volume or \
         a mount target inside the container; mounts: {mounts})"
    )]
    NoVolume {
        container: String,
        volume: String,
        mounts: String,
    },
    #[error(
        "cannot reach the main process (pid {pid}) of container {container:?} through /proc: \
         the runner must run on the engine's host and share its PID namespace"
    )]
    ProcessUnseen { container: String, pid: u32 },
    #[error("{doing}: {source}")]
    Io {
        doing: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{kind} refused: {reason}")]
    Unsupported { kind: &'static str, reason: String },
    #[error("network fault on container {container:?}: {source}")]
    Net {
        container: String,
        #[source]
        source: Box<NetFaultError>,
    },
    #[error("fault ledger: {0}")]
    Ledger(#[from] TicketError),
    #[error("fault ledger row {ledger_id}: the undo recipe cannot be read ({source}): {recipe}")]
    Recipe {
        ledger_id: i64,
        recipe: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("no fault {0} in the ledger")]
    UnknownFault(i64),
    #[error("the fault ledger task stopped unexpectedly: {0}")]
    Task(String),
}

impl FaultError {
    fn io(doing: impl Into<String>) -> impl FnOnce(std::io::Error) -> FaultError {
        let doing = doing.into();
        move |source| FaultError::Io { doing, source }
    }
}

/// What a fault is aimed at: a service's container, and what the network faults need.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FaultTarget {
    pub cluster: String,
    pub service: String,
    /// The container's name.
    pub container: String,
    /// The cluster network (`spec.network.name`), for network-disconnect without a network
    /// of its own and for the addresses of network faults.
    pub network: Option<String>,
    /// For partition: the services to cut the target from, with their container names.
    pub peers: Vec<Peer>,
    /// The service's `stopTimeout`, for stop and restart (the engine's default when `None`).
    pub stop_timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub service: String,
    pub container: String,
}

/// How to undo one fault, from its ledger row alone (stored as its `undo` JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Undo {
    /// Instant faults (kill, restart, remove).
    Nothing,
    /// Start the container if it is still stopped.
    Start { container_id: String },
    /// Unpause the container if it is still paused.
    Unpause { container_id: String },
    /// SIGCONT the main process if the container still runs with it (same pid, same start
    /// of the process and of the container).
    Continue {
        container_id: String,
        pid: u32,
        pid_start: u64,
        started_at: String,
    },
    /// Reconnect the container to `network` with its endpoint as it was, if still detached.
    Reconnect {
        container_id: String,
        network: String,
        endpoint: Box<EndpointSettings>,
    },
    /// Delete the disk-fill file.
    DeleteFile { path: PathBuf },
    /// Kill every process whose command line carries `marker` (`pids` as started).
    KillMarked { marker: String, pids: Vec<u32> },
    /// A `chaos::netfault` fault: its plan (a `NetUndo` as JSON: every rule and qdisc it
    /// adds, in which namespace), recorded before any of it is made. `None` only before the
    /// plan exists, when nothing has been changed yet.
    Net {
        kind: String,
        container_id: String,
        tag: String,
        undo: Option<serde_json::Value>,
    },
    /// Put back the restart policy the container had before a drill's baseline set the
    /// engine's own (`unless-stopped`), if the container still exists.
    RestartPolicy {
        container_id: String,
        previous: RestartPolicy,
    },
}

/// A fault as injected.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// Its ledger row.
    pub ledger_id: i64,
    pub kind: &'static str,
    pub service: String,
    pub container_id: String,
    pub container_name: String,
    pub applied_at: DateTime<Utc>,
    /// Instant faults (kill, restart, remove) are over once applied: their row is already
    /// `undone` and [`Faults::undo`] does nothing.
    pub instant: bool,
    pub undo: Undo,
}

/// What [`Faults::undo_left`] did.
#[derive(Debug, Default)]
pub struct Sweep {
    /// Each fault it tried to undo, with the outcome.
    pub undone: Vec<(FaultRow, Result<(), FaultError>)>,
    /// Faults left alone: their run's holder still runs (or cannot be told from here).
    pub skipped: Vec<(FaultRow, String)>,
    /// Runs whose holder is gone that it marked `interrupted` (no fault of them left).
    pub ended_runs: Vec<String>,
}

impl Sweep {
    /// True when some fault could not be undone.
    pub fn failed(&self) -> bool {
        self.undone.iter().any(|(_, r)| r.is_err())
    }
}

/// Injects and undoes faults, with its own engine client and the ledger.
#[derive(Clone)]
pub struct Faults {
    docker: Docker,
    store: Arc<Store>,
}

/// An engine call's answer: 404 and 409 are outcomes for the callers here.
enum Answer<T> {
    Ok(T),
    NotFound,
    Conflict(FaultError),
}

fn status(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

async fn call<T>(
    doing: impl Into<String>,
    limit: Duration,
    fut: impl Future<Output = Result<T, bollard::errors::Error>>,
) -> Result<Answer<T>, FaultError> {
    let doing = doing.into();
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(Answer::Ok(v)),
        Ok(Err(e)) if status(&e) == Some(404) => Ok(Answer::NotFound),
        Ok(Err(source)) if status(&source) == Some(409) => {
            Ok(Answer::Conflict(FaultError::Docker { doing, source }))
        }
        Ok(Err(source)) => Err(FaultError::Docker { doing, source }),
        Err(_) => Err(FaultError::Timeout {
            doing,
            seconds: limit.as_secs(),
        }),
    }
}

impl<T> Answer<T> {
    fn required(self, not_found: impl FnOnce() -> FaultError) -> Result<T, FaultError> {
        match self {
            Answer::Ok(v) => Ok(v),
            Answer::NotFound => Err(not_found()),
            Answer::Conflict(e) => Err(e),
        }
    }
}

/// What inject needs to know of the target container.
struct Resolved {
    id: String,
    name: String,
    running: bool,
    paused: bool,
    state: String,
    pid: u32,
    started_at: String,
    network_mode: String,
    inspect: ContainerInspectResponse,
}

fn resolve(c: ContainerInspectResponse, name: &str) -> Resolved {
    let state = c.state.clone().unwrap_or_default();
    Resolved {
        id: c.id.clone().unwrap_or_default(),
        name: name.to_string(),
        running: state.running == Some(true),
        paused: state.paused == Some(true),
        state: state
            .status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "unknown".into()),
        pid: state.pid.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
        started_at: state.started_at.unwrap_or_default(),
        network_mode: c
            .host_config
            .as_ref()
            .and_then(|h| h.network_mode.clone())
            .unwrap_or_default(),
        inspect: c,
    }
}

fn owned_by(c: &ContainerInspectResponse, cluster: &str, service: &str) -> bool {
    let labels = c.config.as_ref().and_then(|c| c.labels.as_ref());
    let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
    label(LABEL_MANAGED_BY) == Some(MANAGED_BY_VALUE)
        && label(LABEL_CLUSTER) == Some(cluster)
        && label(LABEL_SERVICE) == Some(service)
}

/// A network mode whose namespace is not the container's own.
fn shares_network(mode: &str) -> bool {
    mode == "host" || mode.starts_with("container:")
}

/// The container's addresses on `network` (on every network when `None`).
fn addresses(c: &ContainerInspectResponse, network: Option<&str>) -> Vec<IpAddr> {
    let Some(networks) = c
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref())
    else {
        return Vec::new();
    };
    networks
        .iter()
        .filter(|(name, _)| network.is_none_or(|n| n == name.as_str()))
        .flat_map(|(_, e)| [e.ip_address.as_deref(), e.global_ipv6_address.as_deref()])
        .flatten()
        .filter_map(|ip| ip.parse().ok())
        .collect()
}

impl Faults {
    pub fn new(docker: Docker, store: Arc<Store>) -> Faults {
        Faults { docker, store }
    }

    /// With a client of its own (`docker::connect`, bounded by `timeout`).
    pub async fn connect(store: Arc<Store>, timeout: Duration) -> Result<Faults, FaultError> {
        let docker = crate::docker::connect(timeout)
            .await
            .map_err(FaultError::Connect)?;
        Ok(Faults::new(docker, store))
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    async fn ledger<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, TicketError> + Send + 'static,
    ) -> Result<T, FaultError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| FaultError::Task(e.to_string()))?
            .map_err(FaultError::from)
    }

    async fn blocking<T: Send + 'static>(
        f: impl FnOnce() -> Result<T, FaultError> + Send + 'static,
    ) -> Result<T, FaultError> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| FaultError::Task(e.to_string()))?
    }

    async fn inspect(
        &self,
        id_or_name: &str,
    ) -> Result<Option<ContainerInspectResponse>, FaultError> {
        match call(
            format!("inspect container {id_or_name}"),
            CALL_LIMIT,
            self.docker.inspect_container(id_or_name, None),
        )
        .await?
        {
            Answer::Ok(c) => Ok(Some(c)),
            Answer::NotFound => Ok(None),
            Answer::Conflict(e) => Err(e),
        }
    }

    /// The owned container `name` of `target`'s cluster and `service`.
    async fn resolve_owned(
        &self,
        target: &FaultTarget,
        service: &str,
        name: &str,
        kind: &'static str,
    ) -> Result<Resolved, FaultError> {
        let c = self
            .inspect(name)
            .await?
            .ok_or_else(|| FaultError::NoContainer {
                container: name.to_string(),
                service: service.to_string(),
                kind,
            })?;
        if !owned_by(&c, &target.cluster, service) {
            return Err(FaultError::NotOwned {
                container: name.to_string(),
                cluster: target.cluster.clone(),
                service: service.to_string(),
            });
        }
        Ok(resolve(c, name))
    }

    /// Injects `kind` into `target` for trial `trial` of run `run_id` (a run recorded with
    /// `Store::chaos_run_started`). See the module's guarantees for the order.
    pub async fn inject(
        &self,
        run_id: &str,
        trial: u32,
        target: &FaultTarget,
        kind: &FaultKind,
    ) -> Result<Applied, FaultError> {
        let name = kind.name();
        let c = self
            .resolve_owned(target, &target.service, &target.container, name)
            .await?;
        let needs_process = matches!(
            kind,
            FaultKind::Kill { .. } | FaultKind::Freeze | FaultKind::CpuStress { .. }
        ) || kind.is_network();
        // A fault on a container in the wrong state would fail, or be undone by undoing
        // someone else's pause: refused before anything is written.
        let needs_running = needs_process
            || matches!(
                kind,
                FaultKind::Kill { .. } | FaultKind::Stop | FaultKind::Pause
            );
        let needs_unpaused = matches!(kind, FaultKind::Pause | FaultKind::Freeze);
        if (needs_running && (!c.running || c.pid == 0)) || (needs_unpaused && c.paused) {
            return Err(FaultError::NotRunning {
                container: c.name.clone(),
                kind: name,
                state: c.state.clone(),
            });
        }
        if needs_process && !procfs::in_container(c.pid, &c.id) {
            return Err(FaultError::ProcessUnseen {
                container: c.name.clone(),
                pid: c.pid,
            });
        }
        let pid_start = if needs_process {
            procfs::start_ticks(c.pid).ok_or_else(|| FaultError::ProcessUnseen {
                container: c.name.clone(),
                pid: c.pid,
            })?
        } else {
            0
        };
        if kind.is_network() && shares_network(&c.network_mode) {
            return Err(FaultError::SharedNetwork {
                container: c.name.clone(),
                kind: name,
                mode: c.network_mode.clone(),
            });
        }
        if let FaultKind::Delay { .. } = kind {
            netfault::netem_available()
                .map_err(|reason| FaultError::Unsupported { kind: name, reason })?;
        }
        // Everything resolvable is resolved before the row is written: a refusal leaves
        // no row.
        let peers = if let FaultKind::Partition { .. } = kind {
            let mut peers = Vec::new();
            for p in &target.peers {
                let r = self
                    .resolve_owned(target, &p.service, &p.container, name)
                    .await?;
                if !r.running || r.pid == 0 || !procfs::in_container(r.pid, &r.id) {
                    return Err(FaultError::NotRunning {
                        container: r.name.clone(),
                        kind: name,
                        state: r.state.clone(),
                    });
                }
                if shares_network(&r.network_mode) {
                    return Err(FaultError::SharedNetwork {
                        container: r.name.clone(),
                        kind: name,
                        mode: r.network_mode.clone(),
                    });
                }
                peers.push((p, r));
            }
            peers
        } else {
            Vec::new()
        };
        let mut recipe = match kind {
            FaultKind::Kill { .. } | FaultKind::Restart | FaultKind::Remove => Undo::Nothing,
            FaultKind::Stop => Undo::Start {
                container_id: c.id.clone(),
            },
            FaultKind::Pause => Undo::Unpause {
                container_id: c.id.clone(),
            },
            FaultKind::Freeze => Undo::Continue {
                container_id: c.id.clone(),
                pid: c.pid,
                pid_start,
                started_at: c.started_at.clone(),
            },
            FaultKind::NetworkDisconnect { network } => {
                let network = network
                    .clone()
                    .or_else(|| target.network.clone())
                    .ok_or_else(|| FaultError::NoNetwork {
                        container: c.name.clone(),
                        kind: name,
                    })?;
                let networks = c
                    .inspect
                    .network_settings
                    .as_ref()
                    .and_then(|n| n.networks.clone())
                    .unwrap_or_default();
                let Some(endpoint) = networks.get(&network) else {
                    let mut on: Vec<&str> = networks.keys().map(String::as_str).collect();
                    on.sort();
                    return Err(FaultError::NotConnected {
                        container: c.name.clone(),
                        network,
                        on: if on.is_empty() {
                            "none".into()
                        } else {
                            on.join(", ")
                        },
                    });
                };
                // What `docker network connect` takes back: the addresses asked for and the
                // names; the rest (endpoint, gateway) the engine assigns anew.
                Undo::Reconnect {
                    container_id: c.id.clone(),
                    network,
                    endpoint: Box::new(EndpointSettings {
                        ipam_config: endpoint.ipam_config.clone(),
                        links: endpoint.links.clone(),
                        aliases: endpoint.aliases.clone(),
                        driver_opts: endpoint.driver_opts.clone(),
                        ..Default::default()
                    }),
                }
            }
            FaultKind::DiskFill { volume, .. } => {
                // The row's id names the file: a placeholder path now, the real one below.
                Undo::DeleteFile {
                    path: self.volume_dir(&c, volume).await?,
                }
            }
            FaultKind::CpuStress { .. } => Undo::KillMarked {
                marker: String::new(),
                pids: Vec::new(),
            },
            FaultKind::Loss { .. }
            | FaultKind::Bandwidth { .. }
            | FaultKind::Delay { .. }
            | FaultKind::Partition { .. } => Undo::Net {
                kind: name.to_string(),
                container_id: c.id.clone(),
                tag: String::new(),
                undo: None,
            },
        };
        let params = serde_json::to_value(kind).unwrap_or_default();
        let planned = {
            let (run_id, service, id, cname) = (
                run_id.to_string(),
                target.service.clone(),
                c.id.clone(),
                c.name.clone(),
            );
            let undo = serde_json::to_value(&recipe).unwrap_or_default();
            self.ledger(move |s| {
                s.fault_planned(
                    &NewFault {
                        run_id: &run_id,
                        trial,
                        kind: name,
                        service: &service,
                        container_id: &id,
                        container_name: &cname,
                        params: &params,
                        undo: &undo,
                    },
                    Utc::now(),
                )
            })
            .await?
        };
        // The recipe parts named by the row's id, recorded before anything is applied.
        let named = match &mut recipe {
            Undo::DeleteFile { path } => {
                *path = path.join(format!("{FILL_FILE_PREFIX}{planned}"));
                true
            }
            Undo::KillMarked { marker, .. } => {
                *marker = stress::marker(run_id, planned);
                true
            }
            Undo::Net { tag, .. } => {
                *tag = net_tag(run_id, planned);
                true
            }
            _ => false,
        };
        if named {
            self.save_recipe(planned, &recipe).await?;
        }
        let applied = self
            .apply(planned, kind, target, &c, &peers, &mut recipe)
            .await;
        let now = Utc::now();
        match applied {
            Ok(()) => {
                self.save_recipe(planned, &recipe).await?;
                self.ledger(move |s| s.fault_applied(planned, now)).await?;
                if kind.is_instant() {
                    self.ledger(move |s| s.fault_undone(planned, Ok(()), now))
                        .await?;
                }
                Ok(Applied {
                    ledger_id: planned,
                    kind: name,
                    service: target.service.clone(),
                    container_id: c.id.clone(),
                    container_name: c.name.clone(),
                    applied_at: now,
                    instant: kind.is_instant(),
                    undo: recipe,
                })
            }
            Err(e) => {
                let why = e.to_string();
                self.ledger(move |s| s.fault_apply_failed(planned, &why))
                    .await?;
                // Whatever part of it took effect goes now; the row says if that failed.
                let _ = self.undo_row(planned, &recipe).await;
                Err(e)
            }
        }
    }

    async fn save_recipe(&self, id: i64, recipe: &Undo) -> Result<(), FaultError> {
        let undo = serde_json::to_value(recipe).unwrap_or_default();
        self.ledger(move |s| s.fault_recipe(id, &undo)).await
    }

    /// The host folder of the container's mount `volume` (a named volume's name or a mount
    /// target in the container).
    async fn volume_dir(&self, c: &Resolved, volume: &str) -> Result<PathBuf, FaultError> {
        let mounts = c.inspect.mounts.clone().unwrap_or_default();
        let found = mounts.iter().find(|m| {
            m.name.as_deref() == Some(volume) || m.destination.as_deref() == Some(volume)
        });
        let Some(m) = found else {
            let listed: Vec<String> = mounts
                .iter()
                .map(|m| {
                    format!(
                        "{} at {}",
                        m.name.as_deref().or(m.source.as_deref()).unwrap_or("?"),
                        m.destination.as_deref().unwrap_or("?")
                    )
                })
                .collect();
            return Err(FaultError::NoVolume {
                container: c.name.clone(),
                volume: volume.to_string(),
                mounts: if listed.is_empty() {
                    "none".into()
                } else {
                    listed.join(", ")
                },
            });
        };
        if let Some(source) = m.source.as_deref().filter(|s| !s.is_empty()) {
            return Ok(PathBuf::from(source));
        }
        // A named volume the engine did not give a source for: ask the volume.
        let name = m.name.clone().unwrap_or_default();
        let v = call(
            format!("inspect volume {name}"),
            CALL_LIMIT,
            self.docker.inspect_volume(&name),
        )
        .await?
        .required(|| FaultError::NoVolume {
            container: c.name.clone(),
            volume: volume.to_string(),
            mounts: format!("volume {name} is gone"),
        })?;
        Ok(PathBuf::from(v.mountpoint))
    }

    async fn apply(
        &self,
        ledger_id: i64,
        kind: &FaultKind,
        target: &FaultTarget,
        c: &Resolved,
        peers: &[(&Peer, Resolved)],
        recipe: &mut Undo,
    ) -> Result<(), FaultError> {
        let id = c.id.as_str();
        let gone = || FaultError::NoContainer {
            container: c.name.clone(),
            service: target.service.clone(),
            kind: kind.name(),
        };
        let wait = target.stop_timeout.unwrap_or_default();
        let secs = target
            .stop_timeout
            .map(|t| i32::try_from(t.as_secs()).unwrap_or(i32::MAX));
        match kind {
            // To the main process, as a crash would: the engine takes a kill through its
            // API for a stop by hand, after which no restart policy restarts the container,
            // so a drill's baseline would measure the API, not the engine's recovery.
            FaultKind::Kill { signal } => {
                let number =
                    procfs::signal_number(signal).ok_or_else(|| FaultError::Unsupported {
                        kind: "kill",
                        reason: format!("unknown signal {signal}"),
                    })?;
                still_in_container(c)?;
                procfs::signal(c.pid, number).map_err(FaultError::io(format!(
                    "send {signal} to pid {} of container {}",
                    c.pid, c.name
                )))
            }
            FaultKind::Stop => {
                let mut options = StopContainerOptionsBuilder::default();
                if let Some(t) = secs {
                    options = options.t(t);
                }
                call(
                    format!("stop container {}", c.name),
                    CALL_LIMIT + wait,
                    self.docker.stop_container(id, Some(options.build())),
                )
                .await?
                .required(gone)
            }
            FaultKind::Pause => call(
                format!("pause container {}", c.name),
                CALL_LIMIT,
                self.docker.pause_container(id),
            )
            .await?
            .required(gone),
            FaultKind::Freeze => {
                still_in_container(c)?;
                procfs::signal(c.pid, procfs::Signal::STOP).map_err(FaultError::io(format!(
                    "send SIGSTOP to pid {} of container {}",
                    c.pid, c.name
                )))
            }
            FaultKind::Restart => {
                let mut options = RestartContainerOptionsBuilder::default();
                if let Some(t) = secs {
                    options = options.t(t);
                }
                call(
                    format!("restart container {}", c.name),
                    CALL_LIMIT + wait,
                    self.docker.restart_container(id, Some(options.build())),
                )
                .await?
                .required(gone)
            }
            FaultKind::Remove => {
                // Named volumes always stay; `v: false` keeps the anonymous ones too.
                let options = RemoveContainerOptionsBuilder::default()
                    .force(true)
                    .v(false)
                    .build();
                call(
                    format!("remove container {}", c.name),
                    CALL_LIMIT,
                    self.docker.remove_container(id, Some(options)),
                )
                .await?
                .required(gone)
            }
            FaultKind::NetworkDisconnect { .. } => {
                let Undo::Reconnect { network, .. } = recipe else {
                    unreachable!("network-disconnect has a reconnect recipe");
                };
                let request = NetworkDisconnectRequest {
                    container: id.to_string(),
                    force: Some(false),
                };
                call(
                    format!("disconnect container {} from network {network}", c.name),
                    CALL_LIMIT,
                    self.docker.disconnect_network(network, request),
                )
                .await?
                .required(gone)
            }
            FaultKind::DiskFill { percent, .. } => {
                let Undo::DeleteFile { path } = recipe else {
                    unreachable!("disk-fill has a delete-file recipe");
                };
                let (path, percent) = (path.clone(), *percent);
                Self::blocking(move || {
                    disk::fill(&path, percent)
                        .map(|_| ())
                        .map_err(FaultError::io(format!("fill {}", path.display())))
                })
                .await
            }
            FaultKind::CpuStress { workers } => {
                let Undo::KillMarked { marker, pids } = recipe else {
                    unreachable!("cpu-stress has a kill-marked recipe");
                };
                let (m, workers, main, cid) = (marker.clone(), *workers, c.pid, c.id.clone());
                let started = Self::blocking(move || {
                    let pids = stress::spawn(&m, workers)
                        .map_err(FaultError::io("start the CPU stress workers"))?;
                    // Still the container's process: the pid was read before the row.
                    if !procfs::in_container(main, &cid) {
                        return Err(FaultError::ProcessUnseen {
                            container: cid,
                            pid: main,
                        });
                    }
                    for pid in &pids {
                        stress::join_cgroups(*pid, main, Path::new(CGROUP_ROOT)).map_err(
                            FaultError::io(format!(
                                "move stress worker {pid} into the container's cgroups"
                            )),
                        )?;
                    }
                    Ok(pids)
                })
                .await?;
                *pids = started;
                Ok(())
            }
            FaultKind::Loss { .. }
            | FaultKind::Bandwidth { .. }
            | FaultKind::Delay { .. }
            | FaultKind::Partition { .. } => {
                let Undo::Net { tag, undo, .. } = recipe else {
                    unreachable!("network faults have a net recipe");
                };
                let peer = |service: &str, r: &Resolved| NetPeer {
                    service: service.to_string(),
                    pid: r.pid,
                    ips: addresses(&r.inspect, None),
                };
                let net_target = NetTarget {
                    service: target.service.clone(),
                    pid: c.pid,
                    ips: addresses(&c.inspect, None),
                    peers: peers.iter().map(|(p, r)| peer(&p.service, r)).collect(),
                };
                let net = |source| FaultError::Net {
                    container: c.name.clone(),
                    source: Box::new(source),
                };
                // The plan changes nothing; it is in the ledger before anything is made.
                let plan = netfault::plan(&net_target, kind, tag).await.map_err(net)?;
                *undo = Some(serde_json::to_value(&plan).unwrap_or_default());
                self.save_recipe(ledger_id, recipe).await?;
                // On failure it takes back what it made itself.
                netfault::apply_plan(&plan).await.map_err(net)
            }
        }
    }

    /// Undoes an injected fault and marks its row. Idempotent: an instant fault, one
    /// already undone, or one whose container or process is gone, is `Ok`.
    pub async fn undo(&self, applied: &Applied) -> Result<(), FaultError> {
        self.undo_row(applied.ledger_id, &applied.undo).await
    }

    /// Undoes ledger row `id` from the row alone (its stored recipe).
    pub async fn undo_fault(&self, id: i64) -> Result<(), FaultError> {
        let row = self
            .ledger(move |s| s.fault(id))
            .await?
            .ok_or(FaultError::UnknownFault(id))?;
        let recipe = recipe_of(&row)?;
        self.undo_row(id, &recipe).await
    }

    async fn undo_row(&self, id: i64, recipe: &Undo) -> Result<(), FaultError> {
        let row = self
            .ledger(move |s| s.fault(id))
            .await?
            .ok_or(FaultError::UnknownFault(id))?;
        if row.state == FaultState::Undone {
            return Ok(());
        }
        let result = self.run_undo(id, recipe).await;
        let why = result.as_ref().err().map(ToString::to_string);
        self.ledger(move |s| s.fault_undone(id, why.as_deref().map_or(Ok(()), Err), Utc::now()))
            .await?;
        result
    }

    /// A drill's baseline: the engine restarts `target`'s container itself
    /// (`unless-stopped`) while the controller only observes. Recorded in the ledger like a
    /// fault (kind `engine-restart-policy`), so a killed run's change is put back by
    /// `undo_left` like any fault; undone with [`Faults::undo`].
    pub async fn engine_restarts(
        &self,
        run_id: &str,
        target: &FaultTarget,
    ) -> Result<Applied, FaultError> {
        const KIND: &str = "engine-restart-policy";
        let c = self
            .resolve_owned(target, &target.service, &target.container, KIND)
            .await?;
        let previous = c
            .inspect
            .host_config
            .as_ref()
            .and_then(|h| h.restart_policy.clone())
            .unwrap_or_default();
        let recipe = Undo::RestartPolicy {
            container_id: c.id.clone(),
            previous,
        };
        let planned = {
            let (run_id, service, id, cname) = (
                run_id.to_string(),
                target.service.clone(),
                c.id.clone(),
                c.name.clone(),
            );
            let undo = serde_json::to_value(&recipe).unwrap_or_default();
            let params = serde_json::json!({"restartPolicy": "unless-stopped"});
            self.ledger(move |s| {
                s.fault_planned(
                    &NewFault {
                        run_id: &run_id,
                        trial: 0,
                        kind: KIND,
                        service: &service,
                        container_id: &id,
                        container_name: &cname,
                        params: &params,
                        undo: &undo,
                    },
                    Utc::now(),
                )
            })
            .await?
        };
        let policy = RestartPolicy {
            name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
            maximum_retry_count: None,
        };
        let set = self.set_restart_policy(&c.id, policy).await;
        let now = Utc::now();
        match set {
            Ok(()) => {
                self.ledger(move |s| s.fault_applied(planned, now)).await?;
                Ok(Applied {
                    ledger_id: planned,
                    kind: KIND,
                    service: target.service.clone(),
                    container_id: c.id.clone(),
                    container_name: c.name.clone(),
                    applied_at: now,
                    instant: false,
                    undo: recipe,
                })
            }
            Err(e) => {
                let why = e.to_string();
                self.ledger(move |s| s.fault_apply_failed(planned, &why))
                    .await?;
                let _ = self.undo_row(planned, &recipe).await;
                Err(e)
            }
        }
    }

    async fn set_restart_policy(&self, id: &str, policy: RestartPolicy) -> Result<(), FaultError> {
        let body = ContainerUpdateBody {
            restart_policy: Some(policy),
            ..Default::default()
        };
        match call(
            format!("update the restart policy of container {id}"),
            CALL_LIMIT,
            self.docker.update_container(id, body),
        )
        .await?
        {
            Answer::Ok(()) | Answer::NotFound => Ok(()),
            Answer::Conflict(e) => Err(e),
        }
    }

    async fn run_undo(&self, ledger_id: i64, recipe: &Undo) -> Result<(), FaultError> {
        match recipe {
            Undo::Nothing => Ok(()),
            Undo::RestartPolicy {
                container_id,
                previous,
            } => {
                self.set_restart_policy(container_id, previous.clone())
                    .await
            }
            Undo::Start { container_id } => {
                let Some(c) = self.inspect(container_id).await? else {
                    return Ok(());
                };
                if c.state.and_then(|s| s.running) == Some(true) {
                    return Ok(());
                }
                match call(
                    format!("start container {container_id}"),
                    CALL_LIMIT,
                    self.docker.start_container(container_id, None),
                )
                .await?
                {
                    Answer::Ok(()) | Answer::NotFound => Ok(()),
                    Answer::Conflict(e) => Err(e),
                }
            }
            Undo::Unpause { container_id } => {
                let Some(c) = self.inspect(container_id).await? else {
                    return Ok(());
                };
                if c.state.and_then(|s| s.paused) != Some(true) {
                    return Ok(());
                }
                match call(
                    format!("unpause container {container_id}"),
                    CALL_LIMIT,
                    self.docker.unpause_container(container_id),
                )
                .await?
                {
                    Answer::Ok(()) | Answer::NotFound => Ok(()),
                    // Unpaused by someone else between the inspect and now.
                    Answer::Conflict(e) => match self.inspect(container_id).await? {
                        Some(c) if c.state.as_ref().and_then(|s| s.paused) == Some(true) => Err(e),
                        _ => Ok(()),
                    },
                }
            }
            Undo::Continue {
                container_id,
                pid,
                pid_start,
                started_at,
            } => {
                let Some(c) = self.inspect(container_id).await? else {
                    return Ok(());
                };
                let state = c.state.unwrap_or_default();
                let same = state.running == Some(true)
                    && state.pid == Some(i64::from(*pid))
                    && state.started_at.as_deref() == Some(started_at.as_str())
                    && procfs::start_ticks(*pid) == Some(*pid_start);
                if !same {
                    // Restarted or stopped: the frozen process is gone with its fault.
                    return Ok(());
                }
                match procfs::signal(*pid, procfs::Signal::CONT) {
                    Err(e) if e.raw_os_error() == Some(rustix::io::Errno::SRCH.raw_os_error()) => {
                        Ok(())
                    }
                    other => other.map_err(FaultError::io(format!(
                        "send SIGCONT to pid {pid} of container {container_id}"
                    ))),
                }
            }
            Undo::Reconnect {
                container_id,
                network,
                endpoint,
            } => {
                let Some(c) = self.inspect(container_id).await? else {
                    return Ok(());
                };
                let attached = c
                    .network_settings
                    .and_then(|n| n.networks)
                    .is_some_and(|n| n.contains_key(network));
                if attached {
                    return Ok(());
                }
                let request = NetworkConnectRequest {
                    container: container_id.clone(),
                    endpoint_config: Some((**endpoint).clone()),
                };
                match call(
                    format!("reconnect container {container_id} to network {network}"),
                    CALL_LIMIT,
                    self.docker.connect_network(network, request),
                )
                .await?
                {
                    Answer::Ok(()) => Ok(()),
                    Answer::NotFound => match self.inspect(container_id).await? {
                        None => Ok(()),
                        Some(_) => Err(FaultError::Unsupported {
                            kind: "network-disconnect",
                            reason: format!(
                                "network {network} is gone; container {container_id} cannot be reconnected to it"
                            ),
                        }),
                    },
                    Answer::Conflict(e) => Err(e),
                }
            }
            Undo::DeleteFile { path } => {
                if path
                    .file_name()
                    .is_none_or(|n| !n.to_string_lossy().starts_with(FILL_FILE_PREFIX))
                {
                    // Never a file this module did not name (a row edited by hand, or
                    // written before the name was known).
                    return Ok(());
                }
                let path = path.clone();
                Self::blocking(move || {
                    disk::unfill(&path)
                        .map_err(FaultError::io(format!("delete {}", path.display())))
                })
                .await
            }
            Undo::KillMarked { marker, .. } => {
                if marker.is_empty() {
                    return Ok(()); // nothing was started before the marker was recorded
                }
                let marker = marker.clone();
                Self::blocking(move || {
                    stress::stop(&marker).map_err(FaultError::io("stop the CPU stress workers"))
                })
                .await
            }
            Undo::Net {
                container_id, undo, ..
            } => {
                // No plan yet: nothing was changed.
                let Some(u) = undo else { return Ok(()) };
                let u: NetUndo =
                    serde_json::from_value(u.clone()).map_err(|source| FaultError::Recipe {
                        ledger_id,
                        recipe: u.to_string(),
                        source,
                    })?;
                netfault::undo(&u).await.map_err(|source| FaultError::Net {
                    container: container_id.clone(),
                    source: Box::new(source),
                })
            }
        }
    }

    /// Undoes every fault not undone (of `run`, or of every run) whose run's holder is gone;
    /// with `force`, also those of runs that still run (or run elsewhere). Runs whose holder
    /// is gone and that have nothing left are ended as `interrupted`.
    pub async fn undo_left(&self, run: Option<&str>, force: bool) -> Result<Sweep, FaultError> {
        let filter = run.map(str::to_string);
        let left = self
            .ledger(move |s| s.faults_left(filter.as_deref()))
            .await?;
        let mut sweep = Sweep::default();
        let mut holders: std::collections::HashMap<String, Option<(Liveness, String)>> =
            Default::default();
        for row in left {
            if !holders.contains_key(&row.run_id) {
                let id = row.run_id.clone();
                let found = self.ledger(move |s| s.chaos_run(&id)).await?;
                let alive = found.map(|r| (procfs::liveness(&r), r.holder));
                holders.insert(row.run_id.clone(), alive);
            }
            let why_not = match &holders[&row.run_id] {
                Some((Liveness::Alive, holder)) => {
                    Some(format!("its run {} is still going ({holder})", row.run_id))
                }
                Some((Liveness::Elsewhere { .. }, holder)) => Some(format!(
                    "its run {} is held elsewhere ({holder}; this is {}): another host or PID namespace, where it cannot be told from here whether it still runs",
                    row.run_id,
                    procfs::place()
                )),
                Some((Liveness::Gone, _)) | None => None,
            };
            if let Some(why) = why_not
                && !force
            {
                sweep.skipped.push((row, why));
                continue;
            }
            let result = match recipe_of(&row) {
                Ok(recipe) => self.undo_row(row.id, &recipe).await,
                Err(e) => {
                    let why = e.to_string();
                    let id = row.id;
                    self.ledger(move |s| s.fault_undone(id, Err(&why), Utc::now()))
                        .await?;
                    Err(e)
                }
            };
            sweep.undone.push((row, result));
        }
        let unended = self.ledger(|s| s.chaos_runs_unended()).await?;
        for r in unended {
            if run.is_some_and(|id| id != r.id) || procfs::liveness(&r) != Liveness::Gone {
                continue;
            }
            let id = r.id.clone();
            let still = self.ledger(move |s| s.faults_left(Some(&id))).await?;
            if still.is_empty() {
                let id = r.id.clone();
                if self
                    .ledger(move |s| s.chaos_run_ended(&id, "interrupted", Utc::now()))
                    .await?
                {
                    sweep.ended_runs.push(r.id);
                }
            }
        }
        Ok(sweep)
    }
}

/// Checked again right before a signal: the pid was read a few engine and database calls
/// ago, and a process that died meanwhile may have left its number to a host process.
fn still_in_container(c: &Resolved) -> Result<(), FaultError> {
    if procfs::in_container(c.pid, &c.id) {
        Ok(())
    } else {
        Err(FaultError::ProcessUnseen {
            container: c.name.clone(),
            pid: c.pid,
        })
    }
}

/// The tag (iptables comment, qdisc handle seed) of ledger row `ledger_id` of run `run_id`:
/// unique across databases as the run id is.
pub fn net_tag(run_id: &str, ledger_id: i64) -> String {
    let run: String = run_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{}-{run}-{ledger_id}", netfault::TAG_PREFIX)
}

/// The undo recipe stored in a ledger row.
pub fn recipe_of(row: &FaultRow) -> Result<Undo, FaultError> {
    serde_json::from_value(row.undo.clone()).map_err(|source| FaultError::Recipe {
        ledger_id: row.id,
        recipe: row.undo.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipes_round_trip_through_the_ledger_json() {
        let recipes = [
            Undo::Nothing,
            Undo::Unpause {
                container_id: "abc".into(),
            },
            Undo::Continue {
                container_id: "abc".into(),
                pid: 7,
                pid_start: 99,
                started_at: "2026-12-01T05:35:18.855463239Z".into(),
            },
            Undo::Reconnect {
                container_id: "abc".into(),
                network: "net".into(),
                endpoint: Box::new(EndpointSettings {
                    aliases: Some(vec!["db".into()]),
                    ..Default::default()
                }),
            },
            Undo::DeleteFile {
                path: "/v/.operator-chaos-fill-3".into(),
            },
            Undo::KillMarked {
                marker: "m".into(),
                pids: vec![1, 2],
            },
            Undo::Net {
                kind: "loss".into(),
                container_id: "abc".into(),
                tag: "operator-chaos-3".into(),
                undo: Some(serde_json::json!({"tag": "operator-chaos-3"})),
            },
        ];
        for r in recipes {
            let json = serde_json::to_value(&r).unwrap();
            assert!(json["action"].is_string(), "{json}");
            assert_eq!(serde_json::from_value::<Undo>(json).unwrap(), r);
        }
    }

    #[test]
    fn shared_namespaces_are_told_apart_from_own_ones() {
        assert!(shares_network("host"));
        assert!(shares_network("container:abc"));
        assert!(!shares_network("bridge"));
        assert!(!shares_network("tikv_default"));
        assert!(!shares_network(""));
    }

    #[tokio::test]
    async fn undo_never_deletes_a_file_it_did_not_name() {
        let dir = std::env::temp_dir().join(format!("operator-fault-del-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let theirs = dir.join("data.db");
        std::fs::write(&theirs, b"keep").unwrap();
        let docker = Docker::connect_with_defaults().unwrap();
        let store = Arc::new(Store::open(&dir.join("t.db")).unwrap());
        let faults = Faults::new(docker, store);
        faults
            .run_undo(
                1,
                &Undo::DeleteFile {
                    path: theirs.clone(),
                },
            )
            .await
            .unwrap();
        assert!(theirs.exists());
        let ours = dir.join(format!("{FILL_FILE_PREFIX}1"));
        std::fs::write(&ours, b"fill").unwrap();
        faults
            .run_undo(1, &Undo::DeleteFile { path: ours.clone() })
            .await
            .unwrap();
        assert!(!ours.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_net_fault_is_undone_from_its_plan_and_one_without_a_plan_changed_nothing() {
        let dir = std::env::temp_dir().join(format!("operator-fault-net-{}", std::process::id()));
        let docker = Docker::connect_with_defaults().unwrap();
        let store = Arc::new(Store::open(&dir.join("t.db")).unwrap());
        let faults = Faults::new(docker, store);
        let recipe = |undo| Undo::Net {
            kind: "loss".into(),
            container_id: "abc".into(),
            tag: "operator-chaos-5".into(),
            undo,
        };
        // Written before the plan: nothing was changed, nothing to undo.
        faults.run_undo(5, &recipe(None)).await.unwrap();
        // A plan that cannot be read is an error naming the row, never a silent success.
        let err = faults
            .run_undo(5, &recipe(Some(serde_json::json!({"tag": 1}))))
            .await
            .unwrap_err();
        assert!(
            matches!(err, FaultError::Recipe { ledger_id: 5, .. }),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn net_tags_are_valid_and_unique_per_run_and_row() {
        let tag = net_tag("20261201T031500Z-1a2b3c4d", 7);
        assert_eq!(tag, "operator-chaos-20261201T031500Z-1a2b3c4d-7");
        netfault::validate_tag(&tag).unwrap();
        netfault::validate_tag(&net_tag("a run/with spaces", 1)).unwrap();
        assert_ne!(net_tag("r1", 1), net_tag("r2", 1));
    }
}
