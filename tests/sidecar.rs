//! The sidecar, end to end, as its users run it: the image built by scripts/build-image.sh
//! (no registry), a three-member etcd started by docker-compose from a compose file, a
//! manifest written from that file by `operator import compose`, and the controller running
//! as a container with the engine's socket and a database folder mounted. A member is
//! SIGKILLed; the sidecar starts the same container again, and the host reads the resolved
//! ticket from the mounted database with `operator tickets list`.
//!
//! Everything it creates carries the label `operator.test.sidecar=<run>` and a name of its
//! own, and is removed on the way out (also on panic): the compose project (containers and
//! network), the sidecar container and the image.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use common::operator::{TempDir, inspect, operator, operator_bin, wait_until};
use common::{
    BUSYBOX_IMAGE, EMPTY_IMAGE, TEST_LABEL, docker, docker_ok, repo, require_docker,
    run_with_timeout, succeeded, text, unique,
};

/// The user the sidecar runs as here: not root, not the image's 10001.
const NOBODY: u32 = 65534;

/// Builds the image with the script users run, around the binary these tests were built
/// with, under a tag of this run's own; removed again on drop.
struct Image {
    tag: String,
}

impl Image {
    fn build() -> Self {
        let image = Image {
            tag: format!("{}:latest", unique("operator-test-sidecar")),
        };
        let mut cmd = Command::new(repo("scripts/build-image.sh"));
        cmd.args(["--tag", &image.tag, "--binary", operator_bin()]);
        let out = run_with_timeout(cmd, Duration::from_secs(600));
        succeeded(&out, "scripts/build-image.sh");
        image
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = docker(&["rmi", "-f", &self.tag]);
    }
}

/// Docker's own group for the socket, which the sidecar needs as a supplementary group.
fn socket_gid() -> String {
    let meta = std::fs::metadata("/var/run/docker.sock").expect("/var/run/docker.sock");
    std::os::unix::fs::MetadataExt::gid(&meta).to_string()
}

/// A compose project of three etcd members (host binaries in the empty image, the stand-in
/// for PD here), the way a user starts a stack: `docker-compose -p P -f F up -d`.
fn compose_file(project: &str, label: &str) -> String {
    let member = |i: usize| {
        let name = format!("{project}-etcd{i}");
        let cluster = (0..3)
            .map(|j| format!("{project}-etcd{j}=http://{project}-etcd{j}:2380"))
            .collect::<Vec<_>>()
            .join(",");
        format!(
            r#"  etcd{i}:
    image: {EMPTY_IMAGE}
    container_name: {name}
    command:
      - /usr/bin/etcd
      - --name={name}
      - --data-dir=/var/lib/etcd-data
      - --listen-client-urls=http://0.0.0.0:2379
      - --advertise-client-urls=http://{name}:2379
      - --listen-peer-urls=http://0.0.0.0:2380
      - --initial-advertise-peer-urls=http://{name}:2380
      - --initial-cluster={cluster}
      - --initial-cluster-state=new
      - --initial-cluster-token={project}
    volumes:
      - /usr:/usr:ro
      - /lib:/lib:ro
      - /lib64:/lib64:ro
      - /bin:/bin:ro
      - /etc:/etc:ro
    labels:
      {test_key}: "true"
      {label_key}: "{label_value}"
    healthcheck:
      test: ["CMD", "/bin/busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:2379/health"]
      interval: 2s
      timeout: 3s
      retries: 3
      start_period: 20s
    restart: "no"
"#,
            test_key = TEST_LABEL.split('=').next().expect("key"),
            label_key = label.split('=').next().expect("key"),
            label_value = label.split('=').nth(1).expect("value"),
        )
    };
    // A service that reads a file of the stack's folder through a relative bind mount
    // (docs/sidecar.md): compose resolves it against the compose file's folder, the import
    // writes it relative to the manifest's (`./conf.txt`), and the sidecar, which reads that
    // folder at another path, must still mount the host's file.
    let reader = format!(
        r#"  reader:
    image: {BUSYBOX_IMAGE}
    container_name: {project}-reader
    command:
      - sh
      - -c
      - "trap 'exit 0' TERM; cat /conf.txt || exit 1; while true; do sleep 1; done"
    volumes:
      - ./manifests/conf.txt:/conf.txt:ro
    labels:
      {test_key}: "true"
      {label_key}: "{label_value}"
    restart: "no"
"#,
        test_key = TEST_LABEL.split('=').next().expect("key"),
        label_key = label.split('=').next().expect("key"),
        label_value = label.split('=').nth(1).expect("value"),
    );
    // A service without a container_name (compose names it P_S_1) and with an alias of its
    // own, and a dependent of it that compose does not start (a profile): the controller
    // creates the dependent once the adopted one runs, and a recreated worker must keep
    // every name its clients use.
    let worker = format!(
        r#"  {project}-worker:
    image: {BUSYBOX_IMAGE}
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    networks:
      default:
        aliases: [jobs]
    labels:
      {test_key}: "true"
    restart: "no"
  {project}-client:
    image: {BUSYBOX_IMAGE}
    profiles: [later]
    depends_on: [{project}-worker]
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    labels:
      {test_key}: "true"
    restart: "no"
"#,
        test_key = TEST_LABEL.split('=').next().expect("key"),
    );
    format!(
        "services:\n{}{}{}{reader}{worker}",
        member(0),
        member(1),
        member(2)
    )
}

