//! `operator`: a Kubernetes-style reconciling controller for plain Docker.
//!
//! The data flows one way (see `docs/architecture.md`):
//! manifests → [`manifest::DesiredState`]; Docker list + events → [`docker::Store`];
//! both → [`reconcile::diff`] → drifts → [`reconcile::Controller`] → [`docker::actions`].
//!
//! The library never prints; the CLI in `main.rs` and [`cli`] does.
//!
//! System calls go through `rustix`, safely. `unsafe` is denied but in two places, each
//! allowed where it stands with its `SAFETY:` comment: the `pre_exec` hook of
//! `chaos::runner` and the signals rustix has no name for in `chaos::fault::procfs`.

#![deny(unsafe_code)]

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
