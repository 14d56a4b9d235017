//! The agent's authorising Docker API proxy against the real engine, driven by the real
//! docker CLI (`DOCKER_HOST=unix://<the proxy's socket>`), as a toolbox drives it. Every
//! assertion that matters is on the world (container states read from the engine itself),
//! not only on what the CLI printed.
//!
//! Containers are busybox loops labelled as the controller's own (`operator.managed-by`,
//! `operator.cluster`, `operator.service`), one unowned, one standing in for the
//! controller's own container; each test has its own cluster name and removes exactly what
//! it created (a label of its own), also when it panics.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{BUSYBOX_IMAGE, Cleanup, TEST_LABEL, docker, docker_ok, require_docker, unique};
use operator::agent::proxy::{MAX_CONNECTIONS, Proxy, ProxyConfig, ProxyEvent, Registry, SETTLE};
use operator::docker::{LABEL_CLUSTER, LABEL_MANAGED_BY, LABEL_SERVICE, MANAGED_BY_VALUE};
use operator::manifest::{Cluster, SafetyMode};
use operator::tickets::{Journal, Store};
use tokio::sync::mpsc;

/// Bound on one docker CLI call through the proxy.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// Secrets of the `app` container: by name (`DB_PASSWORD` looks secret), by a name the
/// session was given (`APP_SETTING`), by value (inside `CONN`), in a label, and as the
/// password of a URL in a variable and in a label whose names say nothing.
const DB_PASSWORD: &str = "pw-by-name-9f2c1e7a";
const APP_SETTING: &str = "named-by-manifest-41d0";
const IN_VALUE: &str = "value-known-secret-77aa";
const LABEL_SECRET: &str = "label-secret-5be3c2d1";
const URL_PASSWORD: &str = "url-password-3e8a61";
const LABEL_URL_PASSWORD: &str = "label-url-password-c07b";
const SECRETS: [&str; 6] = [
    DB_PASSWORD,
    APP_SETTING,
    IN_VALUE,
    LABEL_SECRET,
    URL_PASSWORD,
    LABEL_URL_PASSWORD,
];

/// Runs until stopped; exits at once on SIGTERM.
const LOOP: &str = "trap 'exit 0' TERM; while true; do sleep 1; done";
/// Prints a numbered line every 200 ms (for `logs -f`).
const TICKS: &str =
    "trap 'exit 0' TERM; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done";

/// A temporary folder, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("operator-test-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One test's world: a cluster of its own, the engine, a ticket store, a registry.
struct Bench {
    name: String,
    /// `key=value` carried by everything the test creates.
    label: String,
    cluster: Cluster,
    journal: Journal,
    docker: bollard::Docker,
    registry: Arc<Registry>,
    rt: tokio::runtime::Runtime,
    dir: TempDir,
    // Last: removes the containers and networks once everything else is gone.
    _cleanup: Cleanup,
}

impl Bench {
    /// A cluster `name` with services `m0`, `m1`, `m2` (group `g`, majority), `web` and
    /// `app` (all `<name>-<service>`), on the network `<name>-net`.
    fn new(prefix: &str) -> Bench {
        require_docker();
        let name = unique(prefix);
        let label = format!("operator.test.proxy={name}");
        let cleanup = Cleanup::new(label.clone());
        let dir = TempDir::new(&name);
        let services: String = ["m0", "m1", "m2", "web", "app"]
            .iter()
            .map(|s| {
                format!(
                    "    - name: {name}-{s}\n      image: {BUSYBOX_IMAGE}\n      command: [sh, -c, \"{LOOP}\"]\n"
                )
            })
            .collect();
        let yaml = format!(
            "apiVersion: operator/v1\nkind: Cluster\nmetadata:\n  name: {name}\nspec:\n  network:\n    name: {name}-net\n    external: true\n  services:\n{services}  groups:\n    - name: g\n      members: [{name}-m0, {name}-m1, {name}-m2]\n      quorum: majority\n"
        );
        let manifests = dir.0.join("manifests");
        std::fs::create_dir_all(&manifests).expect("manifest folder");
        std::fs::write(manifests.join("c.yaml"), yaml).expect("write the manifest");
        let desired = operator::manifest::load(&[manifests]).unwrap_or_else(|e| panic!("{e}"));
        let cluster = desired.cluster(&name).expect("the cluster").clone();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let docker = rt
            .block_on(operator::docker::connect(Duration::from_secs(15)))
            .expect("the engine");
        let store = Store::open(&dir.0.join("tickets.db")).expect("a ticket store");
        let journal = Journal::new(Arc::new(store), Arc::new(operator::metrics::Metrics::new()));
        Bench {
            name,
            label,
            cluster,
            journal,
            docker,
            registry: Arc::new(Registry::default()),
            rt,
            dir,
            _cleanup: cleanup,
        }
    }

    /// `<cluster>-<service>`.
    fn n(&self, service: &str) -> String {
        format!("{}-{service}", self.name)
    }

    /// An internal network of the test's own.
    fn network(&self, name: &str) {
        docker_ok(&[
            "network",
            "create",
            "--internal",
            "--label",
            TEST_LABEL,
            "--label",
            &self.label,
            name,
        ]);
    }

