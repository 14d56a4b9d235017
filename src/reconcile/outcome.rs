//! What one reconcile of a key did ([`Outcome`]): the word every reconcile ends with, for
//! the log, the metrics' `outcome` label and `run --once`'s report, kept apart from the loop
//! because the reconcile itself (`service`) is what produces it.

use serde::Serialize;

use crate::drift::DriftKind;
use crate::remediation::{Action, Actor, SessionId};

/// What one reconcile of a key did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "outcome")]
pub enum Outcome {
    /// The service is in its desired state.
    Clean,
    /// A repair ran and succeeded.
    Acted { action: Action },
    /// A built-in action ran and failed.
    Failed { action: Action, error: String },
    /// Another remediator finished inside the reconcile and succeeded.
    Remediated { actor: Actor },
    /// Another remediator finished inside the reconcile and failed.
    RemediationFailed { actor: Actor, error: String },
    /// Running, but not for the settle time yet (or not yet healthy): not called repaired.
    Settling,
    /// The last look of `--once` still found the service drifting.
    NotRepaired { drift: DriftKind, detail: String },
    /// A long-running remediator started a session; the key is leased until it reports.
    Dispatched { session: SessionId },
    /// A session is at work on the key: hands off.
    Leased { session: SessionId },
    /// The engine could not be asked; nothing was concluded.
    Unknown { error: String },
    /// The observed store is behind on the key (the watcher owes it a look, or a list with
    /// the manifests' current adoption set): nothing concluded; the watcher announces the
    /// key again when it is in.
    Pending { why: String },
    /// The ticket store cannot be written: nothing is done that cannot be recorded.
    Unrecorded { error: String },
    /// A dependency is not running yet.
    Waiting { dependency: String },
    /// Backing off; the next attempt is due later.
    BackingOff { retry_in_ms: u64 },
    /// The restart budget is spent; the controller no longer acts on this service.
    Escalated,
    /// The policy says report only.
    Observed,
    /// A person holds the ticket: hands off.
    Held,
    /// Drift that no built-in action can repair (a name held by a foreign container).
    Blocked,
    /// The quorum gate holds the action back: taking this member down now would leave its
    /// group below quorum. Looked at again shortly; nothing is spent from the budget.
    Gated { reason: String },
    /// The key is not declared (anymore).
    Undeclared,
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Clean => "clean",
            Outcome::Acted { .. } => "acted",
            Outcome::Failed { .. } => "failed",
            Outcome::Remediated { .. } => "remediated",
            Outcome::RemediationFailed { .. } => "remediation-failed",
            Outcome::Dispatched { .. } => "dispatched",
            Outcome::Settling => "settling",
            Outcome::NotRepaired { .. } => "not-repaired",
            Outcome::Leased { .. } => "leased",
            Outcome::Unknown { .. } => "unknown",
            Outcome::Pending { .. } => "pending",
            Outcome::Unrecorded { .. } => "unrecorded",
            Outcome::Waiting { .. } => "waiting",
            Outcome::BackingOff { .. } => "backoff",
            Outcome::Escalated => "escalated",
            Outcome::Observed => "observed",
            Outcome::Held => "held",
            Outcome::Blocked => "blocked",
            Outcome::Gated { .. } => "gated",
            Outcome::Undeclared => "undeclared",
        }
    }
}
