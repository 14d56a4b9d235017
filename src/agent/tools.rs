//! The agent's read-only tools: what an on-call engineer looks at first, served without a
//! shell so the model does not have to guess command lines (and an `observe` session can
//! still see everything). The `shell` tool is the session's own (it runs in the session's
//! toolbox, after a person's approval in approve mode); this module only describes it.
//!
//! # Guarantees
//! - Nothing here changes anything: Docker is only inspected and its logs read, the ticket
//!   store only read, Prometheus only queried, HTTP only `GET`.
//! - Only the ticket's own cluster is reachable: a service name outside it is an error, and
//!   logs are read only from containers the controller owns for that service.
//! - Every answer is bounded in time (`TOOL_TIMEOUT`) and size (the session caps it again).
//! - The tool definitions are constant text: byte-identical across sessions, so the API can
//!   cache them.

use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::LogsOptionsBuilder;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::docker::{ObservedContainer, ServiceKey};
use crate::health::prometheus::Prometheus;
use crate::manifest::{DesiredState, NetworkMode};
use crate::tickets::Journal;

/// Bound on one read-only tool call.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(20);

/// The tool definitions sent with every request, `shell` first. Constant text, so that the
/// prompt prefix is cacheable; the last one is marked for caching by the session.
pub const DEFINITIONS: &str = r#"[
  {"name": "shell",
   "description": "Run a shell command (sh -c) in this session's toolbox container, where the docker CLI talks to the cluster's engine through a proxy that allows reads and, depending on the safety mode, changes to the cluster's own containers that keep every quorum. Returns JSON {stdout, stderr, exit_code, timed_out}; long output is cut to its head and tail. A refused Docker request fails with the reason in stderr; in approve mode a command first waits for a person's approval.",
   "input_schema": {"type": "object", "properties": {"command": {"type": "string", "description": "The command line, run by sh -c."}}, "required": ["command"]}},
  {"name": "cluster_status",
   "description": "Desired against observed for every service of the ticket's cluster: container state, health, drifts the controller sees now, the repair it would make, open tickets, escalation and holds.",
   "input_schema": {"type": "object", "properties": {}}},
  {"name": "ticket",
   "description": "A ticket with its timeline (what was seen and done, in order). Without an id: the ticket this session works on.",
   "input_schema": {"type": "object", "properties": {"id": {"type": "integer"}}}},
  {"name": "promql",
   "description": "An instant PromQL query against the cluster's Prometheus. Returns the series with their labels and values.",
   "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}},
  {"name": "container_logs",
   "description": "The last lines of a service's container log (stdout and stderr, with timestamps).",
   "input_schema": {"type": "object", "properties": {"service": {"type": "string"}, "tail": {"type": "integer", "description": "Lines from the end, 1 to 2000 (default 200)."}}, "required": ["service"]}},
  {"name": "http_get",
   "description": "An HTTP GET to a service of the cluster, at its address on the cluster network (e.g. PD's API: service pd0, port 2379, path /pd/api/v1/stores). Returns the status and the body.",
   "input_schema": {"type": "object", "properties": {"service": {"type": "string"}, "port": {"type": "integer"}, "path": {"type": "string"}}, "required": ["service", "port", "path"]}}
]"#;

/// The names in [`DEFINITIONS`] that this module serves (every one but `shell`).
pub const READ_ONLY: [&str; 5] = [
    "cluster_status",
    "ticket",
    "promql",
    "container_logs",
    "http_get",
];

/// The tool definitions as JSON.
pub fn definitions() -> Vec<Value> {
    // A constant written in this file: a parse failure is a bug caught by the tests.
    serde_json::from_str(DEFINITIONS).unwrap_or_default()
}

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error(
        "unknown tool {0:?}; the tools are shell, cluster_status, ticket, promql, container_logs and http_get"
    )]
    Unknown(String),
    #[error("invalid input: {0}")]
    Input(String),
    #[error("{0} is not a service of cluster {1}")]
    NotInCluster(String, String),
    #[error("{0}")]
    Failed(String),
    #[error("no answer within {} s", TOOL_TIMEOUT.as_secs())]
    Timeout,
}

/// What the read-only tools of one session may see.
#[derive(Clone)]
pub struct ToolContext {
    pub docker: Docker,
    pub desired: Arc<DesiredState>,
    pub journal: Journal,
    pub cluster: String,
    /// The ticket the session works on (the `ticket` tool's default).
    pub ticket: i64,
    pub http: reqwest::Client,
}

