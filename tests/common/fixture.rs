//! The usual arrangement of an integration test, in one builder:
//!
//! ```ignore
//! let f = Fixture::builder("heal")  // require_docker, unique cluster, Cleanup, TempDir
//!     .manifest("cluster.yaml", |cluster| yaml(cluster))
//!     .resync("1s")
//!     .start();                     // operator run ..., wait until ready
//! docker_ok(&["kill", &f.name("db")]);
//! f.wait_running(&f.name("db"), "SIGKILL");
//! ```
//!
//! The controller gets a ticket database of its own at `$TMP/<cluster>.db` ([`Fixture::db`]),
//! so that it can be restarted on the same one ([`Fixture::restart_operator`]) or prepared
//! with `operator run --once` ([`FixtureBuilder::run_once`]). On drop, in this order: the
//! controller is killed (so nothing is recreated behind the cleanup), the database and the
//! folder are removed, and every container, network and volume labelled
//! `operator.cluster=<cluster>` (and any label given to [`FixtureBuilder::also_clean`]) is
//! removed from the engine the controller used.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::operator::{
    OperatorProcess, TempDir, is_running, operator, remove_db, state, wait_until,
};
use super::{Cleanup, require_docker, unique};

/// Everything a test started; see the module documentation.
pub struct Fixture {
    /// The unique cluster name (`metadata.name`); containers are `<cluster>-<service>`.
    pub cluster: String,
    /// The folder holding the manifests (`dir.write(...)` edits one under the controller).
    pub dir: TempDir,
    /// The running `operator run`.
    pub operator: OperatorProcess,
    db: DbFile,
    docker_host: Option<String>,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    listen: Option<String>,
    // Dropped last: the controller is gone before cleanup, so nothing is recreated.
    _cleanup: Cleanup,
}

/// Builds a [`Fixture`]: [`Fixture::builder`], then manifests and options, then
/// [`FixtureBuilder::start`].
#[must_use = "call .start() to run the controller"]
pub struct FixtureBuilder {
    cluster: String,
    dir: TempDir,
    db: DbFile,
    docker_host: Option<String>,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    listen: Option<String>,
    cleanup: Cleanup,
}

impl Fixture {
    /// Requires Docker, picks a unique cluster name from `prefix` (lower case), arms the
    /// cleanup of `operator.cluster=<cluster>` (and the agent's toolboxes of it) on the default engine and makes an empty
    /// manifest folder.
    pub fn builder(prefix: &str) -> FixtureBuilder {
        require_docker();
        let cluster = unique(prefix);
        // The agent's toolboxes first: in execute they hold the cluster's network.
        let mut cleanup = Cleanup::new(format!("operator.toolbox.cluster={cluster}"));
        cleanup.also(format!("operator.cluster={cluster}"));
        let dir = TempDir::new(&cluster);
        let db = DbFile(std::env::temp_dir().join(format!("{cluster}.db")));
        remove_db(&db.0);
        FixtureBuilder {
            cluster,
            dir,
            db,
            docker_host: None,
            extra: Vec::new(),
            env: Vec::new(),
            listen: Some("127.0.0.1:0".into()),
            cleanup,
        }
    }

    /// `<cluster>-<service>`: the container name of a declared service.
    pub fn name(&self, service: &str) -> String {
        format!("{}-{service}", self.cluster)
    }

    /// The controller's ticket database.
    pub fn db(&self) -> &Path {
        &self.db.0
    }

    /// The engine the controller talks to (`None`: the default one).
    pub fn docker_host(&self) -> Option<&str> {
        self.docker_host.as_deref()
    }

    /// Waits (60 s) until container `name` runs; panics naming `what` broke it otherwise.
    pub fn wait_running(&self, name: &str, what: &str) {
        let host = self.docker_host();
        assert!(
            wait_until(Duration::from_secs(60), || is_running(name, host)),
            "{name} is not running after {what}; state {:?}; log:\n{}",
            state(name, host),
            self.operator.log()
        );
    }

    /// `operator tickets list --json`.
    pub fn tickets(&self) -> Vec<serde_json::Value> {
        self.operator.tickets_json()
    }

    /// The newest ticket (from `tickets list --json`) of `service` (a container name, a check
    /// target or `-`) with drift `drift`.
    pub fn ticket(&self, drift: &str, service: &str) -> Option<serde_json::Value> {
        self.tickets()
            .into_iter()
            .find(|t| t["drift"] == drift && t["service"] == service)
    }

    /// Whether the newest ticket of `service` with drift `drift` has a note on its timeline
    /// containing `text` (what the quorum gate says when it holds an action back).
    pub fn noted(&self, drift: &str, service: &str, text: &str) -> bool {
        self.ticket(drift, service).is_some_and(|t| {
            self.operator
                .timeline(t["id"].as_i64().unwrap(), "note")
                .iter()
                .any(|e| {
                    e["detail"]["note"]
                        .as_str()
                        .is_some_and(|n| n.contains(text))
                })
        })
    }

