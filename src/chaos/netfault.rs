//! STUB (branch chaos-ledger only): the network-namespace faults (loss, bandwidth, delay,
//! partition) are another helper's module with this API. This stub lets `chaos::fault`
//! dispatch to it and compile; it refuses every fault. Replace it with the real module on
//! merge.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::spec::FaultKind;

/// The target's network namespace (by its main process) and what a partition needs.
#[derive(Debug, Clone, PartialEq)]
pub struct NetTarget {
    pub pid: u32,
    /// (service, main pid, addresses) of each peer to cut the target from.
    pub peers: Vec<(String, u32, Vec<IpAddr>)>,
    /// The target's own addresses.
    pub ips: Vec<IpAddr>,
}

/// Everything needed to undo an applied network fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetUndo {
    pub tag: String,
}

#[derive(Debug, thiserror::Error)]
pub enum NetFaultError {
    #[error("network faults are not built in this branch (chaos::netfault is a stub)")]
    Unavailable,
}

pub async fn apply(
    _target: &NetTarget,
    _fault: &FaultKind,
    _tag: &str,
) -> Result<NetUndo, NetFaultError> {
    Err(NetFaultError::Unavailable)
}

pub async fn undo(_undo: &NetUndo) -> Result<(), NetFaultError> {
    Err(NetFaultError::Unavailable)
}

pub fn netem_available() -> Result<(), String> {
    Err("chaos::netfault is a stub in this branch".into())
}
