//! Health beyond the containers' own state: declared checks evaluated against Prometheus
//! (PromQL) and HTTP endpoints, with `for` windows, "no data" detection, and an honest
//! "unknown" when Prometheus cannot be asked.
//!
//! # Guarantees
//! - Unknown is neither healthy nor broken: a check whose query cannot reach Prometheus gets
//!   no verdict; its `for` window is neither reset nor concluded (it keeps running from the
//!   first failure, so a failure that outlasts an outage is judged at once afterwards).
//! - A check that has never returned a series is reported (`no_data`), never silently
//!   treated as passing.

pub mod evaluator;
pub mod monitor;
pub mod probe;
pub mod prometheus;

pub use evaluator::{CheckState, FailingTarget, Reading, Target, Verdict};
pub use monitor::{CheckReport, ClusterHealth, Monitor, Observability, QueryCheck, check_queries};
pub use prometheus::{Prometheus, QueryError, Series};
