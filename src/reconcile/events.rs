//! What one key's reconcile does that a person (or a test) wants to know of, as typed events
//! (vector's internal events): each kind is emitted in one place, [`Event::emit`], which writes
//! its log line and counts it in `operator_reconcile_events_total{event}`. The steps of the
//! reconcile say what happened; they do not format log lines. Tests assert on the counter,
//! the ticket timelines and `--json`, never on the log's text.
//!
//! A failure to read or write the ticket store is not an event here: it is the store's
//! (`operator_store_writable`) and the reconcile's outcome (`unknown`, `unrecorded`).

use tracing::{error, info, warn};

use crate::docker::ServiceKey;
use crate::metrics::Metrics;
use crate::remediation::Actor;

/// One thing a reconcile did or saw, with what its log line says.
#[derive(Debug)]
pub enum Event<'a> {
    /// A sighting opened a ticket, or reopened one within its cooldown.
    TicketOpened {
        key: &'a ServiceKey,
        ticket: i64,
        drift: &'a str,
        detail: &'a str,
        flaps: i64,
        reopened: bool,
    },
    /// The container ran, stopped and was started again between two looks (by someone else).
    StopBetweenLooks {
        key: &'a ServiceKey,
        detail: &'a str,
    },
    /// The manifest's `adopt` took a container over (once per container).
    Adopted {
        key: &'a ServiceKey,
        container: &'a str,
        name: &'a str,
        spec: &'a str,
        how: String,
    },
    /// An action or session is about to run: a repair, or a deliberate change (a first
    /// creation or a rollout, with no ticket).
    Repairing {
        key: &'a ServiceKey,
        ticket: Option<i64>,
        drifts: &'a [String],
        detail: &'a str,
        action: &'a str,
        actor: Actor,
        attempt: u32,
        budgeted: bool,
        retry_after_ms: u64,
    },
    /// A long-running remediator took the key: leased until it reports back.
    Dispatched {
        key: &'a ServiceKey,
        ticket: Option<i64>,
        session: &'a str,
        actor: Actor,
    },
    /// This process escalated a ticket: no more repairs for the service.
    Escalated {
        key: &'a ServiceKey,
        ticket: Option<i64>,
        drifts: &'a [String],
        detail: &'a str,
        max_restarts: u32,
        window_s: u64,
        what: &'a str,
    },
    /// Found escalated (by an earlier run) and still drifting: said once per process.
    StillEscalated {
        key: &'a ServiceKey,
        ticket: Option<i64>,
        drifts: &'a [String],
        detail: &'a str,
    },
    /// The service waits for a dependency to run before it is started (once per wait).
    Waiting {
        key: &'a ServiceKey,
        ticket: Option<i64>,
        dependency: &'a str,
    },
    /// The quorum gate holds an action back (once per hold and reason).
    Gated {
        key: &'a ServiceKey,
        ticket: Option<i64>,
        action: Option<&'a str>,
        reason: &'a str,
    },
    /// A person overrode the gate (`tickets retry --force`).
    GateOverridden {
        key: &'a ServiceKey,
        ticket: Option<i64>,
        refusal: &'a str,
    },
    /// A member the controller took down is live again.
    LiveAgain { key: &'a ServiceKey, rollout: bool },
    /// A member the controller restarted was not live within its group's `live.timeout`.
    NotLiveInTime { key: &'a ServiceKey },
    /// A rollout stopped at this member.
    RolloutStopped {
        key: &'a ServiceKey,
        ticket: Option<i64>,
        reason: &'a str,
    },
    /// A new episode on a ticket a person holds: hands off.
    DriftHeld {
        key: &'a ServiceKey,
        ticket: Option<i64>,
        drifts: &'a str,
        detail: &'a str,
    },
    /// A new episode under a policy that forbids repair (or an agent that does not serve).
    DriftObserved {
        key: &'a ServiceKey,
        ticket: Option<i64>,
        drifts: &'a str,
        detail: &'a str,
        policy: &'a str,
    },
    /// A new episode no one can repair: the name is someone else's (`name_conflict`), or no
    /// built-in action addresses the drift.
    DriftBlocked {
        key: &'a ServiceKey,
        ticket: Option<i64>,
        drifts: &'a str,
        detail: &'a str,
        name_conflict: bool,
    },
}

impl Event<'_> {
    /// Every event's name, as the `event` label has it (each series is served from the start,
    /// at 0).
    pub const NAMES: [&'static str; 18] = [
        "ticket-opened",
        "ticket-reopened",
        "stop-between-looks",
        "adopted",
        "repairing",
        "deliberate-change",
        "dispatched",
        "escalated",
        "still-escalated",
        "waiting",
        "gated",
        "gate-overridden",
        "live-again",
        "not-live-in-time",
        "rollout-stopped",
        "drift-held",
        "drift-observed",
        "drift-blocked",
    ];

    /// The `event` label.
    pub fn name(&self) -> &'static str {
        match self {
            Event::TicketOpened {
                reopened: false, ..
            } => "ticket-opened",
            Event::TicketOpened { reopened: true, .. } => "ticket-reopened",
            Event::StopBetweenLooks { .. } => "stop-between-looks",
            Event::Adopted { .. } => "adopted",
            Event::Repairing {
                ticket: None,
                budgeted: false,
                ..
            } => "deliberate-change",
            Event::Repairing { .. } => "repairing",
            Event::Dispatched { .. } => "dispatched",
            Event::Escalated { .. } => "escalated",
            Event::StillEscalated { .. } => "still-escalated",
            Event::Waiting { .. } => "waiting",
            Event::Gated { .. } => "gated",
            Event::GateOverridden { .. } => "gate-overridden",
            Event::LiveAgain { .. } => "live-again",
            Event::NotLiveInTime { .. } => "not-live-in-time",
            Event::RolloutStopped { .. } => "rollout-stopped",
            Event::DriftHeld { .. } => "drift-held",
            Event::DriftObserved { .. } => "drift-observed",
            Event::DriftBlocked { .. } => "drift-blocked",
        }
    }

    /// Writes the event's log line and counts it.
    pub fn emit(self, metrics: &Metrics) {
        metrics
            .reconcile_events
            .get_or_create(&vec![("event", self.name().to_string())])
            .inc();
        match self {
            Event::TicketOpened {
                key,
                ticket,
                drift,
                detail,
                flaps,
                reopened,
            } => {
                info!(service = %key, ticket, %drift, %detail, flaps,
                      "ticket {}", if reopened { "reopened" } else { "opened" });
            }
            Event::StopBetweenLooks { key, detail } => {
                info!(service = %key, %detail, "a stop between two looks");
            }
            Event::Adopted {
                key,
                container,
                name,
                spec,
                how,
            } => {
                info!(
                    cluster = %key.cluster,
                    service = %key.service,
                    container = %container.get(..12).unwrap_or(container),
                    spec,
                    "adopted container {name} ({how})"
                );
            }
            Event::Repairing {
                key,
                ticket,
                drifts,
                detail,
                action,
                actor,
                attempt,
                budgeted,
                retry_after_ms,
            } => {
                // A first creation or rollout is a deliberate change, not a repair.
                let doing = if ticket.is_none() && !budgeted {
                    "applying a deliberate change"
                } else {
                    "repairing"
                };
                info!(service = %key, ticket, drifts = %drifts.join(","), %detail, action, %actor, attempt, budgeted, retry_after_ms, "{doing}");
            }
            Event::Dispatched {
                key,
                ticket,
                session,
                actor,
            } => {
                info!(service = %key, ticket, %session, %actor, "remediation dispatched; the service is leased until it reports back");
            }
            Event::Escalated {
                key,
                ticket,
                drifts,
                detail,
                max_restarts,
                window_s,
                what,
            } => {
                error!(
                    service = %key, ticket, drifts = %drifts.join(","), %detail,
                    max_restarts, window_s,
                    "{what}: escalated, no more repairs for this service"
                );
            }
            Event::StillEscalated {
                key,
                ticket,
                drifts,
                detail,
            } => {
                warn!(
                    service = %key, ticket, drifts = %drifts.join(","), %detail,
                    "escalated earlier and still drifting: no repairs until `operator tickets retry {}`",
                    ticket.map_or_else(|| "ID".to_string(), |id| id.to_string())
                );
            }
            Event::Waiting {
                key,
                ticket,
                dependency,
            } => {
                info!(service = %key, ticket, %dependency, "waiting for dependency {dependency} to run before starting this service");
            }
            Event::Gated {
                key,
                ticket,
                action,
                reason,
            } => {
                warn!(service = %key, ticket, action, %reason, "held back by the quorum gate");
            }
            Event::GateOverridden {
                key,
                ticket,
                refusal,
            } => {
                warn!(service = %key, ticket, %refusal, "the gate is overridden by a person (tickets retry --force)");
            }
            Event::LiveAgain { key, rollout } => {
                info!(service = %key, rollout, "live again after the controller took it down; the rest of its group may go");
            }
            Event::NotLiveInTime { key } => {
                warn!(service = %key, "not live again within its group's live.timeout after the controller restarted it; no longer waiting for it");
            }
            Event::RolloutStopped {
                key,
                ticket,
                reason,
            } => {
                error!(service = %key, ticket, %reason, "rollout stopped");
            }
            Event::DriftHeld {
                key,
                ticket,
                drifts,
                detail,
            } => {
                info!(service = %key, ticket, %drifts, %detail, "drift on a held ticket; hands off");
            }
            Event::DriftObserved {
                key,
                ticket,
                drifts,
                detail,
                policy,
            } => {
                info!(service = %key, ticket, %drifts, %detail, policy, "drift observed; policy forbids repair");
            }
            Event::DriftBlocked {
                key,
                ticket,
                drifts,
                detail,
                name_conflict,
            } => {
                if name_conflict {
                    warn!(service = %key, ticket, %detail, "cannot create: the container name is held by a container this service does not own; leaving it alone");
                } else {
                    info!(service = %key, ticket, %drifts, %detail, "drift has no built-in repair");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_is_counted_under_its_name_and_every_name_is_served_from_the_start() {
        let metrics = Metrics::new();
        let key = ServiceKey::new("c", "s");
        Event::TicketOpened {
            key: &key,
            ticket: 1,
            drift: "stopped",
            detail: "exited",
            flaps: 0,
            reopened: true,
        }
        .emit(&metrics);
        let text = metrics.render();
        assert!(
            text.contains("operator_reconcile_events_total{event=\"ticket-reopened\"} 1"),
            "{text}"
        );
        for name in Event::NAMES {
            assert!(
                text.contains(&format!(
                    "operator_reconcile_events_total{{event=\"{name}\"}}"
                )),
                "{name} is not served:\n{text}"
            );
        }
    }
}
