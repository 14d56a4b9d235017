//! One compose project (its files merged, its variables substituted) to one manifest: what
//! can be carried over is, and every key that cannot is named in a comment with the reason.

use std::path::{Component, Path, PathBuf};

use super::ComposeError;
use super::emit::{self, Manifest};
use super::merge::keyed;
use super::node::{Node, Value};
use crate::manifest::parse_duration;
use crate::manifest::resources::{parse_cpus, parse_memory};
use crate::manifest::signal::parse_signal;
use crate::manifest::validate::dns_label;
use crate::manifest::volume::normalize;

/// What the conversion needs to know besides the compose tree.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    /// The project name (lowercase, `[a-z0-9_-]`).
    pub project: &'a str,
    /// Absolute; relative bind sources are resolved against it (the first file's folder).
    pub project_dir: &'a Path,
    /// Absolute; bind sources are written relative to it when they share more than the root
    /// with it. `None` (the manifest goes to standard output): absolute.
    pub output_dir: Option<&'a Path>,
    /// For `~` in bind sources.
    pub home: Option<&'a Path>,
}

/// Top-level keys compose knows; `x-*` keys are extensions, ignored by compose too.
const TOP_LEVEL: &[&str] = &["version", "name", "services", "networks", "volumes"];

/// Service keys that have no counterpart in a manifest, each with why.
const NOT_CARRIED: &[(&[&str], &str)] = &[
    (
        &["build"],
        "operator does not build images: build and tag the image before the controller starts it",
    ),
    (
        &["env_file"],
        "operator reads no env files: copy their variables into env",
    ),
    (
        &["expose"],
        "documentation only: every port of a container is reachable on the cluster network",
    ),
    (
        &["links", "external_links"],
        "legacy: containers reach each other by name on the cluster network",
    ),
    (
        &["scale"],
        "a manifest service is one container: declare one service per replica",
    ),
    (
        &["profiles"],
        "imported like any other service: remove it if its profile is not started",
    ),
    (
        &["secrets", "configs"],
        "swarm-style files: bind-mount them with volumes instead",
    ),
    (
        &["logging", "log_driver", "log_opt"],
        "the engine's default log driver applies",
    ),
    (
        &["pull_policy"],
        "the controller pulls an image when it is missing",
    ),
    (
        &[
            "mem_reservation",
            "memswap_limit",
            "mem_swappiness",
            "cpu_shares",
            "cpu_quota",
            "cpu_period",
            "cpuset",
            "cpu_count",
            "cpu_percent",
            "cpu_rt_runtime",
            "cpu_rt_period",
            "oom_kill_disable",
            "oom_score_adj",
            "pids_limit",
            "blkio_config",
            "storage_opt",
            "shm_size",
            "ulimits",
            "gpus",
        ],
        "the manifest limits cpus and memory only (resources): the engine's defaults apply",
    ),
    (
        &[
            "user",
            "working_dir",
            "hostname",
            "domainname",
            "mac_address",
            "extra_hosts",
            "dns",
            "dns_search",
            "dns_opt",
            "privileged",
            "read_only",
            "cap_add",
            "cap_drop",
            "cgroup",
            "cgroup_parent",
            "devices",
            "device_cgroup_rules",
            "ipc",
            "pid",
            "uts",
            "userns_mode",
            "security_opt",
            "sysctls",
            "tmpfs",
            "tty",
            "stdin_open",
            "init",
            "isolation",
            "runtime",
            "group_add",
            "volumes_from",
            "platform",
            "credential_spec",
            "annotations",
            "attach",
            "develop",
            "post_start",
            "pre_stop",
            "label_file",
            "use_api_socket",
        ],
        "not in the manifest format: the image's or the engine's default applies",
    ),
];

/// The reason a known service key is not carried over; `None` for keys that are carried
/// (or handled elsewhere) and for unknown keys.
fn not_carried(key: &str) -> Option<&'static str> {
    NOT_CARRIED
        .iter()
        .find(|(keys, _)| keys.contains(&key))
        .map(|(_, why)| *why)
}

/// Service keys carried over (in whole or in part) by [`convert_service`].
const CARRIED: &[&str] = &[
    "image",
    "container_name",
    "command",
    "entrypoint",
    "environment",
    "ports",
    "volumes",
    "networks",
    "network_mode",
    "healthcheck",
    "depends_on",
    "restart",
    "labels",
    "stop_grace_period",
    "stop_signal",
    "deploy",
    "cpus",
    "mem_limit",
];

