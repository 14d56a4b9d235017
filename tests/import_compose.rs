//! `operator import compose` from the real binary: docker/tikv/compose.yaml round-trips to
//! the services of manifests/tikv/, what was written passes `operator validate`, Debian's
//! docker-compose accepts the compose file (and its normalized form imports the same), keys
//! that cannot be carried over are comments, and bad input is one error line. No Docker
//! engine is needed: nothing here creates a container.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::operator::{TempDir, operator};
use common::{repo, run_with_timeout, succeeded, text, unique};
use operator::manifest::{Adopt, Cluster, DesiredState, Remediation, Service, load};

/// `operator import compose ARGS...`.
fn import(args: &[&str]) -> Output {
    let mut all = vec!["import", "compose"];
    all.extend_from_slice(args);
    operator(&all, None)
}

fn load_one(path: &Path) -> Cluster {
    let desired: DesiredState = load(&[path.to_path_buf()]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(desired.clusters.len(), 1, "{}", path.display());
    desired.clusters.into_iter().next().expect("one cluster")
}

/// Everything that makes the container, and what it waits for: the fields a compose file
/// and a manifest share. Remediation and restartWith are the controller's own (compose's
/// `restart: "no"` imports as `observe`, while the flagship declares its budgets). `adopt` too:
/// every service of the compose file has a `container_name`, so the import adopts it, while
/// the flagship creates its own containers.
fn container_fields(s: &Service) -> Service {
    Service {
        remediation: Remediation::default(),
        restart_with: Vec::new(),
        adopt: None,
        ..s.clone()
    }
}

/// The same services, field by field; in the same order too unless `any_order` (compose's
/// `config` prints them sorted by name).
fn assert_same_services(imported: &Cluster, expected: &Cluster, any_order: bool) {
    let names = |c: &Cluster| {
        let mut names: Vec<String> = c.services.iter().map(|s| s.name.clone()).collect();
        if any_order {
            names.sort();
        }
        names
    };
    assert_eq!(names(imported), names(expected));
    for s in &imported.services {
        assert_eq!(
            s.adopt,
            Some(Adopt::Observed),
            "service {} (container_name)",
            s.name
        );
    }
    for want in &expected.services {
        let got = imported.service(&want.name).expect("checked above");
        assert_eq!(
            container_fields(got),
            container_fields(want),
            "service {}",
            want.name
        );
    }
}

#[test]
fn the_tikv_compose_file_imports_to_the_services_of_the_flagship_manifest() {
    let dir = TempDir::new(&unique("import-tikv"));
    let out_dir = dir.path().join("out");
    let out = import(&[
        repo("docker/tikv/compose.yaml").to_str().expect("utf-8"),
        "-o",
        out_dir.to_str().expect("utf-8"),
    ]);
    succeeded(&out, "import");
    let written = out_dir.join("tikv.yaml");
    assert_eq!(
        text(&out.stdout).trim(),
        format!("wrote {} (cluster tikv, 8 services)", written.display())
    );
    assert!(text(&out.stderr).is_empty(), "{}", text(&out.stderr));

    let validate = operator(&["validate", written.to_str().expect("utf-8")], None);
    succeeded(&validate, "operator validate of the imported manifest");

    let imported = load_one(&written);
    let flagship = load_one(&repo("manifests/tikv/cluster.yaml"));
    assert_eq!(imported.name, "tikv");
    assert_eq!(imported.network.name, "tikv_default");
    assert!(
        imported.network.external,
        "compose's network is joined, never created"
    );
    assert_same_services(&imported, &flagship, false);
    // The bind mounts point at the same files: docker/tikv/ beside the manifests.
    let prometheus = imported.service("prometheus").expect("prometheus");
    assert!(
        prometheus.volumes.iter().any(|v| format!("{v:?}")
            .contains(repo("docker/tikv/prometheus.yml").to_str().expect("utf-8"))),
        "{:?}",
        prometheus.volumes
    );

    // Written again only when asked to.
    let again = import(&[
        repo("docker/tikv/compose.yaml").to_str().expect("utf-8"),
        "-o",
        out_dir.to_str().expect("utf-8"),
    ]);
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(
        text(&again.stderr),
        format!(
            "error: {} exists: remove it or pass --force to overwrite it\n",
            written.display()
        )
    );
    let forced = import(&[
        repo("docker/tikv/compose.yaml").to_str().expect("utf-8"),
        "-o",
        out_dir.to_str().expect("utf-8"),
        "--force",
    ]);
    succeeded(&forced, "import --force");
}

/// Debian's docker-compose (1.29) must accept the shipped compose file offline, and the file
/// it prints (paths made absolute, forms normalized) must import to the same services.
#[test]
fn docker_compose_accepts_the_tikv_compose_file_and_its_normalized_form_imports_the_same() {
    let dir = TempDir::new(&unique("import-config"));
    let mut cmd = Command::new("docker-compose");
    cmd.args(["-p", "tikv", "-f"])
        .arg(repo("docker/tikv/compose.yaml"))
        .arg("config")
        .current_dir(dir.path());
    let config = match Command::new("docker-compose").arg("version").output() {
        Ok(_) => run_with_timeout(cmd, Duration::from_secs(60)),
        Err(e) => panic!(
            "docker-compose is required ({e}): `apt-get install -y docker-compose`, or run scripts/setup.sh, which installs it"
        ),
    };
    succeeded(&config, "docker-compose config");
    let normalized = dir.write("config.yaml", &text(&config.stdout));

    let from_config = dir.path().join("from-config");
    let out = import(&[
        normalized.to_str().expect("utf-8"),
        "--project",
        "tikv",
        "-o",
        from_config.to_str().expect("utf-8"),
    ]);
    succeeded(&out, "import of docker-compose config's output");
    let imported = load_one(&from_config.join("tikv.yaml"));
    assert_eq!(imported.network.name, "tikv_default");
    assert_same_services(
        &imported,
        &load_one(&repo("manifests/tikv/cluster.yaml")),
        true,
    );
}

#[test]
fn keys_that_are_not_carried_over_are_comments_and_the_manifest_still_validates() {
    let dir = TempDir::new(&unique("import-comments"));
    let compose = dir.write(
        "compose.yaml",
        r#"services:
  web:
    image: "nginx:${WEB_TAG:-1.27}"
    container_name: shop-web
    deploy: {replicas: 2}
    env_file: web.env
    user: "101"
    ports: ["8080:80", "9000"]
    volumes: ["./html:/usr/share/nginx/html:ro", "/scratch"]
    depends_on:
      api: {condition: service_healthy}
    restart: always
  api:
    build: ./api
    environment: [FROM_SHELL, MODE=prod]
"#,
    );
    let override_file = dir.write(
        "compose.override.yaml",
        "services:\n  api:\n    image: shop/api:2\n",
    );
    let out = import(&[
        compose.to_str().expect("utf-8"),
        override_file.to_str().expect("utf-8"),
        "--project",
        "shop",
    ]);
    succeeded(&out, "import");
    let manifest = text(&out.stdout);
    for expected in [
        "  name: shop\n",
        "    name: shop_default\n    external: true\n",
        "    - name: shop-web\n",
        "      image: nginx:1.27\n",
        "      # compose key deploy: not carried over (swarm only)\n",
        "      # compose key env_file: not carried over (operator reads no env files",
        "      # compose key user: not carried over (",
        "      # compose key ports: 9000 not carried over (no host port",
        "      # compose key volumes: \"/scratch\" not carried over (an anonymous volume",
        "      # compose key depends_on.api.condition: service_healthy not carried over",
        "      # compose restart: always: the controller restarts it in place of the engine",
        "      remediation:\n        policy: restart\n",
        "    - name: api\n",
        "      # compose key build: not carried over (operator does not build images",
        "      # compose key environment: FROM_SHELL not carried over",
        "      image: shop/api:2\n",
        "      # compose names this container shop_api_1 (docker-compose 1.x) or shop-api-1 (v2)",
        "      remediation:\n        policy: observe\n",
    ] {
        assert!(
            manifest.contains(expected),
            "missing {expected:?} in:\n{manifest}"
        );
    }
    // On standard output the bind mounts are absolute: where the text goes is unknown.
    let html = dir.path().join("html");
    assert!(
        manifest.contains(&format!(
            "        - {}:/usr/share/nginx/html:ro\n",
            html.display()
        )),
        "{manifest}"
    );
    assert!(text(&out.stderr).is_empty(), "{}", text(&out.stderr));

    // The printed manifest, saved, passes validate.
    let saved = dir.write("shop.yaml", &manifest);
    succeeded(
        &operator(&["validate", saved.to_str().expect("utf-8")], None),
        "operator validate",
    );
}

#[test]
fn bad_input_is_one_error_line_and_exit_1_and_nothing_is_written() {
    let dir = TempDir::new(&unique("import-bad"));
    let out_dir = dir.path().join("out");
    let out_arg = out_dir.to_str().expect("utf-8").to_string();
    let cases: Vec<(String, String)> = vec![
        (
            dir.write(
                "typo.yaml",
                "services:\n  web:\n    image: a\n    imagee: b\n",
            )
            .display()
            .to_string(),
            "typo.yaml:4: services.web.imagee: unknown compose key \"imagee\"".into(),
        ),
        (
            dir.write("syntax.yaml", "services:\n  web: [\n")
                .display()
                .to_string(),
            "syntax.yaml:".into(),
        ),
        (
            dir.write(
                "port.yaml",
                "services:\n  web:\n    image: a\n    ports:\n      - 80:http\n",
            )
            .display()
            .to_string(),
            "port.yaml:5: services.web.ports[0]: invalid port \"80:http\"".into(),
        ),
        (
            dir.path().join("missing.yaml").display().to_string(),
            "cannot read compose file".into(),
        ),
    ];
    for (file, expected) in cases {
        let out = import(&[&file, "-o", &out_arg]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{file}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(&expected),
            "{file}: expected {expected:?} in {stderr:?}"
        );
        assert!(text(&out.stdout).is_empty(), "{}", text(&out.stdout));
        assert!(!out_dir.exists(), "nothing written for {file}");
    }
}

/// What the converter cannot see, the loader can: two services publishing one host port is
/// fine for compose's file format but refused by `validate`. The manifest is written (to be
/// fixed) and the command fails, saying where.
#[test]
fn an_import_that_does_not_validate_is_written_and_fails_with_the_loaders_problems() {
    let dir = TempDir::new(&unique("import-clash"));
    let compose = dir.write(
        "compose.yaml",
        "services:\n  aa:\n    image: a\n    ports: [\"8080:80\"]\n  bb:\n    image: b\n    ports: [\"8080:80\"]\n",
    );
    let out_dir = dir.path().join("out");
    let out = import(&[
        compose.to_str().expect("utf-8"),
        "-o",
        out_dir.to_str().expect("utf-8"),
        "--project",
        "clash",
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let written = out_dir.join("clash.yaml");
    assert!(written.exists());
    assert!(
        stderr.starts_with(&format!(
            "error: {} was written but does not pass `operator validate`",
            written.display()
        )) && stderr.contains("8080"),
        "{stderr}"
    );
}