    /// Starts `name` running `script`; `service`: labelled as the controller's container of
    /// that service of this cluster.
    fn container(&self, name: &str, service: Option<&str>, extra: &[&str], script: &str) {
        let mut args: Vec<String> = ["run", "-d", "--name", name, "--label", TEST_LABEL]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(["--label".to_string(), self.label.clone()]);
        if let Some(service) = service {
            for label in [
                format!("{LABEL_MANAGED_BY}={MANAGED_BY_VALUE}"),
                format!("{LABEL_CLUSTER}={}", self.name),
                format!("{LABEL_SERVICE}={service}"),
            ] {
                args.extend(["--label".to_string(), label]);
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend([BUSYBOX_IMAGE, "sh", "-c", script].map(str::to_string));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        docker_ok(&args);
    }

    /// An owned container for each of the cluster's members (`m0`..`m2`).
    fn members(&self) {
        for m in ["m0", "m1", "m2"] {
            let name = self.n(m);
            self.container(&name, Some(&name), &["--network", "none"], LOOP);
        }
    }

    /// A proxy for a session in `mode`, on a socket of its own.
    fn session(&self, id: &str, mode: SafetyMode) -> Session {
        let socket = self.dir.0.join(format!("{id}.sock"));
        let (events, received) = mpsc::unbounded_channel();
        let cfg = ProxyConfig {
            session: id.to_string(),
            listen: socket.clone(),
            socket_owner: None,
            engine_socket: engine_socket(),
            docker: self.docker.clone(),
            mode,
            cluster: self.cluster.clone(),
            journal: self.journal.clone(),
            secret_names: vec!["APP_SETTING".to_string()],
            secret_values: vec![IN_VALUE.to_string(), "short".to_string()],
            protected: vec![self.n("ctl")],
            registry: self.registry.clone(),
            events,
        };
        let proxy = self
            .rt
            .block_on(Proxy::start(cfg))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(proxy.socket(), socket);
        Session {
            proxy: Some(proxy),
            received,
            seen: Vec::new(),
            socket,
        }
    }

    /// Stops a session's proxy; returns its mutations and every event it sent.
    fn stop(&self, mut session: Session) -> (Vec<String>, Vec<ProxyEvent>) {
        let proxy = session.proxy.take().expect("a running proxy");
        let mutations = proxy.mutations().into_iter().map(|(_, m)| m).collect();
        self.rt.block_on(proxy.stop());
        assert!(!session.socket.exists(), "stop removes the socket");
        (mutations, session.events())
    }
}

/// The engine's socket (`DOCKER_HOST` when it names one, else the default).
fn engine_socket() -> PathBuf {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"))
}

struct Session {
    proxy: Option<Proxy>,
    received: mpsc::UnboundedReceiver<ProxyEvent>,
    seen: Vec<ProxyEvent>,
    socket: PathBuf,
}

impl Session {
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("DOCKER_HOST", format!("unix://{}", self.socket.display()))
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY");
        cmd
    }

    /// `docker ARGS` through the proxy.
    fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = self.command("docker");
        cmd.args(args);
        common::run_with_timeout(cmd, CLI_TIMEOUT)
    }

    /// A shell line through the proxy (`docker stop a; docker stop b`).
    fn sh(&self, line: &str) -> Output {
        let mut cmd = self.command("sh");
        cmd.args(["-c", line]);
        common::run_with_timeout(cmd, CLI_TIMEOUT)
    }

    /// Every event so far (they are sent before the answer, so a finished command's are in).
    fn events(&mut self) -> Vec<ProxyEvent> {
        while let Ok(e) = self.received.try_recv() {
            self.seen.push(e);
        }
        self.seen.clone()
    }
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn ok(o: &Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        o.status,
        out(o),
        err(o)
    );
    out(o)
}

/// Asserts the CLI printed the proxy's refusal as the engine's error, and failed.
#[track_caller]
fn refused(o: &Output, what: &str, why: &str) {
    let stderr = err(o);
    assert!(
        !o.status.success(),
        "{what} should have been refused:\nstdout: {}\nstderr: {stderr}",
        out(o)
    );
    assert!(
        stderr.contains("Error response from daemon: refused by operator: "),
        "{what}: {stderr}"
    );
    assert!(stderr.contains(why), "{what}: expected {why:?} in {stderr}");
}

/// `running`, `exited`, `paused`... as the engine says, or `missing`.
fn state(name: &str) -> String {
    let o = docker(&["inspect", "-f", "{{.State.Status}}", name]);
    if o.status.success() {
        out(&o).trim().to_string()
    } else {
        "missing".to_string()
    }
}

/// `StartedAt`: changes with every start, so "nothing changed" can be checked.
fn started_at(name: &str) -> String {
    docker_ok(&["inspect", "-f", "{{.State.StartedAt}}", name])
}

#[track_caller]
fn assert_no_secret(text: &str, what: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{what} shows a secret: {text}");
    }
}

/// How many execs the engine has for `name` (created, running or done).
fn exec_ids(name: &str) -> usize {
    docker_ok(&["inspect", "-f", "{{len .ExecIDs}}", name])
        .parse()
        .unwrap_or_else(|e| panic!("the exec ids of {name}: {e}"))
}

/// The state of `name`'s main process as its kernel says it (`S (sleeping)`, `T (stopped)`):
/// a container whose process is stopped still reads as running in the engine.
fn process_state(name: &str) -> String {
    let pid = docker_ok(&["inspect", "-f", "{{.State.Pid}}", name]);
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("the status of {name}'s process {pid}: {e}"))
        .lines()
        .find_map(|l| l.strip_prefix("State:"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The events of requests whose path contains `part`.
fn about<'a>(events: &'a [ProxyEvent], method: &str, part: &str) -> Vec<&'a ProxyEvent> {
    events
        .iter()
        .filter(|e| e.method == method && e.path.contains(part))
        .collect()
}