/// What the relative bind's file says.
const CONF: &str = "read through a relative bind mount";

/// What one test made; removed in reverse on drop.
struct Stack {
    dir: TempDir,
    project: String,
    label: String,
    sidecar: String,
}

impl Stack {
    fn new(prefix: &str) -> Self {
        let project = unique(prefix).replace('-', "");
        let dir = TempDir::new(&project);
        Stack {
            label: format!("operator.test.sidecar={project}"),
            sidecar: format!("{project}-operator"),
            dir,
            project,
        }
    }

    fn compose(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("docker-compose");
        cmd.args(["-p", &self.project, "-f"])
            .arg(self.dir.path().join("compose.yaml"))
            .args(args);
        run_with_timeout(cmd, Duration::from_secs(180))
    }

    fn member(&self, i: usize) -> String {
        format!("{}-etcd{i}", self.project)
    }

    fn reader(&self) -> String {
        format!("{}-reader", self.project)
    }

    /// The compose service without a container_name (and the controller's name for it).
    fn worker(&self) -> String {
        format!("{}-worker", self.project)
    }

    /// Its dependent, which compose does not start.
    fn client(&self) -> String {
        format!("{}-client", self.project)
    }

    fn network(&self) -> String {
        format!("{}_default", self.project)
    }

    fn db_dir(&self) -> PathBuf {
        self.dir.path().join("operator")
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.sidecar]);
        // Containers the controller made for the stack's services (named after them; the
        // test's labels are not carried into a manifest, so not onto them either).
        let _ = docker(&[
            "rm",
            "-f",
            &self.member(0),
            &self.member(1),
            &self.member(2),
        ]);
        let _ = docker(&["rm", "-f", &self.reader(), &self.worker(), &self.client()]);
        let _ = self.compose(&["down", "--volumes", "--remove-orphans", "--timeout", "5"]);
        // Anything the controller made (a recreated member carries our label too).
        common::remove_labelled(&self.label);
        let _ = docker(&["network", "rm", &self.network()]);
    }
}

