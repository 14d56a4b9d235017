//! The manifest schema as written: field names, nesting and YAML types, nothing more.
//!
//! Every struct refuses unknown fields: `yamldoc::read_all` reports each one against the
//! field list serde derives from the struct, so a new field is known by being declared here.
//! Values whose rules are richer than a type (ports, volumes, durations, names) stay text
//! here and are checked by `validate`, which can report all of them at once with their
//! lines; a wrong type or unknown field is reported too, and the rest is still checked.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

pub(super) const API_VERSION: &str = "operator/v1";
pub(super) const KIND: &str = "Cluster";

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a manifest (a mapping with apiVersion, kind, metadata and spec)"
)]
pub(super) struct Document {
    #[serde(deserialize_with = "api_version")]
    #[allow(dead_code, reason = "checked while deserializing")]
    pub api_version: (),
    #[serde(deserialize_with = "kind")]
    #[allow(dead_code, reason = "checked while deserializing")]
    pub kind: (),
    pub metadata: Metadata,
    pub spec: Spec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with name")]
pub(super) struct Metadata {
    pub name: String,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with network, services, prometheus, checks, agent, groups and maxConcurrentDisruptions"
)]
pub(super) struct Spec {
    #[serde(default)]
    pub network: Option<Network>,
    #[serde(default)]
    pub services: Vec<Service>,
    #[serde(default)]
    pub prometheus: Option<Prometheus>,
    #[serde(default)]
    pub checks: Vec<Check>,
    #[serde(default)]
    pub agent: Option<Agent>,
    #[serde(default)]
    pub groups: Vec<Group>,
    #[serde(default)]
    pub max_concurrent_disruptions: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with name, members or selector, quorum, live, maxConcurrent and replacements"
)]
pub(super) struct Group {
    pub name: String,
    #[serde(default)]
    pub members: Option<Vec<String>>,
    #[serde(default)]
    pub selector: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub quorum: Option<Scalar>,
    #[serde(default)]
    pub live: Option<GroupLive>,
    #[serde(default)]
    pub max_concurrent: Option<u32>,
    #[serde(default)]
    pub replacements: Option<GroupReplacements>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with checks and timeout")]
pub(super) struct GroupLive {
    #[serde(default)]
    pub checks: Vec<String>,
    #[serde(default)]
    pub timeout: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with max and window")]
pub(super) struct GroupReplacements {
    #[serde(default)]
    pub max: Option<u32>,
    #[serde(default)]
    pub window: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with model, safetyMode, maxTurns, maxSessionTime, maxInputTokens, maxOutputTokens, sessionsPerTicket, sessionBackoff and commandTimeout"
)]
pub(super) struct Agent {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub safety_mode: Option<String>,
    #[serde(default)]
    pub max_turns: Option<u32>,
    #[serde(default)]
    pub max_session_time: Option<Scalar>,
    #[serde(default)]
    pub max_input_tokens: Option<u64>,
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
    #[serde(default)]
    pub sessions_per_ticket: Option<u32>,
    #[serde(default)]
    pub session_backoff: Option<Scalar>,
    #[serde(default)]
    pub command_timeout: Option<Scalar>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with url, interval and timeout"
)]
pub(super) struct Prometheus {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub interval: Option<Scalar>,
    #[serde(default)]
    pub timeout: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a check (a mapping with name and one of expr, healthy or http)"
)]
pub(super) struct Check {
    pub name: String,
    #[serde(default)]
    pub expr: Option<String>,
    #[serde(default)]
    pub healthy: Option<String>,
    #[serde(default)]
    pub http: Option<HttpProbe>,
    #[serde(default, rename = "for")]
    pub for_duration: Option<Scalar>,
    #[serde(default)]
    pub severity: Option<String>,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub service_label: Option<String>,
    #[serde(default)]
    pub services: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub remediation: Option<Remediation>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "an HTTP probe (a mapping with url, status, json and timeout)"
)]
pub(super) struct HttpProbe {
    pub url: String,
    /// Wider than `u16` so that a wrong status is refused with its value by `validate`.
    #[serde(default)]
    pub status: Option<i64>,
    #[serde(default)]
    pub json: Option<JsonTest>,
    #[serde(default)]
    pub timeout: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with path and equals")]
pub(super) struct JsonTest {
    pub path: String,
    /// Any YAML value; missing is an error (write `equals: null` to expect null).
    pub equals: serde_json::Value,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with name, external and internal"
)]
pub(super) struct Network {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub external: bool,
    #[serde(default)]
    pub internal: bool,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a service (a mapping with at least name and image)"
)]
pub(super) struct Service {
    pub name: String,
    pub image: String,
    #[serde(default)]
    pub command: Option<Args>,
    #[serde(default)]
    pub entrypoint: Option<Args>,
    #[serde(default)]
    pub env: BTreeMap<String, Scalar>,
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub volumes: Vec<String>,
    #[serde(default)]
    pub network_mode: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, Scalar>,
    #[serde(default)]
    pub healthcheck: Option<Healthcheck>,
    #[serde(default)]
    pub depends_on: Vec<String>,
    #[serde(default)]
    pub restart_with: Vec<String>,
    #[serde(default)]
    pub restart_policy: Option<Scalar>,
    #[serde(default)]
    pub stop_timeout: Option<Scalar>,
    /// A scalar, so that a bare number (`stopSignal: 15`) is read too.
    #[serde(default)]
    pub stop_signal: Option<Scalar>,
    #[serde(default)]
    pub remediation: Option<Remediation>,
    #[serde(default)]
    pub adopt: Option<Adopt>,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub resources: Option<Resources>,
}