/// The manifest for the compose project `root`.
///
/// # Errors
/// The first thing compose itself would refuse (an unknown key, a value of the wrong kind,
/// a volume or network used but not declared, a dependency on a missing service), or a name
/// that cannot be a manifest service name: one [`ComposeError::Invalid`] at its line.
pub fn manifest(root: &Node, ctx: &Context) -> Result<Manifest, ComposeError> {
    let mut header = Vec::new();
    for (key, node) in root.map("a compose file (a mapping with `services:`)")? {
        if key.starts_with("x-") || TOP_LEVEL.contains(&key.as_str()) {
            continue;
        }
        match key.as_str() {
            "secrets" | "configs" => header.push(format!(
                "compose key {key}: not carried over (files for services: bind-mount them with volumes instead)"
            )),
            "include" => {
                return Err(node.error(
                    "include is not supported: give the included files with -f as well, or import the output of `docker-compose config`",
                ));
            }
            _ => {
                return Err(node.error(format!(
                    "unknown top-level key \"{key}\": a compose file has version, name, services, networks, volumes, secrets, configs and x-* keys"
                )));
            }
        }
    }
    let networks = Networks::read(root.get("networks"), ctx.project)?;
    let volumes = Volumes::read(root.get("volumes"), ctx.project)?;
    header.extend(networks.comments.iter().cloned());
    header.extend(volumes.comments.iter().cloned());

    let services_node = root
        .get("services")
        .ok_or_else(|| root.error("no `services:`: there is nothing to import"))?;
    let entries = services_node.map("a mapping of services")?;
    if entries.is_empty() {
        return Err(services_node.error("no services: there is nothing to import"));
    }
    let names = manifest_names(entries)?;
    let keys: Vec<String> = entries.iter().map(|(k, _)| k.clone()).collect();
    let project = Project {
        ctx,
        keys: &keys,
        names: &names,
        networks: &networks,
        volumes: &volumes,
    };
    let mut services = Vec::with_capacity(entries.len());
    let mut attachments = Vec::with_capacity(entries.len());
    for ((key, node), name) in entries.iter().zip(&names) {
        let (service, attached) = project.service(key, node, name)?;
        services.push(service);
        attachments.push(attached);
    }
    let network = project.cluster_network(&mut services, &attachments);
    Ok(Manifest {
        header,
        name: ctx.project.to_string(),
        network,
        services,
    })
}

/// Whether `name` can be a manifest service name (and so a container name).
fn check_name(name: &str) -> Result<(), String> {
    dns_label(name)?;
    if name.chars().count() < 2 {
        return Err("Docker refuses container names shorter than 2 characters".into());
    }
    Ok(())
}

/// Each service's manifest name: its `container_name`, else its compose name.
fn manifest_names(entries: &[(String, Node)]) -> Result<Vec<String>, ComposeError> {
    let mut names: Vec<String> = Vec::with_capacity(entries.len());
    for (key, node) in entries {
        node.map("a service (a mapping with image, command, ...)")?;
        let name = match node.get("container_name") {
            Some(written) => {
                let name = written.text("a container name")?;
                check_name(&name).map_err(|why| {
                    written.error(format!(
                        "container_name \"{name}\" cannot be a manifest service name: {why}; the controller adopts a container by its service's name, so the two must be the same"
                    ))
                })?;
                name
            }
            None => {
                check_name(key).map_err(|why| {
                    node.error(format!(
                        "service name \"{key}\" cannot be a manifest service name: {why}; rename the service or give it a container_name"
                    ))
                })?;
                key.clone()
            }
        };
        if let Some(other) = names.iter().position(|n| *n == name) {
            return Err(node.error(format!(
                "service {key} would be called \"{name}\" in the manifest, as service {} is already: container names must differ",
                entries[other].0
            )));
        }
        names.push(name);
    }
    Ok(names)
}

/// A network declared under the top-level `networks:` (or compose's `default`).
#[derive(Debug, Clone)]
struct NetworkDecl {
    key: String,
    /// The network's name in the engine.
    name: String,
    internal: bool,
}

#[derive(Debug, Default)]
struct Networks {
    decls: Vec<NetworkDecl>,
    comments: Vec<String>,
}

impl Networks {
    fn read(node: Option<&Node>, project: &str) -> Result<Networks, ComposeError> {
        let mut networks = Networks {
            decls: vec![NetworkDecl {
                key: "default".into(),
                name: format!("{project}_default"),
                internal: false,
            }],
            comments: Vec::new(),
        };
        let Some(entries) = node.and_then(Node::entries) else {
            return Ok(networks);
        };
        for (key, decl) in entries {
            let mut name = None;
            let mut external = false;
            let mut internal = false;
            if let Some(fields) = decl.entries() {
                for (field, value) in fields {
                    match field.as_str() {
                        "name" => name = Some(value.text("a network name")?),
                        "external" => match &value.value {
                            Value::Bool(b) => external = *b,
                            Value::Map(_) => {
                                external = true;
                                if let Some(n) = value.get("name") {
                                    name = Some(n.text("a network name")?);
                                }
                            }
                            _ => return Err(value.expected("true or false")),
                        },
                        "internal" => internal = boolean(value)?,
                        "driver" | "driver_opts" | "ipam" | "attachable" | "labels"
                        | "enable_ipv6" | "enable_ipv4" => networks.comments.push(format!(
                            "compose key networks.{key}.{field}: not carried over (the network is compose's: the controller only joins it)"
                        )),
                        _ if field.starts_with("x-") => {}
                        _ => {
                            return Err(value.error(format!(
                                "unknown network key \"{field}\": expected name, external, internal, driver, driver_opts, ipam, attachable, labels or enable_ipv6"
                            )));
                        }
                    }
                }
            } else if !matches!(decl.value, Value::Null) {
                return Err(decl.expected("a network (a mapping, or empty)"));
            }
            let name = name.unwrap_or_else(|| {
                if external {
                    key.clone()
                } else {
                    format!("{project}_{key}")
                }
            });
            let decl = NetworkDecl {
                key: key.clone(),
                name,
                internal,
            };
            match networks.decls.iter_mut().find(|d| d.key == *key) {
                Some(existing) => *existing = decl,
                None => networks.decls.push(decl),
            }
        }
        Ok(networks)
    }

    fn get(&self, key: &str) -> Option<&NetworkDecl> {
        self.decls.iter().find(|d| d.key == key)
    }
}

/// Named volumes declared under the top-level `volumes:`, with their names in the engine.
#[derive(Debug, Default)]
struct Volumes {
    names: Vec<(String, String)>,
    comments: Vec<String>,
}

