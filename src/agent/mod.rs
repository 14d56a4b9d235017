//! The Claude agent: paged for what a restart cannot fix, bounded, audited step by step; only
//! the controller's own re-check closes its ticket.

pub mod audit;
