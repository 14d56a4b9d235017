//! Translation of a service spec into the engine's container-create body. Pure: no Docker.

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, EndpointSettings, HealthConfig, HostConfig, NetworkingConfig, PortBinding,
    RestartPolicy as DockerRestartPolicy, RestartPolicyNameEnum,
};

use crate::manifest::{
    Cluster, ComposeService, NetworkMode, Protocol, RestartPolicy, Service, VolumeMount,
};

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
    if let Some(compose) = &service.compose {
        labels.extend(compose_labels(compose));
    }
    labels.insert(LABEL_MANAGED_BY.into(), MANAGED_BY_VALUE.into());
    labels.insert(LABEL_CLUSTER.into(), cluster.name.clone());
    labels.insert(LABEL_SERVICE.into(), service.name.clone());
    labels.insert(LABEL_SPEC_HASH.into(), service.spec_hash());
    labels
}

/// compose's label naming the project of a container it started.
pub const COMPOSE_PROJECT: &str = "com.docker.compose.project";
/// compose's label naming the service of a container it started.
pub const COMPOSE_SERVICE: &str = "com.docker.compose.service";
/// compose's label telling a `run` container (`True`) from a service's own (`False`).
pub const COMPOSE_ONEOFF: &str = "com.docker.compose.oneoff";
const COMPOSE_CONTAINER_NUMBER: &str = "com.docker.compose.container-number";

/// The labels by which compose knows a container as the first one of `compose`'s service:
/// a container the controller creates for a compose-adopted service carries them, so that
/// `docker-compose down` (1.x and v2: both select by project and `oneoff=False`) stops and
/// removes it with the rest of the stack, and its network can go. Derived from the manifest
/// alone, so they are the same on every recreate.
pub fn compose_labels(compose: &ComposeService) -> [(String, String); 4] {
    [
        (COMPOSE_PROJECT.into(), compose.project.clone()),
        (COMPOSE_SERVICE.into(), compose.service.clone()),
        (COMPOSE_ONEOFF.into(), "False".into()),
        (COMPOSE_CONTAINER_NUMBER.into(), "1".into()),
    ]
}

