//! A session's sandbox: its authorising Docker proxy ([`super::proxy`]) on a socket of its
//! own, and its toolbox ([`super::toolbox`]) whose only route to Docker that socket is.
//! Opened before the session's first turn, closed after its last; every request the proxy
//! decides goes into the session's audit.
//!
//! # Guarantees
//! - A session whose sandbox cannot be opened does not run: there is no fallback to running
//!   a command anywhere else. The error is one line naming the fix.
//! - The socket's folder is `sessions/toolbox/<session>/` beside the database (0700, the
//!   socket 0600), owned by the toolbox's user; the toolbox mounts that folder and nothing
//!   else of the controller's.
//! - Closing stops the proxy (every open stream and exec ends), removes the toolbox (every
//!   process of the session ends) and the socket's folder.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::manifest::{Cluster, SafetyMode};
use crate::tickets::{AuditKind, Journal, NewEntry};

use super::audit::AuditLog;
use super::proxy::{Proxy, ProxyConfig, ProxyEvent, Registry};
use super::toolbox::{self, Toolbox, ToolboxError, ToolboxSpec};

/// The folder, beside the database, where the sessions' proxy sockets live.
pub fn sockets_dir(db: &Path) -> PathBuf {
    super::audit::default_sessions_dir(db).join("toolbox")
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "cannot prepare the agent's socket folder {path}: {source} (the folder beside the database must be writable by the controller)"
    )]
    Folder {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the agent's proxy socket {path} is not on a folder mounted from the host, so no toolbox can mount it: mount the database folder (~/.operator) into the sidecar"
    )]
    NotMounted { path: PathBuf },
    #[error(
        "this controller runs in container {id}, which the engine cannot inspect ({why}): the agent's toolbox cannot be given its socket; is DOCKER_HOST the engine this container runs on?"
    )]
    OwnContainer { id: String, why: String },
    #[error(
        "the engine is not on a unix socket ({0}): the agent's proxy needs one; set DOCKER_HOST=unix:///PATH"
    )]
    NotUnix(String),
    #[error("cannot start the agent's Docker proxy: {0}")]
    Proxy(#[from] super::proxy::ProxyError),
    #[error(transparent)]
    Toolbox(#[from] ToolboxError),
}

/// The container this process runs in, when it runs in one (the sidecar).
#[derive(Debug, Clone, Default)]
pub struct OwnContainer {
    /// Its full id and name: no request of the agent's may name it.
    pub aliases: Vec<String>,
    /// Its image: the sidecar's toolbox image by default.
    pub image: Option<String>,
    /// `(destination in here, source on the host)` of each bind mount.
    pub mounts: Vec<(PathBuf, PathBuf)>,
}

impl OwnContainer {
    /// The container this process runs in, if it runs in one: the engine bind-mounts
    /// `<data-root>/containers/<id>/hostname` (and `hosts`, `resolv.conf`) into every
    /// container, host networking included, which `/proc/self/mountinfo` shows; that id is
    /// then asked of the engine. On a host, `None`.
    ///
    /// # Errors
    /// In a container the engine does not answer for: without its mounts no toolbox could
    /// reach the session's socket, and without its name the proxy could not refuse it, so
    /// no session may run as if on a host.
    pub async fn find(docker: &Docker) -> Result<Option<OwnContainer>, SandboxError> {
        let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return Ok(None);
        };
        let Some(id) = container_id_in_mounts(&mountinfo) else {
            return Ok(None);
        };
        let inspected =
            tokio::time::timeout(Duration::from_secs(10), docker.inspect_container(&id, None))
                .await;
        let c = match inspected {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return Err(SandboxError::OwnContainer {
                    id,
                    why: e.to_string(),
                });
            }
            Err(_) => {
                return Err(SandboxError::OwnContainer {
                    id,
                    why: "no answer from the engine within 10 s".into(),
                });
            }
        };
        let mut aliases = vec![id];
        if let Some(name) = &c.name {
            aliases.push(name.trim_start_matches('/').to_string());
        }
        let mounts = c
            .mounts
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| Some((PathBuf::from(m.destination?), PathBuf::from(m.source?))))
            .collect();
        Ok(Some(OwnContainer {
            aliases,
            image: c.config.and_then(|c| c.image).or(c.image),
            mounts,
        }))
    }

    /// `path` (in here) as the engine sees it: through the bind mount that holds it (the
    /// deepest), `None` when none does.
    pub fn host_path(&self, path: &Path) -> Option<PathBuf> {
        self.mounts
            .iter()
            .filter(|(dest, _)| path.starts_with(dest))
            .max_by_key(|(dest, _)| dest.components().count())
            .map(|(dest, source)| {
                let rest = path.strip_prefix(dest).unwrap_or(Path::new(""));
                source.join(rest)
            })
    }
}

