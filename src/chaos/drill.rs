//! Drill files into [`Drill`]s, every problem reported as `file:line: field: message`, the
//! way manifests are (`crate::yamldoc`; docs/chaos.md documents every field).
//!
//! Two levels of checking:
//! - [`load`] reads one file on its own: the schema (unknown fields, types), then every
//!   value (durations, ranges, signal names, which parameter belongs to which fault kind),
//!   all problems at once;
//! - [`load_against`] adds what needs the cluster: the cluster exists, targets, peers and
//!   volumes exist in it, a selector matches, no network fault on a host-networked service,
//!   probes and the canary aim only at loopback or the cluster's own services, and delay
//!   faults only where the kernel has netem. [`load_with_manifest`] reads the drill's
//!   manifest too and does both.
//!
//! Invalid entries are reported and left out; the rest is still checked (and still
//! cross-checked), so one `operator chaos validate` shows everything there is to fix.

mod against;
mod raw;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::spec::{
    Drill, FaultKind, FaultSpec, Probe, ProbeKind, Remediation, SteadyState, Target, Tolerance,
    Workload,
};
use crate::manifest::signal::{SIGNAL_FORMAT, parse_signal};
use crate::manifest::validate::dns_label;
use crate::manifest::volume::normalize;
use crate::manifest::{self, DesiredState, ManifestError};
use crate::yamldoc::{self, Diagnostic, DocLines, parse_duration};
use raw::Text;

/// `steadyState.hold` when not given.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(5);
/// `recoveryTimeout` when not given.
pub const DEFAULT_RECOVERY_TIMEOUT: Duration = Duration::from_secs(120);
/// `http.timeout` of an HTTP probe when not given.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(3);
/// `timeout` of a command probe when not given.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// `workload.timeout` of a command workload when not given.
pub const DEFAULT_WORKLOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// `workload.canary.rate` (writes per second) when not given, and its bounds.
pub const DEFAULT_CANARY_RATE: u32 = 20;
const MAX_CANARY_RATE: i64 = 1000;
/// `trials` when not given, and its bound (a drill is a bounded loop).
pub const DEFAULT_TRIALS: u32 = 1;
const MAX_TRIALS: i64 = 100;
/// `burst` of a bandwidth fault when not given: 32 KiB, enough for tbf at rates up to
/// ~25 Mbit/s with a 100 Hz timer (rate / HZ), and more than one full-size frame.
pub const DEFAULT_BURST_BYTES: u64 = 32 * 1024;
/// A burst below one full-size Ethernet frame (1514 bytes) would never let one through.
const MIN_BURST_BYTES: u64 = 1600;
/// `latency` of a bandwidth fault when not given: how long a packet may wait in tbf.
pub const DEFAULT_TBF_LATENCY: Duration = Duration::from_millis(50);
/// `workers` of a cpu-stress fault when not given, and its bound.
pub const DEFAULT_CPU_WORKERS: u32 = 1;
const MAX_CPU_WORKERS: i64 = 64;

/// Every fault kind, as written, in the order docs/chaos.md lists them.
const KINDS: &[&str] = &[
    "kill",
    "stop",
    "pause",
    "freeze",
    "restart",
    "remove",
    "network-disconnect",
    "loss",
    "bandwidth",
    "delay",
    "partition",
    "disk-fill",
    "cpu-stress",
];

/// `duration: trial`: the fault is held until its trial ends.
pub const HELD_FOR_THE_TRIAL: &str = "trial";

/// The parameters each kind takes (besides target, kind, start and duration).
fn params_of(kind: &str) -> &'static [&'static str] {
    match kind {
        "kill" => &["signal"],
        "network-disconnect" => &["network"],
        "loss" => &["probability"],
        "bandwidth" => &["rate", "burst", "latency"],
        "delay" => &["delay", "jitter"],
        "partition" => &["from"],
        "disk-fill" => &["volume", "percent"],
        "cpu-stress" => &["workers"],
        _ => &[],
    }
}

/// Reads and checks one drill file on its own (see the module doc for what is checked).
///
/// `cluster` is empty when the file omits it (allowed when the manifest declares one
/// cluster): [`load_against`] fills it in. `manifest` is resolved against the drill file's
/// folder and must exist.
///
/// # Errors
/// Every problem of the file, in line order; a file that cannot be read is one diagnostic
/// without a line.
pub fn load(path: &Path) -> Result<Drill, Vec<Diagnostic>> {
    let (doc, lines) = read(path)?;
    let mut out = Vec::new();
    let checked = check_file(doc, path, &lines, &mut out);
    finish(checked.drill, out)
}

