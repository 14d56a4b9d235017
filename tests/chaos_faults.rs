//! Chaos faults on a real engine: each container kind applied to a labelled busybox
//! container and undone (the container's state checked, and the ledger's row); faults left
//! by a runner that died are undone by `operator chaos cleanup` and by a controller's start;
//! a network fault on a host-networked target is refused before anything is written.
//!
//! Every container and network is labelled with a unique cluster and removed by a
//! [`Cleanup`]; containers run on an `--internal` network of their own.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use common::operator::{TempDir, inspect, operator, wait_until};
use common::{BUSYBOX_IMAGE, Cleanup, Fixture, TEST_LABEL, docker_ok, require_docker, unique};
use operator::chaos::fault::{
    FaultError, FaultTarget, Faults, Holder, Undo, disk, procfs, recipe_of,
};
use operator::chaos::netfault;
use operator::chaos::spec::FaultKind;
use operator::tickets::{ChaosRun, FaultState, Store};

/// A process that exits promptly on SIGTERM (busybox `sleep` as PID 1 would ignore it).
const LOOP: &str = "trap 'exit 0' TERM; while true; do sleep 1; done";

/// One test's cluster: its label cleanup, internal network, ticket database and faults.
struct Env {
    cluster: String,
    network: String,
    dir: TempDir,
    store: Arc<Store>,
    faults: Faults,
    // Dropped last: the containers go after everything else.
    _cleanup: Cleanup,
}

impl Env {
    async fn new(prefix: &str) -> Env {
        require_docker();
        let cluster = unique(prefix);
        let cleanup = Cleanup::new(format!("operator.cluster={cluster}"));
        let network = format!("{cluster}-net");
        docker_ok(&[
            "network",
            "create",
            "--internal",
            "--label",
            TEST_LABEL,
            "--label",
            &format!("operator.cluster={cluster}"),
            &network,
        ]);
        let dir = TempDir::new(&cluster);
        Env::on_db(cluster, network, dir, cleanup).await
    }

    async fn on_db(cluster: String, network: String, dir: TempDir, cleanup: Cleanup) -> Env {
        let store = Arc::new(Store::open(&dir.path().join("tickets.db")).expect("open the db"));
        let faults = Faults::connect(store.clone(), Duration::from_secs(10))
            .await
            .expect("connect to the engine");
        Env {
            cluster,
            network,
            dir,
            store,
            faults,
            _cleanup: cleanup,
        }
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("tickets.db")
    }

    /// Starts service `service`'s container (`<cluster>-<service>`), labelled as the
    /// controller labels its own, on the internal network (or `network`).
    fn container(&self, service: &str, extra: &[&str]) -> String {
        let name = format!("{}-{service}", self.cluster);
        let labels = [
            "operator.managed-by=operator".to_string(),
            format!("operator.cluster={}", self.cluster),
            format!("operator.service={service}"),
            TEST_LABEL.to_string(),
        ];
        let mut args = vec!["run", "-d", "--name", &name];
        for l in &labels {
            args.extend(["--label", l]);
        }
        if !extra.contains(&"--network") {
            args.extend(["--network", &self.network]);
        }
        args.extend(extra);
        args.extend([BUSYBOX_IMAGE, "sh", "-c", LOOP]);
        docker_ok(&args);
        name
    }

    fn target(&self, service: &str) -> FaultTarget {
        FaultTarget {
            cluster: self.cluster.clone(),
            service: service.to_string(),
            container: format!("{}-{service}", self.cluster),
            network: Some(self.network.clone()),
            stop_timeout: Some(Duration::from_secs(5)),
            ..Default::default()
        }
    }

