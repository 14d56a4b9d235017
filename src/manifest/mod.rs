//! Desired state: Kubernetes-style YAML manifests, loaded and validated into plain data.
//!
//! Everything the rest of the controller knows about "what should exist" comes from the
//! types in this module. They are produced only by [`load`], which validates every file
//! completely before anything else runs: an invalid manifest never reaches Docker.
//!
//! How a file is read: [`crate::yamldoc`] splits it into documents, reads each into the `raw`
//! schema and remembers the line of every field; `validate` then turns raw into the types
//! below, every problem collected with its line; `load` finds the files, ties the steps
//! together and runs the checks that span clusters (names and host ports are global on a
//! Docker host).

mod error;
mod graph;
mod load;
mod port;
mod positions;
mod raw;
pub(crate) mod resources;
pub(crate) mod signal;
#[cfg(test)]
mod testing;
pub(crate) mod validate;
pub(crate) mod volume;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};

pub use crate::yamldoc::{Diagnostic, parse_duration};
pub use error::ManifestError;
pub use load::{load, load_with_positions};
pub use positions::Positions;

/// Everything the manifests declare, across all files given on the command line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DesiredState {
    pub clusters: Vec<Cluster>,
}

/// One `kind: Cluster` document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cluster {
    pub name: String,
    /// File the cluster was declared in (for messages and for resolving relative bind mounts).
    pub source: PathBuf,
    pub network: NetworkSpec,
    /// Services in declaration order.
    pub services: Vec<Service>,
    /// Where the cluster's Prometheus is, and how checks are evaluated.
    pub prometheus: PrometheusSpec,
    /// Health checks beyond the containers' own state, in declaration order.
    pub checks: Vec<Check>,
    /// How an agent session for this cluster runs and what it may spend.
    pub agent: AgentSpec,
    /// Quorum groups (`spec.groups`): members no disruptive action may leave below quorum.
    pub groups: Vec<Group>,
    /// The most restarts or recreates of running containers the controller has under way in
    /// this cluster at once (`spec.maxConcurrentDisruptions`); `None`: no limit.
    pub max_concurrent_disruptions: Option<usize>,
}

/// A quorum group (`spec.groups[]`): services that must keep `quorum` of them live, such as
/// the three members of a Raft group (PD, etcd).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group {
    pub name: String,
    /// Service names, in declaration order (a `selector` is resolved when the manifest is read).
    pub members: Vec<String>,
    pub quorum: Quorum,
    /// A member is live when its container runs (not paused) and none of these checks is
    /// failing on it.
    pub live_checks: Vec<String>,
    /// How long a member the controller took down gets to be live again before the
    /// controller gives up waiting (and stops a rollout there).
    pub live_timeout: Duration,
    /// Members the controller takes down at once.
    pub max_concurrent: usize,
    /// The most repairs that take a live member down within the window; past it the
    /// controller escalates instead of churning the group.
    pub replacements: Replacements,
}

/// A cap on repairs that take live members of a group down (`groups[].replacements`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Replacements {
    pub max: u32,
    pub window: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Quorum {
    /// More than half of the members.
    Majority,
    /// At least this many.
    AtLeast(usize),
}

impl Group {
    /// Defaults of the optional fields: 2 minutes to be live again, one member at a time,
    /// each member twice per ten minutes.
    pub const LIVE_TIMEOUT: Duration = Duration::from_secs(120);
    pub const REPLACEMENT_WINDOW: Duration = Duration::from_secs(600);

    /// How many members must stay live.
    pub fn needed(&self) -> usize {
        match self.quorum {
            Quorum::Majority => self.members.len() / 2 + 1,
            Quorum::AtLeast(n) => n,
        }
    }
}

