//! Bad input and faults at the top level of `operator run` (and of the commands that read the
//! ticket database): each gives one clear line naming the path, address or value with a
//! non-zero exit, or, where the controller can run degraded, one warning and a `/healthz`
//! that says so. Never a panic or a backtrace. See docs/troubleshooting.md.
//!
//! The real binary runs in every case. "Not permitted" runs it as uid 65534 (`setpriv`), since
//! permissions do not stop root; a full or read-only disk is a tmpfs the test mounts and
//! unmounts; the sidecar without its socket is a private mount namespace (`unshare`) with an
//! empty `/var/run`. These need root, as CI runs the tests.

mod common;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::operator::{OperatorProcess, TempDir, is_running, operator_bin, wait_until};
use common::{BUSYBOX_IMAGE, Cleanup, Fixture, docker_ok, free_port, require_docker, unique};

/// The user the "not permitted" cases run as.
const NOBODY: u32 = 65534;

/// Every failing run is bounded.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// A valid one-service manifest; these runs never get as far as creating it.
fn manifest(cluster: &str) -> String {
    common::cluster_yaml(
        cluster,
        &format!(
            "    - name: {cluster}-a\n      image: {BUSYBOX_IMAGE}\n      command: [\"sleep\", \"3600\"]\n"
        ),
    )
}

/// A folder with a manifest in it, open to every user (so uid 65534 can read it too).
fn manifests(name: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new(&unique(name));
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = dir.write("cluster.yaml", &manifest(&unique("faults")));
    (dir, file)
}

fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1));
    assert_eq!(
        euid,
        Some("0"),
        "these tests run the binary as another user, mount file systems and enter mount \
         namespaces: run them as root (as CI does)"
    );
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_no_panic(stderr: &str) {
    for word in ["panicked", "backtrace", "RUST_BACKTRACE", "stack"] {
        assert!(!stderr.contains(word), "{word:?} on stderr:\n{stderr}");
    }
}

/// Runs `make() ARGS` twice and returns the failure message:
/// - as text at `--log-level warn`, stderr must be `error: MESSAGE` and nothing else,
///   `lines` lines (a manifest error lists its problems, then a count);
/// - with `--log-format json` at the default level, every stderr line is JSON and exactly one
///   is at level ERROR, carrying the same message.
///
/// Both exit with status 1 and show no panic.
fn one_failure(make: &dyn Fn() -> Command, args: &[&str], lines: usize) -> String {
    let mut cmd = make();
    cmd.args(args).args(["--log-level", "warn"]);
    let out = common::run_with_timeout(cmd, RUN_TIMEOUT);
    let stderr = text(&out);
    assert_eq!(out.status.code(), Some(1), "{args:?}:\n{stderr}");
    assert_no_panic(&stderr);
    assert_eq!(
        stderr.lines().count(),
        lines,
        "{args:?}: not {lines} line(s):\n{stderr}"
    );
    let message = stderr
        .trim_end()
        .strip_prefix("error: ")
        .unwrap_or_else(|| panic!("{args:?}: no `error: ` line:\n{stderr}"))
        .to_string();

    let mut cmd = make();
    cmd.args(args).args(["--log-format", "json"]);
    let out = common::run_with_timeout(cmd, RUN_TIMEOUT);
    let stderr = text(&out);
    assert_eq!(out.status.code(), Some(1), "{args:?} (json):\n{stderr}");
    assert_no_panic(&stderr);
    let errors: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap_or_else(|e| panic!("{args:?}: a line that is not JSON ({e}): {l}"))
        })
        .filter(|v| v["level"] == "ERROR")
        .collect();
    assert_eq!(errors.len(), 1, "{args:?}: not one ERROR line:\n{stderr}");
    assert_eq!(errors[0]["message"], message.as_str(), "{stderr}");
    message
}

fn assert_says(message: &str, needles: &[&str]) {
    for needle in needles {
        assert!(message.contains(needle), "no {needle:?} in: {message}");
    }
}

/// `operator` as is.
fn plain() -> Command {
    Command::new(operator_bin())
}

