//! The agent: a tool-using model paged for what a restart cannot fix, bounded, audited, and
//! never trusted for the verdict (only the controller's re-check resolves a ticket).
//! See `docs/agent.md`.

pub mod api;
pub mod audit;
pub mod dispatcher;
pub mod guard;
pub mod prompt;
pub mod safety;
pub mod session;
pub mod shell;
pub mod tools;
