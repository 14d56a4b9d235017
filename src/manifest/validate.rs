//! From the raw schema to the validated types, collecting every problem with its line.
//!
//! Checks never stop at the first problem: an invalid entry is reported and left out, and
//! the rest of the document is still checked (and still takes part in the checks across
//! clusters), so one run of `operator validate` shows everything there is to fix.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::port::{PORT_FORMAT, parse_port, ports_clash};
use super::raw::{self, Args, Scalar};
use super::resources::{CPUS_FORMAT, MEMORY_FORMAT, parse_cpus, parse_memory};
use super::signal::{SIGNAL_FORMAT, parse_signal};
use super::volume::{VOLUME_FORMAT, parse_volume};
use super::{
    Adopt, AgentSpec, Cluster, ComposeService, Diagnostic, EscalateTo, Healthcheck,
    MAX_STOP_TIMEOUT, NetworkMode, NetworkSpec, Policy, PortMapping, Remediation, Resources,
    RestartPolicy, SafetyMode, Service, VolumeMount, graph,
};
use crate::yamldoc::{DocLines, parse_duration};

mod checks;
mod groups;

/// Label keys under this prefix belong to the controller (`operator.managed-by`, ...).
const RESERVED_LABEL_PREFIX: &str = "operator.";

/// The environment variable that gives the Prometheus URL when a manifest does not.
pub(super) const PROMETHEUS_URL_VAR: &str = "PROMETHEUS_URL";

/// What the process environment contributes to the manifests, read once per load. Passed
/// in rather than read here, so that tests never touch the (shared) process environment.
#[derive(Debug, Clone, Default)]
pub(super) struct Environment {
    /// `$PROMETHEUS_URL`, trimmed; unset or blank is `None`.
    pub prometheus_url: Option<String>,
}

impl Environment {
    pub fn from_process() -> Self {
        Environment::new(
            std::env::var_os(PROMETHEUS_URL_VAR).map(|v| v.to_string_lossy().into_owned()),
        )
    }

    pub fn new(prometheus_url: Option<String>) -> Self {
        Environment {
            prometheus_url: prometheus_url
                .map(|url| url.trim().to_string())
                .filter(|url| !url.is_empty()),
        }
    }
}

/// Where a document came from.
pub(super) struct Source<'a> {
    pub file: &'a Path,
    /// Absolute folder of `file`: relative bind mounts are resolved against it.
    pub dir: &'a Path,
    pub lines: &'a DocLines,
    pub env: &'a Environment,
}

impl Source<'_> {
    fn diagnostic(&self, field: &str, message: String) -> Diagnostic {
        diagnostic(self.file, self.lines, field, message)
    }
}

fn diagnostic(file: &Path, lines: &DocLines, field: &str, message: String) -> Diagnostic {
    Diagnostic {
        path: file.to_path_buf(),
        line: Some(lines.line_of(field)),
        field: field.to_string(),
        message,
    }
}

/// A cluster that went through [`document`], with what the checks across clusters need.
pub(super) struct Checked {
    pub cluster: Cluster,
    pub file: PathBuf,
    pub lines: DocLines,
    /// For each service (same index as in `cluster.services`, which is also its index in
    /// the YAML list), the YAML index of each of its kept `ports`.
    port_indices: Vec<Vec<usize>>,
}

impl Checked {
    fn diagnostic(&self, field: &str, message: String) -> Diagnostic {
        diagnostic(&self.file, &self.lines, field, message)
    }

    /// `file:line` of a field, to point from one half of a conflict at the other.
    fn location(&self, field: &str) -> String {
        format!("{}:{}", self.file.display(), self.lines.line_of(field))
    }
}

/// Validates one `kind: Cluster` document, pushing every problem to `out`. The cluster is
/// returned even when invalid (without the invalid entries) so that the checks across
/// clusters still see it.
pub(super) fn document(doc: raw::Document, src: &Source, out: &mut Vec<Diagnostic>) -> Checked {
    let mut v = Validator { src, out };
    let name = doc.metadata.name;
    if let Err(why) = dns_label(&name) {
        v.error(
            "metadata.name",
            format!("invalid cluster name \"{name}\": {why}"),
        );
    }
    let network = v.network(&name, doc.spec.network);
    let mut services = Vec::with_capacity(doc.spec.services.len());
    let mut port_indices = Vec::with_capacity(doc.spec.services.len());
    for (i, raw) in doc.spec.services.into_iter().enumerate() {
        let (service, ports) = v.service(&format!("spec.services[{i}]"), raw, &network);
        services.push(service);
        port_indices.push(ports);
    }
    v.dependencies(&mut services);
    let queries = doc
        .spec
        .checks
        .iter()
        .any(|c| c.expr.is_some() || c.healthy.is_some());
    let (prometheus, url_reported) = v.prometheus(doc.spec.prometheus.unwrap_or_default(), queries);
    let checks = v.checks(doc.spec.checks, &prometheus, url_reported, &services);
    let agent = match doc.spec.agent {
        Some(raw) => v.agent(raw),
        None => AgentSpec::default(),
    };
    let groups = v.groups(doc.spec.groups, &services, &checks);
    let max_concurrent_disruptions = match doc.spec.max_concurrent_disruptions {
        Some(0) => {
            v.error(
                "spec.maxConcurrentDisruptions",
                "0 would never let the controller restart a running container; write 1 or more, or leave it out (no limit)".into(),
            );
            None
        }
        n => n.map(|n| n as usize),
    };
    Checked {
        cluster: Cluster {
            name,
            source: src.file.to_path_buf(),
            network,
            services,
            prometheus,
            checks,
            agent,
            groups,
            max_concurrent_disruptions,
        },
        file: src.file.to_path_buf(),
        lines: src.lines.clone(),
        port_indices,
    }
}

/// Checks that need every loaded cluster: Docker names and host ports are global.
pub(super) fn across(clusters: &[Checked], out: &mut Vec<Diagnostic>) {
    let mut cluster_names: HashMap<&str, &Checked> = HashMap::new();
    for c in clusters {
        match cluster_names.get(c.cluster.name.as_str()) {
            Some(first) => out.push(c.diagnostic(
                "metadata.name",
                format!(
                    "duplicate cluster name \"{}\" (already declared at {})",
                    c.cluster.name,
                    first.location("metadata.name")
                ),
            )),
            None => {
                cluster_names.insert(&c.cluster.name, c);
            }
        }
    }

    let mut service_names: HashMap<&str, (&Checked, usize)> = HashMap::new();
    for c in clusters {
        for (i, s) in c.cluster.services.iter().enumerate() {
            let field = format!("spec.services[{i}].name");
            match service_names.get(s.name.as_str()) {
                Some(&(first, j)) => out.push(c.diagnostic(
                    &field,
                    format!(
                        "duplicate service name \"{}\": already declared at {} in cluster \"{}\" (it is the container name, which must be unique on the Docker host)",
                        s.name,
                        first.location(&format!("spec.services[{j}].name")),
                        first.cluster.name
                    ),
                )),
                None => {
                    service_names.insert(&s.name, (c, i));
                }
            }
        }
    }

    let mut published: Vec<(&Checked, usize, usize, &PortMapping)> = Vec::new();
    for c in clusters {
        for (i, s) in c.cluster.services.iter().enumerate() {
            for (mapping, &j) in s.ports.iter().zip(&c.port_indices[i]) {
                let field = format!("spec.services[{i}].ports[{j}]");
                if let Some(&(first, fi, fj, _)) = published
                    .iter()
                    .find(|(_, _, _, m)| ports_clash(m, mapping))
                {
                    let protocol = match mapping.protocol {
                        super::Protocol::Tcp => "tcp",
                        super::Protocol::Udp => "udp",
                    };
                    out.push(c.diagnostic(
                        &field,
                        format!(
                            "host port {}/{protocol} is already published by service \"{}\" at {}",
                            mapping.host_port,
                            first.cluster.services[fi].name,
                            first.location(&format!("spec.services[{fi}].ports[{fj}]"))
                        ),
                    ));
                } else {
                    published.push((c, i, j, mapping));
                }
            }
        }
    }
}

struct Validator<'s, 'a> {
    src: &'s Source<'a>,
    out: &'s mut Vec<Diagnostic>,
}

impl Validator<'_, '_> {
    fn error(&mut self, field: &str, message: String) {
        self.out.push(self.src.diagnostic(field, message));
    }