#[test]
fn execute_lets_owned_changes_through_masks_secrets_and_refuses_the_rest() {
    let b = Bench::new("proxy-exec");
    let (web, app, stranger, ctl) = (b.n("web"), b.n("app"), b.n("stranger"), b.n("ctl"));
    let (net, other) = (b.n("net"), b.n("other"));
    b.network(&net);
    b.network(&other);
    b.container(&web, Some(&web), &["--network", &net], LOOP);
    b.container(
        &app,
        Some(&app),
        &[
            "--network",
            "none",
            "-e",
            &format!("DB_PASSWORD={DB_PASSWORD}"),
            "-e",
            &format!("APP_SETTING={APP_SETTING}"),
            "-e",
            "GREETING=hello",
            "-e",
            &format!("CONN=postgres://u:{IN_VALUE}@db/x"),
            "-e",
            &format!("CACHE=redis://cache:{URL_PASSWORD}@cache:6379/0"),
            "--label",
            &format!("api_token={LABEL_SECRET}"),
            "--label",
            &format!("backup=s3://key:{LABEL_URL_PASSWORD}@bucket/app"),
        ],
        TICKS,
    );
    b.container(&stranger, None, &["--network", "none"], LOOP);
    b.container(&ctl, None, &["--network", "none"], LOOP);
    let s = b.session("s-exec", SafetyMode::Execute);

    // Reads: version (after the CLI's ping), ps, inspect: secrets masked, never shown.
    let version = ok(
        &s.cli(&["version", "--format", "{{.Server.APIVersion}}"]),
        "version",
    );
    assert_eq!(version.trim(), "1.41");
    let ps = ok(
        &s.cli(&[
            "ps",
            "--no-trunc",
            "--filter",
            &format!("label={}", b.label),
            "--format",
            "{{.Names}} {{.Labels}}",
        ]),
        "ps",
    );
    for name in [&web, &app, &stranger, &ctl] {
        assert!(ps.contains(name.as_str()), "{name} in {ps}");
    }
    assert!(ps.contains("api_token=[MASKED]"), "{ps}");
    assert!(ps.contains("backup=s3://key:[MASKED]@bucket/app"), "{ps}");
    assert_no_secret(&ps, "ps");
    let inspect = ok(&s.cli(&["inspect", &app]), "inspect");
    for masked in [
        "DB_PASSWORD=[MASKED]",
        "APP_SETTING=[MASKED]",
        "CONN=postgres://u:[MASKED]@db/x",
        "CACHE=redis://cache:[MASKED]@cache:6379/0",
        "GREETING=hello",
    ] {
        assert!(inspect.contains(masked), "{masked} in {inspect}");
    }
    assert_no_secret(&inspect, "inspect");
    // Templates run on the client, over the masked answer: none can put a secret together.
    for template in [
        "{{index .Config.Env 0}}",
        "{{json .Config.Env}}",
        "{{json .Config.Labels}}",
        "{{range .Config.Env}}{{slice . 0 1}} {{slice . 1}}\n{{end}}",
        "{{range .Config.Env}}{{printf \"%x\" .}}\n{{end}}",
    ] {
        let shown = ok(&s.cli(&["inspect", "-f", template, &app]), template);
        let joined: String = shown
            .lines()
            .map(|l| l.replacen(' ', "", 1))
            .collect::<Vec<_>>()
            .join("\n");
        assert_no_secret(&shown, template);
        assert_no_secret(&joined, template);
        for secret in SECRETS {
            assert!(
                !shown.contains(&hex::encode(secret)),
                "{template} shows a secret in hex: {shown}"
            );
        }
    }
    // Whichever entry comes first (the engine keeps no order), it is masked as in the list.
    let first = ok(
        &s.cli(&["inspect", "-f", "{{index .Config.Env 0}}", &app]),
        "env 0",
    );
    let all = ok(
        &s.cli(&["inspect", "-f", "{{json .Config.Env}}", &app]),
        "env",
    );
    assert!(
        all.contains(&format!("\"{}\"", first.trim())),
        "{first} in {all}"
    );
    // Events carry the labels: masked one event at a time. The engine keeps only its last
    // 256 events, which the other tests running beside this one fill within seconds: the
    // app is given a fresh one (a signal its process ignores, sent past the proxy), looked
    // for from just before it.
    let since = (std::time::SystemTime::now() - Duration::from_secs(2))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let signalled = common::docker(&["kill", "--signal", "SIGWINCH", &app]);
    assert!(signalled.status.success(), "{signalled:?}");
    let events = ok(
        &s.cli(&[
            "events",
            "--since",
            &since,
            "--until",
            "0s",
            "--filter",
            &format!("container={app}"),
            "--format",
            "{{json .Actor.Attributes}}",
        ]),
        "events",
    );
    assert!(
        events.contains("s3://key:[MASKED]@bucket/app") && events.contains("[MASKED]"),
        "{events}"
    );
    assert_no_secret(&events, "events");
    ok(&s.cli(&["network", "inspect", &net]), "network inspect");
    ok(&s.cli(&["network", "ls"]), "network ls");
    ok(&s.cli(&["top", &web]), "top");
    ok(&s.cli(&["top", &web, "-ef"]), "top -ef");
    refused(&s.cli(&["top", &web, "aux", "e"]), "top aux e", "ps_args");

    // logs -f streams: lines printed after it began arrive while it runs.
    let before = ok(&s.cli(&["logs", &app]), "logs");
    let last = |text: &str| -> u64 {
        text.lines()
            .filter_map(|l| l.strip_prefix("tick ")?.trim().parse().ok())
            .max()
            .unwrap_or(0)
    };
    let mut follow = s.command("timeout");
    follow.args(["3", "docker", "logs", "-f", &app]);
    let followed = common::run_with_timeout(follow, CLI_TIMEOUT);
    assert_eq!(
        followed.status.code(),
        Some(124),
        "logs -f is a stream that `timeout` ends: {}",
        err(&followed)
    );
    assert!(
        last(&out(&followed)) >= last(&before) + 5,
        "logs -f followed: before {}, followed to {}",
        last(&before),
        last(&out(&followed))
    );

    // Exec into an owned container: the real CLI, a hijacked connection, its output.
    let hi = s.cli(&["exec", &web, "echo", "hi"]);
    assert_eq!(ok(&hi, "exec echo hi"), "hi\n");
    let stdin = {
        let mut cmd = s.command("sh");
        cmd.args(["-c", &format!("echo from-stdin | docker exec -i {web} cat")]);
        common::run_with_timeout(cmd, CLI_TIMEOUT)
    };
    assert_eq!(ok(&stdin, "exec -i cat"), "from-stdin\n");
    let code = s.cli(&["exec", &web, "sh", "-c", "exit 3"]);
    assert_eq!(
        code.status.code(),
        Some(3),
        "the exec's exit code comes back"
    );
    refused(
        &s.cli(&["exec", &app, "env"]),
        "exec into the container with secrets",
        "would expose its secret environment",
    );
    // A URL with a password is a secret, whatever the variable is called.
    let url_only = b.n("url-only");
    b.container(
        &url_only,
        Some(&url_only),
        &[
            "--network",
            "none",
            "-e",
            &format!("UPSTREAM=redis://:{URL_PASSWORD}@cache:6379"),
        ],
        LOOP,
    );
    refused(
        &s.cli(&["exec", &url_only, "env"]),
        "exec into a container whose environment holds a URL with a password",
        "would expose its secret environment (UPSTREAM)",
    );
    assert_eq!(exec_ids(&url_only), 0, "no exec was created in {url_only}");
    refused(
        &s.cli(&["exec", "--privileged", &web, "true"]),
        "privileged exec",
        "privileged exec is not allowed",
    );

    // Not ours, not a container of the cluster, or the controller itself: refused, and
    // nothing happened to them.
    let stranger_started = started_at(&stranger);
    refused(
        &s.cli(&["stop", &stranger]),
        "stop an unowned container",
        "is not a container of cluster",
    );
    refused(
        &s.cli(&["exec", &stranger, "true"]),
        "exec into an unowned container",
        "is not a container of cluster",
    );
    assert_eq!(state(&stranger), "running");
    assert_eq!(started_at(&stranger), stranger_started);
    refused(
        &s.cli(&["inspect", &ctl]),
        "inspect the controller",
        "the operator's own container",
    );
    refused(
        &s.cli(&["logs", &ctl]),
        "logs of the controller",
        "the operator's own container",
    );
    refused(
        &s.cli(&["stop", &ctl]),
        "stop the controller",
        "the operator's own container",
    );
    assert_eq!(state(&ctl), "running");

    // Outside the list: refused naming the endpoint; nothing created or removed.
    let intruder = b.n("intruder");
    let run = s.cli(&[
        "run",
        "--name",
        &intruder,
        "--label",
        &b.label,
        BUSYBOX_IMAGE,
        "true",
    ]);
    assert!(!run.status.success(), "docker run: {}", err(&run));
    assert!(
        err(&run).contains("refused by operator: POST /containers/create is not allowed"),
        "{}",
        err(&run)
    );
    assert_eq!(state(&intruder), "missing");
    refused(
        &s.cli(&["rm", "-f", &stranger]),
        "rm",
        "DELETE /containers/",
    );
    assert_eq!(state(&stranger), "running");
    refused(
        &s.cli(&["volume", "ls"]),
        "volume ls",
        "GET /volumes is not allowed",
    );
    refused(
        &s.cli(&["images"]),
        "images",
        "GET /images/json is not allowed",
    );
    refused(
        &s.cli(&["system", "df"]),
        "system df",
        "GET /system/df is not allowed",
    );

    // Owned changes go through, and the world changes.
    ok(&s.cli(&["stop", &web]), "stop web");
    assert_eq!(state(&web), "exited");
    ok(&s.cli(&["start", &web]), "start web");
    assert_eq!(state(&web), "running");
    ok(&s.cli(&["pause", &web]), "pause web");
    assert_eq!(state(&web), "paused");
    ok(&s.cli(&["unpause", &web]), "unpause web");
    assert_eq!(state(&web), "running");

    // Networks: the cluster's only.
    ok(&s.cli(&["network", "disconnect", &net, &web]), "disconnect");
    let networks = || docker_ok(&["inspect", "-f", "{{json .NetworkSettings.Networks}}", &web]);
    assert!(!networks().contains(net.as_str()), "{}", networks());
    ok(&s.cli(&["network", "connect", &net, &web]), "connect");
    assert!(networks().contains(net.as_str()), "{}", networks());
    refused(
        &s.cli(&["network", "connect", &other, &web]),
        "connect to another network",
        "is not a network of cluster",
    );
    assert!(!networks().contains(other.as_str()), "{}", networks());
    refused(
        &s.cli(&["network", "connect", &net, &stranger]),
        "connect an unowned container",
        "is not a container of cluster",
    );

    // The raw API, as curl speaks it on the socket: an old API version (which reads a
    // start's body as a new host configuration) is refused, and a start's body never
    // reaches the engine.
    ok(&s.cli(&["stop", &web]), "stop web again");
    let curl = |version: &str| {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "--unix-socket",
            &s.socket.display().to_string(),
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"Privileged":true,"Binds":["/:/host"],"PidMode":"host"}"#,
            "-w",
            "\n%{http_code}",
            &format!("http://docker/{version}/containers/{web}/start"),
        ]);
        common::run_with_timeout(cmd, CLI_TIMEOUT)
    };
    let old = ok(&curl("v1.23"), "curl v1.23");
    assert!(
        old.contains("API version 1.23 is not accepted") && old.ends_with("403"),
        "{old}"
    );
    assert_eq!(state(&web), "exited");
    let started = ok(&curl("v1.41"), "curl v1.41");
    assert!(started.ends_with("204"), "{started}");
    assert_eq!(state(&web), "running");
    let host = docker_ok(&[
        "inspect",
        "-f",
        "{{.HostConfig.Privileged}} {{.HostConfig.Binds}} {{.HostConfig.PidMode}}",
        &web,
    ]);
    assert_eq!(
        host, "false []",
        "the start's body did not reach the engine"
    );

    // An exec where the engine's socket is mounted would answer to no proxy.
    let sock = b.n("sock");
    b.container(
        &sock,
        Some(&sock),
        &[
            "--network",
            "none",
            "-v",
            "/var/run/docker.sock:/var/run/docker.sock:ro",
        ],
        LOOP,
    );
    refused(
        &s.cli(&["exec", &sock, "true"]),
        "exec where the engine's socket is mounted",
        "would reach past the container: it mounts /var/run/docker.sock",
    );

    // A target that does not exist is the engine's 404, not a refusal.
    let missing = s.cli(&["stop", &b.n("nobody")]);
    assert!(!missing.status.success());
    assert!(
        err(&missing).contains(&format!("No such container: {}", b.n("nobody"))),
        "{}",
        err(&missing)
    );

    let (mutations, events) = b.stop(s);
    assert_eq!(
        mutations,
        [
            format!("exec in {web}"),
            format!("exec in {web}"),
            format!("exec in {web}"),
            format!("stop {web}"),
            format!("start {web}"),
            format!("pause {web}"),
            format!("unpause {web}"),
            format!("disconnect {web} from a network"),
            format!("connect {web} to a network"),
            format!("stop {web}"),
            format!("start {web}"),
        ],
        "only accepted changes are credited"
    );

    // Every request made an event, with its decision.
    for e in &events {
        assert_eq!(e.allowed, e.status.is_some(), "{e:?}");
        assert!(!e.reason.is_empty(), "{e:?}");
    }
    let stop_stranger = about(&events, "POST", &format!("/containers/{stranger}/stop"));
    assert_eq!(stop_stranger.len(), 1, "{events:#?}");
    assert!(!stop_stranger[0].allowed && stop_stranger[0].mutation);
    assert!(stop_stranger[0].reason.starts_with("refused by operator: "));
    let stop_web = about(&events, "POST", &format!("/containers/{web}/stop"));
    assert_eq!(stop_web.len(), 2, "{stop_web:#?}");
    for e in stop_web {
        assert_eq!(e.status, Some(204));
        assert!(e.mutation);
        assert!(
            e.target
                .as_deref()
                .is_some_and(|t| t.starts_with(&format!("{web} (")))
        );
    }
    let expected: [(&str, String, usize); 12] = [
        ("HEAD", "/_ping".into(), 1),
        ("GET", "/containers/json".into(), 1),
        ("GET", format!("/containers/{app}/json"), 1),
        ("POST", format!("/containers/{web}/exec"), 3),
        ("POST", "/exec/".into(), 3),
        ("GET", "/exec/".into(), 3),
        ("POST", "/containers/create".into(), 1),
        ("DELETE", format!("/containers/{stranger}"), 1),
        ("GET", "/volumes".into(), 1),
        ("GET", "/images/json".into(), 1),
        ("POST", format!("/networks/{net}/disconnect"), 1),
        ("POST", format!("/networks/{other}/connect"), 1),
    ];
    for (method, part, at_least) in expected {
        let found = about(&events, method, &part).len();
        assert!(
            found >= at_least,
            "{method} {part}: {found} events of {events:#?}"
        );
    }
    // The CLI names the container by the id it inspected: the event says which it is.
    let logs = events
        .iter()
        .filter(|e| e.path.contains("/logs?"))
        .filter(|e| e.target.as_deref().is_some_and(|t| t.starts_with(&app)))
        .count();
    assert_eq!(logs, 2, "logs and logs -f of {app}: {events:#?}");
    let exec_starts = about(&events, "POST", "/exec/");
    assert!(
        exec_starts
            .iter()
            .all(|e| e.status == Some(101) || e.path.contains("/resize")),
        "{exec_starts:#?}"
    );
    for e in &events {
        assert_no_secret(&format!("{e:?}"), "an event");
    }
}