/// The binary as uid 65534 can run it: itself when its path is open to everyone, else a
/// hard link (or a copy) in `dir`, removed with it.
fn binary_for_nobody(dir: &Path) -> PathBuf {
    let bin = PathBuf::from(operator_bin());
    let runs = as_nobody(&bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if runs {
        return bin;
    }
    let there = dir.join("operator");
    if std::fs::hard_link(&bin, &there).is_err() {
        std::fs::copy(&bin, &there).expect("copy the binary for uid 65534");
    }
    std::fs::set_permissions(&there, std::fs::Permissions::from_mode(0o755)).unwrap();
    there
}

fn as_nobody(bin: &Path) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        format!("--reuid={NOBODY}"),
        format!("--regid={NOBODY}"),
        "--clear-groups".to_string(),
    ])
    .arg(bin);
    cmd
}

/// A folder uid 65534 owns (a database folder it may write).
fn nobodys_folder(parent: &Path, name: &str) -> PathBuf {
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
    dir
}

/// A tmpfs mounted for the test, unmounted on drop (pass or fail).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, options: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(at)
            .output()
            .expect("run mount");
        assert!(out.status.success(), "mount tmpfs: {}", text(&out));
        Tmpfs(at.to_path_buf())
    }

    /// Writes zeros into `filler` until the file system is full; returns the file.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.0.join("filler");
        let mut file = std::fs::File::create(&filler).expect("create the filler");
        let chunk = vec![0u8; 64 * 1024];
        // Bounded by the tmpfs size: the write fails with ENOSPC.
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(ENOSPC), "filling: {e}");
                    break;
                }
            }
        }
        // A few bytes may still fit in the last page.
        let small = [0u8; 512];
        while file.write(&small).is_ok_and(|n| n > 0) {}
        filler
    }
}

/// "No space left on device" (Linux).
const ENOSPC: i32 = 28;

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Busy (a process still exiting): detach it now, freed when the last user goes.
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

// ---- a/g: the Docker engine ----

#[test]
fn a_missing_docker_socket_is_one_line_naming_it_and_no_database_is_made() {
    let (dir, _) = manifests("nosocket");
    let db = dir.path().join("db").join("tickets.db");
    let make = || {
        let mut cmd = plain();
        cmd.env("DOCKER_HOST", "unix:///nonexistent.sock");
        cmd
    };
    let message = one_failure(
        &make,
        &[
            "run",
            dir.path().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--db",
            db.to_str().unwrap(),
        ],
        1,
    );
    assert_says(
        &message,
        &[
            "cannot reach the Docker engine at unix:///nonexistent.sock",
            "no socket at /nonexistent.sock",
            "DOCKER_HOST",
        ],
    );
    // The engine is asked before the database is created or migrated.
    assert!(
        !db.exists(),
        "a database was made by a run that could not start"
    );
}

#[test]
fn a_docker_socket_this_user_may_not_open_names_its_group() {
    require_root();
    let (dir, _) = manifests("denied");
    let bin = binary_for_nobody(dir.path());
    let db = nobodys_folder(dir.path(), "db").join("tickets.db");
    // A socket like an engine's without its docker group: root's, 0660.
    let socket = dir.path().join("engine.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o660)).unwrap();
    let host = format!("unix://{}", socket.display());
    let make = || {
        let mut cmd = as_nobody(&bin);
        cmd.env("DOCKER_HOST", &host);
        cmd
    };
    let message = one_failure(
        &make,
        &[
            "run",
            dir.path().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--db",
            db.to_str().unwrap(),
        ],
        1,
    );
    assert_says(
        &message,
        &[
            &format!("permission denied on {}", socket.display()),
            "group 0",
            "mode 660",
            "uid 65534",
            "--group-add 0",
        ],
    );
}

#[test]
fn the_sidecar_started_without_the_socket_asks_whether_it_is_mounted() {
    require_root();
    let (dir, _) = manifests("unmounted");
    let db = dir.path().join("db").join("tickets.db");
    // What a container without `-v /var/run/docker.sock:...` sees: DOCKER_HOST unset and no
    // socket at the default path. An empty /var/run in a mount namespace of its own (the
    // host's is untouched, and the namespace goes with the process).
    let make = || {
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -t tmpfs -o size=1m tmpfs /var/run && exec \"$@\"",
            "sh",
            operator_bin(),
        ])
        .env_remove("DOCKER_HOST");
        cmd
    };
    let message = one_failure(
        &make,
        &[
            "run",
            dir.path().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--db",
            db.to_str().unwrap(),
        ],
        1,
    );
    assert_says(
        &message,
        &[
            "at unix:///var/run/docker.sock",
            "is /var/run/docker.sock mounted?",
            "-v /var/run/docker.sock:/var/run/docker.sock",
        ],
    );
}

