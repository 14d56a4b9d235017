//! The session's toolbox: a container the controller starts through the engine for one agent
//! session, where every shell command of that session runs. It is the sandbox the old
//! shell-text judge could never be: whatever a command says, it runs as an unprivileged user
//! in a container that holds nothing of the controller's, and its only route to Docker is
//! the session's authorising proxy ([`super::proxy`]).
//!
//! # Guarantees
//! - The toolbox runs as a non-root user, with a read-only root file system, a small tmpfs
//!   for `/tmp` and its home, no capabilities, `no-new-privileges`, its own PID namespace,
//!   and a pids, memory and CPU limit. Its environment is built here from nothing: `PATH`,
//!   `HOME`, `LANG` and `DOCKER_HOST` (the proxy's socket, the only mount it gets). None of
//!   the controller's environment, home, database, session files or manifests is in it.
//! - Its network is `none` unless the caller names one (execute and approve get the
//!   cluster's network, so the cluster's own HTTP APIs are in reach; observe gets none).
//! - Its main process is a shell that reaps orphans and ends after the session's wall time
//!   plus a margin: a toolbox whose controller died ends by itself, and the engine removes
//!   it (`AutoRemove`). Every
//!   controller removes the toolboxes of its database left by a dead one ([`list`],
//!   [`remove_found`]; the dispatcher's sweep).
//! - A command runs as `timeout -k GRACE T sh -c COMMAND` through the engine's exec: past its
//!   timeout its whole process group is killed inside the toolbox; the controller stops
//!   reading it at `timeout + grace + 2 × drain` whatever it does. What it left in its
//!   process group is killed once the command itself has ended (a process that left the
//!   group lives until the toolbox goes). Output is capped and redacted as [`super::shell`]
//!   does it.
//! - Removing the toolbox ([`Toolbox::remove`]) ends every process of the session.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::Docker;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use futures::StreamExt;
use tokio::time::Instant;

use super::shell::{self, Capture, ChildEnv, Ended, ShellLimits, ShellOutput};

/// The label that marks a container as an agent session's toolbox; its value is the session.
pub const LABEL_SESSION: &str = "operator.toolbox.session";
/// The label naming the cluster whose ticket the session works on (for a person, and for
/// tests that remove what they made).
pub const LABEL_CLUSTER: &str = "operator.toolbox.cluster";
/// The label naming the ticket database whose controller started it (a digest of its path),
/// so a controller sweeps only its own toolboxes, never another's on the same engine.
pub const LABEL_DB: &str = "operator.toolbox.db";
/// The toolbox image on a host when nothing else is configured (`scripts/setup.sh` and
/// `scripts/build-image.sh --toolbox` build it). In the sidecar its own image is used.
pub const DEFAULT_IMAGE: &str = "operator-toolbox:latest";
/// Where the proxy's socket folder is mounted in the toolbox.
pub const SOCKET_DIR: &str = "/run/operator";
/// The socket's file name, in its folder on the host and under [`SOCKET_DIR`].
pub const SOCKET_NAME: &str = "docker.sock";
/// The toolbox's home (a tmpfs).
const HOME: &str = "/home/agent";
/// How long past the session's wall time a toolbox may live without its controller.
const LIFETIME_MARGIN: Duration = Duration::from_secs(60);
/// Bound on each engine call that starts, inspects or removes a toolbox.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(30);

/// How a toolbox is made. Builder-style defaults in [`ToolboxSpec::new`].
#[derive(Debug, Clone)]
pub struct ToolboxSpec {
    pub image: String,
    /// `uid:gid` the commands run as (never 0).
    pub user: (u32, u32),
    /// The Docker network to join; `None`: no network at all.
    pub network: Option<String>,
    /// The proxy's socket folder as the engine sees it (a host path): mounted read-only at
    /// [`SOCKET_DIR`].
    pub socket_dir: PathBuf,
    /// The session's wall time: the toolbox ends by itself after it (plus a margin).
    pub lifetime: Duration,
    pub memory_bytes: i64,
    pub pids: i64,
    /// CPUs, in billionths (Docker's `NanoCpus`).
    pub nano_cpus: i64,
    /// The digest of the database path ([`db_label`]).
    pub db: String,
    /// The cluster the session's ticket is of.
    pub cluster: String,
}