    /// Records a run held by `holder`.
    fn run(&self, holder: &Holder) -> String {
        let id = unique("run");
        self.store
            .chaos_run_started(&ChaosRun {
                id: id.clone(),
                drill: "test".into(),
                drill_file: "drill.yaml".into(),
                cluster: self.cluster.clone(),
                report_dir: self.dir.path().join("report"),
                holder: holder.name.clone(),
                holder_pid: holder.pid,
                holder_start: holder.start,
                started_at: Utc::now(),
                ended_at: None,
                status: "running".into(),
            })
            .expect("record the run");
        id
    }

    fn state(&self, id: i64) -> FaultState {
        self.store.fault(id).unwrap().unwrap().state
    }
}

/// A holder that is gone: a process that ran and exited.
fn dead_holder() -> Holder {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    Holder {
        name: format!("pid {pid} on {}", operator::chaos::fault::procfs::place()),
        pid,
        start: Some(1),
    }
}

fn field(name: &str, pointer: &str) -> serde_json::Value {
    inspect(name, None)
        .and_then(|c| c.pointer(pointer).cloned())
        .unwrap_or(serde_json::Value::Null)
}

fn paused(name: &str) -> bool {
    field(name, "/State/Paused") == true
}

fn running(name: &str) -> bool {
    field(name, "/State/Running") == true
}

fn main_pid(name: &str) -> u32 {
    field(name, "/State/Pid").as_u64().unwrap_or(0) as u32
}

/// The state letter of `/proc/PID/stat`.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn on_network(name: &str, network: &str) -> bool {
    !field(name, &format!("/NetworkSettings/Networks/{network}")).is_null()
}

#[tokio::test]
async fn held_container_faults_are_applied_and_undone_idempotently() {
    let env = Env::new("chaos-held").await;
    let name = env.container("app", &[]);
    let run = env.run(&Holder::current());
    let t = env.target("app");

    // pause / unpause
    let a = env
        .faults
        .inject(&run, 1, &t, &FaultKind::Pause)
        .await
        .unwrap();
    assert!(paused(&name));
    assert_eq!(env.state(a.ledger_id), FaultState::Applied);
    env.faults.undo(&a).await.unwrap();
    assert!(!paused(&name) && running(&name));
    assert_eq!(env.state(a.ledger_id), FaultState::Undone);
    env.faults.undo(&a).await.unwrap();
    // A container paused by someone else is refused: undoing the fault would unpause it.
    docker_ok(&["pause", &name]);
    let err = env
        .faults
        .inject(&run, 1, &t, &FaultKind::Pause)
        .await
        .unwrap_err();
    assert!(matches!(err, FaultError::NotRunning { .. }), "{err}");
    assert!(err.to_string().contains("paused"), "{err}");
    docker_ok(&["unpause", &name]);

    // stop / start
    let a = env
        .faults
        .inject(&run, 1, &t, &FaultKind::Stop)
        .await
        .unwrap();
    assert!(!running(&name));
    env.faults.undo(&a).await.unwrap();
    assert!(running(&name));
    assert_eq!(env.state(a.ledger_id), FaultState::Undone);

    // freeze (SIGSTOP) / SIGCONT
    let pid = main_pid(&name);
    let a = env
        .faults
        .inject(&run, 1, &t, &FaultKind::Freeze)
        .await
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || proc_state(pid) == Some('T')),
        "{:?}",
        proc_state(pid)
    );
    env.faults.undo(&a).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || proc_state(pid) != Some('T')),
        "{:?}",
        proc_state(pid)
    );
    env.faults.undo(&a).await.unwrap();

    // network disconnect / reconnect, with the address it had
    let ip = field(
        &name,
        &format!("/NetworkSettings/Networks/{}/IPAddress", env.network),
    );
    let kind = FaultKind::NetworkDisconnect { network: None };
    let a = env.faults.inject(&run, 1, &t, &kind).await.unwrap();
    assert!(!on_network(&name, &env.network));
    assert!(matches!(a.undo, Undo::Reconnect { .. }), "{:?}", a.undo);
    env.faults.undo(&a).await.unwrap();
    assert!(on_network(&name, &env.network));
    let aliases = field(
        &name,
        &format!("/NetworkSettings/Networks/{}/Aliases", env.network),
    );
    assert!(!aliases.is_null(), "reconnected without its aliases");
    assert!(ip.is_string());
    // Disconnecting from a network it is not on is refused before anything is written.
    let before = env.store.faults(Some(&run)).unwrap().len();
    let other = FaultKind::NetworkDisconnect {
        network: Some("no-such-net".into()),
    };
    let err = env.faults.inject(&run, 1, &t, &other).await.unwrap_err();
    assert!(matches!(err, FaultError::NotConnected { .. }), "{err}");
    assert_eq!(env.store.faults(Some(&run)).unwrap().len(), before);
    assert!(env.store.faults_left(Some(&run)).unwrap().is_empty());
}

