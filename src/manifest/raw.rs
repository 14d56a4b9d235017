//! The manifest schema as written: field names, nesting and YAML types, nothing more.
//!
//! Every struct refuses unknown fields: `yamldoc::read_all` reports each one against the
//! field list serde derives from the struct, so a new field is known by being declared here.
//! The same types give the JSON Schema for editors (`operator schema manifest`, through
//! `yamldoc::schema`): each field's allowed values are written beside it (`schemars`
//! attributes, kept no stricter than `validate`), and `///` comments are what an editor
//! shows on hover, so implementation notes are `//` comments.
//! Values whose rules are richer than a type (ports, volumes, durations, names) stay text
//! here and are checked by `validate`, which can report all of them at once with their
//! lines; a wrong type or unknown field is reported too, and the rest is still checked.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

pub(super) const API_VERSION: &str = "operator/v1";
pub(super) const KIND: &str = "Cluster";

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a manifest (a mapping with apiVersion, kind, metadata and spec)"
)]
pub(super) struct Document {
    #[serde(deserialize_with = "api_version")]
    #[schemars(schema_with = "api_version_schema")]
    #[allow(dead_code, reason = "checked while deserializing")]
    pub api_version: (),
    #[serde(deserialize_with = "kind")]
    #[schemars(schema_with = "kind_schema")]
    #[allow(dead_code, reason = "checked while deserializing")]
    pub kind: (),
    pub metadata: Metadata,
    pub spec: Spec,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a mapping with name")]
pub(super) struct Metadata {
    pub name: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
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

#[derive(Debug, Deserialize, JsonSchema)]
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
    #[schemars(schema_with = "quorum")]
    pub quorum: Option<Scalar>,
    #[serde(default)]
    pub live: Option<GroupLive>,
    #[serde(default)]
    pub max_concurrent: Option<u32>,
    #[serde(default)]
    pub replacements: Option<GroupReplacements>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a mapping with checks and timeout")]
pub(super) struct GroupLive {
    #[serde(default)]
    pub checks: Vec<String>,
    #[serde(default)]
    #[schemars(schema_with = "crate::yamldoc::schema::optional_duration")]
    pub timeout: Option<Scalar>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a mapping with max and window")]
pub(super) struct GroupReplacements {
    #[serde(default)]
    pub max: Option<u32>,
    #[serde(default)]
    #[schemars(schema_with = "crate::yamldoc::schema::optional_duration")]
    pub window: Option<Scalar>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with model, safetyMode, maxTurns, maxSessionTime, maxInputTokens, maxOutputTokens, sessionsPerTicket, sessionBackoff and commandTimeout"
)]
pub(super) struct Agent {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    #[schemars(extend("enum" = ["observe", "approve", "execute", null]))]
    pub safety_mode: Option<String>,
    #[serde(default)]
    pub max_turns: Option<u32>,
    #[serde(default)]
    #[schemars(schema_with = "crate::yamldoc::schema::optional_duration")]
    pub max_session_time: Option<Scalar>,
    #[serde(default)]
    pub max_input_tokens: Option<u64>,
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
    #[serde(default)]
    pub sessions_per_ticket: Option<u32>,
    #[serde(default)]
    #[schemars(schema_with = "crate::yamldoc::schema::optional_duration")]
    pub session_backoff: Option<Scalar>,
    #[serde(default)]
    #[schemars(schema_with = "crate::yamldoc::schema::optional_duration")]
    pub command_timeout: Option<Scalar>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with url, interval and timeout"
)]
pub(super) struct Prometheus {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    #[schemars(schema_with = "crate::yamldoc::schema::optional_duration")]
    pub interval: Option<Scalar>,
    #[serde(default)]
    #[schemars(schema_with = "crate::yamldoc::schema::optional_duration")]
    pub timeout: Option<Scalar>,
}

#[derive(Debug, Deserialize, JsonSchema)]
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
    #[schemars(schema_with = "crate::yamldoc::schema::optional_duration")]
    pub for_duration: Option<Scalar>,
    #[serde(default)]
    #[schemars(extend("enum" = ["critical", "warning", "info", null]))]
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

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "an HTTP probe (a mapping with url, status, json and timeout)"
)]
pub(super) struct HttpProbe {
    pub url: String,
    // Wider than `u16` so that a wrong status is refused with its value by `validate`.
    #[serde(default)]
    #[schemars(range(min = 100, max = 599))]
    pub status: Option<i64>,
    #[serde(default)]
    pub json: Option<JsonTest>,
    #[serde(default)]
    #[schemars(schema_with = "crate::yamldoc::schema::optional_duration")]
    pub timeout: Option<Scalar>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a mapping with path and equals")]
pub(super) struct JsonTest {
    pub path: String,
    /// Any YAML value; missing is an error (write `equals: null` to expect null).
    pub equals: serde_json::Value,
}

#[derive(Debug, Deserialize, JsonSchema)]
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

#[derive(Debug, Deserialize, JsonSchema)]
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
    #[schemars(schema_with = "string_map")]
    pub env: BTreeMap<String, Scalar>,
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub volumes: Vec<String>,
    #[serde(default)]
    pub network_mode: Option<String>,
    #[serde(default)]
    #[schemars(schema_with = "string_map")]
    pub labels: BTreeMap<String, Scalar>,
    #[serde(default)]
    pub healthcheck: Option<Healthcheck>,
    #[serde(default)]
    pub depends_on: Vec<String>,
    #[serde(default)]
    pub restart_with: Vec<String>,
    #[serde(default)]
    #[schemars(extend("enum" = ["no", "always", "unless-stopped", "on-failure", false, null]))]
    pub restart_policy: Option<Scalar>,
    #[serde(default)]
    #[schemars(schema_with = "crate::yamldoc::schema::optional_duration")]
    pub stop_timeout: Option<Scalar>,
    // A scalar, so that a bare number (`stopSignal: 15`) is read too.
    #[serde(default)]
    #[schemars(schema_with = "stop_signal")]
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
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    untagged,
    expecting = "true, false, or a mapping with spec (observed or owned) and compose ({project, service})"
)]
pub(super) enum Adopt {
    Flag(bool),
    With(AdoptWith),
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AdoptWith {
    #[serde(default)]
    #[schemars(extend("enum" = ["observed", "owned", null]))]
    pub spec: Option<String>,
    #[serde(default)]
    pub compose: Option<AdoptCompose>,
}

/// `adopt.compose`: the container compose started for a service of a project, found by its
/// labels `com.docker.compose.project` and `com.docker.compose.service`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with project and service (the compose service; default: this service's name)"
)]
#[schemars(extend("required" = ["project"]))]
pub(super) struct AdoptCompose {
    // Required; optional here so that `validate` names it when it is missing (an untagged
    // `adopt` would only say that nothing matched).
    #[serde(default)]
    pub project: Option<String>,
    #[serde(default)]
    pub service: Option<String>,
}

