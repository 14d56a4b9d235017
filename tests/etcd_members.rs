//! The shared etcd builder and health sampler (`tests/common/etcd.rs`) against real members:
//! three members written by `Members` and created by the controller form one healthy Raft
//! group, and the sampler sees every one of them healthy, and a frozen one not.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::etcd::{Members, Probe, health, probe};
use common::operator::inspect;
use common::{Fixture, free_port};

fn signal(container: &str, signal: &str) {
    let pid = inspect(container, None).expect("the member exists")["State"]["Pid"]
        .as_i64()
        .expect("a pid");
    let ok = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(ok.success(), "kill -{signal} {container} ({pid})");
}

#[test]
fn three_members_from_the_builder_are_all_healthy_and_the_sampler_sees_it() {
    let started = Instant::now();
    // Nothing listens there: the probe says so rather than hanging or erring.
    assert!(!health(free_port()));
    assert_eq!(probe(free_port()), Probe::Down);

    let b = Fixture::builder("members");
    let members = Members::new(b.cluster(), 3);
    let spec = members.groups_yaml("members", "majority");
    let f = b
        .manifest("cluster.yaml", |_| members.manifest(&spec))
        .args(&["--settle", "1s"])
        .resync("1s")
        .start();
    assert!(
        members.wait_healthy(Duration::from_secs(20)),
        "not every member answered /health true within 20 s ({} of 3 healthy); member logs:\n{}\ncontroller log:\n{}",
        members.healthy_count(),
        members.logs(10),
        f.operator.log()
    );

    let sampler = members.sampler();
    std::thread::sleep(Duration::from_secs(2));
    let samples = sampler.stop();
    // One probe round takes a few ms on loopback: ~40 samples in 2 s.
    assert!(samples.len() >= 10, "too few samples: {samples:?}");
    assert_eq!(samples.members, 3);
    assert_eq!(samples.fraction_with_quorum(2), 1.0, "{samples:?}");
    assert_eq!(
        samples.min_healthy(),
        3,
        "{samples:?}; member logs:\n{}",
        members.logs(10)
    );

    // The sampler must also see a member that does not answer: e2 frozen (its port still
    // accepts connections; the probe times out).
    signal(&members.name(2), "STOP");
    let sampler = members.sampler();
    std::thread::sleep(Duration::from_millis(1500));
    let frozen = sampler.stop();
    signal(&members.name(2), "CONT");
    assert!(frozen.len() >= 2, "too few samples: {frozen:?}");
    assert!(
        frozen.max_healthy() <= 2,
        "a frozen member counted: {frozen:?}"
    );
    assert_eq!(frozen.fraction_with_quorum(3), 0.0, "{frozen:?}");
    // Frozen is there but unhealthy, never down: a rollout's "at most one down" must not
    // count a member that is only slow.
    assert_eq!(frozen.max_down(), 0, "{frozen:?}");
    assert!(!frozen.saw_down(2), "{frozen:?}");

    eprintln!("etcd_members: {:?}", started.elapsed());
}