impl Volumes {
    fn read(node: Option<&Node>, project: &str) -> Result<Volumes, ComposeError> {
        let mut volumes = Volumes::default();
        let Some(entries) = node.and_then(Node::entries) else {
            return Ok(volumes);
        };
        for (key, decl) in entries {
            let mut name = None;
            let mut external = false;
            if let Some(fields) = decl.entries() {
                for (field, value) in fields {
                    match field.as_str() {
                        "name" => name = Some(value.text("a volume name")?),
                        "external" => match &value.value {
                            Value::Bool(b) => external = *b,
                            Value::Map(_) => {
                                external = true;
                                if let Some(n) = value.get("name") {
                                    name = Some(n.text("a volume name")?);
                                }
                            }
                            _ => return Err(value.expected("true or false")),
                        },
                        "driver" | "driver_opts" | "labels" => volumes.comments.push(format!(
                            "compose key volumes.{key}.{field}: not carried over (a volume the controller creates gets the engine's defaults; create it beforehand to keep them)"
                        )),
                        _ if field.starts_with("x-") => {}
                        _ => {
                            return Err(value.error(format!(
                                "unknown volume key \"{field}\": expected name, external, driver, driver_opts or labels"
                            )));
                        }
                    }
                }
            } else if !matches!(decl.value, Value::Null) {
                return Err(decl.expected("a volume (a mapping, or empty)"));
            }
            let name = name.unwrap_or_else(|| {
                if external {
                    key.clone()
                } else {
                    format!("{project}_{key}")
                }
            });
            volumes.names.push((key.clone(), name));
        }
        Ok(volumes)
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.names
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, n)| n.as_str())
    }
}

fn boolean(node: &Node) -> Result<bool, ComposeError> {
    match node.value {
        Value::Bool(b) => Ok(b),
        _ => Err(node.expected("true or false")),
    }
}

/// How a service is attached: `network_mode` (carried over as `networkMode`), or the
/// compose networks it joins, in order (each with the node that names it).
#[derive(Debug, Default)]
struct Attached {
    network_mode: bool,
    networks: Vec<(String, Option<Node>)>,
}

struct Project<'a> {
    ctx: &'a Context<'a>,
    /// The compose services' names, in order.
    keys: &'a [String],
    /// Their manifest names, in the same order.
    names: &'a [String],
    networks: &'a Networks,
    volumes: &'a Volumes,
}

