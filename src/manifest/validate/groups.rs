//! `spec.groups`: quorum groups, the members no disruptive action may leave below quorum.

use std::collections::HashSet;

use super::super::raw::{self, Scalar};
use super::super::{Check, Group, Quorum, Replacements, Service};
use super::{Validator, dns_label};

impl Validator<'_, '_> {
    pub(super) fn groups(
        &mut self,
        raw: Vec<raw::Group>,
        services: &[Service],
        checks: &[Check],
    ) -> Vec<Group> {
        let mut out: Vec<Group> = Vec::with_capacity(raw.len());
        let mut names = HashSet::new();
        for (i, g) in raw.into_iter().enumerate() {
            let path = format!("spec.groups[{i}]");
            let mut ok = true;
            if let Err(why) = dns_label(&g.name) {
                self.error(
                    &format!("{path}.name"),
                    format!("invalid group name \"{}\": {why}", g.name),
                );
                ok = false;
            } else if !names.insert(g.name.clone()) {
                self.error(
                    &format!("{path}.name"),
                    format!("duplicate group name \"{}\"", g.name),
                );
                ok = false;
            }
            let members = match (g.members, g.selector) {
                (Some(_), Some(_)) => {
                    self.error(&path, "give members or selector, not both".to_string());
                    ok = false;
                    Vec::new()
                }
                (None, None) => {
                    self.error(
                        &path,
                        "a group needs members (service names) or a selector (labels)".to_string(),
                    );
                    ok = false;
                    Vec::new()
                }
                (Some(list), None) => {
                    let mut seen = HashSet::new();
                    for (j, m) in list.iter().enumerate() {
                        if !services.iter().any(|s| &s.name == m) {
                            self.error(
                                &format!("{path}.members[{j}]"),
                                format!("no service \"{m}\" in this cluster"),
                            );
                            ok = false;
                        } else if !seen.insert(m.clone()) {
                            self.error(
                                &format!("{path}.members[{j}]"),
                                format!("\"{m}\" is listed twice"),
                            );
                            ok = false;
                        }
                    }
                    list
                }
                (None, Some(labels)) => {
                    let hit: Vec<String> = services
                        .iter()
                        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
                        .map(|s| s.name.clone())
                        .collect();
                    if hit.is_empty() {
                        self.error(
                            &format!("{path}.selector"),
                            format!("no service of this cluster has the labels {labels:?}"),
                        );
                        ok = false;
                    }
                    hit
                }
            };
            let quorum = match g.quorum {
                None => Quorum::Majority,
                Some(Scalar::Str(s)) if s == "majority" => Quorum::Majority,
                Some(Scalar::Int(n)) => match n.parse::<usize>() {
                    Ok(n) if n >= 1 && (members.is_empty() || n <= members.len()) => {
                        Quorum::AtLeast(n)
                    }
                    _ => {
                        self.error(
                            &format!("{path}.quorum"),
                            format!(
                                "quorum {n} is not between 1 and the group's {} member(s)",
                                members.len()
                            ),
                        );
                        ok = false;
                        Quorum::Majority
                    }
                },
                Some(other) => {
                    self.error(
                        &format!("{path}.quorum"),
                        format!(
                            "invalid quorum {other:?}: expected majority, or how many members must stay live (e.g. 2)"
                        ),
                    );
                    ok = false;
                    Quorum::Majority
                }
            };
            let (live_checks, live_timeout) = match g.live {
                None => (Vec::new(), None),
                Some(l) => (l.checks, l.timeout),
            };
            let live_timeout = match live_timeout {
                None => Group::LIVE_TIMEOUT,
                Some(raw) => self
                    .positive_duration(&format!("{path}.live.timeout"), Some(raw))
                    .unwrap_or_else(|| {
                        ok = false;
                        Group::LIVE_TIMEOUT
                    }),
            };
            let max_concurrent = match g.max_concurrent {
                None => 1,
                Some(0) => {
                    self.error(
                        &format!("{path}.maxConcurrent"),
                        "maxConcurrent: 0 would never let the controller restart a live member; write 1 or more".into(),
                    );
                    ok = false;
                    1
                }
                Some(n) => n as usize,
            };
            let default_max = 2 * members.len().max(1) as u32;
            let replacements = match g.replacements {
                None => Replacements {
                    max: default_max,
                    window: Group::REPLACEMENT_WINDOW,
                },
                Some(r) => {
                    let window = match r.window {
                        None => Group::REPLACEMENT_WINDOW,
                        Some(raw) => self
                            .positive_duration(&format!("{path}.replacements.window"), Some(raw))
                            .unwrap_or_else(|| {
                                ok = false;
                                Group::REPLACEMENT_WINDOW
                            }),
                    };
                    let max = match r.max {
                        Some(0) => {
                            self.error(
                                &format!("{path}.replacements.max"),
                                "max: 0 would escalate the first repair of a live member; write 1 or more".into(),
                            );
                            ok = false;
                            default_max
                        }
                        Some(n) => n,
                        None => default_max,
                    };
                    Replacements { max, window }
                }
            };
            for (j, c) in live_checks.iter().enumerate() {
                if !checks.iter().any(|k| &k.name == c) {
                    self.error(
                        &format!("{path}.live.checks[{j}]"),
                        format!("no check \"{c}\" in this cluster's spec.checks"),
                    );
                    ok = false;
                }
            }
            if ok {
                out.push(Group {
                    name: g.name,
                    members,
                    quorum,
                    live_checks,
                    live_timeout,
                    max_concurrent,
                    replacements,
                });
            }
        }
        out
    }
}
