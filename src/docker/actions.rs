//! The changes the controller makes to the engine. Each is idempotent where the engine
//! allows it and bounded by a timeout.
//!
//! # Guarantees
//! - A container id handed to these functions comes from the observed store, which holds
//!   only the controller's own containers (by label) and those a manifest adopts; a name
//!   conflict at create time is checked against the labels and reported as
//!   [`DockerError::NotOwned`], never resolved by removing the other container.
//! - [`Actions::recreate`] secures the new image before removing the old container, so a
//!   typo in an image tag never leaves a service with no container at all.
//! - A network is replaced only when the controller created it and every container attached
//!   to it is the cluster's own ([`Actions::recreate_network`]).
//! - Every stop (a restart, the removal before a rollout) passes its timeout explicitly: the
//!   service's `stopTimeout`, else [`Limits::stop_grace`]. A container created before the
//!   field was written gets it all the same. A container whose main process is frozen
//!   (`kill -STOP`) is killed at once instead: it cannot act on the stop signal (see
//!   [`super::process`] for when that can be seen).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::models::EndpointSettings;
use bollard::models::{
    ContainerInspectResponse, ContainerSummary, NetworkConnectRequest, NetworkCreateRequest,
    NetworkDisconnectRequest, NetworkInspect,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, RestartContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use futures::StreamExt;

use crate::manifest::{Cluster, ComposeService, Service};

use super::call::{Answer, call};
use super::observed::ObservedContainer;
use super::process;
use super::spec::{COMPOSE_ONEOFF, COMPOSE_PROJECT, COMPOSE_SERVICE, create_body, service_network};
use super::{DockerError, LABEL_CLUSTER, LABEL_MANAGED_BY, MANAGED_BY_VALUE};

/// Time limits for engine calls.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Any single API call other than a pull.
    pub call: Duration,
    /// Pulling an image.
    pub pull: Duration,
    /// Grace given to a container's process on stop before the engine kills it, for a
    /// service without `stopTimeout`.
    pub stop_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            call: Duration::from_secs(60),
            pull: Duration::from_secs(600),
            stop_grace: Duration::from_secs(10),
        }
    }
}

#[derive(Clone)]
pub struct Actions {
    docker: Docker,
    limits: Limits,
    /// Held while a network is created, recreated or joined: engines before API 1.44 accept
    /// two networks of one name, and two services of a cluster created at once would each
    /// make one (then every start fails with "network ... is ambiguous").
    network_changes: Arc<tokio::sync::Mutex<()>>,
}

/// Splits `repo[:tag]` / `repo@digest` for the pull API, which pulls *every* tag when
/// none is given.
fn split_image(image: &str) -> (&str, &str) {
    if let Some((repo, digest)) = image.split_once('@') {
        return (repo, digest);
    }
    match image.rsplit_once(':') {
        // A colon after the last slash is a tag; before it, a registry port.
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (image, "latest"),
    }
}

/// How long a stop waits after the stop signal before the engine kills: the service's own
/// timeout, else `default`; nothing for a frozen process, which cannot act on the signal.
fn stop_wait(stop_timeout: Option<Duration>, default: Duration, frozen: bool) -> Duration {
    if frozen {
        Duration::ZERO
    } else {
        stop_timeout.unwrap_or(default)
    }
}

/// The engine's `t` parameter: whole seconds (a `stopTimeout` has no fraction).
fn seconds(wait: Duration) -> i32 {
    i32::try_from(wait.as_secs()).unwrap_or(i32::MAX)
}

