//! The watcher: list the owned and adopted containers, then follow the engine's event
//! stream.
//!
//! # Guarantees
//! - Nothing is missed across a reconnect: the event subscription starts from a time taken
//!   *before* the list, so a change racing the list is replayed (the engine keeps the last
//!   256 events); after any stream error the whole list is fetched again.
//! - Reconnects are spaced by a capped, jittered backoff that resets after a calm period.
//! - One container's event never waits for another's inspect: the engine holds a dying
//!   container's inspect until it has cleaned up after it (half a second and more), so
//!   inspects run beside the stream, one at a time per container (the store ends with a
//!   look taken after that container's last event), at most [`INSPECTS_IN_FLIGHT`] at once.
//!
//! - It is the observed [`store`](super::store)'s only writer while the controller runs: a
//!   key is marked not fresh from its event until the look the event asked for has landed,
//!   then announced ([`WatchEvent::Changed`]).
//! - The engine is listed again after any stream error, when the manifests' adoption set
//!   changes (an adopted container is recognised only by the set it was listed with), and
//!   every `relist` interval: whatever the stream missed is found within that bound.
//!
//! # Caveats
//! Events only say *which* key to look at; the reconcile reads the store, never the event.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::models::{
    ContainerInspectResponse, ContainerSummary, EventMessage, EventMessageTypeEnum,
};
use bollard::query_parameters::{EventsOptionsBuilder, ListContainersOptionsBuilder};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt, TryStreamExt};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Reconnect;
use crate::metrics::Metrics;

use super::observed::{ObservedContainer, compose_identity_of, owner};
use super::store::{Adoption, Writer};
use super::{
    DockerError, LABEL_CLUSTER, LABEL_MANAGED_BY, LABEL_SERVICE, MANAGED_BY_VALUE, ServiceKey,
    is_not_found,
};

/// Container inspects the watcher has under way at most; past it, the event stream waits.
/// Each holds a connection to the engine.
pub const INSPECTS_IN_FLIGHT: usize = 32;

/// The most one inspect may take (the engine holds a dying container's for a while).
const INSPECT_LIMIT: Duration = Duration::from_secs(30);

/// Containers inspected at once while listing.
const LIST_INSPECTS: usize = 16;

/// What the watcher tells the controller.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// A full list replaced the store: every key should be looked at.
    Relisted,
    /// Something happened to the container realising `key`, at `at` (the engine's clock).
    Changed { key: ServiceKey, at: SystemTime },
}

pub struct Watcher {
    docker: Docker,
    store: Writer,
    /// What the manifests adopt, as the controller last set it.
    adoption: watch::Receiver<Arc<Adoption>>,
    events: mpsc::UnboundedSender<WatchEvent>,
    metrics: Arc<Metrics>,
    /// How often the engine is listed again while the stream is healthy.
    relist: Duration,
}

/// Container event actions that say nothing about the container's state. Health probes
/// alone produce an `exec_*` pair per interval.
fn is_noise(action: &str) -> bool {
    action.starts_with("exec_")
        || matches!(
            action,
            "attach"
                | "detach"
                | "top"
                | "resize"
                | "copy"
                | "archive-path"
                | "extract-to-dir"
                | "export"
                | "commit"
        )
}

fn event_time(event: &EventMessage) -> SystemTime {
    match event.time_nano {
        Some(nanos) if nanos > 0 => UNIX_EPOCH + Duration::from_nanos(nanos.unsigned_abs()),
        _ => match event.time {
            Some(secs) if secs > 0 => UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs()),
            _ => SystemTime::now(),
        },
    }
}

impl Watcher {
    pub fn new(
        docker: Docker,
        store: Writer,
        adoption: watch::Receiver<Arc<Adoption>>,
        events: mpsc::UnboundedSender<WatchEvent>,
        metrics: Arc<Metrics>,
        relist: Duration,
    ) -> Self {
        Watcher {
            docker,
            store,
            adoption,
            events,
            metrics,
            relist,
        }
    }

    fn adopted(&self, name: &str) -> Option<ServiceKey> {
        self.adoption.borrow().key_of(name)
    }

