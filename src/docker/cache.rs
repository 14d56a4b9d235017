//! The in-memory cache of owned containers, fed by the [`watcher`](super::watcher).
//!
//! # Guarantees
//! - Readers never see a half-applied list: a re-list replaces the whole map at once.
//! - [`Cache::wait_ready`] returns only after the first full list is in, so nothing is
//!   reconciled against an empty (unknown) view.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

use super::{ObservedContainer, ServiceKey};
use crate::manifest::DesiredState;

pub struct Cache {
    containers: RwLock<HashMap<String, ObservedContainer>>,
    /// Container names the manifests adopt (`adopt`), and the key each realises.
    adoptable: RwLock<HashMap<String, ServiceKey>>,
    ready: watch::Sender<bool>,
    connected: AtomicBool,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            containers: RwLock::new(HashMap::new()),
            adoptable: RwLock::new(HashMap::new()),
            ready: watch::Sender::new(false),
            connected: AtomicBool::new(false),
        }
    }
}

impl Cache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces everything with a fresh list and marks the cache ready.
    pub fn replace_all(&self, containers: Vec<ObservedContainer>) {
        let map = containers.into_iter().map(|c| (c.id.clone(), c)).collect();
        *self.containers.write().unwrap_or_else(|e| e.into_inner()) = map;
        self.ready.send_replace(true);
    }

    pub fn upsert(&self, container: ObservedContainer) {
        self.containers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(container.id.clone(), container);
    }

    /// Forgets a container; returns what was known of it.
    pub fn remove(&self, id: &str) -> Option<ObservedContainer> {
        self.containers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
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

    /// Sets the container names the manifests adopt. An adopted container whose name is no
    /// longer adopted for its key is forgotten at once: it was never labelled ours, so it
    /// is handed back, not left under management.
    pub fn set_adoptable(&self, desired: &DesiredState) {
        let names: HashMap<String, ServiceKey> = desired
            .clusters
            .iter()
            .flat_map(|cluster| {
                cluster
                    .services
                    .iter()
                    .filter(|s| s.adopt.is_some())
                    .map(|s| (s.name.clone(), ServiceKey::new(&cluster.name, &s.name)))
            })
            .collect();
        self.containers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, c| !c.adopted || names.get(&c.name) == Some(&c.key));
        *self.adoptable.write().unwrap_or_else(|e| e.into_inner()) = names;
    }

    /// The key the container named `name` is adopted for, if the manifests adopt it.
    pub fn adoptable(&self, name: &str) -> Option<ServiceKey> {
        self.adoptable
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Every adopted name and its key.
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