/// What an agent session may do with its shell (`spec.agent.safetyMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SafetyMode {
    /// Commands run in a toolbox without network whose Docker proxy only reads (the default,
    /// as in HolmesGPT).
    #[default]
    Observe,
    /// Every command waits for a person's `operator tickets approve`; the proxy still
    /// enforces ownership and the quorum gate.
    Approve,
    /// Commands run; the proxy enforces ownership and the quorum gate.
    Execute,
}

impl SafetyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SafetyMode::Observe => "observe",
            SafetyMode::Approve => "approve",
            SafetyMode::Execute => "execute",
        }
    }

    pub fn parse(text: &str) -> Option<SafetyMode> {
        Some(match text {
            "observe" => SafetyMode::Observe,
            "approve" => SafetyMode::Approve,
            "execute" => SafetyMode::Execute,
            _ => return None,
        })
    }
}

impl std::fmt::Display for SafetyMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// `spec.agent`: the cluster's limits for agent sessions. Unset fields take the defaults
/// below; `model` and `safetyMode` unset take the controller's (flag, environment, default).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentSpec {
    pub model: Option<String>,
    pub safety_mode: Option<SafetyMode>,
    /// Model turns (requests) per session.
    pub max_turns: u32,
    /// Wall time per session.
    pub max_session_time: Duration,
    /// Input tokens per session (cache reads included: they are still read).
    pub max_input_tokens: u64,
    /// Output tokens per session.
    pub max_output_tokens: u64,
    /// Sessions per ticket episode; past them the ticket escalates to a person.
    pub sessions_per_ticket: u32,
    /// Wait between two sessions of one ticket.
    pub session_backoff: Duration,
    /// Bound on one shell command.
    pub command_timeout: Duration,
}

impl Default for AgentSpec {
    fn default() -> Self {
        AgentSpec {
            model: None,
            safety_mode: None,
            max_turns: 40,
            max_session_time: Duration::from_secs(600),
            max_input_tokens: 500_000,
            max_output_tokens: 50_000,
            sessions_per_ticket: 2,
            session_backoff: Duration::from_secs(60),
            command_timeout: Duration::from_secs(120),
        }
    }
}

/// `spec.prometheus`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PrometheusSpec {
    /// Base URL (`http://host:9090`): `spec.prometheus.url`, else `$PROMETHEUS_URL` at load
    /// time. `None` only when no check needs Prometheus.
    pub url: Option<String>,
    /// How often every check is evaluated (default 5s).
    pub interval: Duration,
    /// Bound on one query or probe (default 3s).
    pub timeout: Duration,
}

impl Default for PrometheusSpec {
    fn default() -> Self {
        PrometheusSpec {
            url: None,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(3),
        }
    }
}