#[test]
fn observe_reads_and_changes_nothing() {
    let b = Bench::new("proxy-observe");
    b.members();
    let web = b.n("web");
    b.container(&web, Some(&web), &["--network", "none"], LOOP);
    let before: Vec<(String, String)> = ["m0", "m1", "m2", "web"]
        .iter()
        .map(|m| (b.n(m), started_at(&b.n(m))))
        .collect();
    let s = b.session("s-observe", SafetyMode::Observe);

    let ps = ok(
        &s.cli(&["ps", "--filter", &format!("label={}", b.label)]),
        "ps",
    );
    assert!(ps.contains(web.as_str()), "{ps}");
    ok(&s.cli(&["inspect", &web]), "inspect");
    ok(&s.cli(&["logs", &web]), "logs");
    ok(&s.cli(&["stats", "--no-stream", &web]), "stats");

    let m0 = b.n("m0");
    let m1 = b.n("m1");
    for args in [
        vec!["stop", web.as_str()],
        vec!["kill", &web],
        vec!["restart", &web],
        vec!["pause", &web],
        vec!["update", "--memory", "64m", &web],
        vec!["exec", &web, "true"],
        vec!["stop", &m0],
        vec!["kill", &m1],
        vec!["exec", &m1, "true"],
    ] {
        refused(
            &s.cli(&args),
            &args.join(" "),
            "observe mode: only reads reach the engine",
        );
    }
    // What no mode may do is refused for that, in observe too.
    refused(
        &s.cli(&["rename", &web, "renamed"]),
        "rename",
        "rename is not allowed",
    );
    refused(
        &s.cli(&["kill", "-s", "STOP", &m1]),
        "kill -s STOP",
        "only a signal that ends the process may be sent",
    );
    let stop_both = s.sh(&format!("docker stop {m0}; docker stop {m1}"));
    assert!(!stop_both.status.success());
    assert_eq!(
        err(&stop_both).matches("observe mode").count(),
        2,
        "{}",
        err(&stop_both)
    );

    for (name, started) in &before {
        assert_eq!(state(name), "running", "{name}");
        assert_eq!(&started_at(name), started, "{name} was not restarted");
    }
    assert_eq!(state("renamed"), "missing");
    let (mutations, events) = b.stop(s);
    assert!(mutations.is_empty(), "{mutations:?}");
    let changes: Vec<&ProxyEvent> = events.iter().filter(|e| e.mutation).collect();
    assert!(changes.len() >= 11, "{changes:#?}");
    assert!(changes.iter().all(|e| !e.allowed && e.status.is_none()));
    assert!(
        events.iter().filter(|e| !e.mutation).all(|e| e.allowed),
        "{events:#?}"
    );
}