#[tokio::test]
async fn instant_faults_are_over_once_applied() {
    let env = Env::new("chaos-instant").await;
    let name = env.container("app", &[]);
    let run = env.run(&Holder::current());
    let t = env.target("app");

    let started = field(&name, "/State/StartedAt");
    let a = env
        .faults
        .inject(&run, 1, &t, &FaultKind::Restart)
        .await
        .unwrap();
    assert!(a.instant && running(&name));
    assert_ne!(field(&name, "/State/StartedAt"), started, "not restarted");
    assert_eq!(env.state(a.ledger_id), FaultState::Undone);

    let kill = FaultKind::Kill {
        signal: "SIGKILL".into(),
    };
    let a = env.faults.inject(&run, 1, &t, &kill).await.unwrap();
    assert!(wait_until(Duration::from_secs(10), || !running(&name)));
    assert_eq!(field(&name, "/State/ExitCode"), 137);
    assert_eq!(env.state(a.ledger_id), FaultState::Undone);
    env.faults.undo(&a).await.unwrap();
    assert!(!running(&name), "an instant fault's undo does nothing");

    let a = env
        .faults
        .inject(&run, 1, &t, &FaultKind::Remove)
        .await
        .unwrap();
    assert!(inspect(&name, None).is_none());
    assert_eq!(env.state(a.ledger_id), FaultState::Undone);
    // The container is gone: injecting again names it.
    let err = env
        .faults
        .inject(&run, 1, &t, &FaultKind::Pause)
        .await
        .unwrap_err();
    assert!(matches!(err, FaultError::NoContainer { .. }), "{err}");
}

#[tokio::test]
async fn a_container_the_controller_does_not_own_is_refused() {
    let env = Env::new("chaos-owned").await;
    env.container("app", &[]);
    let run = env.run(&Holder::current());
    let mut t = env.target("app");
    t.service = "db".into(); // the container is labelled service app
    let err = env
        .faults
        .inject(&run, 1, &t, &FaultKind::Pause)
        .await
        .unwrap_err();
    assert!(matches!(err, FaultError::NotOwned { .. }), "{err}");
    assert!(!paused(&t.container));
    assert!(env.store.faults(Some(&run)).unwrap().is_empty());
}

