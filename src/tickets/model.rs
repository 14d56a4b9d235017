//! The ticket model: plain data, and the fingerprint that identifies a drift episode.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::reconcile::DriftKind;

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
        f.write_str(self.as_str())
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
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::SelfHealed => "self-healed",
            Cause::Controller => "controller",
            Cause::Agent => "agent",
            Cause::Human => "human",
        }
    }

    pub fn parse(s: &str) -> Option<Cause> {
        Some(match s {
            "self-healed" => Cause::SelfHealed,
            "controller" => Cause::Controller,
            "agent" => Cause::Agent,
            "human" => Cause::Human,
            _ => return None,
        })
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

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ticket {
    pub id: i64,
    pub fingerprint: String,
    pub cluster: String,
    pub service: String,
    /// The latest drift kind seen in this episode.
    pub drift: String,
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

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimelineEntry {
    pub at: DateTime<Utc>,
    pub kind: String,
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

/// The drift family a kind belongs to for ticketing: a stopped container that keeps
/// stopping is crash-looping, but it is the same episode, so the same ticket.
fn family(kind: DriftKind) -> &'static str {
    match kind {
        DriftKind::Stopped | DriftKind::CrashLooping => "stopped",
        other => other.as_str(),
    }
}

/// The identity of a drift episode: cluster, service (or check), drift family.
pub fn fingerprint(cluster: &str, service: &str, kind: DriftKind) -> String {
    format!("{cluster}/{service}/{}", family(kind))
}

/// The `service` column of a cluster-level ticket (no service is blamed).
pub const CLUSTER_TARGET: &str = "-";

/// The identity of a failing check's episode on one target (a service, or the cluster).
pub fn check_fingerprint(cluster: &str, target: Option<&str>, check: &str) -> String {
    format!(
        "{cluster}/{}/check-failed/{check}",
        target.unwrap_or(CLUSTER_TARGET)
    )
}

/// Whether a fingerprint belongs to a check's episode (resolved by check evaluations, never
/// by a container's reconcile).
pub fn is_check_fingerprint(fingerprint: &str) -> bool {
    fingerprint.contains("/check-failed/")
}

/// Whether a ticket's drift means the container is not there or not running.
pub fn is_container_down(drift: &str) -> bool {
    matches!(
        drift,
        "missing" | "stopped" | "crash-looping" | "paused" | "image-missing"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_looping_shares_the_stopped_fingerprint() {
        assert_eq!(
            fingerprint("c", "s", DriftKind::Stopped),
            fingerprint("c", "s", DriftKind::CrashLooping)
        );
        assert_ne!(
            fingerprint("c", "s", DriftKind::Stopped),
            fingerprint("c", "s", DriftKind::Paused)
        );
    }

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
    }
}
