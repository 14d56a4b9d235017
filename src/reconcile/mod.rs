//! Reconcile: the pure diff and decision, the work queue, per-key backoff and budget, one
//! key's reconcile, the built-in remediator, check verdicts turned into tickets, and the
//! controller loop that ties them to the Docker cache.
//!
//! Nothing outside this module imports it but the CLI: the drift vocabulary is
//! [`crate::drift`], the seam for remediators [`crate::remediation`], the tickets
//! [`crate::tickets`].

pub mod builder;
mod builtin;
mod checks;
pub mod config;
pub mod controller;
pub mod decide;
pub mod diff;
mod disruption;
pub mod engine;
pub mod events;
mod expect;
mod keys;
mod leases;
mod once;
pub mod outcome;
pub mod passes;
pub mod planner;
pub mod queue;
pub mod quorum;
mod removed;
pub mod report;
pub mod resync;
mod service;
mod shared;
pub mod state;

pub use builder::ControllerBuilder;
pub use config::ControllerConfig;
pub use controller::{Controller, ControllerError};
pub use decide::{Decision, Holds, decide};
pub use diff::{Observation, action_for, diff};
pub use outcome::Outcome;
pub use queue::WorkQueue;
pub use report::{ServiceReport, report, undeclared};

pub use crate::drift::{Drift, DriftKind};
pub use crate::remediation::Action;
