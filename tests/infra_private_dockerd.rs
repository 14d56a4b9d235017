//! Proves that the shared test helpers in tests/common work on this machine, above all the
//! private dockerd that tests kill and restart without disturbing the main engine.

mod common;

use std::collections::HashSet;
use std::path::Path;

use common::{BUSYBOX_IMAGE, Cleanup, PrivateDockerd, TEST_LABEL, docker, docker_ok, unique};

fn assert_fully_gone(dir: &Path, cgroup_name: &str) {
    assert!(!dir.exists(), "{} still exists", dir.display());
    let needle = format!("{}/", dir.display());
    let procs: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rfind(')')
                .is_some_and(|i| stat[i + 1..].trim_start().starts_with('Z'));
            !zombie
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .collect();
    assert!(
        procs.is_empty(),
        "processes of the engine survive: {procs:?}"
    );
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(&needle),
        "mounts under {} survive",
        dir.display()
    );
    let cgroups: Vec<_> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|e| e.path().join(cgroup_name))
        .chain([Path::new("/sys/fs/cgroup").join(cgroup_name)])
        .filter(|p| p.exists())
        .collect();
    assert!(cgroups.is_empty(), "cgroups survive: {cgroups:?}");
}

#[test]
fn private_dockerd_survives_sigkill_and_restarts_with_its_containers() {
    common::require_docker();
    let mut engine = PrivateDockerd::new();
    let host = engine.host();
    assert!(host.starts_with("unix:///"), "{host}");

    // A separate engine: its own data root, nothing shared with the main engine.
    let root = engine.docker_ok(&["info", "--format", "{{.DockerRootDir}}"]);
    assert_eq!(Path::new(&root), engine.dir().join("data"));
    assert_ne!(root, docker_ok(&["info", "--format", "{{.DockerRootDir}}"]));

    engine.import_busybox();
    let name = unique("infra-pd");
    let id = engine.docker_ok(&[
        "run",
        "-d",
        "--network",
        "none",
        "--label",
        TEST_LABEL,
        "--name",
        &name,
        // `sleep` as PID 1 ignores SIGTERM: without this, dockerd waits 10 s each time it
        // stops the container (graceful shutdown, and restore after a crash).
        "--stop-timeout",
        "1",
        BUSYBOX_IMAGE,
        "sleep",
        "600",
    ]);
    assert_eq!(engine.docker_ok(&["exec", &name, "echo", "hello"]), "hello");
    let filter = format!("name=^{name}$");
    assert_eq!(
        docker_ok(&["ps", "-aq", "--filter", &filter]),
        "",
        "the main engine must not see the private engine's container"
    );

    // Crash the engine.
    engine.kill();
    assert!(engine.pid().is_none());
    assert!(!engine.answers(), "a SIGKILLed engine must not answer");

    // Start it again on the same folders: it answers and still knows the container.
    engine.start();
    assert!(engine.answers());
    let listed = engine.docker_ok(&["ps", "-a", "--filter", &filter, "--format", "{{.ID}}"]);
    assert!(
        !listed.is_empty() && id.starts_with(&listed),
        "old container {id} not listed after restart: {listed:?}\n{}",
        engine.log_tail(20)
    );
    // ... and still runs containers.
    assert_eq!(
        engine.docker_ok(&[
            "run",
            "--rm",
            "--network",
            "none",
            BUSYBOX_IMAGE,
            "echo",
            "after-restart"
        ]),
        "after-restart"
    );
    // The old container can be started again.
    engine.docker_ok(&["start", &name]);
    assert_eq!(
        engine.docker_ok(&["inspect", "--format", "{{.State.Running}}", &name]),
        "true"
    );

    // A graceful restart keeps it too.
    engine.restart();
    assert!(id.starts_with(&engine.docker_ok(&["ps", "-aq", "--filter", &filter])));

    // Drop removes everything, even with a running container and after a crash.
    engine.docker_ok(&["start", &name]);
    engine.kill();
    let (dir, cgroup) = (engine.dir().to_path_buf(), engine.name().to_string());
    drop(engine);
    assert_fully_gone(&dir, &cgroup);
}

#[test]
fn private_dockerd_with_live_restore_keeps_containers_running_across_a_crash() {
    common::require_docker();
    let mut engine = PrivateDockerd::with_args(&["--live-restore"]);
    engine.import_busybox();
    let name = unique("infra-live");
    engine.docker_ok(&[
        "run",
        "-d",
        "--network",
        "none",
        "--label",
        TEST_LABEL,
        "--name",
        &name,
        BUSYBOX_IMAGE,
        "sleep",
        "600",
    ]);
    let pid = engine.docker_ok(&["inspect", "--format", "{{.State.Pid}}", &name]);
    engine.kill();
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the container process must outlive the engine"
    );
    engine.start();
    assert_eq!(
        engine.docker_ok(&[
            "inspect",
            "--format",
            "{{.State.Running}} {{.State.Pid}}",
            &name
        ]),
        format!("true {pid}")
    );
    let (dir, cgroup) = (engine.dir().to_path_buf(), engine.name().to_string());
    drop(engine);
    assert_fully_gone(&dir, &cgroup);
}

#[test]
fn cleanup_removes_exactly_its_label() {
    common::require_docker();
    let a = unique("infra-a");
    let b = unique("infra-b");
    let guard_a = Cleanup::new(format!("operator.cluster={a}"));
    let guard_b = Cleanup::new(format!("operator.cluster={b}"));
    for (name, guard) in [(&a, &guard_a), (&b, &guard_b)] {
        docker_ok(&[
            "network",
            "create",
            "--internal",
            "--label",
            TEST_LABEL,
            "--label",
            guard.label(),
            name,
        ]);
        docker_ok(&[
            "run",
            "-d",
            "--network",
            name,
            "--label",
            TEST_LABEL,
            "--label",
            guard.label(),
            "--name",
            name,
            BUSYBOX_IMAGE,
            "sleep",
            "600",
        ]);
    }
    let exists = |kind: &str, name: &str| {
        docker(&[kind, "inspect", "--format", "{{.Name}}", name])
            .status
            .success()
    };
    drop(guard_a);
    assert!(!exists("container", &a) && !exists("network", &a));
    assert!(exists("container", &b) && exists("network", &b));
    drop(guard_b);
    assert!(!exists("container", &b) && !exists("network", &b));
}

#[test]
fn unique_names_do_not_collide() {
    let names: HashSet<String> = (0..10_000).map(|_| unique("n")).collect();
    assert_eq!(names.len(), 10_000);
    let name = unique("etcd-cluster");
    assert!(name.starts_with(&format!("etcd-cluster-{}-", std::process::id())));
    assert!(
        name.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
        "{name}"
    );
}

/// Whether a process runs (not gone, not a zombie).
fn runs(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rfind(')')
            .is_some_and(|i| stat[i + 1..].trim_start().starts_with('Z'))
    })
}

#[test]
fn a_timed_out_command_is_stopped_with_what_it_started() {
    // The shell's child keeps the output pipe open: stopping the shell alone would leave it
    // running and the readers waiting for it (300 s).
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", "sleep 300 & echo $!; wait"]);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(common::run_with_timeout(
            cmd,
            std::time::Duration::from_secs(1),
        ));
    });
    let out = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("run_with_timeout did not return within 60 s of its 1 s timeout");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("killed after"));
    let sleeper: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("the background sleep's pid");
    assert!(!runs(sleeper), "the background sleep {sleeper} still runs");
}
