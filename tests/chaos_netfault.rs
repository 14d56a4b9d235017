//! Network faults against real containers: busybox containers on an `--internal` network
//! this test creates (nothing can route out), faults applied inside their namespaces by
//! `chaos::netfault`, traffic checked with `ping` between them, and after every test no
//! rule with its tag and no qdisc of ours left in any of its namespaces.
//!
//! Never touches the host's namespace: the host-networked case is refused before any
//! command runs. Needs root (nsenter, iptables, tc), as CI and `scripts/test.sh` run.

mod common;

use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

use common::{BUSYBOX_IMAGE, Cleanup, TEST_LABEL, docker, docker_ok, require_docker, unique};
use operator::chaos::netfault::{
    self, NetFaultError, NetPeer, NetTarget, NetUndo, Shaping, TAG_PREFIX,
};
use operator::chaos::spec::FaultKind;

/// The containers of one test, on a network of their own, removed (with the network) when
/// dropped.
struct Lab {
    name: String,
    _cleanup: Cleanup,
    tag: String,
}

/// One container of a [`Lab`].
#[derive(Clone)]
struct Box_ {
    service: String,
    name: String,
}

impl Lab {
    fn new(prefix: &str) -> Lab {
        require_docker();
        let name = unique(prefix);
        let label = format!("operator.test.netfault={name}");
        let cleanup = Cleanup::new(label.clone());
        docker_ok(&[
            "network",
            "create",
            "--internal",
            "--label",
            TEST_LABEL,
            "--label",
            &label,
            &name,
        ]);
        Lab {
            tag: format!("{TAG_PREFIX}-test-{name}"),
            name,
            _cleanup: cleanup,
        }
    }

    /// A labelled busybox container sleeping on the lab's network (or on `network`).
    fn start_on(&self, service: &str, network: &str) -> Box_ {
        let name = format!("{}-{service}", self.name);
        let label = format!("operator.test.netfault={}", self.name);
        docker_ok(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            network,
            "--label",
            TEST_LABEL,
            "--label",
            &label,
            BUSYBOX_IMAGE,
            "sleep",
            "3600",
        ]);
        Box_ {
            service: service.to_string(),
            name,
        }
    }

    fn start(&self, service: &str) -> Box_ {
        self.start_on(service, &self.name.clone())
    }
}

impl Box_ {
    fn pid(&self) -> u32 {
        let pid = docker_ok(&["inspect", "-f", "{{.State.Pid}}", &self.name]);
        let pid: u32 = pid.parse().expect("a pid");
        assert!(pid > 0, "{} is not running", self.name);
        pid
    }

    fn ip(&self) -> IpAddr {
        let ip = docker_ok(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &self.name,
        ]);
        ip.parse()
            .unwrap_or_else(|_| panic!("{}: no single address: {ip:?}", self.name))
    }

    fn netns(&self) -> u64 {
        std::fs::metadata(format!("/proc/{}/ns/net", self.pid()))
            .expect("the container's namespace")
            .ino()
    }

    fn peer(&self) -> NetPeer {
        NetPeer {
            service: self.service.clone(),
            pid: self.pid(),
            ips: vec![self.ip()],
        }
    }

    fn target(&self, peers: &[&Box_]) -> NetTarget {
        NetTarget {
            service: self.service.clone(),
            pid: self.pid(),
            ips: vec![self.ip()],
            peers: peers.iter().map(|p| p.peer()).collect(),
        }
    }

    /// Does a ping from this container to `to` come back? Up to three tries, so that a
    /// slow first ARP answer is not taken for a fault; a fault drops every try.
    fn reaches(&self, to: &Box_) -> bool {
        let ip = to.ip().to_string();
        (0..3).any(|_| {
            docker(&["exec", &self.name, "ping", "-c", "1", "-W", "1", &ip])
                .status
                .success()
        })
    }

    /// `tc qdisc show` inside the container's namespace (the host's tc).
    fn qdiscs(&self) -> String {
        let out = Command::new("nsenter")
            .args(["-t", &self.pid().to_string(), "-n", "tc", "qdisc", "show"])
            .output()
            .expect("nsenter tc");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The rules carrying `tag` and the qdiscs of ours in its namespace.
    async fn ours(&self, tag: &str) -> (usize, usize) {
        let found = netfault::leftovers(self.pid()).await.expect("leftovers");
        let ns = &found.namespaces[0];
        let rules = ns
            .rules
            .iter()
            .filter(|r| r.spec.iter().any(|w| w == tag))
            .count();
        (rules, ns.qdiscs.len())
    }

    async fn assert_clean(&self, tag: &str) {
        assert_eq!(
            self.ours(tag).await,
            (0, 0),
            "{}: a rule tagged {tag} or a qdisc of ours is left:\n{}",
            self.service,
            self.qdiscs()
        );
    }
}