/// `spec.checks[]`: something that can be wrong while every container runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    /// Unique within the cluster; `[a-z0-9][a-z0-9_.-]*`.
    pub name: String,
    pub probe: Probe,
    /// How long the check must keep failing before it is a drift (`for`, default 0s).
    pub for_duration: Duration,
    pub severity: Severity,
    pub blame: Blame,
    /// Default policy for checks is `observe`: a failing query alone never restarts anything
    /// unless the manifest says so.
    pub remediation: Remediation,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Probe {
    /// `expr`: PromQL in the alerting-rule convention: every returned series is a failure.
    Alert { expr: String },
    /// `healthy`: PromQL whose series are healthy unless their value is 0; no series at all
    /// is "no data", never "healthy".
    Healthy { expr: String },
    /// `http`: a GET evaluated from the controller.
    Http(HttpProbe),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpProbe {
    pub url: String,
    /// Expected status (default 200).
    pub status: u16,
    /// Optional test of one field of a JSON body.
    pub json: Option<JsonTest>,
    /// Bound on the request (default: `spec.prometheus.timeout`).
    pub timeout: Duration,
}

/// `json: {path: "a.b.0.c", equals: <any YAML value>}`: the field at the dotted path (numbers
/// index arrays) must equal the value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JsonTest {
    pub path: String,
    pub equals: serde_json::Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    Warning,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// Which service a failing check is held against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Blame {
    /// No service: a cluster-level drift (`service:` and `serviceLabel:` both absent).
    Cluster,
    /// `service: NAME` (a service of the same cluster).
    Service(String),
    /// `serviceLabel: LABEL` with optional `services: {label value: service}`: each failing
    /// series is blamed on the service its label names — through the map, else the label
    /// value's host part (before the last `:`) when that is a service of the cluster; a
    /// series that maps to no service is blamed on the cluster.
    Label {
        label: String,
        services: BTreeMap<String, String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NetworkSpec {
    pub name: String,
    /// The network is managed elsewhere: never created, only joined.
    pub external: bool,
    /// No route out of the network (`docker network create --internal`).
    pub internal: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Service {
    /// Also the container name and its DNS name on the cluster network.
    pub name: String,
    pub image: String,
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub ports: Vec<PortMapping>,
    pub volumes: Vec<VolumeMount>,
    pub network_mode: NetworkMode,
    pub labels: BTreeMap<String, String>,
    pub healthcheck: Option<Healthcheck>,
    pub depends_on: Vec<String>,
    /// `restartWith`: dependencies (each also in `depends_on`) whose restart or recreation
    /// restarts this service too: a container started before its dependency's current one
    /// is restarted.
    pub restart_with: Vec<String>,
    pub restart_policy: RestartPolicy,
    /// `stopTimeout`: how long a stop waits after the stop signal before the engine kills
    /// (whole seconds, at most [`MAX_STOP_TIMEOUT`]). `None`: the engine's default, 10 s.
    pub stop_timeout: Option<Duration>,
    /// `stopSignal`, canonical (`SIGTERM`, `SIGRTMIN+3` or a number such as `15`). `None`:
    /// the image's, else `SIGTERM`.
    pub stop_signal: Option<String>,
    pub remediation: Remediation,
    /// `adopt`: the service's container already exists, started by compose or by hand, and
    /// is taken over by its name (the service's) instead of being created. `None`: the
    /// controller creates the container, and a container of that name it did not create is
    /// a name conflict it never touches.
    pub adopt: Option<Adopt>,
    /// `adopt.compose`: the container to adopt is the one compose started for this compose
    /// project and service, found by its labels whatever its name (`imp_worker_1`); a
    /// container the controller creates for the service carries those labels too, so that
    /// compose (`docker-compose down`) still knows it as its own.
    pub compose: Option<ComposeService>,
    /// `aliases`: more DNS names of the container on its network, besides the service's
    /// name (the names a compose stack's clients use: its service name, its
    /// `networks.X.aliases`).
    pub aliases: Vec<String>,
    /// `resources`: the container's CPU and memory limits.
    pub resources: Resources,
}

/// A compose project's service (`adopt.compose`), as compose labels its containers
/// (`com.docker.compose.project`, `com.docker.compose.service`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ComposeService {
    pub project: String,
    pub service: String,
}

/// Limits on what the container may use (`resources`); `None`: the engine's default, none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Resources {
    /// `resources.cpus` in billionths of a CPU (`docker run --cpus`, the engine's `NanoCpus`).
    pub nano_cpus: Option<i64>,
    /// `resources.memory` in bytes (`docker run --memory`).
    pub memory: Option<i64>,
}

/// How an adopted container's spec is treated (`adopt: {spec: ...}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Adopt {
    /// The container keeps the spec it was started with: a difference from the manifest is
    /// never a reason to recreate it (the default: compose, or whoever started it, owns its
    /// definition). It is still started, unpaused, restarted, reconnected and, when it is
    /// gone, created from the manifest.
    Observed,
    /// The manifest's spec is the truth: an adopted container is recreated from it (as a
    /// rollout, one member of a group at a time), and is from then on the controller's own.
    Owned,
}

