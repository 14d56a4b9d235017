//! What one key's reconcile asks of the Docker engine, as a trait: the look that is the
//! precondition of an action (who holds the service's name, whether its image is there, how
//! the cluster network differs from its declaration) and the built-in actions themselves.
//!
//! Everything else the reconcile knows comes from the observed store. The trait is the seam
//! that lets the reconcile's branches be unit-tested against an in-memory engine
//! ([`memory::MemoryEngine`], tests only); the integration tests drive the real engine through
//! [`Actions`], the only implementation outside tests.

use futures::FutureExt;
use futures::future::BoxFuture;

use crate::docker::actions::Actions;
use crate::docker::{DockerError, ObservedContainer, ServiceKey};
use crate::manifest::{Cluster, Service};
use crate::remediation::Action;

/// The service's container as the engine has it now, or who else holds its name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Found {
    /// Ours by its labels, or the container the manifest adopts.
    pub container: Option<ObservedContainer>,
    /// Why the service's name is not free although `container` is `None`.
    pub name_conflict: Option<String>,
}

/// The engine calls one key's reconcile makes.
pub trait Engine: Send + Sync + 'static {
    /// The service's container, fresh from the engine: ours by its labels, or the one its
    /// manifest adopts (by name, or by compose's labels). Else who holds the name.
    fn find<'a>(
        &'a self,
        cluster: &'a Cluster,
        service: &'a Service,
    ) -> BoxFuture<'a, Result<Found, DockerError>>;

    fn image_present<'a>(&'a self, image: &'a str) -> BoxFuture<'a, Result<bool, DockerError>>;

    /// How the cluster's own network differs from its declaration, if it does and is ours.
    fn network_difference<'a>(
        &'a self,
        cluster: &'a Cluster,
    ) -> BoxFuture<'a, Result<Option<String>, DockerError>>;

    /// Carries out a built-in action on the service (`container`: the one it owns, required
    /// by every action but a create).
    fn act<'a>(
        &'a self,
        cluster: &'a Cluster,
        service: &'a Service,
        action: &'a Action,
        container: Option<&'a ObservedContainer>,
    ) -> BoxFuture<'a, Result<(), DockerError>>;
}

/// The message for a name held by a container without our labels (the manifest must say
/// `adopt` for it to be taken over: ownership is never taken silently).
pub const NOT_MANAGED: &str = "is not managed by operator (no operator.managed-by label; set \
                               `adopt: true` on the service to take it over)";

impl Engine for Actions {
    fn find<'a>(
        &'a self,
        cluster: &'a Cluster,
        service: &'a Service,
    ) -> BoxFuture<'a, Result<Found, DockerError>> {
        async move {
            let key = ServiceKey::new(&cluster.name, &service.name);
            let mut by_name = self.inspect(&service.name).await?;
            // `adopt.compose`: compose's container is found by its labels, whatever its name.
            if let (None, Some(compose)) = (&by_name, &service.compose)
                && service.adopt.is_some()
            {
                by_name = self.inspect_compose(compose).await?;
            }
            let Some(raw) = by_name else {
                return Ok(Found::default());
            };
            Ok(
                match ObservedContainer::recognise(&raw, |_| {
                    service.adopt.is_some().then(|| key.clone())
                }) {
                    None => Found {
                        container: None,
                        name_conflict: Some(NOT_MANAGED.to_string()),
                    },
                    Some(c) if c.key != key => Found {
                        container: None,
                        name_conflict: Some(format!(
                            "belongs to {} (another cluster or service)",
                            c.key
                        )),
                    },
                    Some(c) => Found {
                        container: Some(c),
                        name_conflict: None,
                    },
                },
            )
        }
        .boxed()
    }

    fn image_present<'a>(&'a self, image: &'a str) -> BoxFuture<'a, Result<bool, DockerError>> {
        Actions::image_present(self, image).boxed()
    }

    fn network_difference<'a>(
        &'a self,
        cluster: &'a Cluster,
    ) -> BoxFuture<'a, Result<Option<String>, DockerError>> {
        Actions::network_difference(self, cluster).boxed()
    }

    fn act<'a>(
        &'a self,
        cluster: &'a Cluster,
        service: &'a Service,
        action: &'a Action,
        container: Option<&'a ObservedContainer>,
    ) -> BoxFuture<'a, Result<(), DockerError>> {
        async move {
            // Every action but a create needs the container this service owns.
            let id = || {
                container
                    .map(|c| c.id.as_str())
                    .ok_or_else(|| DockerError::NotOwned {
                        name: service.name.clone(),
                    })
            };
            match action {
                Action::Create => self.create(cluster, service).await,
                Action::Start => self.start(id()?).await,
                Action::Unpause => self.unpause(id()?).await,
                Action::Restart => self.restart(id()?, service).await,
                Action::Recreate => self.recreate(cluster, service, id()?).await,
                Action::Connect { network } => {
                    self.connect(
                        cluster,
                        id()?,
                        network,
                        crate::docker::spec::network_aliases(service),
                    )
                    .await
                }
                Action::RecreateNetwork { .. } => self.recreate_network(cluster).await,
            }
        }
        .boxed()
    }
}

