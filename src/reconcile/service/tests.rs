//! Unit tests of one key's reconcile against an in-memory engine
//! ([`crate::reconcile::engine::memory::MemoryEngine`]) and a real SQLite ticket store in a
//! temporary folder: each branch of the decision and of the executor, what it did to the
//! engine, what it recorded, and when it asked to look again. The integration tests drive
//! the same code against the real engine.
//!
//! Each look is a `run --once` look: the key's container is read from the engine into the
//! observed store ([`Controller::refresh`]), then reconciled. Time is tokio's paused clock,
//! moved on by hand past a backoff.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::docker::store::Writer;
use crate::docker::{ContainerStatus, HealthState, ServiceKey};
use crate::drift::{DriftKind, Fingerprint, Target};
use crate::manifest::{Cluster, DesiredState, Policy, Service};
use crate::metrics::Metrics;
use crate::reconcile::checks::CheckRestart;
use crate::reconcile::controller::Controller;
use crate::reconcile::engine::memory::MemoryEngine;
use crate::reconcile::{ControllerConfig, Outcome};
use crate::remediation::{Action, Actor, Dispatch, RemediationRequest, Remediator, SessionId};
use crate::tickets::{DriftSighting, Journal, Status, Store, Ticket};

const IMAGE: &str = "busybox:test";

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A controller of cluster `c` (the services in `services`, YAML list items) over an
/// in-memory engine and a ticket store of its own.
struct Harness {
    controller: Controller,
    engine: Arc<MemoryEngine>,
    journal: Journal,
    metrics: Arc<Metrics>,
    desired: DesiredState,
    _dir: Dir,
}

fn harness(services: &str) -> Harness {
    harness_with(services, "")
}

/// [`harness`], with `spec` (YAML at the `spec:` level: checks, groups...) after the services.
fn harness_with(services: &str, spec: &str) -> Harness {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "operator-service-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let dir = Dir(dir);
    let manifests = dir.0.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(
        manifests.join("c.yaml"),
        format!(
            "apiVersion: operator/v1\nkind: Cluster\nmetadata:\n  name: c\nspec:\n  services:\n{services}{spec}"
        ),
    )
    .unwrap();
    let desired = crate::manifest::load(std::slice::from_ref(&manifests)).unwrap();
    let metrics = Arc::new(Metrics::new());
    let store = Store::open(&dir.0.join("tickets.db")).unwrap();
    let journal = Journal::new(Arc::new(store), metrics.clone());
    let engine = Arc::new(MemoryEngine::new().with_image(IMAGE));
    let controller = controller(&desired, &journal, &engine);
    Harness {
        controller,
        engine,
        journal,
        metrics,
        desired,
        _dir: dir,
    }
}

/// A controller of `desired` over `engine` and `journal`, as a process starting now would
/// build it (everything it keeps in memory is new).
fn controller(desired: &DesiredState, journal: &Journal, engine: &Arc<MemoryEngine>) -> Controller {
    controller_with(desired, journal, engine, None)
}

/// [`controller`], with `agent` serving `policy: agent`.
fn controller_with(
    desired: &DesiredState,
    journal: &Journal,
    engine: &Arc<MemoryEngine>,
    agent: Option<Arc<dyn Remediator>>,
) -> Controller {
    // No watcher: the looks below are the store's only writer, as under `run --once`.
    let writer = Writer::new();
    writer.replace_all(Vec::new(), 0);
    writer.set_connected(true);
    // Never dialled: every engine call of the reconcile goes to the in-memory engine.
    let docker =
        bollard::Docker::connect_with_http("http://127.0.0.1:9", 1, bollard::API_DEFAULT_VERSION)
            .unwrap();
    let mut builder = Controller::builder(docker, desired.clone())
        .config(ControllerConfig::default().settle(Duration::ZERO))
        .journal(journal.clone())
        .store(writer)
        .engine(engine.clone());
    if let Some(agent) = agent {
        builder = builder.remediator(Policy::Agent, agent);
    }
    builder.build()
}

impl Harness {
    /// The controller killed and started again: a new process over the same ticket store
    /// and engine.
    fn restart_controller(&mut self) {
        self.controller = controller(&self.desired, &self.journal, &self.engine);
    }

