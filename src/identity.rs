//! Who this process runs as: its effective user and groups, for messages about a file or a
//! socket it may not open ("not writable by uid 65534"), since the fix (a group, an owner, a
//! `--user`) depends on them. Read from `/proc/self/status`, so no `unsafe` is needed.

use std::fmt;

/// The effective user and groups of this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (without `gid` unless the kernel lists it).
    pub groups: Vec<u32>,
}

impl Identity {
    /// This process's identity; `None` where `/proc` cannot be read (then messages just leave
    /// it out).
    pub fn current() -> Option<Identity> {
        Self::parse(&std::fs::read_to_string("/proc/self/status").ok()?)
    }

    /// From the text of `/proc/PID/status` (`Uid:` and `Gid:` list real, effective, saved and
    /// file-system ids; the effective one decides).
    fn parse(status: &str) -> Option<Identity> {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|rest| {
                    rest.split_whitespace()
                        .filter_map(|n| n.parse::<u32>().ok())
                })
        };
        Some(Identity {
            uid: field("Uid:")?.nth(1)?,
            gid: field("Gid:")?.nth(1)?,
            groups: field("Groups:").map(Iterator::collect).unwrap_or_default(),
        })
    }

    /// Whether `gid` is this process's group or one of its supplementary groups.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// The name of group `gid` in `/etc/group` (`docker`), if it has one here. In a container the
/// host's group names are usually unknown: messages give the number first.
pub fn group_name(gid: u32) -> Option<String> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id: u32 = fields.nth(1)?.parse().ok()?;
        (id == gid && !name.is_empty()).then(|| name.to_string())
    })
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uid {}, gid {}", self.uid, self.gid)?;
        let others: Vec<String> = self
            .groups
            .iter()
            .filter(|g| **g != self.gid)
            .map(u32::to_string)
            .collect();
        if others.is_empty() {
            write!(f, ", no other groups")
        } else {
            write!(f, ", groups {}", others.join(" "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_effective_ids_and_the_groups_are_read() {
        let status = "Name:\toperator\nUid:\t0\t65534\t65534\t65534\nGid:\t0\t65534\t65534\t65534\nGroups:\t27 999 \n";
        let me = Identity::parse(status).unwrap();
        assert_eq!(
            me,
            Identity {
                uid: 65534,
                gid: 65534,
                groups: vec![27, 999]
            }
        );
        assert!(me.in_group(999) && me.in_group(65534) && !me.in_group(0));
        assert_eq!(me.to_string(), "uid 65534, gid 65534, groups 27 999");
    }

    #[test]
    fn no_supplementary_groups_is_said_so() {
        let status = "Uid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\nGroups:\t\n";
        let me = Identity::parse(status).unwrap();
        assert_eq!(me.to_string(), "uid 1000, gid 1000, no other groups");
        assert!(Identity::parse("Name:\tx\n").is_none());
    }

    #[test]
    fn this_process_has_an_identity_and_root_a_group_name() {
        assert!(Identity::current().is_some());
        assert_eq!(group_name(0).as_deref(), Some("root"));
    }
}
