//! The checks that need the drill's cluster: what a drill names must exist in it, and a
//! drill must not be able to hurt anything else (the host's network, another cluster).

use std::net::IpAddr;

use super::{Checked, Validator};
use crate::chaos::spec::{FaultKind, ProbeKind, Target, Workload};
use crate::manifest::{Cluster, DesiredState, NetworkMode, Service, VolumeMount};

/// Resolves the drill's cluster (filling in `drill.cluster` when the file left it out) and
/// checks everything against it.
pub(super) fn check(
    c: &mut Checked,
    desired: &DesiredState,
    netem_check: &dyn Fn() -> Result<(), String>,
    v: &mut Validator,
) {
    let Some(cluster) = cluster(c, desired, v) else {
        return;
    };
    c.drill.cluster = cluster.name.clone();
    for (probe, &i) in c.drill.steady_state.probes.iter().zip(&c.probes) {
        let field = format!("spec.steadyState.probes[{i}]");
        match &probe.kind {
            ProbeKind::Promql { .. } => {
                if cluster.prometheus.url.is_none() {
                    v.error(
                        &format!("{field}.promql"),
                        no_prometheus(cluster, "a promql probe"),
                    );
                }
            }
            ProbeKind::Http { url, .. } => {
                if let Err(why) = aims_inside(url, cluster) {
                    v.error(&format!("{field}.http.url"), why);
                }
            }
            ProbeKind::Command { .. } => {}
        }
    }
    if let Some(Workload::EtcdCanary { endpoints, .. }) = &c.drill.workload {
        for (url, &j) in endpoints.iter().zip(&c.endpoints) {
            if let Err(why) = aims_inside(url, cluster) {
                v.error(&format!("spec.workload.canary.endpoints[{j}]"), why);
            }
        }
    }
    // Asked at most once, and only if a delay fault needs the answer.
    let mut netem: Option<Result<(), String>> = None;
    for (fault, at) in c.drill.faults.iter().zip(&c.faults) {
        let field = format!("spec.faults[{}]", at.index);
        let Some(targets) = candidates(&field, &fault.target, at.by_service, cluster, v) else {
            continue;
        };
        let kind = fault.kind.name();
        if fault.kind.is_network() {
            for s in targets
                .iter()
                .filter(|s| s.network_mode == NetworkMode::Host)
            {
                v.error(&format!("{field}.target"), host_networked(&s.name, kind));
            }
        }
        match &fault.kind {
            FaultKind::NetworkDisconnect { network } => {
                disconnect(&field, network.as_deref(), &targets, cluster, v)
            }
            FaultKind::Partition { from } => partition(&field, from, &targets, cluster, v),
            FaultKind::DiskFill { volume, .. } => {
                for s in &targets {
                    if let Err(why) = fillable(s, volume) {
                        v.error(&format!("{field}.volume"), why);
                    }
                }
            }
            FaultKind::Delay { .. } => {
                if let Err(why) = netem.get_or_insert_with(netem_check) {
                    v.error(
                        &format!("{field}.kind"),
                        format!(
                            "delay cannot run on this machine: {why}. The drill is otherwise valid: run it where netem is available"
                        ),
                    );
                }
            }
            _ => {}
        }
    }
}

fn cluster<'d>(c: &Checked, desired: &'d DesiredState, v: &mut Validator) -> Option<&'d Cluster> {
    let names: Vec<&str> = desired.clusters.iter().map(|c| c.name.as_str()).collect();
    let manifest = c.drill.manifest.display();
    if c.drill.cluster.is_empty() {
        return match desired.clusters.as_slice() {
            [only] => Some(only),
            [] => {
                v.error("spec.manifest", format!("{manifest} declares no cluster"));
                None
            }
            _ => {
                v.error(
                    "spec.cluster",
                    format!(
                        "{manifest} declares {} clusters ({}): say which one with cluster:",
                        names.len(),
                        names.join(", ")
                    ),
                );
                None
            }
        };
    }
    let found = desired.cluster(&c.drill.cluster);
    if found.is_none() {
        v.error(
            "spec.cluster",
            format!(
                "no cluster \"{}\" in {manifest} (it declares {})",
                c.drill.cluster,
                names.join(", ")
            ),
        );
    }
    found
}