#[tokio::test]
async fn disk_fill_fills_the_volume_to_its_share_and_undo_deletes_the_file() {
    let env = Env::new("chaos-disk").await;
    // A small tmpfs volume: the fill never touches the host's disk.
    let volume = format!("{}-data", env.cluster);
    docker_ok(&[
        "volume",
        "create",
        "--label",
        &format!("operator.cluster={}", env.cluster),
        "--label",
        TEST_LABEL,
        "--opt",
        "type=tmpfs",
        "--opt",
        "device=tmpfs",
        "--opt",
        "o=size=16m",
        &volume,
    ]);
    env.container("db", &["-v", &format!("{volume}:/data")]);
    let run = env.run(&Holder::current());
    let t = env.target("db");
    let kind = FaultKind::DiskFill {
        volume: "/data".into(),
        percent: 60,
    };
    let a = env.faults.inject(&run, 1, &t, &kind).await.unwrap();
    let Undo::DeleteFile { path } = &a.undo else {
        panic!("{:?}", a.undo)
    };
    assert_eq!(
        path.file_name().unwrap().to_string_lossy(),
        format!(".operator-chaos-fill-{}", a.ledger_id)
    );
    let dir = path.parent().unwrap();
    let share = |d: &Path| {
        let u = disk::usage(d).unwrap();
        u.used as f64 / u.total as f64
    };
    assert!(path.exists());
    assert!(share(dir) >= 0.59, "{}", share(dir));
    // The same filesystem the container sees.
    let df = docker_ok(&["exec", &t.container, "ls", "-a", "/data"]);
    assert!(df.contains(".operator-chaos-fill-"), "{df}");

    env.faults.undo(&a).await.unwrap();
    assert!(!path.exists());
    assert!(share(dir) < 0.1, "{}", share(dir));
    // A volume the container does not mount is refused, naming its mounts.
    let other = FaultKind::DiskFill {
        volume: "/nope".into(),
        percent: 50,
    };
    let err = env.faults.inject(&run, 1, &t, &other).await.unwrap_err();
    assert!(err.to_string().contains("/data"), "{err}");
}

#[tokio::test]
async fn cpu_stress_workers_join_the_containers_cgroup_and_undo_kills_them() {
    let env = Env::new("chaos-cpu").await;
    let name = env.container("app", &[]);
    let id = field(&name, "/Id").as_str().unwrap().to_string();
    let run = env.run(&Holder::current());
    let t = env.target("app");
    let a = env
        .faults
        .inject(&run, 1, &t, &FaultKind::CpuStress { workers: 2 })
        .await
        .unwrap();
    let Undo::KillMarked { marker, pids } = &a.undo else {
        panic!("{:?}", a.undo)
    };
    assert_eq!(pids.len(), 2);
    for pid in pids {
        let cgroup = procfs::cgroup(*pid).unwrap();
        let cpu = cgroup
            .lines()
            .find(|l| {
                l.split(':')
                    .nth(1)
                    .is_some_and(|c| c.split(',').any(|c| c == "cpu"))
            })
            .unwrap_or_default();
        assert!(
            cpu.contains(&id),
            "worker {pid} not in the container's cpu cgroup: {cgroup}"
        );
    }
    // The recipe is in the ledger row, not only in memory.
    let row = env.store.fault(a.ledger_id).unwrap().unwrap();
    assert_eq!(recipe_of(&row).unwrap(), a.undo);
    assert_eq!(procfs::pids_with_marker(marker).len(), 2);

    env.faults.undo(&a).await.unwrap();
    assert!(procfs::pids_with_marker(marker).is_empty());
    assert_eq!(env.state(a.ledger_id), FaultState::Undone);
}

