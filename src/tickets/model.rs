//! The ticket model: plain data. What a ticket is about ([`Fingerprint`], [`DriftKind`]) is
//! the drift vocabulary's; this module adds what happened to it.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::drift::{DriftKind, Fingerprint, Target};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Open,
    Remediating,
    Resolved,
    Escalated,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Remediating => "remediating",
            Status::Resolved => "resolved",
            Status::Escalated => "escalated",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "open" => Status::Open,
            "remediating" => Status::Remediating,
            "resolved" => Status::Resolved,
            "escalated" => Status::Escalated,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Who or what made the desired state come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cause {
    /// The drift vanished without any action of the controller since it was last seen.
    SelfHealed,
    /// A built-in action, confirmed by the controller's own re-check.
    Controller,
    /// An agent session, confirmed by the controller's own re-check.
    Agent,
    /// A person, with `operator tickets resolve`.
    Human,
    /// Its service, check or cluster is no longer declared: nobody can re-check it.
    Removed,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::SelfHealed => "self-healed",
            Cause::Controller => "controller",
            Cause::Agent => "agent",
            Cause::Human => "human",
            Cause::Removed => "removed",
        }
    }

    pub fn parse(s: &str) -> Option<Cause> {
        Some(match s {
            "self-healed" => Cause::SelfHealed,
            "controller" => Cause::Controller,
            "agent" => Cause::Agent,
            "human" => Cause::Human,
            "removed" => Cause::Removed,
            _ => return None,
        })
    }
}

impl From<Actor> for Cause {
    fn from(actor: Actor) -> Cause {
        match actor {
            Actor::Controller => Cause::Controller,
            Actor::Agent => Cause::Agent,
            Actor::Human => Cause::Human,
        }
    }
}

/// Who acted: recorded on every action entry of a timeline. The resolve cause of a ticket is
/// the actor of its last action that did not fail, never inferred from its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Actor {
    /// A built-in action of the controller.
    Controller,
    /// An agent session.
    Agent,
    /// A person, through the CLI.
    Human,
}

impl Actor {
    pub const ALL: [Actor; 3] = [Actor::Controller, Actor::Agent, Actor::Human];

    pub fn as_str(self) -> &'static str {
        match self {
            Actor::Controller => "controller",
            Actor::Agent => "agent",
            Actor::Human => "human",
        }
    }

    pub fn parse(s: &str) -> Option<Actor> {
        Actor::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Kinds of timeline entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryKind {
    Detected,
    Reopened,
    /// The drift changed kind within the same episode (stopped → crash-looping).
    DriftChanged,
    ActionStarted,
    ActionResult,
    AgentDispatched,
    Recheck,
    Resolved,
    Escalated,
    Held,
    Unheld,
    Retried,
    Note,
}

impl EntryKind {
    pub const ALL: [EntryKind; 13] = [
        EntryKind::Detected,
        EntryKind::Reopened,
        EntryKind::DriftChanged,
        EntryKind::ActionStarted,
        EntryKind::ActionResult,
        EntryKind::AgentDispatched,
        EntryKind::Recheck,
        EntryKind::Resolved,
        EntryKind::Escalated,
        EntryKind::Held,
        EntryKind::Unheld,
        EntryKind::Retried,
        EntryKind::Note,
    ];

    pub fn parse(s: &str) -> Option<EntryKind> {
        EntryKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Detected => "detected",
            EntryKind::Reopened => "reopened",
            EntryKind::DriftChanged => "drift-changed",
            EntryKind::ActionStarted => "action-started",
            EntryKind::ActionResult => "action-result",
            EntryKind::AgentDispatched => "agent-dispatched",
            EntryKind::Recheck => "recheck",
            EntryKind::Resolved => "resolved",
            EntryKind::Escalated => "escalated",
            EntryKind::Held => "held",
            EntryKind::Unheld => "unheld",
            EntryKind::Retried => "retried",
            EntryKind::Note => "note",
        }
    }
}

impl std::fmt::Display for EntryKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ticket {
    pub id: i64,
    pub fingerprint: Fingerprint,
    pub cluster: String,
    pub service: String,
    /// The latest drift kind seen in this episode.
    pub drift: DriftKind,
    pub status: Status,
    pub held: bool,
    pub occurrences: i64,
    pub flaps: i64,
    pub detail: String,
    pub opened_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolved_by: Option<Cause>,
    /// Actions the controller started in the current episode.
    pub actions: i64,
    /// When the current episode began: `opened_at`, or the last reopening.
    pub episode_at: DateTime<Utc>,
}

impl Ticket {
    /// What the ticket is about: a service, or the cluster.
    pub fn target(&self) -> &Target {
        &self.fingerprint.target
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimelineEntry {
    pub at: DateTime<Utc>,
    pub kind: EntryKind,
    /// Who acted, on action entries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,
    pub detail: serde_json::Value,
}

/// What recording a drift sighting did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sighting {
    Opened,
    /// An unresolved ticket existed: its counter was bumped.
    Seen,
    /// A ticket resolved within the cooldown was reopened (a flap).
    Reopened,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_causes_round_trip() {
        for s in [
            Status::Open,
            Status::Remediating,
            Status::Resolved,
            Status::Escalated,
        ] {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        for c in [
            Cause::SelfHealed,
            Cause::Controller,
            Cause::Agent,
            Cause::Human,
        ] {
            assert_eq!(Cause::parse(c.as_str()), Some(c));
        }
        for a in Actor::ALL {
            assert_eq!(Actor::parse(a.as_str()), Some(a));
        }
        for k in EntryKind::ALL {
            assert_eq!(EntryKind::parse(k.as_str()), Some(k));
            assert_eq!(
                serde_json::to_value(k).unwrap(),
                serde_json::Value::String(k.as_str().into())
            );
        }
    }
}
