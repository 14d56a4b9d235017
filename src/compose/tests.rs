//! The converter end to end on compose text: what is carried over, what becomes a comment,
//! and the one error for what compose itself would refuse.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::*;

fn options() -> Options {
    Options {
        project: None,
        project_dir: PathBuf::from("/srv/shop"),
        output_dir: Some(PathBuf::from("/srv/shop/manifests")),
        env: [("TAG", "1.27"), ("EMPTY", "")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        home: Some(PathBuf::from("/home/ops")),
    }
}

fn files(texts: &[&str]) -> Vec<Source> {
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| Source {
            path: PathBuf::from(if i == 0 {
                "compose.yaml".to_string()
            } else {
                format!("compose.{i}.yaml")
            }),
            text: text.to_string(),
        })
        .collect()
}

fn import_with(texts: &[&str], options: &Options) -> Imported {
    import(&files(texts), options).unwrap_or_else(|e| panic!("{e}"))
}

fn imported(text: &str) -> Imported {
    import_with(&[text], &options())
}

fn only(text: &str) -> Service {
    let mut manifest = imported(text).manifest;
    assert_eq!(manifest.services.len(), 1);
    manifest.services.remove(0)
}

fn error(texts: &[&str]) -> String {
    match import(&files(texts), &options()) {
        Ok(i) => panic!("imported:\n{}", i.manifest.render()),
        Err(e) => e.to_string(),
    }
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Whether one of the service's comments contains all of `words`.
fn has_comment(service: &Service, words: &[&str]) -> bool {
    service
        .comments
        .iter()
        .any(|c| words.iter().all(|w| c.contains(w)))
}

#[test]
fn the_fields_of_a_service_are_carried_over() {
    let web = only(
        r#"
services:
  web:
    image: nginx:${TAG}
    container_name: shop-web
    command: sh -c 'echo "hi" && nginx'
    entrypoint: [/docker-entrypoint.sh]
    environment:
      - MODE=prod
      - RATIO=1.10
      - EMPTY=
    ports:
      - "8080:80"
      - 127.0.0.1:8443:443
      - "[::1]:9000:9000"
      - 5353:53/udp
      - "7000-7001:8000-8001"
      - target: 9090
        published: 19090
        host_ip: 127.0.0.1
        protocol: tcp
        mode: host
    volumes:
      - data:/var/lib/data
      - ./conf/nginx.conf:/etc/nginx/nginx.conf:ro
      - ../shared:/shared:rw
      - ~/certs:/certs:ro
      - type: bind
        source: /srv/static
        target: /static
        read_only: true
      - type: volume
        source: data
        target: /cache
    healthcheck:
      test: curl -f http://127.0.0.1/ || exit 1
      interval: 10s
      timeout: 3s
      retries: 5
      start_period: 1m30s
    labels:
      team: web
      tier:
    stop_grace_period: 30s
    stop_signal: quit
    restart: unless-stopped
volumes:
  data: {}
"#,
    );
    assert_eq!(web.name, "shop-web");
    assert_eq!(
        web.adopt,
        Some(ComposeAdopt {
            project: "shop".into(),
            service: Some("web".into())
        }),
        "adopted by its compose labels"
    );
    assert_eq!(
        web.aliases,
        ["web"],
        "its compose service name stays a DNS name"
    );
    assert_eq!(web.image, "nginx:1.27");
    assert_eq!(
        web.command.as_deref(),
        Some(&["sh".to_string(), "-c".into(), "echo \"hi\" && nginx".into()][..])
    );
    assert_eq!(
        web.entrypoint.as_deref(),
        Some(&["/docker-entrypoint.sh".to_string()][..])
    );
    assert_eq!(
        web.env,
        pairs(&[("MODE", "prod"), ("RATIO", "1.10"), ("EMPTY", "")])
    );
    assert_eq!(
        web.ports,
        [
            "8080:80",
            "127.0.0.1:8443:443",
            "[::1]:9000:9000",
            "5353:53/udp",
            "7000:8000",
            "7001:8001",
            "127.0.0.1:19090:9090",
        ]
    );
    assert_eq!(
        web.volumes,
        [
            "shop_data:/var/lib/data",
            "../conf/nginx.conf:/etc/nginx/nginx.conf:ro",
            "../../shared:/shared",
            "/home/ops/certs:/certs:ro",
            "../../static:/static:ro",
            "shop_data:/cache",
        ]
    );
    assert_eq!(
        web.healthcheck,
        Some(Healthcheck {
            test: vec![
                "CMD-SHELL".into(),
                "curl -f http://127.0.0.1/ || exit 1".into()
            ],
            interval: Some("10s".into()),
            timeout: Some("3s".into()),
            retries: Some(5),
            start_period: Some("1m30s".into()),
        })
    );
    assert_eq!(web.labels, pairs(&[("team", "web"), ("tier", "")]));
    assert_eq!(web.stop_timeout.as_deref(), Some("30s"));
    assert_eq!(web.stop_signal.as_deref(), Some("SIGQUIT"));
    assert_eq!(web.remediation.policy, "restart");
    assert!(has_comment(
        &web,
        &["restart: unless-stopped", "in place of the engine"]
    ));
    assert_eq!(web.network_mode, None);
}

#[test]
fn volumes_are_written_relative_to_the_output_folder_only_when_they_share_more_than_the_root() {
    let text =
        "services:\n  web:\n    image: a\n    volumes: [\"./conf:/conf\", \"/etc/ssl:/ssl\"]\n";
    let web = only(text);
    assert_eq!(web.volumes, ["../conf:/conf", "/etc/ssl:/ssl"]);
    let stdout = Options {
        output_dir: None,
        ..options()
    };
    let web = import_with(&[text], &stdout).manifest.services.remove(0);
    assert_eq!(web.volumes, ["/srv/shop/conf:/conf", "/etc/ssl:/ssl"]);
}

#[test]
fn list_and_map_forms_of_environment_labels_and_depends_on_agree() {
    let first = |text: &str| imported(text).manifest.services.remove(0);
    let lists = first(
        "services:\n  api:\n    image: a\n    environment: [A=1, B=x=y]\n    labels: [l=1]\n    depends_on: [db]\n  db:\n    image: b\n",
    );
    let maps = first(
        "services:\n  api:\n    image: a\n    environment: {A: 1, B: x=y}\n    labels: {l: \"1\"}\n    depends_on: {db: {condition: service_started}}\n  db:\n    image: b\n",
    );
    assert_eq!(lists.env, pairs(&[("A", "1"), ("B", "x=y")]));
    assert_eq!(lists.env, maps.env);
    assert_eq!(lists.labels, maps.labels);
    assert_eq!(lists.depends_on, ["db"]);
    assert_eq!(lists.depends_on, maps.depends_on);
}

#[test]
fn dependencies_use_the_manifest_names_and_conditions_become_comments() {
    let services = imported(
        "services:\n  api:\n    image: a\n    depends_on:\n      db: {condition: service_healthy}\n  db:\n    image: b\n    container_name: shop-db\n",
    )
    .manifest
    .services;
    assert_eq!(services[0].depends_on, ["shop-db"]);
    assert!(has_comment(
        &services[0],
        &[
            "depends_on.db.condition: service_healthy not carried over",
            "running"
        ]
    ));
}

#[test]
fn restart_policies_map_to_the_controllers_remediation() {
    let policy =
        |restart: &str| only(&format!("services:\n  web:\n    image: a\n{restart}")).remediation;
    for healed in ["always", "unless-stopped", "on-failure", "on-failure:0"] {
        assert_eq!(
            policy(&format!("    restart: {healed}\n")),
            Remediation {
                policy: "restart",
                max_restarts: None,
                written: None,
            },
            "{healed}"
        );
    }
    assert_eq!(
        policy("    restart: on-failure:3\n"),
        Remediation {
            policy: "restart",
            max_restarts: Some(3),
            written: None,
        }
    );
    for observed in [
        "    restart: \"no\"\n",
        "    restart: no\n",
        "    restart: false\n",
        "",
    ] {
        assert_eq!(policy(observed).policy, "observe", "{observed:?}");
    }
    let web = only("services:\n  web:\n    image: a\n");
    assert!(has_comment(
        &web,
        &[
            "compose's default is no",
            "policy: restart to let the controller heal it"
        ]
    ));
}

#[test]
fn a_disabled_healthcheck_is_none_and_one_without_test_is_a_comment() {
    let web =
        only("services:\n  web:\n    image: a\n    healthcheck: {disable: true, interval: 5s}\n");
    assert_eq!(
        web.healthcheck.map(|h| h.test),
        Some(vec!["NONE".to_string()])
    );
    let web = only("services:\n  web:\n    image: a\n    healthcheck: {interval: 5s}\n");
    assert_eq!(web.healthcheck, None);
    assert!(has_comment(
        &web,
        &["compose key healthcheck: not carried over", "no test"]
    ));
    let web = only("services:\n  web:\n    image: a\n    healthcheck:\n      test: [CMD, true]\n");
    assert_eq!(
        web.healthcheck.map(|h| h.test),
        Some(vec!["CMD".to_string(), "true".into()])
    );
}

#[test]
fn every_key_that_is_not_carried_over_is_a_comment_at_its_service() {
    let text = imported(
        r#"
services:
  worker:
    build: .
    deploy: {replicas: 2}
    env_file: worker.env
    user: "1000"
    expose: ["9000"]
    logging: {driver: syslog}
    mem_limit: 512m
    environment: [FROM_SHELL]
    ports: ["9000", "127.0.0.1::80", "8000-8010:80"]
    volumes: ["/scratch", "data:/data:z", {type: tmpfs, target: /tmp}]
    stop_grace_period: 1500ms
    stop_signal: SIGSTOP
    labels: {operator.managed-by: me}
    x-note: ignored, as compose ignores it
volumes:
  data: {driver: local}
secrets:
  token: {file: ./token}
"#,
    )
    .manifest
    .render();
    for expected in [
        "      # compose key build: not carried over (operator does not build images",
        "      # image shop_worker is the name docker-compose 1.x gives the image it builds",
        "      # compose key deploy.replicas: not carried over (a manifest service is one container",
        "      # compose key env_file: not carried over (operator reads no env files",
        "      # compose key user: not carried over (not in the manifest format",
        "      # compose key expose: not carried over (documentation only",
        "      # compose key logging: not carried over (the engine's default log driver applies)",
        "      # compose key environment: FROM_SHELL not carried over (compose passes it from the shell",
        "      # compose key ports: 9000 not carried over (no host port",
        "      # compose key ports: 127.0.0.1::80 not carried over (no host port",
        "      # compose key ports: 8000-8010:80 not carried over (compose picks one free host port",
        "      # compose key volumes: \"/scratch\" not carried over (an anonymous volume",
        "      # compose key volumes: option z of /data not carried over",
        "      # compose key volumes: tmpfs at /tmp not carried over",
        "      # compose key stop_grace_period: 1500ms not carried over (stopTimeout takes whole seconds",
        "      # compose key stop_signal: SIGSTOP not carried over (",
        "      # compose key labels: operator.managed-by not carried over",
        "# compose key volumes.data.driver: not carried over",
        "# compose key secrets: not carried over",
        "      # compose names this container shop_worker_1 (docker-compose 1.x) or shop-worker-1 (v2): the controller adopts it by its compose labels",
        "      adopt: {compose: {project: shop}}\n",
        "      resources: {memory: \"512m\"}\n",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(!text.contains("x-note"), "{text}");
    assert!(text.contains("      image: shop_worker\n"), "{text}");
    assert!(text.contains("        - shop_data:/data\n"), "{text}");
}

#[test]
fn the_default_network_is_joined_as_external() {
    let manifest = imported("services:\n  web:\n    image: a\n").manifest;
    assert_eq!(manifest.name, "shop");
    assert_eq!(
        (
            manifest.network.name.as_str(),
            manifest.network.external,
            manifest.network.internal
        ),
        ("shop_default", true, false)
    );
    let named = imported("services:\n  web:\n    image: a\nnetworks:\n  default: {name: tikv_default, internal: true}\n").manifest;
    assert_eq!(
        (named.network.name.as_str(), named.network.internal),
        ("tikv_default", true)
    );
    let external = imported(
        "services:\n  web:\n    image: a\nnetworks:\n  default: {external: {name: edge}}\n",
    )
    .manifest;
    assert_eq!(external.network.name, "edge");
}

#[test]
fn a_single_network_is_the_cluster_network_and_others_are_network_mode_or_comments() {
    let single = imported(
        "services:\n  a1:\n    image: a\n    networks: [back]\n  b1:\n    image: b\n    networks: {back: {aliases: [bee]}}\nnetworks:\n  back: {}\n",
    )
    .manifest;
    assert_eq!(single.network.name, "shop_back");
    assert!(single.services.iter().all(|s| s.network_mode.is_none()));
    assert_eq!(single.services[1].aliases, ["bee"], "aliases are carried");

    let mixed = imported(
        "services:
  web:
    image: a
    networks: [front, default]
  db:
    image: b
    networks: [back]
  host:
    image: c
    network_mode: host
  side:
    image: d
    network_mode: service:web
networks:
  front: {}
  back: {external: true}
",
    )
    .manifest;
    assert_eq!(mixed.network.name, "shop_default");
    let s = &mixed.services;
    assert_eq!(s[0].network_mode, None);
    assert!(has_comment(
        &s[0],
        &["networks: front not carried over", "joins default"]
    ));
    assert_eq!(s[1].network_mode.as_deref(), Some("back"));
    assert!(has_comment(
        &s[1],
        &["compose network back is not the cluster network"]
    ));
    assert_eq!(s[2].network_mode.as_deref(), Some("host"));
    assert_eq!(s[3].network_mode, None);
    assert!(has_comment(
        &s[3],
        &["network_mode: service:web not carried over"]
    ));
}

#[test]
fn later_files_override_earlier_ones() {
    let web = import_with(
        &[
            "services:\n  web:\n    image: web:1\n    environment: {A: 1}\n    ports: [\"80:80\"]\n",
            "services:\n  web:\n    image: web:2\n    environment: {B: 2}\n    ports: [\"443:443\"]\n",
        ],
        &options(),
    )
    .manifest
    .services
    .remove(0);
    assert_eq!(web.image, "web:2");
    assert_eq!(web.env, pairs(&[("A", "1"), ("B", "2")]));
    assert_eq!(web.ports, ["80:80", "443:443"]);
}

#[test]
fn the_project_name_comes_from_the_flag_the_files_or_the_folder() {
    let text = "services:\n  web:\n    image: a\n";
    let named = "name: Shop_Front\nservices:\n  web:\n    image: a\n";
    assert_eq!(imported(text).project, "shop");
    assert_eq!(imported(named).project, "shop_front");
    let flag = Options {
        project: Some("Edge.Proxy!".into()),
        ..options()
    };
    assert_eq!(import_with(&[named], &flag).project, "edgeproxy");
    let folder = Options {
        project_dir: PathBuf::from("/srv/My App"),
        ..options()
    };
    assert_eq!(import_with(&[text], &folder).project, "myapp");
    let bad = Options {
        project_dir: PathBuf::from("/srv/_x"),
        ..options()
    };
    let err = import(&files(&[text]), &bad).unwrap_err().to_string();
    assert!(
        err.starts_with("invalid project name \"_x\" (from the folder /srv/_x): must match")
            && err.ends_with("give one with --project"),
        "{err}"
    );
}

#[test]
fn variables_are_substituted_and_unset_ones_noted() {
    let imported = imported(
        "services:\n  web:\n    image: \"nginx:${TAG}\"\n    command: [echo, \"$${HOME}\", \"${NOPE:-x}\", \"${EMPTY:-e}\", \"${MISSING}\"]\n",
    );
    let web = &imported.manifest.services[0];
    assert_eq!(web.image, "nginx:1.27");
    assert_eq!(
        web.command.as_deref(),
        Some(
            &[
                "echo".to_string(),
                "${HOME}".into(),
                "x".into(),
                "e".into(),
                String::new()
            ][..]
        )
    );
    assert_eq!(imported.notes.len(), 1);
    assert_eq!(
        imported.notes[0].to_string(),
        "compose.yaml:4: services.web.command[4]: variable MISSING is not set: a blank string is used, as compose does"
    );
}

#[test]
fn what_compose_refuses_is_one_error_naming_file_line_and_key() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["services:\n  web:\n    image: a\n    imagee: b\n"],
            "compose.yaml:4: services.web.imagee: unknown compose key \"imagee\"",
        ),
        (
            &["services:\n  web: {image: a}\nservice: {}\n"],
            "compose.yaml:3: service: unknown top-level key \"service\"",
        ),
        (
            &["services:\n  web:\n    image: a\n    volumes: [data:/data]\n"],
            "compose.yaml:4: services.web.volumes[0]: named volume \"data\" is not declared",
        ),
        (
            &["services:\n  web:\n    image: a\n    depends_on: [db]\n"],
            "compose.yaml:4: services.web.depends_on[0]: depends on \"db\", which is not a service",
        ),
        (
            &["services:\n  web:\n    image: a\n    ports: [\"80:http\"]\n"],
            "compose.yaml:4: services.web.ports[0]: invalid port \"80:http\": \"http\" is not a port",
        ),
        (
            &["services:\n  web:\n    image: a\n    restart: sometimes\n"],
            "compose.yaml:4: services.web.restart: invalid restart policy \"sometimes\"",
        ),
        (
            &["services:\n  web:\n    image: a\n    container_name: Web_1\n"],
            "compose.yaml:4: services.web.container_name: container_name \"Web_1\" cannot be a manifest service name",
        ),
        (
            &["services:\n  Web:\n    image: a\n"],
            "compose.yaml:2: services.Web: service name \"Web\" cannot be a manifest service name",
        ),
        (
            &["services:\n  web:\n    image: a\n  api:\n    image: b\n    container_name: web\n"],
            "compose.yaml:4: services.api: service api would be called \"web\" in the manifest, as service web is already",
        ),
        (
            &["services:\n  web:\n    command: [x]\n"],
            "compose.yaml:2: services.web: no image: compose needs image or build",
        ),
        (
            &["services:\n  web:\n    extends: {service: base}\n"],
            "compose.yaml:3: services.web.extends: extends is not supported",
        ),
        (
            &["services:\n  web:\n    image: a\n    networks: [back]\n"],
            "compose.yaml:4: services.web.networks[0]: network \"back\" is not declared",
        ),
        (
            &["services:\n  web:\n    image: [a]\n"],
            "compose.yaml:3: services.web.image: expected an image reference, found a list",
        ),
        (
            &["services:\n  web:\n    image: a\n    healthcheck: {test: [RUN, x]}\n"],
            "compose.yaml:4: services.web.healthcheck.test: a healthcheck test list starts with CMD",
        ),
        (
            &["services:\n  web:\n    image: a\n    healthcheck: {test: x, interval: 10}\n"],
            "compose.yaml:4: services.web.healthcheck.interval: duration \"10\" has no unit",
        ),
        (
            &["services:\n  web:\n    image: \"${TAG:?set TAG}\"\n    command: \"a 'b\"\n"],
            "compose.yaml:4: services.web.command: cannot split \"a 'b\" into words",
        ),
        (
            &["services:\n  web:\n    image: \"${NOPE:?set NOPE}\"\n"],
            "compose.yaml:3: services.web.image: variable NOPE is not set or empty: set NOPE",
        ),
        (&["services: {}\n"], "compose.yaml:1: services: no services"),
        (&["version: \"3\"\n"], "compose.yaml:1: no `services:`"),
        (
            &[
                "services:\n  web: {image: a}\n",
                "services:\n  web:\n    ports: [\"80:abc\"]\n",
            ],
            "compose.1.yaml:3: services.web.ports[0]: invalid port",
        ),
    ];
    for (texts, expected) in cases {
        let err = error(texts);
        assert!(
            err.starts_with(expected),
            "expected {expected:?}\n     got {err:?}"
        );
        assert!(!err.contains('\n'), "one line: {err:?}");
    }
}

