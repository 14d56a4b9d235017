//! The quorum gate: what the controller may take down now. No restart or recreate of a
//! *live* member of a group when it would leave the group with fewer live members than its
//! quorum; a rollout one member at a time, each only while every other member is live; at most
//! `maxConcurrent` members of a group and `maxConcurrentDisruptions` containers of a cluster
//! under way at once; and no more than `replacements.max` repairs of live members of a group
//! in its window (past it a person is asked). Repairing a member that is already down is
//! never held back: it can only add a live one.
//!
//! Pure, but for [`LiveCheckFailures::read`]: who runs and what is under way is looked up
//! by the caller (the controller from its cache and registry, `plan` from its observation,
//! the agent's guard from the engine); which live checks fail is read from the ticket store
//! the same way by all three.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::time::Duration;

use crate::manifest::Cluster;
use crate::tickets::{Journal, Selector, TicketError};

/// Which members fail which of their groups' live checks: an unresolved ticket of the
/// check on the member.
#[derive(Debug, Default)]
pub struct LiveCheckFailures(HashSet<(String, String)>);

/// The one rule of who runs and who is live, for the gate (the controller's and `plan`'s):
/// live when its container runs (not paused), has settled (started at or before
/// `settled_before`: a member crash-looping under the engine's restart policy runs for
/// moments), is not unhealthy, and none of its groups' live checks fails on it.
pub fn member_state(
    container: Option<&crate::docker::ObservedContainer>,
    settled_before: chrono::DateTime<chrono::Utc>,
    failing: bool,
) -> (bool, bool) {
    let running = container.is_some_and(|c| c.status == crate::docker::ContainerStatus::Running);
    let sound = container.is_some_and(|c| {
        c.started_at.is_some_and(|t| t <= settled_before)
            && c.health != Some(crate::docker::HealthState::Unhealthy)
    });
    (running, running && sound && !failing)
}

impl LiveCheckFailures {
    /// Reads the unresolved tickets of every live check of the cluster's groups.
    pub async fn read(journal: &Journal, cluster: &Cluster) -> Result<Self, TicketError> {
        let checks: BTreeSet<&String> =
            cluster.groups.iter().flat_map(|g| &g.live_checks).collect();
        let mut failing = HashSet::new();
        for check in checks {
            let selector = Selector::Checks {
                cluster: cluster.name.clone(),
                check: Some(check.clone()),
            };
            failing.extend(
                journal
                    .unresolved(selector)
                    .await?
                    .into_iter()
                    .map(|t| (check.clone(), t.fingerprint.target.to_string())),
            );
        }
        Ok(LiveCheckFailures(failing))
    }

    /// Whether one of the live checks of `member`'s groups fails on it.
    pub fn fail(&self, cluster: &Cluster, member: &str) -> bool {
        cluster
            .groups_of(member)
            .flat_map(|g| &g.live_checks)
            .any(|c| self.0.contains(&(c.clone(), member.to_string())))
    }
}

/// An action that would break a group's quorum.
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

/// What the controller is about to do to a running container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disruption {
    /// Recreating it with an edited spec (a rollout): one member of a group at a time.
    pub rollout: bool,
    /// A repair, counted against the group's `replacements` (a rollout is asked for).
    pub repair: bool,
}

impl Disruption {
    /// A restart that is neither a rollout nor counted against the group's replacements:
    /// what a person's (or the agent's) command is judged as.
    pub const PLAIN: Disruption = Disruption {
        rollout: false,
        repair: false,
    };
}

/// Why the gate holds an action back (or, for [`Refusal::Churn`], gives it to a person).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Quorum(Block),
    /// A rollout waits until every other member of the group is live (and not itself under
    /// way).
    Rollout {
        group: String,
        waiting_for: String,
    },
    /// The group already has `max` members under way.
    GroupBusy {
        group: String,
        busy: Vec<String>,
        max: usize,
    },
    /// The cluster already has `max` restarts or recreates under way.
    ClusterBusy {
        busy: Vec<String>,
        max: usize,
    },
    /// The group had `max` repairs of live members in its window: churn, for a person.
    Churn {
        group: String,
        count: usize,
        max: u32,
        window: Duration,
    },
}

