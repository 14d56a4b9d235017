//! The agent: a tool-using model paged for what a restart cannot fix, bounded, audited, and
//! never trusted for the verdict (only the controller's re-check resolves a ticket).
//! See `docs/agent.md`.

pub mod audit;
pub mod prompt;
pub mod tools;
