//! The quorum gate on a real three-member etcd (Raft) group run by the controller: a restart
//! that would leave the group below its quorum waits, says why, and goes ahead by itself
//! once the group has recovered.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::operator::{inspect, wait_until};
use common::{EMPTY_IMAGE, Fixture, docker_ok, free_port};

/// A loopback HTTP endpoint answering 200 while `healthy`, 500 otherwise: a check the test
/// can make fail on one member at will.
struct Switch {
    healthy: Arc<AtomicBool>,
    port: u16,
}

impl Switch {
    fn start() -> Switch {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let healthy = Arc::new(AtomicBool::new(true));
        let flag = healthy.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf);
                let status = if flag.load(Ordering::SeqCst) {
                    "200 OK"
                } else {
                    "500 Internal Server Error"
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
        });
        Switch { healthy, port }
    }

    fn set(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
    }
}

/// Three members in one group (majority); `observe`: the member the controller only watches
/// (left stopped by the test); e1 has a check on the switch with `policy: restart`.
fn manifest(
    cluster: &str,
    client: &[u16; 3],
    peer: &[u16; 3],
    switch: u16,
    observe: Option<usize>,
) -> String {
    let initial: Vec<String> = (0..3)
        .map(|i| format!("e{i}=http://127.0.0.1:{}", peer[i]))
        .collect();
    let mut services = String::new();
    for i in 0..3 {
        let policy = if observe == Some(i) {
            "observe"
        } else {
            "restart"
        };
        services += &format!(
            r#"    - name: {cluster}-e{i}
      image: {EMPTY_IMAGE}
      networkMode: host
      volumes: ["/usr:/usr:ro", "/lib:/lib:ro", "/lib64:/lib64:ro", "/bin:/bin:ro", "/etc:/etc:ro"]
      command: ["/usr/bin/etcd", "--name", "e{i}", "--data-dir", "/data",
                "--listen-client-urls", "http://127.0.0.1:{c}", "--advertise-client-urls", "http://127.0.0.1:{c}",
                "--listen-peer-urls", "http://127.0.0.1:{p}", "--initial-advertise-peer-urls", "http://127.0.0.1:{p}",
                "--initial-cluster", "{initial}", "--initial-cluster-state", "new", "--initial-cluster-token", "{cluster}"]
      remediation: {{policy: {policy}, backoff: {{initial: 200ms, max: 2s}}}}
"#,
            c = client[i],
            p = peer[i],
            initial = initial.join(","),
        );
    }
    format!(
        r#"apiVersion: operator/v1
kind: Cluster
metadata:
  name: {cluster}
spec:
  services:
{services}  checks:
    - name: e1-switch
      http: {{url: "http://127.0.0.1:{switch}/", status: 200, timeout: 1s}}
      for: 1s
      service: {cluster}-e1
      remediation: {{policy: restart, backoff: {{initial: 200ms, max: 2s}}}}
  groups:
    - name: members
      members: [{cluster}-e0, {cluster}-e1, {cluster}-e2]
      quorum: majority
"#
    )
}

fn started_at(name: &str) -> String {
    inspect(name, None).unwrap()["State"]["StartedAt"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_restart_that_would_break_the_quorum_waits_says_why_and_goes_ahead_once_the_group_recovers() {
    let switch = Switch::start();
    let client = [free_port(), free_port(), free_port()];
    let peer = [free_port(), free_port(), free_port()];
    let port = switch.port;
    // Created with every member under restart, then watched with e0 only observed.
    let f = Fixture::builder("quorum")
        .manifest("cluster.yaml", |c| manifest(c, &client, &peer, port, None))
        .run_once()
        .manifest("cluster.yaml", |c| {
            manifest(c, &client, &peer, port, Some(0))
        })
        .args(&["--settle", "1s"])
        .resync("1s")
        .start();
    let (e0, e1) = (f.name("e0"), f.name("e1"));
    f.wait_running(&e1, "the start");

    // e0 down (and left down: only observed), then e1's check fails: restarting e1 now
    // would leave one of three members live.
    docker_ok(&["stop", "--time", "1", &e0]);
    let before = started_at(&e1);
    switch.set(false);
    let note = "held back: would leave members with 1 of 3 live; needs 2";
    let held_back = || {
        f.ticket("check-failed", &e1).is_some_and(|t| {
            let shown = f.operator.ticket_json(t["id"].as_i64().unwrap());
            shown["timeline"].as_array().unwrap().iter().any(|e| {
                e["detail"]["note"]
                    .as_str()
                    .is_some_and(|n| n.contains(note))
            })
        })
    };
    assert!(
        wait_until(Duration::from_secs(60), held_back),
        "the restart was not held back with its reason: {:#?}; log:\n{}",
        f.tickets(),
        f.operator.log()
    );
    // Held, not merely late: several looks later e1 still runs its first process.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(started_at(&e1), before, "e1 was restarted below quorum");
    let gated = f
        .operator
        .metric(&format!(
            "operator_actions_gated_total{{cluster=\"{}\",group=\"members\",reason=\"quorum\"}}",
            f.cluster
        ))
        .unwrap_or(0.0);
    assert!(gated >= 2.0, "gated {gated}");
    let ticket = f.ticket("check-failed", &e1).unwrap();
    assert_eq!(
        ticket["actions"], 0,
        "a held-back restart spent nothing: {ticket:#}"
    );

    // e0 comes back: three live, the restart goes ahead by itself.
    docker_ok(&["start", &e0]);
    assert!(
        wait_until(Duration::from_secs(60), || started_at(&e1) != before),
        "e1 was not restarted once the group recovered; log:\n{}",
        f.operator.log()
    );
    switch.set(true);
    assert!(
        wait_until(Duration::from_secs(60), || f
            .ticket("check-failed", &e1)
            .is_some_and(|t| t["status"] == "resolved")),
        "{:#?}",
        f.tickets()
    );
}