#[test]
fn the_quorum_gate_judges_each_change_in_turn_across_sessions() {
    let b = Bench::new("proxy-gate");
    b.members();
    let (m0, m1, m2) = (b.n("m0"), b.n("m1"), b.n("m2"));

    // One member down by hand: stopping a second would leave 1 of 3.
    docker_ok(&["stop", &m2]);
    let a = b.session("s-a", SafetyMode::Execute);
    refused(
        &a.cli(&["stop", &m1]),
        "stop a second member",
        "would leave g with 1 of 3 live; needs 2",
    );
    refused(
        &a.cli(&["kill", &m1]),
        "kill a second member",
        "would leave g with 1 of 3 live",
    );
    refused(
        &a.cli(&["pause", &m1]),
        "pause a second member",
        "would leave g with 1 of 3 live",
    );
    assert_eq!(state(&m1), "running");
    docker_ok(&["start", &m2]);

    // No gate can judge an exec into a member (what it starts acts after the gate looked):
    // refused, with every member up, and nothing is under way.
    refused(
        &a.cli(&["exec", &m0, "true"]),
        "exec into a member",
        &format!(
            "exec into {m0}, a member of quorum group g, could act on it after the quorum gate looked"
        ),
    );
    assert_eq!(exec_ids(&m0), 0);
    assert!(b.registry.under_way(&b.name).is_empty());
    let (_, events) = b.stop(a);
    assert!(
        about(&events, "POST", &format!("/containers/{m1}/stop"))
            .iter()
            .all(|e| !e.allowed)
    );

    // A second session of the same dispatcher (one registry): its stop goes through; the
    // member stays under way after it is started again, until it has run for SETTLE.
    let s = b.session("s-b", SafetyMode::Approve);
    ok(&s.cli(&["stop", &m1]), "stop one member");
    assert_eq!(state(&m1), "exited");
    refused(
        &s.cli(&["stop", &m0]),
        "stop another",
        &format!("g already has {m1} under way"),
    );
    ok(&s.cli(&["start", &m1]), "start is not gated");
    assert_eq!(state(&m1), "running");
    let started = Instant::now();
    refused(
        &s.cli(&["restart", &m2]),
        "restart another",
        &format!("g already has {m1} under way"),
    );
    assert_eq!(state(&m0), "running");
    assert_eq!(state(&m2), "running");

    // Once it has run for SETTLE: two stops in one shell line are judged in turn, each
    // seeing the other's effect.
    std::thread::sleep((SETTLE + Duration::from_secs(1)).saturating_sub(started.elapsed()));
    let line = s.sh(&format!("docker stop {m0}; docker stop {m2}"));
    assert!(
        !line.status.success(),
        "the second stop is refused: {}",
        err(&line)
    );
    assert_eq!(out(&line).trim(), m0, "the first stop went through");
    assert!(
        err(&line).contains("refused by operator: "),
        "{}",
        err(&line)
    );
    assert_eq!(state(&m0), "exited");
    assert_eq!(state(&m2), "running");
    assert_eq!(state(&m1), "running");
    let (mutations, _) = b.stop(s);
    assert_eq!(
        mutations,
        [
            format!("stop {m1}"),
            format!("start {m1}"),
            format!("stop {m0}")
        ]
    );
}