    fn network(&mut self, cluster: &str, raw: Option<raw::Network>) -> NetworkSpec {
        let raw = raw.unwrap_or(raw::Network {
            name: None,
            external: false,
            internal: false,
        });
        let name = match raw.name {
            Some(name) => {
                if !is_docker_name(&name) {
                    self.error(
                        "spec.network.name",
                        format!(
                            "invalid network name \"{name}\": must match [a-zA-Z0-9][a-zA-Z0-9_.-]*"
                        ),
                    );
                }
                name
            }
            None => format!("{cluster}_default"),
        };
        NetworkSpec {
            name,
            external: raw.external,
            internal: raw.internal,
        }
    }

    /// One service, and the YAML index of each port kept in it.
    fn service(
        &mut self,
        path: &str,
        raw: raw::Service,
        network: &NetworkSpec,
    ) -> (Service, Vec<usize>) {
        if let Err(why) = dns_label(&raw.name) {
            self.error(
                &format!("{path}.name"),
                format!(
                    "invalid service name \"{}\": {why} (it is also the container and DNS name)",
                    raw.name
                ),
            );
        } else if raw.name.chars().count() < 2 {
            // Caught here, not by the engine halfway through creating the cluster.
            self.error(
                &format!("{path}.name"),
                format!(
                    "invalid service name \"{}\": Docker refuses container names shorter than 2 characters",
                    raw.name
                ),
            );
        }
        if raw.image.trim().is_empty() || raw.image.contains(char::is_whitespace) {
            self.error(
                &format!("{path}.image"),
                format!(
                    "invalid image \"{}\": expected a reference such as \"busybox:1.36\"",
                    raw.image
                ),
            );
        }
        let command = raw
            .command
            .and_then(|a| self.command(&format!("{path}.command"), a));
        let entrypoint = raw
            .entrypoint
            .and_then(|a| self.command(&format!("{path}.entrypoint"), a));
        let env = self.string_map(&format!("{path}.env"), raw.env, |key| {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                Err("an environment variable name must be non-empty and contain no \"=\"".into())
            } else {
                Ok(())
            }
        });
        let labels = self.string_map(&format!("{path}.labels"), raw.labels, |key| {
            if key.is_empty() {
                Err("a label key must not be empty".into())
            } else if key.starts_with(RESERVED_LABEL_PREFIX) {
                Err(format!(
                    "label keys starting with \"{RESERVED_LABEL_PREFIX}\" are reserved for the controller"
                ))
            } else {
                Ok(())
            }
        });

        let mut ports = Vec::new();
        let mut port_indices = Vec::new();
        for (j, text) in raw.ports.iter().enumerate() {
            match parse_port(text) {
                Ok(mapping) => {
                    ports.push(mapping);
                    port_indices.push(j);
                }
                Err(why) => self.error(
                    &format!("{path}.ports[{j}]"),
                    format!("invalid port \"{text}\": {why} (expected {PORT_FORMAT})"),
                ),
            }
        }

        let mut volumes: Vec<VolumeMount> = Vec::new();
        let mut targets: HashMap<String, usize> = HashMap::new();
        for (j, text) in raw.volumes.iter().enumerate() {
            let field = format!("{path}.volumes[{j}]");
            match parse_volume(text, self.src.dir) {
                Ok(mount) => {
                    let target = match &mount {
                        VolumeMount::Named { target, .. } | VolumeMount::Bind { target, .. } => {
                            target.clone()
                        }
                    };
                    if let Some(first) = targets.get(&target) {
                        self.error(
                            &field,
                            format!("invalid volume \"{text}\": {target} is already mounted by volumes[{first}]"),
                        );
                    } else {
                        targets.insert(target, j);
                        volumes.push(mount);
                    }
                }
                Err(why) => self.error(
                    &field,
                    format!("invalid volume \"{text}\": {why} (expected {VOLUME_FORMAT})"),
                ),
            }
        }

        let network_mode = match raw.network_mode {
            None => NetworkMode::Cluster,
            Some(mode) if mode == "host" => NetworkMode::Host,
            Some(mode) if mode == network.name => NetworkMode::Cluster,
            Some(mode) => {
                if !is_docker_name(&mode) {
                    self.error(
                        &format!("{path}.networkMode"),
                        format!(
                            "invalid networkMode \"{mode}\": expected \"host\" or a network name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)"
                        ),
                    );
                }
                NetworkMode::Named(mode)
            }
        };
        // Docker publishes no port of a container whose only network is internal: the
        // mapping would be accepted and silently unreachable.
        if network_mode == NetworkMode::Cluster
            && network.internal
            && let Some(&j) = port_indices.first()
        {
            self.error(
                &format!("{path}.ports[{j}]"),
                format!(
                    "published ports are unreachable on network {} (spec.network.internal: true \
                     has no route in or out); remove the ports, or set internal: false",
                    network.name
                ),
            );
        }

        let healthcheck = raw
            .healthcheck
            .and_then(|h| self.healthcheck(&format!("{path}.healthcheck"), h));
        let restart_policy = match raw.restart_policy {
            None => RestartPolicy::No,
            Some(value) => self.restart_policy(&format!("{path}.restartPolicy"), value),
        };
        let stop_timeout = raw
            .stop_timeout
            .and_then(|t| self.stop_timeout(&format!("{path}.stopTimeout"), t));
        let stop_signal = raw
            .stop_signal
            .and_then(|s| self.stop_signal(&format!("{path}.stopSignal"), s));
        let remediation = match raw.remediation {
            None => Remediation::default(),
            Some(r) => self.remediation(&format!("{path}.remediation"), r, Remediation::default()),
        };

        let (adopt, compose) = match raw.adopt {
            None => (None, None),
            Some(a) => self.adopt(&format!("{path}.adopt"), a, &raw.name),
        };
        let aliases = self.aliases(
            &format!("{path}.aliases"),
            raw.aliases,
            &raw.name,
            &network_mode,
        );
        let resources = raw
            .resources
            .map(|r| self.resources(&format!("{path}.resources"), r))
            .unwrap_or_default();