/// Found the same way as the sidecar's own mounts ([`crate::docker::hostpath`]).
pub use crate::docker::hostpath::container_id_in_mounts;

/// What a sandbox is opened for.
pub struct SandboxSpec<'a> {
    pub session: &'a str,
    pub mode: SafetyMode,
    pub cluster: &'a Cluster,
    pub db: &'a Path,
    /// The configured toolbox image, if one is.
    pub image: Option<&'a str>,
    /// The session's wall time: the toolbox's lifetime.
    pub lifetime: Duration,
    pub secret_names: Vec<String>,
    pub secret_values: Vec<String>,
    pub own: Option<&'a OwnContainer>,
}

/// An open sandbox; [`Sandbox::close`] it.
pub struct Sandbox {
    pub toolbox: Arc<Toolbox>,
    proxy: Proxy,
    dir: PathBuf,
    drain: JoinHandle<()>,
}

/// Requests of a session audited one by one in any second; changes always are. The rest of
/// that second's are counted in one entry: a command looping on the proxy must not turn
/// into thousands of audit rows (each also a rewrite of the session's file) a second.
const LISTED_PER_SECOND: u32 = 10;
/// Distinct requests one counted entry names; the rest are summed as `other`.
const COUNTED_KINDS: usize = 20;

/// Writes the proxy's decisions into the session's audit until the proxy is gone.
async fn audit_requests(
    mut received: tokio::sync::mpsc::UnboundedReceiver<ProxyEvent>,
    log: AuditLog,
) {
    let record = |entry: NewEntry| {
        let log = log.clone();
        async move {
            if let Err(err) = log.record(entry).await {
                warn!(session = log.id(), error = %err, "cannot audit a Docker request of the agent's");
            }
        }
    };
    let mut second = tokio::time::Instant::now();
    let mut listed = 0;
    let mut counted: std::collections::BTreeMap<String, u64> = Default::default();
    loop {
        let next = if counted.is_empty() {
            received.recv().await.map(Some)
        } else {
            tokio::select! {
                e = received.recv() => e.map(Some),
                _ = tokio::time::sleep_until(second + Duration::from_secs(1)) => Some(None),
            }
        };
        if second.elapsed() >= Duration::from_secs(1) {
            if !counted.is_empty() {
                record(counted_entry(std::mem::take(&mut counted))).await;
            }
            second = tokio::time::Instant::now();
            listed = 0;
        }
        let Some(next) = next else { break };
        let Some(e) = next else { continue };
        if e.mutation || listed < LISTED_PER_SECOND {
            listed += u32::from(!e.mutation);
            let kind = if e.allowed {
                AuditKind::Allowed
            } else {
                AuditKind::Denied
            };
            let detail = json!({
                "docker_api": format!("{} {}", e.method, e.path),
                "target": e.target,
                "reason": e.reason,
                "status": e.status,
                "mutation": e.mutation,
                "at": e.at,
            });
            record(NewEntry::new(kind, detail).tool("", "docker-api")).await;
        } else {
            let path = e.path.split('?').next().unwrap_or("");
            let key = format!(
                "{} {path} ({})",
                e.method,
                if e.allowed { "allowed" } else { "refused" }
            );
            if counted.len() < COUNTED_KINDS || counted.contains_key(&key) {
                *counted.entry(key).or_default() += 1;
            } else {
                *counted.entry("other".into()).or_default() += 1;
            }
        }
    }
    if !counted.is_empty() {
        record(counted_entry(counted)).await;
    }
}

/// One audit entry for the requests of a second past [`LISTED_PER_SECOND`].
fn counted_entry(counted: std::collections::BTreeMap<String, u64>) -> NewEntry {
    let total: u64 = counted.values().sum();
    NewEntry::new(
        AuditKind::Note,
        json!({
            "docker_api": format!("{total} more requests in one second, counted, not listed"),
            "counted": counted,
        }),
    )
    .tool("", "docker-api")
}

/// The engine's unix socket, from `DOCKER_HOST` or the default.
fn engine_socket() -> Result<PathBuf, SandboxError> {
    let endpoint = crate::docker::endpoint();
    match endpoint.strip_prefix("unix://") {
        Some(path) => Ok(PathBuf::from(path)),
        None => Err(SandboxError::NotUnix(endpoint)),
    }
}