#[test]
fn a_stopped_proxy_ends_its_streams_and_a_stale_socket_is_replaced() {
    let b = Bench::new("proxy-stop");
    let web = b.n("web");
    b.container(&web, Some(&web), &["--network", "none"], TICKS);
    // A stale file where the socket goes is replaced.
    std::fs::write(b.dir.0.join("s-stop.sock"), "stale").expect("a stale file");
    let s = b.session("s-stop", SafetyMode::Execute);
    let mut follow = s.command("docker");
    follow
        .args(["logs", "-f", &web])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = follow.spawn().expect("docker logs -f");
    let mut events = s.command("docker");
    events
        .args(["events"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut events = events.spawn().expect("docker events");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        child.try_wait().expect("wait").is_none(),
        "logs -f still streams"
    );
    assert!(
        events.try_wait().expect("wait").is_none(),
        "events still streams"
    );
    let socket: PathBuf = s.socket.clone();
    b.stop(s);
    assert!(!Path::new(&socket).exists());
    let deadline = Instant::now() + Duration::from_secs(10);
    let ended = |c: &mut std::process::Child| loop {
        if c.try_wait().expect("wait").is_some() {
            return true;
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            let _ = c.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(ended(&mut child), "logs -f ended with the proxy");
    assert!(ended(&mut events), "events ended with the proxy");
}

#[test]
fn a_change_its_client_abandons_still_holds_the_turn_and_is_recorded() {
    let b = Bench::new("proxy-abandon");
    let (m0, m1, m2) = (b.n("m0"), b.n("m1"), b.n("m2"));
    // m0 ignores SIGTERM (a shell as PID 1 without a trap): a stop takes its whole timeout.
    b.container(
        &m0,
        Some(&m0),
        &["--network", "none"],
        "while true; do sleep 1; done",
    );
    for m in [&m1, &m2] {
        b.container(m, Some(m), &["--network", "none"], LOOP);
    }
    let s = b.session("s-abandon", SafetyMode::Execute);
    // The CLI is killed after 1 s; the engine goes on stopping m0 for 4 s more.
    let mut abandoned = s.command("timeout");
    abandoned.args(["1", "docker", "stop", "-t", "5", &m0]);
    let abandoned = common::run_with_timeout(abandoned, CLI_TIMEOUT);
    assert_eq!(abandoned.status.code(), Some(124), "{}", err(&abandoned));
    // The next change waits for that one's answer, then sees m0 under way.
    refused(
        &s.cli(&["stop", &m1]),
        "stop while an abandoned stop is under way",
        &format!("g already has {m0} under way"),
    );
    assert_eq!(state(&m0), "exited");
    assert_eq!(state(&m1), "running");
    let (mutations, events) = b.stop(s);
    assert_eq!(
        mutations,
        [format!("stop {m0}")],
        "credited though nobody read the answer"
    );
    let stops = about(&events, "POST", &format!("/containers/{m0}/stop"));
    assert_eq!(stops.len(), 1, "{events:#?}");
    assert_eq!(stops[0].status, Some(204));
}

#[test]
fn what_no_gate_can_judge_is_refused_with_every_member_up() {
    let b = Bench::new("proxy-nogate");
    b.members();
    let (m0, m1, m2) = (b.n("m0"), b.n("m1"), b.n("m2"));
    let (web, net) = (b.n("web"), b.n("net"));
    b.network(&net);
    b.container(&web, Some(&web), &["--network", &net], LOOP);
    let before: Vec<(String, String)> = [&m0, &m1, &m2, &web]
        .iter()
        .map(|m| (m.to_string(), started_at(m)))
        .collect();

    for (id, mode) in [
        ("s-nogate-a", SafetyMode::Approve),
        ("s-nogate-x", SafetyMode::Execute),
    ] {
        let s = b.session(id, mode);
        // What an exec starts outlives the session and acts after the gate looked.
        refused(
            &s.cli(&["exec", "-d", &m1, "sh", "-c", "sleep 30; kill 1"]),
            "exec -d into a member",
            &format!(
                "exec into {m1}, a member of quorum group g, could act on it after the quorum \
                 gate looked; use logs, inspect and the typed tools"
            ),
        );
        refused(
            &s.cli(&["exec", &m2, "true"]),
            "exec into a member",
            &format!("exec into {m2}, a member of quorum group g"),
        );
        // A member's resources are the manifest's: a tiny CPU quota hobbles it while it
        // still reads as running.
        refused(
            &s.cli(&["update", "--cpus", "0.01", &m1]),
            "update a member",
            &format!("update of {m1}, a member of quorum group g, is not allowed"),
        );
        // Only a signal that ends the process: a STOPped container still reads as running.
        for signal in ["STOP", "SIGTSTP", "cont", "USR1", "HUP", "19"] {
            for target in [&m0, &web] {
                refused(
                    &s.cli(&["kill", "-s", signal, target]),
                    &format!("kill -s {signal} {target}"),
                    "only a signal that ends the process may be sent",
                );
            }
        }
        // A renamed container of a service makes the controller create a second one.
        for target in [&m2, &web] {
            refused(
                &s.cli(&["rename", target, &format!("{target}-x")]),
                &format!("rename {target}"),
                "rename is not allowed",
            );
        }
        let (mutations, events) = b.stop(s);
        assert!(mutations.is_empty(), "{mode}: {mutations:?}");
        assert!(
            events.iter().filter(|e| e.mutation).all(|e| !e.allowed),
            "{mode}: {events:#?}"
        );
    }
    for (name, started) in &before {
        assert_eq!(state(name), "running", "{name}");
        assert_eq!(&started_at(name), started, "{name} was not restarted");
        let process = process_state(name);
        assert!(!process.starts_with('T'), "{name}'s process is {process}");
        assert_eq!(exec_ids(name), 0, "no exec was created in {name}");
        assert_eq!(state(&format!("{name}-x")), "missing");
    }
    assert_eq!(
        docker_ok(&["inspect", "-f", "{{.HostConfig.NanoCpus}}", &m1]),
        "0"
    );

    // The other containers: an update, a kill that ends the process; a connect forwards the
    // container alone, so it cannot take a member's name on the cluster's network.
    let s = b.session("s-nogate-ok", SafetyMode::Execute);
    ok(
        &s.cli(&["update", "--memory", "64m", "--memory-swap", "64m", &web]),
        "update web",
    );
    assert_eq!(
        docker_ok(&["inspect", "-f", "{{.HostConfig.Memory}}", &web]),
        (64u64 << 20).to_string()
    );
    ok(&s.cli(&["network", "disconnect", &net, &web]), "disconnect");
    ok(
        &s.cli(&[
            "network", "connect", "--alias", &m1, "--alias", "shadow", &net, &web,
        ]),
        "connect with aliases",
    );
    let aliases = docker_ok(&[
        "inspect",
        "-f",
        &format!("{{{{json (index .NetworkSettings.Networks \"{net}\").Aliases}}}}"),
        &web,
    ]);
    assert!(
        !aliases.contains("shadow") && !aliases.contains(m1.as_str()),
        "the aliases reached the engine: {aliases}"
    );
    ok(&s.cli(&["kill", "-s", "sigterm", &web]), "kill -s sigterm");
    // Its trap runs once the current `sleep 1` is over.
    let deadline = Instant::now() + Duration::from_secs(10);
    while state(&web) != "exited" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(state(&web), "exited");
    let (mutations, _) = b.stop(s);
    assert_eq!(
        mutations,
        [
            format!("update {web}"),
            format!("disconnect {web} from a network"),
            format!("connect {web} to a network"),
            format!("kill {web}"),
        ]
    );
}

#[test]
fn an_exec_is_refused_where_it_would_share_the_host_s_or_another_container_s_namespaces() {
    let b = Bench::new("proxy-reach");
    let web = b.n("web");
    b.container(
        &web,
        Some(&web),
        &["--network", "none", "--ipc", "shareable"],
        LOOP,
    );
    let s = b.session("s-reach", SafetyMode::Execute);
    assert_eq!(
        ok(&s.cli(&["exec", &web, "echo", "hi"]), "exec web"),
        "hi\n"
    );
    let of_web = format!("container:{web}");
    for (service, extra, why) in [
        (
            "hostnet",
            vec!["--network", "host"],
            "it shares the host's network namespace (network host)".to_string(),
        ),
        (
            "sharenet",
            vec!["--network", of_web.as_str()],
            "it shares another container's network namespace (network container:".to_string(),
        ),
        (
            "hostpid",
            vec!["--network", "none", "--pid", "host"],
            "it shares the host's pid namespace (pid host)".to_string(),
        ),
        (
            "sharepid",
            vec!["--network", "none", "--pid", of_web.as_str()],
            "it shares another container's pid namespace (pid container:".to_string(),
        ),
        (
            "hostipc",
            vec!["--network", "none", "--ipc", "host"],
            "it shares the host's ipc namespace (ipc host)".to_string(),
        ),
        (
            "shareipc",
            vec!["--network", "none", "--ipc", of_web.as_str()],
            "it shares another container's ipc namespace (ipc container:".to_string(),
        ),
    ] {
        let name = b.n(service);
        b.container(&name, Some(&name), &extra, LOOP);
        refused(
            &s.cli(&["exec", &name, "true"]),
            &format!("exec into {service}"),
            &format!("exec into {name} would reach past the container: {why}"),
        );
        assert_eq!(exec_ids(&name), 0, "no exec was created in {name}");
    }
    let (mutations, _) = b.stop(s);
    assert_eq!(mutations, [format!("exec in {web}")]);
}

#[test]
fn a_stop_waits_at_most_a_minute_whatever_t_asks() {
    let b = Bench::new("proxy-wait");
    let web = b.n("web");
    // A shell as PID 1 without a trap ignores SIGTERM: a stop waits all it may, then kills.
    b.container(
        &web,
        Some(&web),
        &["--network", "none"],
        "while true; do sleep 1; done",
    );
    let s = b.session("s-wait", SafetyMode::Execute);
    // Bounded well above the minute the proxy allows, far below the hour asked for.
    let mut stop = s.command("docker");
    stop.args(["stop", "-t", "3600", &web]);
    let stopped = common::run_with_timeout(stop, Duration::from_secs(150));
    ok(&stopped, "stop -t 3600");
    assert_eq!(state(&web), "exited");
    assert_eq!(
        docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", &web]),
        "137",
        "killed once the capped wait was over"
    );
    let (mutations, _) = b.stop(s);
    assert_eq!(mutations, [format!("stop {web}")]);
}

/// Whether the proxy closed a client connection (set non-blocking).
fn closed_by_proxy(c: &UnixStream) -> bool {
    let mut byte = [0u8; 1];
    match (&*c).read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

#[test]
fn a_session_holds_at_most_64_connections_and_more_are_closed_as_they_come() {
    let b = Bench::new("proxy-conns");
    let mut s = b.session("s-conns", SafetyMode::Observe);
    ok(&s.cli(&["version"]), "version");
    // Idle connections, as a loop opening them would leave them.
    let opened = 200;
    let held: Vec<UnixStream> = (0..opened)
        .map(|_| {
            let c = UnixStream::connect(&s.socket).expect("connect to the proxy");
            c.set_nonblocking(true).expect("non-blocking");
            c
        })
        .collect();
    let closed = |held: &[UnixStream]| held.iter().filter(|c| closed_by_proxy(c)).count();
    let deadline = Instant::now() + Duration::from_secs(20);
    while closed(&held) < opened - MAX_CONNECTIONS && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        closed(&held),
        opened - MAX_CONNECTIONS,
        "all but {MAX_CONNECTIONS} were closed as they came"
    );
    // Full: a command finds no room until connections end.
    let full = s.cli(&["version"]);
    assert!(!full.status.success(), "{}", out(&full));
    assert_eq!(
        closed(&held),
        opened - MAX_CONNECTIONS,
        "the others stay open"
    );
    let events = s.events();
    let too_many: Vec<&ProxyEvent> = events
        .iter()
        .filter(|e| e.reason.contains("too many connections"))
        .collect();
    assert!(!too_many.is_empty(), "{events:#?}");
    assert!(
        too_many
            .iter()
            .all(|e| !e.allowed && !e.mutation && e.status.is_none()),
        "{too_many:#?}"
    );
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let version = s.cli(&["version"]);
        if version.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no room after the idle connections closed: {}",
            err(&version)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    b.stop(s);
}

/// A raw request through the proxy: `head` (without its blank line), then `body`; the whole
/// answer, until the proxy closes the connection (bounded by `timeout`).
fn raw(socket: &Path, head: &str, body: &[u8], timeout: Duration) -> std::io::Result<String> {
    let mut c = UnixStream::connect(socket)?;
    c.set_read_timeout(Some(timeout))?;
    let mut request = format!("{head}\r\n\r\n").into_bytes();
    request.extend_from_slice(body);
    // The proxy may answer and close before it has read everything: its answer still waits
    // to be read.
    match c.write_all(&request) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        written => written?,
    }
    let mut answer = Vec::new();
    c.read_to_end(&mut answer)?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

#[test]
fn a_refused_request_is_answered_on_its_head_and_a_checked_body_is_at_most_64_kib() {
    let b = Bench::new("proxy-body");
    let web = b.n("web");
    b.container(&web, Some(&web), &["--network", "none"], LOOP);
    let mut s = b.session("s-body", SafetyMode::Execute);

    // 960 KiB announced, 1 KiB sent: the refusal comes on the head, without waiting for the
    // rest (or keeping any of it), and the connection closes.
    let answer = raw(
        &s.socket,
        &format!(
            "POST /v1.41/containers/create HTTP/1.1\r\nHost: docker\r\nContent-Type: \
             application/json\r\nContent-Length: {}",
            960 << 10
        ),
        &[b' '; 1024],
        Duration::from_secs(20),
    )
    .expect("the refusal before the body was sent");
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(
        answer.contains("refused by operator: POST /containers/create is not allowed"),
        "{answer}"
    );

    // A small body, sent whole: read and dropped, so the client reads the refusal.
    let body = b.dir.0.join("small.json");
    std::fs::write(&body, format!("{{\"Image\":\"{}\"}}", " ".repeat(60 << 10))).expect("a body");
    let mut curl = Command::new("curl");
    curl.args([
        "-sS",
        "--unix-socket",
        &s.socket.display().to_string(),
        "-H",
        "Content-Type: application/json",
        "-H",
        "Expect:",
        "--data-binary",
        &format!("@{}", body.display()),
        "-w",
        "\n%{http_code}",
        "http://docker/v1.41/containers/create",
    ]);
    let created = ok(&common::run_with_timeout(curl, CLI_TIMEOUT), "curl create");
    assert!(
        created.contains("refused by operator: POST /containers/create is not allowed")
            && created.ends_with("403"),
        "{created}"
    );

    // A body that is checked (an exec create) is read up to 64 KiB, and no further.
    let exec = |arg_len: usize| {
        let body = serde_json::json!({"Cmd": ["true", "x".repeat(arg_len)]}).to_string();
        raw(
            &s.socket,
            &format!(
                "POST /v1.41/containers/{web}/exec HTTP/1.1\r\nHost: docker\r\nConnection: \
                 close\r\nContent-Type: application/json\r\nContent-Length: {}",
                body.len()
            ),
            body.as_bytes(),
            Duration::from_secs(20),
        )
        .expect("an answer")
    };
    let large = exec(100 << 10);
    assert!(large.starts_with("HTTP/1.1 413"), "{large}");
    assert!(large.contains("larger than 65536 bytes"), "{large}");
    assert_eq!(exec_ids(&web), 0, "no exec was created");
    let small = exec(10);
    assert!(small.starts_with("HTTP/1.1 201"), "{small}");
    assert_eq!(exec_ids(&web), 1);

    let events = s.events();
    let creates = about(&events, "POST", "/containers/create");
    assert_eq!(creates.len(), 2, "{events:#?}");
    assert!(creates.iter().all(|e| !e.allowed && e.mutation));
    b.stop(s);
}
