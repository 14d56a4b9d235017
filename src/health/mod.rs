//! Health beyond the containers' own state: declared checks evaluated against Prometheus
//! (PromQL) and HTTP endpoints, with `for` windows, "no data" detection, and an honest
//! "unknown" when Prometheus cannot be asked.
//!
//! # Guarantees
//! - Unknown is neither healthy nor broken: while Prometheus is unreachable, no check
//!   window advances or resets and no check verdict is produced.
//! - A check that has never returned a series is reported (`no_data`), never silently
//!   treated as passing.

pub mod evaluator;
pub mod monitor;
pub mod probe;
pub mod prometheus;
pub mod promql;

pub use evaluator::{CheckState, FailingTarget, Reading, Target, Verdict};
pub use monitor::{CheckReport, ClusterHealth, Monitor, Observability, QueryCheck, check_queries};
pub use prometheus::{Prometheus, QueryError, Series};