#[tokio::test]
async fn network_faults_are_planned_into_the_ledger_and_cleanup_takes_their_rules_back() {
    let env = Env::new("chaos-net").await;
    let a = env.container("a", &[]);
    let b = env.container("b", &[]);
    let run = env.run(&dead_holder());
    let mut t = env.target("a");
    t.peers = vec![operator::chaos::fault::Peer {
        service: "b".into(),
        container: b.clone(),
    }];
    let loss = env
        .faults
        .inject(&run, 1, &t, &FaultKind::Loss { probability: 1.0 })
        .await
        .unwrap();
    let kind = FaultKind::Partition {
        from: vec!["b".into()],
    };
    let part = env.faults.inject(&run, 1, &t, &kind).await.unwrap();
    // The plan (every rule, in which namespace) is in the ledger row.
    for f in [&loss, &part] {
        let row = env.store.fault(f.ledger_id).unwrap().unwrap();
        assert_eq!(row.state, FaultState::Applied);
        let Undo::Net {
            undo: Some(plan),
            tag,
            ..
        } = recipe_of(&row).unwrap()
        else {
            panic!("{:?}", row.undo)
        };
        assert!(
            tag.starts_with(netfault::TAG_PREFIX) && tag.ends_with(&format!("-{}", f.ledger_id))
        );
        assert_eq!(plan["tag"], tag.as_str());
    }
    let rules = |name: &str| {
        let pid = main_pid(name);
        async move { netfault::leftovers(pid).await.unwrap() }
    };
    assert!(!rules(&a).await.is_empty());
    assert!(
        !rules(&b).await.is_empty(),
        "the partition's rules in the peer"
    );

    // The runner is gone: cleanup takes every rule back, in both namespaces.
    let out = operator(
        &["chaos", "cleanup", "--db", env.db().to_str().unwrap()],
        None,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(rules(&a).await.is_empty(), "{:?}", rules(&a).await);
    assert!(rules(&b).await.is_empty(), "{:?}", rules(&b).await);
    assert_eq!(env.state(loss.ledger_id), FaultState::Undone);
    assert_eq!(env.state(part.ledger_id), FaultState::Undone);
}

#[tokio::test]
async fn a_network_fault_on_a_host_networked_target_is_refused() {
    let env = Env::new("chaos-hostnet").await;
    env.container("app", &["--network", "host"]);
    let run = env.run(&Holder::current());
    let t = env.target("app");
    let err = env
        .faults
        .inject(&run, 1, &t, &FaultKind::Loss { probability: 0.5 })
        .await
        .unwrap_err();
    assert!(matches!(err, FaultError::SharedNetwork { .. }), "{err}");
    assert!(err.to_string().contains("\"host\""), "{err}");
    assert!(
        env.store.faults(Some(&run)).unwrap().is_empty(),
        "a row was written"
    );
}

#[tokio::test]
async fn cleanup_undoes_what_a_dead_runner_left_and_only_forced_what_a_live_one_holds() {
    let env = Env::new("chaos-cleanup").await;
    let paused_one = env.container("a", &[]);
    let frozen_one = env.container("b", &[]);
    let live_one = env.container("c", &[]);
    let dead_run = env.run(&dead_holder());
    let live_run = env.run(&Holder::current());
    let p = env
        .faults
        .inject(&dead_run, 1, &env.target("a"), &FaultKind::Pause)
        .await
        .unwrap();
    let f = env
        .faults
        .inject(&dead_run, 1, &env.target("b"), &FaultKind::Freeze)
        .await
        .unwrap();
    let l = env
        .faults
        .inject(&live_run, 1, &env.target("c"), &FaultKind::Pause)
        .await
        .unwrap();
    let frozen_pid = main_pid(&frozen_one);
    assert!(wait_until(Duration::from_secs(5), || proc_state(
        frozen_pid
    ) == Some('T')));
    // The runner "dies": nothing is undone in-process.
    let db = env.db();
    let db = db.to_str().unwrap();

    let out = operator(&["chaos", "cleanup", "--db", db], None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("undone: fault {}", p.ledger_id)),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("undone: fault {}", f.ledger_id)),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("left: fault {}", l.ledger_id)),
        "{stdout}"
    );
    assert!(!paused(&paused_one));
    assert!(wait_until(Duration::from_secs(5), || proc_state(
        frozen_pid
    ) != Some('T')));
    assert!(
        paused(&live_one),
        "the live run's fault was undone without --force"
    );
    assert_eq!(env.state(p.ledger_id), FaultState::Undone);
    assert_eq!(env.state(f.ledger_id), FaultState::Undone);
    assert_eq!(env.state(l.ledger_id), FaultState::Applied);
    let dead = env.store.chaos_run(&dead_run).unwrap().unwrap();
    assert_eq!(dead.status, "interrupted");
    assert_eq!(
        env.store.chaos_run(&live_run).unwrap().unwrap().status,
        "running"
    );

    let out = operator(&["chaos", "cleanup", "--db", db, "--force", "--json"], None);
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["undone"][0]["fault"]["id"], l.ledger_id, "{json:#}");
    assert_eq!(json["undone"][0]["undone"], true, "{json:#}");
    assert!(!paused(&live_one));
    assert_eq!(
        env.store.chaos_run(&live_run).unwrap().unwrap().status,
        "running"
    );

    // Nothing left: says so, exit 0.
    let out = operator(&["chaos", "cleanup", "--db", db], None);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("no fault left to undo"));
}

