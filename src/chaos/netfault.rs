//! Network faults inside a container's network namespace: packet loss and partitions
//! (iptables), bandwidth limits (tbf) and delay (netem), applied from the controller's side
//! with the host's `iptables`/`tc` under `nsenter`, so the target image needs no tools.
//!
//! Every change is recorded in a [`NetUndo`] before it is made ([`plan`], then
//! [`apply_plan`]; [`apply`] does both), and the record is all [`undo`] needs, from any
//! process, after a crash: the pids, each namespace's inode, the exact rules and qdiscs.
//!
//! # Guarantees
//! - Nothing is done in the host's network namespace: a target or peer whose namespace is
//!   the host's (host networking) is refused before anything is changed; a partition there
//!   would cut the host off.
//! - A namespace is entered only through the very process that was recorded: the record
//!   holds the boot id, the pid, the process's start time and the namespace's inode, and
//!   commands enter the open file of `/proc/PID/ns/net` that was checked against them. A pid
//!   reused by another process (another container, or the host) is never entered. The inode
//!   alone would not do: the kernel hands a freed namespace's inode number to the next
//!   namespace, and a restarted container gets the same `net:[N]` as before.
//! - Every iptables rule carries `-m comment --comment TAG` (TAG starts with
//!   [`TAG_PREFIX`]); undo deletes exactly the recorded rules, and [`leftovers`] finds any
//!   rule of ours by that comment. Every qdisc of ours has a handle in `ca00:`–`caff:`
//!   derived from the tag; undo deletes a root qdisc only while it is still ours.
//! - [`undo`] is idempotent: a rule or qdisc already gone, or a recorded process that no
//!   longer exists (the container was restarted or removed: its namespace went with it),
//!   is success.
//!
//! # Caveats
//! - The pids are host pids (`docker inspect`'s `State.Pid`): the controller must see the
//!   host's `/proc` (not run in a pid namespace of its own) and run as root.
//! - A namespace outlives its recorded process only when something else holds it (a
//!   container started with `--network container:X` whose X lives on); [`undo`] cannot
//!   reach it then, [`leftovers`] through a live process in it can.
//! - Loss and bandwidth leave the loopback device alone: they are faults of the network
//!   between containers, and a health check that talks to `localhost` inside the container
//!   must keep telling the truth about the process.

use std::fmt;
use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::process::{Output, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::chaos::spec::FaultKind;

/// Every tag (iptables comment) starts with this; [`leftovers`] looks for it.
pub const TAG_PREFIX: &str = "operator-chaos";

/// Bound on one `iptables`/`tc`/`ip` call (they normally take milliseconds; iptables may
/// wait for the xtables lock, see [`XTABLES_WAIT_SECS`]).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// `iptables -w SECS`: how long to wait for another iptables in the same namespace.
const XTABLES_WAIT_SECS: &str = "5";

/// Our qdisc handles are `ca00:`–`caff:` (major numbers; `ffff:` is ingress and `0:` the
/// kernel's default, neither is ours).
const HANDLE_BASE: u16 = 0xca00;

/// iptables limits a comment to 256 bytes.
const MAX_TAG_LEN: usize = 255;

/// A container whose network namespace a fault targets.
#[derive(Debug, Clone, PartialEq)]
pub struct NetTarget {
    /// The service name, for messages.
    pub service: String,
    /// The container's main process (host pid).
    pub pid: u32,
    /// Its addresses on every network (a partition's peers drop these).
    pub ips: Vec<IpAddr>,
    /// For a partition: the containers cut off from it.
    pub peers: Vec<NetPeer>,
}

/// A container a partition cuts the target off from.
#[derive(Debug, Clone, PartialEq)]
pub struct NetPeer {
    pub service: String,
    pub pid: u32,
    pub ips: Vec<IpAddr>,
}

/// Everything one network fault changed (or will change), enough to undo it from another
/// process after a crash. Serialize it (the fault ledger) before [`apply_plan`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetUndo {
    /// The comment every rule carries.
    pub tag: String,
    /// The fault's name (`loss`, `partition`, ...).
    pub kind: String,
    /// `/proc/sys/kernel/random/boot_id` when recorded: after a reboot every recorded
    /// namespace is gone.
    pub boot_id: String,
    pub namespaces: Vec<NsChanges>,
}

/// The changes in one network namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NsChanges {
    /// Whose namespace: a service name (or `pid N` for [`leftovers`]).
    pub owner: String,
    /// The process it was entered through.
    pub pid: u32,
    /// That process's start time (clock ticks after boot, `/proc/PID/stat` field 22): with
    /// the pid, it names one process for the whole uptime, so a reused pid is never entered.
    pub start_time: u64,
    /// The namespace's inode (`net:[INODE]`), for messages and as a last check.
    pub netns: u64,
    pub rules: Vec<Rule>,
    pub qdiscs: Vec<RootQdisc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }

    /// The host binary for this family.
    pub fn iptables(self) -> &'static str {
        match self {
            Family::Ipv4 => "iptables",
            Family::Ipv6 => "ip6tables",
        }
    }
}

/// One iptables rule of the filter table: `CHAIN SPEC...` (matches and target, as given
/// to `-I`, `-C` and `-D`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub family: Family,
    pub chain: String,
    pub spec: Vec<String>,
}

/// A root qdisc of ours on one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RootQdisc {
    pub dev: String,
    /// The major number of its handle (`{handle:x}:`).
    pub handle: u16,
    pub shaping: Shaping,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "qdisc", rename_all = "lowercase")]
pub enum Shaping {
    Tbf {
        rate_bits: u64,
        burst_bytes: u64,
        latency_us: u64,
    },
    Netem {
        delay_us: u64,
        jitter_us: Option<u64>,
    },
}