// ---- b: the manifests ----

#[test]
fn an_empty_manifest_folder_is_one_line_naming_it() {
    let dir = TempDir::new(&unique("empty"));
    std::fs::write(dir.path().join("README.txt"), "not a manifest").unwrap();
    let message = one_failure(&plain, &["run", dir.path().to_str().unwrap()], 1);
    assert_says(
        &message,
        &[
            &format!("no manifests found in {}", dir.path().display()),
            ".yaml",
        ],
    );
}

#[test]
fn a_missing_manifest_path_is_one_line_naming_it() {
    let dir = TempDir::new(&unique("missing"));
    let path = dir.path().join("no-such-folder");
    let message = one_failure(&plain, &["run", path.to_str().unwrap()], 1);
    assert_says(
        &message,
        &[&path.display().to_string(), "No such file or directory"],
    );
}

#[test]
fn an_unreadable_manifest_folder_is_one_line_naming_it() {
    require_root();
    let (dir, _) = manifests("unreadable");
    let bin = binary_for_nobody(dir.path());
    let closed = dir.path().join("closed");
    std::fs::create_dir(&closed).unwrap();
    std::fs::write(closed.join("cluster.yaml"), manifest(&unique("faults"))).unwrap();
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o000)).unwrap();
    let make = || as_nobody(&bin);
    let message = one_failure(&make, &["run", closed.to_str().unwrap()], 1);
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_says(
        &message,
        &[&closed.display().to_string(), "Permission denied"],
    );
}

#[test]
fn a_file_that_is_not_a_manifest_names_its_line_and_counts_one_error() {
    let dir = TempDir::new(&unique("compose"));
    let file = dir.write(
        "compose.yaml",
        "version: \"3\"\nservices:\n  web:\n    image: nginx\n",
    );
    // The problem's line, then the count.
    let message = one_failure(&plain, &["run", file.to_str().unwrap()], 2);
    let (first, count) = message.split_once('\n').unwrap();
    assert_says(
        first,
        &[&format!("{}:1:", file.display()), "version", "apiVersion"],
    );
    assert_eq!(count, "1 error in the manifests");
}

// ---- c/d: the database folder ----

#[test]
fn a_database_folder_this_user_may_not_write_names_folder_and_user() {
    require_root();
    let (dir, _) = manifests("dbfolder");
    let bin = binary_for_nobody(dir.path());
    let roots = dir.path().join("roots");
    std::fs::create_dir(&roots).unwrap();
    std::fs::set_permissions(&roots, std::fs::Permissions::from_mode(0o755)).unwrap();
    let make = || as_nobody(&bin);
    for db in [
        roots.join("tickets.db"),
        roots.join("sub").join("tickets.db"),
    ] {
        let message = one_failure(
            &make,
            &[
                "run",
                dir.path().to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--db",
                db.to_str().unwrap(),
            ],
            1,
        );
        assert_says(
            &message,
            &[
                &format!("cannot use the ticket database {}", db.display()),
                &format!(
                    "the folder {} is not writable by uid 65534",
                    roots.display()
                ),
                "Permission denied",
                "--db / OPERATOR_DB",
            ],
        );
    }
}

#[test]
fn a_read_only_database_folder_says_read_only() {
    require_root();
    let (dir, _) = manifests("readonly");
    let mount = Tmpfs::mount(&dir.path().join("ro"), "ro,size=1m");
    let db = mount.0.join("tickets.db");
    let message = one_failure(
        &plain,
        &[
            "run",
            dir.path().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--db",
            db.to_str().unwrap(),
        ],
        1,
    );
    assert_says(
        &message,
        &[
            &format!("the file system under {} is read-only", mount.0.display()),
            "mount it read-write",
        ],
    );
}

