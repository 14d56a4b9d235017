//! The per-service repair budget as stored: attempts, backoff and the restart budget of the
//! reconcile loop, in wall-clock UTC so that it survives a restart of the controller.
//!
//! One budget per service, not per ticket: a service that alternates between two kinds of
//! drift (stopped, then unhealthy) must not get two budgets.

use chrono::{DateTime, Utc};
use serde::Serialize;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Budget {
    pub attempts: u32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Times of budgeted repairs (pruned to the window when used).
    pub repairs: Vec<DateTime<Utc>>,
    pub escalated: bool,
    pub healthy_since: Option<DateTime<Utc>>,
    pub spec_hash: Option<String>,
    pub created_before: bool,
    /// When the service was last seen paused, or unpaused by the controller.
    pub paused_at: Option<DateTime<Utc>>,
}
