//! The session's toolbox on a real engine, without a session around it: what a command in
//! it can see and do (nothing of the controller's: its user, files, environment, network,
//! privileges), and how a command is bounded (its timeout kills its whole group, a process
//! left holding its output is killed once it ended, output is capped) and ends with the
//! toolbox (nothing of it survives removal).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use operator::agent::shell::{ChildEnv, EnvPolicy, ShellLimits, ShellOutput};
use operator::agent::toolbox::{self, Toolbox, ToolboxSpec};

use common::operator::TempDir;
use common::{docker, require_docker, unique};

/// The engine's client, as the controller makes it.
async fn engine() -> bollard::Docker {
    operator::docker::connect(Duration::from_secs(10))
        .await
        .expect("the engine answers")
}

struct Started {
    toolbox: Toolbox,
    _dir: TempDir,
    db: PathBuf,
}

impl Drop for Started {
    // Also when a test panics: a toolbox left behind would live out its lifetime.
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", self.toolbox.name()]);
    }
}

async fn start(network: Option<String>) -> Started {
    require_docker();
    let dir = TempDir::new(&unique("toolbox"));
    let db = dir.path().join("tickets.db");
    let session = unique("s");
    let sockets = dir.path().join("sock");
    std::fs::create_dir_all(&sockets).unwrap();
    let spec = ToolboxSpec::new(toolbox::DEFAULT_IMAGE, sockets, &db)
        .network(network)
        .lifetime(Duration::from_secs(120));
    let toolbox = Toolbox::start(&engine().await, &session, &spec)
        .await
        .expect("the toolbox starts (scripts/setup.sh builds its image)");
    Started {
        toolbox,
        _dir: dir,
        db,
    }
}

fn redact() -> ChildEnv {
    ChildEnv::build(Vec::<(String, String)>::new(), &EnvPolicy::default())
}

async fn run(b: &Started, command: &str, limits: &ShellLimits) -> ShellOutput {
    // Hang guard only: generous, never a measurement.
    tokio::time::timeout(
        Duration::from_secs(120),
        b.toolbox.run(command, limits, &redact()),
    )
    .await
    .expect("a command returns within its bounds")
    .expect("the command starts")
}

#[tokio::test]
async fn a_command_sees_nothing_of_the_controller_and_has_no_privilege() {
    let b = start(None).await;
    let limits = ShellLimits::default();
    let out = run(&b, "id -u; id -g; echo hi >&2; exit 3", &limits).await;
    assert_eq!(out.exit_code, Some(3), "{out:?}");
    assert_eq!(out.stdout, "65534\n65534\n");
    assert_eq!(out.stderr, "hi\n");

    // Its environment is the toolbox's own four variables, and what the engine and sh add.
    let env = run(&b, "env | sort", &limits).await;
    let names: Vec<&str> = env
        .stdout
        .lines()
        .filter_map(|l| l.split_once('=').map(|(n, _)| n))
        .collect();
    assert_eq!(
        names,
        ["DOCKER_HOST", "HOME", "HOSTNAME", "LANG", "PATH", "PWD"],
        "{}",
        env.stdout
    );
    // Read-only root, writable tmpfs; no capability; no network but loopback; its own PIDs.
    let fs = run(
        &b,
        "touch /etc/x 2>&1; touch /tmp/x && echo tmp-ok; grep CapEff /proc/self/status; ls /sys/class/net; cat /proc/1/cmdline | tr '\\0' ' '",
        &limits,
    )
    .await;
    assert!(fs.stdout.contains("Read-only file system"), "{fs:?}");
    assert!(fs.stdout.contains("tmp-ok"), "{fs:?}");
    assert!(fs.stdout.contains("CapEff:\t0000000000000000"), "{fs:?}");
    assert!(fs.stdout.contains("\nlo\n"), "{fs:?}");
    assert!(!fs.stdout.contains("eth0"), "{fs:?}");
    assert!(
        fs.stdout.contains("sh -c end="),
        "PID 1 is the toolbox's own: {fs:?}"
    );
    // Nothing of the controller's is mounted: not its database, not the engine's socket.
    let files = run(
        &b,
        &format!(
            "ls {} 2>&1; ls /var/run/docker.sock 2>&1; ls /run/operator",
            b.db.display()
        ),
        &limits,
    )
    .await;
    assert_eq!(
        files.stdout.matches("No such file or directory").count(),
        2,
        "{files:?}"
    );
    // No privilege can be gained: no-new-privileges holds even for a setuid binary.
    let su = run(&b, "grep NoNewPrivs /proc/self/status", &limits).await;
    assert!(su.stdout.contains("NoNewPrivs:\t1"), "{su:?}");
    b.toolbox.remove().await;
}