        let service = Service {
            name: raw.name,
            image: raw.image,
            command,
            entrypoint,
            env,
            ports,
            volumes,
            network_mode,
            labels,
            healthcheck,
            // Checked by `dependencies` once every name of the cluster is known.
            depends_on: raw.depends_on,
            restart_with: raw.restart_with,
            restart_policy,
            stop_timeout,
            stop_signal,
            remediation,
            adopt,
            compose,
            aliases,
            resources,
        };
        (service, port_indices)
    }

    /// `adopt`, and the compose service it names (`adopt.compose`) when it does.
    fn adopt(
        &mut self,
        field: &str,
        raw: raw::Adopt,
        name: &str,
    ) -> (Option<Adopt>, Option<ComposeService>) {
        let raw::AdoptWith { spec, compose } = match raw {
            raw::Adopt::Flag(false) => return (None, None),
            raw::Adopt::Flag(true) => return (Some(Adopt::Observed), None),
            raw::Adopt::With(with) => with,
        };
        let adopt = match spec.as_deref() {
            None | Some("observed") => Some(Adopt::Observed),
            Some("owned") => Some(Adopt::Owned),
            Some(other) => {
                self.error(
                    &format!("{field}.spec"),
                    format!(
                        "invalid adopt spec \"{other}\": expected observed (keep the \
                         container's own spec) or owned (recreate it from the manifest)"
                    ),
                );
                None
            }
        };
        let compose = compose.and_then(|c| {
            let mut ok = true;
            let project = c.project.unwrap_or_default();
            if project.is_empty() {
                self.error(
                    &format!("{field}.compose"),
                    "adopt.compose needs the compose project: write {project: NAME} (as \
                     `docker-compose -p` or the compose file's folder names it)"
                        .into(),
                );
                ok = false;
            } else if !is_compose_project(&project) {
                self.error(
                    &format!("{field}.compose.project"),
                    format!(
                        "invalid compose project \"{project}\": expected compose's project name \
                         ([a-z0-9][a-z0-9_-]*, as `docker-compose -p` or the folder gives it)"
                    ),
                );
                ok = false;
            }
            let service = c.service.unwrap_or_else(|| name.to_string());
            if !is_docker_name(&service) {
                self.error(
                    &format!("{field}.compose.service"),
                    format!(
                        "invalid compose service \"{service}\": expected a compose service \
                         name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)"
                    ),
                );
                ok = false;
            }
            ok.then_some(ComposeService { project, service })
        });
        (adopt, compose)
    }

    /// `aliases`: DNS names on the service's network besides its name, each once.
    fn aliases(
        &mut self,
        field: &str,
        raw: Vec<String>,
        name: &str,
        network_mode: &NetworkMode,
    ) -> Vec<String> {
        if !raw.is_empty() && *network_mode == NetworkMode::Host {
            self.error(
                field,
                "a service on the host's network (networkMode: host) has no DNS names on a \
                 Docker network: remove aliases"
                    .into(),
            );
            return Vec::new();
        }
        let mut aliases: Vec<String> = Vec::with_capacity(raw.len());
        for (j, alias) in raw.into_iter().enumerate() {
            let item = format!("{field}[{j}]");
            if !is_docker_name(&alias) || alias.len() > 63 {
                self.error(
                    &item,
                    format!(
                        "invalid alias \"{alias}\": expected a DNS name \
                         ([a-zA-Z0-9][a-zA-Z0-9_.-]*, at most 63 characters)"
                    ),
                );
            } else if alias == name {
                self.error(
                    &item,
                    format!(
                        "alias \"{alias}\" is the service's name, which is always its DNS name: \
                         remove it"
                    ),
                );
            } else if let Some(first) = aliases.iter().position(|a| *a == alias) {
                self.error(
                    &item,
                    format!("alias \"{alias}\" is already aliases[{first}]"),
                );
            } else {
                aliases.push(alias);
            }
        }
        aliases
    }

    /// `resources`: `cpus` and `memory` limits.
    fn resources(&mut self, field: &str, raw: raw::Resources) -> Resources {
        let text = |value: Scalar| match value {
            Scalar::Str(s) | Scalar::Int(s) => Some(s),
            Scalar::Float(f) => Some(f.to_string()),
            Scalar::Bool(_) | Scalar::Null => None,
        };
        let mut limits = Resources::default();
        if let Some(value) = raw.cpus {
            let written = format!("{value:?}");
            match text(value).ok_or(written).map(|t| (parse_cpus(&t), t)) {
                Ok((Ok(nanos), _)) => limits.nano_cpus = Some(nanos),
                Ok((Err(why), _)) => self.error(
                    &format!("{field}.cpus"),
                    format!("invalid cpus: {why} (expected {CPUS_FORMAT})"),
                ),
                Err(written) => self.error(
                    &format!("{field}.cpus"),
                    format!("invalid cpus {written} (expected {CPUS_FORMAT})"),
                ),
            }
        }
        if let Some(value) = raw.memory {
            let written = format!("{value:?}");
            match text(value).ok_or(written).map(|t| parse_memory(&t)) {
                Ok(Ok(bytes)) => limits.memory = Some(bytes),
                Ok(Err(why)) => self.error(
                    &format!("{field}.memory"),
                    format!("invalid memory: {why} (expected {MEMORY_FORMAT})"),
                ),
                Err(written) => self.error(
                    &format!("{field}.memory"),
                    format!("invalid memory {written} (expected {MEMORY_FORMAT})"),
                ),
            }
        }
        limits
    }

    fn command(&mut self, field: &str, args: Args) -> Option<Vec<String>> {
        match args {
            Args::List(words) => Some(words),
            Args::Line(line) => match shlex::split(&line) {
                Some(words) => Some(words),
                None => {
                    self.error(
                        field,
                        format!("invalid command \"{line}\": unbalanced quotes or a trailing backslash (or write a list: [\"sh\", \"-c\", \"...\"])"),
                    );
                    None
                }
            },
        }
    }

    /// `env` and `labels`: string values, with numbers and booleans written as in YAML.
    fn string_map(
        &mut self,
        path: &str,
        raw: BTreeMap<String, Scalar>,
        check_key: impl Fn(&str) -> Result<(), String>,
    ) -> BTreeMap<String, String> {
        let mut map = BTreeMap::new();
        for (key, value) in raw {
            let field = format!("{path}.{key}");
            if let Err(why) = check_key(&key) {
                self.error(&field, format!("invalid key \"{key}\": {why}"));
                continue;
            }
            let text = match value {
                Scalar::Str(s) => Some(s),
                Scalar::Int(s) => self.as_written(&field, s, "number"),
                Scalar::Bool(b) => self.as_written(&field, b.to_string(), "boolean"),
                Scalar::Float(f) => {
                    let written = self
                        .src
                        .lines
                        .plain_text(&field)
                        .map_or(f.to_string(), str::to_string);
                    self.error(
                        &field,
                        format!("value {written} is read by YAML as a floating-point number, which may not keep its digits (1.10 becomes 1.1); quote it"),
                    );
                    continue;
                }
                Scalar::Null => {
                    self.error(
                        &field,
                        format!("\"{key}\" has no value; write \"\" for an empty string"),
                    );
                    continue;
                }
            };
            if let Some(text) = text {
                map.insert(key, text);
            }
        }
        map
    }

    /// A number or boolean kept as text must read as it was written: YAML turns `0x1F`,
    /// `0o17` and `0b101` into 31, 15 and 5, `+1` into 1, `True` into true, and the variable
    /// would silently get the other spelling. Refused (quoting keeps it as written).
    fn as_written(&mut self, field: &str, text: String, what: &str) -> Option<String> {
        match self.src.lines.plain_text(field) {
            Some(written) if written != text => {
                self.error(
                    field,
                    format!("value {written} is read by YAML as the {what} {text}; quote it (\"{written}\") to keep it as written"),
                );
                None
            }
            _ => Some(text),
        }
    }

    fn healthcheck(&mut self, path: &str, raw: raw::Healthcheck) -> Option<Healthcheck> {
        let field = format!("{path}.test");
        let test = match raw.test {
            Args::Line(line) if line.trim().is_empty() => {
                self.error(&field, "the test command is empty".into());
                None
            }
            Args::Line(line) => Some(vec!["CMD-SHELL".to_string(), line]),
            Args::List(words) => {
                let ok = match words.first().map(String::as_str) {
                    Some("CMD") => words.len() >= 2,
                    Some("CMD-SHELL") => words.len() == 2,
                    Some("NONE") => words.len() == 1,
                    _ => false,
                };
                if ok {
                    Some(words)
                } else {
                    self.error(
                        &field,
                        format!(
                            "invalid test {words:?}: expected [\"CMD\", \"program\", \"args\"...], [\"CMD-SHELL\", \"shell command\"], [\"NONE\"] or a string (run by the shell)"
                        ),
                    );
                    None
                }
            }
        };
        let interval = self.probe_duration(&format!("{path}.interval"), raw.interval);
        let timeout = self.probe_duration(&format!("{path}.timeout"), raw.timeout);
        let start_period = self.probe_duration(&format!("{path}.startPeriod"), raw.start_period);
        Some(Healthcheck {
            test: test?,
            interval,
            timeout,
            retries: raw.retries,
            start_period,
        })
    }

    /// Docker refuses healthcheck durations between 0 (its default) and 1ms.
    fn probe_duration(&mut self, field: &str, raw: Option<Scalar>) -> Option<Duration> {
        let d = self.duration(field, raw?)?;
        if !d.is_zero() && d < Duration::from_millis(1) {
            self.error(
                field,
                format!("{d:?} is shorter than 1ms, which Docker refuses"),
            );
            return None;
        }
        Some(d)
    }

    fn duration(&mut self, field: &str, raw: Scalar) -> Option<Duration> {
        let text = match raw {
            Scalar::Str(s) | Scalar::Int(s) => s,
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(_) | Scalar::Null => {
                self.error(
                    field,
                    format!(
                        "expected a duration such as \"30s\", \"500ms\" or \"1m30s\", got {raw:?}"
                    ),
                );
                return None;
            }
        };
        match parse_duration(&text) {
            Ok(d) => Some(d),
            Err(why) => {
                self.error(field, why);
                None
            }
        }
    }

    fn restart_policy(&mut self, field: &str, raw: Scalar) -> RestartPolicy {
        match &raw {
            // YAML 1.1 parsers read a bare `no` as false.
            Scalar::Bool(false) => RestartPolicy::No,
            Scalar::Str(s) if s == "no" => RestartPolicy::No,
            Scalar::Str(s) if s == "always" => RestartPolicy::Always,
            Scalar::Str(s) if s == "unless-stopped" => RestartPolicy::UnlessStopped,
            Scalar::Str(s) if s == "on-failure" => RestartPolicy::OnFailure,
            _ => {
                let shown = match raw {
                    Scalar::Str(s) | Scalar::Int(s) => s,
                    other => format!("{other:?}"),
                };
                self.error(
                    field,
                    format!("invalid restartPolicy \"{shown}\": expected no, always, unless-stopped or on-failure"),
                );
                RestartPolicy::No
            }
        }
    }

    /// `stopTimeout`: whole seconds (the engine keeps no less), from 0s to [`MAX_STOP_TIMEOUT`].
    /// Refused rather than rounded, so that what runs is what is written.
    fn stop_timeout(&mut self, field: &str, raw: Scalar) -> Option<Duration> {
        let d = self.duration(field, raw)?;
        if d.subsec_nanos() != 0 {
            let (down, up) = (d.as_secs(), d.as_secs() + 1);
            self.error(
                field,
                format!(
                    "stopTimeout {d:?} is not a whole number of seconds, which is all the engine keeps: write {down}s or {up}s"
                ),
            );
            return None;
        }
        if d > MAX_STOP_TIMEOUT {
            self.error(
                field,
                format!(
                    "stopTimeout {d:?} is longer than {MAX_STOP_TIMEOUT:?}, the longest the controller waits for one stop"
                ),
            );
            return None;
        }
        Some(d)
    }

    fn stop_signal(&mut self, field: &str, raw: Scalar) -> Option<String> {
        let text = match raw {
            Scalar::Str(s) | Scalar::Int(s) => s,
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
            Scalar::Null => String::new(),
        };
        match parse_signal(&text) {
            Ok(signal) => Some(signal),
            Err(why) => {
                self.error(
                    field,
                    format!("invalid stopSignal \"{text}\": {why} (expected {SIGNAL_FORMAT})"),
                );
                None
            }
        }
    }

    /// `remediation` of a service or a check, over the defaults `r` (which differ in policy).
    /// `spec.agent`: every limit must allow at least one step.
    fn agent(&mut self, raw: raw::Agent) -> AgentSpec {
        let mut a = AgentSpec::default();
        if let Some(model) = raw.model {
            if model.trim().is_empty() || model.chars().any(char::is_whitespace) {
                self.error(
                    "spec.agent.model",
                    format!(
                        "invalid model \"{model}\": expected a model name such as claude-sonnet-4-5"
                    ),
                );
            } else {
                a.model = Some(model);
            }
        }
        if let Some(mode) = raw.safety_mode {
            match SafetyMode::parse(&mode) {
                Some(m) => a.safety_mode = Some(m),
                None => self.error(
                    "spec.agent.safetyMode",
                    format!("invalid safetyMode \"{mode}\": expected observe, approve or execute"),
                ),
            }
        }
        let positive = |v: &mut Self, field: &str, value: Option<u64>| -> Option<u64> {
            match value {
                Some(0) => {
                    v.error(
                        &format!("spec.agent.{field}"),
                        format!(
                            "{field}: 0 would end every session before it began; allow at least 1"
                        ),
                    );
                    None
                }
                other => other,
            }
        };
        if let Some(n) = positive(self, "maxTurns", raw.max_turns.map(u64::from)) {
            a.max_turns = n as u32;
        }
        if let Some(n) = positive(self, "maxInputTokens", raw.max_input_tokens) {
            a.max_input_tokens = n;
        }
        if let Some(n) = positive(self, "maxOutputTokens", raw.max_output_tokens) {
            a.max_output_tokens = n;
        }
        if let Some(n) = positive(
            self,
            "sessionsPerTicket",
            raw.sessions_per_ticket.map(u64::from),
        ) {
            a.sessions_per_ticket = n as u32;
        }
        for (field, value, slot) in [
            (
                "maxSessionTime",
                raw.max_session_time,
                &mut a.max_session_time,
            ),
            (
                "sessionBackoff",
                raw.session_backoff,
                &mut a.session_backoff,
            ),
            (
                "commandTimeout",
                raw.command_timeout,
                &mut a.command_timeout,
            ),
        ] {
            let path = format!("spec.agent.{field}");
            match value.and_then(|d| self.duration(&path, d)) {
                Some(d) if d.is_zero() && field != "sessionBackoff" => {
                    self.error(&path, format!("{field} must be longer than 0s"));
                }
                Some(d) => *slot = d,
                None => {}
            }
        }
        a
    }

    fn remediation(
        &mut self,
        path: &str,
        raw: raw::Remediation,
        mut r: Remediation,
    ) -> Remediation {
        if let Some(policy) = raw.policy {
            match policy.as_str() {
                "restart" => r.policy = Policy::Restart,
                "agent" => r.policy = Policy::Agent,
                "observe" => r.policy = Policy::Observe,
                _ => self.error(
                    &format!("{path}.policy"),
                    format!("invalid policy \"{policy}\": expected restart, agent or observe"),
                ),
            }
        }
        if let Some(to) = raw.escalate_to {
            let field = format!("{path}.escalateTo");
            match to.as_str() {
                "person" => r.escalate_to = EscalateTo::Person,
                "agent" if r.policy == Policy::Restart => r.escalate_to = EscalateTo::Agent,
                "agent" => self.error(
                    &field,
                    format!(
                        "escalateTo: agent only applies to policy restart (it pages the agent once the restart budget is spent); this policy is {}",
                        r.policy.as_str()
                    ),
                ),
                _ => self.error(
                    &field,
                    format!("invalid escalateTo \"{to}\": expected person or agent"),
                ),
            }
        }
        if let Some(n) = raw.max_restarts {
            r.max_restarts = n;
        }
        if r.policy == Policy::Restart && r.max_restarts == 0 {
            self.error(
                &format!("{path}.maxRestarts"),
                "maxRestarts: 0 with policy restart would escalate on the first drift without a \
                 single repair; write policy: observe to only report, or allow at least 1"
                    .into(),
            );
        }
        let window_field = format!("{path}.window");
        if let Some(window) = raw.window.and_then(|w| self.duration(&window_field, w)) {
            if window.is_zero() {
                self.error(&window_field, "the window must be longer than 0s".into());
            } else {
                r.window = window;
            }
        }
        let stable_field = format!("{path}.stableAfter");
        if let Some(d) = raw
            .stable_after
            .and_then(|s| self.duration(&stable_field, s))
        {
            r.stable_after = d;
        }
        if let Some(backoff) = raw.backoff {
            let initial_field = format!("{path}.backoff.initial");
            let max_field = format!("{path}.backoff.max");
            let initial = backoff
                .initial
                .and_then(|d| self.duration(&initial_field, d));
            let max = backoff.max.and_then(|d| self.duration(&max_field, d));
            match initial {
                Some(d) if d.is_zero() => self.error(
                    &initial_field,
                    "the initial backoff must be longer than 0s".into(),
                ),
                Some(d) => r.backoff_initial = d,
                None => {}
            }
            if let Some(d) = max {
                r.backoff_max = d;
            }
            if r.backoff_max < r.backoff_initial {
                let (field, explicit) = match max {
                    Some(_) => (max_field, ""),
                    None => (initial_field, " (the default max)"),
                };
                self.error(
                    &field,
                    format!(
                        "backoff max {:?}{explicit} is shorter than backoff initial {:?}",
                        r.backoff_max, r.backoff_initial
                    ),
                );
            }
        }
        r
    }

    /// A duration that must be longer than 0s; `None` when missing or invalid (reported).
    fn positive_duration(&mut self, field: &str, raw: Option<Scalar>) -> Option<Duration> {
        let d = self.duration(field, raw?)?;
        if d.is_zero() {
            self.error(field, "must be longer than 0s".into());
            return None;
        }
        Some(d)
    }

    /// `dependsOn`: known names of the same cluster, not itself, no cycles. Entries that
    /// fail are reported and dropped.
    fn dependencies(&mut self, services: &mut [Service]) {
        let index: HashMap<String, usize> = services
            .iter()
            .enumerate()
            .rev() // the first declaration of a duplicated name wins
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        let known = services
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let mut edges: Vec<Vec<usize>> = Vec::with_capacity(services.len());
        for (i, service) in services.iter_mut().enumerate() {
            let mut kept = Vec::new();
            let mut targets = Vec::new();
            for (j, dep) in std::mem::take(&mut service.depends_on)
                .into_iter()
                .enumerate()
            {
                let field = format!("spec.services[{i}].dependsOn[{j}]");
                if dep == service.name {
                    self.error(&field, format!("service \"{dep}\" depends on itself"));
                } else if kept.contains(&dep) {
                    self.error(&field, format!("\"{dep}\" is listed twice"));
                } else if let Some(&target) = index.get(&dep) {
                    targets.push(target);
                    kept.push(dep);
                } else {
                    self.error(
                        &field,
                        format!("unknown service \"{dep}\" (services in this cluster: {known})"),
                    );
                }
            }
            service.depends_on = kept;
            edges.push(targets);
            let mut with = Vec::new();
            for (j, dep) in std::mem::take(&mut service.restart_with)
                .into_iter()
                .enumerate()
            {
                let field = format!("spec.services[{i}].restartWith[{j}]");
                if with.contains(&dep) {
                    self.error(&field, format!("\"{dep}\" is listed twice"));
                } else if !service.depends_on.contains(&dep) {
                    self.error(
                        &field,
                        format!(
                            "\"{dep}\" is not in dependsOn: a service restarts with what it depends on (add it to dependsOn)"
                        ),
                    );
                } else {
                    with.push(dep);
                }
            }
            service.restart_with = with;
        }
        for cycle in graph::cycles(&edges) {
            let names: Vec<&str> = cycle.iter().map(|&i| services[i].name.as_str()).collect();
            self.error(
                &format!("spec.services[{}].dependsOn", cycle[0]),
                format!("dependency cycle: {}", names.join(" -> ")),
            );
        }
    }
}