impl Shaping {
    fn kind(&self) -> &'static str {
        match self {
            Shaping::Tbf { .. } => "tbf",
            Shaping::Netem { .. } => "netem",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetFaultError {
    #[error("fault tag {tag:?}: {why}")]
    InvalidTag { tag: String, why: &'static str },
    #[error("{kind} is not a network fault")]
    NotNetwork { kind: &'static str },
    #[error("loss probability {0} is outside (0, 1]")]
    Probability(f64),
    #[error("a partition needs at least one peer (`from`)")]
    NoPeers,
    #[error("{owner} has no IP address to partition by")]
    NoAddress { owner: String },
    #[error(
        "{owner} (pid {pid}) is in the host's network namespace (host networking): a {kind} fault \
         there would hit the host itself; network faults need a container on its own network"
    )]
    HostNamespace {
        owner: String,
        pid: u32,
        kind: String,
    },
    #[error(
        "peer {peer} shares the network namespace of {target} (net:[{netns}]): a partition \
         cannot separate them"
    )]
    SharedNamespace {
        peer: String,
        target: String,
        netns: u64,
    },
    #[error("{owner}: cannot open /proc/{pid}/ns/net (is the container running?): {source}")]
    ProcessGone {
        owner: String,
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error(
        "{owner}: process {pid} (network namespace net:[{netns}]) is gone since the fault was \
         planned"
    )]
    NamespaceGone { owner: String, pid: u32, netns: u64 },
    #[error("cannot tell the host's network namespace: {0}")]
    HostNamespaceUnknown(#[source] io::Error),
    #[error("cannot read {path}: {source}")]
    Proc {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    NetemUnavailable(String),
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("{owner} net:[{netns}]: `{command}` did not finish within {timeout:?}")]
    Timeout {
        owner: String,
        netns: u64,
        command: String,
        timeout: Duration,
    },
    #[error("{owner} net:[{netns}]: `{command}` failed ({status}): {stderr}")]
    Command {
        owner: String,
        netns: u64,
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{owner} net:[{netns}]: cannot read the output of `{command}`: {detail}")]
    Output {
        owner: String,
        netns: u64,
        command: String,
        detail: String,
    },
    #[error(
        "{owner} net:[{netns}] dev {dev}: already has a root qdisc ({found}); refusing to replace \
         shaping that is not this fault's"
    )]
    Busy {
        owner: String,
        netns: u64,
        dev: String,
        found: String,
    },
    #[error(
        "{owner} net:[{netns}] dev {dev}: the root qdisc is now {found}, not the {ours} this fault \
         added; something else replaced it, left as it is"
    )]
    NotOurs {
        owner: String,
        netns: u64,
        dev: String,
        found: String,
        ours: String,
    },
    #[error("{}", join(.0))]
    Incomplete(Vec<NetFaultError>),
    #[error("{error}; undoing what was applied also failed: {rollback}")]
    RollbackFailed {
        error: Box<NetFaultError>,
        rollback: Box<NetFaultError>,
    },
}