impl Adopt {
    pub fn as_str(self) -> &'static str {
        match self {
            Adopt::Observed => "observed",
            Adopt::Owned => "owned",
        }
    }
}

impl Service {
    /// Whether a container adopted for this service is kept whatever its spec.
    pub fn keeps_adopted_spec(&self) -> bool {
        self.adopt == Some(Adopt::Observed)
    }
}

/// The longest `stopTimeout`: a stop holds one reconcile worker for that long.
pub const MAX_STOP_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

/// `"[ip:]host:container[/proto]"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortMapping {
    pub host_ip: Option<String>,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

/// `"name:/target[:ro]"` (named volume) or `"/abs/or/./relative:/target[:ro]"` (bind mount).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum VolumeMount {
    Named {
        name: String,
        target: String,
        read_only: bool,
    },
    /// `source` is absolute: relative paths are resolved against the manifest's folder.
    Bind {
        source: PathBuf,
        target: String,
        read_only: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum NetworkMode {
    /// The cluster's own network (the default).
    Cluster,
    /// The host's network namespace.
    Host,
    /// Another, named, network (must exist; never created by the controller).
    Named(String),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Healthcheck {
    /// Docker form: `["CMD", ...]`, `["CMD-SHELL", "..."]` or `["NONE"]`.
    pub test: Vec<String>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub retries: Option<u32>,
    pub start_period: Option<Duration>,
}

/// The engine's own restart policy. Defaults to `no`: the controller heals, not the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    No,
    Always,
    UnlessStopped,
    OnFailure,
}

/// What the controller may do when a service drifts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Built-in actions: create, start, unpause, restart, recreate, connect.
    Restart,
    /// Hand the drift to an agent session (without an API key: reported only, as `observe`).
    Agent,
    /// Report only; never touch the container.
    Observe,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Restart => "restart",
            Policy::Agent => "agent",
            Policy::Observe => "observe",
        }
    }
}

/// Who is called when a service's restart budget is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EscalateTo {
    /// The service is escalated: left alone until `operator tickets retry`.
    Person,
    /// An agent session is paged first (within `spec.agent.sessionsPerTicket`); past that,
    /// a person.
    Agent,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Remediation {
    pub policy: Policy,
    /// With `policy: restart`: who takes over once the restart budget is spent.
    pub escalate_to: EscalateTo,
    /// Restart budget: at most this many repairs in `window`; past it the service is escalated.
    pub max_restarts: u32,
    pub window: Duration,
    /// Delay before the second repair attempt; doubles per attempt up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// How long a service must stay healthy before its backoff resets.
    pub stable_after: Duration,
}

impl Default for Remediation {
    fn default() -> Self {
        Remediation {
            policy: Policy::Restart,
            escalate_to: EscalateTo::Person,
            max_restarts: 5,
            window: Duration::from_secs(600),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            stable_after: Duration::from_secs(60),
        }
    }
}

impl DesiredState {
    /// Who may page the agent: `cluster/service` for a service with `policy: agent` or
    /// `escalateTo: agent`, `cluster/check NAME` for a check with `policy: agent`.
    pub fn agent_users(&self) -> Vec<String> {
        let mut users = Vec::new();
        for c in &self.clusters {
            users.extend(
                c.services
                    .iter()
                    .filter(|s| {
                        s.remediation.policy == Policy::Agent
                            || s.remediation.escalate_to == EscalateTo::Agent
                    })
                    .map(|s| format!("{}/{}", c.name, s.name)),
            );
            users.extend(
                c.checks
                    .iter()
                    .filter(|k| k.remediation.policy == Policy::Agent)
                    .map(|k| format!("{}/check {}", c.name, k.name)),
            );
        }
        users
    }

    /// The cluster called `name`.
    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }

    /// Every service with its cluster, clusters in load order, services in declaration order.
    pub fn services(&self) -> impl Iterator<Item = (&Cluster, &Service)> {
        self.clusters
            .iter()
            .flat_map(|c| c.services.iter().map(move |s| (c, s)))
    }
}

