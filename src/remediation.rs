//! The remediation seam: who repairs a drift once the controller has decided it may be
//! repaired. The controller owns the decision, the budget-and-backoff gate and the ticket
//! records; a [`Remediator`] only acts.
//!
//! Glossary (also in `docs/architecture.md`): a *remediation* is the policy a manifest
//! declares (`observe`, `restart`, `agent`); an [`Action`] is one built-in step (start,
//! restart, recreate...); a *remediator* is who acts (the controller's built-in executor, an
//! agent); an *attempt* is one try that passed the gate and was recorded before it ran.
//!
//! # Guarantees (kept by the controller, relied on by every remediator)
//! - A remediator is only called after the gate allowed the attempt and, when the drift is
//!   an incident (it has a ticket; a first creation or rollout has none), the ticket recorded
//!   `action-started` in the remediator's [`Actor`]'s name with the budget that counts it.
//! - A remediator that finishes inside the call returns [`Dispatch::Done`]. One that starts
//!   something long-running returns [`Dispatch::Started`] at once: the key is then *leased*
//!   (not reconciled, not acted on, like a held ticket) until a [`Completed`] for that
//!   session arrives on [`RemediationRequest::completions`]; then the controller records
//!   the result and re-checks. Only that re-check resolves the ticket.

use futures::future::BoxFuture;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::docker::{DockerError, ObservedContainer, ServiceKey};
use crate::drift::Drift;
use crate::manifest::{Cluster, Service};

pub use crate::tickets::Actor;

/// The built-in repairs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "action")]
pub enum Action {
    /// Create the container (network and image first) and start it.
    Create,
    Start,
    Unpause,
    Restart,
    /// Stop, remove, create and start: rolls out a changed spec.
    Recreate,
    /// Attach the container to a network.
    Connect {
        network: String,
    },
    /// Replace the cluster's own network to apply its declared options, reconnecting every
    /// container on it.
    RecreateNetwork {
        network: String,
    },
}

impl Action {
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Start => "start",
            Action::Unpause => "unpause",
            Action::Restart => "restart",
            Action::Recreate => "recreate",
            Action::Connect { .. } => "connect",
            Action::RecreateNetwork { .. } => "recreate-network",
        }
    }

    /// Whether the action brings a container up (and so must wait for its dependencies).
    pub fn starts_container(&self) -> bool {
        matches!(self, Action::Create | Action::Start | Action::Recreate)
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Connect { network } => write!(f, "connect to network {network}"),
            Action::RecreateNetwork { network } => write!(f, "recreate network {network}"),
            other => f.pad(other.as_str()),
        }
    }
}

/// Names one long-running remediation (an agent session).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct SessionId(pub String);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(&self.0)
    }
}

/// Where long-running remediators report back.
pub type Completions = mpsc::UnboundedSender<Completed>;

/// Everything a remediator is handed for one attempt.
pub struct RemediationRequest<'a> {
    /// The ticket the attempt is recorded on (none for a deliberate change: a first
    /// creation or rollout, which is not an incident).
    pub ticket: Option<i64>,
    pub key: &'a ServiceKey,
    pub cluster: &'a Cluster,
    pub service: &'a Service,
    /// What is wrong, most important first. Empty when a failing check asked for the repair.
    pub drifts: &'a [Drift],
    /// The built-in step the diff proposes, if one exists.
    pub action: Option<&'a Action>,
    pub container: Option<&'a ObservedContainer>,
    /// Attempts made for the current spec, this one included.
    pub attempt: u32,
    pub completions: &'a Completions,
}

/// What a remediator did with a request.
#[derive(Debug)]
pub enum Dispatch {
    /// Finished inside the call (a built-in action).
    Done(Result<(), RemediationError>),
    /// Started something that reports back later with a [`Completed`]: the key is leased.
    Started { session: SessionId },
}

/// A long-running remediation is over.
#[derive(Debug)]
pub struct Completed {
    pub key: ServiceKey,
    pub ticket: Option<i64>,
    pub session: SessionId,
    pub result: Result<(), RemediationError>,
}

#[derive(Debug, thiserror::Error)]
pub enum RemediationError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error("no built-in action repairs this drift")]
    NoAction,
    #[error("session {session} failed: {reason}")]
    Session { session: SessionId, reason: String },
}

/// Who acts on a drift the controller decided to repair.
pub trait Remediator: Send + Sync + 'static {
    /// Recorded on every action entry; a successful action's actor is credited with the
    /// resolution once the controller's re-check confirms it.
    fn actor(&self) -> Actor;

    fn remediate<'a>(&'a self, request: RemediationRequest<'a>) -> BoxFuture<'a, Dispatch>;

    /// Whether it can take requests now. One that cannot (the agent after the API refused to
    /// serve) is treated as absent: its drifts are observed, and no attempt is spent on it.
    fn available(&self) -> bool {
        true
    }

    /// Why it will take no more requests for a while although it is available (the agent's
    /// controller-wide token budget is spent): the controller escalates with this reason
    /// instead of spending the ticket's attempts on requests that cannot run.
    fn exhausted(&self) -> BoxFuture<'_, Option<String>> {
        Box::pin(async { None })
    }

    /// The controller stopped waiting for `session` (its lease expired): drop it if it has
    /// not begun, and never report it. The default has nothing to withdraw.
    fn withdraw<'a>(&'a self, session: &'a SessionId) -> BoxFuture<'a, ()> {
        let _ = session;
        Box::pin(async {})
    }
}