/// The README's sidecar route, on the etcd stand-in: compose up, import, run the image
/// with the socket and the database folder mounted, SIGKILL a member, read the ticket.
#[test]
fn the_sidecar_image_adopts_a_compose_started_etcd_and_heals_a_killed_member() {
    require_docker();
    let image = Image::build();
    let stack = Stack::new("sc");

    // The image itself: what the Dockerfile's runtime instructions say, small, and a docker
    // client inside that talks to the host's engine through the mounted socket.
    let config: serde_json::Value = serde_json::from_str(&docker_ok(&[
        "image",
        "inspect",
        "-f",
        "{{json .Config}}",
        &image.tag,
    ]))
    .expect("image config");
    assert_eq!(
        config["Entrypoint"][0], "/usr/local/bin/operator",
        "{config}"
    );
    assert_eq!(config["Cmd"][1], "/etc/operator/manifests", "{config}");
    assert_eq!(config["User"], "10001:10001", "{config}");
    assert_eq!(
        config["Healthcheck"]["Test"],
        serde_json::json!(["CMD", "/usr/local/bin/operator", "healthcheck"]),
        "{config}"
    );
    assert!(
        config["Env"]
            .as_array()
            .is_some_and(|env| env.iter().any(|e| e == "OPERATOR_LISTEN=0.0.0.0:9464")),
        "{config}"
    );
    let size: u64 = docker_ok(&["image", "inspect", "-f", "{{.Size}}", &image.tag])
        .parse()
        .expect("size");
    // The prototype's agent image was 675 MB; this one is about 150 MB with a release binary
    // (a test's debug binary adds a little). Well over that means an engine or a toolchain
    // slipped in.
    assert!(size < 300_000_000, "the image is {size} bytes");
    let socket_group = socket_gid();
    let client = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--label",
        &stack.label,
        "--user",
        &format!("{NOBODY}:{NOBODY}"),
        "--group-add",
        &socket_group,
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
        "--entrypoint",
        "sh",
        &image.tag,
        "-c",
        "docker version --format '{{.Server.APIVersion}}' && curl --version >/dev/null && jq --version && ! command -v dockerd",
    ]);
    succeeded(
        &client,
        "docker, curl and jq inside the image (and no engine)",
    );

    // 1. The stack, as its user starts it.
    stack
        .dir
        .write("compose.yaml", &compose_file(&stack.project, &stack.label));
    std::fs::create_dir_all(stack.dir.path().join("manifests")).expect("manifests folder");
    std::fs::write(stack.dir.path().join("manifests/conf.txt"), CONF).expect("conf.txt");
    succeeded(&stack.compose(&["up", "-d"]), "docker-compose up -d");

    // 2. The manifest, from the user's own compose file. Compose's `restart: always` becomes
    //    the controller's restart remediation; the members are adopted by their names.
    let manifests = stack.dir.path().join("manifests");
    let compose_path = stack.dir.path().join("compose.yaml");
    let out = operator(
        &[
            "import",
            "compose",
            compose_path.to_str().expect("utf-8"),
            "--project",
            &stack.project,
            "-o",
            manifests.to_str().expect("utf-8"),
        ],
        None,
    );
    succeeded(&out, "operator import compose");
    let manifest = std::fs::read_to_string(manifests.join(format!("{}.yaml", stack.project)))
        .expect("imported manifest");
    assert!(
        manifest.contains("adopt:"),
        "the importer adopts services with a container_name:\n{manifest}"
    );
    // Compose's `restart: "no"` imports as `policy: observe` (nothing restarts it under
    // compose either); the user lets the controller heal it, as the import's comment says.
    assert!(
        manifest.contains("policy: observe"),
        "compose restart: no becomes remediation policy observe:\n{manifest}"
    );
    assert!(
        manifest.contains("./conf.txt:/conf.txt:ro"),
        "the relative bind is relative to the manifest's folder:\n{manifest}"
    );
    let manifest = manifest.replace("policy: observe", "policy: restart");
    std::fs::write(manifests.join(format!("{}.yaml", stack.project)), &manifest)
        .expect("edit the imported manifest");

    // 3. The sidecar: the image's defaults, the socket, the database folder, the manifests.
    //    It runs as a user who is neither root nor the image's own (docker/compose.yaml runs
    //    it as whoever owns ~/.operator): nobody, owning the database folder.
    let db_dir = stack.db_dir();
    std::fs::create_dir_all(&db_dir).expect("db dir");
    std::os::unix::fs::chown(&db_dir, Some(NOBODY), Some(NOBODY)).expect("chown db dir");
    std::fs::set_permissions(&db_dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let db_mount = format!("{}:/home/operator/.operator", db_dir.display());
    let manifest_mount = format!("{}:/etc/operator/manifests:ro", manifests.display());
    let id = docker_ok(&[
        "run",
        "-d",
        "--name",
        &stack.sidecar,
        "--label",
        TEST_LABEL,
        "--label",
        &stack.label,
        "--network",
        &stack.network(),
        "--user",
        &format!("{NOBODY}:{NOBODY}"),
        "--group-add",
        &socket_group,
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
        "-v",
        &db_mount,
        "-v",
        &manifest_mount,
        &image.tag,
    ]);
    assert!(!id.is_empty(), "docker run printed no id");

    // The image's HEALTHCHECK (`operator healthcheck`, no curl) turns healthy once the
    // controller has listed the engine and serves /healthz on its OPERATOR_LISTEN.
    let health = || {
        inspect(&stack.sidecar, None)
            .and_then(|v| v["State"]["Health"]["Status"].as_str().map(str::to_string))
            .unwrap_or_default()
    };
    let healthy = wait_until(Duration::from_secs(120), || health() == "healthy");
    assert!(
        healthy,
        "the sidecar never turned healthy (now {:?}); its log:\n{}",
        health(),
        sidecar_log(&stack)
    );
    for i in 0..3 {
        let adopted = wait_until(Duration::from_secs(60), || {
            sidecar_log(&stack).contains(&format!("adopted container {}", stack.member(i)))
        });
        assert!(
            adopted,
            "member {i} was not adopted:\n{}",
            sidecar_log(&stack)
        );
    }

    // The database the sidecar writes is the host's file, owner-only.
    let db = db_dir.join("tickets.db");
    let meta = std::fs::metadata(&db).expect("tickets.db");
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "tickets.db must be readable by its owner only"
    );
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        NOBODY,
        "written as the sidecar's user"
    );

    // 4. SIGKILL a member: the sidecar starts the same container again.
    let victim = stack.member(1);
    let before = docker_ok(&["inspect", "-f", "{{.Id}}", &victim]);
    docker_ok(&["kill", "-s", "KILL", &victim]);
    let db_arg = db.to_str().expect("utf-8").to_string();
    let resolved = || -> Option<serde_json::Value> {
        let out = operator(&["tickets", "list", "--db", &db_arg, "--json"], None);
        if !out.status.success() {
            return None;
        }
        let tickets: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).ok()?;
        tickets
            .into_iter()
            .find(|t| t["service"] == victim.as_str() && t["status"] == "resolved")
    };
    let healed = wait_until(Duration::from_secs(120), || resolved().is_some());
    assert!(
        healed,
        "no resolved ticket for {victim} in the mounted database; tickets:\n{}\nsidecar log:\n{}",
        text(&operator(&["tickets", "list", "--db", &db_arg], None).stdout),
        sidecar_log(&stack)
    );
    let ticket = resolved().expect("resolved ticket");
    assert_eq!(ticket["resolved_by"], "controller", "ticket: {ticket}");
    let after = docker_ok(&["inspect", "-f", "{{.Id}} {{.State.Running}}", &victim]);
    assert_eq!(
        after,
        format!("{before} true"),
        "the same container runs again, not a new one"
    );
    // The member serves again: asked from inside the sidecar with the image's curl.
    let served = wait_until(Duration::from_secs(60), || {
        let out = docker(&[
            "exec",
            &stack.sidecar,
            "curl",
            "-fsS",
            "--max-time",
            "3",
            &format!("http://{victim}:2379/health"),
        ]);
        out.status.success() && text(&out.stdout).contains("true")
    });
    assert!(served, "{victim} does not answer /health after the repair");

    // 5. The relative bind, in a container the sidecar creates: the host's file.
    relative_bind_in_the_sidecar(&stack, &manifests, &db_arg);

    // 6. A compose service adopted by its labels, and its dependent: names kept across a
    //    recreate.
    compose_names_survive_a_recreate(&stack, &db_arg);

    // 7. The agent in the sidecar: one session in its toolbox (the sidecar's own image),
    //    through its proxy. The sidecar runs on the host's network here only so that it
    //    reaches the local stand-in for the Claude API on loopback.
    agent_session_in_the_sidecar(&stack, &image, &manifests, &db_dir, &socket_group);

    // 8. The stack is still compose's: with the controller gone, `docker-compose down`
    //    removes it, the containers the controller created in it included.
    let _ = docker(&["rm", "-f", &stack.sidecar]);
    succeeded(
        &stack.compose(&["down", "--timeout", "5"]),
        "docker-compose down after the controller's repairs",
    );
    for name in [
        stack.worker(),
        stack.client(),
        stack.member(0),
        stack.reader(),
    ] {
        assert!(
            inspect(&name, None).is_none(),
            "{name} outlived docker-compose down"
        );
    }
    assert!(
        !docker(&["network", "inspect", &stack.network()])
            .status
            .success(),
        "the stack's network outlived docker-compose down"
    );
}