#[test]
fn a_database_path_that_is_a_folder_is_refused_before_anything_is_made() {
    let (dir, _) = manifests("dbisdir");
    let folder = dir.path().join("state");
    std::fs::create_dir(&folder).unwrap();
    let message = one_failure(
        &plain,
        &[
            "run",
            dir.path().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--db",
            folder.to_str().unwrap(),
        ],
        1,
    );
    assert_says(
        &message,
        &[
            &format!("{} is a folder", folder.display()),
            &format!("{}/tickets.db", folder.display()),
        ],
    );
    assert!(
        !dir.path().join("state.lock").exists(),
        "a lock file was made"
    );
}

#[test]
fn a_full_disk_under_the_database_at_start_says_full() {
    require_root();
    let (dir, _) = manifests("fullstart");
    let mount = Tmpfs::mount(&dir.path().join("full"), "size=256k");
    mount.fill();
    let db = mount.0.join("tickets.db");
    let message = one_failure(
        &plain,
        &[
            "run",
            dir.path().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--db",
            db.to_str().unwrap(),
        ],
        1,
    );
    assert_says(
        &message,
        &[
            &format!("the file system under {} is full", mount.0.display()),
            "free space there",
        ],
    );
}

/// The newest ticket of `service` with drift `stopped`.
fn stopped_ticket(operator: &OperatorProcess, service: &str) -> Option<serde_json::Value> {
    operator
        .tickets_json()
        .into_iter()
        .find(|t| t["drift"] == "stopped" && t["service"] == service)
}

#[test]
fn a_disk_filling_up_under_a_running_controller_degrades_it_and_it_recovers_with_nothing_lost() {
    require_root();
    require_docker();
    let cluster = unique("diskfull");
    let _cleanup = Cleanup::new(format!("operator.cluster={cluster}"));
    let dir = TempDir::new(&cluster);
    dir.write("cluster.yaml", &manifest(&cluster));
    // Room for the database and its WAL, little more.
    let mount = Tmpfs::mount(&dir.path().join("db"), "size=4m");
    let db = mount.0.join("tickets.db");
    // Dropped first: the controller is gone before the mount.
    let operator = OperatorProcess::start_with_db(
        &[dir.path()],
        &["--resync", "1s", "--settle", "1s"],
        None,
        &db,
    );
    operator.wait_ready();
    let name = format!("{cluster}-a");
    let bound = Duration::from_secs(60);
    assert!(
        wait_until(bound, || is_running(&name, None)),
        "{}",
        operator.log()
    );

    // One episode recorded while there is room.
    docker_ok(&["kill", &name]);
    assert!(
        wait_until(bound, || stopped_ticket(&operator, &name)
            .is_some_and(|t| t["status"] == "resolved")),
        "the first kill was not repaired; log:\n{}",
        operator.log()
    );
    let id = stopped_ticket(&operator, &name).unwrap()["id"]
        .as_i64()
        .unwrap();
    let recorded = operator.ticket_json(id)["timeline"].clone();
    assert!(wait_until(bound, || is_running(&name, None)));

    // The disk fills up under it: the next drift cannot be recorded, so it is not repaired,
    // and /healthz says why.
    let filler = mount.fill();
    docker_ok(&["kill", &name]);
    assert!(
        wait_until(bound, || {
            let (status, body) = operator.http_get("/healthz");
            status.contains("503") && body.contains("the ticket store cannot be written")
        }),
        "healthz did not turn degraded: {:?}; log:\n{}",
        operator.http_get("/healthz"),
        operator.log()
    );
    assert_eq!(operator.metric("operator_store_writable"), Some(0.0));
    assert!(
        !is_running(&name, None),
        "repaired although nothing could be recorded; log:\n{}",
        operator.log()
    );
    // One steady failure, not a flicker (the WARN is said when the gauge falls to 0): after
    // more reconciles failed to record the stopped container, the gauge is still 0 and
    // nothing was repaired.
    operator.wait_advanced("operator_reconcile_total{result=\"unrecorded\"}", 2, bound);
    assert_eq!(
        operator.served_metric("operator_store_writable"),
        0.0,
        "the store was reported writable again with the disk still full; log:\n{}",
        operator.log()
    );
    assert!(
        !is_running(&name, None),
        "repaired although nothing could be recorded; log:\n{}",
        operator.log()
    );

    // Room again: the next reconcile records the drift and repairs it.
    std::fs::remove_file(&filler).unwrap();
    assert!(
        wait_until(bound, || is_running(&name, None)),
        "not repaired once the disk had room; log:\n{}",
        operator.log()
    );
    assert!(
        wait_until(bound, || {
            let (status, body) = operator.http_get("/healthz");
            status.contains("200") && body == "ok\n"
        }),
        "healthz did not recover: {:?}",
        operator.http_get("/healthz")
    );
    assert_eq!(operator.metric("operator_store_writable"), Some(1.0));
    // The second episode was recorded once there was room (on the reopened ticket, as a
    // flap, or on a new one) and resolved.
    let episodes = || {
        let tickets: Vec<_> = operator
            .tickets_json()
            .into_iter()
            .filter(|t| t["service"] == name.as_str() && t["drift"] == "stopped")
            .collect();
        let all_resolved = tickets.iter().all(|t| t["status"] == "resolved");
        let count: u64 = tickets
            .iter()
            .map(|t| 1 + t["flaps"].as_u64().unwrap_or(0))
            .sum();
        (count, all_resolved)
    };
    assert!(
        wait_until(bound, || episodes() == (2, true)),
        "episodes {:?}; tickets {:#?}; log:\n{}",
        episodes(),
        operator.tickets_json(),
        operator.log()
    );
    // Nothing committed before the disk filled was lost: the first episode's timeline is
    // still there, entry for entry, ahead of whatever came after.
    let now = operator.ticket_json(id)["timeline"].clone();
    let before = recorded.as_array().unwrap();
    let after = now.as_array().unwrap();
    assert!(
        after.len() >= before.len() && after[..before.len()] == before[..],
        "the first episode's timeline changed:\nbefore {recorded:#}\nafter {now:#}"
    );
    assert_no_panic(&operator.log());
}