impl Cluster {
    /// The service called `name` in this cluster.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The check called `name` in this cluster.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// The quorum groups `service` is a member of.
    pub fn groups_of<'a>(&'a self, service: &'a str) -> impl Iterator<Item = &'a Group> + 'a {
        self.groups
            .iter()
            .filter(move |g| g.members.iter().any(|m| m == service))
    }

    /// Services in start order: every service after the services it depends on; services
    /// that could start at the same time keep their declaration order.
    ///
    /// # Guarantees
    /// Every service appears exactly once (a cycle, which [`load`] refuses, cannot drop one).
    pub fn topo_order(&self) -> Vec<&Service> {
        let deps: Vec<Vec<usize>> = self
            .services
            .iter()
            .map(|s| {
                s.depends_on
                    .iter()
                    .filter_map(|d| self.services.iter().position(|t| t.name == *d))
                    .collect()
            })
            .collect();
        graph::topo_order(&deps)
            .into_iter()
            .map(|i| &self.services[i])
            .collect()
    }
}

impl Service {
    /// A fingerprint of everything that determines the container, stored in its
    /// `operator.spec-hash` label: a different hash means the container must be recreated.
    ///
    /// The first 16 hex digits of the SHA-256 of a canonical JSON form (maps in key order)
    /// of every field except `remediation` and `depends_on`, which only change what the
    /// controller does, not the container. Optional fields added later (`stop_timeout`,
    /// `stop_signal`, `adopt.compose`, `aliases`, `resources`) are hashed only when set.
    ///
    /// # Caveats
    /// `NetworkMode::Cluster` is hashed as such: renaming the cluster network does not
    /// change the hash of its services.
    pub fn spec_hash(&self) -> String {
        #[derive(Serialize)]
        struct Container<'a> {
            name: &'a str,
            image: &'a str,
            command: &'a Option<Vec<String>>,
            entrypoint: &'a Option<Vec<String>>,
            env: &'a BTreeMap<String, String>,
            ports: &'a [PortMapping],
            volumes: &'a [VolumeMount],
            network_mode: &'a NetworkMode,
            labels: &'a BTreeMap<String, String>,
            healthcheck: &'a Option<Healthcheck>,
            restart_policy: RestartPolicy,
            // Left out when unset, so that specs written before these fields existed keep
            // their hash: an upgrade must not roll out every container.
            #[serde(skip_serializing_if = "Option::is_none")]
            stop_timeout: Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            stop_signal: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            compose: Option<&'a ComposeService>,
            #[serde(skip_serializing_if = "<[String]>::is_empty")]
            aliases: &'a [String],
            #[serde(skip_serializing_if = "Option::is_none")]
            nano_cpus: Option<i64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            memory: Option<i64>,
        }
        let container = Container {
            name: &self.name,
            image: &self.image,
            command: &self.command,
            entrypoint: &self.entrypoint,
            env: &self.env,
            ports: &self.ports,
            volumes: &self.volumes,
            network_mode: &self.network_mode,
            labels: &self.labels,
            healthcheck: &self.healthcheck,
            restart_policy: self.restart_policy,
            stop_timeout: self.stop_timeout.map(|d| d.as_secs()),
            stop_signal: self.stop_signal.as_deref(),
            compose: self.compose.as_ref(),
            aliases: &self.aliases,
            nano_cpus: self.resources.nano_cpus,
            memory: self.resources.memory,
        };
        // Serialization only fails on non-UTF-8 paths, which `load` refuses; the fallback
        // keeps the hash total and deterministic all the same.
        let json =
            serde_json::to_vec(&container).unwrap_or_else(|_| format!("{self:?}").into_bytes());
        let digest = Sha256::digest(&json);
        hex::encode(digest)[..16].to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{load_text, manifest, service};
    use super::*;