impl ToolboxSpec {
    pub fn new(image: impl Into<String>, socket_dir: PathBuf, db: &Path) -> ToolboxSpec {
        ToolboxSpec {
            image: image.into(),
            user: (65534, 65534),
            network: None,
            socket_dir,
            lifetime: Duration::from_secs(600),
            memory_bytes: 256 << 20,
            pids: 128,
            nano_cpus: 1_000_000_000,
            db: db_label(db),
            cluster: String::new(),
        }
    }
    pub fn user(mut self, uid: u32, gid: u32) -> Self {
        self.user = (uid, gid);
        self
    }
    pub fn network(mut self, network: Option<String>) -> Self {
        self.network = network;
        self
    }
    pub fn cluster(mut self, cluster: impl Into<String>) -> Self {
        self.cluster = cluster.into();
        self
    }
    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ToolboxError {
    #[error(
        "the agent's toolbox image {0} is not on the engine: build it with `scripts/build-image.sh --toolbox` (or name another with --toolbox-image)"
    )]
    NoImage(String),
    #[error("the agent's toolbox would run as root ({0}:{1}); it must not")]
    Root(u32, u32),
    #[error("cannot {doing} the agent's toolbox {name}: {source}")]
    Engine {
        doing: &'static str,
        name: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("cannot {doing} the agent's toolbox {name}: no answer from the engine within {} s", ENGINE_TIMEOUT.as_secs())]
    Timeout { doing: &'static str, name: String },
}

/// A digest of the database path, for [`LABEL_DB`]: equal for one database however it is
/// spelled (the path is resolved first), and no path in a label anyone can read.
pub fn db_label(db: &Path) -> String {
    use sha2::Digest;
    let absolute = std::fs::canonicalize(db)
        .or_else(|_| std::path::absolute(db))
        .unwrap_or_else(|_| db.to_path_buf());
    let digest = sha2::Sha256::digest(absolute.as_os_str().as_encoded_bytes());
    hex::encode(&digest[..8])
}

/// The toolbox's container name for `session` (session ids are `{UTC timestamp}-{8 hex}`).
pub fn container_name(session: &str) -> String {
    let safe: String = session
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("operator-toolbox-{}", safe.to_ascii_lowercase())
}

async fn bounded<T>(
    doing: &'static str,
    name: &str,
    call: impl std::future::Future<Output = Result<T, bollard::errors::Error>>,
) -> Result<T, ToolboxError> {
    match tokio::time::timeout(ENGINE_TIMEOUT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(ToolboxError::Engine {
            doing,
            name: name.to_string(),
            source,
        }),
        Err(_) => Err(ToolboxError::Timeout {
            doing,
            name: name.to_string(),
        }),
    }
}

/// A running toolbox. Remove it with [`Toolbox::remove`]; dropping it leaves the container to
/// its own lifetime and the next sweep of its database's toolboxes.
pub struct Toolbox {
    docker: Docker,
    name: String,
    id: String,
    user: String,
    /// Commands run so far (names each command's process-group file).
    runs: std::sync::atomic::AtomicU64,
}