#[tokio::test]
async fn a_timeout_kills_the_whole_group_and_leftovers_holding_the_output_go_when_it_ends() {
    let b = start(None).await;
    let marker = unique("tbx").replace('-', "");
    // Past its timeout: the command and its background child both go.
    let limits = ShellLimits::default()
        .timeout(Duration::from_secs(1))
        .kill_grace(Duration::from_secs(1));
    let out = run(&b, &format!("sleep 71 & exec sleep 72 # {marker}"), &limits).await;
    assert!(out.timed_out, "{out:?}");
    assert!(
        out.note.as_deref().unwrap_or("").contains("timeout"),
        "{out:?}"
    );
    let left = run(
        &b,
        "ps -eo args 2>/dev/null || cat /proc/[0-9]*/cmdline",
        &ShellLimits::default(),
    )
    .await;
    assert!(
        !left.stdout.contains("sleep 71") && !left.stdout.contains("sleep 72"),
        "{left:?}"
    );

    // A background process of the command's (holding its output open, or not) is killed
    // once the command itself ended.
    let limits = ShellLimits::default().timeout(Duration::from_secs(60));
    let out = run(&b, "sleep 73 & echo started", &limits).await;
    assert_eq!(out.stdout, "started\n", "{out:?}");
    assert_eq!(out.exit_code, Some(0), "{out:?}");
    let out = run(&b, "sleep 74 >/dev/null 2>&1 & echo started", &limits).await;
    assert_eq!(out.stdout, "started\n", "{out:?}");
    let mut left = String::new();
    for _ in 0..50 {
        left = run(
            &b,
            "cat /proc/[0-9]*/cmdline | tr '\\0' ' '",
            &ShellLimits::default(),
        )
        .await
        .stdout;
        if !left.contains("sleep 73") && !left.contains("sleep 74") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !left.contains("sleep 73") && !left.contains("sleep 74"),
        "a command's leftovers outlived it: {left}"
    );
    b.toolbox.remove().await;
}

#[tokio::test]
async fn megabytes_of_output_are_capped_and_the_toolbox_takes_everything_with_it() {
    let b = start(None).await;
    let limits = ShellLimits::default().output_cap(10_000);
    let out = run(
        &b,
        "head -c 5000000 /dev/zero | tr '\\0' a; echo end >&2",
        &limits,
    )
    .await;
    assert!(out.stdout.len() < 12_000, "{} bytes", out.stdout.len());
    assert_eq!(out.stdout_bytes, 5_000_000);
    assert_eq!(out.stderr, "end\n", "a short stream is never cut");
    assert!(out.truncated);

    // A process that left the command's session runs until the toolbox goes, then not.
    let seconds = format!("9{}", std::process::id() % 10000);
    let _ = run(
        &b,
        &format!("setsid -f sleep {seconds}"),
        &ShellLimits::default(),
    )
    .await;
    let name = b.toolbox.name().to_string();
    b.toolbox.remove().await;
    assert!(
        !docker(&["inspect", &name]).status.success(),
        "the toolbox was not removed"
    );
    let survivors: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).into_owned())
        // Exactly this argv: another test's sleep cannot match it.
        .filter(|c| {
            c.split('\0')
                .filter(|a| !a.is_empty())
                .eq(["sleep", seconds.as_str()])
        })
        .collect();
    assert!(survivors.is_empty(), "{survivors:?}");
}

#[tokio::test]
async fn a_missing_image_is_an_error_naming_the_fix_and_only_a_database_s_own_toolboxes_are_listed()
{
    require_docker();
    let docker = engine().await;
    let dir = TempDir::new(&unique("toolbox"));
    let db = dir.path().join("tickets.db");
    let spec = ToolboxSpec::new(
        "operator-no-such-image:latest",
        dir.path().to_path_buf(),
        &db,
    );
    let Err(e) = Toolbox::start(&docker, &unique("s"), &spec).await else {
        panic!("a toolbox started without its image");
    };
    let e = e.to_string();
    assert!(
        e.contains("operator-no-such-image:latest")
            && e.contains("scripts/build-image.sh --toolbox"),
        "{e}"
    );

    // A toolbox its controller left: found by its database, removed; another database's
    // is not touched.
    let b = start(None).await;
    let other = start(None).await;
    let found = toolbox::list(&docker, &b.db).await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    for f in &found {
        toolbox::remove_found(&docker, f).await;
    }
    assert!(!docker_inspect(b.toolbox.name()));
    assert!(
        docker_inspect(other.toolbox.name()),
        "another database's toolbox"
    );
    other.toolbox.remove().await;
}

fn docker_inspect(name: &str) -> bool {
    docker(&["inspect", name]).status.success()
}

/// Approve mode's sweep after each command: what a command left running (even in a session
/// of its own) is gone, and the toolbox still serves the next command.
#[tokio::test]
async fn killing_the_leftovers_spares_the_toolbox_itself() {
    let b = start(None).await;
    let limits = ShellLimits::default();
    let marker = format!("sleep 8{}", std::process::id() % 10000);
    let out = run(
        &b,
        &format!("setsid -f {marker}; nohup sleep 97 >/dev/null 2>&1 & echo ok"),
        &limits,
    )
    .await;
    assert_eq!(out.stdout, "ok\n", "{out:?}");
    let listed = || async {
        run(
            &b,
            "cat /proc/[0-9]*/cmdline | tr '\\0' ' '",
            &ShellLimits::default(),
        )
        .await
        .stdout
    };
    assert!(listed().await.contains(&marker), "the leftover runs");
    b.toolbox.kill_leftovers().await;
    let after = listed().await;
    assert!(
        !after.contains(&marker) && !after.contains("sleep 97"),
        "{after}"
    );
    assert!(after.contains("sh -c end="), "PID 1 survives: {after}");
    b.toolbox.remove().await;
}