#[cfg(test)]
pub mod memory {
    //! An engine in memory, for the reconcile's unit tests: containers by name, the images
    //! present, and a record of every call. Its actions take effect at once, as the real
    //! engine's do by the time the call returns.

    use std::collections::{HashMap, HashSet};
    use std::sync::Mutex;

    use chrono::{DateTime, Utc};

    use super::*;
    use crate::docker::ContainerStatus;

    #[derive(Default)]
    struct State {
        containers: HashMap<String, ObservedContainer>,
        /// Names held by containers that are not ours.
        foreign: HashSet<String>,
        images: HashSet<String>,
        network_difference: Option<String>,
        /// Operations that fail, with their error text.
        failing: HashMap<&'static str, String>,
        calls: Vec<String>,
        next_id: u64,
        /// The engine's clock: strictly increasing, so every start is newer than the last.
        clock: Option<DateTime<Utc>>,
    }

    impl State {
        fn tick(&mut self) -> DateTime<Utc> {
            let now = Utc::now();
            let t = match self.clock {
                Some(last) if now <= last => last + chrono::Duration::milliseconds(1),
                _ => now,
            };
            self.clock = Some(t);
            t
        }

        fn call(&mut self, op: &'static str, detail: &str) -> Result<(), DockerError> {
            self.calls.push(format!("{op} {detail}"));
            match self.failing.get(op) {
                // A timed-out call: an engine error that names what was being done.
                Some(error) => Err(DockerError::Timeout {
                    doing: format!("{op} {detail}: {error}"),
                    seconds: 0,
                }),
                None => Ok(()),
            }
        }
    }

    #[derive(Default)]
    pub struct MemoryEngine {
        state: Mutex<State>,
    }

    impl MemoryEngine {
        pub fn new() -> Self {
            Self::default()
        }

        fn state(&self) -> std::sync::MutexGuard<'_, State> {
            self.state.lock().unwrap_or_else(|e| e.into_inner())
        }

        pub fn with_image(self, image: &str) -> Self {
            self.state().images.insert(image.to_string());
            self
        }

        /// A container of `service` in `status`, as the controller would have created it.
        pub fn put(&self, cluster: &Cluster, service: &Service, status: ContainerStatus) {
            let mut s = self.state();
            let started = s.tick();
            s.next_id += 1;
            let c = ObservedContainer {
                spec_hash: service.spec_hash(),
                image: service.image.clone(),
                network_mode: "host".into(),
                exit_code: (status == ContainerStatus::Exited).then_some(1),
                started_at: Some(started),
                finished_at: (status == ContainerStatus::Exited).then(|| s.tick()),
                ..ObservedContainer::example(
                    &format!("c{:04}", s.next_id),
                    ServiceKey::new(&cluster.name, &service.name),
                    status,
                )
            };
            s.containers.insert(service.name.clone(), c);
        }

