//! The drill file schema as written: field names, nesting and YAML types, nothing more.
//!
//! Every struct refuses unknown fields (a typo never goes unnoticed). The same types give
//! the JSON Schema for editors (`operator schema drill`, through `yamldoc::schema`), each
//! field's allowed values written beside it, no stricter than the validation. Values whose rules are
//! richer than a type (durations, rates, sizes, names, ranges) stay text or wide integers
//! here and are checked by the validation, which reports all of them at once with their
//! lines; a wrong type or an unknown field stops the document.
//!
//! Fault parameters are one flat mapping beside `kind` (`kind: loss` + `probability: 0.3`),
//! as an SRE writes them; which parameter belongs to which kind is a validation rule, so
//! that a parameter given to the wrong kind is reported by name, with the kinds it belongs to.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

pub(super) const API_VERSION: &str = "operator/v1";
pub(super) const KIND: &str = "Drill";

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a drill (a mapping with apiVersion, kind, metadata and spec)"
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
    #[serde(default)]
    pub metadata: Option<Metadata>,
    pub spec: Spec,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a mapping with name and description")]
pub(super) struct Metadata {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with manifest, cluster, steadyState, faults, recoveryTimeout, workload, trials, remediation and seed"
)]
pub(super) struct Spec {
    pub manifest: String,
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default)]
    pub steady_state: Option<SteadyState>,
    #[serde(default)]
    pub faults: Vec<Fault>,
    #[serde(default)]
    #[schemars(schema_with = "crate::yamldoc::schema::optional_duration")]
    pub recovery_timeout: Option<Text>,
    #[serde(default)]
    pub workload: Option<Workload>,
    #[serde(default)]
    pub trials: Option<i64>,
    #[serde(default)]
    #[schemars(extend("enum" = ["controller", "agent", "baseline", null]))]
    pub remediation: Option<String>,
    #[serde(default)]
    pub seed: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with controller, hold and probes"
)]
pub(super) struct SteadyState {
    #[serde(default)]
    pub controller: Option<bool>,
    #[serde(default)]
    #[schemars(schema_with = "crate::yamldoc::schema::optional_duration")]
    pub hold: Option<Text>,
    #[serde(default)]
    pub probes: Vec<Probe>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a probe (a mapping with name and one of promql, http or command)"
)]
pub(super) struct Probe {
    pub name: String,
    #[serde(default)]
    pub promql: Option<String>,
    #[serde(default)]
    pub tolerance: Option<Tolerance>,
    #[serde(default)]
    pub http: Option<Http>,
    #[serde(default)]
    pub command: Option<String>,
    /// The command's bound (an HTTP probe's goes inside `http`).
    #[serde(default)]
    #[schemars(schema_with = "crate::yamldoc::schema::optional_duration")]
    pub timeout: Option<Text>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a mapping with min, max or equals")]
pub(super) struct Tolerance {
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
    #[serde(default)]
    pub equals: Option<f64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with url, status and timeout"
)]
pub(super) struct Http {
    pub url: String,
    #[serde(default)]
    pub status: Option<i64>,
    #[serde(default)]
    #[schemars(schema_with = "crate::yamldoc::schema::optional_duration")]
    pub timeout: Option<Text>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a fault (a mapping with target, kind, start, duration and the kind's parameters)"
)]
pub(super) struct Fault {
    pub target: Target,
    #[schemars(schema_with = "fault_kind")]
    pub kind: String,
    #[serde(default)]
    #[schemars(schema_with = "crate::yamldoc::schema::optional_duration")]
    pub start: Option<Text>,
    #[serde(default)]
    #[schemars(schema_with = "fault_duration")]
    pub duration: Option<Text>,
    // The parameters of every kind; `Params::given` lists them for the per-kind rules.
    #[serde(default)]
    pub signal: Option<Text>,
    #[serde(default)]
    pub probability: Option<f64>,
    #[serde(default)]
    pub rate: Option<Text>,
    #[serde(default)]
    pub burst: Option<Text>,
    #[serde(default)]
    #[schemars(schema_with = "crate::yamldoc::schema::optional_duration")]
    pub latency: Option<Text>,
    #[serde(default)]
    #[schemars(schema_with = "crate::yamldoc::schema::optional_duration")]
    pub delay: Option<Text>,
    #[serde(default)]
    #[schemars(schema_with = "crate::yamldoc::schema::optional_duration")]
    pub jitter: Option<Text>,
    #[serde(default)]
    pub from: Option<Vec<String>>,
    #[serde(default)]
    pub volume: Option<String>,
    #[serde(default)]
    pub percent: Option<i64>,
    #[serde(default)]
    pub workers: Option<i64>,
    #[serde(default)]
    pub network: Option<String>,
}