#[tokio::test]
async fn cleanup_exits_1_when_a_fault_cannot_be_undone() {
    let env = Env::new("chaos-cleanup-fail").await;
    let name = env.container("a", &[]);
    let run = env.run(&dead_holder());
    let a = env
        .faults
        .inject(
            &run,
            1,
            &env.target("a"),
            &FaultKind::NetworkDisconnect { network: None },
        )
        .await
        .unwrap();
    // The network it is to be reconnected to is removed under it.
    docker_ok(&["network", "rm", &env.network]);
    let out = operator(
        &["chaos", "cleanup", "--db", env.db().to_str().unwrap()],
        None,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("FAILED to undo fault {}", a.ledger_id)),
        "{stdout}"
    );
    let row = env.store.fault(a.ledger_id).unwrap().unwrap();
    assert_eq!(row.state, FaultState::Failed);
    assert!(row.undo_error.unwrap().contains(&env.network));
    assert!(running(&name));
}

#[tokio::test]
async fn a_controller_start_undoes_what_a_dead_runner_left() {
    let builder = Fixture::builder("chaos-start").manifest("cluster.yaml", |c| {
        common::cluster_yaml(
            c,
            &format!(
                "    - name: {c}-web\n      image: {BUSYBOX_IMAGE}\n      command: [\"sh\", \"-c\", \"{LOOP}\"]\n"
            ),
        )
    });
    let cluster = builder.cluster().to_string();
    // A container of the cluster the manifest does not declare: the controller leaves it
    // alone, so only the start's sweep can unpause it.
    let network = format!("{cluster}-chaosnet");
    docker_ok(&[
        "network",
        "create",
        "--internal",
        "--label",
        TEST_LABEL,
        "--label",
        &format!("operator.cluster={cluster}"),
        &network,
    ]);
    let db = builder.db().to_path_buf();
    let dir = TempDir::new(&format!("{cluster}-env"));
    let env = Env::on_db(
        cluster.clone(),
        network,
        dir,
        Cleanup::new(format!("operator.cluster={cluster}")),
    )
    .await;
    // The controller's own database.
    let store = Arc::new(Store::open(&db).unwrap());
    let faults = Faults::connect(store.clone(), Duration::from_secs(10))
        .await
        .unwrap();
    let victim = env.container("victim", &[]);
    let holder = dead_holder();
    let run = format!("{}-{}", Utc::now().format("%Y%m%dT%H%M%SZ"), "0badc0de");
    store
        .chaos_run_started(&ChaosRun {
            id: run.clone(),
            drill: "test".into(),
            drill_file: "drill.yaml".into(),
            cluster: cluster.clone(),
            report_dir: "report".into(),
            holder: holder.name.clone(),
            holder_pid: holder.pid,
            holder_start: holder.start,
            started_at: Utc::now(),
            ended_at: None,
            status: "running".into(),
        })
        .unwrap();
    let a = faults
        .inject(&run, 1, &env.target("victim"), &FaultKind::Pause)
        .await
        .unwrap();
    assert!(paused(&victim));

    let f = builder.start();
    assert!(
        wait_until(Duration::from_secs(30), || !paused(&victim)),
        "still paused; log:\n{}",
        f.operator.log()
    );
    assert!(
        wait_until(Duration::from_secs(10), || store
            .fault(a.ledger_id)
            .unwrap()
            .unwrap()
            .state
            == FaultState::Undone),
        "the ledger does not say it was undone; log:\n{}",
        f.operator.log()
    );
    f.wait_running(&f.name("web"), "the start");
}