/// The user a toolbox runs as: this process's own, or nobody (65534) when that is root.
/// (A non-root user keeps its group, even group 0 as some platforms give: the socket folder
/// can only be given to a group the controller is in.)
fn toolbox_user() -> (u32, u32) {
    let (uid, gid) = (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    if uid == 0 { (65534, 65534) } else { (uid, gid) }
}

impl Sandbox {
    pub async fn open(
        docker: &Docker,
        journal: &Journal,
        registry: &Arc<Registry>,
        spec: SandboxSpec<'_>,
        audit: &AuditLog,
    ) -> Result<Sandbox, SandboxError> {
        let user = toolbox_user();
        let dir = sockets_dir(spec.db).join(spec.session);
        let folder = |source| SandboxError::Folder {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(folder)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(folder)?;
        std::os::unix::fs::chown(&dir, Some(user.0), Some(user.1)).map_err(folder)?;
        let host_dir = match spec.own {
            Some(own) => match own.host_path(&dir) {
                Some(host) => host,
                None => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(SandboxError::NotMounted { path: dir });
                }
            },
            None => dir.clone(),
        };
        let (events, received) = tokio::sync::mpsc::unbounded_channel::<ProxyEvent>();
        let drain = tokio::spawn(audit_requests(received, audit.clone()));
        let socket = engine_socket();
        let proxy = match socket {
            Ok(engine_socket) => Proxy::start(ProxyConfig {
                session: spec.session.to_string(),
                listen: dir.join(toolbox::SOCKET_NAME),
                socket_owner: Some(user),
                engine_socket,
                docker: docker.clone(),
                mode: spec.mode,
                cluster: spec.cluster.clone(),
                journal: journal.clone(),
                secret_names: spec.secret_names.clone(),
                secret_values: spec.secret_values.clone(),
                protected: spec.own.map(|o| o.aliases.clone()).unwrap_or_default(),
                registry: registry.clone(),
                events,
            })
            .await
            .map_err(SandboxError::from),
            Err(e) => Err(e),
        };
        let proxy = match proxy {
            Ok(proxy) => proxy,
            Err(e) => {
                drain.abort();
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let image = spec
            .image
            .map(str::to_string)
            .or_else(|| spec.own.and_then(|o| o.image.clone()))
            .unwrap_or_else(|| toolbox::DEFAULT_IMAGE.to_string());
        // Observe reaches nothing over the network (its reads go through the typed tools);
        // approve and execute reach the cluster's network, when it exists.
        let network = match spec.mode {
            SafetyMode::Observe => None,
            _ => {
                let name = &spec.cluster.network.name;
                let exists = tokio::time::timeout(
                    Duration::from_secs(10),
                    docker.inspect_network(name, None),
                )
                .await;
                matches!(exists, Ok(Ok(_))).then(|| name.clone())
            }
        };
        let toolbox_spec = ToolboxSpec::new(image, host_dir, spec.db)
            .user(user.0, user.1)
            .network(network)
            .cluster(&spec.cluster.name)
            .lifetime(spec.lifetime);
        let toolbox = match Toolbox::start(docker, spec.session, &toolbox_spec).await {
            Ok(t) => t,
            Err(e) => {
                proxy.stop().await;
                drain.abort();
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e.into());
            }
        };
        Ok(Sandbox {
            toolbox: Arc::new(toolbox),
            proxy,
            dir,
            drain,
        })
    }

    /// Closes the sandbox; returns the mutations the session made that the engine accepted.
    pub async fn close(self) -> Vec<(DateTime<Utc>, String)> {
        self.toolbox.remove().await;
        // Read once stopped: a change still on its way to the engine is recorded by then.
        let mutations = self.proxy.stop().await;
        // Every event was sent before stop returned: the drain ends once the sender is gone
        // (bounded; what it has not written by then is dropped, not left running).
        let drain = self.drain;
        let abort = drain.abort_handle();
        if tokio::time::timeout(Duration::from_secs(10), drain)
            .await
            .is_err()
        {
            abort.abort();
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            warn!(path = %self.dir.display(), error = %e, "cannot remove the session's socket folder");
        }
        mutations
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_in_here_is_mapped_through_the_deepest_mount_that_holds_it() {
        let own = OwnContainer {
            mounts: vec![
                ("/home/operator".into(), "/srv/home".into()),
                (
                    "/home/operator/.operator".into(),
                    "/home/alice/.operator".into(),
                ),
            ],
            ..Default::default()
        };
        assert_eq!(
            own.host_path(Path::new("/home/operator/.operator/sessions/toolbox/s1")),
            Some(PathBuf::from("/home/alice/.operator/sessions/toolbox/s1"))
        );
        assert_eq!(
            own.host_path(Path::new("/home/operator/x")),
            Some(PathBuf::from("/srv/home/x"))
        );
        assert_eq!(own.host_path(Path::new("/tmp/x")), None);
        // A prefix of a name is not a parent folder.
        assert_eq!(own.host_path(Path::new("/home/operatorx")), None);
    }
}