/// [`load`], and the checks against `desired` (the drill's manifest, loaded). `netem_check`
/// says whether delay faults can run here (`Err` gives the reason); it is called only when
/// the drill has a delay fault.
///
/// # Errors
/// Every problem of the file and every disagreement with the manifest, in line order.
pub fn load_against(
    path: &Path,
    desired: &DesiredState,
    netem_check: &dyn Fn() -> Result<(), String>,
) -> Result<Drill, Vec<Diagnostic>> {
    let (doc, lines) = read(path)?;
    let mut out = Vec::new();
    let mut checked = check_file(doc, path, &lines, &mut out);
    let mut v = Validator {
        file: path,
        lines: &lines,
        out: &mut out,
    };
    against::check(&mut checked, desired, netem_check, &mut v);
    finish(checked.drill, out)
}

/// Reads the drill, then the manifest it names (`spec.manifest`, as `operator validate`
/// reads it), then checks one against the other: what `operator chaos validate` and
/// `operator chaos run` need. Returns the drill and the desired state it was checked with.
///
/// # Errors
/// The drill's problems, the manifest's (at their own file and line), and the
/// disagreements between them. A manifest that cannot be read is reported at `spec.manifest`.
pub fn load_with_manifest(
    path: &Path,
    netem_check: &dyn Fn() -> Result<(), String>,
) -> Result<(Drill, DesiredState), Vec<Diagnostic>> {
    let (doc, lines) = read(path)?;
    let mut out = Vec::new();
    let mut checked = check_file(doc, path, &lines, &mut out);
    if !checked.manifest_found {
        // Already reported at spec.manifest; the checks against it cannot run.
        return Err(sorted(out));
    }
    let desired = match manifest::load(std::slice::from_ref(&checked.drill.manifest)) {
        Ok(desired) => Some(desired),
        Err(ManifestError::Invalid(diagnostics)) => {
            out.extend(diagnostics);
            None
        }
        Err(other) => {
            out.push(Diagnostic {
                path: path.to_path_buf(),
                line: Some(lines.line_of("spec.manifest")),
                field: "spec.manifest".into(),
                message: other.to_string(),
            });
            None
        }
    };
    let Some(desired) = desired else {
        return Err(sorted(out));
    };
    let mut v = Validator {
        file: path,
        lines: &lines,
        out: &mut out,
    };
    against::check(&mut checked, &desired, netem_check, &mut v);
    finish(checked.drill, out).map(|drill| (drill, desired))
}

fn finish(drill: Drill, out: Vec<Diagnostic>) -> Result<Drill, Vec<Diagnostic>> {
    if out.is_empty() {
        Ok(drill)
    } else {
        Err(sorted(out))
    }
}

/// File order (the drill's first, then a manifest's), then line order: the order in which
/// a reader would fix them. The sort is stable, so one line's problems keep their order.
fn sorted(mut out: Vec<Diagnostic>) -> Vec<Diagnostic> {
    let first = out.first().map(|d| d.path.clone());
    out.sort_by_key(|d| (Some(&d.path) != first.as_ref(), d.path.clone(), d.line));
    out
}

/// The one document of a drill file, with its lines.
fn read(path: &Path) -> Result<(raw::Document, DocLines), Vec<Diagnostic>> {
    let whole_file = |message: String| {
        vec![Diagnostic {
            path: path.to_path_buf(),
            line: None,
            field: String::new(),
            message,
        }]
    };
    let bytes =
        fs::read(path).map_err(|e| whole_file(format!("cannot read the drill file: {e}")))?;
    let text = yamldoc::decode(path, &bytes).map_err(|d| vec![d])?;
    let mut first = None;
    let mut out = Vec::new();
    for doc in yamldoc::read::<raw::Document>(path, text) {
        match doc {
            Ok(doc) if first.is_none() => first = Some((doc.value, doc.lines)),
            Ok(doc) => out.push(Diagnostic {
                path: path.to_path_buf(),
                line: Some(doc.lines.line_of("")),
                field: String::new(),
                message: "a second drill in the same file: one drill per file (the file is \
                          what `operator chaos run` takes and what the journal names)"
                    .into(),
            }),
            Err(diagnostic) => out.push(diagnostic),
        }
    }
    match first {
        Some(first) if out.is_empty() => Ok(first),
        None if out.is_empty() => Err(whole_file(
            "no drill in the file (expected one document with `apiVersion: operator/v1` and \
             `kind: Drill`)"
                .into(),
        )),
        _ => Err(out),
    }
}

/// A drill that went through [`check_file`], with where its kept entries were written, for
/// the checks against the manifest.
struct Checked {
    drill: Drill,
    /// For each kept fault, where it was written.
    faults: Vec<FaultAt>,
    /// For each kept probe, its index in `spec.steadyState.probes`.
    probes: Vec<usize>,
    /// For each kept canary endpoint, its index in `spec.workload.canary.endpoints`.
    endpoints: Vec<usize>,
    /// `spec.manifest` names an existing path.
    manifest_found: bool,
}

struct FaultAt {
    /// Index in `spec.faults`.
    index: usize,
    /// The target was written `service: NAME` (rather than `services: [...]`).
    by_service: bool,
}

