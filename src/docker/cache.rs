//! The in-memory cache of owned containers, fed by the [`watcher`](super::watcher).
//!
//! # Guarantees
//! - Readers never see a half-applied list: a re-list replaces the whole map at once.
//! - [`Cache::wait_ready`] returns only after the first full list is in, so nothing is
//!   reconciled against an empty (unknown) view.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

use super::observed::compose_identity;
use super::{ObservedContainer, ServiceKey};
use crate::manifest::DesiredState;

pub struct Cache {
    containers: RwLock<HashMap<String, ObservedContainer>>,
    /// Container names the manifests adopt (`adopt`), and compose services they adopt
    /// (`adopt.compose`, as [`compose_identity`]), each with the key it realises.
    adoptable: RwLock<HashMap<String, ServiceKey>>,
    ready: watch::Sender<bool>,
    connected: AtomicBool,
    /// When each key's container was last seen to change state (status, or a new start, or
    /// another container): verdicts about it drawn before then are stale.
    changed_at: RwLock<HashMap<ServiceKey, tokio::time::Instant>>,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            containers: RwLock::new(HashMap::new()),
            adoptable: RwLock::new(HashMap::new()),
            ready: watch::Sender::new(false),
            connected: AtomicBool::new(false),
            changed_at: RwLock::new(HashMap::new()),
        }
    }
}

/// What the manifests adopt: each adopting service's container name, and the
/// [`compose_identity`] of each `adopt.compose`, with the key each realises.
pub fn adoptable(desired: &DesiredState) -> HashMap<String, ServiceKey> {
    let mut adoptable = HashMap::new();
    for cluster in &desired.clusters {
        for service in cluster.services.iter().filter(|s| s.adopt.is_some()) {
            let key = ServiceKey::new(&cluster.name, &service.name);
            if let Some(c) = &service.compose {
                adoptable.insert(compose_identity(&c.project, &c.service), key.clone());
            }
            adoptable.insert(service.name.clone(), key);
        }
    }
    adoptable
}

/// Whether `new` is another state of the container than `old`: its status, or a new run.
fn state_differs(old: &ObservedContainer, new: &ObservedContainer) -> bool {
    old.status != new.status || old.started_at != new.started_at
}

impl Cache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces everything with a fresh list and marks the cache ready.
    pub fn replace_all(&self, containers: Vec<ObservedContainer>) {
        let map: HashMap<String, ObservedContainer> =
            containers.into_iter().map(|c| (c.id.clone(), c)).collect();
        {
            let old = self.containers.read().unwrap_or_else(|e| e.into_inner());
            let now = tokio::time::Instant::now();
            let mut changed = self.changed_at.write().unwrap_or_else(|e| e.into_inner());
            for c in map.values() {
                if old.get(&c.id).is_none_or(|o| state_differs(o, c)) {
                    changed.insert(c.key.clone(), now);
                }
            }
        }
        *self.containers.write().unwrap_or_else(|e| e.into_inner()) = map;
        self.ready.send_replace(true);
    }

    pub fn upsert(&self, container: ObservedContainer) {
        let mut containers = self.containers.write().unwrap_or_else(|e| e.into_inner());
        if containers
            .get(&container.id)
            .is_none_or(|o| state_differs(o, &container))
        {
            self.changed_at
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(container.key.clone(), tokio::time::Instant::now());
        }
        containers.insert(container.id.clone(), container);
    }

    /// When `key`'s container was last seen to change state by this cache (appear, go,
    /// stop, start, pause, unpause); `None` if never.
    pub fn changed_at(&self, key: &ServiceKey) -> Option<tokio::time::Instant> {
        self.changed_at
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
    }

    /// Forgets a container; returns what was known of it.
    pub fn remove(&self, id: &str) -> Option<ObservedContainer> {
        let gone = self
            .containers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if let Some(c) = &gone {
            self.changed_at
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(c.key.clone(), tokio::time::Instant::now());
        }
        gone
    }

    pub fn by_id(&self, id: &str) -> Option<ObservedContainer> {
        self.read().get(id).cloned()
    }

    /// The container realising `key`. Names are unique in Docker, so when an old container
    /// is mid-removal beside a new one, the one named after the service wins.
    pub fn get(&self, key: &ServiceKey) -> Option<ObservedContainer> {
        let map = self.read();
        let mut found: Option<&ObservedContainer> = None;
        for c in map.values().filter(|c| &c.key == key) {
            if found.is_none() || c.name == key.service {
                found = Some(c);
            }
        }
        found.cloned()
    }

    /// Sets what the manifests adopt: each adopting service's name, and for `adopt.compose`
    /// its [`compose_identity`] too (compose's container is found by its labels, whatever
    /// its name). An adopted container that is no longer adopted for its key is forgotten
    /// at once: it was never labelled ours, so it is handed back, not left under management.
    ///
    /// # Caveats
    /// The cache keeps no labels, so an adopted container not named after its service is
    /// kept while its key is adopted by compose service at all; a changed `adopt.compose`
    /// lets go of the old container at the next look at it (an event or a resync).
    pub fn set_adoptable(&self, desired: &DesiredState) {
        let names = adoptable(desired);
        let by_compose: HashSet<&ServiceKey> = desired
            .clusters
            .iter()
            .flat_map(|cluster| {
                cluster
                    .services
                    .iter()
                    .filter_map(move |s| s.compose.as_ref().map(|c| (cluster, s, c)))
            })
            .filter_map(|(cluster, s, c)| {
                let key = names.get(&compose_identity(&c.project, &c.service))?;
                (key.cluster == cluster.name && key.service == s.name).then_some(key)
            })
            .collect();
        self.containers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, c| {
                !c.adopted
                    || match names.get(&c.name) {
                        Some(key) => *key == c.key,
                        None => by_compose.contains(&c.key),
                    }
            });
        *self.adoptable.write().unwrap_or_else(|e| e.into_inner()) = names;
    }

    /// The key the container named `name` (or of this [`compose_identity`]) is adopted for,
    /// if the manifests adopt it.
    pub fn adoptable(&self, name: &str) -> Option<ServiceKey> {
        self.adoptable
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Every adopted name (and compose identity) and its key.
    pub fn adoptable_names(&self) -> HashMap<String, ServiceKey> {
        self.adoptable
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits until the first full list is in.
    pub async fn wait_ready(&self) {
        let mut rx = self.ready.subscribe();
        // The sender lives as long as the cache, so this cannot fail while we hold `self`.
        let _ = rx.wait_for(|ready| *ready).await;
    }

    /// Whether the event stream is currently attached (for `/healthz`).
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, ObservedContainer>> {
        self.containers.read().unwrap_or_else(|e| e.into_inner())
    }
}