/// The dependent of an adopted compose service is created once that runs; compose's own
/// container of the worker (`P_S_1`, adopted by its labels) is removed; the one the sidecar
/// creates answers to the service's name and its alias, and the removal is a ticket that
/// says what was done.
fn compose_names_survive_a_recreate(stack: &Stack, db_arg: &str) {
    let (worker, client) = (stack.worker(), stack.client());
    let ours_running = |name: &str| {
        inspect(name, None).is_some_and(|c| {
            c["Config"]["Labels"]["operator.managed-by"] == "operator"
                && c["State"]["Running"] == true
        })
    };
    assert!(
        wait_until(Duration::from_secs(90), || ours_running(&client)),
        "the dependent of an adopted service was not created; sidecar log:\n{}",
        sidecar_log(stack)
    );
    let composed = format!("{}_{worker}_1", stack.project);
    assert!(
        sidecar_log(stack).contains(&format!("adopted container {composed}")),
        "compose's {composed} was not adopted; sidecar log:\n{}",
        sidecar_log(stack)
    );
    docker_ok(&["rm", "-f", &composed]);
    assert!(
        wait_until(Duration::from_secs(90), || ours_running(&worker)),
        "{worker} was not created after its compose container was removed; sidecar log:\n{}",
        sidecar_log(stack)
    );
    let resolves = |name: &str| {
        docker(&["exec", &client, "nslookup", name])
            .status
            .success()
    };
    for name in [worker.as_str(), "jobs"] {
        assert!(
            wait_until(Duration::from_secs(30), || resolves(name)),
            "{name} does not resolve from {client} after the recreate"
        );
    }
    let missing = || -> Option<serde_json::Value> {
        let out = operator(&["tickets", "list", "--db", db_arg, "--json"], None);
        let tickets: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).ok()?;
        tickets.into_iter().find(|t| {
            t["service"] == worker.as_str()
                && t["drift"] == "missing"
                && t["status"] == "resolved"
                && t["resolved_by"] == "controller"
        })
    };
    assert!(
        wait_until(Duration::from_secs(60), || missing().is_some()),
        "the removal of {composed} left no resolved ticket; tickets:\n{}",
        text(&operator(&["tickets", "list", "--db", db_arg], None).stdout)
    );
    let id = missing().unwrap()["id"].as_i64().unwrap().to_string();
    let shown = operator(&["tickets", "show", &id, "--db", db_arg, "--json"], None);
    succeeded(&shown, "operator tickets show");
    let shown = text(&shown.stdout);
    assert!(
        shown.contains("\"action\": \"create\""),
        "the ticket does not say the container was created: {shown}"
    );
}

