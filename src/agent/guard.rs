//! The quorum gate for an agent's shell: which managed containers a command may not stop,
//! kill, restart, remove or pause now, each with the gate's reason. Asked fresh before every
//! command is judged, from the engine and the ticket store (the dispatcher may run in
//! another process than the controller, so it cannot see what the controller has under way:
//! it judges from what runs and is live, as the controller does after a restart).

use std::collections::{BTreeSet, HashMap, HashSet};

use bollard::Docker;

use crate::docker::{ContainerStatus, ObservedContainer, ServiceKey};
use crate::manifest::Cluster;
use crate::reconcile::quorum::{Disruption, LiveCheckFailures, Snapshot, judge};
use crate::tickets::Journal;

/// What the judge is told about the cluster's groups.
#[derive(Debug, Default)]
pub struct Guard {
    /// `(container name or id, why it may not be taken down now)`.
    pub protected: Vec<(String, String)>,
    /// Every member's name and id: one command may take at most one of them down.
    pub members: Vec<String>,
}

/// The members of the cluster's groups, and those the gate would protect from a restart now.
pub async fn guarded(docker: &Docker, journal: &Journal, cluster: &Cluster) -> Guard {
    if cluster.groups.is_empty() {
        return Guard::default();
    }
    let members: BTreeSet<&String> = cluster.groups.iter().flat_map(|g| &g.members).collect();
    let failing = match LiveCheckFailures::read(journal, cluster).await {
        Ok(failing) => failing,
        Err(e) => {
            // Nothing can be judged: every member is protected until it can.
            let why = format!("the quorum gate cannot read the ticket store ({e})");
            return Guard {
                protected: members
                    .iter()
                    .map(|m| (m.to_string(), why.clone()))
                    .collect(),
                members: members.iter().map(|m| m.to_string()).collect(),
            };
        }
    };
    let mut running = HashSet::new();
    let mut ids = HashMap::new();
    for member in &members {
        let key = ServiceKey::new(&cluster.name, member.as_str());
        // Not found or not answering: not running, so not live (the gate then protects the
        // others more).
        let ours = match docker.inspect_container(member, None).await {
            Ok(raw) => ObservedContainer::from_inspect(&raw).filter(|c| c.key == key),
            Err(_) => None,
        };
        if let Some(c) = ours {
            if c.status == ContainerStatus::Running {
                running.insert(member.to_string());
            }
            ids.insert(member.to_string(), c.id);
        }
    }
    let runs = |m: &str| running.contains(m);
    let live = |m: &str| running.contains(m) && !failing.fail(cluster, m);
    let now = Snapshot::nothing_under_way(&runs, &live);
    // By name and by id: a command may name either.
    let mut guard = Guard::default();
    for m in members {
        let id = ids.get(m.as_str());
        guard.members.push(m.clone());
        guard.members.extend(id.cloned());
        if let Err(refusal) = judge(cluster, m, Disruption::PLAIN, &now) {
            let why = refusal.to_string();
            if let Some(id) = id {
                guard.protected.push((id.clone(), why.clone()));
            }
            guard.protected.push((m.clone(), why));
        }
    }
    guard
}