    fn web() -> Service {
        let state = load_text(&manifest(
            "demo",
            &(service(
                "web",
                "      env: {A: \"1\", B: \"2\"}\n      dependsOn: [db]\n",
            ) + &service("db", "")),
        ))
        .expect("valid");
        state.clusters[0].services[0].clone()
    }

    #[test]
    fn spec_hash_is_16_hex_digits_and_stable() {
        let hash = web().spec_hash();
        assert_eq!(hash.len(), 16);
        assert!(hash.chars().all(|c| c.is_ascii_hexdigit()), "{hash}");
        assert_eq!(hash, web().spec_hash());
    }

    #[test]
    fn spec_hash_changes_with_the_container_definition() {
        let base = web();
        let mut changed = base.clone();
        changed.image = "busybox:1.37".into();
        assert_ne!(changed.spec_hash(), base.spec_hash());
        let mut changed = base.clone();
        changed.env.insert("A".into(), "2".into());
        assert_ne!(changed.spec_hash(), base.spec_hash());
        let mut changed = base.clone();
        changed.restart_policy = RestartPolicy::Always;
        assert_ne!(changed.spec_hash(), base.spec_hash());
    }

    /// Every field of the container definition set, written as in a manifest.
    fn full() -> Service {
        let state = load_text(&manifest(
            "demo",
            &service(
                "full",
                r#"      command: ["sh", "-c", "sleep 1"]
      entrypoint: /bin/env
      env: {A: "1", B: x}
      ports: ["127.0.0.1:8080:80", "5353:53/udp"]
      volumes: ["data:/data", "/srv/conf:/etc/app:ro"]
      networkMode: host
      labels: {team: infra}
      healthcheck: {test: "true", interval: 5s, timeout: 2s, retries: 3, startPeriod: 1s}
      restartPolicy: unless-stopped
"#,
            ),
        ))
        .expect("valid");
        state.clusters[0].services[0].clone()
    }

    /// A new optional field must leave the hash of a spec that does not set it as it was:
    /// otherwise upgrading the controller rolls out every container it owns. These values
    /// were computed before `stopTimeout` and `stopSignal` existed (commit f25a50c).
    #[test]
    fn spec_hash_of_an_existing_spec_never_changes() {
        assert_eq!(web().spec_hash(), "30d1402ecfc44e34");
        assert_eq!(full().spec_hash(), "300000a69c13fdda");
    }

    #[test]
    fn spec_hash_changes_with_stop_timeout_and_signal_once_set() {
        let base = full();
        let mut timeout = base.clone();
        timeout.stop_timeout = Some(Duration::from_secs(10));
        let mut signal = base.clone();
        signal.stop_signal = Some("SIGTERM".into());
        let hashes = [&base, &timeout, &signal].map(|s| s.spec_hash());
        assert!(
            hashes[0] != hashes[1] && hashes[0] != hashes[2] && hashes[1] != hashes[2],
            "{hashes:?}"
        );
        // Set to 0s is not unset: the engine kills at once instead of after 10 s.
        let mut zero = base.clone();
        zero.stop_timeout = Some(Duration::ZERO);
        assert_ne!(zero.spec_hash(), base.spec_hash());
    }

    /// Aliases, compose labels and limits are part of the container: set, they change the
    /// hash; unset (every spec written before they existed), they leave it as it was.
    #[test]
    fn spec_hash_changes_with_aliases_compose_and_resources_once_set() {
        let base = full();
        let mut aliases = base.clone();
        aliases.aliases = vec!["db".into()];
        let mut compose = base.clone();
        compose.compose = Some(ComposeService {
            project: "shop".into(),
            service: "full".into(),
        });
        let mut limits = base.clone();
        limits.resources.memory = Some(64 << 20);
        let hashes = [&base, &aliases, &compose, &limits].map(|s| s.spec_hash());
        for i in 0..hashes.len() {
            for j in i + 1..hashes.len() {
                assert_ne!(hashes[i], hashes[j], "{hashes:?}");
            }
        }
        // `adopt` alone (without compose) is how the container is found, not what it is.
        let mut adopted = base.clone();
        adopted.adopt = Some(Adopt::Observed);
        assert_eq!(adopted.spec_hash(), base.spec_hash());
    }