struct Validator<'a> {
    file: &'a Path,
    lines: &'a DocLines,
    out: &'a mut Vec<Diagnostic>,
}

impl Validator<'_> {
    fn error(&mut self, field: &str, message: String) {
        self.out.push(Diagnostic {
            path: self.file.to_path_buf(),
            line: Some(self.lines.line_of(field)),
            field: field.to_string(),
            message,
        });
    }

    /// A duration field, `default` when absent or invalid (the invalid one is reported).
    fn duration(&mut self, field: &str, raw: Option<Text>, default: Duration) -> Duration {
        let Some(Text(text)) = raw else {
            return default;
        };
        match parse_duration(&text) {
            Ok(d) => d,
            Err(why) => {
                self.error(field, why);
                default
            }
        }
    }

    /// A duration that must be longer than zero (a timeout, a hold time of a fault).
    fn positive(&mut self, field: &str, raw: Option<Text>, default: Duration) -> Duration {
        let written = raw.as_ref().map(|t| t.0.clone());
        let d = self.duration(field, raw, default);
        if let Some(text) = written.filter(|_| d.is_zero()) {
            self.error(
                field,
                format!("\"{text}\" is zero: it must be longer than 0s"),
            );
        }
        d
    }

    /// A count in `min..=max`; `None` (reported) outside.
    fn count(&mut self, field: &str, value: i64, min: i64, max: i64) -> Option<u32> {
        if (min..=max).contains(&value) {
            u32::try_from(value).ok()
        } else {
            self.error(
                field,
                format!("{value} is out of range: expected {min} to {max}"),
            );
            None
        }
    }

    fn name(&mut self, field: &str, what: &str, name: &str) {
        if let Err(why) = dns_label(name) {
            self.error(field, format!("invalid {what} \"{name}\": {why}"));
        }
    }
}

/// Everything that can be checked from the file alone.
fn check_file(
    doc: raw::Document,
    file: &Path,
    lines: &DocLines,
    out: &mut Vec<Diagnostic>,
) -> Checked {
    let mut v = Validator { file, lines, out };
    let metadata = doc.metadata.unwrap_or(raw::Metadata {
        name: None,
        description: None,
    });
    let name = match metadata.name {
        Some(name) => {
            v.name("metadata.name", "drill name", &name);
            name
        }
        None => {
            let stem = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Err(why) = dns_label(&stem) {
                v.error(
                    "metadata.name",
                    format!(
                        "the drill is named after its file, \"{stem}\", which is not a valid name ({why}): set metadata.name"
                    ),
                );
            }
            stem
        }
    };
    let spec = doc.spec;
    let (manifest, manifest_found) = v.manifest(file, &spec.manifest);
    let cluster = match spec.cluster {
        Some(cluster) => {
            v.name("spec.cluster", "cluster name", &cluster);
            cluster
        }
        None => String::new(),
    };
    let (steady_state, probes) = v.steady_state(spec.steady_state);
    if spec.faults.is_empty() {
        v.error(
            "spec.faults",
            "a drill needs at least one fault (spec.faults is empty or missing)".into(),
        );
    }
    let mut faults = Vec::new();
    let mut fault_indices = Vec::new();
    for (i, raw) in spec.faults.into_iter().enumerate() {
        let by_service = raw.target.service.is_some();
        if let Some(fault) = v.fault(&format!("spec.faults[{i}]"), raw) {
            faults.push(fault);
            fault_indices.push(FaultAt {
                index: i,
                by_service,
            });
        }
    }
    let recovery_timeout = v.positive(
        "spec.recoveryTimeout",
        spec.recovery_timeout,
        DEFAULT_RECOVERY_TIMEOUT,
    );
    let (workload, endpoints) = match spec.workload {
        Some(raw) => v.workload(raw),
        None => (None, Vec::new()),
    };
    let trials = match spec.trials {
        Some(n) => v
            .count("spec.trials", n, 1, MAX_TRIALS)
            .unwrap_or(DEFAULT_TRIALS),
        None => DEFAULT_TRIALS,
    };
    let remediation = match spec.remediation.as_deref() {
        None | Some("controller") => Remediation::Controller,
        Some("agent") => Remediation::Agent,
        Some("baseline") => Remediation::Baseline,
        Some(other) => {
            v.error(
                "spec.remediation",
                format!("unknown remediation \"{other}\": expected controller, agent or baseline"),
            );
            Remediation::Controller
        }
    };
    Checked {
        drill: Drill {
            name,
            source: file.to_path_buf(),
            description: metadata.description,
            manifest,
            cluster,
            steady_state,
            faults,
            recovery_timeout,
            workload,
            trials,
            remediation,
            seed: spec.seed,
        },
        faults: fault_indices,
        probes,
        endpoints,
        manifest_found,
    }
}