#[test]
fn relative_paths_share_more_than_the_root() {
    use super::convert::relative;
    let rel = |from: &str, to: &str| relative(Path::new(from), Path::new(to));
    assert_eq!(
        rel("/srv/shop/out", "/srv/shop/conf/a"),
        Some("../conf/a".into())
    );
    assert_eq!(rel("/srv/shop", "/srv/shop/conf"), Some("./conf".into()));
    assert_eq!(rel("/srv/shop/a/b", "/srv/x"), Some("../../../x".into()));
    assert_eq!(rel("/tmp/out", "/srv/shop/conf"), None);
    assert_eq!(rel("/srv/shop", "/srv/shop"), None);
}

#[test]
fn dotenv_files_are_read_as_compose_reads_them() {
    let vars = dotenv(
        "# comment\nTAG=1.2\n\nexport PORT = 80\nQUOTED=\"a b\"\nSINGLE='c'\nnot a pair\nEMPTY=\n",
    );
    let expected: BTreeMap<String, String> = [
        ("TAG", "1.2"),
        ("PORT", "80"),
        ("QUOTED", "a b"),
        ("SINGLE", "c"),
        ("EMPTY", ""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(vars, expected);
}

/// What an import writes, `operator validate` accepts: a rich compose file, rendered and
/// loaded by the manifest loader from a real file.
#[test]
fn a_rendered_import_loads_as_a_manifest() {
    let dir = std::env::temp_dir().join(format!("operator-compose-unit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let options = Options {
        output_dir: Some(dir.clone()),
        project_dir: dir.join("app"),
        ..options()
    };
    let imported = import_with(
        &[r#"
services:
  web:
    image: "nginx:${TAG}"
    command: ["nginx", "-g", "daemon off;"]
    environment: {A: 1, B: "true", C: 1.10, D: "", E: "0x1F", F: yes}
    ports: ["8080:80", "5353:53/udp", "[::1]:9001:9001"]
    volumes: ["./html:/usr/share/nginx/html:ro", "cache:/cache"]
    labels: ["a.b=c", "empty"]
    healthcheck: {test: "true", interval: 10s, retries: 3}
    depends_on: {api: {condition: service_healthy}}
    stop_grace_period: 1m
    stop_signal: "3"
    restart: on-failure:4
  api:
    image: api:1
    network_mode: host
    deploy: {replicas: 3}
volumes:
  cache:
"#],
        &options,
    );
    let file = dir.join("shop.yaml");
    std::fs::write(&file, imported.manifest.render()).expect("write");
    let loaded = crate::manifest::load(std::slice::from_ref(&file));
    let _ = std::fs::remove_dir_all(&dir);
    let desired = loaded.unwrap_or_else(|e| panic!("{e}\n{}", imported.manifest.render()));
    let web = &desired.clusters[0].services[0];
    assert_eq!(
        web.compose,
        Some(crate::manifest::ComposeService {
            project: "app".into(),
            service: "web".into()
        })
    );
    assert_eq!(web.adopt, Some(crate::manifest::Adopt::Observed));
    assert_eq!(web.env["C"], "1.10");
    assert_eq!(web.env["F"], "yes");
    assert_eq!(web.labels["empty"], "");
    assert_eq!(web.stop_signal.as_deref(), Some("3"));
    assert_eq!(web.remediation.max_restarts, 4);
    assert_eq!(web.depends_on, ["api"]);
}

/// Defect 6 of issue 22: a service without `container_name` came back as a new service, so
/// the controller created one beside compose's `shop_worker_1`.
#[test]
fn every_service_is_adopted_by_its_compose_labels_and_keeps_its_compose_names() {
    let manifest = imported(
        r#"
services:
  worker:
    image: a
    networks:
      default:
        aliases: [jobs, worker]
  db:
    image: b
    container_name: shop-db
    networks:
      default:
        aliases: [database]
"#,
    )
    .manifest;
    let (worker, db) = (&manifest.services[0], &manifest.services[1]);
    assert_eq!(worker.name, "worker");
    assert_eq!(
        worker.adopt,
        Some(ComposeAdopt {
            project: "shop".into(),
            service: None
        })
    );
    // Its own name is its DNS name already; compose's other aliases are kept.
    assert_eq!(worker.aliases, ["jobs"]);
    assert_eq!(db.name, "shop-db");
    assert_eq!(
        db.adopt,
        Some(ComposeAdopt {
            project: "shop".into(),
            service: Some("db".into())
        })
    );
    assert_eq!(db.aliases, ["db", "database"]);
    let text = manifest.render();
    for expected in [
        "    - name: worker\n",
        "      adopt: {compose: {project: shop}}\n",
        "      aliases: [jobs]\n",
        "    - name: shop-db\n",
        "      adopt: {compose: {project: shop, service: db}}\n",
        "      aliases: [db, database]\n",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn deploy_resource_limits_and_mem_limit_are_the_manifests_resources() {
    let web = only(
        r#"
services:
  web:
    image: a
    deploy:
      replicas: 1
      placement: {constraints: [node.role == manager]}
      resources:
        limits: {cpus: "0.5", memory: 256M, pids: 100}
        reservations: {memory: 128M}
"#,
    );
    assert_eq!(
        web.resources,
        Resources {
            cpus: Some("0.5".into()),
            memory: Some("256M".into())
        }
    );
    assert!(has_comment(
        &web,
        &["deploy.placement: not carried over (swarm only)"]
    ));
    assert!(has_comment(
        &web,
        &["deploy.resources.limits.pids: not carried over"]
    ));
    assert!(has_comment(
        &web,
        &["deploy.resources.reservations: not carried over"]
    ));
    assert!(
        !has_comment(&web, &["deploy.resources.limits.cpus"])
            && !has_comment(&web, &["deploy: not carried"]),
        "{:?}",
        web.comments
    );
    let legacy = only("services:\n  web:\n    image: a\n    cpus: 1.5\n    mem_limit: 1g\n");
    assert_eq!(
        legacy.resources,
        Resources {
            cpus: Some("1.5".into()),
            memory: Some("1g".into())
        }
    );
    // What the manifest would refuse stays a comment.
    let bad = only("services:\n  web:\n    image: a\n    mem_limit: 1m\n");
    assert_eq!(bad.resources, Resources::default());
    assert!(has_comment(&bad, &["mem_limit: 1m not carried over", "6m"]));
}

#[test]
fn x_operator_remediation_is_carried_as_written() {
    let web = only(
        r#"
x-budget: &budget {policy: restart, maxRestarts: 3, window: 30m, backoff: {initial: 10s, max: 5m}}
services:
  web:
    image: a
    restart: "no"
    x-operator:
      remediation: *budget
"#,
    );
    assert_eq!(
        web.remediation.written.as_deref(),
        Some("{policy: restart, maxRestarts: 3, window: 30m, backoff: {initial: 10s, max: 5m}}")
    );
    assert!(
        !has_comment(&web, &["compose restart"]),
        "{:?}",
        web.comments
    );
    assert!(
        error(&["services:\n  web:\n    image: a\n    x-operator: {adopt: false}\n"])
            .contains("compose.yaml:4: services.web.x-operator.adopt: unknown x-operator key"),
    );
}

#[test]
fn the_summary_says_what_is_adopted_created_and_dropped() {
    let summary = imported(
        r#"
services:
  web:
    image: a
    user: "1000"
  debug:
    image: b
    profiles: [debug]
secrets:
  token: {file: ./token}
"#,
    )
    .summary;
    assert_eq!(summary.adopted, ["web"]);
    assert_eq!(summary.created.len(), 1);
    assert_eq!(summary.created[0].0, "debug");
    assert_eq!(
        summary.dropped,
        vec![
            (None, vec!["secrets".to_string()]),
            (Some("web".into()), vec!["user".into()]),
            (Some("debug".into()), vec!["profiles".into()]),
        ]
    );
    let lines = summary.lines("shop");
    assert!(lines[0].starts_with("adopted: web ("), "{lines:?}");
    assert!(
        lines[1].starts_with("created: debug (it has profiles"),
        "{lines:?}"
    );
    assert_eq!(
        lines[2],
        "dropped: (top level): secrets; web: user; debug: profiles (each is a comment in the manifest, with why)"
    );
}
