//! Docker: the connection, the labels that mark what the controller owns, the watched cache
//! of owned containers, and the actions that change them.
//!
//! # Guarantees
//! The controller only ever acts on containers that carry [`LABEL_MANAGED_BY`]` = `
//! [`MANAGED_BY_VALUE`]; a container of the same name without that label is reported, never
//! touched (see [`actions`]).

pub mod actions;
pub mod cache;
mod call;
pub mod observed;
mod process;
pub mod spec;
pub mod watcher;

use std::fmt;

use bollard::Docker;

pub use cache::Cache;
pub(crate) use call::is_not_found;
pub use observed::{ContainerStatus, HealthState, ObservedContainer};

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

/// Where the engine is, for messages: `DOCKER_HOST` or the default socket.
pub fn endpoint() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".to_string())
}

/// Connects through `DOCKER_HOST` (or the default socket) and negotiates the API version,
/// so that older engines (Debian's 20.10 speaks 1.41) are spoken to in their own version.
///
/// Bounded: the handshake gives up after `timeout`.
pub async fn connect(timeout: std::time::Duration) -> Result<Docker, DockerError> {
    let endpoint = endpoint();
    let docker = Docker::connect_with_defaults().map_err(|source| DockerError::Connect {
        endpoint: endpoint.clone(),
        source,
    })?;
    match tokio::time::timeout(timeout, docker.negotiate_version()).await {
        Ok(Ok(docker)) => Ok(docker),
        Ok(Err(source)) => Err(DockerError::Negotiate { endpoint, source }),
        Err(_) => Err(DockerError::Timeout {
            doing: format!("reach the Docker engine at {endpoint}"),
            seconds: timeout.as_secs(),
        }),
    }
}
