//! The agent: a tool-using model paged for what a restart cannot fix, bounded, audited, and
//! never trusted for the verdict (only the controller's re-check resolves a ticket).
//! See `docs/agent.md`.

pub mod api;
pub mod audit;
pub mod dispatcher;
pub mod prompt;
pub mod proxy;
pub mod safety;
pub mod sandbox;
pub mod session;
pub mod shell;
pub mod toolbox;
pub mod tools;