impl Validator<'_> {
    /// `spec.manifest` resolved against the drill file's folder (lexically, as a reader of
    /// the file would), and whether it exists.
    fn manifest(&mut self, file: &Path, written: &str) -> (PathBuf, bool) {
        if written.trim().is_empty() {
            self.error(
                "spec.manifest",
                "the manifest path is empty: name the manifest file or folder of the cluster, relative to this file"
                    .into(),
            );
            return (PathBuf::new(), false);
        }
        let dir = std::path::absolute(file)
            .map(|p| normalize(&p))
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        let resolved = normalize(&dir.join(written));
        let found = resolved.exists();
        if !found {
            self.error(
                "spec.manifest",
                format!(
                    "manifest \"{written}\" not found (resolved against the drill file's folder: {})",
                    resolved.display()
                ),
            );
        }
        (resolved, found)
    }

    fn steady_state(&mut self, raw: Option<raw::SteadyState>) -> (SteadyState, Vec<usize>) {
        let raw = raw.unwrap_or(raw::SteadyState {
            controller: None,
            hold: None,
            probes: Vec::new(),
        });
        let controller = raw.controller.unwrap_or(true);
        if !controller && raw.probes.is_empty() {
            self.error(
                "spec.steadyState.controller",
                "with controller: false and no probes, nothing judges the steady state: add a probe or set controller: true"
                    .into(),
            );
        }
        let hold = self.duration("spec.steadyState.hold", raw.hold, DEFAULT_HOLD);
        let mut probes = Vec::new();
        let mut indices = Vec::new();
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        for (i, raw) in raw.probes.into_iter().enumerate() {
            let field = format!("spec.steadyState.probes[{i}]");
            if let Some(&first) = names.get(&raw.name) {
                self.error(
                    &format!("{field}.name"),
                    format!(
                        "duplicate probe name \"{}\" (already used by probes[{first}])",
                        raw.name
                    ),
                );
            } else {
                names.insert(raw.name.clone(), i);
            }
            if let Some(probe) = self.probe(&field, raw) {
                probes.push(probe);
                indices.push(i);
            }
        }
        (
            SteadyState {
                controller,
                probes,
                hold,
            },
            indices,
        )
    }

    fn probe(&mut self, field: &str, raw: raw::Probe) -> Option<Probe> {
        self.name(&format!("{field}.name"), "probe name", &raw.name);
        let given: Vec<&str> = [
            ("promql", raw.promql.is_some()),
            ("http", raw.http.is_some()),
            ("command", raw.command.is_some()),
        ]
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(name, _)| name)
        .collect();
        match given.as_slice() {
            [] => {
                self.error(field, "a probe needs one of promql, http or command".into());
                return None;
            }
            [_] => {}
            several => {
                self.error(
                    field,
                    format!(
                        "a probe has exactly one of promql, http or command; this one has {}",
                        several.join(" and ")
                    ),
                );
                return None;
            }
        }
        if raw.tolerance.is_some() && raw.promql.is_none() {
            self.error(
                &format!("{field}.tolerance"),
                "tolerance applies to promql probes only".into(),
            );
        }
        if raw.timeout.is_some() && raw.command.is_none() {
            let hint = if raw.http.is_some() {
                " (an http probe's timeout goes inside http:)"
            } else {
                " (a promql probe is bounded by the cluster's spec.prometheus.timeout)"
            };
            self.error(
                &format!("{field}.timeout"),
                format!("timeout applies to command probes only{hint}"),
            );
        }
        let kind = if let Some(query) = raw.promql {
            let tolerance = self.tolerance(field, raw.tolerance);
            if query.trim().is_empty() {
                self.error(&format!("{field}.promql"), "the query is empty".into());
                return None;
            }
            if let Some(why) = crate::promql::refusal(&query) {
                self.error(&format!("{field}.promql"), why);
                return None;
            }
            ProbeKind::Promql {
                query,
                tolerance: tolerance?,
            }
        } else if let Some(http) = raw.http {
            let url_ok = self.url(&format!("{field}.http.url"), &http.url);
            let status = match http.status {
                None => 200,
                Some(s) => match u16::try_from(s) {
                    Ok(s @ 100..=599) => s,
                    _ => {
                        self.error(
                            &format!("{field}.http.status"),
                            format!("invalid HTTP status {s}: expected 100 to 599"),
                        );
                        return None;
                    }
                },
            };
            let timeout = self.positive(
                &format!("{field}.http.timeout"),
                http.timeout,
                DEFAULT_HTTP_TIMEOUT,
            );
            if !url_ok {
                return None;
            }
            ProbeKind::Http {
                url: http.url,
                status,
                timeout,
            }
        } else {
            let command = raw.command.unwrap_or_default();
            let timeout = self.positive(
                &format!("{field}.timeout"),
                raw.timeout,
                DEFAULT_COMMAND_TIMEOUT,
            );
            if command.trim().is_empty() {
                self.error(&format!("{field}.command"), "the command is empty".into());
                return None;
            }
            ProbeKind::Command { command, timeout }
        };
        Some(Probe {
            name: raw.name,
            kind,
        })
    }

    fn tolerance(&mut self, probe: &str, raw: Option<raw::Tolerance>) -> Option<Tolerance> {
        let field = format!("{probe}.tolerance");
        let Some(raw) = raw else {
            self.error(
                probe,
                "a promql probe needs a tolerance: {min: N}, {max: N}, {min: N, max: M} or {equals: N}"
                    .into(),
            );
            return None;
        };
        for (name, value) in [("min", raw.min), ("max", raw.max), ("equals", raw.equals)] {
            if value.is_some_and(|v| !v.is_finite()) {
                self.error(&format!("{field}.{name}"), "must be a finite number".into());
                return None;
            }
        }
        match (raw.min, raw.max, raw.equals) {
            (None, None, Some(v)) => Some(Tolerance {
                min: Some(v),
                max: Some(v),
            }),
            (_, _, Some(_)) => {
                self.error(
                    &format!("{field}.equals"),
                    "equals is one exact value: give it alone, or min and/or max instead".into(),
                );
                None
            }
            (None, None, None) => {
                self.error(
                    &field,
                    "an empty tolerance accepts nothing useful: give min, max or equals".into(),
                );
                None
            }
            (Some(min), Some(max), None) if min > max => {
                self.error(
                    &format!("{field}.max"),
                    format!("max {max} is below min {min}: no value would be accepted"),
                );
                None
            }
            (min, max, None) => Some(Tolerance { min, max }),
        }
    }

    /// An `http://` or `https://` URL with a host. Which hosts are allowed needs the cluster
    /// (see `against`).
    fn url(&mut self, field: &str, text: &str) -> bool {
        match reqwest::Url::parse(text) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => true,
            Ok(url) => {
                self.error(
                    field,
                    format!(
                        "unsupported URL \"{text}\": expected http:// or https:// with a host, got scheme {}",
                        url.scheme()
                    ),
                );
                false
            }
            Err(e) => {
                self.error(field, format!("invalid URL \"{text}\": {e}"));
                false
            }
        }
    }

    fn fault(&mut self, field: &str, raw: raw::Fault) -> Option<FaultSpec> {
        let target = self.target(&format!("{field}.target"), &raw.target);
        let start = self.duration(&format!("{field}.start"), raw.start.clone(), Duration::ZERO);
        let kind_name = raw.kind.as_str();
        if !KINDS.contains(&kind_name) {
            self.error(
                &format!("{field}.kind"),
                format!(
                    "unknown fault kind \"{kind_name}\": expected one of {}",
                    KINDS.join(", ")
                ),
            );
            return None;
        }
        let mut ok = true;
        let allowed = params_of(kind_name);
        for param in raw.params_given() {
            if allowed.contains(&param) {
                continue;
            }
            ok = false;
            let owners: Vec<&str> = KINDS
                .iter()
                .copied()
                .filter(|k| params_of(k).contains(&param))
                .collect();
            let takes = if allowed.is_empty() {
                format!("{kind_name} takes no parameters")
            } else {
                format!("{kind_name} takes {}", allowed.join(", "))
            };
            let hint = if kind_name == "loss" && param == "percent" {
                " (write probability: 0.3 for 30% of packets)".to_string()
            } else {
                String::new()
            };
            self.error(
                &format!("{field}.{param}"),
                format!(
                    "{param} is not a parameter of kind {kind_name}: {takes}{hint}; {param} belongs to {}",
                    owners.join(", ")
                ),
            );
        }
        let kind = self.kind(field, kind_name, &raw);
        let instant = matches!(kind_name, "kill" | "restart" | "remove");
        let duration = match (&raw.duration, instant) {
            (Some(_), true) => {
                self.error(
                    &format!("{field}.duration"),
                    format!(
                        "{kind_name} is instant: it has no duration (nothing is held or undone; what the drill measures is the repair)"
                    ),
                );
                ok = false;
                None
            }
            (None, true) => None,
            (None, false) => {
                self.error(
                    field,
                    format!(
                        "kind {kind_name} needs a duration: how long the fault is held before it is undone (e.g. duration: 20s), or `trial` to hold it until the trial ends"
                    ),
                );
                ok = false;
                None
            }
            // Held until the trial ends (recovered, or its recovery timeout spent): how a
            // drill asks whether the controller repairs the fault itself.
            (Some(Text(t)), false) if t == HELD_FOR_THE_TRIAL => None,
            (Some(_), false) => Some(self.positive(
                &format!("{field}.duration"),
                raw.duration.clone(),
                Duration::from_secs(1),
            )),
        };
        if let (Some(FaultKind::Partition { from }), Some(target)) = (&kind, &target) {
            let hit: &[String] = match target {
                Target::Services { services } => services,
                Target::Random { among, .. } => among,
                _ => &[],
            };
            for (j, peer) in from.iter().enumerate() {
                if hit.contains(peer) {
                    self.error(
                        &format!("{field}.from[{j}]"),
                        format!("\"{peer}\" is also a target: a service cannot be partitioned from itself"),
                    );
                    ok = false;
                }
            }
        }
        Some(FaultSpec {
            target: target?,
            kind: kind?,
            start,
            duration,
        })
        .filter(|_| ok)
    }

    /// The kind and its parameters; `None` (reported) when a parameter is invalid or missing.
    fn kind(&mut self, field: &str, kind: &str, raw: &raw::Fault) -> Option<FaultKind> {
        let missing = |v: &mut Self, param: &str, example: &str| {
            v.error(
                field,
                format!("kind {kind} needs {param} (e.g. {param}: {example})"),
            );
            None
        };
        Some(match kind {
            "kill" => {
                let signal = match &raw.signal {
                    None => "SIGKILL".to_string(),
                    Some(Text(text)) => self.signal(&format!("{field}.signal"), text)?,
                };
                FaultKind::Kill { signal }
            }
            "stop" => FaultKind::Stop,
            "pause" => FaultKind::Pause,
            "freeze" => FaultKind::Freeze,
            "restart" => FaultKind::Restart,
            "remove" => FaultKind::Remove,
            "network-disconnect" => {
                let network = raw.network.clone();
                if network.as_deref().is_some_and(|n| n.trim().is_empty()) {
                    self.error(
                        &format!("{field}.network"),
                        "the network name is empty (leave network out for the cluster network)"
                            .into(),
                    );
                    return None;
                }
                FaultKind::NetworkDisconnect { network }
            }
            "loss" => {
                let Some(p) = raw.probability else {
                    return missing(self, "probability", "0.3");
                };
                if !(p > 0.0 && p <= 1.0) {
                    self.error(
                        &format!("{field}.probability"),
                        format!(
                            "probability {p} is out of range: expected more than 0 and at most 1 (0.3 drops 30% of packets)"
                        ),
                    );
                    return None;
                }
                FaultKind::Loss { probability: p }
            }
            "bandwidth" => {
                let Some(Text(rate)) = &raw.rate else {
                    return missing(self, "rate", "1mbit");
                };
                let rate_bits = match parse_rate(rate) {
                    Ok(r) => r,
                    Err(why) => {
                        self.error(&format!("{field}.rate"), why);
                        return None;
                    }
                };
                let burst_bytes = match &raw.burst {
                    None => DEFAULT_BURST_BYTES,
                    Some(Text(text)) => match parse_size(text) {
                        Ok(b) if b >= MIN_BURST_BYTES => b,
                        Ok(b) => {
                            self.error(
                                &format!("{field}.burst"),
                                format!(
                                    "burst \"{text}\" ({b} bytes) is below one full-size frame: at least {MIN_BURST_BYTES} bytes, or no packet would ever pass"
                                ),
                            );
                            return None;
                        }
                        Err(why) => {
                            self.error(&format!("{field}.burst"), why);
                            return None;
                        }
                    },
                };
                let latency = self.positive(
                    &format!("{field}.latency"),
                    raw.latency.clone(),
                    DEFAULT_TBF_LATENCY,
                );
                FaultKind::Bandwidth {
                    rate_bits,
                    burst_bytes,
                    latency,
                }
            }
            "delay" => {
                if raw.delay.is_none() {
                    return missing(self, "delay", "100ms");
                }
                let delay =
                    self.positive(&format!("{field}.delay"), raw.delay.clone(), Duration::ZERO);
                let jitter = raw
                    .jitter
                    .clone()
                    .map(|j| self.duration(&format!("{field}.jitter"), Some(j), Duration::ZERO));
                if delay.is_zero() {
                    return None;
                }
                FaultKind::Delay { delay, jitter }
            }
            "partition" => {
                let Some(from) = &raw.from else {
                    return missing(self, "from", "[etcd0, etcd2]");
                };
                if from.is_empty() {
                    self.error(
                        &format!("{field}.from"),
                        "from is empty: name the services to cut the target from".into(),
                    );
                    return None;
                }
                if !self.unique_names(&format!("{field}.from"), from) {
                    return None;
                }
                FaultKind::Partition { from: from.clone() }
            }
            "disk-fill" => {
                let Some(volume) = &raw.volume else {
                    return missing(self, "volume", "etcd1-data");
                };
                if volume.trim().is_empty() {
                    self.error(&format!("{field}.volume"), "the volume is empty".into());
                    return None;
                }
                let Some(percent) = raw.percent else {
                    return missing(self, "percent", "95");
                };
                let percent = self.count(&format!("{field}.percent"), percent, 1, 100)?;
                FaultKind::DiskFill {
                    volume: volume.clone(),
                    percent: u8::try_from(percent).ok()?,
                }
            }
            "cpu-stress" => {
                let workers = match raw.workers {
                    None => DEFAULT_CPU_WORKERS,
                    Some(n) => self.count(&format!("{field}.workers"), n, 1, MAX_CPU_WORKERS)?,
                };
                FaultKind::CpuStress { workers }
            }
            // Unknown kinds are refused by the caller.
            _ => return None,
        })
    }

    /// A kill's signal, canonical. SIGSTOP is refused: it is the freeze kind, which is held
    /// and undone (a kill is instant: nothing would ever send SIGCONT).
    fn signal(&mut self, field: &str, text: &str) -> Option<String> {
        let upper = text.trim().to_ascii_uppercase();
        if upper.strip_prefix("SIG").unwrap_or(&upper) == "STOP" {
            self.error(
                field,
                "SIGSTOP is the freeze kind (held for a duration, then undone with SIGCONT): a kill is instant and would leave the process stopped"
                    .into(),
            );
            return None;
        }
        match parse_signal(text) {
            Ok(signal) => Some(signal),
            Err(why) => {
                self.error(
                    field,
                    format!("invalid signal \"{text}\": {why} (expected {SIGNAL_FORMAT})"),
                );
                None
            }
        }
    }

    /// Non-empty, distinct names; reported at the offending item.
    fn unique_names(&mut self, field: &str, names: &[String]) -> bool {
        let mut seen = BTreeSet::new();
        let mut ok = true;
        for (j, name) in names.iter().enumerate() {
            if name.trim().is_empty() {
                self.error(&format!("{field}[{j}]"), "the service name is empty".into());
                ok = false;
            } else if !seen.insert(name) {
                self.error(
                    &format!("{field}[{j}]"),
                    format!("\"{name}\" is listed twice"),
                );
                ok = false;
            }
        }
        ok
    }

    fn target(&mut self, field: &str, raw: &raw::Target) -> Option<Target> {
        let given: Vec<&str> = [
            ("service", raw.service.is_some()),
            ("services", raw.services.is_some()),
            ("selector", raw.selector.is_some()),
            ("random", raw.random.is_some()),
            ("query", raw.query.is_some()),
        ]
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(name, _)| name)
        .collect();
        if given.len() != 1 {
            let message = if given.is_empty() {
                "a target needs one of service, services, selector, random or query".to_string()
            } else {
                format!(
                    "a target has exactly one of service, services, selector, random or query; this one has {}",
                    given.join(" and ")
                )
            };
            self.error(field, message);
            return None;
        }
        if let Some(service) = &raw.service {
            if service.trim().is_empty() {
                self.error(
                    &format!("{field}.service"),
                    "the service name is empty".into(),
                );
                return None;
            }
            return Some(Target::Services {
                services: vec![service.clone()],
            });
        }
        if let Some(services) = &raw.services {
            if services.is_empty() {
                self.error(
                    &format!("{field}.services"),
                    "services is empty: name at least one".into(),
                );
                return None;
            }
            return self
                .unique_names(&format!("{field}.services"), services)
                .then(|| Target::Services {
                    services: services.clone(),
                });
        }
        if let Some(selector) = &raw.selector {
            if selector.is_empty() {
                self.error(
                    &format!("{field}.selector"),
                    "an empty selector would match every service: name at least one label (or use random)"
                        .into(),
                );
                return None;
            }
            return Some(Target::Selector {
                labels: selector
                    .iter()
                    .map(|(k, v)| (k.clone(), v.0.clone()))
                    .collect(),
            });
        }
        if let Some(random) = &raw.random {
            let among_ok = self.unique_names(&format!("{field}.random.among"), &random.among);
            let count = match random.count {
                None => Some(1),
                Some(n) => self.count(&format!("{field}.random.count"), n, 1, i64::from(u32::MAX)),
            }?;
            if !random.among.is_empty() && count as usize > random.among.len() {
                self.error(
                    &format!("{field}.random.count"),
                    format!(
                        "count {count} is more than the {} services listed in among",
                        random.among.len()
                    ),
                );
                return None;
            }
            return among_ok.then(|| Target::Random {
                among: random.among.clone(),
                count,
            });
        }
        let query = raw.query.as_ref()?;
        let mut ok = true;
        if query.promql.trim().is_empty() {
            self.error(
                &format!("{field}.query.promql"),
                "the query is empty".into(),
            );
            ok = false;
        } else if let Some(why) = crate::promql::refusal(&query.promql) {
            self.error(&format!("{field}.query.promql"), why);
            ok = false;
        }
        if query.service_label.trim().is_empty() {
            self.error(
                &format!("{field}.query.serviceLabel"),
                "the label is empty: name the sample label that names the service (e.g. instance)"
                    .into(),
            );
            ok = false;
        }
        ok.then(|| Target::Query {
            promql: query.promql.clone(),
            service_label: query.service_label.clone(),
            services: query.services.clone(),
        })
    }

    fn workload(&mut self, raw: raw::Workload) -> (Option<Workload>, Vec<usize>) {
        let field = "spec.workload";
        match (raw.canary, raw.command) {
            (Some(_), Some(_)) => {
                self.error(
                    &format!("{field}.command"),
                    "a workload is either canary or command, not both".into(),
                );
                (None, Vec::new())
            }
            (None, None) => {
                self.error(
                    field,
                    "a workload needs canary or command (or leave workload out)".into(),
                );
                (None, Vec::new())
            }
            (Some(canary), None) => {
                if raw.timeout.is_some() {
                    self.error(
                        &format!("{field}.timeout"),
                        "timeout applies to a command workload only (the canary stops when the trial recovers)"
                            .into(),
                    );
                }
                let field = format!("{field}.canary");
                let mut ok = true;
                if canary.kind != "etcd" {
                    self.error(
                        &format!("{field}.kind"),
                        format!(
                            "unknown canary kind \"{}\": expected etcd (the v3 HTTP gateway); use a command workload for other stores",
                            canary.kind
                        ),
                    );
                    ok = false;
                }
                if canary.endpoints.is_empty() {
                    self.error(
                        &format!("{field}.endpoints"),
                        "the canary needs at least one endpoint (e.g. http://127.0.0.1:23791)"
                            .into(),
                    );
                    ok = false;
                }
                let mut endpoints = Vec::new();
                let mut indices = Vec::new();
                for (j, url) in canary.endpoints.iter().enumerate() {
                    if self.url(&format!("{field}.endpoints[{j}]"), url) {
                        endpoints.push(url.clone());
                        indices.push(j);
                    } else {
                        ok = false;
                    }
                }
                let rate = match canary.rate {
                    None => Some(DEFAULT_CANARY_RATE),
                    Some(n) => self.count(&format!("{field}.rate"), n, 1, MAX_CANARY_RATE),
                };
                match rate {
                    Some(rate) if ok => (Some(Workload::EtcdCanary { endpoints, rate }), indices),
                    _ => (None, Vec::new()),
                }
            }
            (None, Some(command)) => {
                let timeout = self.positive(
                    &format!("{field}.timeout"),
                    raw.timeout,
                    DEFAULT_WORKLOAD_TIMEOUT,
                );
                if command.trim().is_empty() {
                    self.error(&format!("{field}.command"), "the command is empty".into());
                    return (None, Vec::new());
                }
                (Some(Workload::Command { command, timeout }), Vec::new())
            }
        }
    }
}

