//! Unit tests of one key's reconcile against an in-memory engine.