/// `adopt: true` (or `false`), or `adopt: {spec: observed | owned, compose: {project, service}}`.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "true, false, or a mapping with spec (observed or owned) and compose ({project, service})"
)]
pub(super) enum Adopt {
    Flag(bool),
    With(AdoptWith),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AdoptWith {
    #[serde(default)]
    pub spec: Option<String>,
    #[serde(default)]
    pub compose: Option<AdoptCompose>,
}

/// `adopt.compose`: the container compose started for a service of a project, found by its
/// labels `com.docker.compose.project` and `com.docker.compose.service`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with project and service (the compose service; default: this service's name)"
)]
pub(super) struct AdoptCompose {
    /// Required; optional here so that `validate` names it when it is missing (an untagged
    /// `adopt` would only say that nothing matched).
    #[serde(default)]
    pub project: Option<String>,
    #[serde(default)]
    pub service: Option<String>,
}

/// `resources`: the container's limits (`docker run --cpus --memory`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with cpus and memory")]
pub(super) struct Resources {
    #[serde(default)]
    pub cpus: Option<Scalar>,
    #[serde(default)]
    pub memory: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a healthcheck (a mapping with test, interval, timeout, retries, startPeriod)"
)]
pub(super) struct Healthcheck {
    pub test: Args,
    #[serde(default)]
    pub interval: Option<Scalar>,
    #[serde(default)]
    pub timeout: Option<Scalar>,
    #[serde(default)]
    pub retries: Option<u32>,
    #[serde(default)]
    pub start_period: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with policy, escalateTo, maxRestarts, window, backoff and stableAfter"
)]
pub(super) struct Remediation {
    #[serde(default)]
    pub policy: Option<String>,
    #[serde(default)]
    pub escalate_to: Option<String>,
    #[serde(default)]
    pub max_restarts: Option<u32>,
    #[serde(default)]
    pub window: Option<Scalar>,
    #[serde(default)]
    pub backoff: Option<Backoff>,
    #[serde(default)]
    pub stable_after: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with initial and max")]
pub(super) struct Backoff {
    #[serde(default)]
    pub initial: Option<Scalar>,
    #[serde(default)]
    pub max: Option<Scalar>,
}

/// A command line: a list of words, or one string to be split with shell rules.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Args {
    Line(String),
    List(Vec<String>),
}