fn join(errors: &[NetFaultError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl NetFaultError {
    /// After a failed [`undo`]: may some of the fault still be in place (retry later)?
    /// False when the only problems were qdiscs that something else replaced: the fault is
    /// gone and retrying would change nothing.
    pub fn fault_remains(&self) -> bool {
        match self {
            NetFaultError::NotOurs { .. } => false,
            NetFaultError::Incomplete(errors) => errors.iter().any(NetFaultError::fault_remains),
            _ => true,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Pure parts: tags, handles, rules, command lines, parsing tool output.

/// Checks that `tag` can be an iptables comment we can find again: starts with
/// [`TAG_PREFIX`], at most 255 bytes, only `[A-Za-z0-9._:-]` (no quoting in `iptables -S`).
pub fn validate_tag(tag: &str) -> Result<(), NetFaultError> {
    let bad = |why| {
        Err(NetFaultError::InvalidTag {
            tag: tag.to_string(),
            why,
        })
    };
    if !tag.starts_with(TAG_PREFIX) {
        return bad("must start with `operator-chaos` (cleanup finds rules by it)");
    }
    if tag.len() > MAX_TAG_LEN {
        return bad("longer than an iptables comment may be (255 bytes)");
    }
    if !tag
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        return bad("only letters, digits and `._:-` are allowed");
    }
    Ok(())
}

/// The qdisc handle (major) for `tag`: `ca00`–`caff`, FNV-1a of the tag. Two faults on the
/// same device are refused anyway ([`NetFaultError::Busy`]), so a collision only weakens
/// the "still ours" check, never mixes faults up.
pub fn handle_for(tag: &str) -> u16 {
    let mut h: u32 = 0x811c_9dc5;
    for b in tag.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    HANDLE_BASE | (h & 0xff) as u16
}

fn is_our_handle(handle: u16) -> bool {
    handle & 0xff00 == HANDLE_BASE
}

fn comment(tag: &str) -> [String; 4] {
    [
        "-m".into(),
        "comment".into(),
        "--comment".into(),
        tag.into(),
    ]
}

/// Loss: a random share `probability` of packets dropped in both directions, loopback
/// excepted, for each family.
pub fn loss_rules(probability: f64, tag: &str, families: &[Family]) -> Vec<Rule> {
    let mut rules = Vec::new();
    for &family in families {
        for (chain, dir) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
            let mut spec: Vec<String> = vec!["!".into(), dir.into(), "lo".into()];
            spec.extend([
                "-m".into(),
                "statistic".into(),
                "--mode".into(),
                "random".into(),
                "--probability".into(),
                probability.to_string(),
            ]);
            spec.extend(comment(tag));
            spec.extend(["-j".into(), "DROP".into()]);
            rules.push(Rule {
                family,
                chain: chain.into(),
                spec,
            });
        }
    }
    rules
}

/// Partition, one side: drop everything from and to each of `others` (addresses of the
/// other side) in this namespace.
pub fn partition_rules(others: &[IpAddr], tag: &str) -> Vec<Rule> {
    let mut rules = Vec::new();
    for ip in others {
        for (chain, dir) in [("INPUT", "-s"), ("OUTPUT", "-d")] {
            let mut spec: Vec<String> = vec![dir.into(), ip.to_string()];
            spec.extend(comment(tag));
            spec.extend(["-j".into(), "DROP".into()]);
            rules.push(Rule {
                family: Family::of(ip),
                chain: chain.into(),
                spec,
            });
        }
    }
    rules
}

/// What to do with a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleOp {
    /// `-I CHAIN 1`: first in the chain, so an earlier ACCEPT cannot bypass it.
    Insert,
    Check,
    Delete,
}

/// The `iptables` arguments for `op` on `rule` (the program is `rule.family.iptables()`).
pub fn rule_args(op: RuleOp, rule: &Rule) -> Vec<String> {
    let mut args: Vec<String> = vec!["-w".into(), XTABLES_WAIT_SECS.into()];
    match op {
        RuleOp::Insert => args.extend(["-I".into(), rule.chain.clone(), "1".into()]),
        RuleOp::Check => args.extend(["-C".into(), rule.chain.clone()]),
        RuleOp::Delete => args.extend(["-D".into(), rule.chain.clone()]),
    }
    args.extend(rule.spec.iter().cloned());
    args
}

/// `tc qdisc replace dev DEV root handle H: ...` for `q`.
pub fn qdisc_replace_args(q: &RootQdisc) -> Vec<String> {
    let mut args: Vec<String> = ["qdisc", "replace", "dev", &q.dev, "root", "handle"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(format!("{:x}:", q.handle));
    match &q.shaping {
        Shaping::Tbf {
            rate_bits,
            burst_bytes,
            latency_us,
        } => {
            // tc: `bit` = bits per second; a bare size is bytes.
            args.extend([
                "tbf".into(),
                "rate".into(),
                format!("{rate_bits}bit"),
                "burst".into(),
                burst_bytes.to_string(),
                "latency".into(),
                format!("{latency_us}us"),
            ]);
        }
        Shaping::Netem {
            delay_us,
            jitter_us,
        } => {
            args.extend(["netem".into(), "delay".into(), format!("{delay_us}us")]);
            if let Some(j) = jitter_us {
                args.push(format!("{j}us"));
            }
        }
    }
    args
}

/// `tc qdisc del dev DEV root`.
pub fn qdisc_delete_args(dev: &str) -> Vec<String> {
    ["qdisc", "del", "dev", dev, "root"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// `tc -j qdisc show dev DEV`.
fn qdisc_show_args(dev: &str) -> Vec<String> {
    ["-j", "qdisc", "show", "dev", dev]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// A device's root qdisc as `tc -j qdisc show dev DEV` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedQdisc {
    pub kind: String,
    /// `None` for the kernel's default (`0:`).
    pub handle: Option<u16>,
    pub options: serde_json::Value,
}

impl fmt::Display for ObservedQdisc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.handle {
            Some(h) => write!(f, "{} {h:x}: {}", self.kind, self.options),
            None => write!(f, "{} 0: (the kernel's default)", self.kind),
        }
    }
}

/// The root qdisc in `tc -j qdisc show dev DEV` output (`None` when none is listed).
pub fn parse_root_qdisc(json: &str) -> Result<Option<ObservedQdisc>, String> {
    let v: serde_json::Value = serde_json::from_str(json.trim()).map_err(|e| e.to_string())?;
    let list = v.as_array().ok_or("not a JSON list")?;
    let Some(root) = list.iter().find(|q| q["root"].as_bool() == Some(true)) else {
        return Ok(None);
    };
    let kind = root["kind"].as_str().ok_or("a root qdisc without `kind`")?;
    let handle = root["handle"]
        .as_str()
        .ok_or("a root qdisc without `handle`")?;
    let major = handle.split(':').next().unwrap_or_default();
    let major = u16::from_str_radix(major, 16).map_err(|_| format!("handle {handle:?}"))?;
    Ok(Some(ObservedQdisc {
        kind: kind.to_string(),
        handle: (major != 0).then_some(major),
        options: root["options"].clone(),
    }))
}

/// Whose is a device's root qdisc, compared with what a fault recorded.
#[derive(Debug, Clone, PartialEq)]
pub enum Ownership {
    /// Ours: same kind, handle and (for tbf) rate.
    Ours,
    /// The kernel's default (no shaping): nothing to undo.
    Default,
    /// Someone else's (or another fault's): leave it.
    Other(String),
}

/// Compares the observed root qdisc with ours. tbf's rate is checked too (tc reports
/// bytes/s, rounded by its tick arithmetic: within 1% counts); netem's options are not
/// (their JSON differs between iproute2 versions), the tag-derived handle decides.
pub fn ownership(observed: Option<&ObservedQdisc>, ours: &RootQdisc) -> Ownership {
    let Some(q) = observed else {
        return Ownership::Default;
    };
    let Some(handle) = q.handle else {
        return Ownership::Default;
    };
    if handle != ours.handle || q.kind != ours.shaping.kind() {
        return Ownership::Other(q.to_string());
    }
    if let Shaping::Tbf { rate_bits, .. } = ours.shaping {
        let seen_bits = q.options["rate"].as_u64().map(|b| b.saturating_mul(8));
        let close = seen_bits.is_some_and(|s| s.abs_diff(rate_bits) <= rate_bits / 100 + 8);
        if !close {
            return Ownership::Other(q.to_string());
        }
    }
    Ownership::Ours
}

/// A qdisc of ours found by [`leftovers`], recorded so that [`ownership`] says `Ours`.
fn leftover_qdisc(dev: &str, q: &ObservedQdisc) -> Option<RootQdisc> {
    let handle = q.handle.filter(|h| is_our_handle(*h))?;
    let shaping = match q.kind.as_str() {
        "tbf" => Shaping::Tbf {
            rate_bits: q.options["rate"].as_u64()?.saturating_mul(8),
            burst_bytes: q.options["burst"].as_u64().unwrap_or(0),
            latency_us: q.options["lat"].as_u64().unwrap_or(0),
        },
        "netem" => Shaping::Netem {
            delay_us: 0,
            jitter_us: None,
        },
        _ => return None,
    };
    Some(RootQdisc {
        dev: dev.to_string(),
        handle,
        shaping,
    })
}

/// A network device of `ip -j link show`.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    pub name: String,
    pub loopback: bool,
    pub up: bool,
}

/// The devices in `ip -j link show` output.
pub fn parse_links(json: &str) -> Result<Vec<Link>, String> {
    let v: serde_json::Value = serde_json::from_str(json.trim()).map_err(|e| e.to_string())?;
    let list = v.as_array().ok_or("not a JSON list")?;
    list.iter()
        .map(|l| {
            let name = l["ifname"].as_str().ok_or("a device without `ifname`")?;
            let flags: Vec<&str> = l["flags"]
                .as_array()
                .map(|f| f.iter().filter_map(|x| x.as_str()).collect())
                .unwrap_or_default();
            Ok(Link {
                name: name.to_string(),
                loopback: flags.contains(&"LOOPBACK") || l["link_type"] == "loopback",
                up: flags.contains(&"UP"),
            })
        })
        .collect()
}

/// The rules in `iptables -S` output whose comment starts with `prefix`.
pub fn parse_tagged_rules(family: Family, listing: &str, prefix: &str) -> Vec<Rule> {
    listing
        .lines()
        .filter_map(|line| {
            let words = shlex::split(line)?;
            let [op, chain, spec @ ..] = words.as_slice() else {
                return None;
            };
            let tagged = spec
                .windows(2)
                .any(|w| w[0] == "--comment" && w[1].starts_with(prefix));
            (op == "-A" && tagged).then(|| Rule {
                family,
                chain: chain.clone(),
                spec: spec.to_vec(),
            })
        })
        .collect()
}

/// The sentence for a kernel without netem, or `Ok` when the probe's `tc` succeeded.
pub fn netem_verdict(succeeded: bool, stderr: &str) -> Result<(), String> {
    if succeeded {
        return Ok(());
    }
    let stderr = stderr.trim();
    if stderr.contains("qdisc kind is unknown") {
        Err(
            "this kernel has no netem queueing discipline (sch_netem): delay and jitter faults \
             cannot be applied here; load the module (`modprobe sch_netem`) or use a kernel built \
             with CONFIG_NET_SCH_NETEM"
                .to_string(),
        )
    } else {
        Err(format!(
            "cannot tell whether this kernel has netem: `unshare -n tc qdisc add dev lo root netem \
             delay 1ms` failed: {stderr}"
        ))
    }
}

// ---------------------------------------------------------------------------------------
// Namespaces.

/// An open network namespace: holding the file pins it, and commands enter it through
/// `/proc/OUR_PID/fd/N`, so what was checked is what is entered.
struct Netns {
    file: File,
    inode: u64,
    /// The process it was opened through, and that process's start time.
    pid: u32,
    start_time: u64,
}

impl Netns {
    /// Opens the namespace of `pid`; the start time is read after the file is open, so the
    /// file belongs to the process that start time names (a process alive now with the
    /// recorded start time was alive, under that pid, when the file was opened).
    fn open(pid: u32) -> io::Result<Netns> {
        let file = File::open(format!("/proc/{pid}/ns/net"))?;
        let inode = file.metadata()?.ino();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let start_time = parse_start_time(&stat).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("/proc/{pid}/stat: {stat:?}"),
            )
        })?;
        Ok(Netns {
            file,
            inode,
            pid,
            start_time,
        })
    }

    /// The recorded namespace, through the recorded process; `None` when that process is
    /// gone (or another one has its pid, or it moved to another namespace).
    fn open_recorded(changes: &NsChanges) -> Option<Netns> {
        let ns = Netns::open(changes.pid).ok()?;
        (ns.start_time == changes.start_time && ns.inode == changes.netns).then_some(ns)
    }

    fn path(&self) -> String {
        format!("/proc/{}/fd/{}", std::process::id(), self.file.as_raw_fd())
    }
}