impl Actions {
    pub fn new(docker: Docker, limits: Limits) -> Self {
        Actions {
            docker,
            limits,
            network_changes: Arc::default(),
        }
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// Inspects a container by id or name; `None` when it does not exist.
    pub async fn inspect(
        &self,
        id_or_name: &str,
    ) -> Result<Option<ContainerInspectResponse>, DockerError> {
        call(
            "inspect",
            format!("inspect container {id_or_name}"),
            self.limits.call,
            self.docker.inspect_container(id_or_name, None),
        )
        .await?
        .found()
    }

    /// Inspects the container compose started for `compose`'s service, found by its
    /// labels whatever its name (`imp_worker_1`); `None` when there is none. A one-off
    /// (`docker-compose run`) container is not the service's.
    pub async fn inspect_compose(
        &self,
        compose: &ComposeService,
    ) -> Result<Option<ContainerInspectResponse>, DockerError> {
        let project = format!("{COMPOSE_PROJECT}={}", compose.project);
        let service = format!("{COMPOSE_SERVICE}={}", compose.service);
        let filters = HashMap::from([("label", vec![project.as_str(), service.as_str()])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let lines = call(
            "list",
            format!(
                "list the containers of compose service {} of project {}",
                compose.service, compose.project
            ),
            self.limits.call,
            self.docker.list_containers(Some(options)),
        )
        .await?
        .required()?;
        let oneoff = |l: &ContainerSummary| {
            l.labels
                .as_ref()
                .and_then(|l| l.get(COMPOSE_ONEOFF))
                .is_some_and(|v| v == "True")
        };
        let newest = lines
            .into_iter()
            .filter(|l| !oneoff(l))
            .max_by_key(|l| l.created.unwrap_or_default());
        match newest.and_then(|l| l.id) {
            Some(id) => self.inspect(&id).await,
            None => Ok(None),
        }
    }

    pub async fn image_present(&self, image: &str) -> Result<bool, DockerError> {
        let found = call(
            "image-inspect",
            format!("inspect image {image}"),
            self.limits.call,
            self.docker.inspect_image(image),
        )
        .await?
        .found()?;
        Ok(found.is_some())
    }

    /// Makes sure the image is present, pulling it when absent.
    pub async fn ensure_image(&self, image: &str) -> Result<(), DockerError> {
        if self.image_present(image).await? {
            return Ok(());
        }
        let (repo, tag) = split_image(image);
        let options = CreateImageOptionsBuilder::default()
            .from_image(repo)
            .tag(tag)
            .build();
        let pull = async {
            let mut stream = self.docker.create_image(Some(options), None, None);
            while let Some(item) = stream.next().await {
                if let Err(e) = item {
                    return Err(e.to_string());
                }
            }
            Ok(())
        };
        let reason = match tokio::time::timeout(self.limits.pull, pull).await {
            Ok(Ok(())) => None,
            Ok(Err(reason)) => Some(reason),
            Err(_) => Some(format!(
                "pull timed out after {}s",
                self.limits.pull.as_secs()
            )),
        };
        // Trust the engine's image list, not the pull stream's last word.
        if self.image_present(image).await? {
            return Ok(());
        }
        Err(DockerError::ImageUnavailable {
            image: image.to_string(),
            reason: reason.unwrap_or_else(|| "the pull ended without the image".into()),
        })
    }

    async fn inspect_network(&self, network: &str) -> Result<Option<NetworkInspect>, DockerError> {
        call(
            "network-inspect",
            format!("inspect network {network}"),
            self.limits.call,
            self.docker.inspect_network(network, None),
        )
        .await?
        .found()
    }

    /// Makes sure the network a service joins exists; creates the cluster's own network
    /// (labelled as ours) unless it is declared external.
    pub async fn ensure_network(
        &self,
        cluster: &Cluster,
        network: &str,
    ) -> Result<(), DockerError> {
        if self.inspect_network(network).await?.is_some() {
            return Ok(());
        }
        let _changing = self.network_changes.lock().await;
        self.ensure_network_locked(cluster, network).await
    }

    /// `ensure_network` under the lock: looked at again, since another reconcile may have
    /// just created it.
    async fn ensure_network_locked(
        &self,
        cluster: &Cluster,
        network: &str,
    ) -> Result<(), DockerError> {
        if self.inspect_network(network).await?.is_some() {
            return Ok(());
        }
        let ours = network == cluster.network.name;
        if !ours || cluster.network.external {
            return Err(DockerError::ExternalNetworkMissing {
                network: network.to_string(),
            });
        }
        let request = NetworkCreateRequest {
            name: network.to_string(),
            driver: Some("bridge".into()),
            internal: Some(cluster.network.internal),
            attachable: Some(true),
            labels: Some(HashMap::from([
                (LABEL_MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string()),
                (LABEL_CLUSTER.to_string(), cluster.name.clone()),
            ])),
            ..Default::default()
        };
        match call(
            "network-create",
            format!("create network {network}"),
            self.limits.call,
            self.docker.create_network(request),
        )
        .await?
        {
            // Made meanwhile by someone else (another controller's CLI, a person).
            Answer::Ok(_) | Answer::Conflict(_) => Ok(()),
            Answer::NotFound(e) => Err(e),
        }
    }

    /// How the cluster's own network differs from its declaration (`None` when it does not,
    /// is missing, or is not the controller's to change: external, or not created by it).
    pub async fn network_difference(
        &self,
        cluster: &Cluster,
    ) -> Result<Option<String>, DockerError> {
        if cluster.network.external {
            return Ok(None);
        }
        let name = &cluster.network.name;
        let Some(network) = self.inspect_network(name).await? else {
            return Ok(None);
        };
        let ours = network
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_MANAGED_BY))
            .is_some_and(|v| v == MANAGED_BY_VALUE);
        if !ours {
            return Ok(None);
        }
        let internal = network.internal.unwrap_or(false);
        Ok((internal != cluster.network.internal).then(|| {
            format!(
                "network {name} has internal: {internal}, the manifest says internal: {}; \
                 Docker cannot change it in place",
                cluster.network.internal
            )
        }))
    }

    /// Applies the declared options to the cluster's own network, which Docker can only do by
    /// replacing it: every attached container (all must be ours) is disconnected, the network
    /// removed and created anew, and each container connected again under its service name.
    /// A crash half-way leaves containers detached, which the next reconcile repairs.
    pub async fn recreate_network(&self, cluster: &Cluster) -> Result<(), DockerError> {
        let name = &cluster.network.name;
        let _changing = self.network_changes.lock().await;
        let Some(network) = self.inspect_network(name).await? else {
            return self.ensure_network_locked(cluster, name).await;
        };
        if network.internal.unwrap_or(false) == cluster.network.internal {
            return Ok(()); // another reconcile of the cluster has just done it
        }
        let mut attached = Vec::new();
        let mut foreign = Vec::new();
        for id in network.containers.unwrap_or_default().into_keys() {
            let owned = self
                .inspect(&id)
                .await?
                .and_then(|c| ObservedContainer::from_inspect(&c))
                .filter(|c| c.key.cluster == cluster.name);
            match owned {
                Some(c) => attached.push(c),
                None => foreign.push(id.chars().take(12).collect::<String>()),
            }
        }
        if !foreign.is_empty() {
            return Err(DockerError::ForeignOnNetwork {
                network: name.clone(),
                containers: foreign,
            });
        }
        for c in &attached {
            let request = NetworkDisconnectRequest {
                container: c.id.clone(),
                force: Some(true),
            };
            call(
                "network-disconnect",
                format!("disconnect container {} from network {name}", c.name),
                self.limits.call,
                self.docker.disconnect_network(name, request),
            )
            .await?
            .found()?;
        }
        call(
            "network-remove",
            format!("remove network {name}"),
            self.limits.call,
            self.docker.remove_network(name),
        )
        .await?
        .found()?;
        self.ensure_network_locked(cluster, name).await?;
        for c in &attached {
            let aliases = cluster
                .service(&c.key.service)
                .map(super::spec::network_aliases)
                .unwrap_or_else(|| vec![c.key.service.clone()]);
            self.connect_locked(&c.id, name, aliases).await?;
        }
        Ok(())
    }

    /// Creates the service's container (network and image first) and starts it.
    pub async fn create(&self, cluster: &Cluster, service: &Service) -> Result<(), DockerError> {
        if let Some(network) = service_network(cluster, service) {
            self.ensure_network(cluster, network).await?;
        }
        self.ensure_image(&service.image).await?;
        self.create_and_start(cluster, service).await
    }

    async fn create_and_start(
        &self,
        cluster: &Cluster,
        service: &Service,
    ) -> Result<(), DockerError> {
        let options = CreateContainerOptionsBuilder::default()
            .name(&service.name)
            .build();
        let body = create_body(cluster, service);
        let id = match call(
            "create",
            format!("create container {}", service.name),
            self.limits.call,
            self.docker.create_container(Some(options), body),
        )
        .await?
        {
            Answer::Ok(created) => created.id,
            Answer::Conflict(e) => {
                // The name is taken. This service's own (created by a racing or crashed
                // earlier attempt): use it. Anything else: hands off.
                match self.inspect(&service.name).await? {
                    Some(c) => match ObservedContainer::from_inspect(&c) {
                        Some(owned)
                            if owned.key.cluster == cluster.name
                                && owned.key.service == service.name =>
                        {
                            owned.id
                        }
                        _ => {
                            return Err(DockerError::NotOwned {
                                name: service.name.clone(),
                            });
                        }
                    },
                    None => return Err(e),
                }
            }
            Answer::NotFound(e) => return Err(e),
        };
        self.start(&id).await
    }

    pub async fn start(&self, id: &str) -> Result<(), DockerError> {
        call(
            "start",
            format!("start container {id}"),
            self.limits.call,
            self.docker.start_container(id, None),
        )
        .await?
        .required()
    }

    pub async fn unpause(&self, id: &str) -> Result<(), DockerError> {
        call(
            "unpause",
            format!("unpause container {id}"),
            self.limits.call,
            self.docker.unpause_container(id),
        )
        .await?
        .required()
    }

    /// Restarts `service`'s container `id`, waiting for its stop as [`Actions::stop_wait`] says.
    pub async fn restart(&self, id: &str, service: &Service) -> Result<(), DockerError> {
        let wait = self.stop_wait(id, service).await;
        let options = RestartContainerOptionsBuilder::default()
            .t(seconds(wait))
            .build();
        call(
            "restart",
            format!("restart container {id}"),
            self.limits.call + wait,
            self.docker.restart_container(id, Some(options)),
        )
        .await?
        .required()
    }

    /// How long stopping `service`'s container `id` may wait for its process after the stop
    /// signal: `stopTimeout`, else the default grace; nothing when the main process is
    /// frozen. One inspect, whose failure only means "not known to be frozen".
    async fn stop_wait(&self, id: &str, service: &Service) -> Duration {
        let frozen = match self.inspect(id).await {
            Ok(Some(c)) => {
                let state = c.state.unwrap_or_default();
                let running = state.running == Some(true) && state.paused != Some(true);
                let full_id = c.id.unwrap_or_default();
                running && process::is_frozen(state.pid.unwrap_or(0), &full_id)
            }
            Ok(None) | Err(_) => false,
        };
        if frozen {
            tracing::info!(
                container = id,
                service = %service.name,
                "main process is stopped (SIGSTOP): killed at once instead of waiting for it"
            );
        }
        stop_wait(service.stop_timeout, self.limits.stop_grace, frozen)
    }

    /// Stops and removes `service`'s container `id` (anonymous volumes stay; named volumes
    /// always do). The stop waits as [`Actions::stop_wait`] says.
    pub async fn remove(&self, id: &str, service: &Service) -> Result<(), DockerError> {
        let wait = self.stop_wait(id, service).await;
        let stop = StopContainerOptionsBuilder::default()
            .t(seconds(wait))
            .build();
        let stopped = call(
            "stop",
            format!("stop container {id}"),
            self.limits.call + wait,
            self.docker.stop_container(id, Some(stop)),
        )
        .await;
        // 304 (already stopped) is a success for bollard; 404 means already gone. A stop
        // that fails or times out is followed by a forced remove, which kills.
        if let Ok(Answer::NotFound(_)) = stopped {
            return Ok(());
        }
        let remove = RemoveContainerOptionsBuilder::default().force(true).build();
        call(
            "remove",
            format!("remove container {id}"),
            self.limits.call,
            self.docker.remove_container(id, Some(remove)),
        )
        .await?
        .found()
        .map(|_| ())
    }

    /// Rolls out a changed spec: secure the image and network, then stop, remove,
    /// create and start. The old container is stopped with the new spec's `stopTimeout` (what
    /// the manifest wants now) and its own stop signal (what its process was made to handle).
    pub async fn recreate(
        &self,
        cluster: &Cluster,
        service: &Service,
        old_id: &str,
    ) -> Result<(), DockerError> {
        if let Some(network) = service_network(cluster, service) {
            self.ensure_network(cluster, network).await?;
        }
        self.ensure_image(&service.image).await?;
        self.remove(old_id, service).await?;
        self.create_and_start(cluster, service).await
    }

    /// Attaches a container to a network, with its DNS names there (the service's name and
    /// its `aliases`: every name its clients use).
    pub async fn connect(
        &self,
        cluster: &Cluster,
        id: &str,
        network: &str,
        aliases: Vec<String>,
    ) -> Result<(), DockerError> {
        // Under the lock: a network being recreated reconnects its containers itself.
        let _changing = self.network_changes.lock().await;
        self.ensure_network_locked(cluster, network).await?;
        self.connect_locked(id, network, aliases).await
    }

    async fn connect_locked(
        &self,
        id: &str,
        network: &str,
        aliases: Vec<String>,
    ) -> Result<(), DockerError> {
        let already = self
            .inspect_network(network)
            .await?
            .and_then(|n| n.containers)
            .is_some_and(|attached| attached.contains_key(id));
        if already {
            return Ok(());
        }
        let request = NetworkConnectRequest {
            container: id.to_string(),
            endpoint_config: Some(EndpointSettings {
                aliases: Some(aliases),
                ..Default::default()
            }),
        };
        call(
            "network-connect",
            format!("connect container {id} to network {network}"),
            self.limits.call,
            self.docker.connect_network(network, request),
        )
        .await?
        .required()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{seconds, split_image, stop_wait};

    #[test]
    fn a_stop_waits_the_services_timeout_else_the_default_and_never_for_a_frozen_process() {
        let default = Duration::from_secs(10);
        let own = Some(Duration::from_secs(1));
        assert_eq!(stop_wait(own, default, false), Duration::from_secs(1));
        assert_eq!(stop_wait(None, default, false), default);
        assert_eq!(
            stop_wait(Some(Duration::ZERO), default, false),
            Duration::ZERO
        );
        assert_eq!(stop_wait(own, default, true), Duration::ZERO);
        assert_eq!(stop_wait(None, default, true), Duration::ZERO);
        assert_eq!(seconds(Duration::from_secs(600)), 600);
        assert_eq!(seconds(Duration::from_secs(u64::MAX)), i32::MAX);
    }

    #[test]
    fn split_image_defaults_to_latest_and_keeps_registry_ports() {
        assert_eq!(split_image("busybox"), ("busybox", "latest"));
        assert_eq!(split_image("pingcap/pd:v8.5.1"), ("pingcap/pd", "v8.5.1"));
        assert_eq!(
            split_image("registry:5000/team/app"),
            ("registry:5000/team/app", "latest")
        );
        assert_eq!(
            split_image("registry:5000/app:1"),
            ("registry:5000/app", "1")
        );
        assert_eq!(split_image("app@sha256:abc"), ("app", "sha256:abc"));
    }
}
