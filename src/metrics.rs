//! The controller's own metrics, in Prometheus text form (served on `/metrics`).
//!
//! Names follow controller-runtime's so existing dashboards feel familiar:
//! `operator_reconcile_total{result}`, `operator_reconcile_duration_seconds`,
//! `operator_workqueue_depth`, plus drift, action and watch counters.

use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<Labels, Counter>,
    pub reconcile_duration: Histogram,
    pub queue_depth: Gauge,
    pub drifts: Family<Labels, Counter>,
    pub actions: Family<Labels, Counter>,
    pub watch_restarts: Counter,
    pub event_to_drift: Histogram,
    pub escalated: Gauge,
    pub manifest_reloads: Family<Labels, Counter>,
    pub tickets_open: Family<Labels, Gauge>,
    pub tickets_opened: Counter,
    pub tickets_resolved: Family<Labels, Counter>,
    pub ticket_resolve_seconds: Histogram,
    pub check_failing: Family<Labels, Gauge>,
    pub check_no_data: Family<Labels, Gauge>,
    pub observability_up: Family<Labels, Gauge>,
    pub check_round_seconds: Histogram,
    /// 1 while the last write to the ticket store succeeded; 0 once one failed (a full disk,
    /// a read-only or locked file): the controller does not act on what it cannot record.
    pub store_writable: Gauge,
    /// Agent sessions ended, by how they stopped.
    pub agent_sessions: Family<Labels, Counter>,
    /// Tokens the agent's sessions used, by kind (input, output, cache_read, cache_write).
    pub agent_tokens: Family<Labels, Counter>,
    /// 1 when the agent is configured and dispatching; 0 when disabled (no API key) or
    /// stopped by the API (key refused, no permission, spend limit).
    pub agent_dispatching: Gauge,
    /// Disruptive actions the quorum gate held back, by cluster and group.
    pub actions_gated: Family<Labels, Counter>,
    /// Seconds from the process's start to the end of its first full pass over every
    /// service (0 until then).
    pub first_reconcile: Gauge<f64, AtomicU64>,
    /// Time one periodic resync takes, from its tick until every service was looked at (in
    /// full, or found unchanged in the observed store).
    pub resync_seconds: Histogram,
    /// Services a resync counted as looked at because the observed store shows them as at
    /// their last clean, quiet reconcile.
    pub resync_unchanged: Counter,
    /// Full lists of the engine into the observed store after the first, by why: `error`
    /// (the event stream failed), `adoption` (the manifests adopt other containers),
    /// `interval` (the periodic bound on what the stream may have missed).
    pub relists: Family<Labels, Counter>,
    /// What the reconcile did or saw, by event (see `reconcile::events`): tickets opened,
    /// repairs, escalations, holds of the quorum gate...
    pub reconcile_events: Family<Labels, Counter>,
    /// Round trips to the ticket store (each a blocking call of its own).
    pub store_round_trips: Counter,
}

/// Requests to the Docker engine by operation, for the whole process: every call of the
/// reconcile's engine actions (`docker::actions`) and of the watcher (its event stream,
/// lists and inspects) goes through [`engine_request`], so the cost of a repair is a figure
/// (`operator_engine_requests_total{op}`). The agent's sandbox and a drill's faults make
/// calls of their own, not counted here.
static ENGINE_REQUESTS: std::sync::LazyLock<Family<Labels, Counter>> =
    std::sync::LazyLock::new(Family::default);

/// Counts one request to the engine (`op`: `inspect`, `list`, `start`, ...).
pub fn engine_request(op: &'static str) {
    ENGINE_REQUESTS
        .get_or_create(&vec![("op", op.to_string())])
        .inc();
}

static PROCESS_START: OnceLock<Instant> = OnceLock::new();

/// Notes that the process starts now (the first thing `main` does); later calls change
/// nothing.
pub fn mark_process_start() {
    PROCESS_START.get_or_init(Instant::now);
}

