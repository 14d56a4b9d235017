//! Per-key memory of the reconcile loop: repair attempts, backoff and the restart budget.
//! Pure bookkeeping over [`tokio::time::Instant`], so it is tested with paused time.
//!
//! # Guarantees
//! - The first repair of an episode happens at once; later ones wait
//!   `backoff_initial * 2^(n-1)`, capped at `backoff_max`.
//! - The backoff resets only after the service was seen healthy for `stable_after`.
//! - At most `max_restarts` budgeted repairs within any `window`. Past it the key is
//!   escalated, and stays so while it has an escalated ticket; when that ticket ends (the
//!   re-check sees the desired state, a person resolves it) the repairs still count, so a
//!   next drift within the window escalates again at once. Only a new spec or a person's
//!   `tickets retry` gives a fresh budget.

use std::collections::VecDeque;

use tokio::time::Instant;

use chrono::{DateTime, Utc};

use crate::backoff;
use crate::manifest::Remediation;
use crate::tickets::Budget;

/// One moment on both clocks: the monotonic one that backoff runs on, and the wall clock the
/// database stores. Taken once per reconcile so every time it writes agrees.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub now: Instant,
    pub wall: DateTime<Utc>,
}

impl Clock {
    pub fn now() -> Clock {
        Clock {
            now: Instant::now(),
            wall: Utc::now(),
        }
    }
}

/// Whether an agent session may be paged for a ticket now: the agent's own budget per ticket
/// episode (`spec.agent.sessionsPerTicket`, `sessionBackoff`), read from the ticket's
/// timeline so that it survives a controller restart and counts sessions a split-off
/// dispatcher ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentGate {
    Page,
    /// The last session ended less than `sessionBackoff` ago.
    WaitUntil(DateTime<Utc>),
    /// This episode already had `sessions` sessions: a person takes over.
    Spent {
        sessions: u32,
        /// How the last session failed, when it failed (a budget, the API); `None` when it
        /// ended normally and the re-check still found the drift.
        last_error: Option<String>,
    },
}

/// The agent's gate for the episode that began at `episode_at`.
pub fn agent_gate(
    timeline: &[crate::tickets::TimelineEntry],
    episode_at: DateTime<Utc>,
    spec: &crate::manifest::AgentSpec,
    now: DateTime<Utc>,
) -> AgentGate {
    use crate::tickets::{Actor, EntryKind};
    let by_agent = |kind: EntryKind| {
        timeline
            .iter()
            .filter(move |e| e.at >= episode_at && e.kind == kind && e.actor == Some(Actor::Agent))
    };
    let sessions = by_agent(EntryKind::ActionStarted).count() as u32;
    if sessions >= spec.sessions_per_ticket {
        let last_error = by_agent(EntryKind::ActionResult)
            .max_by_key(|e| e.at)
            .and_then(|e| e.detail["error"].as_str())
            .map(str::to_string);
        return AgentGate::Spent {
            sessions,
            last_error,
        };
    }
    let backoff = chrono::Duration::from_std(spec.session_backoff).unwrap_or_default();
    match by_agent(EntryKind::ActionResult).map(|e| e.at).max() {
        Some(ended) if now < ended + backoff => AgentGate::WaitUntil(ended + backoff),
        _ => AgentGate::Page,
    }
}

/// Maps a wall-clock time onto the monotonic clock, given one moment known on both.
/// `None` when it falls before the monotonic clock's origin.
pub(super) fn to_instant(t: DateTime<Utc>, now: Instant, wall: DateTime<Utc>) -> Option<Instant> {
    match (t - wall).to_std() {
        Ok(ahead) => Some(now + ahead),
        Err(_) => now.checked_sub((wall - t).to_std().unwrap_or_default()),
    }
}

pub(super) fn to_wall(t: Instant, now: Instant, wall: DateTime<Utc>) -> DateTime<Utc> {
    if t >= now {
        wall + chrono::Duration::from_std(t - now).unwrap_or_default()
    } else {
        wall - chrono::Duration::from_std(now - t).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Default)]