        /// Changes the container named `name` as `change` says.
        pub fn change(&self, name: &str, change: impl FnOnce(&mut ObservedContainer)) {
            let mut s = self.state();
            change(
                s.containers
                    .get_mut(name)
                    .expect("a container of that name"),
            );
        }

        /// Someone else's container holds `name`.
        pub fn put_foreign(&self, name: &str) {
            self.state().foreign.insert(name.to_string());
        }

        /// `op` (`create`, `start`, `restart`...) fails with `error` from now on.
        pub fn fail(&self, op: &'static str, error: &str) {
            self.state().failing.insert(op, error.to_string());
        }

        /// Every call so far, as `<op> <name>`.
        pub fn calls(&self) -> Vec<String> {
            self.state().calls.clone()
        }

        /// The actions carried out so far (calls other than looks).
        pub fn actions(&self) -> Vec<String> {
            self.calls()
                .into_iter()
                .filter(|c| !c.starts_with("find ") && !c.starts_with("image "))
                .collect()
        }
    }

    impl Engine for MemoryEngine {
        fn find<'a>(
            &'a self,
            cluster: &'a Cluster,
            service: &'a Service,
        ) -> BoxFuture<'a, Result<Found, DockerError>> {
            let mut s = self.state();
            let found = s.call("find", &service.name).map(|()| {
                if s.foreign.contains(&service.name) {
                    return Found {
                        container: None,
                        name_conflict: Some(NOT_MANAGED.to_string()),
                    };
                }
                let key = ServiceKey::new(&cluster.name, &service.name);
                Found {
                    container: s
                        .containers
                        .get(&service.name)
                        .filter(|c| c.key == key)
                        .cloned(),
                    name_conflict: None,
                }
            });
            async move { found }.boxed()
        }

        fn image_present<'a>(&'a self, image: &'a str) -> BoxFuture<'a, Result<bool, DockerError>> {
            let mut s = self.state();
            let present = s.call("image", image).map(|()| s.images.contains(image));
            async move { present }.boxed()
        }

        fn network_difference<'a>(
            &'a self,
            _cluster: &'a Cluster,
        ) -> BoxFuture<'a, Result<Option<String>, DockerError>> {
            let difference = self.state().network_difference.clone();
            async move { Ok(difference) }.boxed()
        }

        fn act<'a>(
            &'a self,
            cluster: &'a Cluster,
            service: &'a Service,
            action: &'a Action,
            container: Option<&'a ObservedContainer>,
        ) -> BoxFuture<'a, Result<(), DockerError>> {
            let result = self.apply(cluster, service, action, container);
            async move { result }.boxed()
        }
    }

    impl MemoryEngine {
        fn apply(
            &self,
            cluster: &Cluster,
            service: &Service,
            action: &Action,
            container: Option<&ObservedContainer>,
        ) -> Result<(), DockerError> {
            let op = action.as_str();
            self.state().call(op, &service.name)?;
            let owned = || {
                container.ok_or_else(|| DockerError::NotOwned {
                    name: service.name.clone(),
                })
            };
            match action {
                Action::Create | Action::Recreate => {
                    if *action == Action::Recreate {
                        owned()?;
                    }
                    self.put(cluster, service, ContainerStatus::Running);
                }
                Action::Start | Action::Restart | Action::Unpause => {
                    let name = owned()?.name.clone();
                    let started = self.state().tick();
                    let restarted = *action != Action::Unpause;
                    self.change(&name, |c| {
                        c.status = ContainerStatus::Running;
                        c.exit_code = None;
                        if restarted {
                            c.started_at = Some(started);
                        }
                    });
                }
                Action::Connect { network } => {
                    let name = owned()?.name.clone();
                    self.change(&name, |c| {
                        c.networks.insert(network.clone());
                    });
                }
                Action::RecreateNetwork { .. } => self.state().network_difference = None,
            }
            Ok(())
        }
    }
}
