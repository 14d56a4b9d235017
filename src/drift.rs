//! The drift vocabulary: what can be wrong with a service or a cluster, what it is about, and
//! the fingerprint that names one episode of it. A leaf module: the diff, the tickets, the
//! checks and (next) the agent and the drills all speak it, and it imports none of them.
//!
//! # Guarantees
//! - A [`Fingerprint`]'s text is exactly what the ticket database has always stored
//!   (`cluster/service/family` and `cluster/target/check-failed/check`), and
//!   [`Fingerprint::parse`] reads back every text [`Fingerprint`] writes.
//! - `stopped` and `crash-looping` are one family: a container that keeps stopping is the
//!   same episode, so the same ticket.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What is wrong, in one word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DriftKind {
    /// No container realises the service.
    Missing,
    /// The container exists but is not running (exited, dead, created).
    Stopped,
    Paused,
    /// Docker's healthcheck says unhealthy.
    Unhealthy,
    /// The container keeps stopping despite repairs, or the engine is restarting it.
    CrashLooping,
    /// The container was created from a different spec (the spec-hash label differs).
    SpecChanged,
    /// The container is not attached to the network the service declares.
    NetworkDetached,
    /// The cluster's own network exists with other options than declared (`internal`).
    NetworkChanged,
    /// The container must be (re)created but its image is not present locally.
    ImageMissing,
    /// A container that is not ours holds the service's name.
    NameConflict,
    /// A declared check (PromQL or HTTP) failed for longer than its `for`.
    CheckFailed,
    /// The cluster's Prometheus cannot be asked: check verdicts are unknown.
    ObservabilityLost,
}

impl DriftKind {
    pub const ALL: [DriftKind; 12] = [
        DriftKind::Missing,
        DriftKind::Stopped,
        DriftKind::Paused,
        DriftKind::Unhealthy,
        DriftKind::CrashLooping,
        DriftKind::SpecChanged,
        DriftKind::NetworkDetached,
        DriftKind::NetworkChanged,
        DriftKind::ImageMissing,
        DriftKind::NameConflict,
        DriftKind::CheckFailed,
        DriftKind::ObservabilityLost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DriftKind::Missing => "missing",
            DriftKind::Stopped => "stopped",
            DriftKind::Paused => "paused",
            DriftKind::Unhealthy => "unhealthy",
            DriftKind::CrashLooping => "crash-looping",
            DriftKind::SpecChanged => "spec-changed",
            DriftKind::NetworkDetached => "network-detached",
            DriftKind::NetworkChanged => "network-changed",
            DriftKind::ImageMissing => "image-missing",
            DriftKind::NameConflict => "name-conflict",
            DriftKind::CheckFailed => "check-failed",
            DriftKind::ObservabilityLost => "observability-lost",
        }
    }

    /// The kind named `text` (as written by [`DriftKind::as_str`]).
    pub fn parse(text: &str) -> Option<DriftKind> {
        DriftKind::ALL.into_iter().find(|k| k.as_str() == text)
    }

    /// The family this kind is ticketed under.
    pub fn family(self) -> Family {
        match self {
            DriftKind::CrashLooping => Family(DriftKind::Stopped),
            other => Family(other),
        }
    }

    /// Whether this drift means the container is not there or not running (a failing check
    /// of such a service is noted on this ticket rather than ticketed on its own).
    pub fn is_container_down(self) -> bool {
        matches!(
            self,
            DriftKind::Missing
                | DriftKind::Stopped
                | DriftKind::CrashLooping
                | DriftKind::Paused
                | DriftKind::ImageMissing
        )
    }
}

impl fmt::Display for DriftKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The drift kinds that share one episode: `stopped` and `crash-looping` are one family
/// (named `stopped`); every other kind is a family of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Family(DriftKind);

impl Family {
    /// The family's name, as it appears in fingerprints.
    pub fn as_str(self) -> &'static str {
        self.0.as_str()
    }

    pub fn contains(self, kind: DriftKind) -> bool {
        kind.family() == self
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// What a drift is about: one service, or the cluster as a whole (a cluster-level check,
/// a lost Prometheus).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Service(String),
    Cluster,
}

impl Target {
    /// The `service` column of a cluster-level ticket (no service is blamed).
    pub const CLUSTER_TEXT: &'static str = "-";

    /// The service blamed, if any.
    pub fn service(&self) -> Option<&str> {
        match self {
            Target::Service(s) => Some(s),
            Target::Cluster => None,
        }
    }

    /// The text stored in the `service` column.
    pub fn as_str(&self) -> &str {
        self.service().unwrap_or(Target::CLUSTER_TEXT)
    }

    /// Reads the `service` column back.
    pub fn from_column(text: &str) -> Target {
        if text == Target::CLUSTER_TEXT {
            Target::Cluster
        } else {
            Target::Service(text.to_string())
        }
    }

    pub fn from_option(service: Option<&str>) -> Target {
        service.map_or(Target::Cluster, |s| Target::Service(s.to_string()))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// What a fingerprint's episode is about, beyond its target.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    /// A drift family of the target (a service's container, or the cluster's observability).
    Drift(Family),
    /// A declared check failing on the target.
    Check(String),
}

/// The identity of a drift episode: at most one unresolved ticket exists per fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint {
    pub cluster: String,
    pub target: Target,
    pub subject: Subject,
}

const CHECK_MARK: &str = "check-failed";