/// `resources`: the container's limits (`docker run --cpus --memory`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a mapping with cpus and memory")]
pub(super) struct Resources {
    #[serde(default)]
    #[schemars(schema_with = "cpus_or_memory")]
    pub cpus: Option<Scalar>,
    #[serde(default)]
    #[schemars(schema_with = "cpus_or_memory")]
    pub memory: Option<Scalar>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a healthcheck (a mapping with test, interval, timeout, retries, startPeriod)"
)]
pub(super) struct Healthcheck {
    pub test: Args,
    #[serde(default)]
    #[schemars(schema_with = "crate::yamldoc::schema::optional_duration")]
    pub interval: Option<Scalar>,
    #[serde(default)]
    #[schemars(schema_with = "crate::yamldoc::schema::optional_duration")]
    pub timeout: Option<Scalar>,
    #[serde(default)]
    pub retries: Option<u32>,
    #[serde(default)]
    #[schemars(schema_with = "crate::yamldoc::schema::optional_duration")]
    pub start_period: Option<Scalar>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with policy, escalateTo, maxRestarts, window, backoff and stableAfter"
)]
pub(super) struct Remediation {
    #[serde(default)]
    #[schemars(extend("enum" = ["restart", "agent", "observe", null]))]
    pub policy: Option<String>,
    #[serde(default)]
    #[schemars(extend("enum" = ["person", "agent", null]))]
    pub escalate_to: Option<String>,
    #[serde(default)]
    pub max_restarts: Option<u32>,
    #[serde(default)]
    #[schemars(schema_with = "crate::yamldoc::schema::optional_duration")]
    pub window: Option<Scalar>,
    #[serde(default)]
    pub backoff: Option<Backoff>,
    #[serde(default)]
    #[schemars(schema_with = "crate::yamldoc::schema::optional_duration")]
    pub stable_after: Option<Scalar>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a mapping with initial and max")]
pub(super) struct Backoff {
    #[serde(default)]
    #[schemars(schema_with = "crate::yamldoc::schema::optional_duration")]
    pub initial: Option<Scalar>,
    #[serde(default)]
    #[schemars(schema_with = "crate::yamldoc::schema::optional_duration")]
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

/// A string, or a list of words (each a string, or a number or boolean read as written).
impl JsonSchema for Args {
    fn schema_name() -> Cow<'static, str> {
        "Args".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "a command line: a list of words, or one string split with shell rules",
            "anyOf": [
                crate::yamldoc::schema::exact_text(&[], "one line, split with shell rules"),
                {"type": "array", "items": {"type": "string"}},
            ],
        })
    }
}

/// Any scalar; the fields that take one say which (see the `schema_with` functions below).
impl JsonSchema for Scalar {
    fn schema_name() -> Cow<'static, str> {
        "Scalar".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": ["string", "number", "boolean", "null"]})
    }
}

fn api_version_schema(_: &mut SchemaGenerator) -> Schema {
    crate::yamldoc::schema::constant(API_VERSION)
}

fn kind_schema(_: &mut SchemaGenerator) -> Schema {
    crate::yamldoc::schema::constant(KIND)
}

/// `env` and `labels`: text values; a number or boolean is kept as written, a float or an
/// empty value is refused (`validate` says why).
fn string_map(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "additionalProperties": crate::yamldoc::schema::exact_text(&["integer", "boolean"], "text; a number or boolean is kept as written (a float is refused: quote it)"),
    })
}

/// `stopSignal`: a name (`SIGTERM`, `TERM`) or a number.
fn stop_signal(_: &mut SchemaGenerator) -> Schema {
    crate::yamldoc::schema::exact_text(&["number", "null"], super::signal::SIGNAL_FORMAT)
}

/// `quorum`: `majority`, or how many members must stay live.
fn quorum(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "anyOf": [
            {"type": "string", "const": "majority"},
            {"type": "integer", "minimum": 1},
            {"type": "null"},
        ],
    })
}

/// `resources.cpus` and `resources.memory`: a number, or text with a unit.
fn cpus_or_memory(_: &mut SchemaGenerator) -> Schema {
    let description = format!(
        "cpus: {}; memory: {}",
        super::resources::CPUS_FORMAT,
        super::resources::MEMORY_FORMAT
    );
    crate::yamldoc::schema::exact_text(&["number", "null"], &description)
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
