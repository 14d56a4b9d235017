//! `operator import compose` from the real binary: docker/tikv/compose.yaml round-trips to
//! the services of manifests/tikv/, what was written passes `operator validate`, Debian's
//! docker-compose accepts the compose file (and its normalized form imports the same), keys
//! that cannot be carried over are comments, and bad input is one error line. The last test
//! starts a real compose stack, imports it and runs the controller beside it.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::operator::{TempDir, operator};
use common::{repo, run_with_timeout, succeeded, text, unique};
use operator::manifest::{Adopt, Cluster, DesiredState, Service, load};

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

/// Everything but restartWith, which a compose file cannot say: the container, what it
/// waits for, its adoption (by compose labels) and its remediation (the compose file's
/// `x-operator.remediation`).
fn container_fields(s: &Service) -> Service {
    Service {
        restart_with: Vec::new(),
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
        assert_eq!(s.adopt, Some(Adopt::Observed), "service {}", s.name);
        assert_eq!(
            s.compose
                .as_ref()
                .map(|c| (c.project.as_str(), c.service.as_str())),
            Some(("tikv", s.name.as_str())),
            "service {} is adopted by its compose labels",
            s.name
        );
        assert_ne!(
            s.remediation.policy,
            operator::manifest::Policy::Observe,
            "service {}: x-operator.remediation is carried over",
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
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            format!("wrote {} (cluster tikv, 8 services)", written.display()).as_str(),
            "adopted: pd0, pd1, pd2, tikv0, tikv1, tikv2, prometheus, grafana (the containers compose started in project tikv, found by their compose labels)",
            "created: none",
            "dropped: none",
        ]
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
        "      # compose key deploy.replicas: not carried over (a manifest service is one container",
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
    // What it means for the stack goes beside the manifest, on standard error.
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("adopted: shop-web, api (")
            && stderr.contains("\ncreated: none\n")
            && stderr.contains("\ndropped: shop-web: deploy.replicas, env_file, user, ports: 9000"),
        "{stderr}"
    );

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

/// A compose project started for a test, taken down (`docker-compose down`) when the test
/// ends however it ends; the network too if `down` could not remove it.
struct ComposeStack {
    project: String,
    file: std::path::PathBuf,
}

impl ComposeStack {
    fn compose(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("docker-compose");
        cmd.args(["-p", &self.project, "-f"])
            .arg(&self.file)
            .args(args);
        run_with_timeout(cmd, Duration::from_secs(120))
    }
}

impl Drop for ComposeStack {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "-t", "1"]);
        common::remove_labelled(&format!("com.docker.compose.project={}", self.project));
        let _ = common::docker(&["network", "rm", &format!("{}_default", self.project)]);
    }
}

/// Whether `name` resolves from the `client` container (Docker's DNS on the network).
fn resolves(client: &str, name: &str) -> bool {
    common::docker(&["exec", client, "nslookup", name])
        .status
        .success()
}

/// Containers of compose service `service` of `project` (compose's labels), by name.
fn compose_containers(project: &str, service: &str) -> Vec<String> {
    let out = common::docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
        "--filter",
        &format!("label=com.docker.compose.service={service}"),
        "--format",
        "{{.Names}}",
    ]);
    let mut names: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    names.sort();
    names
}

