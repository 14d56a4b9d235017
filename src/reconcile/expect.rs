//! Expectations (client-go's name for it): after the controller's own action succeeds, the
//! key's next reconcile waits until the observed store shows the action's effect. The events
//! the action caused may still be on their way to the watcher (read, or not even read yet,
//! when a reconcile parked during the action runs the moment it ends); without this, that
//! reconcile would read the state from before the action and act again (a second start, a
//! second recreate) or open a ticket for what the controller itself just did.
//!
//! # Guarantees
//! - An expectation ends when the store shows the effect, or after [`EXPECT_TTL`] (an action
//!   that changed nothing, such as a start of a container someone else started meanwhile,
//!   brings no event to show it).

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use crate::docker::{ContainerStatus, ObservedContainer};
use crate::remediation::Action;

/// The longest a key waits for the store to show its last action's effect.
pub const EXPECT_TTL: Duration = Duration::from_secs(10);

/// What the store shows once the action took effect.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Effect {
    /// A run that began after `after` (a start or restart; it may have ended since).
    Started { after: Option<DateTime<Utc>> },
    /// A container other than `old` (a recreate), or any container (a create), that has
    /// started: both actions create and then start, and the create's event can reach the
    /// store before the start's. A store showing the new container created but not yet
    /// started is the state from the middle of the action, and a reconcile reading it would
    /// open a `stopped` ticket for the controller's own create.
    Replaced { old: Option<String> },
    /// No longer paused.
    Unpaused,
    /// Attached to `network`.
    Attached { network: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectation {
    effect: Effect,
    until: Instant,
}

impl Expectation {
    /// What `action`, carried out on `before` and finished at `now`, must show.
    pub fn of(action: &Action, before: Option<&ObservedContainer>, now: Instant) -> Option<Self> {
        let effect = match action {
            Action::Start | Action::Restart => Effect::Started {
                after: before.and_then(|c| c.started_at),
            },
            Action::Create | Action::Recreate => Effect::Replaced {
                old: before.map(|c| c.id.clone()),
            },
            Action::Unpause => Effect::Unpaused,
            Action::Connect { network } => Effect::Attached {
                network: network.clone(),
            },
            // The network's containers are reconnected by the action itself; their events
            // are theirs.
            Action::RecreateNetwork { .. } => return None,
        };
        Some(Expectation {
            effect,
            until: now + EXPECT_TTL,
        })
    }

    /// Whether the store's container shows the effect.
    pub fn met(&self, seen: Option<&ObservedContainer>) -> bool {
        let Some(c) = seen else {
            return false;
        };
        match &self.effect {
            Effect::Started { after } => c
                .started_at
                .is_some_and(|started| after.is_none_or(|after| started > after)),
            Effect::Replaced { old } => old.as_ref() != Some(&c.id) && c.started_at.is_some(),
            Effect::Unpaused => c.status != ContainerStatus::Paused,
            Effect::Attached { network } => c.networks.contains(network),
        }
    }

    /// Whether it is no longer waited for.
    pub fn expired(&self, now: Instant) -> bool {
        now >= self.until
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::ServiceKey;

    fn container(id: &str, status: ContainerStatus, started: i64) -> ObservedContainer {
        ObservedContainer {
            started_at: DateTime::from_timestamp(started, 0),
            ..ObservedContainer::example(id, ServiceKey::new("c", "s"), status)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_is_seen_by_a_newer_run_whatever_became_of_it() {
        let now = Instant::now();
        let exited = container("a", ContainerStatus::Exited, 100);
        let e = Expectation::of(&Action::Start, Some(&exited), now).unwrap();
        assert!(!e.met(Some(&exited)), "the look from before the start");
        assert!(!e.met(None));
        assert!(e.met(Some(&container("a", ContainerStatus::Running, 101))));
        assert!(
            e.met(Some(&container("a", ContainerStatus::Exited, 101))),
            "started and crashed again: the start took effect"
        );
        assert!(!e.expired(now));
        tokio::time::advance(EXPECT_TTL).await;
        assert!(e.expired(Instant::now()));
    }

    #[test]
    fn a_recreate_is_seen_by_another_container_an_unpause_by_no_pause_a_connect_by_its_network() {
        let now = Instant::now();
        let old = container("old", ContainerStatus::Running, 100);
        let e = Expectation::of(&Action::Recreate, Some(&old), now).unwrap();
        assert!(!e.met(Some(&old)));
        let mut not_started = container("new", ContainerStatus::Created, 0);
        not_started.started_at = None;
        assert!(
            !e.met(Some(&not_started)),
            "created, its start not yet seen: the middle of the action"
        );
        assert!(e.met(Some(&container("new", ContainerStatus::Exited, 101))));
        let created = Expectation::of(&Action::Create, None, now).unwrap();
        assert!(!created.met(None));
        assert!(!created.met(Some(&not_started)));
        assert!(created.met(Some(&old)));
        let paused = container("a", ContainerStatus::Paused, 100);
        let e = Expectation::of(&Action::Unpause, Some(&paused), now).unwrap();
        assert!(!e.met(Some(&paused)));
        assert!(e.met(Some(&container("a", ContainerStatus::Running, 100))));
        let e = Expectation::of(
            &Action::Connect {
                network: "n".into(),
            },
            Some(&old),
            now,
        )
        .unwrap();
        assert!(!e.met(Some(&old)));
        let mut attached = old.clone();
        attached.networks.insert("n".into());
        assert!(e.met(Some(&attached)));
    }
}