pub struct RepairBudget {
    /// Repairs tried since the service was last stable.
    pub attempts: u32,
    /// No repair before this time.
    pub next_attempt_at: Option<Instant>,
    /// When budgeted repairs happened, pruned to the window.
    repairs: VecDeque<Instant>,
    pub escalated: bool,
    /// Since when every reconcile found the service healthy.
    pub healthy_since: Option<Instant>,
    /// The spec hash this state was built for: a new spec starts afresh.
    pub spec_hash: Option<String>,
    /// The service has had a container before: one the controller created, or one it
    /// adopted. Its disappearance is then a drift, not the first creation.
    pub created_before: bool,
    /// When the service was last seen paused, or unpaused by the controller (wall time, as
    /// the engine dates a probe): healthcheck verdicts from probes begun before are stale.
    pub paused_at: Option<DateTime<Utc>>,
}

/// What the budget and backoff allow now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Act,
    /// Backing off: try again at this time.
    WaitUntil(Instant),
    /// The budget is spent.
    Escalate,
}

impl RepairBudget {
    /// Rebuilds the state from its stored form.
    pub fn from_stored(b: &Budget, clock: Clock) -> RepairBudget {
        let Clock { now, wall } = clock;
        RepairBudget {
            attempts: b.attempts,
            next_attempt_at: b.next_attempt_at.and_then(|t| to_instant(t, now, wall)),
            // A repair from before the monotonic origin is long outside any window.
            repairs: b
                .repairs
                .iter()
                .filter_map(|t| to_instant(*t, now, wall))
                .collect(),
            escalated: b.escalated,
            healthy_since: b.healthy_since.and_then(|t| to_instant(t, now, wall)),
            spec_hash: b.spec_hash.clone(),
            created_before: b.created_before,
            paused_at: b.paused_at,
        }
    }

    /// The stored form of the state (see [`RepairBudget::from_stored`]).
    pub fn to_stored(&self, clock: Clock) -> Budget {
        let Clock { now, wall } = clock;
        Budget {
            attempts: self.attempts,
            next_attempt_at: self.next_attempt_at.map(|t| to_wall(t, now, wall)),
            repairs: self
                .repairs
                .iter()
                .map(|t| to_wall(*t, now, wall))
                .collect(),
            escalated: self.escalated,
            healthy_since: self.healthy_since.map(|t| to_wall(t, now, wall)),
            spec_hash: self.spec_hash.clone(),
            created_before: self.created_before,
            paused_at: self.paused_at,
        }
    }

    /// Starts afresh when the desired spec changed (the budget belonged to the old spec).
    pub fn track_spec(&mut self, hash: &str) {
        if self.spec_hash.as_deref() != Some(hash) {
            // What the service's container went through is not the spec's.
            let (created_before, paused_at) = (self.created_before, self.paused_at);
            *self = RepairBudget {
                spec_hash: Some(hash.to_string()),
                created_before,
                paused_at,
                ..Default::default()
            };
        }
    }

    /// The service's escalated ticket ended (it came back, or a person resolved it): the
    /// escalation and the backoff end, as the store's do (see `Store::end_escalation_tx`);
    /// the repairs stay in their window.
    pub fn end_escalation(&mut self) {
        self.escalated = false;
        self.attempts = 0;
        self.next_attempt_at = None;
    }

    /// Budgeted repairs within the window ending now.
    pub fn recent_repairs(&mut self, now: Instant, r: &Remediation) -> u32 {
        while let Some(first) = self.repairs.front() {
            if now.saturating_duration_since(*first) >= r.window {
                self.repairs.pop_front();
            } else {
                break;
            }
        }
        u32::try_from(self.repairs.len()).unwrap_or(u32::MAX)
    }

    /// The service was seen in its desired state. `verified` is false while a healthcheck
    /// has not yet passed: that does not count towards stability.
    /// Returns when the backoff will reset, if it has not yet.
    pub fn saw_clean(&mut self, now: Instant, verified: bool, r: &Remediation) -> Option<Instant> {
        if !verified {
            self.healthy_since = None;
            return None;
        }
        let since = *self.healthy_since.get_or_insert(now);
        self.maybe_reset(now, r);
        (self.attempts > 0).then_some(since + r.stable_after)
    }

    /// The service drifted: a long enough healthy spell before it resets the backoff.
    pub fn saw_drift(&mut self, now: Instant, r: &Remediation) {
        self.maybe_reset(now, r);
        self.healthy_since = None;
    }