impl Project<'_> {
    /// The manifest name of the compose service `key`.
    fn manifest_name(&self, key: &str) -> Option<&str> {
        let i = self.keys.iter().position(|k| k == key)?;
        self.names.get(i).map(String::as_str)
    }

    fn service(
        &self,
        key: &str,
        node: &Node,
        name: &str,
    ) -> Result<(emit::Service, Attached), ComposeError> {
        let mut out = emit::Service {
            name: name.to_string(),
            ..emit::Service::default()
        };
        let mut comments = Vec::new();
        let mut attached = Attached::default();
        let fields = node.map("a service (a mapping with image, command, ...)")?;
        let mut operator_remediation = None;
        for (field, value) in fields {
            if field == "x-operator" {
                operator_remediation = x_operator(value)?;
                continue;
            }
            if field.starts_with("x-") {
                continue;
            }
            if let Some(why) = not_carried(field) {
                comments.push(format!("compose key {field}: not carried over ({why})"));
                continue;
            }
            if field == "extends" {
                return Err(value.error(
                    "extends is not supported: import the output of `docker-compose config`, which has it resolved",
                ));
            }
            if !CARRIED.contains(&field.as_str()) {
                return Err(value.error(format!(
                    "unknown compose key \"{field}\" (a typo? compose itself refuses it)"
                )));
            }
            match field.as_str() {
                "image" => out.image = value.text("an image reference")?,
                "container_name" => {}
                "command" => out.command = words(value)?,
                "entrypoint" => out.entrypoint = words(value)?,
                "environment" => out.env = environment(value, &mut comments)?,
                "ports" => {
                    for item in value.seq("a list of ports")? {
                        out.ports.extend(port(item, &mut comments)?);
                    }
                }
                "volumes" => {
                    for item in value.seq("a list of volumes")? {
                        if let Some(volume) = self.volume(item, &mut comments)? {
                            out.volumes.push(volume);
                        }
                    }
                }
                "network_mode" => {
                    let mode = value.text("a network mode")?;
                    if mode.starts_with("service:") || mode.starts_with("container:") {
                        comments.push(format!(
                            "compose key network_mode: {mode} not carried over (sharing another container's network is not in the manifest format): the service joins the cluster network instead"
                        ));
                    } else {
                        out.network_mode = Some(mode);
                        attached.network_mode = true;
                    }
                }
                "networks" => attached.networks = self.service_networks(value)?,
                "healthcheck" => out.healthcheck = healthcheck(value, &mut comments)?,
                "depends_on" => out.depends_on = self.depends_on(value, &mut comments)?,
                "restart" => out.remediation = restart(value, &mut comments)?,
                "labels" => out.labels = labels(value, &mut comments)?,
                "stop_grace_period" => out.stop_timeout = stop_timeout(value, &mut comments)?,
                "deploy" => deploy(value, &mut out.resources, &mut comments)?,
                "cpus" => out.resources.cpus = cpus(value, "cpus", &mut comments)?,
                "mem_limit" => out.resources.memory = memory(value, "mem_limit", &mut comments)?,
                "stop_signal" => {
                    let signal = value.text("a signal name")?;
                    match parse_signal(&signal) {
                        Ok(canonical) => out.stop_signal = Some(canonical),
                        Err(why) => comments.push(format!(
                            "compose key stop_signal: {signal} not carried over ({why})"
                        )),
                    }
                }
                _ => {}
            }
        }
        if let Some(written) = operator_remediation {
            // The compose file says what the controller should do: what `restart` implies
            // for the controller is moot.
            comments.retain(|c| !c.starts_with("compose restart"));
            comments
                .push("remediation: as the compose file's x-operator.remediation gives it".into());
            out.remediation.written = Some(written);
        } else if node.get("restart").is_none() {
            out.remediation = restart_no("no restart key (compose's default is no)", &mut comments);
        }
        if attached.networks.is_empty() && !attached.network_mode {
            attached.networks.push(("default".into(), None));
        }
        if out.image.is_empty() {
            if node.get("build").is_none() {
                return Err(node.error("no image: compose needs image or build"));
            }
            out.image = format!("{}_{}", self.ctx.project, key.to_ascii_lowercase());
            comments.push(format!(
                "image {} is the name docker-compose 1.x gives the image it builds (v2: {}-{}); build it before the controller starts this service",
                out.image,
                self.ctx.project,
                key.to_ascii_lowercase()
            ));
        }
        // The container compose started is adopted by its compose labels (project and
        // service), whatever its name, so the controller manages it in place; one it
        // creates carries those labels too, so `docker-compose down` removes it.
        out.adopt = Some(emit::ComposeAdopt {
            project: self.ctx.project.to_string(),
            service: (key != name).then(|| key.to_string()),
        });
        if node.get("container_name").is_none() {
            comments.insert(
                0,
                format!(
                    "compose names this container {p}_{key}_1 (docker-compose 1.x) or {p}-{key}-1 (v2): the controller adopts it by its compose labels, and names a container it creates {name}",
                    p = self.ctx.project
                ),
            );
        } else if key != name {
            // On compose's networks the container answers to its compose service name too.
            if attached.network_mode {
                comments.push(format!(
                    "compose service name {key} not carried over as an alias (network_mode: no network aliases)"
                ));
            } else {
                out.aliases.push(key.to_string());
            }
        }
        out.comments = comments;
        Ok((out, attached))
    }

    /// `networks:` of a service: a list of names or a mapping of name to options.
    fn service_networks(&self, value: &Node) -> Result<Vec<(String, Option<Node>)>, ComposeError> {
        let map = keyed(value.clone())?;
        let mut out = Vec::new();
        for (key, options) in map.entries().unwrap_or_default() {
            if self.networks.get(key).is_none() {
                return Err(options.error(format!(
                    "network \"{key}\" is not declared under the top-level networks:"
                )));
            }
            out.push((key.clone(), Some(options.clone())));
        }
        Ok(out)
    }

    fn depends_on(
        &self,
        value: &Node,
        comments: &mut Vec<String>,
    ) -> Result<Vec<String>, ComposeError> {
        let map = keyed(value.clone())?;
        let mut out = Vec::new();
        for (key, options) in map.entries().unwrap_or_default() {
            let Some(name) = self.manifest_name(key) else {
                return Err(options.error(format!(
                    "depends on \"{key}\", which is not a service of this project"
                )));
            };
            if let Some(fields) = options.entries() {
                for (field, v) in fields {
                    match (field.as_str(), v.scalar().as_deref()) {
                        ("condition", Some("service_started")) | ("required", Some("true")) => {}
                        ("condition" | "required" | "restart", _) => comments.push(format!(
                            "compose key depends_on.{key}.{field}: {} not carried over (dependsOn waits until {name} is running, no more)",
                            v.scalar().unwrap_or_default()
                        )),
                        _ if field.starts_with("x-") => {}
                        _ => {
                            return Err(v.error(format!(
                                "unknown depends_on key \"{field}\": expected condition, required or restart"
                            )));
                        }
                    }
                }
            } else if !matches!(options.value, Value::Null | Value::Str(_)) {
                return Err(options.expected("a dependency's options (a mapping)"));
            }
            out.push(name.to_string());
        }
        Ok(out)
    }

    /// One `volumes` item as a manifest volume; a form the manifest cannot say is a comment.
    fn volume(
        &self,
        item: &Node,
        comments: &mut Vec<String>,
    ) -> Result<Option<String>, ComposeError> {
        let (source, target, read_only) = match &item.value {
            Value::Str(s) => {
                let parts: Vec<&str> = s.split(':').collect();
                let (source, target, mode) = match parts[..] {
                    [target] => {
                        comments.push(format!(
                            "compose key volumes: \"{s}\" not carried over (an anonymous volume: give it a name, as NAME:{target})"
                        ));
                        return Ok(None);
                    }
                    [source, target] => (source, target, ""),
                    [source, target, mode] => (source, target, mode),
                    _ => {
                        return Err(item.error(format!(
                            "invalid volume \"{s}\": expected SOURCE:TARGET[:MODE]"
                        )));
                    }
                };
                let mut read_only = false;
                for option in mode.split(',').filter(|o| !o.is_empty()) {
                    match option {
                        "ro" => read_only = true,
                        "rw" => {}
                        other => comments.push(format!(
                            "compose key volumes: option {other} of {target} not carried over (the manifest knows ro and rw only)"
                        )),
                    }
                }
                (source.to_string(), target.to_string(), read_only)
            }
            Value::Map(fields) => {
                let mut kind = None;
                let mut source = None;
                let mut target = None;
                let mut read_only = false;
                for (field, v) in fields {
                    match field.as_str() {
                        "type" => kind = Some(v.text("a volume type")?),
                        "source" => source = Some(v.text("a volume source")?),
                        "target" => target = Some(v.text("a path")?),
                        "read_only" => read_only = boolean(v)?,
                        "bind" | "volume" | "tmpfs" | "image" | "consistency" => {
                            comments.push(format!(
                                "compose key volumes[].{field}: not carried over (the manifest knows source, target and read-only only)"
                            ))
                        }
                        _ if field.starts_with("x-") => {}
                        _ => {
                            return Err(v.error(format!(
                                "unknown volume key \"{field}\": expected type, source, target, read_only, bind, volume, tmpfs or consistency"
                            )));
                        }
                    }
                }
                let Some(target) = target else {
                    return Err(item.error("a volume without target"));
                };
                match (kind.as_deref(), source) {
                    (Some("bind" | "volume") | None, Some(source)) => (source, target, read_only),
                    (Some("volume") | None, None) => {
                        comments.push(format!(
                            "compose key volumes: {target} not carried over (an anonymous volume: give it a source)"
                        ));
                        return Ok(None);
                    }
                    (Some(kind @ ("tmpfs" | "npipe" | "cluster" | "image")), _) => {
                        comments.push(format!(
                            "compose key volumes: {kind} at {target} not carried over (the manifest mounts named volumes and host paths only)"
                        ));
                        return Ok(None);
                    }
                    (Some("bind"), None) => return Err(item.error("a bind mount without source")),
                    (Some(other), _) => {
                        return Err(item.error(format!(
                            "unknown volume type \"{other}\": expected volume, bind or tmpfs"
                        )));
                    }
                }
            }
            _ => return Err(item.expected("a volume (\"SOURCE:TARGET[:MODE]\" or a mapping)")),
        };
        if !target.starts_with('/') {
            return Err(item.error(format!(
                "volume target \"{target}\" is not an absolute path"
            )));
        }
        let mode = if read_only { ":ro" } else { "" };
        let host = if source.starts_with('/') {
            Some(PathBuf::from(&source))
        } else if source == "."
            || source == ".."
            || source.starts_with("./")
            || source.starts_with("../")
        {
            Some(self.ctx.project_dir.join(&source))
        } else if source == "~" || source.starts_with("~/") {
            let Some(home) = self.ctx.home else {
                comments.push(format!(
                    "compose key volumes: {source} not carried over (HOME is not set, so ~ means nothing)"
                ));
                return Ok(None);
            };
            Some(home.join(source.trim_start_matches('~').trim_start_matches('/')))
        } else if source.starts_with('~') {
            comments.push(format!(
                "compose key volumes: {source} not carried over (another user's ~: write the path)"
            ));
            return Ok(None);
        } else {
            None
        };
        let Some(host) = host else {
            let Some(name) = self.volumes.get(&source) else {
                return Err(item.error(format!(
                    "named volume \"{source}\" is not declared under the top-level volumes: (compose refuses it too)"
                )));
            };
            return Ok(Some(format!("{name}:{target}{mode}")));
        };
        let host = normalize(&host);
        let written = self
            .ctx
            .output_dir
            .and_then(|dir| relative(dir, &host))
            .unwrap_or_else(|| host.to_string_lossy().into_owned());
        if written.contains(':') {
            comments.push(format!(
                "compose key volumes: {written} not carried over (a ':' in a path cannot be written in the manifest's SOURCE:TARGET form)"
            ));
            return Ok(None);
        }
        Ok(Some(format!("{written}:{target}{mode}")))
    }

    /// The cluster network: compose's default network when a service is on it, else the
    /// network most services are on. It is compose's, so the controller joins it and never
    /// creates or changes it (`external: true`). A service elsewhere gets its network as
    /// `networkMode`; further networks of a service are comments.
    fn cluster_network(
        &self,
        services: &mut [emit::Service],
        attachments: &[Attached],
    ) -> emit::Network {
        let mut used: Vec<(&str, usize)> = Vec::new();
        for attached in attachments {
            for (key, _) in &attached.networks {
                match used.iter_mut().find(|(k, _)| k == key) {
                    Some((_, count)) => *count += 1,
                    None => used.push((key, 1)),
                }
            }
        }
        let chosen = if used.is_empty() || used.iter().any(|(k, _)| *k == "default") {
            "default"
        } else {
            // The first of the most used: max_by_key would take the last.
            let most = used.iter().map(|(_, n)| *n).max().unwrap_or(0);
            used.iter()
                .find(|(_, n)| *n == most)
                .map_or("default", |(k, _)| k)
        };
        let engine_name = |key: &str| {
            self.networks
                .get(key)
                .map_or_else(|| key.to_string(), |d| d.name.clone())
        };
        for (service, attached) in services.iter_mut().zip(attachments) {
            if attached.network_mode {
                continue;
            }
            let on_cluster = attached.networks.iter().any(|(k, _)| k == chosen);
            let joined = if on_cluster {
                chosen.to_string()
            } else {
                let first = attached
                    .networks
                    .first()
                    .map_or(chosen, |(k, _)| k.as_str())
                    .to_string();
                service.network_mode = Some(engine_name(&first));
                service.comments.push(format!(
                    "compose network {first} is not the cluster network: the service joins it as networkMode"
                ));
                first
            };
            for (key, options) in &attached.networks {
                if *key != joined {
                    service.comments.push(format!(
                        "compose key networks: {key} not carried over (a manifest service joins one network; this one joins {joined})"
                    ));
                }
                for (field, value) in options.as_ref().and_then(Node::entries).unwrap_or_default() {
                    if field == "aliases" && *key == joined {
                        // Names the stack's clients may use: the container keeps them.
                        for alias in value.seq("a list of aliases").into_iter().flatten() {
                            let Some(alias) = alias.scalar() else {
                                continue;
                            };
                            if alias != service.name && !service.aliases.contains(&alias) {
                                service.aliases.push(alias);
                            }
                        }
                    } else if !field.starts_with("x-") {
                        service.comments.push(format!(
                            "compose key networks.{key}.{field}: not carried over (on its network a service is known by its name and aliases only)"
                        ));
                    }
                }
            }
        }
        let (name, internal) = self.networks.get(chosen).map_or_else(
            || (engine_name(chosen), false),
            |d| (d.name.clone(), d.internal),
        );
        let comment = if chosen == "default" {
            format!("compose's default network of project {}", self.ctx.project)
        } else {
            format!("compose network {chosen}")
        };
        emit::Network {
            name,
            external: true,
            internal,
            comments: vec![format!(
                "{comment}: compose creates it, so the controller joins it and never creates or changes it (external: true)"
            )],
        }
    }
}