    /// SIGKILLs the controller and starts a new one on the same manifests, database, engine
    /// and arguments (what a controller crash and a supervisor's restart look like); waits
    /// until it is ready.
    pub fn restart_operator(&mut self) {
        self.operator.crash();
        self.operator = spawn(
            &self.dir,
            &self.extra,
            &self.env,
            self.docker_host.as_deref(),
            &self.db.0,
            self.listen.as_deref(),
        );
        self.operator.wait_ready();
    }
}

impl FixtureBuilder {
    /// The unique cluster name, e.g. to create foreign containers before the controller runs.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The manifest folder (also a home for other files of the test).
    pub fn dir(&self) -> &TempDir {
        &self.dir
    }

    /// The ticket database the controller will use.
    pub fn db(&self) -> &Path {
        &self.db.0
    }

    /// Writes manifest `file` now, made by `yaml` from the cluster name.
    pub fn manifest(self, file: &str, yaml: impl FnOnce(&str) -> String) -> Self {
        self.dir.write(file, &yaml(&self.cluster));
        self
    }

    /// `--resync PERIOD` (e.g. `"1s"`).
    pub fn resync(self, period: &str) -> Self {
        self.args(&["--resync", period])
    }

    /// More `operator run` arguments.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.extra.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Runs the controller against the engine at `host` (`DOCKER_HOST`, e.g.
    /// [`super::PrivateDockerd::host`]); the cleanup then runs there too.
    pub fn docker_host(mut self, host: &str) -> Self {
        self.cleanup = Cleanup::on(host, format!("operator.toolbox.cluster={}", self.cluster));
        self.cleanup
            .also(format!("operator.cluster={}", self.cluster));
        self.docker_host = Some(host.to_string());
        self
    }

    /// Also remove what carries `label` (`key=value`) when the fixture ends, e.g. foreign
    /// containers the test made itself.
    pub fn also_clean(mut self, label: impl Into<String>) -> Self {
        self.cleanup.also(label);
        self
    }

    /// An environment variable for the controller (e.g. the agent's key).
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// Leaves `--listen` out: the controller binds its default address.
    pub fn default_listen(mut self) -> Self {
        self.listen = None;
        self
    }

    /// Runs `operator run DIR --once --db DB` now (one pass over the manifests as they are);
    /// panics unless it succeeds. E.g. create everything under one manifest, then start the
    /// controller on another.
    pub fn run_once(self) -> Self {
        let out = operator(
            &[
                "run",
                self.dir.path().to_str().expect("utf-8 path"),
                "--once",
                "--db",
                self.db.0.to_str().expect("utf-8 path"),
            ],
            self.docker_host.as_deref(),
        );
        assert!(
            out.status.success(),
            "operator run --once failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self
    }

    /// Starts `operator run DIR --log-format json ... --db DB` (with `--listen 127.0.0.1:0`
    /// unless [`FixtureBuilder::default_listen`]) and waits until it is ready (its first
    /// full list of the engine).
    pub fn start(self) -> Fixture {
        let operator = spawn(
            &self.dir,
            &self.extra,
            &self.env,
            self.docker_host.as_deref(),
            &self.db.0,
            self.listen.as_deref(),
        );
        let fixture = Fixture {
            cluster: self.cluster,
            dir: self.dir,
            operator,
            db: self.db,
            docker_host: self.docker_host,
            extra: self.extra,
            env: self.env,
            listen: self.listen,
            _cleanup: self.cleanup,
        };
        fixture.operator.wait_ready();
        fixture
    }
}

fn spawn(
    dir: &TempDir,
    extra: &[String],
    env: &[(String, String)],
    docker_host: Option<&str>,
    db: &Path,
    listen: Option<&str>,
) -> OperatorProcess {
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    OperatorProcess::spawn_with_env(&[dir.path()], &extra, docker_host, db, listen, env)
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // The fields drop after this: the log (printed if the test failed), the database,
        // the folder, then the cleanup.
        self.operator.crash();
        remove_session_files(&self.db.0);
    }
}

/// The agent's files of the sessions in `db`, in the `sessions/` folder beside it (shared by
/// every database in that folder, so only these sessions'): each session's JSON audit and
/// its proxy's socket folder, which a controller killed mid-session leaves behind.
fn remove_session_files(db: &Path) {
    let Some(db_arg) = db.to_str() else { return };
    let listed = operator(&["audit", "list", "--db", db_arg, "--json"], None);
    let Ok(sessions) = serde_json::from_slice::<Vec<serde_json::Value>>(&listed.stdout) else {
        return;
    };
    let folder = db.parent().unwrap_or(Path::new(".")).join("sessions");
    for id in sessions.iter().filter_map(|s| s["id"].as_str()) {
        let _ = std::fs::remove_file(folder.join(format!("{id}.json")));
        let _ = std::fs::remove_dir_all(folder.join("toolbox").join(id));
    }
}

/// A ticket database path, removed (with its WAL side files) on drop.
struct DbFile(PathBuf);

impl Drop for DbFile {
    fn drop(&mut self) {
        remove_db(&self.0);
    }
}