impl Fingerprint {
    /// The episode of a drift kind on a target.
    pub fn drift(cluster: &str, target: Target, kind: DriftKind) -> Fingerprint {
        Fingerprint {
            cluster: cluster.to_string(),
            target,
            subject: Subject::Drift(kind.family()),
        }
    }

    /// The episode of a service's drift.
    pub fn service(cluster: &str, service: &str, kind: DriftKind) -> Fingerprint {
        Fingerprint::drift(cluster, Target::Service(service.to_string()), kind)
    }

    /// The episode of a failing check on a target.
    pub fn check(cluster: &str, target: Target, check: &str) -> Fingerprint {
        Fingerprint {
            cluster: cluster.to_string(),
            target,
            subject: Subject::Check(check.to_string()),
        }
    }

    /// The drift kind tickets of this fingerprint carry when it is a check's.
    pub fn is_check(&self) -> bool {
        matches!(self.subject, Subject::Check(_))
    }

    /// The check's name, for a check's fingerprint.
    pub fn check_name(&self) -> Option<&str> {
        match &self.subject {
            Subject::Check(c) => Some(c),
            Subject::Drift(_) => None,
        }
    }

    /// Reads a stored fingerprint. Cluster and service names never hold `/` (the manifest
    /// forbids it), so the first two segments are unambiguous.
    pub fn parse(text: &str) -> Option<Fingerprint> {
        let mut parts = text.splitn(3, '/');
        let cluster = parts.next().filter(|c| !c.is_empty())?;
        let target = Target::from_column(parts.next().filter(|t| !t.is_empty())?);
        let rest = parts.next()?;
        let subject = match rest.split_once('/') {
            Some((CHECK_MARK, check)) if !check.is_empty() => Subject::Check(check.to_string()),
            Some(_) => return None,
            None => Subject::Drift(DriftKind::parse(rest)?.family()),
        };
        Some(Fingerprint {
            cluster: cluster.to_string(),
            target,
            subject,
        })
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.subject {
            Subject::Drift(family) => write!(f, "{}/{}/{family}", self.cluster, self.target),
            Subject::Check(check) => {
                write!(f, "{}/{}/{CHECK_MARK}/{check}", self.cluster, self.target)
            }
        }
    }
}

impl Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One thing found wrong with a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    pub kind: DriftKind,
    /// What was seen, for people.
    pub detail: String,
    /// For `network-detached`: the network to reconnect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}

impl Drift {
    pub fn new(kind: DriftKind, detail: impl Into<String>) -> Self {
        Drift {
            kind,
            detail: detail.into(),
            network: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_looping_shares_the_stopped_fingerprint() {
        assert_eq!(
            Fingerprint::service("c", "s", DriftKind::Stopped),
            Fingerprint::service("c", "s", DriftKind::CrashLooping)
        );
        assert_ne!(
            Fingerprint::service("c", "s", DriftKind::Stopped),
            Fingerprint::service("c", "s", DriftKind::Paused)
        );
        assert!(
            DriftKind::Stopped
                .family()
                .contains(DriftKind::CrashLooping)
        );
    }

    #[test]
    fn fingerprint_text_is_what_the_database_always_held() {
        assert_eq!(
            Fingerprint::service("c", "s", DriftKind::CrashLooping).to_string(),
            "c/s/stopped"
        );
        assert_eq!(
            Fingerprint::drift("c", Target::Cluster, DriftKind::ObservabilityLost).to_string(),
            "c/-/observability-lost"
        );
        assert_eq!(
            Fingerprint::check("c", Target::Service("pd0".into()), "leader").to_string(),
            "c/pd0/check-failed/leader"
        );
        assert_eq!(
            Fingerprint::check("c", Target::Cluster, "up").to_string(),
            "c/-/check-failed/up"
        );
    }

    #[test]
    fn every_fingerprint_parses_back() {
        let mut all = vec![
            Fingerprint::check("c", Target::Cluster, "up"),
            Fingerprint::check("c", Target::Service("s".into()), "x_y%z"),
        ];
        for kind in DriftKind::ALL {
            all.push(Fingerprint::service("c", "s", kind));
            all.push(Fingerprint::drift("c", Target::Cluster, kind));
        }
        for fp in all {
            assert_eq!(
                Fingerprint::parse(&fp.to_string()),
                Some(fp.clone()),
                "{fp}"
            );
        }
    }

    #[test]
    fn unreadable_fingerprints_are_refused() {
        for bad in [
            "",
            "c",
            "c/s",
            "c/s/",
            "c/s/nonsense",
            "/s/stopped",
            "c/s/check-failed/",
            "c/s/x/y",
        ] {
            assert_eq!(Fingerprint::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn kinds_round_trip_and_match_serde() {
        for kind in DriftKind::ALL {
            assert_eq!(DriftKind::parse(kind.as_str()), Some(kind));
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::Value::String(kind.as_str().into())
            );
        }
        assert_eq!(DriftKind::parse("bogus"), None);
    }

    #[test]
    fn container_down_kinds() {
        assert!(DriftKind::Paused.is_container_down());
        assert!(DriftKind::CrashLooping.is_container_down());
        assert!(!DriftKind::Unhealthy.is_container_down());
        assert!(!DriftKind::CheckFailed.is_container_down());
    }

    #[test]
    fn names_pad_like_the_strings_they_replace() {
        // `tickets list` prints them in padded columns.
        assert_eq!(format!("{:<10}|", DriftKind::Paused), "paused    |");
        assert_eq!(format!("{:<4}|", Target::Cluster), "-   |");
    }
}