impl Toolbox {
    /// Creates and starts the toolbox of `session`.
    pub async fn start(
        docker: &Docker,
        session: &str,
        spec: &ToolboxSpec,
    ) -> Result<Toolbox, ToolboxError> {
        let name = container_name(session);
        if spec.user.0 == 0 {
            return Err(ToolboxError::Root(spec.user.0, spec.user.1));
        }
        match tokio::time::timeout(ENGINE_TIMEOUT, docker.inspect_image(&spec.image)).await {
            Ok(Ok(_)) => {}
            Ok(Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            })) => return Err(ToolboxError::NoImage(spec.image.clone())),
            Ok(Err(source)) => {
                return Err(ToolboxError::Engine {
                    doing: "find the image of",
                    name,
                    source,
                });
            }
            Err(_) => {
                return Err(ToolboxError::Timeout {
                    doing: "find the image of",
                    name,
                });
            }
        }
        let user = format!("{}:{}", spec.user.0, spec.user.1);
        let tmpfs = HashMap::from([
            (
                "/tmp".to_string(),
                "rw,nosuid,nodev,size=64m,mode=1777".to_string(),
            ),
            (
                HOME.to_string(),
                format!(
                    "rw,nosuid,nodev,size=16m,mode=0700,uid={},gid={}",
                    spec.user.0, spec.user.1
                ),
            ),
        ]);
        let lifetime = (spec.lifetime + LIFETIME_MARGIN).as_secs().to_string();
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            // The watchdog, and an init: the toolbox's life is bounded even if its
            // controller dies, and PID 1 reaps what commands orphan (a `sleep` there would
            // not, and zombies would fill the pids limit until nothing could fork).
            entrypoint: Some(vec!["sh".into(), "-c".into()]),
            cmd: Some(vec![format!(
                "end=$(( $(date +%s) + {lifetime} )); while [ \"$(date +%s)\" -lt \"$end\" ]; do sleep 1 & wait; done"
            )]),
            user: Some(user.clone()),
            working_dir: Some(HOME.into()),
            env: Some(vec![
                "PATH=/usr/local/bin:/usr/bin:/bin".into(),
                format!("HOME={HOME}"),
                "LANG=C.UTF-8".into(),
                format!("DOCKER_HOST=unix://{SOCKET_DIR}/{SOCKET_NAME}"),
            ]),
            labels: Some(HashMap::from([
                (LABEL_SESSION.to_string(), session.to_string()),
                (LABEL_DB.to_string(), spec.db.clone()),
                (LABEL_CLUSTER.to_string(), spec.cluster.clone()),
            ])),
            // No image healthcheck (the sidecar's pings a controller that is not there).
            healthcheck: Some(bollard::models::HealthConfig {
                test: Some(vec!["NONE".into()]),
                ..Default::default()
            }),
            network_disabled: Some(spec.network.is_none()),
            host_config: Some(HostConfig {
                readonly_rootfs: Some(true),
                tmpfs: Some(tmpfs),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges".into()]),
                pids_limit: Some(spec.pids),
                memory: Some(spec.memory_bytes),
                memory_swap: Some(spec.memory_bytes),
                nano_cpus: Some(spec.nano_cpus),
                network_mode: Some(spec.network.clone().unwrap_or_else(|| "none".into())),
                binds: Some(vec![format!(
                    "{}:{SOCKET_DIR}:ro",
                    spec.socket_dir.display()
                )]),
                auto_remove: Some(true),
                init: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let created = match bounded(
            "create",
            &name,
            docker.create_container(Some(options), body),
        )
        .await
        {
            Ok(created) => created,
            Err(e) => {
                // A create that timed out may still have made it: never started, so its
                // AutoRemove never applies.
                if matches!(e, ToolboxError::Timeout { .. }) {
                    remove_container(docker, &name, &name).await;
                }
                return Err(e);
            }
        };
        let toolbox = Toolbox {
            docker: docker.clone(),
            name: name.clone(),
            id: created.id,
            user,
            runs: Default::default(),
        };
        if let Err(e) = bounded("start", &name, docker.start_container(&toolbox.id, None)).await {
            toolbox.remove().await;
            return Err(e);
        }
        Ok(toolbox)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Runs `command` in the toolbox under `limits`; output redacted with `redact`'s secret
    /// values. An error means the command could not be started at all.
    pub async fn run(
        &self,
        command: &str,
        limits: &ShellLimits,
        redact: &ChildEnv,
    ) -> Result<ShellOutput, ToolboxError> {
        let started = Instant::now();
        let n = self.runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let timeout = limits.timeout.as_secs_f64().max(0.001);
        let grace = limits.kill_grace.as_secs_f64().max(0.001);
        // `timeout` makes itself a process-group leader (unless --foreground) and signals the
        // whole group at its deadline; its pid is written first, so a process the command
        // left holding its output can be killed with its group once the command ended.
        let wrapper = format!(
            "echo $$ > /tmp/.operator-run-{n}; exec timeout -k {grace:.3} {timeout:.3} sh -c \"$1\""
        );
        let exec = bounded(
            "run a command in",
            &self.name,
            self.docker.create_exec(
                &self.id,
                CreateExecOptions::<String> {
                    attach_stdin: Some(false),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(false),
                    cmd: Some(vec![
                        "sh".into(),
                        "-c".into(),
                        wrapper,
                        "operator-shell".into(),
                        command.to_string(),
                    ]),
                    user: Some(self.user.clone()),
                    privileged: Some(false),
                    ..Default::default()
                },
            ),
        )
        .await?;
        let attached = bounded(
            "run a command in",
            &self.name,
            self.docker.start_exec(
                &exec.id,
                Some(StartExecOptions {
                    detach: false,
                    tty: false,
                    output_capacity: None,
                }),
            ),
        )
        .await?;
        let mut out = Capture::new(limits.output_cap);
        let mut err = Capture::new(limits.output_cap);
        let StartExecResults::Attached { mut output, .. } = attached else {
            return Ok(shell::output(
                &out,
                &err,
                limits,
                redact,
                Ended {
                    exit_code: None,
                    signal: None,
                    timed_out: false,
                    duration: started.elapsed(),
                },
            ));
        };
        // Past this, the controller stops listening whatever the command does.
        let hard = started + limits.timeout + limits.kill_grace + limits.drain * 2;
        // When the command's own process was seen gone (its output may still be held open).
        let mut ended_at: Option<Instant> = None;
        let mut killed_leftovers = false;
        let mut poll = tokio::time::interval(Duration::from_millis(250));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                chunk = output.next() => match chunk {
                    Some(Ok(bollard::container::LogOutput::StdErr { message })) => err.push(&message),
                    Some(Ok(log)) => out.push(&log.into_bytes()),
                    // The stream broke or ended: everything that will come has come.
                    Some(Err(_)) | None => break,
                },
                _ = tokio::time::sleep_until(hard) => break,
                _ = poll.tick(), if started.elapsed() >= Duration::from_millis(500) => {
                    if ended_at.is_none() && !self.exec_running(&exec.id).await {
                        ended_at = Some(Instant::now());
                    }
                    if let Some(at) = ended_at && !killed_leftovers && at.elapsed() >= limits.drain.min(Duration::from_millis(500)) {
                        // The command ended but something it started holds its output open:
                        // its group goes, as a command on the host would leave nothing.
                        killed_leftovers = true;
                        self.kill_group(n).await;
                    }
                }
            }
        }
        let inspected =
            tokio::time::timeout(ENGINE_TIMEOUT, self.docker.inspect_exec(&exec.id)).await;
        let code = match inspected {
            Ok(Ok(i)) if i.running != Some(true) => i.exit_code.map(|c| c as i32),
            // Still running past the hard bound (a process in uninterruptible sleep): killed
            // below, not waited for.
            _ => None,
        };
        // What the command left in its group goes now that it ended (the engine may close
        // an exec's streams while a background process still holds them).
        self.kill_group_beside(n);
        // timeout(1) exits 124 when it killed the command (137 when it needed SIGKILL).
        let timed_out = started.elapsed() >= limits.timeout && matches!(code, Some(124 | 137));
        let (exit_code, signal) = match code {
            Some(c) if c > 128 && c < 160 && !timed_out => (None, Some(c - 128)),
            other => (other, None),
        };
        Ok(shell::output(
            &out,
            &err,
            limits,
            redact,
            Ended {
                exit_code,
                signal,
                timed_out,
                duration: started.elapsed(),
            },
        ))
    }

    async fn exec_running(&self, exec: &str) -> bool {
        match tokio::time::timeout(ENGINE_TIMEOUT, self.docker.inspect_exec(exec)).await {
            Ok(Ok(i)) => i.running == Some(true),
            _ => true,
        }
    }

    /// Kills every process in the toolbox but its PID 1: what earlier commands left running
    /// (`setsid`, `nohup ... &`). Approve mode calls it after each command, so nothing a
    /// person approved keeps acting after its command ended (bounded, best effort).
    pub async fn kill_leftovers(&self) {
        // Waited for: the next command must not start before this has run, or be its
        // target.
        let exec = self.docker.create_exec(
            &self.id,
            CreateExecOptions::<String> {
                cmd: Some(vec![
                    "sh".into(),
                    "-c".into(),
                    "kill -KILL -1 2>/dev/null; true".into(),
                ]),
                user: Some(self.user.clone()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        );
        let Ok(Ok(exec)) = tokio::time::timeout(ENGINE_TIMEOUT, exec).await else {
            return;
        };
        let run = async {
            if let Ok(StartExecResults::Attached { mut output, .. }) =
                self.docker.start_exec(&exec.id, None).await
            {
                while output.next().await.is_some() {}
            }
        };
        let _ = tokio::time::timeout(ENGINE_TIMEOUT, run).await;
    }

    /// Kills the process group of command `n` (bounded; best effort: the toolbox's removal
    /// at the session's end takes whatever is left).
    async fn kill_group(&self, n: u64) {
        exec_detached(&self.docker, &self.id, &self.user, &group_kill(n)).await;
    }

    /// [`Toolbox::kill_group`] beside the caller, which does not wait for it: once a command
    /// ended, what it left in its group goes, at no cost to the command's answer.
    fn kill_group_beside(&self, n: u64) {
        let (docker, id, user) = (self.docker.clone(), self.id.clone(), self.user.clone());
        tokio::spawn(async move { exec_detached(&docker, &id, &user, &group_kill(n)).await });
    }

    /// Removes the toolbox and with it every process of the session (bounded; a failure is
    /// logged, and the toolbox's own lifetime and the next sweep remain).
    pub async fn remove(&self) {
        remove_container(&self.docker, &self.id, &self.name).await;
    }
}

/// The script that kills command `n`'s process group (its pid, written first, is its pgid).
/// No `--` before the group: dash's `kill` takes none and would refuse the line.
fn group_kill(n: u64) -> String {
    format!(
        "kill -KILL -\"$(cat /tmp/.operator-run-{n})\" 2>/dev/null; rm -f /tmp/.operator-run-{n}"
    )
}

/// Runs `script` in toolbox `id` without waiting for it to end (bounded).
async fn exec_detached(docker: &Docker, id: &str, user: &str, script: &str) {
    let exec = docker.create_exec(
        id,
        CreateExecOptions::<String> {
            cmd: Some(vec!["sh".into(), "-c".into(), script.to_string()]),
            user: Some(user.to_string()),
            ..Default::default()
        },
    );
    if let Ok(Ok(exec)) = tokio::time::timeout(ENGINE_TIMEOUT, exec).await {
        let start = docker.start_exec(
            &exec.id,
            Some(StartExecOptions {
                detach: true,
                ..Default::default()
            }),
        );
        let _ = tokio::time::timeout(ENGINE_TIMEOUT, start).await;
    }
}

async fn remove_container(docker: &Docker, id: &str, name: &str) {
    let options = RemoveContainerOptionsBuilder::default().force(true).build();
    match bounded("remove", name, docker.remove_container(id, Some(options))).await {
        Ok(()) => {}
        // Already gone (AutoRemove after its lifetime, or removed by hand).
        Err(ToolboxError::Engine {
            source:
                bollard::errors::Error::DockerResponseServerError {
                    status_code: 404 | 409,
                    ..
                },
            ..
        }) => {}
        Err(e) => tracing::warn!(error = %e, "the toolbox stays until its lifetime ends"),
    }
}

/// A toolbox found on the engine: its container id and its session.
#[derive(Debug, Clone)]
pub struct Found {
    pub id: String,
    pub session: String,
}

/// Every toolbox of database `db` ([`db_label`]) on the engine, running or not.
pub async fn list(docker: &Docker, db: &Path) -> Result<Vec<Found>, ToolboxError> {
    let label = format!("{LABEL_DB}={}", db_label(db));
    let filters = HashMap::from([("label".to_string(), vec![label])]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let listed = bounded(
        "list the toolboxes (by their database's label) to find",
        "left",
        docker.list_containers(Some(options)),
    )
    .await?;
    Ok(listed
        .into_iter()
        .filter_map(|c| {
            let session = c.labels.as_ref()?.get(LABEL_SESSION)?.clone();
            Some(Found { id: c.id?, session })
        })
        .collect())
}

/// Removes a toolbox [`list`] found (bounded, best effort).
pub async fn remove_found(docker: &Docker, found: &Found) {
    remove_container(docker, &found.id, &container_name(&found.session)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_name_is_made_of_the_session_id_in_characters_docker_accepts() {
        assert_eq!(
            container_name("20261207T142000Z-ABCD1234"),
            "operator-toolbox-20261207t142000z-abcd1234"
        );
        assert_eq!(container_name("a/b c"), "operator-toolbox-a-b-c");
    }

    #[test]
    fn one_database_has_one_label_however_its_path_is_spelled() {
        let a = db_label(Path::new("/tmp/x/tickets.db"));
        assert_eq!(a, db_label(Path::new("/tmp/x/tickets.db")));
        assert_ne!(a, db_label(Path::new("/tmp/y/tickets.db")));
        assert_eq!(a.len(), 16);
        assert!(!a.contains("tickets"), "no path in a label");
    }
}