// ---- e: the listen address ----

#[test]
fn a_listen_address_in_use_is_one_line_naming_it_and_no_database_is_made() {
    let (dir, _) = manifests("inuse");
    let taken = TcpListener::bind(("127.0.0.1", free_port())).unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let db = dir.path().join("db").join("tickets.db");
    let message = one_failure(
        &plain,
        &[
            "run",
            dir.path().to_str().unwrap(),
            "--listen",
            &addr,
            "--db",
            db.to_str().unwrap(),
        ],
        1,
    );
    assert_says(
        &message,
        &[
            &format!("cannot listen on {addr}"),
            "Address already in use",
            "--listen",
        ],
    );
    assert!(
        !db.exists(),
        "a database was made by a run that could not start"
    );
}

#[test]
fn a_malformed_listen_value_is_a_usage_error_naming_it() {
    let (dir, _) = manifests("badlisten");
    for value in ["nonsense", "localhost:9464", "127.0.0.1:99999"] {
        let mut cmd = plain();
        cmd.args(["run", dir.path().to_str().unwrap(), "--listen", value]);
        let out = common::run_with_timeout(cmd, RUN_TIMEOUT);
        let stderr = text(&out);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert_no_panic(&stderr);
        // One error line; clap adds only its pointer to --help.
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with("For more information"))
            .collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert_says(
            lines[0],
            &[
                &format!("invalid value '{value}' for '--listen <ADDR>'"),
                "expected IP:PORT, e.g. 127.0.0.1:9464",
            ],
        );
    }
}

// ---- f: Prometheus unreachable at start ----

