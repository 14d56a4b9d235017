//! The watcher: list the owned containers, then follow the engine's event stream.
//!
//! # Guarantees
//! - Nothing is missed across a reconnect: the event subscription starts from a time taken
//!   *before* the list, so a change racing the list is replayed (the engine keeps the last
//!   256 events); after any stream error the whole list is fetched again.
//! - Reconnects are spaced by a capped, jittered backoff that resets after a calm period.
//!
//! # Caveats
//! Events only say *which* key to look at; the reconcile reads the cache, never the event.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::models::{EventMessage, EventMessageTypeEnum};
use bollard::query_parameters::{EventsOptionsBuilder, ListContainersOptionsBuilder};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Reconnect;
use crate::metrics::Metrics;

use super::observed::{ObservedContainer, is_managed};
use super::{Cache, DockerError, LABEL_MANAGED_BY, MANAGED_BY_VALUE, ServiceKey, is_not_found};

/// What the watcher tells the controller.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// A full list replaced the cache: every key should be looked at.
    Relisted,
    /// Something happened to the container realising `key`, at `at` (the engine's clock).
    Changed { key: ServiceKey, at: SystemTime },
}

pub struct Watcher {
    docker: Docker,
    cache: Arc<Cache>,
    events: mpsc::UnboundedSender<WatchEvent>,
    metrics: Arc<Metrics>,
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
        cache: Arc<Cache>,
        events: mpsc::UnboundedSender<WatchEvent>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Watcher {
            docker,
            cache,
            events,
            metrics,
        }
    }

    /// Runs until cancelled, reconnecting forever (with backoff) on errors.
    pub async fn run(self, cancel: CancellationToken) {
        let mut reconnect = Reconnect::default();
        loop {
            let up_since = Instant::now();
            match self.session(&cancel).await {
                Ok(()) => return,
                Err(e) => {
                    self.cache.set_connected(false);
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

    /// One connection: subscribe, list, then apply events until the stream fails.
    async fn session(&self, cancel: &CancellationToken) -> Result<(), DockerError> {
        // Subscribe from a moment before the list so that nothing between the two is lost
        // (the margin also covers an engine clock a little ahead of ours).
        let since = SystemTime::now()
            .checked_sub(Duration::from_secs(5))
            .unwrap_or(UNIX_EPOCH)
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let since = format!("{}.{:09}", since.as_secs(), since.subsec_nanos());
        let filters = HashMap::from([("type", vec!["container", "network"])]);
        let options = EventsOptionsBuilder::default()
            .since(&since)
            .filters(&filters)
            .build();
        let mut stream = self.docker.events(Some(options));

        let listed = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            listed = list_owned(&self.docker) => listed?,
        };
        info!(
            containers = listed.len(),
            "docker list complete; following events"
        );
        self.cache.replace_all(listed);
        self.cache.set_connected(true);
        let _ = self.events.send(WatchEvent::Relisted);

        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                next = stream.next() => next,
            };
            match next {
                Some(Ok(event)) => self.apply(event).await?,
                Some(Err(source)) => return Err(DockerError::api("follow docker events", source)),
                None => {
                    return Err(DockerError::api(
                        "follow docker events",
                        bollard::errors::Error::IOError {
                            err: std::io::Error::new(
                                std::io::ErrorKind::UnexpectedEof,
                                "the engine closed the event stream",
                            ),
                        },
                    ));
                }
            }
        }
    }

    /// Brings the cache up to date for the container an event is about.
    async fn apply(&self, event: EventMessage) -> Result<(), DockerError> {
        let at = event_time(&event);
        let action = event.action.clone().unwrap_or_default();
        let actor = event.actor.clone().unwrap_or_default();
        let attributes = actor.attributes.unwrap_or_default();
        let id = match event.typ {
            Some(EventMessageTypeEnum::CONTAINER) => {
                if is_noise(&action) {
                    return Ok(());
                }
                let labels: BTreeMap<String, String> = attributes.clone().into_iter().collect();
                if !is_managed(&labels) {
                    return Ok(());
                }
                actor.id.unwrap_or_default()
            }
            Some(EventMessageTypeEnum::NETWORK) => {
                if action != "connect" && action != "disconnect" {
                    return Ok(());
                }
                // Network events carry the container id; only ours are of interest.
                let id = attributes.get("container").cloned().unwrap_or_default();
                if self.cache.by_id(&id).is_none() {
                    return Ok(());
                }
                id
            }
            _ => return Ok(()),
        };
        if id.is_empty() {
            return Ok(());
        }
        debug!(%action, container = %id, "docker event");
        let key = if action == "destroy" {
            self.cache.remove(&id).map(|c| c.key)
        } else {
            match self.docker.inspect_container(&id, None).await {
                Ok(c) => match ObservedContainer::from_inspect(&c) {
                    Some(observed) => {
                        let key = observed.key.clone();
                        self.cache.upsert(observed);
                        Some(key)
                    }
                    None => None,
                },
                // Removed between the event and the inspect: the destroy event follows.
                Err(e) if is_not_found(&e) => self.cache.remove(&id).map(|c| c.key),
                Err(source) => {
                    return Err(DockerError::api(format!("inspect container {id}"), source));
                }
            }
        };
        if let Some(key) = key {
            let _ = self.events.send(WatchEvent::Changed { key, at });
        }
        Ok(())
    }
}

/// Lists every container carrying our label, inspected for health and networks.
pub async fn list_owned(docker: &Docker) -> Result<Vec<ObservedContainer>, DockerError> {
    let label = format!("{LABEL_MANAGED_BY}={MANAGED_BY_VALUE}");
    let filters = HashMap::from([("label", vec![label.as_str()])]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let summaries = docker
        .list_containers(Some(options))
        .await
        .map_err(|source| DockerError::api("list containers", source))?;
    let mut owned = Vec::with_capacity(summaries.len());
    for summary in summaries {
        let Some(id) = summary.id else { continue };
        match docker.inspect_container(&id, None).await {
            Ok(c) => owned.extend(ObservedContainer::from_inspect(&c)),
            Err(e) if is_not_found(&e) => {}
            Err(source) => {
                return Err(DockerError::api(format!("inspect container {id}"), source));
            }
        }
    }
    Ok(owned)
}
