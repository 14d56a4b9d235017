//! Health-check benchmark, against a real Prometheus scraping a real three-member etcd.
//!
//! 1. Time from a target going down (its etcd member SIGSTOPped) to its `check-failed`
//!    ticket being committed, against the floor set by the scrape interval and `for`.
//! 2. The cost of one evaluation round of 50 PromQL checks.
//!
//! Needs `scripts/setup.sh` (Docker, the local images, Debian's etcd and prometheus).
//!
//!     cargo bench --bench checks -- [RUNS] [ROUNDS]        (defaults 15 and 30)

#[path = "../tests/common/mod.rs"]
mod common;
mod stats;

use std::process::Command;
use std::time::{Duration, Instant};

use common::prometheus::Prometheus;
use common::{EMPTY_IMAGE, Fixture, docker_ok, free_port};
use operator::health::Monitor;
use operator::tickets::Store;
use stats::summary;

const SCRAPE: Duration = Duration::from_secs(1);
const FOR: Duration = Duration::from_secs(2);
const INTERVAL: Duration = Duration::from_secs(1);

/// The scrape interval is Prometheus' (see [`Prometheus::start`]).
fn manifest(
    cluster: &str,
    client: &[u16; 3],
    peer: &[u16; 3],
    prom: u16,
    extra_checks: usize,
) -> String {
    let initial: Vec<String> = (0..3)
        .map(|i| format!("e{i}=http://127.0.0.1:{}", peer[i]))
        .collect();
    let mut services = String::new();
    for i in 0..3 {
        services += &format!(
            "    - name: {cluster}-e{i}\n      image: {EMPTY_IMAGE}\n      networkMode: host\n      volumes: [\"/usr:/usr:ro\", \"/lib:/lib:ro\", \"/lib64:/lib64:ro\", \"/bin:/bin:ro\", \"/etc:/etc:ro\"]\n      command: [\"/usr/bin/etcd\", \"--name\", \"e{i}\", \"--data-dir\", \"/data\", \"--listen-client-urls\", \"http://127.0.0.1:{c}\", \"--advertise-client-urls\", \"http://127.0.0.1:{c}\", \"--listen-peer-urls\", \"http://127.0.0.1:{p}\", \"--initial-advertise-peer-urls\", \"http://127.0.0.1:{p}\", \"--initial-cluster\", \"{init}\", \"--initial-cluster-state\", \"new\"]\n",
            c = client[i],
            p = peer[i],
            init = initial.join(",")
        );
    }
    let map: Vec<String> = (0..3)
        .map(|i| format!("\"127.0.0.1:{}\": {cluster}-e{i}", client[i]))
        .collect();
    let mut checks = format!(
        "    - name: member-up\n      expr: 'up{{job=\"etcd\"}} == 0'\n      for: {}s\n      serviceLabel: instance\n      services: {{{}}}\n",
        FOR.as_secs(),
        map.join(", ")
    );
    for n in 0..extra_checks {
        checks += &format!(
            "    - name: load-{n}\n      expr: 'sum by (instance) (rate(etcd_server_proposals_committed_total[1m])) < -{n}'\n"
        );
    }
    format!(
        "apiVersion: operator/v1\nkind: Cluster\nmetadata:\n  name: {cluster}\nspec:\n  prometheus: {{url: \"http://127.0.0.1:{prom}\", interval: {}s, timeout: 2s}}\n  services:\n{services}  checks:\n{checks}",
        INTERVAL.as_secs()
    )
}

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse::<usize>().ok());
    let runs = args.next().unwrap_or(15);
    let rounds = args.next().unwrap_or(30);
    let fixture = Fixture::builder("benchck");
    let client = [free_port(), free_port(), free_port()];
    let peer = [free_port(), free_port(), free_port()];
    let prom = Prometheus::start(
        fixture.dir().path().join("prom"),
        free_port(),
        "etcd",
        &client,
    );
    let port = prom.port();
    let f = fixture
        .manifest("cluster.yaml", |c| manifest(c, &client, &peer, port, 49))
        .start();
    let e0 = f.name("e0");
    for i in 0..3 {
        f.wait_running(&f.name(&format!("e{i}")), "the start");
    }
    std::thread::sleep(Duration::from_secs(5));
    let store = Store::open(f.db()).expect("the controller's database");

    // 1. Target down -> check ticket committed.
    let mut down_to_ticket = Vec::new();
    for run in 0..runs {
        let pid = docker_ok(&["inspect", "-f", "{{.State.Pid}}", &e0]);
        let before = store
            .list(None)
            .unwrap_or_default()
            .iter()
            .filter(|t| t.service == e0 && t.drift == operator::drift::DriftKind::CheckFailed)
            .map(|t| (t.id, t.episode_at))
            .max();
        let _ = Command::new("kill").args(["-STOP", &pid]).status();
        let stopped = Instant::now();
        let deadline = stopped + Duration::from_secs(30);
        let mut seen = None;
        while Instant::now() < deadline {
            let now = store
                .list(None)
                .unwrap_or_default()
                .iter()
                .filter(|t| {
                    t.service == e0
                        && t.drift == operator::drift::DriftKind::CheckFailed
                        && t.status != operator::tickets::Status::Resolved
                })
                .map(|t| (t.id, t.episode_at))
                .max();
            if now.is_some() && now != before {
                seen = Some(stopped.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = Command::new("kill").args(["-CONT", &pid]).status();
        if let Some(d) = seen {
            down_to_ticket.push(d.as_secs_f64() * 1e3);
        }
        eprintln!("run {}/{runs}: {seen:?}", run + 1);
        // Let it resolve before the next run.
        std::thread::sleep(Duration::from_secs(6));
    }

    // 2. The cost of one evaluation round of 50 checks.
    let desired = operator::manifest::load(&[f.dir.path().to_path_buf()]).expect("manifest");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut round_ms = Vec::new();
    runtime.block_on(async {
        let mut monitor = Monitor::new();
        monitor.round(&desired).await; // warm: connections, selector probes
        for _ in 0..rounds {
            let started = Instant::now();
            let health = monitor.round(&desired).await;
            round_ms.push(started.elapsed().as_secs_f64() * 1e3);
            assert_eq!(health[0].checks.len(), 50);
        }
    });
    drop(f);
    drop(prom);

    println!(
        "\ntarget down (SIGSTOP) -> check ticket committed; floor = scrape interval {}s + for {}s (+ evaluation interval {}s):",
        SCRAPE.as_secs(),
        FOR.as_secs(),
        INTERVAL.as_secs()
    );
    let p50 = summary("down -> check ticket", down_to_ticket);
    let floor = (SCRAPE + FOR).as_secs_f64() * 1e3;
    println!("median / floor (scrape + for): {:.2}", p50 / floor);
    println!("\none evaluation round of 50 PromQL checks (1 Prometheus, concurrency 8):");
    let p50 = summary("round of 50 checks", round_ms);
    println!("per check at the median: {:.2} ms", p50 / 50.0);
    println!("\nreproduce: cargo bench --bench checks -- {runs} {rounds}");
}