/// The DNS names of the service's container on its network: its name, then its `aliases`.
pub fn network_aliases(service: &Service) -> Vec<String> {
    std::iter::once(&service.name)
        .chain(&service.aliases)
        .cloned()
        .collect()
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
                // The service name is its DNS name on the network, with its aliases.
                aliases: Some(network_aliases(service)),
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
            nano_cpus: service.resources.nano_cpus,
            memory: service.resources.memory,
            ..Default::default()
        }),
        networking_config,
        // Kept on the container, so that a `docker stop` by a person honours them too.
        stop_timeout: service
            .stop_timeout
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
        stop_signal: service.stop_signal.clone(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::manifest::{Healthcheck, NetworkSpec, PortMapping, PrometheusSpec, Remediation};

    fn cluster(services: Vec<Service>) -> Cluster {
        Cluster {
            name: "demo".into(),
            source: PathBuf::from("/m/demo.yaml"),
            network: NetworkSpec {
                name: "demo-net".into(),
                external: false,
                internal: false,
            },
            services,
            prometheus: PrometheusSpec::default(),
            checks: Vec::new(),
            agent: Default::default(),
            groups: Vec::new(),
            max_concurrent_disruptions: None,
        }
    }

    fn service(name: &str) -> Service {
        Service {
            name: name.into(),
            image: "busybox:1.36".into(),
            command: None,
            entrypoint: None,
            env: BTreeMap::new(),
            ports: Vec::new(),
            volumes: Vec::new(),
            network_mode: NetworkMode::Cluster,
            labels: BTreeMap::new(),
            healthcheck: None,
            depends_on: Vec::new(),
            restart_with: Vec::new(),
            adopt: None,
            compose: None,
            aliases: Vec::new(),
            resources: Default::default(),
            restart_policy: RestartPolicy::No,
            stop_timeout: None,
            stop_signal: None,
            remediation: Remediation::default(),
        }
    }

    fn web() -> Service {
        Service {
            command: Some(vec!["sleep".into(), "3600".into()]),
            entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
            env: BTreeMap::from([("B".into(), "2".into()), ("A".into(), "x=y".into())]),
            ports: vec![
                PortMapping {
                    host_ip: None,
                    host_port: 8080,
                    container_port: 80,
                    protocol: Protocol::Tcp,
                },
                PortMapping {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: 8081,
                    container_port: 80,
                    protocol: Protocol::Tcp,
                },
                PortMapping {
                    host_ip: None,
                    host_port: 5353,
                    container_port: 53,
                    protocol: Protocol::Udp,
                },
            ],
            volumes: vec![
                VolumeMount::Named {
                    name: "data".into(),
                    target: "/data".into(),
                    read_only: false,
                },
                VolumeMount::Bind {
                    source: PathBuf::from("/m/conf"),
                    target: "/etc/app".into(),
                    read_only: true,
                },
            ],
            labels: BTreeMap::from([
                ("team".into(), "infra".into()),
                // A user label cannot claim someone else's container for us.
                (LABEL_SERVICE.into(), "impostor".into()),
            ]),
            healthcheck: Some(Healthcheck {
                test: vec!["CMD".into(), "true".into()],
                interval: Some(Duration::from_secs(5)),
                timeout: Some(Duration::from_millis(1500)),
                retries: Some(3),
                start_period: None,
            }),
            restart_policy: RestartPolicy::UnlessStopped,
            ..service("web")
        }
    }

    #[test]
    fn labels_mark_the_container_as_ours_over_user_labels() {
        let web = web();
        let body = create_body(&cluster(vec![web.clone()]), &web);
        let labels = body.labels.expect("labels");
        assert_eq!(labels[LABEL_MANAGED_BY], MANAGED_BY_VALUE);
        assert_eq!(labels[LABEL_CLUSTER], "demo");
        assert_eq!(labels[LABEL_SERVICE], "web");
        assert_eq!(labels[LABEL_SPEC_HASH], web.spec_hash());
        assert_eq!(labels["team"], "infra");
    }

    #[test]
    fn image_command_entrypoint_and_env_are_passed_as_written() {
        let web = web();
        let body = create_body(&cluster(vec![web.clone()]), &web);
        assert_eq!(body.image.as_deref(), Some("busybox:1.36"));
        assert_eq!(body.cmd, web.command);
        assert_eq!(body.entrypoint, web.entrypoint);
        // In key order, `KEY=value`, values kept whole.
        assert_eq!(body.env, Some(vec!["A=x=y".to_string(), "B=2".to_string()]));
    }

    #[test]
    fn ports_are_exposed_and_bound_per_mapping() {
        let web = web();
        let body = create_body(&cluster(vec![web.clone()]), &web);
        // One exposed entry per mapping, repeats included: the engine keeps a set.
        assert_eq!(
            body.exposed_ports,
            Some(vec!["80/tcp".to_string(), "80/tcp".into(), "53/udp".into()])
        );
        let bindings = body
            .host_config
            .as_ref()
            .and_then(|h| h.port_bindings.clone())
            .expect("bindings");
        assert_eq!(bindings.len(), 2);
        assert_eq!(
            bindings["80/tcp"],
            Some(vec![
                PortBinding {
                    host_ip: None,
                    host_port: Some("8080".into()),
                },
                PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some("8081".into()),
                },
            ])
        );
        assert_eq!(
            bindings["53/udp"],
            Some(vec![PortBinding {
                host_ip: None,
                host_port: Some("5353".into()),
            }])
        );
    }

    #[test]
    fn volumes_become_binds_with_ro_when_read_only() {
        let web = web();
        let host = create_body(&cluster(vec![web.clone()]), &web)
            .host_config
            .expect("host config");
        assert_eq!(
            host.binds,
            Some(vec!["data:/data".to_string(), "/m/conf:/etc/app:ro".into()])
        );
    }

    #[test]
    fn healthcheck_durations_are_nanoseconds() {
        let web = web();
        let health = create_body(&cluster(vec![web.clone()]), &web)
            .healthcheck
            .expect("healthcheck");
        assert_eq!(health.test, Some(vec!["CMD".to_string(), "true".into()]));
        assert_eq!(health.interval, Some(5_000_000_000));
        assert_eq!(health.timeout, Some(1_500_000_000));
        assert_eq!(health.retries, Some(3));
        assert_eq!(health.start_period, None);
    }

    #[test]
    fn restart_policy_is_the_engines_own() {
        for (ours, engine) in [
            (RestartPolicy::No, RestartPolicyNameEnum::NO),
            (RestartPolicy::Always, RestartPolicyNameEnum::ALWAYS),
            (
                RestartPolicy::UnlessStopped,
                RestartPolicyNameEnum::UNLESS_STOPPED,
            ),
            (RestartPolicy::OnFailure, RestartPolicyNameEnum::ON_FAILURE),
        ] {
            let s = Service {
                restart_policy: ours,
                ..service("s")
            };
            let policy = create_body(&cluster(vec![s.clone()]), &s)
                .host_config
                .and_then(|h| h.restart_policy)
                .expect("restart policy");
            assert_eq!(policy.name, Some(engine), "{ours:?}");
        }
    }

    #[test]
    fn cluster_network_gives_the_service_its_dns_name() {
        let s = service("db");
        let body = create_body(&cluster(vec![s.clone()]), &s);
        assert_eq!(body.hostname.as_deref(), Some("db"));
        assert_eq!(
            body.host_config.and_then(|h| h.network_mode).as_deref(),
            Some("demo-net")
        );
        let endpoints = body
            .networking_config
            .and_then(|n| n.endpoints_config)
            .expect("endpoints");
        assert_eq!(endpoints.len(), 1);
        assert_eq!(endpoints["demo-net"].aliases, Some(vec!["db".to_string()]));
    }

    /// Defect 4 of issue 22: a recreated compose service answered to its container name
    /// only, and `docker-compose down` did not know it.
    #[test]
    fn a_compose_adopted_service_keeps_its_aliases_and_compose_labels() {
        let s = Service {
            aliases: vec!["db".into(), "database".into()],
            compose: Some(ComposeService {
                project: "imp".into(),
                service: "db".into(),
            }),
            labels: BTreeMap::from([(COMPOSE_PROJECT.to_string(), "other".to_string())]),
            ..service("imp-db")
        };
        let body = create_body(&cluster(vec![s.clone()]), &s);
        let endpoints = body
            .networking_config
            .and_then(|n| n.endpoints_config)
            .expect("endpoints");
        assert_eq!(
            endpoints["demo-net"].aliases,
            Some(vec!["imp-db".to_string(), "db".into(), "database".into()])
        );
        let labels = body.labels.expect("labels");
        assert_eq!(labels[COMPOSE_PROJECT], "imp", "derived from adopt.compose");
        assert_eq!(labels[COMPOSE_SERVICE], "db");
        assert_eq!(labels[COMPOSE_ONEOFF], "False");
        assert_eq!(labels["com.docker.compose.container-number"], "1");
        assert_eq!(labels[LABEL_SERVICE], "imp-db");
        // Without adopt.compose, none of compose's labels.
        let plain = service("web");
        let labels = create_body(&cluster(vec![plain.clone()]), &plain)
            .labels
            .expect("labels");
        assert!(!labels.keys().any(|k| k.starts_with("com.docker.compose.")));
    }

    #[test]
    fn resources_are_the_engines_limits() {
        let s = Service {
            resources: crate::manifest::Resources {
                nano_cpus: Some(500_000_000),
                memory: Some(64 << 20),
            },
            ..service("web")
        };
        let host = create_body(&cluster(vec![s.clone()]), &s)
            .host_config
            .expect("host config");
        assert_eq!(
            (host.nano_cpus, host.memory),
            (Some(500_000_000), Some(64 << 20))
        );
        let bare = service("web");
        let host = create_body(&cluster(vec![bare.clone()]), &bare)
            .host_config
            .expect("host config");
        assert_eq!((host.nano_cpus, host.memory), (None, None));
    }

    #[test]
    fn named_network_is_joined_under_its_own_name() {
        let s = Service {
            network_mode: NetworkMode::Named("shared".into()),
            ..service("db")
        };
        let body = create_body(&cluster(vec![s.clone()]), &s);
        assert_eq!(
            body.host_config.and_then(|h| h.network_mode).as_deref(),
            Some("shared")
        );
        let endpoints = body
            .networking_config
            .and_then(|n| n.endpoints_config)
            .expect("endpoints");
        assert_eq!(endpoints["shared"].aliases, Some(vec!["db".to_string()]));
    }

    #[test]
    fn host_network_has_no_hostname_and_no_endpoints() {
        let s = Service {
            network_mode: NetworkMode::Host,
            ..service("probe")
        };
        let body = create_body(&cluster(vec![s.clone()]), &s);
        assert_eq!(body.hostname, None);
        assert!(body.networking_config.is_none());
        assert_eq!(
            body.host_config.and_then(|h| h.network_mode).as_deref(),
            Some("host")
        );
    }

    #[test]
    fn stop_timeout_and_signal_go_to_the_container_config_only_when_set() {
        let bare = service("bare");
        let body = create_body(&cluster(vec![bare.clone()]), &bare);
        assert_eq!((body.stop_timeout, body.stop_signal), (None, None));
        let s = Service {
            stop_timeout: Some(Duration::from_secs(15)),
            stop_signal: Some("SIGQUIT".into()),
            ..service("db")
        };
        let body = create_body(&cluster(vec![s.clone()]), &s);
        assert_eq!(body.stop_timeout, Some(15));
        assert_eq!(body.stop_signal.as_deref(), Some("SIGQUIT"));
    }

    #[test]
    fn a_bare_service_sends_no_empty_lists() {
        let s = service("bare");
        let body = create_body(&cluster(vec![s.clone()]), &s);
        assert_eq!(body.exposed_ports, None);
        assert_eq!(body.env, Some(Vec::new()));
        assert!(body.healthcheck.is_none());
        let host = body.host_config.expect("host config");
        assert_eq!(host.binds, None);
        assert_eq!(host.port_bindings, None);
    }
}