/// Service and cluster names: a DNS label (they become container and host names).
pub(crate) fn dns_label(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if name.len() > 63 {
        return Err(format!("{} characters is longer than 63", name.len()));
    }
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !first_ok
        || !chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'))
    {
        return Err(
            "must match [a-z0-9][a-z0-9_.-]* (lowercase letters, digits, '_', '.', '-')".into(),
        );
    }
    Ok(())
}

/// compose's rule for project names (what `docker-compose -p` keeps of a name).
fn is_compose_project(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))
}

/// Docker's rule for network names.
fn is_docker_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testing::{
        TempDir, assert_reported, diagnostics, line_of, load_text, manifest, service,
    };
    use super::super::{ManifestError, Quorum, load};
    use super::*;

    fn only_service(text: &str) -> Service {
        let state = load_text(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        state.clusters[0].services[0].clone()
    }

    #[test]
    fn defaults_fill_what_is_not_written() {
        let state = load_text(&manifest("demo", &service("web", ""))).expect("valid");
        let cluster = &state.clusters[0];
        assert_eq!(
            cluster.network,
            NetworkSpec {
                name: "demo_default".into(),
                external: false,
                internal: false
            }
        );
        let web = &cluster.services[0];
        assert_eq!(web.command, None);
        assert_eq!(web.entrypoint, None);
        assert!(web.env.is_empty() && web.labels.is_empty() && web.ports.is_empty());
        assert_eq!(web.network_mode, NetworkMode::Cluster);
        assert_eq!(web.restart_policy, RestartPolicy::No);
        assert_eq!(web.healthcheck, None);
        assert_eq!(web.remediation, Remediation::default());
    }

    #[test]
    fn every_field_is_read() {
        let text = manifest(
            "demo",
            &service(
                "web",
                "      command: sh -c 'echo \"hi there\"'
      entrypoint: [\"/bin/tini\", \"--\"]
      env: {PORT: 8080, DEBUG: true, NAME: web}
      ports: [\"8080:80\", \"127.0.0.1:5353:53/udp\"]
      volumes: [\"data:/data\", \"./conf:/etc/conf:ro\"]
      networkMode: host
      labels: {team: infra}
      healthcheck:
        test: wget -q -O- http://127.0.0.1/
        interval: 5s
        timeout: 1s
        retries: 3
        startPeriod: 1m30s
      restartPolicy: unless-stopped
      remediation:
        policy: observe
        maxRestarts: 2
        window: 1h
        backoff: {initial: 500ms, max: 1m}
        stableAfter: 2m
",
            ),
        );
        let web = only_service(&text);
        assert_eq!(
            web.command,
            Some(vec!["sh".into(), "-c".into(), "echo \"hi there\"".into()])
        );
        assert_eq!(web.entrypoint, Some(vec!["/bin/tini".into(), "--".into()]));
        assert_eq!(web.env["PORT"], "8080");
        assert_eq!(web.env["DEBUG"], "true");
        assert_eq!(web.ports.len(), 2);
        assert_eq!(web.volumes.len(), 2);
        assert_eq!(web.network_mode, NetworkMode::Host);
        assert_eq!(web.labels["team"], "infra");
        assert_eq!(
            web.healthcheck,
            Some(Healthcheck {
                test: vec!["CMD-SHELL".into(), "wget -q -O- http://127.0.0.1/".into()],
                interval: Some(Duration::from_secs(5)),
                timeout: Some(Duration::from_secs(1)),
                retries: Some(3),
                start_period: Some(Duration::from_secs(90)),
            })
        );
        assert_eq!(web.restart_policy, RestartPolicy::UnlessStopped);
        assert_eq!(
            web.remediation,
            Remediation {
                policy: Policy::Observe,
                escalate_to: EscalateTo::Person,
                max_restarts: 2,
                window: Duration::from_secs(3600),
                backoff_initial: Duration::from_millis(500),
                backoff_max: Duration::from_secs(60),
                stable_after: Duration::from_secs(120),
            }
        );
    }

    #[test]
    fn partial_remediation_keeps_the_other_defaults() {
        let text = manifest(
            "demo",
            &service("web", "      remediation: {policy: agent}\n"),
        );
        let r = only_service(&text).remediation;
        assert_eq!(r.policy, Policy::Agent);
        assert_eq!(
            Remediation {
                policy: Policy::Restart,
                ..r
            },
            Remediation::default()
        );
    }

    #[test]
    fn network_mode_naming_the_cluster_network_is_the_cluster_network() {
        let text = manifest("demo", &service("web", "      networkMode: demo_default\n"))
            + &service("db", "      networkMode: other_net\n");
        let state = load_text(&text).expect("valid");
        let services = &state.clusters[0].services;
        assert_eq!(services[0].network_mode, NetworkMode::Cluster);
        assert_eq!(
            services[1].network_mode,
            NetworkMode::Named("other_net".into())
        );
    }

    #[test]
    fn network_block_is_read_and_external_internal_is_allowed() {
        let text = "apiVersion: operator/v1\nkind: Cluster\nmetadata: {name: tikv}\nspec:\n  network: {external: true, internal: true}\n  services: []\n";
        let state = load_text(text).expect("valid");
        assert_eq!(
            state.clusters[0].network,
            NetworkSpec {
                name: "tikv_default".into(),
                external: true,
                internal: true
            }
        );
    }

    #[test]
    fn restart_policy_accepts_no_written_any_way() {
        for (written, expected) in [
            ("no", RestartPolicy::No),
            ("\"no\"", RestartPolicy::No),
            ("false", RestartPolicy::No),
            ("always", RestartPolicy::Always),
            ("on-failure", RestartPolicy::OnFailure),
        ] {
            let text = manifest(
                "demo",
                &service("web", &format!("      restartPolicy: {written}\n")),
            );
            assert_eq!(only_service(&text).restart_policy, expected, "{written}");
        }
    }

    #[test]
    fn relative_bind_mount_is_resolved_against_the_manifest_folder() {
        let dir = TempDir::new();
        let text = manifest(
            "demo",
            &service(
                "web",
                "      volumes: [\"./data:/data\", \"../shared:/shared:ro\"]\n",
            ),
        );
        let file = dir.write("sub/cluster.yaml", &text);
        let state = load(&[file]).expect("valid");
        let volumes = &state.clusters[0].services[0].volumes;
        let root = std::path::absolute(dir.path()).expect("absolute");
        assert_eq!(
            volumes[0],
            VolumeMount::Bind {
                source: root.join("sub/data"),
                target: "/data".into(),
                read_only: false
            }
        );
        assert_eq!(
            volumes[1],
            VolumeMount::Bind {
                source: root.join("shared"),
                target: "/shared".into(),
                read_only: true
            }
        );
    }

    #[test]
    fn bad_service_name_is_reported() {
        let text = manifest("demo", &service("Web_Server", ""));
        let diags = diagnostics(&text);
        assert_reported(
            &diags,
            line_of(&text, "Web_Server", 0),
            "spec.services[0].name",
            &["\"Web_Server\"", "[a-z0-9]"],
        );
        let long = "a".repeat(64);
        let diags = diagnostics(&manifest("demo", &service(&long, "")));
        assert_reported(&diags, 7, "spec.services[0].name", &["longer than 63"]);
    }

    #[test]
    fn a_service_name_docker_would_refuse_is_reported() {
        let text = manifest("demo", &service("w", ""));
        assert_reported(
            &diagnostics(&text),
            line_of(&text, "name: w", 0),
            "spec.services[0].name",
            &["\"w\"", "shorter than 2"],
        );
    }

    #[test]
    fn max_restarts_zero_with_restart_is_reported() {
        let text = manifest(
            "demo",
            &service("web", "      remediation:\n        maxRestarts: 0\n"),
        );
        assert_reported(
            &diagnostics(&text),
            line_of(&text, "maxRestarts", 0),
            "spec.services[0].remediation.maxRestarts",
            &["maxRestarts: 0", "policy: observe"],
        );
        let observing = manifest(
            "demo",
            &service(
                "web",
                "      remediation:\n        policy: observe\n        maxRestarts: 0\n",
            ),
        );
        assert!(
            load_text(&observing).is_ok(),
            "observe never repairs: 0 is fine"
        );
    }

    #[test]
    fn escalate_to_agent_is_read_with_restart_and_refused_otherwise() {
        let text = manifest(
            "demo",
            &service("web", "      remediation: {escalateTo: agent}\n"),
        );
        assert_eq!(
            only_service(&text).remediation.escalate_to,
            EscalateTo::Agent
        );
        let observing = manifest(
            "demo",
            &service(
                "web",
                "      remediation:\n        policy: observe\n        escalateTo: agent\n",
            ),
        );
        assert_reported(
            &diagnostics(&observing),
            line_of(&observing, "escalateTo", 0),
            "spec.services[0].remediation.escalateTo",
            &["only applies to policy restart", "observe"],
        );
    }

    #[test]
    fn the_agent_block_is_read_and_each_limit_must_allow_a_step() {
        let with = |agent: &str| {
            manifest("demo", &service("web", ""))
                .replace("spec:\n", &format!("spec:\n  agent:\n{agent}"))
        };
        let text = with(
            "    model: claude-test-1\n    safetyMode: approve\n    maxTurns: 7\n    maxSessionTime: 2m\n    sessionsPerTicket: 1\n    sessionBackoff: 0s\n",
        );
        let desired = load_text(&text).unwrap();
        let agent = &desired.clusters[0].agent;
        assert_eq!(agent.model.as_deref(), Some("claude-test-1"));
        assert_eq!(agent.safety_mode, Some(SafetyMode::Approve));
        assert_eq!(
            (
                agent.max_turns,
                agent.max_session_time,
                agent.sessions_per_ticket
            ),
            (7, Duration::from_secs(120), 1)
        );
        assert_eq!(agent.session_backoff, Duration::ZERO);
        assert_eq!(
            agent.max_output_tokens,
            AgentSpec::default().max_output_tokens
        );
        for (line, field, words) in [
            (
                "    safetyMode: yolo\n",
                "spec.agent.safetyMode",
                "observe, approve or execute",
            ),
            ("    maxTurns: 0\n", "spec.agent.maxTurns", "at least 1"),
            (
                "    maxSessionTime: 0s\n",
                "spec.agent.maxSessionTime",
                "longer than 0s",
            ),
            (
                "    model: \"two words\"\n",
                "spec.agent.model",
                "invalid model",
            ),
        ] {
            let text = with(line);
            assert_reported(
                &diagnostics(&text),
                line_of(&text, line.trim().split(':').next().unwrap(), 0),
                field,
                &[words],
            );
        }
    }

    #[test]
    fn groups_are_read_with_their_quorum_and_each_mistake_named_at_its_line() {
        let three = format!(
            "{}{}{}",
            service("e0", "      labels: {role: member}\n"),
            service("e1", "      labels: {role: member}\n"),
            service("e2", "      labels: {role: member}\n")
        );
        let checks = "  prometheus: {url: \"http://127.0.0.1:9\"}\n  checks:\n    - name: up\n      expr: up == 0\n";
        let with =
            |groups: &str| format!("{}{checks}  groups:\n{groups}", manifest("demo", &three));
        let desired = load_text(&with(
            "    - name: members\n      members: [e0, e1, e2]\n      live: {checks: [up]}\n    - name: by-label\n      selector: {role: member}\n      quorum: 3\n",
        ))
        .unwrap();
        let groups = &desired.clusters[0].groups;
        assert_eq!(groups[0].members, ["e0", "e1", "e2"]);
        assert_eq!(
            (groups[0].quorum, groups[0].needed()),
            (Quorum::Majority, 2)
        );
        assert_eq!(groups[0].live_checks, ["up"]);
        assert_eq!(groups[1].members.len(), 3);
        assert_eq!(groups[1].needed(), 3);
        for (group, marker, field, words) in [
            (
                "    - name: g\n      members: [e0, e9]\n",
                "members",
                "spec.groups[0].members[1]",
                "no service \"e9\"",
            ),
            (
                "    - name: g\n      members: [e0, e1]\n      quorum: 3\n",
                "quorum",
                "spec.groups[0].quorum",
                "not between 1 and",
            ),
            (
                "    - name: g\n      members: [e0, e1]\n      quorum: most\n",
                "quorum",
                "spec.groups[0].quorum",
                "expected majority",
            ),
            (
                "    - name: g\n      selector: {role: nobody}\n",
                "selector",
                "spec.groups[0].selector",
                "no service of this cluster",
            ),
            (
                "    - name: g\n      members: [e0]\n      live: {checks: [down]}\n",
                "live",
                "spec.groups[0].live.checks[0]",
                "no check \"down\"",
            ),
        ] {
            let text = with(group);
            assert_reported(
                &diagnostics(&text),
                line_of(&text, marker, 0),
                field,
                &[words],
            );
        }
    }

    #[test]
    fn bad_cluster_name_is_reported() {
        let text = manifest("Demo", &service("web", ""));
        assert_reported(&diagnostics(&text), 4, "metadata.name", &["\"Demo\""]);
    }

    #[test]
    fn bad_port_is_reported_with_its_value() {
        let text = manifest(
            "demo",
            &service(
                "web",
                "      ports:\n        - \"8080:80\"\n        - \"80:abc\"\n",
            ),
        );
        assert_reported(
            &diagnostics(&text),
            line_of(&text, "80:abc", 0),
            "spec.services[0].ports[1]",
            &[
                "invalid port \"80:abc\": container port \"abc\" is not a number",
                "host:container",
            ],
        );
    }

    #[test]
    fn published_ports_on_an_internal_cluster_network_are_refused() {
        let text = manifest(
            "demo",
            &service("web", "      ports:\n        - \"8080:80\"\n"),
        )
        .replace("spec:\n", "spec:\n  network: {internal: true}\n");
        assert_reported(
            &diagnostics(&text),
            line_of(&text, "8080:80", 0),
            "spec.services[0].ports[0]",
            &["unreachable on network demo_default", "internal: false"],
        );
        let host = text.replace("      ports:", "      networkMode: host\n      ports:");
        assert!(
            load_text(&host).is_ok(),
            "a service on the host network is not on the internal network"
        );
    }

    #[test]
    fn bad_volume_is_reported_with_its_value() {
        let text = manifest(
            "demo",
            &service("web", "      volumes: [\"relative/only\"]\n"),
        );
        assert_reported(
            &diagnostics(&text),
            line_of(&text, "volumes", 0),
            "spec.services[0].volumes[0]",
            &["invalid volume \"relative/only\""],
        );
    }

    #[test]
    fn two_volumes_on_one_target_are_refused() {
        let text = manifest(
            "demo",
            &service(
                "web",
                "      volumes:\n        - a:/data\n        - b:/data\n",
            ),
        );
        assert_reported(
            &diagnostics(&text),
            line_of(&text, "b:/data", 0),
            "spec.services[0].volumes[1]",
            &["/data is already mounted"],
        );
    }

    #[test]
    fn bad_durations_are_reported_with_their_value() {
        let text = manifest(
            "demo",
            &service(
                "web",
                "      healthcheck:\n        test: [\"CMD\", \"true\"]\n        interval: 30\n      remediation:\n        window: 10 minutes\n        backoff:\n          max: forever\n",
            ),
        );
        let diags = diagnostics(&text);
        assert_reported(
            &diags,
            line_of(&text, "interval", 0),
            "spec.services[0].healthcheck.interval",
            &["\"30\"", "\"30s\""],
        );
        assert_reported(
            &diags,
            line_of(&text, "window", 0),
            "spec.services[0].remediation.window",
            &["10 minutes"],
        );
        assert_reported(
            &diags,
            line_of(&text, "max:", 0),
            "spec.services[0].remediation.backoff.max",
            &["forever"],
        );
        assert_eq!(diags.len(), 3, "{diags:#?}");
    }

    #[test]
    fn backoff_max_below_initial_is_refused() {
        let text = manifest(
            "demo",
            &service(
                "web",
                "      remediation:\n        backoff: {initial: 10s, max: 1s}\n",
            ),
        );
        assert_reported(
            &diagnostics(&text),
            line_of(&text, "backoff", 0),
            "spec.services[0].remediation.backoff.max",
            &["shorter than backoff initial"],
        );
    }

    #[test]
    fn adopt_is_read_in_each_form_and_a_wrong_spec_is_named() {
        let read = |extra: &str| only_service(&manifest("demo", &service("web", extra)));
        assert_eq!(read("").adopt, None);
        assert_eq!(read("      adopt: false\n").adopt, None);
        assert_eq!(read("      adopt: true\n").adopt, Some(Adopt::Observed));
        assert_eq!(read("      adopt: {}\n").adopt, Some(Adopt::Observed));
        assert_eq!(
            read("      adopt: {spec: owned}\n").adopt,
            Some(Adopt::Owned)
        );
        let text = manifest("demo", &service("web", "      adopt: {spec: mine}\n"));
        assert_reported(
            &diagnostics(&text),
            line_of(&text, "adopt", 0),
            "spec.services[0].adopt.spec",
            &["\"mine\"", "observed", "owned"],
        );
        let text = manifest("demo", &service("web", "      adopt: yes please\n"));
        let diags = diagnostics(&text);
        assert!(
            diags
                .iter()
                .any(|d| d.message.contains("true, false, or a mapping with spec")),
            "{diags:#?}"
        );
    }

    #[test]
    fn adopt_compose_names_compose_project_and_service_and_each_mistake_is_named() {
        let read = |extra: &str| only_service(&manifest("demo", &service("web", extra)));
        let web = read("      adopt: {compose: {project: shop}}\n");
        assert_eq!(web.adopt, Some(Adopt::Observed));
        assert_eq!(
            web.compose,
            Some(ComposeService {
                project: "shop".into(),
                service: "web".into()
            }),
            "the compose service defaults to the service's name"
        );
        let web = read(
            "      adopt:\n        spec: owned\n        compose: {project: shop, service: Web_1}\n",
        );
        assert_eq!(web.adopt, Some(Adopt::Owned));
        assert_eq!(web.compose.map(|c| c.service).as_deref(), Some("Web_1"));
        assert_eq!(read("      adopt: true\n").compose, None);

        let text = manifest(
            "demo",
            &service(
                "web",
                "      adopt:\n        compose:\n          project: My.Shop\n          service: -x\n",
            ),
        );
        let diags = diagnostics(&text);
        assert_reported(
            &diags,
            line_of(&text, "project:", 0),
            "spec.services[0].adopt.compose.project",
            &["\"My.Shop\"", "[a-z0-9][a-z0-9_-]*"],
        );
        assert_reported(
            &diags,
            line_of(&text, "service: -x", 0),
            "spec.services[0].adopt.compose.service",
            &["\"-x\""],
        );
        let text = manifest(
            "demo",
            &service("web", "      adopt:\n        compose: {service: web}\n"),
        );
        assert_reported(
            &diagnostics(&text),
            line_of(&text, "compose:", 0),
            "spec.services[0].adopt.compose",
            &["needs the compose project"],
        );
    }

    #[test]
    fn aliases_are_read_and_each_mistake_is_named_at_its_line() {
        let read = |extra: &str| only_service(&manifest("demo", &service("web", extra)));
        assert!(read("").aliases.is_empty());
        assert_eq!(
            read("      aliases: [db, Db.local]\n").aliases,
            ["db", "Db.local"]
        );
        let text = manifest(
            "demo",
            &service(
                "web",
                "      aliases:\n        - db\n        - web\n        - db\n        - -bad\n",
            ),
        );
        let diags = diagnostics(&text);
        assert_reported(
            &diags,
            line_of(&text, "- web", 0),
            "spec.services[0].aliases[1]",
            &["service's name"],
        );
        assert_reported(
            &diags,
            line_of(&text, "- db", 1),
            "spec.services[0].aliases[2]",
            &["already aliases[0]"],
        );
        assert_reported(
            &diags,
            line_of(&text, "- -bad", 0),
            "spec.services[0].aliases[3]",
            &["\"-bad\"", "DNS name"],
        );
        let text = manifest(
            "demo",
            &service("web", "      networkMode: host\n      aliases: [db]\n"),
        );
        assert_reported(
            &diagnostics(&text),
            line_of(&text, "aliases", 0),
            "spec.services[0].aliases",
            &["host"],
        );
    }

    #[test]
    fn resources_are_read_exactly_and_each_mistake_is_named() {
        let read = |extra: &str| only_service(&manifest("demo", &service("web", extra)));
        assert_eq!(read("").resources, Resources::default());
        let web = read("      resources: {cpus: 0.5, memory: 512m}\n");
        assert_eq!(web.resources.nano_cpus, Some(500_000_000));
        assert_eq!(web.resources.memory, Some(512 << 20));
        assert_eq!(
            read("      resources: {cpus: \"2\", memory: 1G}\n").resources,
            Resources {
                nano_cpus: Some(2_000_000_000),
                memory: Some(1 << 30)
            }
        );
        let text = manifest(
            "demo",
            &service(
                "web",
                "      resources:\n        cpus: 0\n        memory: 1m\n",
            ),
        );
        let diags = diagnostics(&text);
        assert_reported(
            &diags,
            line_of(&text, "cpus:", 0),
            "spec.services[0].resources.cpus",
            &["more than 0"],
        );
        assert_reported(
            &diags,
            line_of(&text, "memory:", 0),
            "spec.services[0].resources.memory",
            &["\"1m\"", "6m"],
        );
    }

    #[test]
    fn stop_timeout_and_signal_are_read_in_every_form_the_engine_takes() {
        let read = |extra: &str| only_service(&manifest("demo", &service("web", extra)));
        let web = read("");
        assert_eq!((web.stop_timeout, web.stop_signal), (None, None));
        let web = read("      stopTimeout: 15s\n      stopSignal: quit\n");
        assert_eq!(web.stop_timeout, Some(Duration::from_secs(15)));
        assert_eq!(web.stop_signal.as_deref(), Some("SIGQUIT"));
        for (written, expected) in [
            ("SIGTERM", "SIGTERM"),
            ("TERM", "SIGTERM"),
            ("15", "15"),
            ("\"15\"", "15"),
            ("SIGRTMIN+3", "SIGRTMIN+3"),
        ] {
            let web = read(&format!("      stopSignal: {written}\n"));
            assert_eq!(web.stop_signal.as_deref(), Some(expected), "{written}");
        }
        for (written, secs) in [("0s", 0), ("1m", 60), ("10m", 600), ("1500ms500ms", 2)] {
            let web = read(&format!("      stopTimeout: {written}\n"));
            assert_eq!(
                web.stop_timeout,
                Some(Duration::from_secs(secs)),
                "{written}"
            );
        }
    }

    #[test]
    fn bad_stop_timeout_and_signal_are_reported_with_their_value() {
        let field = |i: usize, name: &str| format!("spec.services[{i}].{name}");
        let text = manifest(
            "demo",
            &(service("aa", "      stopTimeout: 1.5s\n      stopSignal: SIGTERN\n")
                + &service("bb", "      stopTimeout: 11m\n      stopSignal: 65\n")
                + &service("cc", "      stopTimeout: 10\n      stopSignal: STOP\n")),
        );
        let diags = diagnostics(&text);
        assert_reported(&diags, 9, &field(0, "stopTimeout"), &["1.5s", "1s or 2s"]);
        assert_reported(
            &diags,
            10,
            &field(0, "stopSignal"),
            &["\"SIGTERN\"", "SIGTERM"],
        );
        assert_reported(&diags, 13, &field(1, "stopTimeout"), &["660s", "600s"]);
        assert_reported(&diags, 14, &field(1, "stopSignal"), &["\"65\"", "1 to 64"]);
        assert_reported(&diags, 17, &field(2, "stopTimeout"), &["\"10\"", "no unit"]);
        assert_reported(
            &diags,
            18,
            &field(2, "stopSignal"),
            &["\"STOP\"", "freezes"],
        );
        assert_eq!(diags.len(), 6, "{diags:#?}");
    }

    #[test]
    fn bad_policy_and_restart_policy_are_reported() {
        let text = manifest(
            "demo",
            &service(
                "web",
                "      restartPolicy: sometimes\n      remediation: {policy: pray}\n",
            ),
        );
        let diags = diagnostics(&text);
        assert_reported(
            &diags,
            9,
            "spec.services[0].restartPolicy",
            &["\"sometimes\""],
        );
        assert_reported(
            &diags,
            10,
            "spec.services[0].remediation.policy",
            &["\"pray\""],
        );
    }

    #[test]
    fn reserved_labels_are_refused() {
        let text = manifest(
            "demo",
            &service(
                "web",
                "      labels:\n        team: a\n        operator.cluster: x\n",
            ),
        );
        assert_reported(
            &diagnostics(&text),
            line_of(&text, "operator.cluster", 0),
            "spec.services[0].labels.operator.cluster",
            &["reserved"],
        );
    }

    #[test]
    fn env_values_that_yaml_mangles_are_refused() {
        let text = manifest(
            "demo",
            &service("web", "      env:\n        VERSION: 1.10\n        EMPTY:\n"),
        );
        let diags = diagnostics(&text);
        assert_reported(&diags, 10, "spec.services[0].env.VERSION", &["quote it"]);
        assert_reported(&diags, 11, "spec.services[0].env.EMPTY", &["no value"]);
    }

    /// Each plain scalar as an env value: `Some(value)` if accepted as that string, `None` if
    /// refused because YAML would read it as something else than what is written.
    #[test]
    fn env_values_are_kept_as_written_or_refused() {
        let table: &[(&str, Option<&str>)] = &[
            ("0x1F", None),
            ("-0x1f", None),
            ("+0x1F", None),
            ("0o17", None),
            ("0b101", None),
            ("+1", None),
            ("+12", None),
            ("-0", None),
            ("True", None),
            ("FALSE", None),
            (".inf", None),
            ("-.inf", None),
            (".nan", None),
            ("1e3", None),
            ("1.10", None),
            ("~", None),
            ("null", None),
            ("Null", None),
            ("8080", Some("8080")),
            ("-1", Some("-1")),
            ("0", Some("0")),
            ("true", Some("true")),
            ("false", Some("false")),
            ("017", Some("017")),
            ("0017", Some("0017")),
            ("1_000", Some("1_000")),
            ("0X1F", Some("0X1F")),
            ("yes", Some("yes")),
            ("no", Some("no")),
            ("on", Some("on")),
            ("off", Some("off")),
            ("y", Some("y")),
            ("1:20", Some("1:20")),
            ("'0x1F'", Some("0x1F")),
            ("\"+1\"", Some("+1")),
            ("!!str 0o17", Some("0o17")),
        ];
        for &(written, expected) in table {
            let text = manifest(
                "demo",
                &service("web", &format!("      env:\n        V: {written}\n")),
            );
            match (load_text(&text), expected) {
                (Ok(state), Some(value)) => {
                    assert_eq!(state.clusters[0].services[0].env["V"], value, "{written}");
                }
                (Err(ManifestError::Invalid(diags)), None) => {
                    assert_reported(&diags, 10, "spec.services[0].env.V", &[]);
                    let message = &diags[0].message;
                    let quoted = message.starts_with(&format!("value {written} is read by YAML"))
                        && message.contains("quote it");
                    assert!(
                        quoted || message.contains("no value"),
                        "{written}: {message}"
                    );
                }
                (other, _) => panic!("{written}: expected {expected:?}, got {other:?}"),
            }
        }
    }

    #[test]
    fn label_values_that_yaml_changes_are_refused_too() {
        let text = manifest("demo", &service("web", "      labels: {team: 0x1F}\n"));
        assert_reported(
            &diagnostics(&text),
            9,
            "spec.services[0].labels.team",
            &["0x1F", "31", "quote it (\"0x1F\")"],
        );
    }

    #[test]
    fn bad_healthcheck_test_and_command_are_reported() {
        let text = manifest(
            "demo",
            &service(
                "web",
                "      command: echo 'unterminated\n      healthcheck:\n        test: [\"curl\", \"x\"]\n",
            ),
        );
        let diags = diagnostics(&text);
        assert_reported(
            &diags,
            9,
            "spec.services[0].command",
            &["unbalanced quotes"],
        );
        assert_reported(
            &diags,
            11,
            "spec.services[0].healthcheck.test",
            &["CMD-SHELL"],
        );
    }

    #[test]
    fn unknown_and_self_dependencies_are_reported() {
        let text = manifest(
            "demo",
            &(service("web", "      dependsOn: [db, web]\n") + &service("cache", "")),
        );
        let diags = diagnostics(&text);
        let line = line_of(&text, "dependsOn", 0);
        assert_reported(
            &diags,
            line,
            "spec.services[0].dependsOn[0]",
            &["unknown service \"db\"", "web, cache"],
        );
        assert_reported(
            &diags,
            line,
            "spec.services[0].dependsOn[1]",
            &["depends on itself"],
        );
    }

    #[test]
    fn restart_with_names_dependencies_only() {
        let text = manifest(
            "demo",
            &(service(
                "web",
                "      dependsOn: [db]\n      restartWith: [db, cache, db]\n",
            ) + &service("db", "")
                + &service("cache", "")),
        );
        let diags = diagnostics(&text);
        let line = line_of(&text, "restartWith", 0);
        assert_reported(
            &diags,
            line,
            "spec.services[0].restartWith[1]",
            &["\"cache\" is not in dependsOn", "add it to dependsOn"],
        );
        assert_reported(
            &diags,
            line,
            "spec.services[0].restartWith[2]",
            &["\"db\" is listed twice"],
        );
        assert_eq!(diags.len(), 2, "{diags:#?}");
    }

    #[test]
    fn dependency_cycle_is_named() {
        let text = manifest(
            "demo",
            &(service("aa", "      dependsOn: [bb]\n")
                + &service("bb", "      dependsOn:\n        - cc\n")
                + &service("cc", "      dependsOn: [aa]\n")),
        );
        let diags = diagnostics(&text);
        assert_reported(
            &diags,
            line_of(&text, "dependsOn", 0),
            "spec.services[0].dependsOn",
            &["dependency cycle: aa -> bb -> cc -> aa"],
        );
        assert_eq!(diags.len(), 1, "{diags:#?}");
    }

    #[test]
    fn duplicate_service_names_in_one_cluster_are_refused() {
        let text = manifest("demo", &(service("web", "") + &service("web", "")));
        assert_reported(
            &diagnostics(&text),
            line_of(&text, "- name: web", 1),
            "spec.services[1].name",
            &["duplicate service name \"web\"", ":7"],
        );
    }

    #[test]
    fn duplicate_names_across_files_are_refused() {
        let dir = TempDir::new();
        let a = manifest("one", &service("web", ""));
        let b =
            manifest("one", &service("db", "")) + "---\n" + &manifest("two", &service("web", ""));
        let file_a = dir.write("a.yaml", &a);
        let file_b = dir.write("b.yaml", &b);
        let Err(ManifestError::Invalid(diags)) = load(&[file_a.clone(), file_b.clone()]) else {
            panic!("duplicates were accepted");
        };
        let first_name = format!("{}:4", file_a.display());
        let cluster = diags
            .iter()
            .find(|d| d.field == "metadata.name")
            .expect("cluster dup");
        assert_eq!(
            (cluster.path.clone(), cluster.line),
            (file_b.clone(), Some(4))
        );
        assert!(cluster.message.contains(&first_name), "{cluster}");
        let service = diags.iter().find(|d| {
            d.field == "spec.services[0].name"
                && d.path == file_b
                && d.line == Some(line_of(&b, "name: web", 0))
        });
        let service = service.unwrap_or_else(|| panic!("no service dup in {diags:#?}"));
        assert!(
            service.message.contains(&format!("{}:7", file_a.display())),
            "{service}"
        );
        assert_eq!(diags.len(), 2, "{diags:#?}");
    }

    #[test]
    fn host_port_used_twice_is_refused_across_clusters() {
        let text = manifest(
            "one",
            &service(
                "aa",
                "      ports: [\"18080:80\", \"127.0.0.1:9000:9000\"]\n",
            ),
        ) + "---\n"
            + &manifest(
                "two",
                &service(
                    "bb",
                    "      ports:\n        - \"127.0.0.2:9000:9000\"\n        - \"0.0.0.0:18080:8080\"\n        - \"18080:80/udp\"\n",
                ),
            );
        let diags = diagnostics(&text);
        assert_reported(
            &diags,
            line_of(&text, "0.0.0.0:18080", 0),
            "spec.services[0].ports[1]",
            &[
                "host port 18080/tcp is already published by service \"aa\"",
                ":9",
            ],
        );
        assert_eq!(diags.len(), 1, "{diags:#?}");
    }

    #[test]
    fn every_problem_of_a_document_is_reported_at_once() {
        let text = manifest(
            "demo",
            &(service(
                "web",
                "      ports: [\"x:1\"]\n      volumes: [\"v:rel\"]\n",
            ) + &service(
                "db",
                "      dependsOn: [nope]\n      labels: {operator.x: y}\n",
            )),
        );
        let diags = diagnostics(&text);
        let fields: Vec<&str> = diags.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.services[0].ports[0]",
                "spec.services[0].volumes[0]",
                "spec.services[1].dependsOn[0]",
                "spec.services[1].labels.operator.x",
            ]
        );
        let lines: Vec<Option<usize>> = diags.iter().map(|d| d.line).collect();
        assert_eq!(lines, [Some(9), Some(10), Some(13), Some(14)]);
    }
}
