//! The quorum gate for an agent's shell: which managed containers a command may not stop,
//! kill, restart, remove or pause now, each with the gate's reason. Asked fresh before every
//! command is judged, from the engine and the ticket store (the dispatcher may run in
//! another process than the controller, so it cannot see what the controller has under way:
//! it judges from what runs and is live, as the controller does after a restart).

use std::collections::{BTreeSet, HashMap, HashSet};

use bollard::Docker;

use crate::docker::{ContainerStatus, ObservedContainer, ServiceKey};
use crate::manifest::Cluster;
use crate::reconcile::quorum::{Disruption, Snapshot, judge};
use crate::tickets::{Journal, Selector};

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
    let mut failing: HashSet<(String, String)> = HashSet::new();
    let checks: BTreeSet<&String> = cluster.groups.iter().flat_map(|g| &g.live_checks).collect();
    for check in checks {
        let selector = Selector::Checks {
            cluster: cluster.name.clone(),
            check: Some(check.clone()),
        };
        match journal.unresolved(selector).await {
            Ok(tickets) => failing.extend(
                tickets
                    .into_iter()
                    .map(|t| (check.clone(), t.fingerprint.target.to_string())),
            ),
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
        }
    }
    let mut live = HashMap::new();
    let mut running_now = HashSet::new();
    let mut ids = HashMap::new();
    for member in &members {
        let key = ServiceKey::new(&cluster.name, member.as_str());
        // Not found or not answering: not live (the gate then protects the others more).
        let ours = match docker.inspect_container(member, None).await {
            Ok(raw) => ObservedContainer::from_inspect(&raw).filter(|c| c.key == key),
            Err(_) => None,
        };
        let running = ours
            .as_ref()
            .is_some_and(|c| c.status == ContainerStatus::Running);
        if running {
            running_now.insert(member.to_string());
        }
        if let Some(c) = ours {
            ids.insert(member.to_string(), c.id);
        }
        let checks_fail = cluster
            .groups
            .iter()
            .filter(|g| g.members.contains(*member))
            .flat_map(|g| &g.live_checks)
            .any(|c| failing.contains(&(c.clone(), member.to_string())));
        live.insert(member.to_string(), running && !checks_fail);
    }
    let none = BTreeSet::new();
    let running = running_now;
    let live = |m: &str| live.get(m).copied().unwrap_or(false);
    let now = Snapshot {
        running: &|m| running.contains(m),
        live: &live,
        taken: &none,
        stopped: &none,
        recent: &|_| 0,
    };
    let what = Disruption {
        rollout: false,
        repair: false,
    };
    // By name and by id: a command may name either.
    let mut guard = Guard::default();
    for m in members {
        let id = ids.get(m.as_str());
        guard.members.push(m.clone());
        guard.members.extend(id.cloned());
        if let Err(refusal) = judge(cluster, m, what, &now) {
            let why = refusal.to_string();
            if let Some(id) = id {
                guard.protected.push((id.clone(), why.clone()));
            }
            guard.protected.push((m.clone(), why));
        }
    }
    guard
}
