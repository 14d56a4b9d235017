//! Read-only views of the ticket history for observers (the drills, benches, `status`):
//! drift episodes since a moment, with when each was detected, first acted on and resolved.
//! Built on the timeline, so a ticket that flapped shows each of its episodes.

use chrono::{DateTime, SubsecRound, Utc};
use rusqlite::params;
use serde::Serialize;

use super::TicketError;
use super::model::{Actor, Cause, EntryKind};
use super::store::{Store, TICKET_COLUMNS};
use crate::drift::{DriftKind, Family, Fingerprint, Target};

/// Which episodes to read. Only `since` is required.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketQuery {
    /// Episodes detected (opened or reopened) at or after this moment.
    pub since: DateTime<Utc>,
    pub cluster: Option<String>,
    pub target: Option<Target>,
    /// The drift family (`stopped` covers `crash-looping`; every check is `check-failed`).
    pub family: Option<Family>,
}

impl TicketQuery {
    pub fn since(since: DateTime<Utc>) -> Self {
        TicketQuery {
            since,
            cluster: None,
            target: None,
            family: None,
        }
    }

    #[must_use]
    pub fn cluster(mut self, cluster: impl Into<String>) -> Self {
        self.cluster = Some(cluster.into());
        self
    }

    #[must_use]
    pub fn target(mut self, target: Target) -> Self {
        self.target = Some(target);
        self
    }

    #[must_use]
    pub fn family(mut self, family: Family) -> Self {
        self.family = Some(family);
        self
    }

    fn matches(&self, fingerprint: &Fingerprint, drift: DriftKind) -> bool {
        self.cluster
            .as_ref()
            .is_none_or(|c| *c == fingerprint.cluster)
            && self
                .target
                .as_ref()
                .is_none_or(|t| *t == fingerprint.target)
            && self.family.is_none_or(|f| f.contains(drift))
    }
}

/// One drift episode of one ticket.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Episode {
    pub ticket: i64,
    pub fingerprint: Fingerprint,
    /// The drift kind the episode was detected as.
    pub drift: DriftKind,
    pub detected_at: DateTime<Utc>,
    /// When the first action of the episode started, and who started it.
    pub first_action_at: Option<DateTime<Utc>>,
    pub first_actor: Option<Actor>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolved_by: Option<Cause>,
}

impl Store {
    /// The episodes a query selects, in the order they were detected. Every time read is
    /// parsed strictly: an unreadable row is an error naming it.
    pub fn episodes(&self, query: &TicketQuery) -> Result<Vec<Episode>, TicketError> {
        let sql = format!(
            "SELECT {TICKET_COLUMNS} FROM tickets t WHERE (?1 IS NULL OR t.cluster = ?1) AND EXISTS \
             (SELECT 1 FROM timeline e WHERE e.ticket_id = t.id AND e.kind IN ('detected','reopened') AND e.at >= ?2) \
             ORDER BY t.id"
        );
        let tickets = {
            let conn = self.conn();
            self.tickets(
                &conn,
                "list episodes",
                &sql,
                params![query.cluster, super::store::ts(query.since)],
            )?
        };
        let mut episodes = Vec::new();
        for ticket in tickets {
            let mut current: Option<Episode> = None;
            for entry in self.timeline(ticket.id)? {
                match entry.kind {
                    EntryKind::Detected | EntryKind::Reopened => {
                        episodes.extend(current.take());
                        let drift = entry
                            .detail
                            .get("drift")
                            .and_then(|d| d.as_str())
                            .and_then(DriftKind::parse)
                            .unwrap_or(ticket.drift);
                        current = Some(Episode {
                            ticket: ticket.id,
                            fingerprint: ticket.fingerprint.clone(),
                            drift,
                            detected_at: entry.at,
                            first_action_at: None,
                            first_actor: None,
                            resolved_at: None,
                            resolved_by: None,
                        });
                    }
                    EntryKind::ActionStarted => {
                        if let Some(e) = current.as_mut().filter(|e| e.first_action_at.is_none()) {
                            e.first_action_at = Some(entry.at);
                            e.first_actor = entry.actor;
                        }
                    }
                    EntryKind::Resolved => {
                        if let Some(mut e) = current.take() {
                            e.resolved_at = Some(entry.at);
                            e.resolved_by = entry
                                .detail
                                .get("cause")
                                .and_then(|c| c.as_str())
                                .and_then(Cause::parse);
                            episodes.push(e);
                        }
                    }
                    _ => {}
                }
            }
            episodes.extend(current);
        }
        // Times are stored to the microsecond: compare at the precision they were written.
        let since = query.since.trunc_subsecs(6);
        episodes.retain(|e| e.detected_at >= since && query.matches(&e.fingerprint, e.drift));
        episodes.sort_by_key(|e| (e.detected_at, e.ticket));
        Ok(episodes)
    }
}