/// The sidecar reads the manifest at /etc/operator/manifests, the host's `manifests`
/// folder: its `./conf.txt` is the host's file. The adopted reader is removed; the container
/// the sidecar creates for it mounts the host's file and reads it, and neither the sidecar
/// nor a controller on the host then sees a changed spec (the same hash from either place).
fn relative_bind_in_the_sidecar(stack: &Stack, manifests: &std::path::Path, db_arg: &str) {
    let reader = stack.reader();
    docker_ok(&["rm", "-f", &reader]);
    let host_file = manifests.join("conf.txt");
    let mounted = || {
        inspect(&reader, None).is_some_and(|c| {
            c["Config"]["Labels"]["operator.managed-by"] == "operator"
                && c["State"]["Running"] == true
                && c["Mounts"][0]["Source"] == host_file.to_str().expect("utf-8")
        })
    };
    let reads = || {
        let out = docker(&["exec", &reader, "cat", "/conf.txt"]);
        out.status.success() && text(&out.stdout).trim() == CONF
    };
    assert!(
        wait_until(Duration::from_secs(90), || mounted() && reads()),
        "the sidecar's {reader} does not mount and read the host's {}; its mounts: {}\nsidecar log:\n{}",
        host_file.display(),
        inspect(&reader, None)
            .map(|c| c["Mounts"].to_string())
            .unwrap_or_default(),
        sidecar_log(stack)
    );
    let id = docker_ok(&["inspect", "-f", "{{.Id}}", &reader]);

    // What a controller would do now, asked in the sidecar and on the host: nothing for
    // the reader, above all no recreate for a changed spec.
    let spec_changes = |out: &Output, place: &str| -> Vec<serde_json::Value> {
        succeeded(out, &format!("operator plan --json {place}"));
        let steps: Vec<serde_json::Value> =
            serde_json::from_slice(&out.stdout).expect("plan --json");
        steps
            .into_iter()
            .filter(|s| {
                s["service"] == reader.as_str()
                    || s["drifts"]
                        .as_array()
                        .is_some_and(|d| d.iter().any(|d| d["kind"] == "spec-changed"))
            })
            .collect()
    };
    let in_sidecar = docker(&[
        "exec",
        &stack.sidecar,
        "operator",
        "plan",
        "/etc/operator/manifests",
        "--json",
    ]);
    assert_eq!(
        spec_changes(&in_sidecar, "in the sidecar"),
        Vec::<serde_json::Value>::new()
    );
    let on_host = operator(
        &[
            "plan",
            manifests.to_str().expect("utf-8"),
            "--db",
            db_arg,
            "--json",
        ],
        None,
    );
    assert_eq!(
        spec_changes(&on_host, "on the host"),
        Vec::<serde_json::Value>::new()
    );
    let out = operator(&["tickets", "list", "--db", db_arg, "--json"], None);
    succeeded(&out, "operator tickets list");
    let tickets: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("tickets");
    assert!(
        !tickets.iter().any(|t| t["drift"] == "spec-changed"),
        "no ticket for a changed spec: {tickets:#?}"
    );
    assert_eq!(
        docker_ok(&["inspect", "-f", "{{.Id}}", &reader]),
        id,
        "{reader} was not recreated"
    );
}