impl ToolContext {
    /// Runs read-only tool `name`; the answer is text for a `tool_result`.
    pub async fn call(&self, name: &str, input: &Value) -> Result<String, ToolError> {
        if !READ_ONLY.contains(&name) {
            return Err(ToolError::Unknown(name.to_string()));
        }
        match tokio::time::timeout(TOOL_TIMEOUT, self.dispatch(name, input)).await {
            Ok(answer) => answer,
            Err(_) => Err(ToolError::Timeout),
        }
    }

    async fn dispatch(&self, name: &str, input: &Value) -> Result<String, ToolError> {
        match name {
            "cluster_status" => self.cluster_status().await,
            "ticket" => {
                let id = match input.get("id") {
                    None | Some(Value::Null) => self.ticket,
                    Some(v) => v
                        .as_i64()
                        .ok_or_else(|| ToolError::Input("id must be an integer".into()))?,
                };
                self.ticket_with_timeline(id).await
            }
            "promql" => self.promql(string(input, "query")?).await,
            "container_logs" => {
                let tail = match input.get("tail") {
                    None | Some(Value::Null) => 200,
                    Some(v) => v
                        .as_u64()
                        .filter(|n| (1..=2000).contains(n))
                        .ok_or_else(|| ToolError::Input("tail must be 1 to 2000".into()))?,
                };
                self.logs(string(input, "service")?, tail).await
            }
            "http_get" => {
                let port = input
                    .get("port")
                    .and_then(Value::as_u64)
                    .filter(|p| (1..=65535).contains(p))
                    .ok_or_else(|| ToolError::Input("port must be 1 to 65535".into()))?;
                self.http_get(
                    string(input, "service")?,
                    port as u16,
                    string(input, "path")?,
                )
                .await
            }
            other => Err(ToolError::Unknown(other.to_string())),
        }
    }

    fn cluster(&self) -> Result<&crate::manifest::Cluster, ToolError> {
        self.desired.cluster(&self.cluster).ok_or_else(|| {
            ToolError::Failed(format!("cluster {} is no longer declared", self.cluster))
        })
    }

    async fn cluster_status(&self) -> Result<String, ToolError> {
        let cluster = self.cluster()?.clone();
        let only = DesiredState {
            clusters: vec![cluster],
        };
        let reports =
            crate::reconcile::report(self.docker.clone(), &only, Some(&self.journal), true).await;
        let rows: Vec<Value> = reports
            .iter()
            .map(|r| {
                json!({
                    "service": r.service,
                    "image": r.image,
                    "policy": r.policy,
                    "state": r.container.as_ref().map(|c| c.status.as_str()),
                    "health": r.container.as_ref().and_then(|c| c.health.map(|h| h.as_str())),
                    "exit_code": r.container.as_ref().and_then(|c| c.exit_code),
                    "started_at": r.container.as_ref().and_then(|c| c.started_at),
                    "drifts": r.drifts,
                    "repair": r.action.as_ref().map(ToString::to_string),
                    "tickets": r.tickets,
                    "escalated": r.escalated,
                    "held": r.held,
                    "error": r.error,
                })
            })
            .collect();
        Ok(pretty(&json!({"cluster": self.cluster, "services": rows})))
    }

    async fn ticket_with_timeline(&self, id: i64) -> Result<String, ToolError> {
        let failed = |e: crate::tickets::TicketError| ToolError::Failed(e.to_string());
        let ticket = self
            .journal
            .get(id)
            .await
            .map_err(failed)?
            .ok_or_else(|| ToolError::Failed(format!("no ticket {id}")))?;
        if ticket.cluster != self.cluster {
            return Err(ToolError::Failed(format!(
                "ticket {id} is of cluster {}, not {}",
                ticket.cluster, self.cluster
            )));
        }
        let timeline = self.journal.timeline(id).await.map_err(failed)?;
        Ok(pretty(&json!({"ticket": ticket, "timeline": timeline})))
    }