    fn maybe_reset(&mut self, now: Instant, r: &Remediation) {
        if let Some(since) = self.healthy_since
            && now.saturating_duration_since(since) >= r.stable_after
        {
            self.attempts = 0;
            self.next_attempt_at = None;
        }
    }

    /// Budgeted repairs within the window now, without forgetting older ones.
    pub fn repairs_in_window(&self, now: Instant, r: &Remediation) -> u32 {
        let recent = self
            .repairs
            .iter()
            .filter(|t| now.saturating_duration_since(**t) < r.window)
            .count();
        u32::try_from(recent).unwrap_or(u32::MAX)
    }

    /// Whether a repair may run now. Changes nothing: whoever escalates marks the budget so
    /// (see [`super::planner`]).
    pub fn gate(&self, now: Instant, budgeted: bool, r: &Remediation) -> Gate {
        if self.escalated || (budgeted && self.repairs_in_window(now, r) >= r.max_restarts) {
            return Gate::Escalate;
        }
        match self.next_attempt_at {
            Some(at) if now < at => Gate::WaitUntil(at),
            _ => Gate::Act,
        }
    }

    /// Records a repair about to be made; returns when the next one may happen.
    pub fn record_attempt(&mut self, now: Instant, budgeted: bool, r: &Remediation) -> Instant {
        if budgeted {
            self.repairs.push_back(now);
        }
        self.attempts = self.attempts.saturating_add(1);
        let at = now + backoff::exponential(self.attempts, r.backoff_initial, r.backoff_max);
        self.next_attempt_at = Some(at);
        at
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn remediation() -> Remediation {
        Remediation {
            max_restarts: 3,
            window: Duration::from_secs(600),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(8),
            stable_after: Duration::from_secs(60),
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn first_repair_is_immediate_then_delays_double_to_the_cap() {
        let r = Remediation {
            max_restarts: 100,
            ..remediation()
        };
        let mut s = RepairBudget::default();
        let mut delays = Vec::new();
        for _ in 0..6 {
            let now = Instant::now();
            match s.gate(now, true, &r) {
                Gate::Act => {}
                Gate::WaitUntil(at) => {
                    delays.push((at - now).as_secs());
                    tokio::time::sleep_until(at).await;
                    assert_eq!(s.gate(Instant::now(), true, &r), Gate::Act);
                }
                Gate::Escalate => panic!("escalated too early"),
            }
            s.record_attempt(Instant::now(), true, &r);
        }
        assert_eq!(delays, vec![1, 2, 4, 8, 8]);
    }

    #[tokio::test(start_paused = true)]
    async fn budget_spent_within_window_escalates_and_stays_escalated() {
        let r = remediation();
        let mut s = RepairBudget::default();
        for _ in 0..3 {
            if let Gate::WaitUntil(at) = s.gate(Instant::now(), true, &r) {
                tokio::time::sleep_until(at).await;
            }
            assert_eq!(s.gate(Instant::now(), true, &r), Gate::Act);
            s.record_attempt(Instant::now(), true, &r);
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(s.gate(Instant::now(), true, &r), Gate::Escalate);
        // The executor escalates (the gate itself changes nothing).
        s.escalated = true;
        // Even once the window has passed, a person (or a new spec) must act.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(s.gate(Instant::now(), true, &r), Gate::Escalate);
        s.track_spec("new-spec");
        assert_eq!(s.gate(Instant::now(), true, &r), Gate::Act);
    }

    #[tokio::test(start_paused = true)]
    async fn repairs_older_than_the_window_leave_the_budget() {
        let r = Remediation {
            backoff_max: Duration::from_secs(1),
            ..remediation()
        };
        let mut s = RepairBudget::default();
        for _ in 0..2 {
            s.record_attempt(Instant::now(), true, &r);
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(s.recent_repairs(Instant::now(), &r), 0);
        assert_eq!(s.gate(Instant::now(), true, &r), Gate::Act);
    }

    #[tokio::test(start_paused = true)]
    async fn unbudgeted_repairs_never_escalate() {
        let r = remediation();
        let mut s = RepairBudget::default();
        for _ in 0..10 {
            s.record_attempt(Instant::now(), false, &r);
        }
        s.next_attempt_at = None;
        assert_eq!(s.gate(Instant::now(), false, &r), Gate::Act);
    }

    #[tokio::test(start_paused = true)]
    async fn stored_budget_round_trips_across_a_restart() {
        let r = remediation();
        let mut s = RepairBudget::default();
        s.track_spec("h1");
        s.record_attempt(Instant::now(), true, &r);
        tokio::time::sleep(Duration::from_secs(1)).await;
        s.record_attempt(Instant::now(), true, &r);
        let wall = Utc::now();
        let stored = s.to_stored(Clock {
            now: Instant::now(),
            wall,
        });
        // "Restart": a later process with its own monotonic clock reading.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let later_wall = wall + chrono::Duration::seconds(1);
        let mut back = RepairBudget::from_stored(
            &stored,
            Clock {
                now: Instant::now(),
                wall: later_wall,
            },
        );
        assert_eq!(back.attempts, 2);
        assert_eq!(back.recent_repairs(Instant::now(), &r), 2);
        assert_eq!(back.spec_hash.as_deref(), Some("h1"));
        // The backoff deadline (2 s after the second repair) is kept: 1 s left.
        match back.gate(Instant::now(), true, &r) {
            Gate::WaitUntil(at) => assert_eq!(at - Instant::now(), Duration::from_secs(1)),
            other => panic!("expected to wait, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_resets_only_after_staying_healthy_for_stable_after() {
        let r = remediation();
        let mut s = RepairBudget::default();
        for _ in 0..2 {
            s.record_attempt(Instant::now(), false, &r);
        }
        assert_eq!(s.attempts, 2);
        // Healthy for a moment, then drifts again: no reset.
        s.saw_clean(Instant::now(), true, &r);
        tokio::time::sleep(Duration::from_secs(5)).await;
        s.saw_drift(Instant::now(), &r);
        assert_eq!(s.attempts, 2);
        // Running but not yet verified by its healthcheck: does not count.
        s.saw_clean(Instant::now(), false, &r);
        tokio::time::sleep(Duration::from_secs(120)).await;
        s.saw_drift(Instant::now(), &r);
        assert_eq!(s.attempts, 2);
        // Verified healthy for the whole stable period: reset.
        let reset_at = s
            .saw_clean(Instant::now(), true, &r)
            .expect("a reset is pending");
        tokio::time::sleep_until(reset_at).await;
        assert_eq!(s.saw_clean(Instant::now(), true, &r), None);
        assert_eq!(s.attempts, 0);
        assert_eq!(s.next_attempt_at, None);
    }

    #[test]
    fn the_agent_gate_counts_this_episodes_sessions_and_waits_its_backoff() {
        use crate::manifest::AgentSpec;
        use crate::tickets::{Actor, EntryKind, TimelineEntry};
        let t0 = DateTime::parse_from_rfc3339("2026-12-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let at = |s: i64| t0 + chrono::Duration::seconds(s);
        let entry = |s: i64, kind: EntryKind, actor: Option<Actor>| TimelineEntry {
            at: at(s),
            kind,
            actor,
            detail: serde_json::json!({}),
        };
        let spec = AgentSpec {
            sessions_per_ticket: 2,
            session_backoff: Duration::from_secs(60),
            ..AgentSpec::default()
        };
        let mut timeline = vec![
            // An earlier episode's session does not count.
            entry(0, EntryKind::ActionStarted, Some(Actor::Agent)),
            entry(5, EntryKind::ActionResult, Some(Actor::Agent)),
            // The controller's restarts do not count either.
            entry(10, EntryKind::ActionStarted, Some(Actor::Controller)),
        ];
        let episode = at(8);
        assert_eq!(
            agent_gate(&timeline, episode, &spec, at(20)),
            AgentGate::Page
        );
        timeline.push(entry(20, EntryKind::ActionStarted, Some(Actor::Agent)));
        timeline.push(entry(50, EntryKind::ActionResult, Some(Actor::Agent)));
        assert_eq!(
            agent_gate(&timeline, episode, &spec, at(60)),
            AgentGate::WaitUntil(at(110))
        );
        assert_eq!(
            agent_gate(&timeline, episode, &spec, at(110)),
            AgentGate::Page
        );
        timeline.push(entry(120, EntryKind::ActionStarted, Some(Actor::Agent)));
        assert_eq!(
            agent_gate(&timeline, episode, &spec, at(500)),
            AgentGate::Spent {
                sessions: 2,
                last_error: None
            }
        );
    }
}