    fn cluster(&self) -> &Cluster {
        self.desired.cluster("c").unwrap()
    }

    fn service(&self, name: &str) -> &Service {
        self.cluster().service(name).unwrap()
    }

    /// Puts a container of `service` in `status` into the engine.
    fn put(&self, service: &str, status: ContainerStatus) {
        self.engine
            .put(self.cluster(), self.service(service), status);
    }

    /// One look at `service`: read the engine into the store, then reconcile.
    async fn look(&self, service: &str) -> Outcome {
        let key = ServiceKey::new("c", service);
        self.controller.refresh(&key).await;
        self.controller.reconcile(&key).await
    }

    /// The service's tickets, newest first.
    async fn tickets(&self, service: &str) -> Vec<Ticket> {
        let service = service.to_string();
        let all = self.journal.call(|s| s.list(None)).await.unwrap();
        all.into_iter()
            .filter(|t| t.cluster == "c" && t.service == service)
            .collect()
    }

    async fn timeline_kinds(&self, id: i64) -> Vec<String> {
        self.journal
            .timeline(id)
            .await
            .unwrap()
            .iter()
            .map(|e| e.kind.as_str().to_string())
            .collect()
    }
}

fn busybox(name: &str, extra: &str) -> String {
    format!("    - name: {name}\n      image: {IMAGE}\n      networkMode: host\n{extra}")
}

#[tokio::test(start_paused = true)]
async fn a_first_deploy_creates_without_a_ticket_and_is_clean_on_the_next_look() {
    let h = harness(&busybox("aa", ""));
    assert_eq!(
        h.look("aa").await,
        Outcome::Acted {
            action: Action::Create
        }
    );
    assert_eq!(h.engine.actions(), vec!["create aa"]);
    assert!(
        h.tickets("aa").await.is_empty(),
        "a first creation is no drift"
    );
    assert_eq!(h.look("aa").await, Outcome::Clean);
    assert_eq!(h.engine.actions(), vec!["create aa"], "nothing more to do");
}

#[tokio::test(start_paused = true)]
async fn an_exited_container_is_started_on_a_ticket_that_the_next_clean_look_resolves() {
    let h = harness(&busybox("aa", ""));
    h.put("aa", ContainerStatus::Exited);
    assert_eq!(
        h.look("aa").await,
        Outcome::Acted {
            action: Action::Start
        }
    );
    let tickets = h.tickets("aa").await;
    assert_eq!(tickets.len(), 1);
    assert_eq!(tickets[0].status, Status::Remediating);
    assert_eq!(h.look("aa").await, Outcome::Clean);
    let ticket = &h.tickets("aa").await[0];
    assert_eq!(ticket.status, Status::Resolved);
    assert_eq!(
        h.timeline_kinds(ticket.id).await,
        vec![
            "detected",
            "action-started",
            "action-result",
            "recheck",
            "resolved"
        ]
    );
    let timeline = h.journal.timeline(ticket.id).await.unwrap();
    assert_eq!(timeline[3].detail["result"], "desired state");
}

#[tokio::test(start_paused = true)]
async fn a_look_before_the_store_shows_the_action_concludes_nothing() {
    let h = harness(&busybox("aa", ""));
    h.put("aa", ContainerStatus::Exited);
    h.look("aa").await;
    // Reconciled again without reading the engine: the store still shows it exited, as it
    // would before the start's event reaches the watcher.
    let outcome = h.controller.reconcile(&ServiceKey::new("c", "aa")).await;
    assert!(matches!(outcome, Outcome::Pending { .. }), "{outcome:?}");
    assert_eq!(h.engine.actions(), vec!["start aa"], "no second start");
    assert_eq!(h.tickets("aa").await[0].status, Status::Remediating);
}

#[tokio::test(start_paused = true)]
async fn a_paused_container_is_unpaused_and_a_changed_spec_recreated_without_spending_budget() {
    let h = harness(&format!("{}{}", busybox("aa", ""), busybox("bb", "")));
    h.put("aa", ContainerStatus::Paused);
    assert_eq!(
        h.look("aa").await,
        Outcome::Acted {
            action: Action::Unpause
        }
    );
    h.put("bb", ContainerStatus::Running);
    h.engine
        .change("bb", |c| c.spec_hash = "an older spec".into());
    assert_eq!(
        h.look("bb").await,
        Outcome::Acted {
            action: Action::Recreate
        }
    );
    assert_eq!(h.look("bb").await, Outcome::Clean);
    assert_eq!(h.engine.actions(), vec!["unpause aa", "recreate bb"]);
}