#[tokio::test]
async fn loss_of_every_packet_cuts_traffic_until_undone() {
    let lab = Lab::new("nf-loss");
    let a = lab.start("a");
    let b = lab.start("b");
    assert!(
        a.reaches(&b) && b.reaches(&a),
        "no traffic before the fault"
    );

    let fault = FaultKind::Loss { probability: 1.0 };
    let undo = netfault::apply(&a.target(&[]), &fault, &lab.tag)
        .await
        .expect("apply loss");
    assert_eq!(a.ours(&lab.tag).await, (2, 0), "INPUT and OUTPUT rules");
    assert!(!a.reaches(&b), "a reaches b through 100% loss");
    assert!(!b.reaches(&a), "b reaches a through 100% loss");

    // The record survives a trip through the ledger's JSON.
    let undo: NetUndo = serde_json::from_str(&serde_json::to_string(&undo).unwrap()).unwrap();
    netfault::undo(&undo).await.expect("undo loss");
    assert!(a.reaches(&b) && b.reaches(&a), "traffic after the undo");
    netfault::undo(&undo)
        .await
        .expect("a second undo is a no-op");
    a.assert_clean(&lab.tag).await;
    b.assert_clean(&lab.tag).await;
}

#[tokio::test]
async fn a_partition_cuts_both_ways_between_the_target_and_its_peer_only() {
    let lab = Lab::new("nf-part");
    let a = lab.start("a");
    let b = lab.start("b");
    let c = lab.start("c");
    assert!(a.reaches(&b) && a.reaches(&c) && b.reaches(&c));

    let fault = FaultKind::Partition {
        from: vec!["b".into()],
    };
    let undo = netfault::apply(&a.target(&[&b]), &fault, &lab.tag)
        .await
        .expect("apply partition");
    assert_eq!(undo.namespaces.len(), 2, "{undo:?}");
    assert_eq!(a.ours(&lab.tag).await, (2, 0));
    assert_eq!(b.ours(&lab.tag).await, (2, 0), "the mirror rules in b");
    assert_eq!(c.ours(&lab.tag).await, (0, 0), "c is not part of it");
    assert!(!a.reaches(&b), "a -> b through the partition");
    assert!(!b.reaches(&a), "b -> a through the partition");
    assert!(a.reaches(&c) && c.reaches(&a), "a <-> c must still work");
    assert!(b.reaches(&c) && c.reaches(&b), "b <-> c must still work");

    netfault::undo(&undo).await.expect("undo partition");
    assert!(a.reaches(&b) && b.reaches(&a), "a <-> b after the undo");
    for x in [&a, &b, &c] {
        x.assert_clean(&lab.tag).await;
    }
}

#[tokio::test]
async fn bandwidth_puts_our_tbf_on_the_device_and_undo_removes_only_ours() {
    let lab = Lab::new("nf-bw");
    let a = lab.start("a");
    let fault = FaultKind::Bandwidth {
        rate_bits: 1_000_000,
        burst_bytes: 32 * 1024,
        latency: std::time::Duration::from_millis(400),
    };
    let undo = netfault::apply(&a.target(&[]), &fault, &lab.tag)
        .await
        .expect("apply bandwidth");
    let shown = a.qdiscs();
    assert!(
        shown.contains("qdisc tbf") && shown.contains("dev eth0") && shown.contains("rate 1Mbit"),
        "{shown}"
    );
    assert!(
        !shown
            .lines()
            .any(|l| l.contains("dev lo ") && l.contains("tbf")),
        "loopback shaped too: {shown}"
    );
    let q = &undo.namespaces[0].qdiscs;
    assert_eq!(q.len(), 1, "eth0 only, lo left alone: {q:?}");
    assert!(matches!(
        q[0].shaping,
        Shaping::Tbf {
            rate_bits: 1_000_000,
            ..
        }
    ));
    assert_eq!(a.ours(&lab.tag).await, (0, 1));

    // A second fault on the same device is refused, and leaves the first in place.
    let other = format!("{}-2", lab.tag);
    let e = netfault::apply(&a.target(&[]), &fault, &other)
        .await
        .expect_err("two root qdiscs on one device");
    assert!(matches!(e, NetFaultError::Busy { .. }), "{e}");
    assert!(e.to_string().contains("eth0"), "{e}");
    assert!(
        a.qdiscs().contains("qdisc tbf"),
        "the refusal removed the first fault"
    );

    netfault::undo(&undo).await.expect("undo bandwidth");
    assert!(!a.qdiscs().contains("tbf"), "{}", a.qdiscs());
    a.assert_clean(&lab.tag).await;
}