impl Fault {
    /// The parameters written for this fault (besides target, kind, start and duration).
    pub fn params_given(&self) -> Vec<&'static str> {
        let given = [
            ("signal", self.signal.is_some()),
            ("probability", self.probability.is_some()),
            ("rate", self.rate.is_some()),
            ("burst", self.burst.is_some()),
            ("latency", self.latency.is_some()),
            ("delay", self.delay.is_some()),
            ("jitter", self.jitter.is_some()),
            ("from", self.from.is_some()),
            ("volume", self.volume.is_some()),
            ("percent", self.percent.is_some()),
            ("workers", self.workers.is_some()),
            ("network", self.network.is_some()),
        ];
        given
            .into_iter()
            .filter(|(_, set)| *set)
            .map(|(name, _)| name)
            .collect()
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a target (a mapping with one of service, services, selector, random or query)"
)]
pub(super) struct Target {
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub services: Option<Vec<String>>,
    #[serde(default)]
    pub selector: Option<BTreeMap<String, Text>>,
    #[serde(default)]
    pub random: Option<Random>,
    #[serde(default)]
    pub query: Option<Query>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a mapping with among and count")]
pub(super) struct Random {
    #[serde(default)]
    pub among: Vec<String>,
    #[serde(default)]
    pub count: Option<i64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with promql, serviceLabel and services"
)]
pub(super) struct Query {
    pub promql: String,
    pub service_label: String,
    #[serde(default)]
    pub services: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a workload (a mapping with canary, or command and timeout)"
)]
pub(super) struct Workload {
    #[serde(default)]
    pub canary: Option<Canary>,
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    #[schemars(schema_with = "crate::yamldoc::schema::optional_duration")]
    pub timeout: Option<Text>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with kind, endpoints and rate"
)]
pub(super) struct Canary {
    #[schemars(extend("enum" = ["etcd"]))]
    pub kind: String,
    #[serde(default)]
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub rate: Option<i64>,
}

/// A scalar kept as the text it was written as: `30s`, but also `30` (a duration without
/// a unit, which validation refuses with a suggestion instead of serde's "expected a
/// string") or `1.5`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl Visitor<'_> for TextVisitor {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
        }
        deserializer.deserialize_any(TextVisitor)
    }
}

/// A string or a number, as written (no boolean, no null).
impl JsonSchema for Text {
    fn schema_name() -> Cow<'static, str> {
        "Text".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        crate::yamldoc::schema::exact_text(&["number"], "a string or a number")
    }
}

fn api_version_schema(_: &mut SchemaGenerator) -> Schema {
    crate::yamldoc::schema::constant(API_VERSION)
}

fn kind_schema(_: &mut SchemaGenerator) -> Schema {
    crate::yamldoc::schema::constant(KIND)
}

/// `kind` of a fault: one of [`super::KINDS`].
fn fault_kind(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string", "enum": super::KINDS})
}

/// `duration` of a fault: a duration, or `trial` (held until the trial ends).
fn fault_duration(generator: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "anyOf": [
            crate::yamldoc::schema::optional_duration(generator),
            {"type": "string", "const": super::HELD_FOR_THE_TRIAL},
        ],
    })
}

fn api_version<'de, D: Deserializer<'de>>(deserializer: D) -> Result<(), D::Error> {
    crate::yamldoc::literal(deserializer, "apiVersion", API_VERSION)
}

fn kind<'de, D: Deserializer<'de>>(deserializer: D) -> Result<(), D::Error> {
    crate::yamldoc::literal(deserializer, "kind", KIND)
}