/// This boot's id: recorded namespaces of another boot are all gone.
fn boot_id() -> Result<String, NetFaultError> {
    const PATH: &str = "/proc/sys/kernel/random/boot_id";
    std::fs::read_to_string(PATH)
        .map(|s| s.trim().to_string())
        .map_err(|source| NetFaultError::Proc { path: PATH, source })
}

/// Field 22 (`starttime`) of `/proc/PID/stat`. The command name (field 2) is in
/// parentheses and may hold spaces and parentheses itself, so fields are counted after the
/// last `)`.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts at field 3 (state); starttime is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The inodes of the host's network namespace (pid 1's) and of our own: faults are never
/// applied in either.
fn host_netns() -> Result<Vec<u64>, NetFaultError> {
    let mut inodes = Vec::new();
    for path in ["/proc/1/ns/net", "/proc/self/ns/net"] {
        match std::fs::metadata(path) {
            Ok(m) => inodes.push(m.ino()),
            Err(e) if inodes.is_empty() && path == "/proc/self/ns/net" => {
                return Err(NetFaultError::HostNamespaceUnknown(e));
            }
            Err(_) => {}
        }
    }
    Ok(inodes)
}

fn open_checked(owner: &str, pid: u32, kind: &str, host: &[u64]) -> Result<Netns, NetFaultError> {
    let ns = Netns::open(pid).map_err(|source| NetFaultError::ProcessGone {
        owner: owner.to_string(),
        pid,
        source,
    })?;
    if host.contains(&ns.inode) {
        return Err(NetFaultError::HostNamespace {
            owner: owner.to_string(),
            pid,
            kind: kind.to_string(),
        });
    }
    Ok(ns)
}

/// Runs `program args` inside `ns` (bounded by [`COMMAND_TIMEOUT`]).
async fn run_in(
    ns: &Netns,
    owner: &str,
    program: &str,
    args: &[String],
) -> Result<Output, NetFaultError> {
    let command = format!("{program} {}", args.join(" "));
    let child = tokio::process::Command::new("nsenter")
        .arg(format!("--net={}", ns.path()))
        .arg("--")
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a Ctrl-C at the runner's terminal must not kill an undo
        // half way (the runner undoes on Ctrl-C).
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| NetFaultError::Spawn {
            command: format!("nsenter ... {command}"),
            source,
        })?;
    match tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(source)) => Err(NetFaultError::Spawn { command, source }),
        Err(_) => Err(NetFaultError::Timeout {
            owner: owner.to_string(),
            netns: ns.inode,
            command,
            timeout: COMMAND_TIMEOUT,
        }),
    }
}

/// [`run_in`], failing unless the command exits 0; returns stdout.
async fn run_ok(
    ns: &Netns,
    owner: &str,
    program: &str,
    args: &[String],
) -> Result<String, NetFaultError> {
    let out = run_in(ns, owner, program, args).await?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(command_failed(ns, owner, program, args, &out))
    }
}

fn command_failed(
    ns: &Netns,
    owner: &str,
    program: &str,
    args: &[String],
    out: &Output,
) -> NetFaultError {
    NetFaultError::Command {
        owner: owner.to_string(),
        netns: ns.inode,
        command: format!("{program} {}", args.join(" ")),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    }
}

async fn links(ns: &Netns, owner: &str) -> Result<Vec<Link>, NetFaultError> {
    let args: Vec<String> = vec!["-j".into(), "link".into(), "show".into()];
    let json = run_ok(ns, owner, "ip", &args).await?;
    parse_links(&json).map_err(|detail| NetFaultError::Output {
        owner: owner.to_string(),
        netns: ns.inode,
        command: "ip -j link show".into(),
        detail,
    })
}

/// The root qdisc of `dev`; `Ok(None)` also when the device is gone.
async fn root_qdisc(
    ns: &Netns,
    owner: &str,
    dev: &str,
) -> Result<Option<ObservedQdisc>, NetFaultError> {
    let args = qdisc_show_args(dev);
    let out = run_in(ns, owner, "tc", &args).await?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("Cannot find device") {
            return Ok(None);
        }
        return Err(command_failed(ns, owner, "tc", &args, &out));
    }
    parse_root_qdisc(&String::from_utf8_lossy(&out.stdout)).map_err(|detail| {
        NetFaultError::Output {
            owner: owner.to_string(),
            netns: ns.inode,
            command: format!("tc {}", args.join(" ")),
            detail,
        }
    })
}

/// Is `rule` in the namespace? (`iptables -C`: 0 yes, 1 no, anything else an error.)
async fn rule_present(ns: &Netns, owner: &str, rule: &Rule) -> Result<bool, NetFaultError> {
    let program = rule.family.iptables();
    let args = rule_args(RuleOp::Check, rule);
    let out = run_in(ns, owner, program, &args).await?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(command_failed(ns, owner, program, &args, &out)),
    }
}

// ---------------------------------------------------------------------------------------
// The public operations.

