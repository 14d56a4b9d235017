//! Chaos drills: break a managed cluster on purpose, measure how fast the controller detects
//! and recovers, prove nothing acknowledged was lost, and never leave a fault behind.
//!
//! The pieces, in the order a run uses them:
//! - [`spec`]: the typed, validated drill (what `drill` produces, what everything else reads).
//! - [`drill`]: drill files (YAML through `yamldoc`, `file:line: field` diagnostics) into [`spec::Drill`].
//! - [`fault`]: each container fault kind's inject and undo through the Docker API and
//!   `/proc` (kill, stop, pause, freeze, restart, remove, network-disconnect, disk-fill,
//!   cpu-stress), dispatching the network-namespace kinds to [`netfault`]; every fault is
//!   written to the ledger (`tickets` schema 6: `chaos_runs`, `chaos_faults`) before it is
//!   applied and marked undone after, so `operator chaos cleanup` and the controller's start
//!   undo what a killed run left behind.
//! - [`netfault`]: the network half: loss, bandwidth, delay and partitions inside the
//!   target's network namespace, each with a serializable undo record.
//! - `canary`: the built-in workload (sequence-numbered writes, read back after recovery).
//! - `runner`: steady state, trials, timings from the ticket database's query API.
//! - `journal` and `report`: the JSON journal of a run and its Markdown/SVG report.

pub mod canary;
pub mod drill;
pub mod fault;
pub mod journal;
pub mod netfault;
pub mod report;
pub mod runner;
pub mod spec;
pub mod steady;