/// A service's `x-operator`: the controller's own settings, which compose ignores
/// (`x-` keys are extensions). `remediation` is carried over as written (as flow YAML), so
/// that a compose file can say what its manifest should; the manifest's validation checks it.
fn x_operator(value: &Node) -> Result<Option<String>, ComposeError> {
    let mut remediation = None;
    for (field, v) in value.map("a mapping with remediation")? {
        match field.as_str() {
            "remediation" => {
                v.map("a remediation (a mapping with policy, maxRestarts, ...)")?;
                remediation = Some(flow(v));
            }
            _ => {
                return Err(v.error(format!(
                    "unknown x-operator key \"{field}\": expected remediation"
                )));
            }
        }
    }
    Ok(remediation)
}

/// A value as flow YAML (`{a: 1, b: [x, y]}`), scalars as written.
fn flow(node: &Node) -> String {
    match &node.value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.clone(),
        // A duration stays plain (`30m`), as a manifest writes it.
        Value::Str(s) if !s.contains(',') && emit::duration(s) == *s => s.clone(),
        Value::Str(s) => emit::flow_item(s),
        Value::Seq(items) => {
            let items: Vec<String> = items.iter().map(flow).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Map(entries) => {
            let entries: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{}: {}", emit::flow_item(k), flow(v)))
                .collect();
            format!("{{{}}}", entries.join(", "))
        }
    }
}

