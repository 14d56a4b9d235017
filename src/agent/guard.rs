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

/// `(container name, why it may not be taken down now)` for every member of the cluster's
/// groups the gate would protect from a restart.
pub async fn guarded(
    docker: &Docker,
    journal: &Journal,
    cluster: &Cluster,
) -> Vec<(String, String)> {
    if cluster.groups.is_empty() {
        return Vec::new();
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
                return members
                    .iter()
                    .map(|m| (m.to_string(), why.clone()))
                    .collect();
            }
        }
    }
    let mut live = HashMap::new();
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
    let live = |m: &str| live.get(m).copied().unwrap_or(false);
    let now = Snapshot {
        live: &live,
        taken: &none,
        recent: &|_| 0,
    };
    let what = Disruption {
        rollout: false,
        repair: false,
    };
    // By name and by id: a command may name either.
    let mut out = Vec::new();
    for m in members {
        if let Err(refusal) = judge(cluster, m, what, &now) {
            let why = refusal.to_string();
            if let Some(id) = ids.get(m.as_str()) {
                out.push((id.clone(), why.clone()));
            }
            out.push((m.clone(), why));
        }
    }
    out
}