/// A tc rate in bits per second: `<number><unit>`, units `bit`, `kbit`, `mbit`, `gbit`
/// (powers of 1000, as tc reads them). tc's `bps`/`kbps` mean BYTES per second, a classic
/// trap, so they are refused with the bit spelling to use instead.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let scale: u64 = match unit {
        "bit" => 1,
        "kbit" => 1_000,
        "mbit" => 1_000_000,
        "gbit" => 1_000_000_000,
        "" => {
            return Err(format!(
                "rate \"{text}\" has no unit (write e.g. \"{number}kbit\" or \"{number}mbit\")"
            ));
        }
        "bps" | "kbps" | "mbps" | "gbps" => {
            return Err(format!(
                "rate \"{text}\": tc reads {unit} as BYTES per second; write the rate in bits (bit, kbit, mbit, gbit), e.g. \"8mbit\" for 1 megabyte per second"
            ));
        }
        other => {
            return Err(format!(
                "invalid rate \"{text}\": unknown unit \"{other}\" (expected bit, kbit, mbit or gbit)"
            ));
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid rate \"{text}\": \"{number}\" is not a number"))?;
    let bits = value * scale as f64;
    if !(bits >= 1.0 && bits <= u64::MAX as f64 / 2.0) {
        return Err(format!(
            "rate \"{text}\" is out of range: at least 1bit per second"
        ));
    }
    Ok(bits.round() as u64)
}

/// A size in bytes: a bare number, or `<number><unit>` with `b`, `kb`/`k`, `mb`/`m`
/// (powers of 1024, as tc reads them).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let scale: u64 = match unit {
        "" | "b" => 1,
        "k" | "kb" => 1024,
        "m" | "mb" => 1024 * 1024,
        other => {
            return Err(format!(
                "invalid size \"{text}\": unknown unit \"{other}\" (expected b, kb or mb)"
            ));
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid size \"{text}\": \"{number}\" is not a number"))?;
    let bytes = value * scale as f64;
    if !(0.0..=u32::MAX as f64).contains(&bytes) {
        return Err(format!("size \"{text}\" is out of range"));
    }
    Ok(bytes.round() as u64)
}