/// Whether the kernel has the netem qdisc (delay and jitter need it): `Err` with a plain
/// sentence when it does not. Probes in a throwaway network namespace (`unshare -n`, its
/// `lo` only), so no real interface is touched; bounded by [`COMMAND_TIMEOUT`].
pub fn netem_available() -> Result<(), String> {
    let mut child = std::process::Command::new("unshare")
        .args([
            "-n", "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!("cannot tell whether this kernel has netem: cannot run `unshare`: {e}")
        })?;
    let deadline = std::time::Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "cannot tell whether this kernel has netem: the probe did not finish within \
                     {COMMAND_TIMEOUT:?}"
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("cannot tell whether this kernel has netem: {e}")),
        }
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use std::io::Read;
        let _ = pipe.read_to_string(&mut stderr);
    }
    netem_verdict(status.success(), &stderr)
}

/// Plans and applies `fault` to `target`: [`plan`], then [`apply_plan`]. Prefer the two
/// steps when the record must be stored before anything changes (the fault ledger).
pub async fn apply(
    target: &NetTarget,
    fault: &FaultKind,
    tag: &str,
) -> Result<NetUndo, NetFaultError> {
    let plan = plan(target, fault, tag).await?;
    apply_plan(&plan).await?;
    Ok(plan)
}

/// Works out every rule and qdisc `fault` will add, changing nothing: checks the tag and
/// the parameters, opens the namespaces (refusing the host's), lists the devices to shape.
/// Delay is refused here when the kernel lacks netem ([`netem_available`]'s sentence).
pub async fn plan(
    target: &NetTarget,
    fault: &FaultKind,
    tag: &str,
) -> Result<NetUndo, NetFaultError> {
    validate_tag(tag)?;
    let kind = fault.name();
    if !fault.is_network() {
        return Err(NetFaultError::NotNetwork { kind });
    }
    if let FaultKind::Loss { probability } = fault
        && !(*probability > 0.0 && *probability <= 1.0)
    {
        return Err(NetFaultError::Probability(*probability));
    }
    if let FaultKind::Delay { .. } = fault {
        // Before anything else: on a kernel without netem this is the one message to give.
        tokio::task::spawn_blocking(netem_available)
            .await
            .unwrap_or_else(|e| Err(format!("the netem probe failed: {e}")))
            .map_err(NetFaultError::NetemUnavailable)?;
    }
    let host = host_netns()?;
    let owner = target.service.as_str();
    let ns = open_checked(owner, target.pid, kind, &host)?;
    let changes = |rules, qdiscs| NsChanges {
        owner: owner.to_string(),
        pid: target.pid,
        start_time: ns.start_time,
        netns: ns.inode,
        rules,
        qdiscs,
    };
    let mut namespaces = Vec::new();
    match fault {
        FaultKind::Loss { probability } => {
            let mut families = vec![Family::Ipv4];
            if target.ips.iter().any(IpAddr::is_ipv6) {
                families.push(Family::Ipv6);
            }
            namespaces.push(changes(loss_rules(*probability, tag, &families), vec![]));
        }
        FaultKind::Bandwidth {
            rate_bits,
            burst_bytes,
            latency,
        } => {
            let shaping = Shaping::Tbf {
                rate_bits: *rate_bits,
                burst_bytes: *burst_bytes,
                latency_us: latency.as_micros() as u64,
            };
            let qdiscs = shaped_devices(&ns, owner, tag, shaping).await?;
            namespaces.push(changes(vec![], qdiscs));
        }
        FaultKind::Delay { delay, jitter } => {
            let shaping = Shaping::Netem {
                delay_us: delay.as_micros() as u64,
                jitter_us: jitter.map(|j| j.as_micros() as u64),
            };
            let qdiscs = shaped_devices(&ns, owner, tag, shaping).await?;
            namespaces.push(changes(vec![], qdiscs));
        }
        FaultKind::Partition { .. } => {
            if target.peers.is_empty() {
                return Err(NetFaultError::NoPeers);
            }
            if target.ips.is_empty() {
                return Err(NetFaultError::NoAddress {
                    owner: owner.to_string(),
                });
            }
            let peer_ips: Vec<IpAddr> = target.peers.iter().flat_map(|p| p.ips.clone()).collect();
            namespaces.push(changes(partition_rules(&peer_ips, tag), vec![]));
            for peer in &target.peers {
                if peer.ips.is_empty() {
                    return Err(NetFaultError::NoAddress {
                        owner: peer.service.clone(),
                    });
                }
                let peer_ns = open_checked(&peer.service, peer.pid, kind, &host)?;
                if peer_ns.inode == ns.inode {
                    return Err(NetFaultError::SharedNamespace {
                        peer: peer.service.clone(),
                        target: owner.to_string(),
                        netns: ns.inode,
                    });
                }
                namespaces.push(NsChanges {
                    owner: peer.service.clone(),
                    pid: peer.pid,
                    start_time: peer_ns.start_time,
                    netns: peer_ns.inode,
                    rules: partition_rules(&target.ips, tag),
                    qdiscs: vec![],
                });
            }
        }
        other => return Err(NetFaultError::NotNetwork { kind: other.name() }),
    }
    Ok(NetUndo {
        tag: tag.to_string(),
        kind: kind.to_string(),
        boot_id: boot_id()?,
        namespaces,
    })
}

/// Every device of the namespace that carries traffic (up, not loopback), with `shaping`.
async fn shaped_devices(
    ns: &Netns,
    owner: &str,
    tag: &str,
    shaping: Shaping,
) -> Result<Vec<RootQdisc>, NetFaultError> {
    let handle = handle_for(tag);
    Ok(links(ns, owner)
        .await?
        .into_iter()
        .filter(|l| l.up && !l.loopback)
        .map(|l| RootQdisc {
            dev: l.name,
            handle,
            shaping: shaping.clone(),
        })
        .collect())
}

/// Makes the changes `plan` lists. Idempotent (a rule already there is not added twice; our
/// qdisc is replaced by itself). Refuses a device whose root qdisc is someone else's. On
/// failure, undoes what it did before returning the error.
pub async fn apply_plan(plan: &NetUndo) -> Result<(), NetFaultError> {
    validate_tag(&plan.tag)?;
    let result = apply_all(plan).await;
    if let Err(error) = result {
        return match undo(plan).await {
            Ok(()) => Err(error),
            // A device whose qdisc is someone else's (the usual reason to stop: `Busy`)
            // holds nothing of ours: not a failed rollback.
            Err(rollback) if !rollback.fault_remains() => Err(error),
            Err(rollback) => Err(NetFaultError::RollbackFailed {
                error: Box::new(error),
                rollback: Box::new(rollback),
            }),
        };
    }
    Ok(())
}

