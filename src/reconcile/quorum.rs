//! The quorum gate: no disruptive action (a restart, a recreate) on a live member of a
//! quorum group when it would leave the group with fewer live members than its quorum.
//! Repairing a member that is already down is never blocked: it can only add a live one.
//!
//! Pure: who is live is looked up by the caller (the container runs, not paused, and none of
//! the group's live checks has an unresolved ticket on it).

use std::fmt;

use crate::manifest::Cluster;

/// An action the gate held back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub group: String,
    /// Live members if the action went ahead now.
    pub live_after: usize,
    pub members: usize,
    pub needed: usize,
}

impl fmt::Display for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "would leave {} with {} of {} live; needs {}",
            self.group, self.live_after, self.members, self.needed
        )
    }
}

/// Why taking `service` down now would break a quorum of one of its groups, if it would.
/// `live` says whether a member (any member, `service` included) is live now.
pub fn blocked(cluster: &Cluster, service: &str, live: &dyn Fn(&str) -> bool) -> Option<Block> {
    if !live(service) {
        return None;
    }
    cluster
        .groups
        .iter()
        .filter(|g| g.members.iter().any(|m| m == service))
        .find_map(|g| {
            let live_now = g.members.iter().filter(|m| live(m)).count();
            let live_after = live_now - 1;
            (live_after < g.needed()).then(|| Block {
                group: g.name.clone(),
                live_after,
                members: g.members.len(),
                needed: g.needed(),
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Group, NetworkSpec, PrometheusSpec, Quorum};

    fn cluster(members: usize, quorum: Quorum) -> Cluster {
        let names: Vec<String> = (0..members).map(|i| format!("m{i}")).collect();
        Cluster {
            name: "c".into(),
            source: std::path::PathBuf::from("/m/c.yaml"),
            network: NetworkSpec {
                name: "c-net".into(),
                external: false,
                internal: false,
            },
            services: Vec::new(),
            prometheus: PrometheusSpec::default(),
            checks: Vec::new(),
            agent: Default::default(),
            groups: vec![Group {
                name: "g".into(),
                members: names,
                quorum,
                live_checks: Vec::new(),
            }],
        }
    }

    #[test]
    fn a_live_member_may_go_only_while_the_rest_keep_the_quorum() {
        let c = cluster(3, Quorum::Majority);
        // All three live: one may go (2 of 3 stay).
        assert_eq!(blocked(&c, "m1", &|_| true), None);
        // m0 down: m1 going would leave 1 of 3.
        let b = blocked(&c, "m1", &|m| m != "m0").unwrap();
        assert_eq!(b.to_string(), "would leave g with 1 of 3 live; needs 2");
        // A member already down is never blocked: repairing it adds a live one.
        assert_eq!(blocked(&c, "m0", &|m| m != "m0"), None);
        // Not in any group: never blocked.
        assert_eq!(blocked(&c, "other", &|_| false), None);
    }

    #[test]
    fn five_members_tolerate_two_down_and_block_the_third() {
        let c = cluster(5, Quorum::Majority);
        assert_eq!(blocked(&c, "m2", &|m| m != "m0"), None);
        let b = blocked(&c, "m2", &|m| m != "m0" && m != "m1").unwrap();
        assert_eq!((b.live_after, b.needed), (2, 3));
        let c = cluster(3, Quorum::AtLeast(3));
        assert!(blocked(&c, "m0", &|_| true).is_some(), "all three needed");
    }
}