    /// Runs until cancelled, reconnecting forever (with backoff) on errors.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut reconnect = Reconnect::default();
        loop {
            let up_since = Instant::now();
            match self.session(&cancel).await {
                Ok(()) => return,
                Err(e) => {
                    self.store.set_connected(false);
                    self.metrics.relisted("error");
                    self.metrics.watch_restarts.inc();
                    let delay = reconnect.next_delay(up_since.elapsed());
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "docker watch lost; will re-list");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Follows the event stream in a task of its own from before the list, so that the
    /// subscription is made at once (a stream is only sent for when first polled) and what
    /// happens while the engine is listed waits in the channel, not in the engine's replay of
    /// its last 256 events, which health probes fill in moments. The task ends with the
    /// stream or when the receiver is dropped.
    fn subscribe(&self) -> mpsc::UnboundedReceiver<Result<EventMessage, bollard::errors::Error>> {
        // From a moment before now: what happened between a failed stream and this one is
        // replayed (the margin also covers an engine clock a little ahead of ours).
        let since = SystemTime::now()
            .checked_sub(Duration::from_secs(5))
            .unwrap_or(UNIX_EPOCH)
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let since = format!("{}.{:09}", since.as_secs(), since.subsec_nanos());
        let docker = self.docker.clone();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let filters = HashMap::from([("type", vec!["container", "network"])]);
            let options = EventsOptionsBuilder::default()
                .since(&since)
                .filters(&filters)
                .build();
            crate::metrics::engine_request("events");
            let mut stream = std::pin::pin!(docker.events(Some(options)));
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    next = stream.next() => match next {
                        Some(event) => {
                            if tx.send(event).is_err() {
                                return;
                            }
                        }
                        None => return,
                    },
                }
            }
        });
        rx
    }

    /// One connection: subscribe, list, then apply events until the stream fails; lists
    /// again in place when the adoption set changes and every `relist`.
    async fn session(&mut self, cancel: &CancellationToken) -> Result<(), DockerError> {
        let mut events = self.subscribe();
        let mut watch = Watch::default();
        if !self.relist(cancel, &mut watch, &mut events).await? {
            return Ok(());
        }
        let mut relist_at = tokio::time::Instant::now() + self.relist;
        loop {
            let reason = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                changed = self.adoption.changed() => {
                    // The sender lives with the controller, which outlives its watcher.
                    if changed.is_err() {
                        return Ok(());
                    }
                    "adoption"
                }
                _ = tokio::time::sleep_until(relist_at) => "interval",
                Some((id, result)) = watch.inspects.next() => {
                    self.inspected(&mut watch, id, result)?;
                    continue;
                }
                next = events.recv() => {
                    self.received(&mut watch, next)?;
                    continue;
                }
            };
            debug!(reason, "listing the engine again");
            self.metrics.relisted(reason);
            if !self.relist(cancel, &mut watch, &mut events).await? {
                return Ok(());
            }
            relist_at = tokio::time::Instant::now() + self.relist;
        }
    }

    /// An event from the stream (or its end): applied, its inspect started or queued.
    fn received(
        &self,
        watch: &mut Watch,
        next: Option<Result<EventMessage, bollard::errors::Error>>,
    ) -> Result<(), DockerError> {
        match next {
            Some(Ok(event)) => {
                if let Some(id) = self.apply(&mut watch.in_flight, event) {
                    watch.start(self, id);
                }
                Ok(())
            }
            Some(Err(source)) => Err(DockerError::api("follow docker events", source)),
            None => Err(DockerError::api(
                "follow docker events",
                bollard::errors::Error::IOError {
                    err: std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the engine closed the event stream",
                    ),
                },
            )),
        }
    }

    /// Lists the engine into the store while the stream stays subscribed: the looks under
    /// way land first (the list is newer than they are), then the list replaces everything,
    /// then what the stream brought meanwhile is applied (its looks are newer than the list)
    /// before the controller is told to look at every key. False when cancelled.
    async fn relist(
        &mut self,
        cancel: &CancellationToken,
        watch: &mut Watch,
        events: &mut mpsc::UnboundedReceiver<Result<EventMessage, bollard::errors::Error>>,
    ) -> Result<bool, DockerError> {
        // Their answers are not applied: the list that follows is newer. An error is only
        // that look's.
        while tokio::select! {
            _ = cancel.cancelled() => return Ok(false),
            done = watch.inspects.next() => done,
        }
        .is_some()
        {}
        *watch = Watch::default();
        let adoption = self.adoption.borrow_and_update().clone();
        let listed = tokio::select! {
            _ = cancel.cancelled() => return Ok(false),
            listed = list_owned(&self.docker, &adoption.names) => listed?,
        };
        info!(
            containers = listed.len(),
            "docker list complete; following events"
        );
        self.store.replace_all(listed, adoption.generation);
        self.store.set_connected(true);
        while let Ok(next) = events.try_recv() {
            self.received(watch, Some(next))?;
        }
        let _ = self.events.send(WatchEvent::Relisted);
        Ok(true)
    }

    fn inspect(&self, id: String) -> BoxFuture<'static, Inspected> {
        let docker = self.docker.clone();
        async move {
            crate::metrics::engine_request("inspect");
            // Bounded: a key is not fresh until its look lands, so a look that never ends must
            // end the session (and the re-list after it), not leave the key unread.
            let result = tokio::time::timeout(INSPECT_LIMIT, docker.inspect_container(&id, None))
                .await
                .unwrap_or_else(|_| {
                    Err(bollard::errors::Error::IOError {
                        err: std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("no answer within {} s", INSPECT_LIMIT.as_secs()),
                        ),
                    })
                });
            (id, result)
        }
        .boxed()
    }

    /// Brings the store up to date with an inspect that finished and tells the controller
    /// about the key; inspects the container again when events came meanwhile, and starts
    /// what waited for a slot.
    fn inspected(
        &self,
        watch: &mut Watch,
        id: String,
        result: Result<ContainerInspectResponse, bollard::errors::Error>,
    ) -> Result<(), DockerError> {
        let Some(done) = watch.in_flight.finished(&id) else {
            watch.next(self);
            return Ok(());
        };
        let key = match result {
            Ok(c) => ObservedContainer::recognise(&c, |name| self.adopted(name)).map(|observed| {
                let key = observed.key.clone();
                // Destroyed meanwhile: this look is older than the destroy, which the store
                // already applied.
                if !done.destroyed {
                    self.store.upsert(observed);
                }
                key
            }),
            // Removed between the event and the inspect: the destroy event follows.
            Err(e) if is_not_found(&e) => self.store.remove(&id).map(|c| c.key),
            Err(source) => {
                return Err(DockerError::api(format!("inspect container {id}"), source));
            }
        };
        if !done.again {
            // The look the events asked for has landed: the key is fresh again (before it is
            // announced, so the reconcile it wakes reads it so).
            self.store.looked(&id);
        }
        if let Some(key) = key {
            let _ = self.events.send(WatchEvent::Changed { key, at: done.at });
        }
        if done.again {
            watch.start(self, id);
        }
        watch.next(self);
        Ok(())
    }

    /// Applies an event: a destroy to the store at once, any other marks its key not fresh;
    /// returns the container to inspect when an inspect must start now.
    fn apply(&self, in_flight: &mut InFlight, event: EventMessage) -> Option<String> {
        let at = event_time(&event);
        let action = event.action.clone().unwrap_or_default();
        let actor = event.actor.clone().unwrap_or_default();
        let attributes = actor.attributes.unwrap_or_default();
        let reader = self.store.reader();
        let (id, key) = match event.typ {
            Some(EventMessageTypeEnum::CONTAINER) => {
                // A probe that ended on a container not (yet) healthy: its verdict may have
                // changed without an event (an `unhealthy` that outlasts an unpause stays
                // `unhealthy`, with newer probes the reconcile waits for). Healthy ones need
                // no look: a change of verdict comes as `health_status`.
                let probed = action == "exec_die"
                    && actor.id.as_deref().is_some_and(|id| {
                        reader.by_id(id).is_some_and(|c| {
                            c.health.is_some_and(|h| h != super::HealthState::Healthy)
                        })
                    });
                if is_noise(&action) && !probed {
                    return None;
                }
                let labels: BTreeMap<String, String> = attributes.clone().into_iter().collect();
                // An event's attributes are the container's labels and its name.
                let name = attributes.get("name").map_or("", String::as_str);
                let (key, _) = owner(&labels, name, |n| self.adopted(n))?;
                (actor.id.unwrap_or_default(), Some(key))
            }
            Some(EventMessageTypeEnum::NETWORK) => {
                if action != "connect" && action != "disconnect" {
                    return None;
                }
                // `host` and `none` are attached at start and detached at the end of a run
                // only, and cannot be detached from a running container: the container's own
                // `start` and `die` say all they do (one inspect each instead of two).
                if matches!(
                    attributes.get("name").map(String::as_str),
                    Some("host" | "none")
                ) {
                    return None;
                }
                // Network events carry the container id; only ours are of interest (one
                // being inspected for its create event is ours too).
                let id = attributes.get("container").cloned().unwrap_or_default();
                let known = reader.by_id(&id).map(|c| c.key);
                if known.is_none() && !in_flight.contains(&id) {
                    return None;
                }
                (id, known)
            }
            _ => return None,
        };
        if id.is_empty() {
            return None;
        }
        debug!(%action, container = %id, "docker event");
        if action != "destroy" {
            if let Some(key) = key {
                self.store.looking(&id, key);
            }
            return in_flight.event(&id, at).then_some(id);
        }
        in_flight.destroyed(&id);
        // Whatever look was under way is moot: the container is gone.
        self.store.looked(&id);
        // A container destroyed before its first inspect finished is not in the store yet;
        // its labels still name the key.
        let key = self
            .store
            .remove(&id)
            .map(|c| c.key)
            .or_else(|| {
                Some(ServiceKey::new(
                    attributes.get(LABEL_CLUSTER)?,
                    attributes.get(LABEL_SERVICE)?,
                ))
            })
            .or_else(|| {
                let labels: BTreeMap<String, String> = attributes.clone().into_iter().collect();
                let name = attributes.get("name").map_or("", String::as_str);
                owner(&labels, name, |n| self.adopted(n)).map(|(key, _)| key)
            });
        if let Some(key) = key {
            let _ = self.events.send(WatchEvent::Changed { key, at });
        }
        None
    }
}