async fn apply_all(plan: &NetUndo) -> Result<(), NetFaultError> {
    let host = host_netns()?;
    let same_boot = plan.boot_id == boot_id()?;
    for changes in &plan.namespaces {
        let owner = changes.owner.as_str();
        let ns = same_boot
            .then(|| Netns::open_recorded(changes))
            .flatten()
            .ok_or_else(|| NetFaultError::NamespaceGone {
                owner: owner.to_string(),
                pid: changes.pid,
                netns: changes.netns,
            })?;
        if host.contains(&ns.inode) {
            return Err(NetFaultError::HostNamespace {
                owner: owner.to_string(),
                pid: ns.pid,
                kind: plan.kind.clone(),
            });
        }
        for q in &changes.qdiscs {
            let observed = root_qdisc(&ns, owner, &q.dev).await?;
            if let Ownership::Other(found) = ownership(observed.as_ref(), q) {
                return Err(NetFaultError::Busy {
                    owner: owner.to_string(),
                    netns: ns.inode,
                    dev: q.dev.clone(),
                    found,
                });
            }
            let args = qdisc_replace_args(q);
            let out = run_in(&ns, owner, "tc", &args).await?;
            if !out.status.success() {
                let stderr = String::from_utf8_lossy(&out.stderr);
                if stderr.contains("qdisc kind is unknown") {
                    return Err(NetFaultError::NetemUnavailable(
                        netem_verdict(false, &stderr).err().unwrap_or_default(),
                    ));
                }
                return Err(command_failed(&ns, owner, "tc", &args, &out));
            }
        }
        for rule in &changes.rules {
            if !rule_present(&ns, owner, rule).await? {
                run_ok(
                    &ns,
                    owner,
                    rule.family.iptables(),
                    &rule_args(RuleOp::Insert, rule),
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// Undoes what `undo` records: deletes each recorded rule still present and each recorded
/// root qdisc still ours. Idempotent; a namespace whose recorded process is gone is
/// skipped (its rules and qdiscs went with it; a pid now used by another process is never
/// entered). Goes through every namespace even when one fails;
/// the error then lists each problem ([`NetFaultError::fault_remains`] tells whether a
/// retry can help).
pub async fn undo(undo: &NetUndo) -> Result<(), NetFaultError> {
    let host = host_netns()?;
    if undo.boot_id != boot_id()? {
        return Ok(());
    }
    let mut errors = Vec::new();
    for changes in &undo.namespaces {
        let Some(ns) = Netns::open_recorded(changes) else {
            continue;
        };
        if host.contains(&ns.inode) {
            // Never recorded by `plan`; a forged or corrupted record must not reach the host.
            errors.push(NetFaultError::HostNamespace {
                owner: changes.owner.clone(),
                pid: ns.pid,
                kind: undo.kind.clone(),
            });
            continue;
        }
        undo_in(&ns, changes, &mut errors).await;
    }
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(NetFaultError::Incomplete(errors)),
    }
}

async fn undo_in(ns: &Netns, changes: &NsChanges, errors: &mut Vec<NetFaultError>) {
    let owner = changes.owner.as_str();
    for rule in &changes.rules {
        let result = async {
            if rule_present(ns, owner, rule).await? {
                run_ok(
                    ns,
                    owner,
                    rule.family.iptables(),
                    &rule_args(RuleOp::Delete, rule),
                )
                .await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            errors.push(e);
        }
    }
    for q in &changes.qdiscs {
        let result = async {
            match ownership(root_qdisc(ns, owner, &q.dev).await?.as_ref(), q) {
                Ownership::Default => Ok(()),
                Ownership::Ours => run_ok(ns, owner, "tc", &qdisc_delete_args(&q.dev))
                    .await
                    .map(drop),
                Ownership::Other(found) => Err(NetFaultError::NotOurs {
                    owner: owner.to_string(),
                    netns: ns.inode,
                    dev: q.dev.clone(),
                    found,
                    ours: format!("{} {:x}:", q.shaping.kind(), q.handle),
                }),
            }
        }
        .await;
        if let Err(e) = result {
            errors.push(e);
        }
    }
}

/// Every rule tagged [`TAG_PREFIX`]`*` and every root qdisc with one of our handles in the
/// network namespace of `pid`, as a record [`undo`] removes. Empty for the host's
/// namespace (nothing of ours can be there: [`plan`] refuses it). For cleanup after a
/// crash whose record was lost, and for tests.
pub async fn leftovers(pid: u32) -> Result<NetUndo, NetFaultError> {
    let owner = format!("pid {pid}");
    let host = host_netns()?;
    let ns = Netns::open(pid).map_err(|source| NetFaultError::ProcessGone {
        owner: owner.clone(),
        pid,
        source,
    })?;
    let mut changes = NsChanges {
        owner: owner.clone(),
        pid,
        start_time: ns.start_time,
        netns: ns.inode,
        rules: vec![],
        qdiscs: vec![],
    };
    if !host.contains(&ns.inode) {
        for family in [Family::Ipv4, Family::Ipv6] {
            let args: Vec<String> = vec!["-w".into(), XTABLES_WAIT_SECS.into(), "-S".into()];
            match run_ok(&ns, &owner, family.iptables(), &args).await {
                Ok(listing) => {
                    changes
                        .rules
                        .extend(parse_tagged_rules(family, &listing, TAG_PREFIX));
                }
                // A kernel without IPv6 tables: nothing of ours can be there either
                // (`apply` would have failed on them).
                Err(NetFaultError::Command { .. }) if family == Family::Ipv6 => {}
                Err(e) => return Err(e),
            }
        }
        for link in links(&ns, &owner)
            .await?
            .into_iter()
            .filter(|l| !l.loopback)
        {
            if let Some(q) = root_qdisc(&ns, &owner, &link.name).await?
                && let Some(ours) = leftover_qdisc(&link.name, &q)
            {
                changes.qdiscs.push(ours);
            }
        }
    }
    Ok(NetUndo {
        tag: TAG_PREFIX.to_string(),
        kind: "leftovers".to_string(),
        boot_id: boot_id()?,
        namespaces: vec![changes],
    })
}

impl NetUndo {
    /// True when it records no rule and no qdisc.
    pub fn is_empty(&self) -> bool {
        self.namespaces
            .iter()
            .all(|n| n.rules.is_empty() && n.qdiscs.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: &str = "operator-chaos-run1-f0";

    fn strs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }

    #[test]
    fn tags_must_carry_the_prefix_and_be_plain() {
        assert!(validate_tag(TAG).is_ok());
        assert!(validate_tag("chaos-1").is_err());
        assert!(validate_tag("operator-chaos x").is_err());
        assert!(validate_tag("operator-chaos-\"x\"").is_err());
        assert!(validate_tag(&format!("operator-chaos-{}", "a".repeat(300))).is_err());
        let e = validate_tag("chaos-1").unwrap_err().to_string();
        assert!(e.contains("chaos-1") && e.contains("operator-chaos"), "{e}");
    }

    #[test]
    fn handles_are_in_our_range_and_stable() {
        for tag in [
            TAG,
            "operator-chaos-a",
            "operator-chaos-b",
            "operator-chaos",
        ] {
            let h = handle_for(tag);
            assert!(is_our_handle(h), "{h:x}");
            assert_eq!(h, handle_for(tag));
        }
        assert_ne!(
            handle_for("operator-chaos-a"),
            handle_for("operator-chaos-b")
        );
        assert!(!is_our_handle(0) && !is_our_handle(0xffff) && !is_our_handle(0x8001));
    }

    #[test]
    fn loss_drops_both_directions_but_not_loopback() {
        let rules = loss_rules(0.25, TAG, &[Family::Ipv4]);
        assert_eq!(rules.len(), 2);
        assert_eq!(
            strs(&rule_args(RuleOp::Insert, &rules[0])),
            [
                "-w",
                "5",
                "-I",
                "INPUT",
                "1",
                "!",
                "-i",
                "lo",
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                "0.25",
                "-m",
                "comment",
                "--comment",
                TAG,
                "-j",
                "DROP"
            ]
        );
        assert_eq!(
            strs(&rule_args(RuleOp::Delete, &rules[1])),
            [
                "-w",
                "5",
                "-D",
                "OUTPUT",
                "!",
                "-o",
                "lo",
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                "0.25",
                "-m",
                "comment",
                "--comment",
                TAG,
                "-j",
                "DROP"
            ]
        );
        assert_eq!(rule_args(RuleOp::Check, &rules[1])[2], "-C");
        let both = loss_rules(1.0, TAG, &[Family::Ipv4, Family::Ipv6]);
        assert_eq!(both.len(), 4);
        assert_eq!(both[3].family.iptables(), "ip6tables");
        assert!(both[3].spec.contains(&"1".to_string()));
    }

    #[test]
    fn partition_rules_drop_from_and_to_each_address_in_its_family() {
        let ips: Vec<IpAddr> = vec!["172.20.0.3".parse().unwrap(), "fd00::3".parse().unwrap()];
        let rules = partition_rules(&ips, TAG);
        assert_eq!(rules.len(), 4);
        assert_eq!(rules[0].chain, "INPUT");
        assert_eq!(
            strs(&rules[0].spec),
            [
                "-s",
                "172.20.0.3",
                "-m",
                "comment",
                "--comment",
                TAG,
                "-j",
                "DROP"
            ]
        );
        assert_eq!(rules[1].chain, "OUTPUT");
        assert_eq!(strs(&rules[1].spec)[..2], ["-d", "172.20.0.3"]);
        assert_eq!(rules[0].family, Family::Ipv4);
        assert_eq!(rules[2].family, Family::Ipv6);
        assert_eq!(strs(&rules[3].spec)[..2], ["-d", "fd00::3"]);
    }

    #[test]
    fn qdisc_command_lines() {
        let tbf = RootQdisc {
            dev: "eth0".into(),
            handle: 0xca12,
            shaping: Shaping::Tbf {
                rate_bits: 1_000_000,
                burst_bytes: 32768,
                latency_us: 400_000,
            },
        };
        assert_eq!(
            qdisc_replace_args(&tbf).join(" "),
            "qdisc replace dev eth0 root handle ca12: tbf rate 1000000bit burst 32768 latency 400000us"
        );
        let netem = RootQdisc {
            dev: "eth1".into(),
            handle: 0xca01,
            shaping: Shaping::Netem {
                delay_us: 100_000,
                jitter_us: Some(10_000),
            },
        };
        assert_eq!(
            qdisc_replace_args(&netem).join(" "),
            "qdisc replace dev eth1 root handle ca01: netem delay 100000us 10000us"
        );
        let plain = RootQdisc {
            shaping: Shaping::Netem {
                delay_us: 5,
                jitter_us: None,
            },
            ..netem
        };
        assert!(
            qdisc_replace_args(&plain)
                .join(" ")
                .ends_with("netem delay 5us")
        );
        assert_eq!(
            qdisc_delete_args("eth0").join(" "),
            "qdisc del dev eth0 root"
        );
    }

    fn tbf_ours() -> RootQdisc {
        RootQdisc {
            dev: "eth0".into(),
            handle: 0xca12,
            shaping: Shaping::Tbf {
                rate_bits: 1_000_000,
                burst_bytes: 32768,
                latency_us: 400_000,
            },
        }
    }

    #[test]
    fn root_qdisc_ownership_from_tc_json() {
        // Verbatim from iproute2 6.1 on this project's machines.
        let ours = r#"[{"kind":"tbf","handle":"ca12:","root":true,"refcnt":3,"options":{"rate":125000,"burst":32768,"lat":400000}}]"#;
        let default = r#"[{"kind":"noqueue","handle":"0:","root":true,"refcnt":2,"options":{}}]"#;
        let other_rate = r#"[{"kind":"tbf","handle":"ca12:","root":true,"options":{"rate":250000,"burst":32768,"lat":400000}}]"#;
        let other_handle =
            r#"[{"kind":"tbf","handle":"ca13:","root":true,"options":{"rate":125000}}]"#;
        let htb = r#"[{"kind":"htb","handle":"1:","root":true,"options":{}},{"kind":"pfifo","handle":"8001:","parent":"1:10"}]"#;
        let q = tbf_ours();
        let own = |json: &str| ownership(parse_root_qdisc(json).unwrap().as_ref(), &q);
        assert_eq!(own(ours), Ownership::Ours);
        assert_eq!(own(default), Ownership::Default);
        assert_eq!(own("[]"), Ownership::Default);
        assert!(matches!(own(other_rate), Ownership::Other(_)));
        assert!(matches!(own(other_handle), Ownership::Other(_)));
        let Ownership::Other(found) = own(htb) else {
            panic!("htb is not ours")
        };
        assert!(found.starts_with("htb 1:"), "{found}");
        assert!(parse_root_qdisc("not json").is_err());
    }

    #[test]
    fn netem_is_ours_by_kind_and_handle() {
        let q = RootQdisc {
            dev: "eth0".into(),
            handle: 0xca40,
            shaping: Shaping::Netem {
                delay_us: 100_000,
                jitter_us: None,
            },
        };
        let json = r#"[{"kind":"netem","handle":"ca40:","root":true,"options":{"limit":1000,"delay":{"delay":0.1}}}]"#;
        assert_eq!(
            ownership(parse_root_qdisc(json).unwrap().as_ref(), &q),
            Ownership::Ours
        );
        let tbf = r#"[{"kind":"tbf","handle":"ca40:","root":true,"options":{"rate":1}}]"#;
        assert!(matches!(
            ownership(parse_root_qdisc(tbf).unwrap().as_ref(), &q),
            Ownership::Other(_)
        ));
    }

    #[test]
    fn leftover_qdiscs_are_ours_by_handle_range_and_undo_would_accept_them() {
        let json = r#"[{"kind":"tbf","handle":"ca12:","root":true,"options":{"rate":125000,"burst":32768,"lat":400000}}]"#;
        let observed = parse_root_qdisc(json).unwrap().unwrap();
        let found = leftover_qdisc("eth0", &observed).unwrap();
        assert_eq!(found, tbf_ours());
        assert_eq!(ownership(Some(&observed), &found), Ownership::Ours);
        let foreign = r#"[{"kind":"tbf","handle":"8001:","root":true,"options":{"rate":125000}}]"#;
        let observed = parse_root_qdisc(foreign).unwrap().unwrap();
        assert_eq!(leftover_qdisc("eth0", &observed), None);
    }

    #[test]
    fn links_from_ip_json() {
        let json = r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"link_type":"loopback"},
            {"ifindex":4857,"link_index":4858,"ifname":"eth0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"link_type":"ether"},
            {"ifindex":2,"ifname":"tunl0","flags":["NOARP"],"link_type":"ipip"}]"#;
        let links = parse_links(json).unwrap();
        assert_eq!(links.len(), 3);
        assert!(links[0].loopback && links[0].up);
        assert!(!links[1].loopback && links[1].up && links[1].name == "eth0");
        assert!(!links[2].up);
        assert!(parse_links("{}").is_err());
    }

    #[test]
    fn tagged_rules_from_iptables_listing_are_deletable_as_listed() {
        let listing = "-P INPUT ACCEPT\n-P OUTPUT ACCEPT\n\
            -A INPUT -s 172.20.0.3/32 -m comment --comment operator-chaos-r1-f2 -j DROP\n\
            -A OUTPUT -m comment --comment \"someone else\" -j DROP\n\
            -A OUTPUT ! -o lo -m statistic --mode random --probability 1.00000000000 -m comment --comment operator-chaos-r1-f3 -j DROP\n";
        let rules = parse_tagged_rules(Family::Ipv4, listing, TAG_PREFIX);
        assert_eq!(rules.len(), 2);
        assert_eq!(
            rule_args(RuleOp::Delete, &rules[0]).join(" "),
            "-w 5 -D INPUT -s 172.20.0.3/32 -m comment --comment operator-chaos-r1-f2 -j DROP"
        );
        assert_eq!(rules[1].chain, "OUTPUT");
        assert_eq!(strs(&rules[1].spec)[..3], ["!", "-o", "lo"]);
        assert!(parse_tagged_rules(Family::Ipv4, listing, "operator-chaos-r1-f3").len() == 1);
    }

    #[test]
    fn start_time_is_field_22_even_when_the_name_has_spaces_and_parentheses() {
        let stat = "4242 (sleep) S 4200 4242 4242 0 -1 1077936384 120 0 0 0 0 0 0 0 20 0 1 0 \
                    987654 1597440 142 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        assert_eq!(parse_start_time(stat), Some(987_654));
        let odd = "77 (a b) (c)) R 1 77 77 0 -1 4194304 0 0 0 0 0 0 0 0 20 0 1 0 55 0 0";
        assert_eq!(parse_start_time(odd), Some(55));
        assert_eq!(parse_start_time("77 (x) R 1"), None);
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(parse_start_time(&own).is_some(), "{own}");
    }

    #[test]
    fn netem_verdict_names_the_missing_qdisc() {
        assert_eq!(netem_verdict(true, ""), Ok(()));
        let missing =
            netem_verdict(false, "Error: Specified qdisc kind is unknown.\n").unwrap_err();
        assert!(
            missing.contains("sch_netem") && missing.contains("delay"),
            "{missing}"
        );
        let other =
            netem_verdict(false, "unshare: unshare failed: Operation not permitted").unwrap_err();
        assert!(other.contains("Operation not permitted"), "{other}");
    }

    #[test]
    fn undo_records_round_trip_through_json() {
        let undo = NetUndo {
            tag: TAG.into(),
            kind: "partition".into(),
            boot_id: "3e1a6c5e-2f4b-4d7e-9f1a-0c2b3d4e5f60".into(),
            namespaces: vec![NsChanges {
                owner: "pd-1".into(),
                pid: 4242,
                start_time: 123_456,
                netns: 4026532188,
                rules: partition_rules(&["172.20.0.3".parse().unwrap()], TAG),
                qdiscs: vec![tbf_ours()],
            }],
        };
        let json = serde_json::to_string(&undo).unwrap();
        assert!(json.contains("\"qdisc\":\"tbf\""), "{json}");
        let back: NetUndo = serde_json::from_str(&json).unwrap();
        assert_eq!(back, undo);
        assert!(!back.is_empty());
    }

    #[test]
    fn only_replaced_qdiscs_mean_nothing_is_left_to_retry() {
        let not_ours = || NetFaultError::NotOurs {
            owner: "a".into(),
            netns: 1,
            dev: "eth0".into(),
            found: "htb 1:".into(),
            ours: "tbf ca12:".into(),
        };
        assert!(!not_ours().fault_remains());
        assert!(!NetFaultError::Incomplete(vec![not_ours(), not_ours()]).fault_remains());
        let gone = NetFaultError::Timeout {
            owner: "a".into(),
            netns: 1,
            command: "iptables".into(),
            timeout: COMMAND_TIMEOUT,
        };
        let e = NetFaultError::Incomplete(vec![not_ours(), gone]);
        assert!(e.fault_remains());
        assert!(e.to_string().contains("; "), "{e}");
    }

    #[tokio::test]
    async fn non_network_faults_and_bad_parameters_are_refused_before_any_change() {
        let target = NetTarget {
            service: "a".into(),
            pid: std::process::id(),
            ips: vec![],
            peers: vec![],
        };
        let e = plan(&target, &FaultKind::Stop, "bad tag")
            .await
            .unwrap_err();
        assert!(matches!(e, NetFaultError::InvalidTag { .. }), "{e}");
        let e = plan(&target, &FaultKind::Stop, TAG).await.unwrap_err();
        assert!(
            matches!(e, NetFaultError::NotNetwork { kind: "stop" }),
            "{e}"
        );
        for p in [0.0, -0.5, 1.5, f64::NAN] {
            let e = plan(&target, &FaultKind::Loss { probability: p }, TAG)
                .await
                .unwrap_err();
            assert!(matches!(e, NetFaultError::Probability(_)), "{e}");
        }
        // Our own namespace counts as the host's: refused whatever the fault.
        let e = plan(&target, &FaultKind::Loss { probability: 0.5 }, TAG)
            .await
            .unwrap_err();
        assert!(matches!(e, NetFaultError::HostNamespace { .. }), "{e}");
        assert!(e.to_string().contains("a (pid"), "{e}");
    }
}