impl Refusal {
    /// The group it is about, for `operator_actions_gated_total{group}` ("" for the cluster).
    pub fn group(&self) -> &str {
        match self {
            Refusal::Quorum(b) => &b.group,
            Refusal::Rollout { group, .. }
            | Refusal::GroupBusy { group, .. }
            | Refusal::Churn { group, .. } => group,
            Refusal::ClusterBusy { .. } => "",
        }
    }

    /// A short name of the rule, for `operator_actions_gated_total{reason}`.
    pub fn rule(&self) -> &'static str {
        match self {
            Refusal::Quorum(_) => "quorum",
            Refusal::Rollout { .. } => "rollout",
            Refusal::GroupBusy { .. } => "group-concurrency",
            Refusal::ClusterBusy { .. } => "cluster-concurrency",
            Refusal::Churn { .. } => "replacements",
        }
    }

    /// Whether waiting cannot help: the action is escalated instead of held back.
    pub fn escalates(&self) -> bool {
        matches!(self, Refusal::Churn { .. })
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Quorum(b) => b.fmt(f),
            Refusal::Rollout { group, waiting_for } => write!(
                f,
                "rolling {group} out one member at a time: waits until {waiting_for} is live"
            ),
            Refusal::GroupBusy { group, busy, max } => write!(
                f,
                "{group} already has {} under way (at most {max} at a time)",
                busy.join(", ")
            ),
            Refusal::ClusterBusy { busy, max } => write!(
                f,
                "the cluster already has {} restarts or recreates under way ({}; at most {max} at a time)",
                busy.len(),
                busy.join(", ")
            ),
            Refusal::Churn {
                group,
                count,
                max,
                window,
            } => write!(
                f,
                "{group} had {count} repairs that took a live member down in the last {} (replacements.max {max}): \
                 something keeps breaking the group; a person should look",
                as_written(*window)
            ),
        }
    }
}

/// A window as a manifest would write it ("10m", "90s").
fn as_written(d: Duration) -> String {
    match d.as_secs() {
        s if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        s if s > 0 => format!("{s}s"),
        _ => format!("{}ms", d.as_millis()),
    }
}

/// What the gate looks at besides the manifest.
pub struct Snapshot<'a> {
    /// Whether a service's container runs (it may still not be live).
    pub running: &'a dyn Fn(&str) -> bool,
    /// Whether a member (any service of the cluster) is live now.
    pub live: &'a dyn Fn(&str) -> bool,
    /// Services of the cluster the controller has taken down and not yet seen live again.
    pub taken: &'a BTreeSet<String>,
    /// Of those, the ones a rollout stopped at (waiting for a person): they hold their group
    /// back, not the rest of the cluster.
    pub stopped: &'a BTreeSet<String>,
    /// Repairs of live members of a group within its window.
    pub recent: &'a dyn Fn(&str) -> usize,
}

/// Nothing under way, nothing repaired in any window.
static NOTHING: BTreeSet<String> = BTreeSet::new();

fn no_repairs(_group: &str) -> usize {
    0
}

impl<'a> Snapshot<'a> {
    /// Who runs and who is live, with nothing under way: how a process that cannot see the
    /// controller's registry judges (the agent's guard, `plan` before it takes anything).
    pub fn nothing_under_way(
        running: &'a dyn Fn(&str) -> bool,
        live: &'a dyn Fn(&str) -> bool,
    ) -> Snapshot<'a> {
        Snapshot {
            running,
            live,
            taken: &NOTHING,
            stopped: &NOTHING,
            recent: &no_repairs,
        }
    }
}

