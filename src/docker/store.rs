//! The observed store: every owned (or adopted) container as the engine last showed it,
//! indexed by container id and by service key. kube-runtime's reflector, for Docker.
//!
//! One [`Writer`] exists per store, and whoever holds it is the only writer: the
//! [`watcher`](super::watcher) while the controller runs (a full list, then one inspect
//! per event), the one-shot pass of `run --once` otherwise. Everything else reads through
//! [`Store`], a cheap clone.
//!
//! # Guarantees
//! - Readers never see a half-applied list: a re-list replaces everything at once.
//! - [`Store::wait_ready`] returns only after the first full list is in, so nothing is
//!   reconciled against an empty (unknown) view.
//! - Lookups by key and by id are O(1).
//! - [`Store::fresh`] is false for a key while the writer has a look at one of its
//!   containers under way (an event came and its inspect has not landed): the entry is older
//!   than what the engine said last, and acting on it could undo what was just done. The
//!   writer announces the key again once its look lands.
//! - [`Store::revision`] changes whenever anything about the key's containers does (an
//!   upsert that differs, a removal, a re-list that shows it otherwise).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::watch;
use tokio::time::Instant;

use super::{ObservedContainer, ServiceKey};

#[derive(Default)]
struct State {
    by_id: HashMap<String, ObservedContainer>,
    /// The ids of each key's containers (one, except while an old one is being removed
    /// beside its replacement).
    by_key: HashMap<ServiceKey, Vec<String>>,
    /// Per key: when its container was last seen to change state (status, a new start,
    /// another container), and a counter bumped on every change of what is known of it.
    changes: HashMap<ServiceKey, Change>,
    /// Looks under way per key (see [`Store::fresh`]), and the key of each container looked at.
    looking: HashMap<ServiceKey, u32>,
    looking_at: HashMap<String, ServiceKey>,
    /// The adoption set (see [`Adoption`]) the last full list was taken with.
    adoption: u64,
}

#[derive(Debug, Clone, Copy)]
struct Change {
    state_at: Instant,
    revision: u64,
}

struct Inner {
    state: RwLock<State>,
    ready: watch::Sender<bool>,
    connected: AtomicBool,
    /// Source of revisions (global, so a key that disappears and returns never repeats one).
    revisions: std::sync::atomic::AtomicU64,
}

/// Reads the observed store. Cheap to clone; clones read the same store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// The only way to change the store (see the module's doc): not `Clone`.
pub struct Writer {
    inner: Arc<Inner>,
}

/// Whether `new` is another state of the container than `old`: its status, or a new run.
fn state_differs(old: &ObservedContainer, new: &ObservedContainer) -> bool {
    old.status != new.status || old.started_at != new.started_at
}

impl Default for Writer {
    fn default() -> Self {
        Self::new()
    }
}

