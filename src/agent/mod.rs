//! The Claude agent (issue 9): a tool-using model paged for what a restart cannot fix.

pub mod api;