    async fn promql(&self, query: &str) -> Result<String, ToolError> {
        let cluster = self.cluster()?;
        let url = cluster.prometheus.url.as_deref().ok_or_else(|| {
            ToolError::Failed(format!(
                "cluster {} declares no Prometheus (spec.prometheus.url)",
                self.cluster
            ))
        })?;
        let prometheus = Prometheus::new(url, cluster.prometheus.timeout)
            .map_err(|e| ToolError::Failed(e.to_string()))?;
        let series = prometheus
            .query(query)
            .await
            .map_err(|e| ToolError::Failed(e.to_string()))?;
        Ok(pretty(&json!({"query": query, "series": series})))
    }

    /// The service's container, if it is the controller's own for this cluster.
    async fn owned_container(
        &self,
        service: &str,
    ) -> Result<bollard::models::ContainerInspectResponse, ToolError> {
        let cluster = self.cluster()?;
        if cluster.service(service).is_none() {
            return Err(ToolError::NotInCluster(
                service.to_string(),
                self.cluster.clone(),
            ));
        }
        let inspected = self
            .docker
            .inspect_container(service, None)
            .await
            .map_err(|e| ToolError::Failed(format!("inspect container {service}: {e}")))?;
        let key = ServiceKey::new(&self.cluster, service);
        match ObservedContainer::from_inspect(&inspected) {
            Some(c) if c.key == key => Ok(inspected),
            _ => Err(ToolError::Failed(format!(
                "the container named {service} is not the controller's container for {key}"
            ))),
        }
    }

    async fn logs(&self, service: &str, tail: u64) -> Result<String, ToolError> {
        self.owned_container(service).await?;
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            .tail(&tail.to_string())
            .build();
        let mut stream = self.docker.logs(service, Some(options));
        let mut text = String::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ToolError::Failed(format!("logs of {service}: {e}")))?;
            text.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        }
        if text.is_empty() {
            text = format!("(container {service} has logged nothing)");
        }
        Ok(text)
    }

    async fn http_get(&self, service: &str, port: u16, path: &str) -> Result<String, ToolError> {
        if !path.starts_with('/') {
            return Err(ToolError::Input("path must start with /".into()));
        }
        let inspected = self.owned_container(service).await?;
        let cluster = self.cluster()?;
        let declared = cluster.service(service).map(|s| &s.network_mode);
        // Its address on the network it is declared on; the host network is loopback.
        let address = match declared {
            Some(NetworkMode::Host) => "127.0.0.1".to_string(),
            _ => {
                let network = match declared {
                    Some(NetworkMode::Named(name)) => name.clone(),
                    _ => cluster.network.name.clone(),
                };
                inspected
                    .network_settings
                    .as_ref()
                    .and_then(|n| n.networks.as_ref())
                    .and_then(|n| n.get(&network))
                    .and_then(|e| e.ip_address.clone())
                    .filter(|ip| !ip.is_empty())
                    .ok_or_else(|| {
                        ToolError::Failed(format!(
                            "{service} has no address on network {network} (not running, or detached)"
                        ))
                    })?
            }
        };
        let url = format!("http://{address}:{port}{path}");
        let response = self
            .http
            .get(&url)
            .timeout(TOOL_TIMEOUT)
            .send()
            .await
            .map_err(|e| ToolError::Failed(format!("GET {url}: {e}")))?;
        let status = response.status().as_u16();
        let body = response
            .text()
            .await
            .map_err(|e| ToolError::Failed(format!("GET {url}: reading the body: {e}")))?;
        Ok(pretty(&json!({"url": url, "status": status, "body": body})))
    }
}

fn string<'a>(input: &'a Value, field: &str) -> Result<&'a str, ToolError> {
    input
        .get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ToolError::Input(format!("{field} (a non-empty string) is required")))
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("(unprintable: {e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_definitions_parse_name_every_tool_once_and_shell_comes_first() {
        let defs = definitions();
        let names: Vec<&str> = defs.iter().filter_map(|d| d["name"].as_str()).collect();
        assert_eq!(names[0], "shell");
        assert_eq!(&names[1..], READ_ONLY.as_slice());
        for d in &defs {
            assert_eq!(d["input_schema"]["type"], "object", "{d}");
            assert!(
                d["description"].as_str().is_some_and(|s| s.len() > 20),
                "{d}"
            );
        }
    }

    #[test]
    fn inputs_are_checked_before_anything_is_asked() {
        assert!(string(&json!({"query": ""}), "query").is_err());
        assert!(string(&json!({}), "query").is_err());
        assert_eq!(string(&json!({"query": "up"}), "query").unwrap(), "up");
    }
}
