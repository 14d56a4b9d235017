//! What the model is told. Two parts, for prompt caching: the system prompt is constant text
//! (byte-identical across sessions and tickets, so the API caches it with the tool
//! definitions), and the incident — the ticket, the service's desired spec, the recent
//! timeline, the limits of this session — is the first user message.

use serde_json::{Value, json};

use crate::manifest::{Cluster, SafetyMode, Service};
use crate::tickets::{Ticket, TimelineEntry};

/// How many of the newest timeline entries the incident shows (the `ticket` tool has all).
pub const TIMELINE_ENTRIES: usize = 30;

/// The system prompt: the role, the rules, and what an SRE needs to know about the stack.
pub const SYSTEM: &str = "\
You are the on-call SRE paged by `operator`, a reconciling controller that keeps a cluster of \
Docker containers in its declared state. The controller already tried what it can do by itself \
(start, restart, recreate, reconnect) or its manifest sends this kind of incident to you. Your \
job: find out why the service or check in the ticket is not in its desired state, and bring it \
back, with the fewest and safest steps.

How this works:
- You act through tools. `shell` runs a command in a toolbox container of your session (sh, \
coreutils, curl, jq, and the docker CLI, which talks to the cluster's engine through an \
authorising proxy); the read-only tools (cluster_status, ticket, promql, container_logs, \
http_get) answer without a shell. Prefer them for looking.
- The proxy decides each Docker request: reads are allowed (secret values are masked); start, \
stop, restart, kill (with a signal that ends the process), pause, update, exec and network \
(dis)connect only on the cluster's own containers, and taking a quorum member down only if \
its group keeps its quorum; exec into or update of a quorum member, renaming, and creating or \
removing containers, volumes and images are never allowed. In `observe` mode the proxy only \
reads and the toolbox has no network (use http_get and promql); in `approve` mode every \
command waits for a person, who may reject it; in `execute` mode commands run. A refusal \
comes back as the docker CLI's error (`refused by operator: ...`) with the reason: do not \
retry it in another spelling.
- The controller verifies. When you stop, it re-observes the service and re-evaluates its checks \
itself; the ticket is resolved only if the desired state holds. Saying that something is fixed \
changes nothing: fix it, then check it yourself (cluster_status, promql) before you stop.
- Be brief. End with a short summary: what was wrong, what you did, what you verified, and what \
a person should look at if it is not fixed. If you cannot fix it safely, say so and stop: the \
ticket then goes to a person.
- Your session is bounded in turns, time and tokens; an identical tool call repeated several \
times is refused.

The TiKV stack (the flagship cluster; other clusters are described by their manifests):
- PD (placement driver, 3 members, Raft): client port 2379, peer port 2380. Its HTTP API is under \
/pd/api/v1: `health` (each member's health), `members`, `leader`, `stores` (each TiKV store with \
`state_name` Up | Disconnected | Down | Offline | Tombstone), `stats/region`, \
`regions/check/miss-peer` (regions missing a replica) and the other region checks. Writes such \
as POST /leader/transfer/NAME or DELETE /store/ID change the cluster: never use them lightly. \
PD is healthy about 10-15 s after a start; a PD majority must stay up (never stop two of three).
- TiKV (3 stores): port 20160 for clients, status and metrics on 20180. A store heartbeats to \
PD every 10 s; PD calls it Disconnected after about 20 s and Down after max-store-down-time \
(30 min by default). TiKV is ready about 30-60 s after a start.
- Prometheus scrapes PD and TiKV (TiKV on its status port 20180); Grafana reads Prometheus.
- Useful metrics: pd_cluster_status{type=\"store_up_count\"|\"store_disconnected_count\"|\
\"store_down_count\"|\"store_low_space_count\"}, pd_regions_status{type=\"miss-peer-region-count\"} \
(older PD spells it with underscores), tikv_store_size_bytes{type=\"used\"|\"capacity\"}, \
etcd_server_has_leader, up.
";

/// Names whose values are not shown to the model (nor anywhere else the prompt goes).
fn is_secret_name(name: &str) -> bool {
    super::shell::name_looks_secret(name)
}

/// The values of the secret-looking env entries of every service of `cluster`: they are
/// masked wherever the session's text goes (the model, the audit), since a command such as
/// `docker inspect` shows a container's environment.
pub fn manifest_secrets(cluster: &Cluster) -> Vec<String> {
    cluster
        .services
        .iter()
        .flat_map(|s| s.env.iter())
        .filter(|(k, _)| is_secret_name(k))
        .map(|(_, v)| v.clone())
        .collect()
}

/// The service's desired spec as the model reads it; secret-looking env values hidden.
fn desired_spec(service: &Service) -> Value {
    let env: serde_json::Map<String, Value> = service
        .env
        .iter()
        .map(|(k, v)| {
            let shown = if is_secret_name(k) {
                "[hidden]".to_string()
            } else {
                v.clone()
            };
            (k.clone(), Value::String(shown))
        })
        .collect();
    json!({
        "name": service.name,
        "image": service.image,
        "command": service.command,
        "entrypoint": service.entrypoint,
        "env": env,
        "ports": service.ports.iter().map(|p| format!("{}:{}", p.host_port, p.container_port)).collect::<Vec<_>>(),
        "network_mode": format!("{:?}", service.network_mode),
        "depends_on": service.depends_on,
        "healthcheck": service.healthcheck.as_ref().map(|h| &h.test),
        "restart_policy": format!("{:?}", service.restart_policy),
        "remediation": service.remediation.policy,
    })
}

/// What the session is allowed, for the incident text.
#[derive(Debug, Clone)]
pub struct Limits {
    pub mode: SafetyMode,
    pub max_turns: u32,
    pub max_session_time: std::time::Duration,
    pub command_timeout: std::time::Duration,
}

/// The first user message: the incident.
pub fn incident(
    ticket: &Ticket,
    timeline: &[TimelineEntry],
    cluster: &Cluster,
    limits: &Limits,
) -> String {
    let service = cluster.service(&ticket.service);
    let recent: Vec<&TimelineEntry> = timeline
        .iter()
        .rev()
        .take(TIMELINE_ENTRIES)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let members: Vec<&str> = cluster.services.iter().map(|s| s.name.as_str()).collect();
    let mut text = format!(
        "Ticket #{id}: {drift} on {target} in cluster {cluster} (opened {opened}, seen {seen} \
         times, {actions} actions this episode).\nDetail: {detail}\n\n",
        id = ticket.id,
        drift = ticket.drift,
        target = if ticket.service == "-" {
            "the cluster".to_string()
        } else {
            format!("service {}", ticket.service)
        },
        cluster = cluster.name,
        opened = ticket.opened_at.to_rfc3339(),
        seen = ticket.occurrences,
        actions = ticket.actions,
        detail = ticket.detail,
    );
    text.push_str(&format!(
        "Cluster {}: services {} on network {}.\n",
        cluster.name,
        members.join(", "),
        cluster.network.name
    ));
    if let Some(url) = &cluster.prometheus.url {
        text.push_str(&format!("Its Prometheus: {url}\n"));
    }
    if let Some(service) = service {
        text.push_str(&format!(
            "\nDesired spec of {}:\n{}\n",
            service.name,
            serde_json::to_string_pretty(&desired_spec(service)).unwrap_or_default()
        ));
    }
    text.push_str(&format!(
        "\nRecent timeline (oldest first, {} of {} entries):\n{}\n",
        recent.len(),
        timeline.len(),
        serde_json::to_string_pretty(&recent).unwrap_or_default()
    ));
    text.push_str(&format!(
        "\nThis session: safety mode {}, at most {} turns and {} s, {} s per command.\n\
         Investigate, repair, verify, then summarise.",
        limits.mode,
        limits.max_turns,
        limits.max_session_time.as_secs(),
        limits.command_timeout.as_secs()
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_looking_names_are_hidden() {
        for name in [
            "ANTHROPIC_API_KEY",
            "db_password",
            "GitHubToken",
            "AWS_SECRET",
        ] {
            assert!(is_secret_name(name), "{name}");
        }
        for name in ["PATH", "ROLE", "PD_ADDR"] {
            assert!(!is_secret_name(name), "{name}");
        }
    }

    #[test]
    fn the_system_prompt_says_the_controller_verifies() {
        assert!(SYSTEM.contains("The controller verifies"));
        assert!(SYSTEM.contains("/pd/api/v1"));
        assert!(SYSTEM.contains("20180"));
    }
}