#[tokio::test(start_paused = true)]
async fn repairs_back_off_and_past_max_restarts_the_ticket_escalates() {
    // The budget is kept with the tickets in wall-clock time, so the backoff is waited out
    // in real time (tokio's paused clock does not move it).
    let h = harness(&busybox(
        "aa",
        "      remediation:\n        maxRestarts: 2\n        window: 10m\n        backoff: {initial: 2s, max: 2s}\n",
    ));
    h.put("aa", ContainerStatus::Exited);
    assert!(matches!(h.look("aa").await, Outcome::Acted { .. }));
    // It crashes again at once: the same episode, the second repair waits out the backoff.
    h.engine
        .change("aa", |c| c.status = ContainerStatus::Exited);
    let outcome = h.look("aa").await;
    assert!(matches!(outcome, Outcome::BackingOff { .. }), "{outcome:?}");
    std::thread::sleep(Duration::from_millis(2100));
    let outcome = h.look("aa").await;
    assert!(matches!(outcome, Outcome::Acted { .. }), "{outcome:?}");
    h.engine
        .change("aa", |c| c.status = ContainerStatus::Exited);
    // A third repair would be one more than `maxRestarts` in the window: escalated at once,
    // backoff or not.
    assert_eq!(h.look("aa").await, Outcome::Escalated);
    assert_eq!(h.engine.actions(), vec!["start aa", "start aa"]);
    let ticket = &h.tickets("aa").await[0];
    assert_eq!(ticket.status, Status::Escalated);
    // Escalated: left alone.
    assert_eq!(h.look("aa").await, Outcome::Escalated);
    assert_eq!(h.engine.actions().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn observe_and_an_absent_agent_record_the_drift_and_touch_nothing() {
    let h = harness(&format!(
        "{}{}",
        busybox("aa", "      remediation: {policy: observe}\n"),
        busybox("bb", "      remediation: {policy: agent}\n")
    ));
    h.put("aa", ContainerStatus::Exited);
    h.put("bb", ContainerStatus::Exited);
    assert_eq!(h.look("aa").await, Outcome::Observed);
    assert_eq!(h.look("bb").await, Outcome::Observed);
    assert!(h.engine.actions().is_empty());
    assert_eq!(h.tickets("aa").await[0].status, Status::Open);
    let b = &h.tickets("bb").await[0];
    assert_eq!(
        h.timeline_kinds(b.id).await,
        vec!["detected", "note"],
        "the ticket says why no one acts"
    );
}

#[tokio::test(start_paused = true)]
async fn a_name_held_by_a_container_not_ours_blocks_the_create() {
    let h = harness(&busybox("aa", ""));
    h.engine.put_foreign("aa");
    assert_eq!(h.look("aa").await, Outcome::Blocked);
    assert!(
        h.engine.actions().is_empty(),
        "never touches what it does not own"
    );
}

#[tokio::test(start_paused = true)]
async fn a_service_waits_for_its_dependency_to_run_before_it_starts() {
    let h = harness(&format!(
        "{}{}",
        busybox("db", "      remediation: {policy: observe}\n"),
        busybox("api", "      dependsOn: [db]\n")
    ));
    h.put("db", ContainerStatus::Exited);
    h.look("db").await;
    assert_eq!(
        h.look("api").await,
        Outcome::Waiting {
            dependency: "db".into()
        }
    );
    assert!(h.engine.actions().is_empty());
    h.engine
        .change("db", |c| c.status = ContainerStatus::Running);
    h.look("db").await;
    assert_eq!(
        h.look("api").await,
        Outcome::Acted {
            action: Action::Create
        }
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_action_is_recorded_on_its_ticket_and_one_the_engine_cannot_answer_concludes_nothing()
 {
    let h = harness(&busybox("aa", ""));
    h.put("aa", ContainerStatus::Exited);
    h.engine.fail("start", "the engine timed out");
    let outcome = h.look("aa").await;
    assert!(
        matches!(&outcome, Outcome::Failed { action: Action::Start, error } if error.contains("the engine timed out")),
        "{outcome:?}"
    );
    let ticket = &h.tickets("aa").await[0];
    let timeline = h.journal.timeline(ticket.id).await.unwrap();
    let result = timeline.last().unwrap();
    assert_eq!(result.kind.as_str(), "action-result");
    assert_eq!(result.detail["result"], "error");

    // The engine cannot say who holds the name: nothing is concluded, nothing recorded.
    let h = harness(&busybox("bb", ""));
    h.engine.fail("find", "the engine timed out");
    let outcome = h.look("bb").await;
    assert!(matches!(outcome, Outcome::Unknown { .. }), "{outcome:?}");
    assert!(h.tickets("bb").await.is_empty());
    assert!(h.engine.actions().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_held_ticket_keeps_the_controller_hands_off() {
    let h = harness(&busybox("aa", "      remediation: {policy: observe}\n"));
    h.put("aa", ContainerStatus::Exited);
    assert_eq!(h.look("aa").await, Outcome::Observed);
    let id = h.tickets("aa").await[0].id;
    h.journal
        .call(move |s| s.set_held(id, true, chrono::Utc::now()))
        .await
        .unwrap();
    assert_eq!(h.look("aa").await, Outcome::Held);
    assert!(h.engine.actions().is_empty());
}

impl Harness {
    /// Reads `services`' containers from the engine into the store (what the watcher would
    /// have shown of them), without reconciling them.
    async fn see(&self, services: &[&str]) {
        for s in services {
            self.controller.refresh(&ServiceKey::new("c", *s)).await;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_quorum_gate_holds_a_rollout_while_a_member_is_down_and_lets_one_member_go_at_a_time() {
    let members: String = ["p0", "p1", "p2"]
        .iter()
        .map(|m| busybox(m, "      remediation: {policy: restart}\n"))
        .collect();
    let h = harness(&format!(
        "{members}  groups:\n    - name: pd\n      members: [p0, p1, p2]\n      quorum: majority\n"
    ));
    for m in ["p0", "p1", "p2"] {
        h.put(m, ContainerStatus::Running);
    }
    // A changed spec for p0 and p2 (their containers run an older one); p1 is down.
    h.engine.change("p0", |c| c.spec_hash = "older".into());
    h.engine.change("p2", |c| c.spec_hash = "older".into());
    h.engine
        .change("p1", |c| c.status = ContainerStatus::Exited);
    h.see(&["p0", "p1", "p2"]).await;
    let outcome = h.look("p0").await;
    assert!(matches!(outcome, Outcome::Gated { .. }), "{outcome:?}");
    assert!(h.engine.actions().is_empty());

    // p1 is repaired (a start only adds a live member: never held back).
    assert_eq!(
        h.look("p1").await,
        Outcome::Acted {
            action: Action::Start
        }
    );
    h.see(&["p1"]).await;
    assert_eq!(
        h.look("p0").await,
        Outcome::Acted {
            action: Action::Recreate
        }
    );
    // p0 is under way until a look sees it live again: p2 waits its turn.
    let outcome = h.look("p2").await;
    assert!(matches!(outcome, Outcome::Gated { .. }), "{outcome:?}");
    assert_eq!(h.look("p0").await, Outcome::Clean);
    assert_eq!(
        h.look("p2").await,
        Outcome::Acted {
            action: Action::Recreate
        }
    );
    assert_eq!(
        h.engine.actions(),
        vec!["start p1", "recreate p0", "recreate p2"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_controller_started_after_an_unpause_still_knows_the_verdict_before_it_is_stale() {
    let mut h = harness(&busybox(
        "aa",
        "      healthcheck:\n        test: [\"CMD\", \"true\"]\n",
    ));
    h.put("aa", ContainerStatus::Running);
    // Its last probe, from before the pause, said unhealthy.
    let probed = chrono::Utc::now() - chrono::Duration::seconds(5);
    h.engine.change("aa", |c| {
        c.status = ContainerStatus::Paused;
        c.health = Some(HealthState::Unhealthy);
        c.health_probed_at = Some(probed);
    });
    assert_eq!(
        h.look("aa").await,
        Outcome::Acted {
            action: Action::Unpause
        }
    );
    h.restart_controller();
    // Running again, its verdict still the one from before the pause (the engine sends
    // nothing until the next probe): a new controller must not restart it for that.
    let outcome = h.look("aa").await;
    assert_eq!(
        outcome,
        Outcome::Clean,
        "judged on a verdict from before the pause; engine {:?}",
        h.engine.actions()
    );
    assert_eq!(h.engine.actions(), vec!["unpause aa"]);
    let unhealthy = |tickets: Vec<Ticket>| tickets.iter().any(|t| t.drift.as_str() == "unhealthy");
    assert!(!unhealthy(h.tickets("aa").await));
    // A probe after the unpause that fails is believed.
    h.engine.change("aa", |c| {
        c.health_probed_at = Some(chrono::Utc::now() + chrono::Duration::seconds(1));
    });
    let outcome = h.look("aa").await;
    assert!(
        matches!(
            outcome,
            Outcome::BackingOff { .. }
                | Outcome::Acted {
                    action: Action::Restart
                }
        ),
        "{outcome:?}"
    );
    assert!(unhealthy(h.tickets("aa").await));
}

/// An agent that takes every request as a session that reports back later.
struct Sessions;

impl Remediator for Sessions {
    fn actor(&self) -> Actor {
        Actor::Agent
    }

    fn remediate<'a>(
        &'a self,
        request: RemediationRequest<'a>,
    ) -> futures::future::BoxFuture<'a, Dispatch> {
        let session = SessionId(format!("s-{}", request.attempt));
        Box::pin(async move { Dispatch::Started { session } })
    }
}

#[tokio::test(start_paused = true)]
async fn an_agent_session_leases_the_service_until_it_reports_back() {
    let mut h = harness(&busybox("aa", "      remediation: {policy: agent}\n"));
    h.controller = controller_with(&h.desired, &h.journal, &h.engine, Some(Arc::new(Sessions)));
    h.put("aa", ContainerStatus::Exited);
    let session = SessionId("s-1".into());
    assert_eq!(
        h.look("aa").await,
        Outcome::Dispatched {
            session: session.clone()
        }
    );
    // Leased: not looked at, not acted on, whatever it shows, until the session reports.
    assert_eq!(h.look("aa").await, Outcome::Leased { session });
    assert!(
        h.engine.actions().is_empty(),
        "the session acts, not the controller"
    );
    let ticket = &h.tickets("aa").await[0];
    assert_eq!(
        h.timeline_kinds(ticket.id).await,
        vec!["detected", "action-started", "agent-dispatched"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_dependent_is_restarted_once_its_restart_with_dependency_started_after_it() {
    let h = harness(&format!(
        "{}{}",
        busybox("db", ""),
        busybox("api", "      dependsOn: [db]\n      restartWith: [db]\n")
    ));
    h.put("api", ContainerStatus::Running);
    h.put("db", ContainerStatus::Running);
    h.see(&["db"]).await;
    // db's container started after api's: api still talks to the db before it.
    assert_eq!(
        h.look("api").await,
        Outcome::Acted {
            action: Action::Restart
        }
    );
    assert_eq!(h.look("api").await, Outcome::Clean, "once, not per look");
    assert_eq!(h.engine.actions(), vec!["restart api"]);
    assert!(
        h.tickets("api").await.is_empty(),
        "a deliberate step, not an incident"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_check_with_policy_restart_restarts_its_service_once_on_the_checks_ticket() {
    // Prometheus is never asked: the check's verdict is handed over as the check recorder
    // would (a ticket, then a restart request).
    let h = harness_with(
        &busybox("aa", ""),
        "  prometheus: {url: \"http://127.0.0.1:9\"}\n  checks:\n    - name: up\n      expr: 'up == 0'\n      service: aa\n      remediation: {policy: restart}\n",
    );
    h.put("aa", ContainerStatus::Running);
    let (ticket, _) = h
        .journal
        .sighting(
            DriftSighting {
                fingerprint: Fingerprint::check("c", Target::Service("aa".into()), "up"),
                drift: DriftKind::CheckFailed,
                detail: "up == 0 for aa".into(),
                cooldown: Duration::from_secs(600),
                evidence: None,
            },
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    let key = ServiceKey::new("c", "aa");
    h.controller.shared.keys.with(&key, |state| {
        state.check_restart = Some(CheckRestart {
            check: "up".into(),
            ticket: ticket.id,
            detail: "up == 0 for aa".into(),
            settle: Duration::from_secs(5),
        })
    });
    assert_eq!(
        h.look("aa").await,
        Outcome::Acted {
            action: Action::Restart
        }
    );
    let started = h.journal.timeline(ticket.id).await.unwrap();
    let started = started
        .iter()
        .find(|e| e.kind.as_str() == "action-started")
        .expect("the restart is on the check's ticket");
    assert_eq!(started.detail["drifts"][0], "check-failed:up");
    // Asked once: the next look is the service's own (clean; the check's ticket is the
    // check's to resolve).
    assert_eq!(h.look("aa").await, Outcome::Clean);
    assert_eq!(h.engine.actions(), vec!["restart aa"]);
    let open = h.journal.get(ticket.id).await.unwrap().unwrap();
    assert_ne!(open.status, Status::Resolved);
}

impl Harness {
    /// The ticket store's round trips `f` makes.
    async fn round_trips<T>(&self, f: impl std::future::Future<Output = T>) -> (T, u64) {
        let before = self.metrics.store_round_trips.get();
        let out = f.await;
        (out, self.metrics.store_round_trips.get() - before)
    }
}

#[tokio::test(start_paused = true)]
async fn a_repair_costs_at_most_four_store_round_trips_and_a_quiet_look_none() {
    let h = harness(&busybox("aa", ""));
    assert_eq!(
        h.look("aa").await,
        Outcome::Acted {
            action: Action::Create
        }
    );
    assert_eq!(h.look("aa").await, Outcome::Clean);
    let (outcome, quiet) = h.round_trips(h.look("aa")).await;
    assert_eq!(outcome, Outcome::Clean);
    assert_eq!(quiet, 0, "the view the last look left is still the store's");

    h.engine
        .change("aa", |c| c.status = ContainerStatus::Exited);
    let (outcome, acting) = h.round_trips(h.look("aa")).await;
    assert_eq!(
        outcome,
        Outcome::Acted {
            action: Action::Start
        }
    );
    let (outcome, resolving) = h.round_trips(h.look("aa")).await;
    assert_eq!(outcome, Outcome::Clean);
    assert_eq!(h.tickets("aa").await[0].status, Status::Resolved);
    // The sighting, the attempt with its budget, the result; the resolution with the budget.
    assert_eq!((acting, resolving), (3, 1));
    let (_, after) = h.round_trips(h.look("aa")).await;
    assert_eq!(after, 0);
}

#[tokio::test(start_paused = true)]
async fn what_another_process_writes_is_read_by_the_next_look_not_the_kept_view() {
    let h = harness(&busybox("aa", ""));
    h.put("aa", ContainerStatus::Running);
    assert_eq!(h.look("aa").await, Outcome::Clean);
    let (_, quiet) = h.round_trips(h.look("aa")).await;
    assert_eq!(quiet, 0, "the look reads the kept view");
    // Another process (a drill, a second controller's store) opens a ticket on the service
    // through a connection of its own.
    let other = Store::open(&h._dir.0.join("tickets.db")).unwrap();
    let (ticket, _) = other
        .record_drift(
            &DriftSighting {
                fingerprint: Fingerprint::service("c", "aa", DriftKind::Stopped),
                drift: DriftKind::Stopped,
                detail: "exited (0)".into(),
                cooldown: Duration::from_secs(600),
                evidence: None,
            },
            chrono::Utc::now(),
        )
        .unwrap();
    drop(other);
    // A look that used the kept view would not know the ticket, and leave it open.
    let (outcome, read) = h.round_trips(h.look("aa")).await;
    assert_eq!(outcome, Outcome::Clean);
    assert!(read >= 1, "read afresh");
    let ticket = h.journal.get(ticket.id).await.unwrap().unwrap();
    assert_eq!(ticket.status, Status::Resolved, "{ticket:?}");
}