/// `deploy`: its `resources.limits` (cpus, memory) are the container's limits, as compose
/// (v2, and 1.x with `--compatibility`) applies them; the rest is for swarm.
fn deploy(
    value: &Node,
    resources: &mut emit::Resources,
    comments: &mut Vec<String>,
) -> Result<(), ComposeError> {
    for (field, v) in value.map("a deploy mapping")? {
        match field.as_str() {
            "resources" => {
                for (kind, r) in v.map("a mapping with limits and reservations")? {
                    match kind.as_str() {
                        "limits" => {
                            for (limit, l) in r.map("a mapping with cpus and memory")? {
                                let at = format!("deploy.resources.limits.{limit}");
                                match limit.as_str() {
                                    "cpus" => resources.cpus = cpus(l, &at, comments)?,
                                    "memory" => resources.memory = memory(l, &at, comments)?,
                                    _ if limit.starts_with("x-") => {}
                                    _ => comments.push(format!(
                                        "compose key {at}: not carried over (the manifest limits cpus and memory only)"
                                    )),
                                }
                            }
                        }
                        _ if kind.starts_with("x-") => {}
                        _ => comments.push(format!(
                            "compose key deploy.resources.{kind}: not carried over (the manifest has limits only)"
                        )),
                    }
                }
            }
            "replicas" => comments.push(
                "compose key deploy.replicas: not carried over (a manifest service is one container: declare one service per replica)"
                    .into(),
            ),
            _ if field.starts_with("x-") => {}
            _ => comments.push(format!(
                "compose key deploy.{field}: not carried over (swarm only)"
            )),
        }
    }
    Ok(())
}

/// A CPU limit, checked as the manifest checks it; one it refuses is a comment.
fn cpus(
    value: &Node,
    at: &str,
    comments: &mut Vec<String>,
) -> Result<Option<String>, ComposeError> {
    let text = value.text("a number of CPUs")?;
    match parse_cpus(&text) {
        Ok(_) => Ok(Some(text)),
        Err(why) => {
            comments.push(format!("compose key {at}: {text} not carried over ({why})"));
            Ok(None)
        }
    }
}

/// A memory limit, checked as the manifest checks it; one it refuses is a comment.
fn memory(
    value: &Node,
    at: &str,
    comments: &mut Vec<String>,
) -> Result<Option<String>, ComposeError> {
    let text = value.text("a memory size such as 512m")?;
    match parse_memory(&text) {
        Ok(_) => Ok(Some(text)),
        Err(why) => {
            comments.push(format!("compose key {at}: {text} not carried over ({why})"));
            Ok(None)
        }
    }
}

/// `command` / `entrypoint`: a list, or a string split with shell rules as compose does.
fn words(value: &Node) -> Result<Option<Vec<String>>, ComposeError> {
    match &value.value {
        Value::Null => Ok(None),
        Value::Str(s) => shlex::split(s).map(Some).ok_or_else(|| {
            value.error(format!(
                "cannot split \"{s}\" into words: a quote is not closed"
            ))
        }),
        Value::Seq(items) => items
            .iter()
            .map(|i| i.text("a word (a string)"))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        _ => Err(value.expected("a string or a list of strings")),
    }
}

