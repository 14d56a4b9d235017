//! Translation of a service spec into the engine's container-create body. Pure: no Docker.

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, EndpointSettings, HealthConfig, HostConfig, NetworkingConfig, PortBinding,
    RestartPolicy as DockerRestartPolicy, RestartPolicyNameEnum,
};

use crate::manifest::{Cluster, NetworkMode, Protocol, RestartPolicy, Service, VolumeMount};

use super::{LABEL_CLUSTER, LABEL_MANAGED_BY, LABEL_SERVICE, LABEL_SPEC_HASH, MANAGED_BY_VALUE};

/// The network a service joins, or `None` for host networking.
pub fn service_network<'a>(cluster: &'a Cluster, service: &'a Service) -> Option<&'a str> {
    match &service.network_mode {
        NetworkMode::Cluster => Some(cluster.network.name.as_str()),
        NetworkMode::Named(name) => Some(name.as_str()),
        NetworkMode::Host => None,
    }
}

/// The labels every owned container carries, user labels first so ours always win.
pub fn labels(cluster: &Cluster, service: &Service) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = service
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(LABEL_MANAGED_BY.into(), MANAGED_BY_VALUE.into());
    labels.insert(LABEL_CLUSTER.into(), cluster.name.clone());
    labels.insert(LABEL_SERVICE.into(), service.name.clone());
    labels.insert(LABEL_SPEC_HASH.into(), service.spec_hash());
    labels
}

fn nanos(d: Option<std::time::Duration>) -> Option<i64> {
    d.map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

fn port_key(container_port: u16, protocol: Protocol) -> String {
    let proto = match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    };
    format!("{container_port}/{proto}")
}

pub fn create_body(cluster: &Cluster, service: &Service) -> ContainerCreateBody {
    let mut port_bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    let mut exposed = Vec::new();
    for p in &service.ports {
        let key = port_key(p.container_port, p.protocol);
        exposed.push(key.clone());
        port_bindings
            .entry(key)
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: p.host_ip.clone(),
                host_port: Some(p.host_port.to_string()),
            });
    }
    let binds: Vec<String> = service
        .volumes
        .iter()
        .map(|v| match v {
            VolumeMount::Named {
                name,
                target,
                read_only,
            } => format!("{name}:{target}{}", if *read_only { ":ro" } else { "" }),
            VolumeMount::Bind {
                source,
                target,
                read_only,
            } => format!(
                "{}:{target}{}",
                source.display(),
                if *read_only { ":ro" } else { "" }
            ),
        })
        .collect();
    let restart = match service.restart_policy {
        RestartPolicy::No => RestartPolicyNameEnum::NO,
        RestartPolicy::Always => RestartPolicyNameEnum::ALWAYS,
        RestartPolicy::UnlessStopped => RestartPolicyNameEnum::UNLESS_STOPPED,
        RestartPolicy::OnFailure => RestartPolicyNameEnum::ON_FAILURE,
    };
    let network_mode = match &service.network_mode {
        NetworkMode::Host => "host".to_string(),
        NetworkMode::Cluster => cluster.network.name.clone(),
        NetworkMode::Named(n) => n.clone(),
    };
    let networking_config = service_network(cluster, service).map(|net| NetworkingConfig {
        endpoints_config: Some(HashMap::from([(
            net.to_string(),
            EndpointSettings {
                // The service name is its DNS name on the network.
                aliases: Some(vec![service.name.clone()]),
                ..Default::default()
            },
        )])),
    });
    ContainerCreateBody {
        image: Some(service.image.clone()),
        cmd: service.command.clone(),
        entrypoint: service.entrypoint.clone(),
        env: Some(
            service
                .env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
        ),
        labels: Some(labels(cluster, service)),
        hostname: (service.network_mode != NetworkMode::Host).then(|| service.name.clone()),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        healthcheck: service.healthcheck.as_ref().map(|h| HealthConfig {
            test: Some(h.test.clone()),
            interval: nanos(h.interval),
            timeout: nanos(h.timeout),
            retries: h.retries.map(i64::from),
            start_period: nanos(h.start_period),
            start_interval: None,
        }),
        host_config: Some(HostConfig {
            binds: (!binds.is_empty()).then_some(binds),
            port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
            network_mode: Some(network_mode),
            restart_policy: Some(DockerRestartPolicy {
                name: Some(restart),
                maximum_retry_count: None,
            }),
            ..Default::default()
        }),
        networking_config,
        ..Default::default()
    }
}
