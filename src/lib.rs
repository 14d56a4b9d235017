//! `operator`: a Kubernetes-style reconciling controller for plain Docker.
//!
//! The data flows one way (see `docs/architecture.md`):
//! manifests → [`manifest::DesiredState`]; Docker list + events → [`docker::Store`];
//! both → [`reconcile::diff`] → drifts → [`reconcile::Controller`] → [`docker::actions`].
//!
//! The library never prints; the CLI in `main.rs` and [`cli`] does.

pub mod agent;
pub mod backoff;
pub mod chaos;
pub mod cli;
pub mod compose;
pub mod docker;
pub mod drift;
pub mod health;
pub mod identity;
pub mod manifest;
pub mod metrics;
pub mod promql;
pub mod reconcile;
pub mod remediation;
pub mod server;
pub mod tickets;
pub mod yamldoc;
