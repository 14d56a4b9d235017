//! Docker: the connection, the labels that mark what the controller owns, the observed store
//! of owned containers, and the actions that change them.
//!
//! # Guarantees
//! The controller only ever acts on containers that carry [`LABEL_MANAGED_BY`]` = `
//! [`MANAGED_BY_VALUE`]; a container of the same name without that label is reported, never
//! touched (see [`actions`]).

pub mod actions;
mod call;
pub mod hostpath;
pub mod observed;
mod process;
pub mod spec;
pub mod store;
pub mod watcher;

use std::fmt;

use bollard::Docker;

pub(crate) use call::is_not_found;
pub use observed::{ContainerStatus, HealthState, ObservedContainer};
pub use store::Store;

/// Marks a container (or network) as created and owned by this controller.
pub const LABEL_MANAGED_BY: &str = "operator.managed-by";
pub const MANAGED_BY_VALUE: &str = "operator";
/// The cluster (`metadata.name`) a container belongs to.
pub const LABEL_CLUSTER: &str = "operator.cluster";
/// The service (`spec.services[].name`) a container realises.
pub const LABEL_SERVICE: &str = "operator.service";
/// Hash of the service spec the container was created from; a different hash means
/// the manifest changed and the container must be recreated.
pub const LABEL_SPEC_HASH: &str = "operator.spec-hash";

/// The unit of work: one service of one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct ServiceKey {
    pub cluster: String,
    pub service: String,
}

impl ServiceKey {
    pub fn new(cluster: impl Into<String>, service: impl Into<String>) -> Self {
        ServiceKey {
            cluster: cluster.into(),
            service: service.into(),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.cluster, self.service)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The engine cannot be reached for a reason a person can fix (a socket that is not
    /// there, one this user may not open, nothing listening): what is wrong, then the fix.
    #[error("cannot reach the Docker engine at {endpoint}: {problem}; {fix}")]
    Unreachable {
        endpoint: String,
        problem: String,
        fix: String,
    },
    #[error("cannot connect to the Docker engine ({endpoint}): {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("the Docker engine at {endpoint} did not answer the version handshake: {source}")]
    Negotiate {
        endpoint: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("failed to {doing}: {source}")]
    Api {
        doing: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error(
        "image {image:?} is not present locally and could not be pulled: {reason} \
         (check the tag in the manifest, or load the image with `docker load`)"
    )]
    ImageUnavailable { image: String, reason: String },
    #[error(
        "a container named {name:?} exists but is not this service's (not labelled by operator \
         for it); leaving it alone: rename or remove it yourself"
    )]
    NotOwned { name: String },
    #[error(
        "network {network:?} does not exist and is declared external; create it first \
         (docker network create {network})"
    )]
    ExternalNetworkMissing { network: String },
    #[error(
        "network {network:?} must be recreated to apply its declared options, but containers \
         the controller does not own are attached ({}); disconnect them, or recreate the \
         network yourself",
        containers.join(", ")
    )]
    ForeignOnNetwork {
        network: String,
        containers: Vec<String>,
    },
    #[error("timed out after {seconds}s while trying to {doing}")]
    Timeout { doing: String, seconds: u64 },
}

impl DockerError {
    pub(crate) fn api(doing: impl Into<String>, source: bollard::errors::Error) -> Self {
        DockerError::Api {
            doing: doing.into(),
            source,
        }
    }
}

/// The default engine address, used when `DOCKER_HOST` is not set.
pub const DEFAULT_ENDPOINT: &str = "unix:///var/run/docker.sock";

/// Where the engine is, for messages: `DOCKER_HOST` or the default socket.
pub fn endpoint() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| DEFAULT_ENDPOINT.to_string())
}

/// Connects through `DOCKER_HOST` (or the default socket) and negotiates the API version,
/// so that older engines (Debian's 20.10 speaks 1.41) are spoken to in their own version.
///
/// Bounded: the handshake gives up after `timeout`.
///
/// # Errors
/// A socket that is missing, that this user may not open, or where nothing listens is
/// [`DockerError::Unreachable`], naming the socket and the fix (mount the socket, add the
/// socket's group, start the engine, correct `DOCKER_HOST`).
pub async fn connect(timeout: std::time::Duration) -> Result<Docker, DockerError> {
    let endpoint = endpoint();
    let given = std::env::var_os("DOCKER_HOST").is_some();
    let docker = Docker::connect_with_defaults().map_err(|source| {
        diagnose(&endpoint, given, &source).unwrap_or(DockerError::Connect {
            endpoint: endpoint.clone(),
            source,
        })
    })?;
    match tokio::time::timeout(timeout, docker.negotiate_version()).await {
        Ok(Ok(docker)) => Ok(docker),
        Ok(Err(source)) => Err(diagnose(&endpoint, given, &source)
            .unwrap_or(DockerError::Negotiate { endpoint, source })),
        Err(_) => Err(DockerError::Timeout {
            doing: format!("reach the Docker engine at {endpoint}"),
            seconds: timeout.as_secs(),
        }),
    }
}

