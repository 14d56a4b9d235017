//! Reconcile: the pure diff, the work queue, per-key backoff and budget, and the controller
//! that ties them to the Docker cache and actions.

mod checks;
pub mod controller;
pub mod diff;
pub mod queue;
pub mod state;

pub use controller::{Controller, ControllerConfig, ControllerError, Outcome, ServiceReport};
pub use diff::{Action, Drift, DriftKind, Observation, diff, repair};
pub use queue::WorkQueue;