/// A second sidecar on the same database pages the agent for a SIGKILLed member: the
/// session's commands run in a toolbox of the sidecar's image, the quorum gate refuses a
/// second member, the sidecar's own container cannot be read, the key reaches no command,
/// and the agent's `docker start` through the proxy lets the re-check resolve the ticket.
fn agent_session_in_the_sidecar(
    stack: &Stack,
    image: &Image,
    manifests: &std::path::Path,
    db_dir: &std::path::Path,
    socket_group: &str,
) {
    use common::claude::{ClaudeStandIn, Script, TEST_KEY};
    let _ = docker(&["rm", "-f", &stack.sidecar]);
    let file = manifests.join(format!("{}.yaml", stack.project));
    let manifest = std::fs::read_to_string(&file).expect("manifest");
    let manifest = manifest
        .replace("policy: restart", "policy: agent")
        .replacen(
            "spec:\n",
            "spec:\n  agent: {safetyMode: execute, sessionsPerTicket: 1, sessionBackoff: 0s}\n  groups:\n    - {name: etcd, members: [MEMBERS], quorum: majority}\n",
            1,
        )
        .replace(
            "MEMBERS",
            &(0..3).map(|i| stack.member(i)).collect::<Vec<_>>().join(", "),
        );
    std::fs::write(&file, &manifest).expect("edit the manifest");
    let (m0, victim) = (stack.member(0), stack.member(2));
    let stand_in = ClaudeStandIn::start(Script::new());
    stand_in.push(
        Script::new()
            .tool_use(&[
                (
                    "shell",
                    serde_json::json!({"command": "env; base64 -w0 /proc/1/environ; id"}),
                ),
                (
                    "shell",
                    serde_json::json!({"command": format!("docker inspect {}", stack.sidecar)}),
                ),
                (
                    "shell",
                    serde_json::json!({"command": format!("docker stop -t 1 {m0}")}),
                ),
            ])
            .tool_use(&[(
                "shell",
                serde_json::json!({"command": format!("docker start {victim}")}),
            )])
            .end_turn("Started the member that was down."),
    );
    let listen = format!("127.0.0.1:{}", common::free_port());
    let db_mount = format!("{}:/home/operator/.operator", db_dir.display());
    let manifest_mount = format!("{}:/etc/operator/manifests:ro", manifests.display());
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &stack.sidecar,
        "--label",
        TEST_LABEL,
        "--label",
        &stack.label,
        "--network",
        "host",
        "--user",
        &format!("{NOBODY}:{NOBODY}"),
        "--group-add",
        socket_group,
        "-e",
        &format!("ANTHROPIC_API_KEY={TEST_KEY}"),
        "-e",
        &format!("ANTHROPIC_BASE_URL={}", stand_in.base_url()),
        "-e",
        &format!("OPERATOR_LISTEN={listen}"),
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
        "-v",
        &db_mount,
        "-v",
        &manifest_mount,
        &image.tag,
        "run",
        "/etc/operator/manifests",
        "--settle",
        "1s",
    ]);
    let ready = wait_until(Duration::from_secs(120), || {
        sidecar_log(stack).contains(&format!("adopted container {victim}"))
            || sidecar_log(stack).contains("controller ready")
    });
    assert!(
        ready,
        "the agent sidecar did not start:\n{}",
        sidecar_log(stack)
    );
    let since = chrono::Utc::now().to_rfc3339();
    docker_ok(&["kill", "-s", "KILL", &victim]);
    let db = db_dir.join("tickets.db");
    let db_arg = db.to_str().expect("utf-8").to_string();
    let by_agent = || -> bool {
        let out = operator(&["tickets", "list", "--db", &db_arg, "--json"], None);
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).is_ok_and(|tickets| {
            tickets.iter().any(|t| {
                t["service"] == victim.as_str()
                    && t["status"] == "resolved"
                    && t["resolved_by"] == "agent"
            })
        })
    };
    assert!(
        wait_until(Duration::from_secs(180), by_agent),
        "the agent's session did not resolve {victim}; tickets:\n{}\nsidecar log:\n{}",
        text(&operator(&["tickets", "list", "--db", &db_arg], None).stdout),
        sidecar_log(stack)
    );
    // What the commands answered, as the model read it.
    let results = stand_in.tool_results();
    let all = results.join("\n");
    assert!(!all.contains(TEST_KEY), "the key reached the model: {all}");
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(TEST_KEY);
    assert!(!all.contains(&encoded[..encoded.len() - 4]), "{all}");
    assert!(
        all.contains("uid=65534") && all.contains("DOCKER_HOST=unix:///run/operator/docker.sock"),
        "the command ran in the toolbox as nobody: {all}"
    );
    assert!(
        all.contains("refused by operator") && all.contains("the operator's own container"),
        "the sidecar's own container is out of reach: {all}"
    );
    assert!(
        all.contains("would leave"),
        "the quorum gate held {m0}: {all}"
    );
    // The other members never went down; the toolbox is gone.
    for i in 0..2 {
        let actions = common::operator::event_actions(&stack.member(i), &since);
        assert!(
            !actions
                .iter()
                .any(|a| ["die", "kill", "stop"].contains(&a.as_str())),
            "member {i} was taken down: {actions:?}"
        );
    }
    // Only this stack's toolboxes (agent tests running alongside have their own): those
    // labelled with the cluster of the victim's ticket.
    let out = operator(&["tickets", "list", "--db", &db_arg, "--json"], None);
    let tickets: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("tickets");
    let cluster = tickets
        .iter()
        .find(|t| t["service"] == victim.as_str() && t["resolved_by"] == "agent")
        .and_then(|t| t["cluster"].as_str())
        .unwrap_or_else(|| panic!("the victim's ticket names its cluster: {tickets:#?}"))
        .to_string();
    let label = format!("label=operator.toolbox.cluster={cluster}");
    // The filter does match this session's toolbox: the engine saw it created.
    let created = docker_ok(&[
        "events",
        "--since",
        &since,
        "--until",
        "0s",
        "--filter",
        "type=container",
        "--filter",
        "event=create",
        "--filter",
        &label,
        "--format",
        "{{.Actor.Attributes.name}}",
    ]);
    assert!(
        !created.trim().is_empty(),
        "no toolbox labelled {label} was created for the session"
    );
    let toolboxes = || docker_ok(&["ps", "-a", "-q", "--filter", &label]);
    assert!(
        wait_until(Duration::from_secs(30), || toolboxes().is_empty()),
        "a toolbox outlived its session: {}",
        toolboxes()
    );
}