/// Whether `service` may be taken down now for `what`.
pub fn judge(
    cluster: &Cluster,
    service: &str,
    what: Disruption,
    now: &Snapshot<'_>,
) -> Result<(), Refusal> {
    // A container that does not run is not taken down by restarting it: nothing to hold.
    // One that runs but is not live (a hung member) may go whatever the quorum says, but it
    // is one more action under way: the caps apply.
    if !(now.running)(service) {
        return Ok(());
    }
    let live = (now.live)(service);
    let others = |members: &[String]| -> Vec<String> {
        members
            .iter()
            .filter(|m| *m != service && now.taken.contains(*m))
            .cloned()
            .collect()
    };
    if let Some(max) = cluster.max_concurrent_disruptions {
        let busy: Vec<String> = now
            .taken
            .iter()
            .filter(|m| *m != service && !now.stopped.contains(*m))
            .cloned()
            .collect();
        if busy.len() >= max {
            return Err(Refusal::ClusterBusy { busy, max });
        }
    }
    for g in cluster.groups_of(service) {
        let busy = others(&g.members);
        if busy.len() >= g.max_concurrent {
            return Err(Refusal::GroupBusy {
                group: g.name.clone(),
                busy,
                max: g.max_concurrent,
            });
        }
        if !live {
            continue;
        }
        let up = |m: &String| (now.live)(m) && !now.taken.contains(m);
        let live_after = g.members.iter().filter(|m| *m != service && up(m)).count();
        if live_after < g.needed() {
            return Err(Refusal::Quorum(Block {
                group: g.name.clone(),
                live_after,
                members: g.members.len(),
                needed: g.needed(),
            }));
        }
        if what.rollout
            && let Some(down) = g.members.iter().find(|m| *m != service && !up(m))
        {
            return Err(Refusal::Rollout {
                group: g.name.clone(),
                waiting_for: down.clone(),
            });
        }
        if what.repair {
            let count = (now.recent)(&g.name);
            if count >= g.replacements.max as usize {
                return Err(Refusal::Churn {
                    group: g.name.clone(),
                    count,
                    max: g.replacements.max,
                    window: g.replacements.window,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::manifest::{Group, NetworkSpec, PrometheusSpec, Quorum, Replacements};

    /// Why taking `service` down now would break a quorum of one of its groups, if it would
    /// (nothing under way, a repair that is not a rollout).
    fn blocked(cluster: &Cluster, service: &str, live: &dyn Fn(&str) -> bool) -> Option<Block> {
        let snapshot = Snapshot::nothing_under_way(&|_| true, live);
        match judge(cluster, service, Disruption::PLAIN, &snapshot) {
            Err(Refusal::Quorum(b)) => Some(b),
            _ => None,
        }
    }

    /// One cluster `c` with one group `g` of `members` services `m0`, `m1`...
    pub(in crate::reconcile) fn cluster(members: usize, quorum: Quorum) -> Cluster {
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
                live_timeout: Group::LIVE_TIMEOUT,
                max_concurrent: 1,
                replacements: Replacements {
                    max: 2 * members as u32,
                    window: Group::REPLACEMENT_WINDOW,
                },
            }],
            max_concurrent_disruptions: None,
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

    fn judge_with(
        c: &Cluster,
        service: &str,
        what: Disruption,
        down: &[&str],
        taken: &[&str],
        recent: usize,
    ) -> Result<(), Refusal> {
        let taken: BTreeSet<String> = taken.iter().map(|s| s.to_string()).collect();
        let live = |m: &str| !down.contains(&m);
        judge(
            c,
            service,
            what,
            &Snapshot {
                running: &live,
                live: &live,
                taken: &taken,
                stopped: &BTreeSet::new(),
                recent: &|_| recent,
            },
        )
    }

    const REPAIR: Disruption = Disruption {
        rollout: false,
        repair: true,
    };
    const ROLLOUT: Disruption = Disruption {
        rollout: true,
        repair: false,
    };

    #[test]
    fn a_rollout_goes_one_member_at_a_time_and_only_from_a_whole_group() {
        let mut c = cluster(5, Quorum::Majority);
        // Nothing under way, all live: the first member may go.
        assert_eq!(judge_with(&c, "m0", ROLLOUT, &[], &[], 0), Ok(()));
        // m0 under way: the next waits (one at a time, whatever the quorum allows).
        let r = judge_with(&c, "m1", ROLLOUT, &[], &["m0"], 0).unwrap_err();
        assert_eq!(r.rule(), "group-concurrency");
        assert_eq!(
            r.to_string(),
            "g already has m0 under way (at most 1 at a time)"
        );
        // m0 done but not live (it crashed on the new spec): the rollout stops there.
        let r = judge_with(&c, "m1", ROLLOUT, &["m0"], &[], 0).unwrap_err();
        assert_eq!(
            r.to_string(),
            "rolling g out one member at a time: waits until m0 is live"
        );
        // A repair of a live member is not a rollout: with one down, five keep a quorum.
        assert_eq!(judge_with(&c, "m1", REPAIR, &["m0"], &[], 0), Ok(()));
        // A rollout of a member that is down is the repair of a down member: never held.
        assert_eq!(
            judge_with(&c, "m0", ROLLOUT, &["m0", "m1"], &["m2"], 0),
            Ok(())
        );
        // maxConcurrent 2: two under way at once, a third waits.
        c.groups[0].max_concurrent = 2;
        assert_eq!(judge_with(&c, "m1", REPAIR, &[], &["m0"], 0), Ok(()));
        assert!(judge_with(&c, "m2", REPAIR, &[], &["m0", "m1"], 0).is_err());
    }

    #[test]
    fn a_running_member_that_is_not_live_may_go_but_counts_against_the_caps() {
        let c = cluster(3, Quorum::Majority);
        let none = BTreeSet::new();
        let hung = |m: &str| m != "m0" && m != "m1";
        let judged = |service: &str, taken: &BTreeSet<String>, stopped: &BTreeSet<String>| {
            judge(
                &c,
                service,
                REPAIR,
                &Snapshot {
                    running: &|_| true,
                    live: &hung,
                    taken,
                    stopped,
                    recent: &|_| 0,
                },
            )
        };
        // m0 and m1 hang (running, not live): restarting m0 loses nothing live.
        assert_eq!(judged("m0", &none, &none), Ok(()));
        // But m0's restart is under way: m1's waits its turn (maxConcurrent 1).
        let m0: BTreeSet<String> = ["m0".to_string()].into();
        assert_eq!(
            judged("m1", &m0, &none).unwrap_err().rule(),
            "group-concurrency"
        );
        // A rollout stopped at m0 holds its group back, not the cluster cap.
        let mut capped = c.clone();
        capped.groups[0].max_concurrent = 3;
        capped.max_concurrent_disruptions = Some(1);
        let web = judge(
            &capped,
            "web",
            REPAIR,
            &Snapshot {
                running: &|_| true,
                live: &|_| true,
                taken: &m0,
                stopped: &m0,
                recent: &|_| 0,
            },
        );
        assert_eq!(web, Ok(()));
    }

    #[test]
    fn members_under_way_count_as_down_for_the_quorum() {
        let mut c = cluster(3, Quorum::Majority);
        c.groups[0].max_concurrent = 3;
        let r = judge_with(&c, "m1", REPAIR, &[], &["m0"], 0).unwrap_err();
        assert_eq!(r.to_string(), "would leave g with 1 of 3 live; needs 2");
    }

    #[test]
    fn the_cluster_cap_counts_every_service_under_way() {
        let mut c = cluster(3, Quorum::AtLeast(1));
        c.groups[0].max_concurrent = 3;
        c.max_concurrent_disruptions = Some(2);
        assert_eq!(judge_with(&c, "m2", REPAIR, &[], &["web"], 0), Ok(()));
        let r = judge_with(&c, "m2", REPAIR, &[], &["web", "m0"], 0).unwrap_err();
        assert_eq!(r.rule(), "cluster-concurrency");
        assert_eq!(r.group(), "");
        // Not in any group: only the cluster cap applies.
        assert!(judge_with(&c, "web", REPAIR, &[], &["m0", "m1"], 0).is_err());
        assert_eq!(judge_with(&c, "web", REPAIR, &[], &["m0"], 0), Ok(()));
    }

    #[test]
    fn repairs_past_the_replacement_cap_escalate_and_rollouts_do_not_count() {
        let c = cluster(3, Quorum::Majority);
        assert_eq!(judge_with(&c, "m0", REPAIR, &[], &[], 5), Ok(()));
        let r = judge_with(&c, "m0", REPAIR, &[], &[], 6).unwrap_err();
        assert!(r.escalates());
        assert_eq!(
            r.to_string(),
            "g had 6 repairs that took a live member down in the last 10m (replacements.max 6): something keeps breaking the group; a person should look"
        );
        assert_eq!(judge_with(&c, "m0", ROLLOUT, &[], &[], 6), Ok(()));
        // A member already down is repaired whatever the count.
        assert_eq!(judge_with(&c, "m0", REPAIR, &["m0"], &[], 60), Ok(()));
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