/// What one session has under way: the containers to look at, the inspects running (at
/// most [`INSPECTS_IN_FLIGHT`]) and those waiting for a slot. The stream is read whatever
/// the inspects do, so every event marks its key not fresh as soon as it is read.
#[derive(Default)]
struct Watch {
    in_flight: InFlight,
    inspects: FuturesUnordered<BoxFuture<'static, Inspected>>,
    backlog: std::collections::VecDeque<String>,
}

impl Watch {
    /// Starts the inspect of `id`, or queues it while every slot is taken.
    fn start(&mut self, watcher: &Watcher, id: String) {
        if self.inspects.len() < INSPECTS_IN_FLIGHT {
            self.inspects.push(watcher.inspect(id));
        } else {
            self.backlog.push_back(id);
        }
    }

    /// Starts queued inspects while slots are free (one destroyed meanwhile is dropped).
    fn next(&mut self, watcher: &Watcher) {
        while self.inspects.len() < INSPECTS_IN_FLIGHT {
            let Some(id) = self.backlog.pop_front() else {
                return;
            };
            if self.in_flight.is_destroyed(&id) {
                self.in_flight.finished(&id);
                watcher.store.looked(&id);
                continue;
            }
            self.inspects.push(watcher.inspect(id));
        }
    }
}