fn no_prometheus(cluster: &Cluster, what: &str) -> String {
    format!(
        "cluster \"{}\" has no Prometheus (spec.prometheus.url in its manifest, or $PROMETHEUS_URL): {what} needs one",
        cluster.name
    )
}

fn host_networked(service: &str, kind: &str) -> String {
    format!(
        "service \"{service}\" uses networkMode: host: a host-networked service shares the host's network namespace, so a {kind} fault there would cut the host, not the service; run the cluster on its own network (as manifests/examples/etcd-net/etcd-net.yaml does)"
    )
}

/// A drill sends traffic only to loopback or to a service of the cluster it breaks.
fn aims_inside(url: &str, cluster: &Cluster) -> Result<(), String> {
    // An unparsable URL was reported by the file checks and left out.
    let Some(host) = reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
    else {
        return Ok(());
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let inside = match bare.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => bare.eq_ignore_ascii_case("localhost") || cluster.service(bare).is_some(),
    };
    if inside {
        Ok(())
    } else {
        Err(format!(
            "\"{url}\" aims at {host}, which is neither loopback nor a service of cluster \"{}\": a drill sends traffic only to the cluster it breaks",
            cluster.name
        ))
    }
}

/// The services a target may hit, each checked to exist; `None` when nothing is left to
/// check the fault's parameters against.
fn candidates<'c>(
    field: &str,
    target: &Target,
    by_service: bool,
    cluster: &'c Cluster,
    v: &mut Validator,
) -> Option<Vec<&'c Service>> {
    let field = format!("{field}.target");
    let lookup = |v: &mut Validator, at: &str, name: &str| {
        let found = cluster.service(name);
        if found.is_none() {
            v.error(at, unknown_service(cluster, name));
        }
        found
    };
    match target {
        Target::Services { services } => {
            let mut found = Vec::new();
            for (j, name) in services.iter().enumerate() {
                let at = if by_service {
                    format!("{field}.service")
                } else {
                    format!("{field}.services[{j}]")
                };
                found.extend(lookup(v, &at, name));
            }
            (found.len() == services.len()).then_some(found)
        }
        Target::Selector { labels } => {
            let found: Vec<&Service> = cluster
                .services
                .iter()
                .filter(|s| labels.iter().all(|(k, want)| s.labels.get(k) == Some(want)))
                .collect();
            if found.is_empty() {
                let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                v.error(
                    &format!("{field}.selector"),
                    format!(
                        "no service of cluster \"{}\" has the labels {}",
                        cluster.name,
                        wanted.join(", ")
                    ),
                );
                return None;
            }
            Some(found)
        }
        Target::Random { among, count } => {
            let found: Vec<&Service> = if among.is_empty() {
                cluster.services.iter().collect()
            } else {
                let mut found = Vec::new();
                for (j, name) in among.iter().enumerate() {
                    found.extend(lookup(v, &format!("{field}.random.among[{j}]"), name));
                }
                if found.len() != among.len() {
                    return None;
                }
                found
            };
            if *count as usize > found.len() {
                v.error(
                    &format!("{field}.random.count"),
                    format!(
                        "count {count} is more than the {} services of cluster \"{}\"",
                        found.len(),
                        cluster.name
                    ),
                );
                return None;
            }
            Some(found)
        }
        Target::Query { services, .. } => {
            if cluster.prometheus.url.is_none() {
                v.error(
                    &format!("{field}.query.promql"),
                    no_prometheus(cluster, "a query target"),
                );
            }
            if services.is_empty() {
                // Resolved from the samples when the fault starts: any service may be hit.
                Some(cluster.services.iter().collect())
            } else {
                let mut found = Vec::new();
                for name in services.values() {
                    found.extend(lookup(v, &format!("{field}.query.services"), name));
                }
                (found.len() == services.len()).then_some(found)
            }
        }
    }
}