#[tokio::test]
async fn undo_leaves_a_qdisc_that_replaced_ours_and_says_so() {
    let lab = Lab::new("nf-repl");
    let a = lab.start("a");
    let fault = FaultKind::Bandwidth {
        rate_bits: 1_000_000,
        burst_bytes: 32 * 1024,
        latency: std::time::Duration::from_millis(400),
    };
    let undo = netfault::apply(&a.target(&[]), &fault, &lab.tag)
        .await
        .expect("apply bandwidth");
    // Someone else shapes the device now (in this test's own container).
    let replace = Command::new("nsenter")
        .args([
            "-t",
            &a.pid().to_string(),
            "-n",
            "tc",
            "qdisc",
            "replace",
            "dev",
            "eth0",
        ])
        .args([
            "root", "handle", "1:", "tbf", "rate", "2mbit", "burst", "32k", "latency", "50ms",
        ])
        .status()
        .expect("tc");
    assert!(replace.success());

    let e = netfault::undo(&undo)
        .await
        .expect_err("the qdisc is not ours");
    assert!(matches!(e, NetFaultError::NotOurs { .. }), "{e}");
    assert!(!e.fault_remains(), "nothing of ours remains: {e}");
    assert!(
        e.to_string().contains("eth0") && e.to_string().contains("tbf 1:"),
        "{e}"
    );
    let shown = a.qdiscs();
    assert!(
        shown.contains("tbf 1:") && shown.contains("rate 2Mbit"),
        "{shown}"
    );
    a.assert_clean(&lab.tag).await;
}

#[tokio::test]
async fn delay_needs_netem_and_is_refused_with_its_sentence_where_the_kernel_lacks_it() {
    let lab = Lab::new("nf-delay");
    let a = lab.start("a");
    let fault = FaultKind::Delay {
        delay: std::time::Duration::from_millis(100),
        jitter: Some(std::time::Duration::from_millis(10)),
    };
    match netfault::netem_available() {
        Err(sentence) => {
            // This project's machines: no sch_netem.
            assert!(sentence.contains("netem"), "{sentence}");
            let e = netfault::apply(&a.target(&[]), &fault, &lab.tag)
                .await
                .expect_err("delay without netem");
            assert!(matches!(e, NetFaultError::NetemUnavailable(_)), "{e}");
            assert_eq!(e.to_string(), sentence);
        }
        Ok(()) => {
            let undo = netfault::apply(&a.target(&[]), &fault, &lab.tag)
                .await
                .expect("apply delay");
            let shown = a.qdiscs();
            assert!(
                shown.contains("qdisc netem") && shown.contains("dev eth0"),
                "{shown}"
            );
            netfault::undo(&undo).await.expect("undo delay");
            assert!(!a.qdiscs().contains("netem"), "{}", a.qdiscs());
        }
    }
    a.assert_clean(&lab.tag).await;
}

#[tokio::test]
async fn host_networked_targets_and_peers_are_refused_naming_them() {
    let lab = Lab::new("nf-host");
    let a = lab.start("a");
    let h = lab.start_on("hostnet", "host");
    let host_target = NetTarget {
        service: "hostnet".into(),
        pid: h.pid(),
        ips: vec!["127.0.0.1".parse().unwrap()],
        peers: vec![a.peer()],
    };
    for fault in [
        FaultKind::Loss { probability: 1.0 },
        FaultKind::Partition {
            from: vec!["a".into()],
        },
    ] {
        let e = netfault::apply(&host_target, &fault, &lab.tag)
            .await
            .expect_err("a host-networked target");
        assert!(matches!(e, NetFaultError::HostNamespace { .. }), "{e}");
        assert!(
            e.to_string().contains("hostnet") && e.to_string().contains("host"),
            "{e}"
        );
    }
    // A host-networked peer: refused too, and the target's side is not touched.
    let mut target = a.target(&[]);
    target.peers = vec![NetPeer {
        service: "hostnet".into(),
        pid: h.pid(),
        ips: vec!["127.0.0.1".parse().unwrap()],
    }];
    let partition = FaultKind::Partition {
        from: vec!["hostnet".into()],
    };
    let e = netfault::apply(&target, &partition, &lab.tag)
        .await
        .expect_err("a host-networked peer");
    assert!(
        matches!(e, NetFaultError::HostNamespace { ref owner, .. } if owner == "hostnet"),
        "{e}"
    );
    a.assert_clean(&lab.tag).await;
    // leftovers() of a host-networked container lists nothing and runs nothing there.
    assert!(netfault::leftovers(h.pid()).await.unwrap().is_empty());
}