/// An inspect that finished: the container and what the engine answered.
type Inspected = (
    String,
    Result<ContainerInspectResponse, bollard::errors::Error>,
);

/// The containers being inspected: at most one inspect each, and whether events came while
/// it ran (so the store ends with a look taken after the last of them).
#[derive(Debug, Default)]
struct InFlight {
    by_id: HashMap<String, Pending>,
}

#[derive(Debug, Clone, PartialEq)]
struct Pending {
    /// The earliest event this inspect answers (the engine's clock).
    at: SystemTime,
    /// More events came while it ran: inspect again.
    again: bool,
    /// Earliest of those events.
    again_at: Option<SystemTime>,
    /// Destroyed while it ran: its answer must not bring the container back to the store.
    destroyed: bool,
}

impl InFlight {
    fn contains(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    fn is_destroyed(&self, id: &str) -> bool {
        self.by_id.get(id).is_some_and(|p| p.destroyed)
    }

    /// An event for `id`: true when an inspect must start now (none is under way).
    fn event(&mut self, id: &str, at: SystemTime) -> bool {
        match self.by_id.get_mut(id) {
            Some(p) => {
                p.again = !p.destroyed;
                p.again_at = Some(p.again_at.map_or(at, |a| a.min(at)));
                false
            }
            None => {
                self.by_id.insert(
                    id.to_string(),
                    Pending {
                        at,
                        again: false,
                        again_at: None,
                        destroyed: false,
                    },
                );
                true
            }
        }
    }

    /// `id` was destroyed: an inspect under way must not be applied nor repeated.
    fn destroyed(&mut self, id: &str) {
        if let Some(p) = self.by_id.get_mut(id) {
            p.destroyed = true;
            p.again = false;
        }
    }

    /// The inspect of `id` finished: what it answers. When it must run again, `id` stays
    /// under way, for the events that came meanwhile.
    fn finished(&mut self, id: &str) -> Option<Pending> {
        let done = self.by_id.remove(id)?;
        if done.again {
            self.by_id.insert(
                id.to_string(),
                Pending {
                    at: done.again_at.unwrap_or(done.at),
                    again: false,
                    again_at: None,
                    destroyed: false,
                },
            );
        }
        Some(done)
    }
}

/// The engine's list line of every container carrying our label, stopped ones too; of every
/// container when `adopting` (adopted containers carry no label to filter on).
async fn list_lines(
    docker: &Docker,
    adopting: bool,
) -> Result<Vec<ContainerSummary>, bollard::errors::Error> {
    let label = format!("{LABEL_MANAGED_BY}={MANAGED_BY_VALUE}");
    let filters = HashMap::from([("label", vec![label.as_str()])]);
    let options = if adopting {
        ListContainersOptionsBuilder::default().all(true).build()
    } else {
        ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build()
    };
    docker.list_containers(Some(options)).await
}

/// Lists every container carrying our label, and those the manifests adopt by name or by
/// compose service (`adoptable`: name or compose identity to key), inspected for health and
/// networks.
pub async fn list_owned(
    docker: &Docker,
    adoptable: &HashMap<String, ServiceKey>,
) -> Result<Vec<ObservedContainer>, DockerError> {
    crate::metrics::engine_request("list");
    let summaries = list_lines(docker, !adoptable.is_empty())
        .await
        .map_err(|source| DockerError::api("list containers", source))?;
    let wanted = |s: &bollard::models::ContainerSummary| {
        let managed = s
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_MANAGED_BY))
            .is_some_and(|v| v == MANAGED_BY_VALUE);
        let compose = || {
            let labels: BTreeMap<String, String> =
                s.labels.clone().unwrap_or_default().into_iter().collect();
            compose_identity_of(&labels).is_some_and(|id| adoptable.contains_key(&id))
        };
        managed
            || s.names
                .iter()
                .flatten()
                .any(|n| adoptable.contains_key(n.trim_start_matches('/')))
            || compose()
    };
    // Side by side: one container the engine is cleaning up after must not hold up the rest.
    let owned: Vec<Option<ObservedContainer>> = futures::stream::iter(
        summaries
            .into_iter()
            .filter(|s| wanted(s))
            .filter_map(|s| s.id),
    )
    .map(|id| async move {
        crate::metrics::engine_request("inspect");
        match docker.inspect_container(&id, None).await {
            Ok(c) => Ok(ObservedContainer::recognise(&c, |name| {
                adoptable.get(name).cloned()
            })),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(source) => Err(DockerError::api(format!("inspect container {id}"), source)),
        }
    })
    .buffered(LIST_INSPECTS)
    .try_collect()
    .await?;
    Ok(owned.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn one_inspect_per_container_and_one_more_for_the_events_that_came_meanwhile() {
        let mut f = InFlight::default();
        assert!(f.event("a", at(1)), "the first event starts an inspect");
        assert!(
            f.event("b", at(1)),
            "another container's does not wait for it"
        );
        assert!(!f.event("a", at(3)), "a second one for a waits");
        assert!(!f.event("a", at(2)));
        let done = f.finished("a").expect("under way");
        assert_eq!(done.at, at(1));
        assert!(done.again, "events came meanwhile: inspect again");
        assert!(f.contains("a"), "still under way, for them");
        let again = f.finished("a").expect("the second inspect");
        assert_eq!(again.at, at(2), "answers the earliest of them");
        assert!(!again.again);
        assert!(!f.contains("a"));
        assert_eq!(f.by_id.len(), 1);
    }

    #[test]
    fn an_inspect_of_a_destroyed_container_is_neither_applied_nor_repeated() {
        let mut f = InFlight::default();
        assert!(f.event("a", at(1)));
        assert!(!f.event("a", at(2)));
        f.destroyed("a");
        let done = f.finished("a").expect("under way");
        assert!(done.destroyed);
        assert!(!done.again);
        assert!(!f.contains("a"));
        assert!(f.finished("a").is_none());
    }
}