impl Writer {
    /// A new, empty store (not ready) and its writer.
    pub fn new() -> Writer {
        Writer {
            inner: Arc::new(Inner {
                state: RwLock::new(State::default()),
                ready: watch::Sender::new(false),
                connected: AtomicBool::new(false),
                revisions: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// A reader of this writer's store.
    pub fn reader(&self) -> Store {
        Store {
            inner: self.inner.clone(),
        }
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.inner.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn next_revision(&self) -> u64 {
        self.inner.revisions.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Replaces everything with a fresh list taken with adoption set `adoption`, forgets
    /// every look under way (the list is newer than any of them), and marks the store ready.
    pub fn replace_all(&self, containers: Vec<ObservedContainer>, adoption: u64) {
        let now = Instant::now();
        let mut s = self.write();
        let old = std::mem::take(&mut s.by_id);
        let mut by_key: HashMap<ServiceKey, Vec<String>> = HashMap::new();
        let mut by_id = HashMap::with_capacity(containers.len());
        for c in containers {
            let before = old.get(&c.id);
            if before != Some(&c) {
                let revision = self.next_revision();
                let state_at = match (before, s.changes.get(&c.key)) {
                    (Some(o), Some(change)) if !state_differs(o, &c) => change.state_at,
                    _ => now,
                };
                s.changes
                    .insert(c.key.clone(), Change { state_at, revision });
            }
            by_key.entry(c.key.clone()).or_default().push(c.id.clone());
            by_id.insert(c.id.clone(), c);
        }
        // Gone since the last list: a change of their keys too.
        for gone in old.values().filter(|o| !by_id.contains_key(&o.id)) {
            let revision = self.next_revision();
            s.changes.insert(
                gone.key.clone(),
                Change {
                    state_at: now,
                    revision,
                },
            );
        }
        s.by_id = by_id;
        s.by_key = by_key;
        s.looking.clear();
        s.looking_at.clear();
        s.adoption = adoption;
        drop(s);
        self.inner.ready.send_replace(true);
    }

    /// Stores what one inspect showed of a container.
    pub fn upsert(&self, container: ObservedContainer) {
        let now = Instant::now();
        let mut s = self.write();
        let before = s.by_id.get(&container.id);
        if before == Some(&container) {
            return;
        }
        let state_changed = before.is_none_or(|o| state_differs(o, &container));
        let revision = self.next_revision();
        let key = container.key.clone();
        let state_at = match s.changes.get(&key) {
            Some(change) if !state_changed => change.state_at,
            _ => now,
        };
        s.changes.insert(key.clone(), Change { state_at, revision });
        let ids = s.by_key.entry(key).or_default();
        if !ids.contains(&container.id) {
            ids.push(container.id.clone());
        }
        s.by_id.insert(container.id.clone(), container);
    }

    /// Forgets a container; returns what was known of it.
    pub fn remove(&self, id: &str) -> Option<ObservedContainer> {
        let mut s = self.write();
        let gone = s.by_id.remove(id)?;
        if let Some(ids) = s.by_key.get_mut(&gone.key) {
            ids.retain(|i| i != id);
            if ids.is_empty() {
                s.by_key.remove(&gone.key);
            }
        }
        let revision = self.next_revision();
        s.changes.insert(
            gone.key.clone(),
            Change {
                state_at: Instant::now(),
                revision,
            },
        );
        Some(gone)
    }

    /// Replaces what is known of `key`'s containers with one look (`None`: it has none): for
    /// a writer that looks by key rather than by event (`run --once` after it acted).
    pub fn set_key(&self, key: &ServiceKey, container: Option<ObservedContainer>) {
        let ids = self.write().by_key.get(key).cloned().unwrap_or_default();
        for id in ids {
            if container.as_ref().is_none_or(|c| c.id != id) {
                self.remove(&id);
            }
        }
        if let Some(c) = container {
            self.upsert(c);
        }
    }

    /// A look at container `id` (of `key`) has begun: the key is not fresh until
    /// [`Writer::looked`] says it landed.
    pub fn looking(&self, id: &str, key: ServiceKey) {
        let mut s = self.write();
        if s.looking_at.contains_key(id) {
            return;
        }
        *s.looking.entry(key.clone()).or_default() += 1;
        s.looking_at.insert(id.to_string(), key);
    }

    /// The look at `id` landed (or was dropped): its key is fresh again once no other look
    /// at it is under way.
    pub fn looked(&self, id: &str) {
        let mut s = self.write();
        let Some(key) = s.looking_at.remove(id) else {
            return;
        };
        if let Some(n) = s.looking.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.looking.remove(&key);
            }
        }
    }

    /// Whether the event stream is attached (for `/healthz`, and so that nothing is
    /// concluded while it is not).
    pub fn set_connected(&self, connected: bool) {
        self.inner.connected.store(connected, Ordering::Relaxed);
    }
}

impl Store {
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.inner.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The container realising `key`. Names are unique in Docker, so when an old container
    /// is mid-removal beside a new one, the one named after the service wins; among others
    /// (compose's, not named after the service, while compose replaces one), a running one,
    /// then the one started last.
    pub fn get(&self, key: &ServiceKey) -> Option<ObservedContainer> {
        let s = self.read();
        let ids = s.by_key.get(key)?;
        ids.iter()
            .filter_map(|id| s.by_id.get(id))
            .enumerate()
            .max_by_key(|(i, c)| {
                (
                    c.name == key.service,
                    c.status == super::ContainerStatus::Running,
                    c.started_at,
                    *i,
                )
            })
            .map(|(_, c)| c.clone())
    }

    pub fn by_id(&self, id: &str) -> Option<ObservedContainer> {
        self.read().by_id.get(id).cloned()
    }

    /// Whether the store's entry for `key` is as new as the last event the writer has had
    /// about it (no look at one of its containers is under way).
    pub fn fresh(&self, key: &ServiceKey) -> bool {
        !self.read().looking.contains_key(key)
    }

    /// When `key`'s container was last seen to change state (appear, go, stop, start, pause,
    /// unpause); `None` if never.
    pub fn changed_at(&self, key: &ServiceKey) -> Option<Instant> {
        self.read().changes.get(key).map(|c| c.state_at)
    }

    /// A number that changes whenever what is known of `key`'s containers does; 0 if
    /// nothing ever was.
    pub fn revision(&self, key: &ServiceKey) -> u64 {
        self.read().changes.get(key).map_or(0, |c| c.revision)
    }

    /// The adoption set the last full list was taken with (see [`Adoption`]).
    pub fn adoption(&self) -> u64 {
        self.read().adoption
    }

    /// Containers in the store.
    pub fn len(&self) -> usize {
        self.read().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_ready(&self) -> bool {
        *self.inner.ready.borrow()
    }

    /// Waits until the first full list is in.
    pub async fn wait_ready(&self) {
        let mut rx = self.inner.ready.subscribe();
        // The sender lives as long as the store, so this cannot fail while we hold `self`.
        let _ = rx.wait_for(|ready| *ready).await;
    }

    /// Whether the event stream is currently attached.
    pub fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::Relaxed)
    }
}

/// What the manifests adopt (`adopt`): each adopting service's container name, and the
/// [`compose_identity`](super::observed::compose_identity) of each `adopt.compose`, with the
/// key each realises. `generation` changes with the set, so the store can tell a list taken
/// with an older set (see [`Store::adoption`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Adoption {
    pub generation: u64,
    pub names: HashMap<String, ServiceKey>,
}

impl Adoption {
    pub fn key_of(&self, name: &str) -> Option<ServiceKey> {
        self.names.get(name).cloned()
    }
}

/// The adoption set of `desired` (see [`Adoption`]).
pub fn adoptable(desired: &crate::manifest::DesiredState) -> HashMap<String, ServiceKey> {
    let mut adoptable = HashMap::new();
    for cluster in &desired.clusters {
        for service in cluster.services.iter().filter(|s| s.adopt.is_some()) {
            let key = ServiceKey::new(&cluster.name, &service.name);
            if let Some(c) = &service.compose {
                adoptable.insert(
                    super::observed::compose_identity(&c.project, &c.service),
                    key.clone(),
                );
            }
            adoptable.insert(service.name.clone(), key);
        }
    }
    adoptable
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::ContainerStatus;

    fn container(id: &str, key: &ServiceKey, name: &str) -> ObservedContainer {
        ObservedContainer {
            name: name.into(),
            ..ObservedContainer::example(id, key.clone(), ContainerStatus::Running)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn lookups_by_key_prefer_the_container_named_after_the_service() {
        let w = Writer::new();
        let store = w.reader();
        assert!(!store.is_ready());
        let key = ServiceKey::new("c", "s");
        w.replace_all(vec![container("old", &key, "s-old")], 0);
        assert!(store.is_ready());
        assert_eq!(store.get(&key).map(|c| c.id), Some("old".into()));
        w.upsert(container("new", &key, "s"));
        assert_eq!(store.get(&key).map(|c| c.id), Some("new".into()));
        w.remove("new");
        assert_eq!(store.get(&key).map(|c| c.id), Some("old".into()));
        // None named after the service (compose's, mid-replacement): the running one, then
        // the one started last, whatever the order they were seen in.
        let mut later = container("later", &key, "p_s_2");
        later.started_at = Some(chrono::Utc::now());
        let mut stopped = container("stopped", &key, "p_s_3");
        stopped.status = ContainerStatus::Exited;
        stopped.started_at = Some(chrono::Utc::now() + chrono::Duration::seconds(1));
        w.upsert(later);
        w.upsert(stopped);
        assert_eq!(store.get(&key).map(|c| c.id), Some("later".into()));
        w.remove("later");
        w.remove("stopped");
        w.remove("old");
        assert!(store.get(&key).is_none());
        assert!(store.by_id("old").is_none());
        w.upsert(container("a", &key, "s"));
        w.upsert(container("b", &key, "s-b"));
        w.set_key(&key, Some(container("c", &key, "s")));
        assert_eq!(store.get(&key).map(|c| c.id), Some("c".into()));
        assert!(store.by_id("a").is_none() && store.by_id("b").is_none());
        w.set_key(&key, None);
        assert!(store.get(&key).is_none() && store.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn revision_changes_with_what_is_known_and_state_time_only_with_the_state() {
        let w = Writer::new();
        let store = w.reader();
        let key = ServiceKey::new("c", "s");
        assert_eq!(store.revision(&key), 0);
        w.replace_all(vec![container("a", &key, "s")], 0);
        let (r1, t1) = (store.revision(&key), store.changed_at(&key));
        assert!(r1 > 0 && t1.is_some());
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        w.upsert(container("a", &key, "s"));
        assert_eq!(store.revision(&key), r1, "the same look changes nothing");
        let mut healthier = container("a", &key, "s");
        healthier.health = Some(crate::docker::HealthState::Healthy);
        w.upsert(healthier.clone());
        assert!(store.revision(&key) > r1);
        assert_eq!(store.changed_at(&key), t1, "health is no change of state");
        let mut stopped = healthier;
        stopped.status = ContainerStatus::Exited;
        let r2 = store.revision(&key);
        w.replace_all(vec![stopped], 0);
        assert!(store.revision(&key) > r2);
        assert!(store.changed_at(&key) > t1);
        let r3 = store.revision(&key);
        w.replace_all(Vec::new(), 0);
        assert!(store.revision(&key) > r3, "gone from a list is a change");
    }

    #[test]
    fn a_key_is_not_fresh_while_a_look_at_its_container_is_under_way() {
        let w = Writer::new();
        let store = w.reader();
        let key = ServiceKey::new("c", "s");
        assert!(store.fresh(&key));
        w.looking("a", key.clone());
        w.looking("a", key.clone());
        w.looking("b", key.clone());
        assert!(!store.fresh(&key));
        w.looked("a");
        assert!(!store.fresh(&key), "b is still being looked at");
        w.looked("b");
        assert!(store.fresh(&key));
        w.looking("a", key.clone());
        w.replace_all(Vec::new(), 3);
        assert!(store.fresh(&key), "a full list is newer than any look");
        assert_eq!(store.adoption(), 3);
    }
}