/// When the process started ([`mark_process_start`]; the first call of either if `main`
/// did not mark it, as in tests).
pub fn process_start() -> Instant {
    *PROCESS_START.get_or_init(Instant::now)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("operator");
        registry.register(
            "engine_requests",
            "Requests to the Docker engine by the reconcile and the watcher, by operation (inspect, list, events, create, start, stop, restart, unpause, remove, image-inspect, network-inspect, network-create, network-remove, network-connect, network-disconnect)",
            ENGINE_REQUESTS.clone(),
        );
        let store_round_trips = Counter::default();
        registry.register(
            "store_round_trips",
            "Round trips to the ticket store (each a blocking call of its own)",
            store_round_trips.clone(),
        );
        let reconciles = Family::<Labels, Counter>::default();
        registry.register(
            "reconcile",
            "Reconciles of one service, by result (clean, acted, failed, unknown, unrecorded, waiting, backoff, escalated, held, observed, blocked, gated, undeclared, settling, leased, dispatched, remediated, remediation-failed)",
            reconciles.clone(),
        );
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile, actions included",
            reconcile_duration.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "workqueue_depth",
            "Keys waiting in the work queue (due or scheduled)",
            queue_depth.clone(),
        );
        let drifts = Family::<Labels, Counter>::default();
        registry.register(
            "drifts_detected",
            "Drifts seen by reconciles, by kind",
            drifts.clone(),
        );
        let actions = Family::<Labels, Counter>::default();
        registry.register(
            "actions",
            "Repair actions taken, by kind and result",
            actions.clone(),
        );
        let actions_gated = Family::<Labels, Counter>::default();
        registry.register(
            "actions_gated",
            "Restarts and recreates held back by the quorum gate (once per hold and reason), by cluster, group (empty for the cluster cap) and reason (quorum, rollout, group-concurrency, cluster-concurrency, replacements)",
            actions_gated.clone(),
        );
        let watch_restarts = Counter::default();
        registry.register(
            "watch_restarts",
            "Times the Docker event stream was lost and re-established",
            watch_restarts.clone(),
        );
        let event_to_drift = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "event_to_drift_seconds",
            "Time from a Docker event (engine clock) to the drift it caused being detected",
            event_to_drift.clone(),
        );
        let escalated = Gauge::default();
        registry.register(
            "escalated_services",
            "Services past their restart budget, on which the controller no longer acts",
            escalated.clone(),
        );
        let store_writable = Gauge::default();
        store_writable.set(1);
        registry.register(
            "store_writable",
            "1 while the ticket store accepts writes; 0 after a write failed (no repairs are made until one succeeds)",
            store_writable.clone(),
        );
        let agent_sessions = Family::<Labels, Counter>::default();
        registry.register(
            "agent_sessions",
            "Agent sessions ended, by stop (end_turn, budget, api-error, refusal, cancelled, ...)",
            agent_sessions.clone(),
        );
        let agent_tokens = Family::<Labels, Counter>::default();
        registry.register(
            "agent_tokens",
            "Tokens used by agent sessions, by kind (input, output, cache_read, cache_write)",
            agent_tokens.clone(),
        );
        let agent_dispatching = Gauge::default();
        registry.register(
            "agent_dispatching",
            "1 while agent sessions are dispatched; 0 when the agent is disabled (no API key) or stopped by the API (key refused, permission, spend limit)",
            agent_dispatching.clone(),
        );
        let manifest_reloads = Family::<Labels, Counter>::default();
        registry.register(
            "manifest_reloads",
            "Manifest reloads, by result (applied, rejected)",
            manifest_reloads.clone(),
        );
        let tickets_open = Family::<Labels, Gauge>::default();
        registry.register(
            "tickets_open",
            "Unresolved tickets (open, remediating, escalated), by drift kind",
            tickets_open.clone(),
        );
        let tickets_opened = Counter::default();
        registry.register(
            "tickets_opened",
            "Drift episodes that opened (or reopened) a ticket",
            tickets_opened.clone(),
        );
        let tickets_resolved = Family::<Labels, Counter>::default();
        registry.register(
            "tickets_resolved",
            "Tickets resolved, by cause (self-healed, controller, agent, human)",
            tickets_resolved.clone(),
        );
        let ticket_resolve_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 20));
        registry.register(
            "ticket_resolve_seconds",
            "Time from a drift episode being detected to its ticket being resolved",
            ticket_resolve_seconds.clone(),
        );
        let check_failing = Family::<Labels, Gauge>::default();
        registry.register(
            "check_failing",
            "1 while a check fails past its `for` window, per cluster and check",
            check_failing.clone(),
        );
        let check_no_data = Family::<Labels, Gauge>::default();
        registry.register(
            "check_no_data",
            "1 while a check has never returned a series (a misspelled metric or label?)",
            check_no_data.clone(),
        );
        let observability_up = Family::<Labels, Gauge>::default();
        registry.register(
            "observability_up",
            "1 while the cluster's Prometheus answers, 0 while it cannot be asked",
            observability_up.clone(),
        );
        let check_round_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "check_round_seconds",
            "Time one evaluation round of every check takes",
            check_round_seconds.clone(),
        );
        let first_reconcile = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "first_reconcile_seconds",
            "Seconds from the process's start to the end of its first full pass over every service (0 until then)",
            first_reconcile.clone(),
        );
        let resync_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "resync_seconds",
            "Time one periodic resync takes, from its tick until every service was looked at (in full, or found unchanged in the observed store)",
            resync_seconds.clone(),
        );
        let resync_unchanged = Counter::default();
        registry.register(
            "resync_unchanged",
            "Services a resync counted as looked at because the observed store shows them as at their last clean, quiet reconcile",
            resync_unchanged.clone(),
        );
        let relists = Family::<Labels, Counter>::default();
        registry.register(
            "watch_relists",
            "Full lists of the engine after the first, by why (error, adoption, interval)",
            relists.clone(),
        );
        for reason in ["error", "adoption", "interval"] {
            // Served at 0 from the start: a dashboard (and a test) can tell none from unknown.
            let _ = relists.get_or_create(&vec![("reason", reason.to_string())]);
        }
        let reconcile_events = Family::<Labels, Counter>::default();
        registry.register(
            "reconcile_events",
            format!(
                "What the reconcile did or saw, by event: {}",
                crate::reconcile::events::Event::NAMES.join(", ")
            ),
            reconcile_events.clone(),
        );
        for event in crate::reconcile::events::Event::NAMES {
            let _ = reconcile_events.get_or_create(&vec![("event", event.to_string())]);
        }
        Metrics {
            registry,
            first_reconcile,
            resync_seconds,
            resync_unchanged,
            relists,
            reconcile_events,
            store_round_trips,
            check_failing,
            check_no_data,
            observability_up,
            check_round_seconds,
            tickets_open,
            tickets_opened,
            tickets_resolved,
            ticket_resolve_seconds,
            reconciles,
            reconcile_duration,
            queue_depth,
            drifts,
            actions,
            watch_restarts,
            event_to_drift,
            escalated,
            store_writable,
            agent_sessions,
            agent_tokens,
            agent_dispatching,
            actions_gated,
            manifest_reloads,
        }
    }

    /// The watcher listed the engine again, for `reason`.
    pub fn relisted(&self, reason: &'static str) {
        self.relists
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }

    pub fn reconciled(&self, result: &str, took: Duration) {
        self.reconciles
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
        self.reconcile_duration.observe(took.as_secs_f64());
    }

    pub fn drift(&self, kind: &str) {
        self.drifts
            .get_or_create(&vec![("kind", kind.to_string())])
            .inc();
    }

    pub fn action(&self, kind: &str, result: &str) {
        self.actions
            .get_or_create(&vec![
                ("kind", kind.to_string()),
                ("result", result.to_string()),
            ])
            .inc();
    }

    pub fn reload(&self, result: &str) {
        self.manifest_reloads
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
    }

    /// Replaces the open-ticket gauges with fresh counts.
    pub fn set_open_tickets(&self, counts: &[(String, i64)]) {
        self.tickets_open.clear();
        for (drift, n) in counts {
            self.tickets_open
                .get_or_create(&vec![("drift", drift.clone())])
                .set(*n);
        }
    }

    pub fn ticket_resolved(&self, cause: &str, after: Duration) {
        self.tickets_resolved
            .get_or_create(&vec![("cause", cause.to_string())])
            .inc();
        self.ticket_resolve_seconds.observe(after.as_secs_f64());
    }

    pub fn event_to_drift(&self, latency: Duration) {
        self.event_to_drift.observe(latency.as_secs_f64());
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_names_every_family_with_the_operator_prefix() {
        let m = Metrics::new();
        m.reconciled("clean", Duration::from_millis(3));
        m.drift("stopped");
        m.action("start", "ok");
        m.event_to_drift(Duration::from_millis(2));
        let text = m.render();
        for name in [
            "operator_reconcile_total{result=\"clean\"} 1",
            "operator_reconcile_duration_seconds_bucket",
            "operator_workqueue_depth",
            "operator_drifts_detected_total{kind=\"stopped\"} 1",
            "operator_actions_total{kind=\"start\",result=\"ok\"} 1",
            "operator_watch_restarts_total",
            "operator_event_to_drift_seconds_count 1",
            "operator_first_reconcile_seconds 0",
            "operator_resync_seconds_count 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