impl<'de> Deserialize<'de> for Args {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ArgsVisitor;
        impl<'de> Visitor<'de> for ArgsVisitor {
            type Value = Args;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Args, E> {
                Ok(Args::Line(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Args, A::Error> {
                let mut words = Vec::new();
                while let Some(word) = seq.next_element::<String>()? {
                    words.push(word);
                }
                Ok(Args::List(words))
            }
        }
        deserializer.deserialize_any(ArgsVisitor)
    }
}

/// Any YAML scalar, kept with its type so that validation can say what it expected
/// (`env: {PORT: 8080}` is fine, `env: {VERSION: 1.10}` loses a zero and is refused).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Scalar {
    Str(String),
    Bool(bool),
    /// An integer, as decimal digits.
    Int(String),
    Float(f64),
    Null,
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl<'de> Visitor<'de> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v.to_string()))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Scalar, E> {
                Ok(Scalar::Int(v.to_string()))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Scalar, E> {
                Ok(Scalar::Int(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar::Float(v))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
                Ok(Scalar::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Scalar, E> {
                Ok(Scalar::Null)
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

fn api_version<'de, D: Deserializer<'de>>(deserializer: D) -> Result<(), D::Error> {
    crate::yamldoc::literal(deserializer, "apiVersion", API_VERSION)
}

fn kind<'de, D: Deserializer<'de>>(deserializer: D) -> Result<(), D::Error> {
    crate::yamldoc::literal(deserializer, "kind", KIND)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::yamldoc::{self, Diagnostic};

    const GOOD: &str = "\
apiVersion: operator/v1
kind: Cluster
metadata:
  name: demo
spec:
  services:
    - name: web
      image: busybox
      command: sleep 10
      env: {A: 1, B: true, C: x, D: 1.5, E: ~}
";

    fn read(text: &str) -> Result<Document, Diagnostic> {
        let mut docs = yamldoc::read::<Document>(Path::new("x.yaml"), text);
        assert_eq!(docs.len(), 1, "{docs:?}");
        docs.remove(0).map(|d| d.value)
    }

    #[test]
    fn valid_document_is_read() {
        let doc = read(GOOD).expect("valid");
        assert_eq!(doc.metadata.name, "demo");
        let web = &doc.spec.services[0];
        assert_eq!(web.command, Some(Args::Line("sleep 10".into())));
        assert_eq!(web.env["A"], Scalar::Int("1".into()));
        assert_eq!(web.env["B"], Scalar::Bool(true));
        assert_eq!(web.env["C"], Scalar::Str("x".into()));
        assert_eq!(web.env["D"], Scalar::Float(1.5));
        assert_eq!(web.env["E"], Scalar::Null);
    }

    #[test]
    fn command_of_the_wrong_type_says_what_is_accepted() {
        let err = read(&GOOD.replace("command: sleep 10", "command: {a: b}")).unwrap_err();
        assert_eq!(err.line, Some(9));
        assert_eq!(err.field, "spec.services[0].command");
        assert!(
            err.message.contains("a string or a list of strings"),
            "{err:?}"
        );
    }

    #[test]
    fn wrong_api_version_and_kind_point_at_their_value() {
        let err = read(&GOOD.replace("operator/v1", "v2")).unwrap_err();
        assert_eq!((err.line, err.field.as_str()), (Some(1), "apiVersion"));
        assert!(err.message.contains("\"v2\""), "{err:?}");
        let err = read(&GOOD.replace("kind: Cluster", "kind: Pod")).unwrap_err();
        assert_eq!((err.line, err.field.as_str()), (Some(2), "kind"));
        assert!(err.message.contains("\"Pod\""), "{err:?}");
    }

    #[test]
    fn missing_image_is_reported_on_its_service() {
        let err = read(&GOOD.replace("      image: busybox\n", "")).unwrap_err();
        assert_eq!(
            (err.line, err.field.as_str()),
            (Some(7), "spec.services[0]")
        );
        assert!(err.message.contains("missing field `image`"), "{err:?}");
    }
}