fn unknown_service(cluster: &Cluster, name: &str) -> String {
    let names: Vec<&str> = cluster.services.iter().map(|s| s.name.as_str()).collect();
    format!(
        "no service \"{name}\" in cluster \"{}\" (its services: {})",
        cluster.name,
        names.join(", ")
    )
}

/// The network a service is attached to, by name; `None` for the host's.
fn network_of<'c>(service: &'c Service, cluster: &'c Cluster) -> Option<&'c str> {
    match &service.network_mode {
        NetworkMode::Cluster => Some(&cluster.network.name),
        NetworkMode::Named(name) => Some(name),
        NetworkMode::Host => None,
    }
}

fn disconnect(
    field: &str,
    network: Option<&str>,
    targets: &[&Service],
    cluster: &Cluster,
    v: &mut Validator,
) {
    for s in targets {
        let Some(on) = network_of(s, cluster) else {
            v.error(
                &format!("{field}.target"),
                format!(
                    "service \"{}\" uses networkMode: host: it is on no network that could be disconnected",
                    s.name
                ),
            );
            continue;
        };
        let wanted = network.unwrap_or(&cluster.network.name);
        if on != wanted {
            let at = if network.is_some() {
                format!("{field}.network")
            } else {
                format!("{field}.target")
            };
            v.error(
                &at,
                format!(
                    "service \"{}\" is attached to network \"{on}\", not \"{wanted}\"",
                    s.name
                ),
            );
        }
    }
}

fn partition(
    field: &str,
    from: &[String],
    targets: &[&Service],
    cluster: &Cluster,
    v: &mut Validator,
) {
    for (j, name) in from.iter().enumerate() {
        let at = format!("{field}.from[{j}]");
        let Some(peer) = cluster.service(name) else {
            v.error(&at, unknown_service(cluster, name));
            continue;
        };
        let Some(peer_net) = network_of(peer, cluster) else {
            v.error(&at, host_networked(name, "partition"));
            continue;
        };
        if targets.iter().any(|t| t.name == *name) {
            v.error(
                &at,
                format!(
                    "\"{name}\" may also be the target: a service cannot be partitioned from itself (narrow the target)"
                ),
            );
            continue;
        }
        for t in targets {
            if let Some(net) = network_of(t, cluster).filter(|net| *net != peer_net) {
                v.error(
                    &at,
                    format!(
                        "\"{name}\" (network \"{peer_net}\") and the target \"{}\" (network \"{net}\") share no network: there is nothing to cut",
                        t.name
                    ),
                );
            }
        }
    }
}

/// A volume a disk-fill may fill on `service`: a writable named volume, by its name or by
/// where it is mounted. A bind mount is refused: it is a folder of the host's disk.
fn fillable(service: &Service, volume: &str) -> Result<(), String> {
    for mount in &service.volumes {
        match mount {
            VolumeMount::Named {
                name,
                target,
                read_only,
            } if name == volume || target == volume => {
                return if *read_only {
                    Err(format!(
                        "service \"{}\" mounts volume \"{name}\" read-only at {target}: it cannot be filled",
                        service.name
                    ))
                } else {
                    Ok(())
                };
            }
            VolumeMount::Bind { source, target, .. } if target == volume => {
                return Err(format!(
                    "{target} of service \"{}\" is a bind mount of the host's {}: filling it would fill the host's disk; fill a named volume",
                    service.name,
                    source.display()
                ));
            }
            _ => {}
        }
    }
    let named: Vec<&str> = service
        .volumes
        .iter()
        .filter_map(|m| match m {
            VolumeMount::Named { name, .. } => Some(name.as_str()),
            VolumeMount::Bind { .. } => None,
        })
        .collect();
    Err(format!(
        "service \"{}\" mounts no volume \"{volume}\" (its named volumes: {})",
        service.name,
        if named.is_empty() {
            "none".to_string()
        } else {
            named.join(", ")
        }
    ))
}