/// Says why a connection to `endpoint` failed and what would fix it, when the cause is one
/// a person can act on; `None` otherwise (the engine's own error is then reported as is).
/// `given`: the endpoint came from `DOCKER_HOST` rather than being the default.
fn diagnose(endpoint: &str, given: bool, error: &bollard::errors::Error) -> Option<DockerError> {
    let socket = endpoint.strip_prefix("unix://");
    let io_kind = io_cause(error).map(std::io::Error::kind);
    let missing = matches!(error, bollard::errors::Error::SocketNotFoundError(_))
        || io_kind == Some(std::io::ErrorKind::NotFound);
    let unreachable = |problem: String, fix: String| {
        Some(DockerError::Unreachable {
            endpoint: endpoint.to_string(),
            problem,
            fix,
        })
    };
    match (socket, io_kind) {
        // bollard says "not found" for a socket it cannot even look at: tell them apart.
        (Some(path), _) if missing => match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                unreachable(format!("{path} cannot be looked at: {e}"), denied_fix(path))
            }
            _ if !given => unreachable(
                format!("there is no socket at {path}"),
                format!(
                    "is {path} mounted? Run the container with -v {path}:{path}, start the \
                     engine (dockerd), or set DOCKER_HOST to where it listens"
                ),
            ),
            _ => unreachable(
                format!("there is no socket at {path}"),
                format!(
                    "is the engine running, and is DOCKER_HOST={endpoint} where it listens? \
                     (unset DOCKER_HOST for the default {DEFAULT_ENDPOINT})"
                ),
            ),
        },
        (Some(path), Some(std::io::ErrorKind::PermissionDenied)) => unreachable(
            format!("permission denied on {path} ({})", socket_owner(path)),
            denied_fix(path),
        ),
        (_, Some(std::io::ErrorKind::ConnectionRefused)) => unreachable(
            match socket {
                Some(path) => {
                    format!("nothing listens on {path} (a socket left by an engine that stopped?)")
                }
                None => "nothing listens there (connection refused)".to_string(),
            },
            if given {
                "start the engine (dockerd), or point DOCKER_HOST at a running one".to_string()
            } else {
                "start the engine (dockerd), or set DOCKER_HOST to a running one".to_string()
            },
        ),
        _ => None,
    }
}

/// The fix for a socket this user may not open.
fn denied_fix(path: &str) -> String {
    let group = std::fs::metadata(path)
        .ok()
        .map(|m| std::os::unix::fs::MetadataExt::gid(&m));
    match group {
        Some(gid) => {
            let name = crate::identity::group_name(gid).unwrap_or_else(|| "docker".into());
            format!(
                "add this user to the socket's group {gid} (`--group-add {gid}` for a \
                 container, `usermod -aG {name} USER` on a host) or run it as root"
            )
        }
        None => "let this user reach the socket (its folder's and its own permissions), or \
                 run it as root"
            .to_string(),
    }
}

/// "owner uid 0, group 999, mode 660; this process: uid 65534, gid 65534, no other groups".
fn socket_owner(path: &str) -> String {
    use std::os::unix::fs::MetadataExt;
    let me = crate::identity::Identity::current()
        .map(|me| format!("; this process: {me}"))
        .unwrap_or_default();
    match std::fs::metadata(path) {
        Ok(m) => format!(
            "owner uid {}, group {}{}, mode {:o}{me}",
            m.uid(),
            m.gid(),
            crate::identity::group_name(m.gid())
                .map(|n| format!(" ({n})"))
                .unwrap_or_default(),
            m.mode() & 0o7777
        ),
        Err(_) => me.trim_start_matches("; ").to_string(),
    }
}

/// The operating system's error under a bollard error (through hyper's layers), if any.
fn io_cause<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        cause = e.source();
    }
    None
}