fn environment(
    value: &Node,
    comments: &mut Vec<String>,
) -> Result<Vec<(String, String)>, ComposeError> {
    let map = keyed(value.clone())?;
    let mut out = Vec::new();
    for (key, v) in map.entries().unwrap_or_default() {
        match &v.value {
            Value::Null => comments.push(format!(
                "compose key environment: {key} not carried over (compose passes it from the shell that runs compose; write its value under env)"
            )),
            Value::Seq(_) | Value::Map(_) => return Err(v.expected("a string, a number or a boolean")),
            _ => out.push((key.clone(), v.scalar().unwrap_or_default())),
        }
    }
    Ok(out)
}

fn labels(value: &Node, comments: &mut Vec<String>) -> Result<Vec<(String, String)>, ComposeError> {
    let map = keyed(value.clone())?;
    let mut out = Vec::new();
    for (key, v) in map.entries().unwrap_or_default() {
        if key.starts_with("operator.") {
            comments.push(format!(
                "compose key labels: {key} not carried over (labels starting with operator. are the controller's own)"
            ));
            continue;
        }
        match &v.value {
            Value::Null => out.push((key.clone(), String::new())),
            Value::Seq(_) | Value::Map(_) => return Err(v.expected("a string")),
            _ => out.push((key.clone(), v.scalar().unwrap_or_default())),
        }
    }
    Ok(out)
}

fn restart_no(why: &str, comments: &mut Vec<String>) -> emit::Remediation {
    comments.push(format!(
        "{why}: remediation.policy observe, so the controller reports drift and touches nothing, as nothing restarts it under compose; write policy: restart to let the controller heal it"
    ));
    emit::Remediation {
        policy: "observe",
        max_restarts: None,
        written: None,
    }
}

/// compose's `restart` as the controller's remediation: the controller heals in place of
/// the engine, whose own restart policy stays `no` (two healers would fight).
fn restart(value: &Node, comments: &mut Vec<String>) -> Result<emit::Remediation, ComposeError> {
    let policy = match &value.value {
        Value::Bool(false) => "no".to_string(),
        Value::Str(s) => s.clone(),
        _ => return Err(value.expected("no, always, unless-stopped or on-failure[:N]")),
    };
    let healed = |max_restarts, comments: &mut Vec<String>| {
        comments.push(format!(
            "compose restart: {policy}: the controller restarts it in place of the engine (remediation.policy restart; a container the controller creates gets the engine's restartPolicy no, so that one healer acts; an adopted container keeps compose's policy until it is recreated)"
        ));
        emit::Remediation {
            policy: "restart",
            max_restarts,
            written: None,
        }
    };
    Ok(match policy.as_str() {
        "no" => restart_no("compose restart: no", comments),
        "always" | "unless-stopped" | "on-failure" => healed(None, comments),
        other => match other.strip_prefix("on-failure:").map(str::parse::<u32>) {
            Some(Ok(0)) => healed(None, comments),
            Some(Ok(n)) => healed(Some(n), comments),
            _ => {
                return Err(value.error(format!(
                    "invalid restart policy \"{other}\": expected no, always, unless-stopped or on-failure[:N]"
                )));
            }
        },
    })
}

fn stop_timeout(value: &Node, comments: &mut Vec<String>) -> Result<Option<String>, ComposeError> {
    let text = value.text("a duration such as 10s")?;
    let duration = parse_duration(&text).map_err(|why| value.error(why))?;
    if duration.subsec_nanos() != 0 || duration.as_secs() > 600 {
        comments.push(format!(
            "compose key stop_grace_period: {text} not carried over (stopTimeout takes whole seconds from 0s to 10m)"
        ));
        return Ok(None);
    }
    Ok(Some(format!("{}s", duration.as_secs())))
}

fn healthcheck(
    value: &Node,
    comments: &mut Vec<String>,
) -> Result<Option<emit::Healthcheck>, ComposeError> {
    let fields = value.map("a healthcheck (a mapping with test, interval, ...)")?;
    let mut out = emit::Healthcheck::default();
    let mut disabled = false;
    for (field, v) in fields {
        match field.as_str() {
            "test" => {
                out.test = match &v.value {
                    Value::Str(s) if !s.trim().is_empty() => vec!["CMD-SHELL".into(), s.clone()],
                    Value::Seq(items) if !items.is_empty() => {
                        let words = items
                            .iter()
                            .map(|i| i.text("a word (a string)"))
                            .collect::<Result<Vec<_>, _>>()?;
                        if !matches!(words[0].as_str(), "CMD" | "CMD-SHELL" | "NONE") {
                            return Err(v.error(format!(
                                "a healthcheck test list starts with CMD, CMD-SHELL or NONE, not \"{}\"",
                                words[0]
                            )));
                        }
                        words
                    }
                    _ => return Err(v.expected("a command (a string, or a list starting with CMD, CMD-SHELL or NONE)")),
                }
            }
            "interval" => out.interval = Some(duration(v)?),
            "timeout" => out.timeout = Some(duration(v)?),
            "start_period" => out.start_period = Some(duration(v)?),
            "retries" => {
                let text = v.text("a number")?;
                out.retries = Some(text.parse().map_err(|_| {
                    v.error(format!("retries \"{text}\" is not a whole number"))
                })?);
            }
            "disable" => disabled = boolean(v)?,
            "start_interval" => comments.push(
                "compose key healthcheck.start_interval: not carried over (not in the manifest format)"
                    .to_string(),
            ),
            _ if field.starts_with("x-") => {}
            _ => {
                return Err(v.error(format!(
                    "unknown healthcheck key \"{field}\": expected test, interval, timeout, retries, start_period, start_interval or disable"
                )));
            }
        }
    }
    if disabled {
        return Ok(Some(emit::Healthcheck {
            test: vec!["NONE".into()],
            ..emit::Healthcheck::default()
        }));
    }
    if out.test.is_empty() {
        comments.push(
            "compose key healthcheck: not carried over (no test: it only changes the timing of the image's own check, and a manifest healthcheck needs its test)"
                .into(),
        );
        return Ok(None);
    }
    Ok(Some(out))
}

