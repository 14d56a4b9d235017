//! The rules of the check recorder on a real SQLite store, with no Docker and no
//! Prometheus: verdicts are made by hand, the cache is filled by hand.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use super::*;
use crate::docker::{ContainerStatus, ObservedContainer};
use crate::health::{CheckReport, FailingTarget, Verdict};
use crate::manifest::Severity;
use crate::tickets::{Cause, Status, Store};

struct Setup {
    dir: PathBuf,
    desired: DesiredState,
    recorder: CheckRecorder,
    observed: crate::docker::store::Writer,
    store: Arc<Store>,
    repairs: mpsc::UnboundedReceiver<CheckRestartMessage>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn setup() -> Setup {
    setup_with("")
}

/// `check_extra`: more keys for the check `up` (indented for its mapping).
fn setup_with(check_extra: &str) -> Setup {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "operator-checks-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("c.yaml"),
        format!("apiVersion: operator/v1\nkind: Cluster\nmetadata:\n  name: c\nspec:\n  prometheus: {{url: \"http://127.0.0.1:1\", interval: 1s}}\n  services:\n    - name: svc\n      image: x\n  checks:\n    - name: up\n      expr: 'up == 0'\n      service: svc\n{check_extra}",
    ))
    .unwrap();
    let desired = crate::manifest::load(std::slice::from_ref(&dir)).unwrap();
    let store = Arc::new(Store::open(&dir.join("t.db")).unwrap());
    let observed = crate::docker::store::Writer::new();
    let (tx, repairs) = mpsc::unbounded_channel();
    let journal = Journal::new(store.clone(), Arc::new(Metrics::new()));
    let recorder = CheckRecorder::new(
        journal,
        Arc::new(Metrics::new()),
        observed.reader(),
        None,
        tx,
        Arc::default(),
    );
    let setup = Setup {
        dir,
        desired,
        recorder,
        observed,
        store,
        repairs,
    };
    setup.container(ContainerStatus::Running);
    setup
}

impl Setup {
    fn container(&self, status: ContainerStatus) {
        let observed = &self.observed;
        observed.replace_all(
            vec![ObservedContainer::example(
                "id",
                ServiceKey::new("c", "svc"),
                status,
            )],
            0,
        );
        observed.set_connected(true);
    }

    async fn apply(&mut self, observability: Observability, verdict: Verdict) {
        let health = ClusterHealth {
            cluster: "c".into(),
            observability,
            checks: vec![CheckReport {
                check: "up".into(),
                severity: Severity::Warning,
                verdict,
            }],
        };
        self.recorder.apply(&self.desired, &health).await.unwrap();
    }

    fn tickets(&self) -> Vec<crate::tickets::Ticket> {
        self.store.list(None).unwrap()
    }

    fn messages(&mut self) -> Vec<CheckRestartMessage> {
        let mut out = Vec::new();
        while let Ok(m) = self.repairs.try_recv() {
            out.push(m);
        }
        out
    }
}

fn verdict(state: CheckState, failing: &[&str]) -> Verdict {
    Verdict {
        state,
        failing: failing
            .iter()
            .map(|t| FailingTarget {
                target: Some(t.to_string()),
                since: tokio::time::Instant::now(),
                series: vec![],
            })
            .collect(),
        pending: vec![],
        no_data: false,
        error: None,
        healthy: None,
    }
}

#[tokio::test]
async fn a_failing_check_opens_one_ticket_and_a_pass_resolves_it_self_healed() {
    let mut s = setup();
    for _ in 0..3 {
        s.apply(Observability::Up, verdict(CheckState::Failing, &["svc"]))
            .await;
    }
    let t = s.tickets();
    assert_eq!(t.len(), 1);
    assert_eq!((t[0].drift, t[0].occurrences), (DriftKind::CheckFailed, 3));
    s.apply(Observability::Up, verdict(CheckState::Passing, &[]))
        .await;
    let t = s.tickets();
    assert_eq!(
        (t[0].status, t[0].resolved_by),
        (Status::Resolved, Some(Cause::SelfHealed))
    );
}

#[tokio::test]
async fn no_data_and_unknown_verdicts_change_no_ticket() {
    let mut s = setup();
    s.apply(Observability::Up, verdict(CheckState::Failing, &["svc"]))
        .await;
    let before = s.tickets();
    for state in [CheckState::NoData, CheckState::Unknown, CheckState::Invalid] {
        s.apply(Observability::Up, verdict(state, &[])).await;
    }
    assert_eq!(s.tickets(), before);
}

#[tokio::test]
async fn a_healthy_check_resolves_only_targets_seen_healthy() {
    let mut s = setup();
    s.apply(Observability::Up, verdict(CheckState::Failing, &["svc"]))
        .await;
    // The target's series vanished: not seen healthy, so not resolved.
    let mut v = verdict(CheckState::Passing, &[]);
    v.healthy = Some(BTreeSet::new());
    s.apply(Observability::Up, v.clone()).await;
    assert_eq!(s.tickets()[0].status, Status::Open);
    v.healthy = Some(BTreeSet::from([Some("svc".to_string())]));
    s.apply(Observability::Up, v).await;
    assert_eq!(s.tickets()[0].status, Status::Resolved);
}