#[test]
fn prometheus_unreachable_at_start_runs_degraded_with_one_warning_and_its_ticket() {
    // A loopback port nobody listens on.
    let closed = free_port();
    let f = Fixture::builder("promlost")
        .manifest("cluster.yaml", |cluster| {
            format!(
                "apiVersion: operator/v1\nkind: Cluster\nmetadata:\n  name: {cluster}\nspec:\n  \
                 prometheus:\n    interval: 1s\n    timeout: 1s\n  services:\n    - name: \
                 {cluster}-a\n      image: {BUSYBOX_IMAGE}\n      command: [\"sleep\", \
                 \"3600\"]\n  checks:\n    - name: up\n      healthy: up{{job=\"x\"}}\n      \
                 for: 2s\n"
            )
        })
        .env("PROMETHEUS_URL", &format!("http://127.0.0.1:{closed}"))
        .start();
    let bound = Duration::from_secs(60);
    assert!(
        wait_until(bound, || f.ticket("observability-lost", "-").is_some()),
        "no observability-lost ticket; log:\n{}",
        f.operator.log()
    );
    // Still keeping its containers.
    f.wait_running(&f.name("a"), "the start");
    let (status, body) = f.operator.http_get("/healthz");
    assert!(status.contains("200"), "{status} {body}");
    assert!(
        body.starts_with(&format!(
            "ok (degraded: Prometheus cannot be asked for cluster {};",
            f.cluster
        )),
        "{body}"
    );
    assert_eq!(
        f.operator.metric(&format!(
            "operator_observability_up{{cluster=\"{}\"}}",
            f.cluster
        )),
        Some(0.0)
    );
    let log = f.operator.log();
    assert_no_panic(&log);
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let at = |level: &str| -> Vec<&serde_json::Value> {
        lines.iter().filter(|v| v["level"] == level).collect()
    };
    let warnings = at("WARN");
    assert_eq!(warnings.len(), 1, "not one warning:\n{log}");
    assert!(
        warnings[0]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("observability lost")),
        "{log}"
    );
    assert!(at("ERROR").is_empty(), "{log}");
    // The start said it once, as information, naming the address.
    let noted: Vec<_> = at("INFO")
        .into_iter()
        .filter(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("Prometheus cannot be asked at start"))
        })
        .collect();
    assert_eq!(noted.len(), 1, "{log}");
    assert_eq!(noted[0]["prometheus"], format!("http://127.0.0.1:{closed}"));
}

// ---- the commands that read the database ----

#[test]
fn status_and_tickets_list_name_a_missing_unreadable_or_folder_database_in_one_line() {
    require_root();
    let (dir, file) = manifests("readers");
    let bin = binary_for_nobody(dir.path());
    let m = file.to_str().unwrap();

    let missing = dir.path().join("nothing-here.db");
    let missing = missing.to_str().unwrap();
    for args in [
        vec!["tickets", "list", "--db", missing],
        vec!["status", m, "--db", missing],
    ] {
        let message = one_failure(&plain, &args, 1);
        assert_says(&message, &[&format!("no ticket database at {missing}")]);
    }

    let folder = dir.path().to_str().unwrap();
    for args in [
        vec!["tickets", "list", "--db", folder],
        vec!["status", m, "--db", folder],
    ] {
        let message = one_failure(&plain, &args, 1);
        assert_says(&message, &[&format!("{folder} is a folder")]);
    }

    // A database of root's, 0600, read by uid 65534 in a folder uid 65534 owns: only the
    // file stands in the way.
    let db = nobodys_folder(dir.path(), "shared").join("roots.db");
    // Made by a writer: the commands that read (`tickets list` among them) never make one.
    drop(operator::tickets::Store::open(&db).expect("make the database"));
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();
    let db = db.to_str().unwrap();
    let make = || as_nobody(&bin);
    // `tickets list` only reads, as `status` does: what it lacks is the right to read.
    let message = one_failure(&make, &["tickets", "list", "--db", db], 1);
    assert_says(
        &message,
        &[
            &format!("cannot use the ticket database {db}"),
            "the file is not readable by uid 65534",
            "Permission denied",
        ],
    );
    let message = one_failure(&make, &["status", m, "--db", db], 1);
    assert_says(
        &message,
        &[
            &format!("cannot use the ticket database {db}"),
            "the file is not readable by uid 65534",
        ],
    );
}