/// A compose duration, checked against the manifest's syntax (which is the same).
fn duration(value: &Node) -> Result<String, ComposeError> {
    let text = value.text("a duration such as 10s")?;
    parse_duration(&text).map_err(|why| value.error(why))?;
    Ok(text)
}

/// One `ports` item as manifest mappings (a range gives one per port); a form the manifest
/// cannot say is a comment.
fn port(item: &Node, comments: &mut Vec<String>) -> Result<Vec<String>, ComposeError> {
    let (written, host_ip, published, target, protocol) = match &item.value {
        Value::Number(n) => (
            n.clone(),
            String::new(),
            String::new(),
            n.clone(),
            "tcp".to_string(),
        ),
        Value::Str(s) => {
            let (spec, protocol) = s.rsplit_once('/').unwrap_or((s, "tcp"));
            let invalid = || {
                item.error(format!(
                    "invalid port \"{s}\": expected [[HOST_IP:]HOST:]CONTAINER[/PROTOCOL]"
                ))
            };
            let (host_ip, published, target) = if let Some(bracketed) = spec.strip_prefix('[') {
                let (ip, rest) = bracketed.split_once("]:").ok_or_else(invalid)?;
                let (published, target) = rest.split_once(':').ok_or_else(invalid)?;
                (ip, published, target)
            } else {
                let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
                match parts[..] {
                    [target] => ("", "", target),
                    [target, published] => ("", published, target),
                    [target, published, ip] => (ip, published, target),
                    _ => return Err(invalid()),
                }
            };
            (
                s.clone(),
                host_ip.to_string(),
                published.to_string(),
                target.to_string(),
                protocol.to_string(),
            )
        }
        Value::Map(fields) => {
            let mut target = None;
            let (mut host_ip, mut published, mut protocol) =
                (String::new(), String::new(), "tcp".to_string());
            for (field, v) in fields {
                match field.as_str() {
                    "target" => target = Some(v.text("a port number")?),
                    "published" => published = v.text("a port number")?,
                    "host_ip" => host_ip = v.text("an IP address")?,
                    "protocol" => protocol = v.text("tcp or udp")?,
                    // Means something under swarm only.
                    "mode" => {}
                    "name" | "app_protocol" => comments.push(format!(
                        "compose key ports[].{field}: not carried over (not in the manifest format)"
                    )),
                    _ if field.starts_with("x-") => {}
                    _ => {
                        return Err(v.error(format!(
                            "unknown port key \"{field}\": expected target, published, host_ip, protocol, mode, name or app_protocol"
                        )));
                    }
                }
            }
            let target = target.ok_or_else(|| item.error("a port without target"))?;
            let written = format!("{published}:{target}/{protocol}");
            (written, host_ip, published, target, protocol)
        }
        _ => return Err(item.expected("a port (\"HOST:CONTAINER\", a number or a mapping)")),
    };
    let protocol_suffix = match protocol.as_str() {
        "tcp" => "",
        "udp" => "/udp",
        "sctp" => {
            comments.push(format!(
                "compose key ports: {written} not carried over (the manifest publishes tcp and udp only)"
            ));
            return Ok(Vec::new());
        }
        other => {
            return Err(item.error(format!("invalid protocol \"{other}\": expected tcp or udp")));
        }
    };
    let range = |text: &str| -> Result<(u32, u32), ComposeError> {
        let bad = || {
            item.error(format!(
                "invalid port \"{written}\": \"{text}\" is not a port (1-65535) or a range of them"
            ))
        };
        let (lo, hi) = text.split_once('-').unwrap_or((text, text));
        let lo: u32 = lo.trim().parse().map_err(|_| bad())?;
        let hi: u32 = hi.trim().parse().map_err(|_| bad())?;
        if !(1..=65535).contains(&lo) || !(lo..=65535).contains(&hi) {
            return Err(bad());
        }
        Ok((lo, hi))
    };
    let target = range(&target)?;
    if published.is_empty() {
        comments.push(format!(
            "compose key ports: {written} not carried over (no host port: compose publishes it on a random one, and a manifest names it: write HOST:{})",
            target.0
        ));
        return Ok(Vec::new());
    }
    let published = range(&published)?;
    let ip = match host_ip.as_str() {
        "" => String::new(),
        ip if ip.contains(':') => format!("[{ip}]:"),
        ip => format!("{ip}:"),
    };
    let (count, target_count) = (published.1 - published.0, target.1 - target.0);
    if count != target_count {
        if target_count == 0 {
            comments.push(format!(
                "compose key ports: {written} not carried over (compose picks one free host port of the range; a manifest names it)"
            ));
            return Ok(Vec::new());
        }
        return Err(item.error(format!(
            "invalid port \"{written}\": the host and container ranges differ in length"
        )));
    }
    Ok((0..=count)
        .map(|i| format!("{ip}{}:{}{protocol_suffix}", published.0 + i, target.0 + i))
        .collect())
}

/// `from` to `to` (both absolute and normalized) as `./x` or `../x`, when they share more
/// than the root; else `None`.
pub(super) fn relative(from: &Path, to: &Path) -> Option<String> {
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    if common <= 1 || common == to.len() {
        return None;
    }
    let rest: PathBuf = to[common..].iter().collect();
    let rest = rest.to_str()?;
    let ups = from.len() - common;
    Some(if ups == 0 {
        format!("./{rest}")
    } else {
        format!("{}{rest}", "../".repeat(ups))
    })
}