#[tokio::test(start_paused = true)]
async fn lost_prometheus_freezes_check_tickets_and_opens_one_ticket_after_its_grace() {
    let mut s = setup();
    s.apply(Observability::Up, verdict(CheckState::Failing, &["svc"]))
        .await;
    let check_ticket = s.tickets()[0].clone();
    let lost = || Observability::Lost {
        reason: "refused".into(),
    };
    // Within the grace: frozen, and no ticket yet.
    s.apply(lost(), verdict(CheckState::Unknown, &[])).await;
    assert_eq!(s.tickets().len(), 1);
    tokio::time::advance(Duration::from_secs(6)).await;
    for _ in 0..3 {
        s.apply(lost(), verdict(CheckState::Passing, &[])).await;
    }
    let t = s.tickets();
    assert_eq!(t.len(), 2, "{t:#?}");
    assert_eq!(
        t.iter()
            .filter(|t| t.drift == DriftKind::ObservabilityLost)
            .count(),
        1
    );
    let still = t.iter().find(|t| t.id == check_ticket.id).unwrap();
    assert_eq!(
        still, &check_ticket,
        "a check ticket moved while Prometheus was lost"
    );
    // Back: the lost ticket resolves, and verdicts count again.
    s.apply(Observability::Up, verdict(CheckState::Passing, &[]))
        .await;
    assert!(s.tickets().iter().all(|t| t.status == Status::Resolved));
}

#[tokio::test]
async fn a_check_failing_on_a_down_container_goes_on_the_container_ticket() {
    let mut s = setup();
    s.container(ContainerStatus::Exited);
    let (container_ticket, _) = s
        .store
        .record_drift(
            &DriftSighting {
                fingerprint: Fingerprint::service("c", "svc", DriftKind::Stopped),
                drift: DriftKind::Stopped,
                detail: "exited".into(),
                cooldown: Duration::from_secs(600),
                evidence: None,
            },
            Utc::now(),
        )
        .unwrap();
    for _ in 0..3 {
        s.apply(Observability::Up, verdict(CheckState::Failing, &["svc"]))
            .await;
    }
    assert_eq!(s.tickets().len(), 1, "no check ticket of its own");
    let notes = s
        .store
        .timeline(container_ticket.id)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == EntryKind::Note)
        .count();
    assert_eq!(notes, 1, "noted once per episode");
}

#[tokio::test]
async fn a_failing_restart_check_asks_for_a_restart_and_a_pass_withdraws_it() {
    let mut s = setup_with("      remediation: {policy: restart}\n");
    s.apply(Observability::Up, verdict(CheckState::Failing, &["svc"]))
        .await;
    let ticket = s.tickets()[0].id;
    let messages = s.messages();
    assert!(
        messages.iter().any(|m| matches!(m,
            CheckRestartMessage::Request { key, repair }
                if *key == ServiceKey::new("c", "svc") && repair.check == "up" && repair.ticket == ticket)),
        "{messages:?}"
    );
    s.apply(Observability::Up, verdict(CheckState::Passing, &[]))
        .await;
    let messages = s.messages();
    assert!(
        messages.iter().any(|m| matches!(m,
            CheckRestartMessage::Withdraw { cluster, check: Some(check), keep }
                if cluster == "c" && check == "up" && keep.is_empty())),
        "{messages:?}"
    );
    assert!(
        !messages
            .iter()
            .any(|m| matches!(m, CheckRestartMessage::Request { .. })),
        "a passing check asks for nothing"
    );
}

#[tokio::test(start_paused = true)]
async fn a_verdict_drawn_before_the_targets_last_change_counts_for_nothing() {
    let mut s = setup_with("      remediation: {policy: restart}\n");
    // The round began while the container was paused; it was unpaused before the
    // verdict came back.
    s.container(ContainerStatus::Paused);
    tokio::time::advance(Duration::from_millis(10)).await;
    s.recorder.round_from = Some(Instant::now());
    tokio::time::advance(Duration::from_millis(10)).await;
    s.container(ContainerStatus::Running);
    s.apply(Observability::Up, verdict(CheckState::Failing, &["svc"]))
        .await;
    assert!(s.tickets().is_empty(), "{:#?}", s.tickets());
    assert!(
        !s.messages()
            .iter()
            .any(|m| matches!(m, CheckRestartMessage::Request { .. })),
        "a stale verdict asked for a restart"
    );
    // A round begun after the change counts.
    tokio::time::advance(Duration::from_millis(10)).await;
    s.recorder.round_from = Some(Instant::now());
    s.apply(Observability::Up, verdict(CheckState::Failing, &["svc"]))
        .await;
    assert_eq!(s.tickets().len(), 1);
}

#[tokio::test]
async fn an_observe_check_never_asks_for_a_restart() {
    let mut s = setup();
    s.apply(Observability::Up, verdict(CheckState::Failing, &["svc"]))
        .await;
    let messages = s.messages();
    assert!(
        !messages
            .iter()
            .any(|m| matches!(m, CheckRestartMessage::Request { .. })),
        "{messages:?}"
    );
}