fn sidecar_log(stack: &Stack) -> String {
    let out = docker(&["logs", &stack.sidecar]);
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

/// Debian's docker-compose accepts the sidecar's compose file offline, with what it says it
/// needs; without OPERATOR_UID it refuses, naming the variable and how to set it.
#[test]
fn docker_compose_accepts_the_sidecar_compose_file_and_names_what_is_missing() {
    let dir = TempDir::new(&unique("sidecar-compose"));
    let empty_env = dir.write("empty.env", "");
    let config = |env: &[(&str, &str)]| {
        // An empty env file: a docker/.env on this machine (docs/sidecar.md) must not
        // stand in for the variables under test.
        let mut cmd = Command::new("docker-compose");
        cmd.arg("--env-file")
            .arg(&empty_env)
            .arg("-f")
            .arg(repo("docker/compose.yaml"))
            .arg("config")
            .env_remove("OPERATOR_UID")
            .env_remove("OPERATOR_GID")
            .env_remove("DOCKER_GID")
            .env_remove("DOCKER_SOCKET")
            .env_remove("ANTHROPIC_API_KEY")
            .envs(env.iter().copied());
        run_with_timeout(cmd, Duration::from_secs(60))
    };
    let out = config(&[
        ("OPERATOR_UID", "1000"),
        ("OPERATOR_GID", "1000"),
        ("DOCKER_GID", "998"),
    ]);
    succeeded(&out, "docker-compose -f docker/compose.yaml config");
    let rendered: serde_yaml::Value = serde_yaml::from_slice(&out.stdout).expect("config yaml");
    let svc = &rendered["services"]["operator"];
    assert_eq!(svc["user"], "1000:1000");
    assert_eq!(svc["group_add"][0], "998");
    assert_eq!(rendered["networks"]["tikv"]["name"], "tikv_default");
    assert_eq!(rendered["networks"]["tikv"]["external"], true);
    // Long syntax: the engine refuses a source that is not there instead of making it an
    // empty folder owned by root, so a failed `up` leaves nothing behind.
    let mount = |target: &str| -> serde_yaml::Value {
        svc["volumes"]
            .as_sequence()
            .expect("volumes")
            .iter()
            .find(|v| v["target"] == target)
            .unwrap_or_else(|| panic!("nothing mounted at {target}: {:?}", svc["volumes"]))
            .clone()
    };
    let socket = mount("/var/run/docker.sock");
    assert_eq!(socket["type"], "bind");
    assert_eq!(
        socket["source"], "/var/run/docker.sock",
        "the default socket"
    );
    let db = mount("/home/operator/.operator");
    assert_eq!(db["type"], "bind");
    assert!(
        db["source"]
            .as_str()
            .is_some_and(|s| s.ends_with("/.operator")),
        "{db:?}"
    );
    let manifests = mount("/etc/operator/manifests");
    assert_eq!(manifests["type"], "bind");
    assert_eq!(manifests["read_only"], true);
    assert_eq!(
        manifests["source"].as_str(),
        repo("manifests/tikv").to_str(),
        "the folder itself, whose relative bind sources the controller maps to the host's"
    );
    assert!(
        svc["ports"].is_null(),
        "nothing published: the metrics port is for the stack's network only"
    );
    // The key is passed through from the shell, never written: unset, it has no value.
    assert!(svc["environment"]["ANTHROPIC_API_KEY"].is_null(), "{svc:?}");

    // A rootless engine, or any DOCKER_HOST=unix://PATH: the socket mounted is that one.
    let rootless = config(&[
        ("OPERATOR_UID", "1000"),
        ("OPERATOR_GID", "1000"),
        ("DOCKER_GID", "1000"),
        ("DOCKER_SOCKET", "/run/user/1000/docker.sock"),
    ]);
    succeeded(&rootless, "docker-compose config with DOCKER_SOCKET");
    let rendered: serde_yaml::Value =
        serde_yaml::from_slice(&rootless.stdout).expect("config yaml");
    let socket = rendered["services"]["operator"]["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|v| v["target"] == "/var/run/docker.sock")
        .cloned()
        .expect("the socket is mounted");
    assert_eq!(socket["source"], "/run/user/1000/docker.sock", "{socket:?}");

    let missing = config(&[("OPERATOR_GID", "1000"), ("DOCKER_GID", "998")]);
    assert!(
        !missing.status.success(),
        "config without OPERATOR_UID must fail"
    );
    assert!(
        text(&missing.stderr).contains("set OPERATOR_UID=$(id -u)"),
        "the error says how to set it: {}",
        text(&missing.stderr)
    );
}

/// docs/sidecar.md: an `up` of the sidecar's compose file that fails leaves nothing it
/// created. A database folder not made yet is the likely slip: the engine must refuse the
/// mount, not make the folder (root's, which the sidecar's user could not write) and a
/// container that cannot start. Run here on a network of the test's own, with a local
/// image (nothing is pulled).
#[test]
fn a_failed_up_of_the_sidecar_compose_file_leaves_nothing_behind() {
    require_docker();
    let dir = TempDir::new(&unique("sidecar-up"));
    let project = unique("scup").replace('-', "");
    let network = format!("{project}-net");
    let empty_env = dir.write("empty.env", "");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).expect("manifests");
    let compose = |args: &[&str]| {
        let mut cmd = Command::new("docker-compose");
        cmd.arg("--env-file")
            .arg(&empty_env)
            .args(["-p", &project, "-f"])
            .arg(repo("docker/compose.yaml"))
            .args(args)
            .env("HOME", &home)
            .env("OPERATOR_UID", NOBODY.to_string())
            .env("OPERATOR_GID", NOBODY.to_string())
            .env("DOCKER_GID", socket_gid())
            .env("OPERATOR_IMAGE", BUSYBOX_IMAGE)
            .env("OPERATOR_NETWORK", &network)
            .env("OPERATOR_MANIFESTS", &manifests)
            .env_remove("DOCKER_SOCKET");
        run_with_timeout(cmd, Duration::from_secs(120))
    };
    /// Removes what the test made, whatever the compose file did.
    struct Made<'a> {
        network: &'a str,
        down: &'a dyn Fn(&[&str]) -> Output,
    }
    impl Drop for Made<'_> {
        fn drop(&mut self) {
            let _ = (self.down)(&["down", "--timeout", "1"]);
            let _ = docker(&["network", "rm", self.network]);
        }
    }
    assert!(
        docker_ok(&["ps", "-a", "-q", "--filter", "name=^/operator$"]).is_empty(),
        "a container named operator exists on this engine: the compose file's name is taken"
    );
    docker_ok(&[
        "network",
        "create",
        "--internal",
        "--label",
        TEST_LABEL,
        &network,
    ]);
    let _made = Made {
        network: &network,
        down: &compose,
    };

    let out = compose(&["up", "-d"]);
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "up without ~/.operator: {said}");
    assert!(
        said.contains("bind source path does not exist")
            && said.contains(&format!("{}", home.join(".operator").display())),
        "the engine names the missing folder: {said}"
    );
    assert!(
        !home.join(".operator").exists(),
        "the failed up made the database folder"
    );
    let containers = docker_ok(&[
        "ps",
        "-a",
        "-q",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
    ]);
    assert!(containers.is_empty(), "the failed up left {containers}");
    succeeded(&compose(&["down", "--timeout", "1"]), "docker-compose down");
    assert!(
        docker(&["network", "inspect", &network]).status.success(),
        "down never removes the stack's (external) network"
    );
}