#[tokio::test]
async fn undo_after_a_restart_is_ok_and_never_enters_the_new_namespace() {
    let lab = Lab::new("nf-restart");
    let a = lab.start("a");
    let b = lab.start("b");
    let fault = FaultKind::Loss { probability: 1.0 };
    let old = netfault::apply(&a.target(&[]), &fault, &lab.tag)
        .await
        .expect("apply loss");
    let old_pid = a.pid();
    assert!(!a.reaches(&b));

    docker_ok(&["restart", "-t", "0", &a.name]);
    assert_ne!(a.pid(), old_pid, "the restart kept the process");
    assert!(
        a.reaches(&b),
        "the new namespace has no rules: it is a new one"
    );

    // The same fault, same tag, in the new namespace.
    let new = netfault::apply(&a.target(&[]), &fault, &lab.tag)
        .await
        .expect("apply loss again");
    // The old record, and a forgery of it naming the new process's pid and the new
    // namespace's inode (as if the pid had been reused; the kernel reuses namespace inode
    // numbers, often at once): both Ok, both leave the new namespace's rules alone.
    let mut forged = old.clone();
    forged.namespaces[0].pid = a.pid();
    forged.namespaces[0].netns = a.netns();
    netfault::undo(&old)
        .await
        .expect("undo of a gone namespace");
    netfault::undo(&forged)
        .await
        .expect("undo of a gone namespace by a reused pid");
    assert_eq!(
        a.ours(&lab.tag).await,
        (2, 0),
        "the new namespace's rules were touched"
    );
    assert!(!a.reaches(&b));

    netfault::undo(&new)
        .await
        .expect("undo in the new namespace");
    assert!(a.reaches(&b));
    a.assert_clean(&lab.tag).await;
    b.assert_clean(&lab.tag).await;
}

#[tokio::test]
async fn leftovers_finds_every_tagged_rule_and_undo_removes_them() {
    let lab = Lab::new("nf-left");
    let a = lab.start("a");
    let b = lab.start("b");
    netfault::apply(
        &a.target(&[&b]),
        &FaultKind::Partition {
            from: vec!["b".into()],
        },
        &lab.tag,
    )
    .await
    .expect("apply partition");
    let bw = FaultKind::Bandwidth {
        rate_bits: 8_000_000,
        burst_bytes: 64 * 1024,
        latency: std::time::Duration::from_millis(100),
    };
    let other = format!("{}-bw", lab.tag);
    netfault::apply(&a.target(&[]), &bw, &other)
        .await
        .expect("apply bandwidth");
    // The records are "lost" (a crash); cleanup works from the namespaces alone.
    for x in [&a, &b] {
        let found = netfault::leftovers(x.pid()).await.expect("leftovers");
        assert!(!found.is_empty(), "{}: nothing found", x.service);
        netfault::undo(&found).await.expect("undo leftovers");
        assert!(netfault::leftovers(x.pid()).await.unwrap().is_empty());
    }
    assert!(a.reaches(&b) && b.reaches(&a));
    assert!(!a.qdiscs().contains("tbf"), "{}", a.qdiscs());
}

#[tokio::test]
async fn an_apply_that_fails_half_way_takes_back_what_it_did() {
    let lab = Lab::new("nf-half");
    let a = lab.start("a");
    let b = lab.start("b");
    let c = lab.start("c");
    let fault = FaultKind::Partition {
        from: vec!["b".into(), "c".into()],
    };
    // Planned with both peers alive; c's container is gone before the plan is applied: the
    // rules in a's and b's namespaces go in first, then c's namespace cannot be entered.
    let plan = netfault::plan(&a.target(&[&b, &c]), &fault, &lab.tag)
        .await
        .expect("plan");
    assert_eq!(plan.namespaces.len(), 3);
    assert_eq!(a.ours(&lab.tag).await, (0, 0), "plan changed something");
    docker_ok(&["rm", "-f", &c.name]);

    let e = netfault::apply_plan(&plan)
        .await
        .expect_err("c's namespace is gone");
    assert!(
        matches!(e, NetFaultError::NamespaceGone { ref owner, .. } if owner == "c"),
        "{e}"
    );
    a.assert_clean(&lab.tag).await;
    b.assert_clean(&lab.tag).await;
    assert!(a.reaches(&b) && b.reaches(&a));
}
