//! Leases: a key handed to a long-running remediator (an agent session) is not reconciled
//! until its completion arrives or the lease times out. Here are the leases held
//! ([`Leases`]) and how the loop ends one: it records the remediator's result in its actor's
//! name and re-checks the key, since only that re-check may resolve the ticket.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::docker::ServiceKey;
use crate::manifest::Policy;
use crate::remediation::{Actor, Completed, RemediationError, SessionId};

use super::controller::Controller;
use super::queue::Why;
use super::shared::lock;

/// A key handed to a long-running remediator.
#[derive(Debug, Clone)]
pub(super) struct Lease {
    pub session: SessionId,
    pub ticket: Option<i64>,
    pub actor: Actor,
    /// What was started (the action, or the actor's name), for the metrics.
    pub kind: String,
    pub since: Instant,
}

/// Completions kept for a lease not yet recorded: at most this many.
const EARLY_COMPLETIONS: usize = 64;

/// The keys long-running remediators are at work on.
#[derive(Debug, Default)]
pub(super) struct Leases {
    pub(super) active: HashMap<ServiceKey, Lease>,
    /// Completions that arrived before their lease was recorded (a session that finished
    /// before its remediator returned), kept until it is.
    early: Vec<Completed>,
}

impl Leases {
    pub fn session(&self, key: &ServiceKey) -> Option<SessionId> {
        self.active.get(key).map(|l| l.session.clone())
    }

    /// Records a lease; returns its completion if it already arrived.
    pub fn grant(&mut self, key: ServiceKey, lease: Lease) -> Option<Completed> {
        let early = self
            .early
            .iter()
            .position(|c| c.key == key && c.session == lease.session)
            .map(|i| self.early.remove(i));
        self.active.insert(key, lease);
        early
    }

    /// Ends the lease a completion is for; keeps the completion if its lease is not recorded
    /// yet. `None`: nothing to do now.
    fn release(&mut self, done: Completed) -> Option<(Completed, Lease)> {
        match self.active.get(&done.key) {
            Some(l) if l.session == done.session => {
                let lease = self.active.remove(&done.key)?;
                Some((done, lease))
            }
            _ => {
                if self.early.len() >= EARLY_COMPLETIONS {
                    self.early.remove(0);
                }
                self.early.push(done);
                None
            }
        }
    }

    /// Removes and returns the leases held longer than `timeout`.
    fn expire(&mut self, now: Instant, timeout: Duration) -> Vec<(ServiceKey, Lease)> {
        let over: Vec<ServiceKey> = self
            .active
            .iter()
            .filter(|(_, l)| now.saturating_duration_since(l.since) >= timeout)
            .map(|(k, _)| k.clone())
            .collect();
        over.into_iter()
            .filter_map(|k| self.active.remove(&k).map(|l| (k, l)))
            .collect()
    }
}

impl Controller {
    /// A long-running remediation reported back: record its result in its actor's name,
    /// release the lease, and re-check the key (only that re-check may resolve its ticket).
    pub(super) async fn complete(&self, done: Completed) {
        let Some((done, lease)) = lock(&self.shared.leases).release(done) else {
            debug!("a completion arrived before its lease was recorded; kept until it is");
            return;
        };
        self.finish_lease(done.key, lease, done.session, done.result)
            .await;
    }

    /// Leases held past `lease_timeout` end as failed: the remediator is expected to stop its
    /// own session by then; the controller stops waiting and looks again.
    pub(super) async fn expire_leases(&self) {
        let timeout = self.shared.config.lease_timeout;
        let expired = lock(&self.shared.leases).expire(Instant::now(), timeout);
        for (key, lease) in expired {
            let session = lease.session.clone();
            let policy = match lease.actor {
                Actor::Agent => Some(Policy::Agent),
                _ => None,
            };
            if let Some(remediator) = policy.and_then(|p| self.shared.registered_remediator(p)) {
                remediator.withdraw(&session).await;
            }
            let reason = format!(
                "did not report back within the lease timeout ({} s)",
                timeout.as_secs()
            );
            let result = Err(RemediationError::Session {
                session: session.clone(),
                reason,
            });
            self.finish_lease(key, lease, session, result).await;
        }
    }

    async fn finish_lease(
        &self,
        key: ServiceKey,
        lease: Lease,
        session: SessionId,
        result: Result<(), RemediationError>,
    ) {
        let shared = &self.shared;
        let ok = result.is_ok();
        shared
            .metrics
            .action(&lease.kind, if ok { "ok" } else { "error" });
        let entry = match &result {
            Ok(()) => serde_json::json!({"action": lease.kind, "result": "ok", "session": session}),
            Err(e) => {
                serde_json::json!({"action": lease.kind, "result": "error", "error": e.to_string(), "session": session})
            }
        };
        match &result {
            Ok(()) => {
                info!(service = %key, %session, actor = %lease.actor, "remediation reported done; re-checking")
            }
            Err(e) => {
                warn!(service = %key, %session, actor = %lease.actor, error = %e, "remediation failed; re-checking")
            }
        }
        if let (Some(journal), Some(id)) = (&shared.journal, lease.ticket)
            && let Err(e) = journal.finish_action(id, lease.actor, ok, entry).await
        {
            error!(service = %key, error = %e, "cannot record the remediation's result");
        }
        self.enqueue(key, Why::Completion);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(session: &str) -> Lease {
        Lease {
            session: SessionId(session.into()),
            ticket: Some(1),
            actor: Actor::Agent,
            kind: "agent".into(),
            since: Instant::now(),
        }
    }

    fn done(key: &ServiceKey, session: &str) -> Completed {
        Completed {
            key: key.clone(),
            ticket: Some(1),
            session: SessionId(session.into()),
            result: Ok(()),
        }
    }

    #[test]
    fn a_completion_ends_only_its_own_sessions_lease() {
        let key = ServiceKey::new("c", "s");
        let mut leases = Leases::default();
        assert!(leases.grant(key.clone(), lease("s1")).is_none());
        assert!(leases.release(done(&key, "other")).is_none());
        assert_eq!(leases.session(&key), Some(SessionId("s1".into())));
        let (_, ended) = leases.release(done(&key, "s1")).expect("its lease");
        assert_eq!(ended.session, SessionId("s1".into()));
        assert_eq!(leases.session(&key), None);
    }

    #[test]
    fn a_completion_that_beats_its_lease_is_handed_back_when_the_lease_is_granted() {
        let key = ServiceKey::new("c", "s");
        let mut leases = Leases::default();
        assert!(leases.release(done(&key, "fast")).is_none(), "no lease yet");
        let early = leases.grant(key.clone(), lease("fast")).expect("kept");
        assert_eq!(early.session, SessionId("fast".into()));
        assert!(leases.early.is_empty());
        for i in 0..(EARLY_COMPLETIONS + 10) {
            leases.release(done(&ServiceKey::new("c", "x"), &format!("stray-{i}")));
        }
        assert_eq!(leases.early.len(), EARLY_COMPLETIONS, "bounded");
    }

    #[tokio::test(start_paused = true)]
    async fn leases_expire_after_their_timeout() {
        let key = ServiceKey::new("c", "s");
        let mut leases = Leases::default();
        leases.grant(key.clone(), lease("s1"));
        let timeout = Duration::from_secs(60);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(leases.expire(Instant::now(), timeout).is_empty());
        tokio::time::advance(Duration::from_secs(1)).await;
        let expired = leases.expire(Instant::now(), timeout);
        assert_eq!(expired.len(), 1);
        assert_eq!(leases.session(&key), None);
    }
}