/// Issue 22, defects 6 and 4: a service without `container_name` imported as a new service
/// made the controller create a second container beside compose's `<project>_worker_1`, and
/// a recreated compose service lost the names its clients used, after which
/// `docker-compose down` failed on the network's endpoints. Imported now, every service is
/// adopted by its compose labels (nothing duplicated); after `docker rm -f` the controller's
/// containers answer to every name compose gave (service name, container name, aliases),
/// and `docker-compose down` takes the whole stack, theirs included.
#[test]
fn an_imported_compose_stack_is_adopted_by_its_labels_and_keeps_its_names_and_its_down() {
    let builder = common::Fixture::builder("impc");
    let project = builder.cluster().to_string();
    let files = TempDir::new(&unique("impc-compose"));
    let image = common::BUSYBOX_IMAGE;
    let looping = r#"["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]"#;
    let healed = "x-operator: {remediation: {policy: restart, backoff: {initial: 200ms, max: 1s}}}";
    let compose = files.write(
        "compose.yaml",
        &format!(
            r#"services:
  db:
    image: {image}
    container_name: {project}-imp-db
    command: {looping}
    networks:
      default:
        aliases: [database]
    {healed}
  {project}-worker:
    image: {image}
    command: {looping}
    depends_on: [db]
    networks:
      default:
        aliases: [jobs]
    {healed}
  {project}-client:
    image: {image}
    command: {looping}
    {healed}
networks:
  default:
    internal: true
"#
        ),
    );
    let stack = ComposeStack {
        project: project.clone(),
        file: compose.clone(),
    };
    let up = stack.compose(&["up", "-d"]);
    succeeded(&up, "docker-compose up");
    // Services without container_name: compose names their containers itself.
    let (worker, client_service) = (format!("{project}-worker"), format!("{project}-client"));
    let worker_1 = format!("{project}_{worker}_1");
    let client = format!("{project}_{client_service}_1");
    assert_eq!(compose_containers(&project, &worker), [worker_1.as_str()]);

    // Import into the controller's manifest folder, then run the controller on it.
    let out = import(&[
        compose.to_str().expect("utf-8"),
        "--project",
        &project,
        "-o",
        builder.dir().path().to_str().expect("utf-8"),
    ]);
    succeeded(&out, "import");
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "adopted: {project}-imp-db, {worker}, {client_service} ("
        )),
        "{stdout}"
    );
    let mut f = builder
        .also_clean(format!("com.docker.compose.project={project}"))
        .start();
    let adoptions = |f: &common::Fixture| {
        operator::tickets::Store::open_read_only(f.db())
            .and_then(|s| s.adoptions())
            .unwrap_or_default()
    };
    assert!(
        common::operator::wait_until(Duration::from_secs(30), || adoptions(&f).len() == 3),
        "not every compose container was adopted: {:?}; log:\n{}",
        adoptions(&f),
        f.operator.log()
    );
    let adopted: Vec<String> = adoptions(&f).into_iter().map(|a| a.name).collect();
    assert!(adopted.contains(&worker_1), "{adopted:?}");
    // Adopted, not duplicated: no container of the manifest's name beside compose's.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        common::operator::state(&worker, None).is_none(),
        "the controller created a second worker beside {worker_1}; log:\n{}",
        f.operator.log()
    );
    assert_eq!(compose_containers(&project, &worker), [worker_1.as_str()]);

    // Compose's containers go: the controller creates its own, under compose's names.
    let db = format!("{project}-imp-db");
    common::docker_ok(&["rm", "-f", &worker_1, &db]);
    f.wait_running(&worker, "docker rm -f of the compose-adopted worker");
    f.wait_running(&db, "docker rm -f of the compose-adopted db");
    assert_eq!(
        compose_containers(&project, &worker),
        [worker.as_str()],
        "one worker, carrying compose's labels; log:\n{}",
        f.operator.log()
    );
    assert_eq!(compose_containers(&project, "db"), [db.as_str()]);
    for name in [worker.as_str(), "jobs", "db", "database", db.as_str()] {
        assert!(
            common::operator::wait_until(Duration::from_secs(20), || resolves(&client, name)),
            "{name} does not resolve from {client} after the recreate; log:\n{}",
            f.operator.log()
        );
    }

    // With the controller stopped, compose takes the whole stack down, network included.
    f.operator.stop();
    let down = stack.compose(&["down", "-t", "1"]);
    succeeded(&down, "docker-compose down after the recreate");
    for service in ["db", worker.as_str(), client_service.as_str()] {
        assert!(
            compose_containers(&project, service).is_empty(),
            "docker-compose down left {service}: {:?}",
            compose_containers(&project, service)
        );
    }
    let network = common::docker(&["network", "inspect", &format!("{project}_default")]);
    assert!(!network.status.success(), "the network is still there");
}