    #[test]
    fn spec_hash_ignores_remediation_and_dependencies() {
        let base = web();
        let mut changed = base.clone();
        changed.remediation.policy = Policy::Observe;
        changed.remediation.max_restarts = 99;
        changed.depends_on.clear();
        changed.restart_with = vec!["db".into()];
        assert_eq!(changed.spec_hash(), base.spec_hash());
    }

    #[test]
    fn topo_order_starts_dependencies_first() {
        let text = manifest(
            "demo",
            &(service("web", "      dependsOn: [api]\n")
                + &service("api", "      dependsOn: [db, cache]\n")
                + &service("cache", "")
                + &service("db", "")
                + &service("docs", "")),
        );
        let state = load_text(&text).expect("valid");
        let order: Vec<&str> = state.clusters[0]
            .topo_order()
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(order, ["cache", "db", "api", "web", "docs"]);
    }

    #[test]
    fn shipped_example_is_valid() {
        let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/examples");
        let state = load(&[examples]).unwrap_or_else(|e| panic!("{e}"));
        let hello = state.cluster("hello").expect("cluster hello");
        assert!(hello.network.internal && !hello.network.external);
        let order: Vec<&str> = hello.topo_order().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(order, ["hello-web", "hello-worker"]);
        let worker = hello.service("hello-worker").expect("worker");
        let command = worker.command.as_deref().expect("a command");
        assert_eq!(command.len(), 3, "{command:?}");
        assert!(command[2].starts_with("while true;"), "{command:?}");
    }

    #[test]
    fn lookups_find_clusters_and_services() {
        let text = manifest("one", &service("aa", ""))
            + "---\n"
            + &manifest("two", &(service("bb", "") + &service("cc", "")));
        let state = load_text(&text).expect("valid");
        assert_eq!(state.cluster("two").map(|c| c.services.len()), Some(2));
        assert!(state.cluster("three").is_none());
        let two = state.cluster("two").expect("two");
        assert_eq!(two.service("cc").map(|s| s.name.as_str()), Some("cc"));
        assert!(two.service("aa").is_none());
        let all: Vec<(&str, &str)> = state
            .services()
            .map(|(c, s)| (c.name.as_str(), s.name.as_str()))
            .collect();
        assert_eq!(all, [("one", "aa"), ("two", "bb"), ("two", "cc")]);
    }

    /// `as_str` is what logs and the CLI print and serde what `--json` prints: they must agree.
    #[test]
    fn policy_as_str_is_the_serde_name() {
        for policy in [Policy::Restart, Policy::Agent, Policy::Observe] {
            assert_eq!(serde_json::json!(policy), policy.as_str());
        }
        for severity in [Severity::Critical, Severity::Warning, Severity::Info] {
            assert_eq!(serde_json::json!(severity), severity.as_str());
        }
    }

    #[test]
    fn agent_users_are_the_services_and_checks_that_may_page_the_agent() {
        let text = manifest(
            "demo",
            &format!(
                "{}{}{}",
                service("aa", "      remediation: {policy: agent}\n"),
                service("bb", "      remediation: {escalateTo: agent}\n"),
                service("cc", ""),
            ),
        ) + "  prometheus: {url: \"http://127.0.0.1:9090\"}\n  checks:\n    - name: up\n      expr: up == 0\n      service: cc\n      remediation: {policy: agent}\n";
        let desired = load_text(&text).unwrap();
        assert_eq!(
            desired.agent_users(),
            vec!["demo/aa", "demo/bb", "demo/check up"]
        );
    }
}
