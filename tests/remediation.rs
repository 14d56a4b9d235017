//! The remediation seam end to end on a real engine: a long-running remediator (the agent's
//! place; here a test remediator that does what an on-call engineer would, `docker start`)
//! is handed a drift, the key stays leased while it works (no second dispatch, no built-in
//! action), and only the controller's own re-check after the completion resolves the
//! ticket, credited to the remediator's actor.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use common::operator::TempDir;
use common::{BUSYBOX_IMAGE, Cleanup, cluster_yaml, docker_ok, require_docker, unique};
use operator::manifest::Policy;
use operator::reconcile::{Controller, ControllerConfig, Outcome};
use operator::remediation::{
    Actor, Completed, Dispatch, RemediationRequest, Remediator, SessionId,
};
use operator::tickets::{Cause, EntryKind, Journal, Status, Store, Ticket};

/// Starts the container itself, but only once the test lets it finish.
struct OnCall {
    calls: AtomicUsize,
    finish: Arc<Notify>,
}

impl Remediator for OnCall {
    fn actor(&self) -> Actor {
        Actor::Agent
    }

    fn remediate<'a>(&'a self, req: RemediationRequest<'a>) -> BoxFuture<'a, Dispatch> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let session = SessionId(format!("session-{n}"));
        let (key, ticket, name) = (req.key.clone(), req.ticket, req.service.name.clone());
        let (completions, finish) = (req.completions.clone(), self.finish.clone());
        let id = session.clone();
        tokio::spawn(async move {
            finish.notified().await;
            let started = tokio::task::spawn_blocking(move || docker_ok(&["start", &name]))
                .await
                .map(|_| ())
                .map_err(|e| operator::remediation::RemediationError::Session {
                    session: id.clone(),
                    reason: e.to_string(),
                });
            let _ = completions.send(Completed {
                key,
                ticket,
                session: id,
                result: started,
            });
        });
        async move { Dispatch::Started { session } }.boxed()
    }
}

fn manifest(cluster: &str, name: &str, policy: &str) -> String {
    cluster_yaml(
        cluster,
        &format!(
            r#"    - name: {name}
      image: {BUSYBOX_IMAGE}
      networkMode: host
      command: ["sleep", "3600"]
      remediation:
        policy: {policy}
        backoff: {{initial: 100ms, max: 200ms}}
"#
        ),
    )
}

fn ticket_of(store: &Store, name: &str) -> Option<Ticket> {
    store
        .list(None)
        .expect("list tickets")
        .into_iter()
        .find(|t| t.service == name)
}

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    for _ in 0..300 {
        if ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after 30 s waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leased_key_is_left_to_its_remediator_and_resolved_in_its_name_after_the_recheck() {
    require_docker();
    let cluster = unique("seam");
    let _cleanup = Cleanup::new(format!("operator.cluster={cluster}"));
    let name = format!("{cluster}-app");
    let dir = TempDir::new(&cluster);
    let db = dir.path().join("tickets.db");
    let docker = operator::docker::connect(Duration::from_secs(15))
        .await
        .expect("engine");

    // The controller creates the service (a first creation is the built-in executor's).
    dir.write("c.yaml", &manifest(&cluster, &name, "restart"));
    let desired = operator::manifest::load(&[dir.path().to_path_buf()]).expect("manifest");
    let first = Controller::builder(docker.clone(), desired).build();
    let outcomes = first.reconcile_once().await.expect("one pass");
    assert!(
        matches!(outcomes[0].1, Outcome::Acted { .. }),
        "{outcomes:?}"
    );

    dir.write("c.yaml", &manifest(&cluster, &name, "agent"));
    let desired = operator::manifest::load(&[dir.path().to_path_buf()]).expect("manifest");
    let store = Arc::new(Store::open(&db).expect("ticket store"));
    let metrics = Arc::new(operator::metrics::Metrics::new());
    let on_call = Arc::new(OnCall {
        calls: AtomicUsize::new(0),
        finish: Arc::new(Notify::new()),
    });
    let controller = Controller::builder(docker, desired)
        .metrics(metrics.clone())
        .config(ControllerConfig::default().resync(Duration::from_millis(500)))
        .journal(Journal::new(store.clone(), metrics))
        .remediator(Policy::Agent, on_call.clone())
        .build();
    let cancel = CancellationToken::new();
    let running = tokio::spawn({
        let (controller, cancel) = (controller.clone(), cancel.clone());
        async move { controller.run(cancel).await }
    });
    wait_for("the controller to list", || {
        controller.store().is_connected()
    })
    .await;

    docker_ok(&["kill", &name]);
    wait_for("the remediator to be paged", || {
        on_call.calls.load(Ordering::SeqCst) == 1
    })
    .await;

    // Leased: many resyncs and backoffs later, nobody has touched it again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(on_call.calls.load(Ordering::SeqCst), 1, "dispatched twice");
    let state = docker_ok(&["inspect", "-f", "{{.State.Status}}", &name]);
    assert_eq!(state.trim(), "exited", "something acted on a leased key");
    let ticket = ticket_of(&store, &name).expect("a ticket for the kill");
    assert_eq!(ticket.status, Status::Remediating);
    assert_eq!(
        controller.reconcile(&ticket_key(&cluster, &name)).await,
        Outcome::Leased {
            session: SessionId("session-1".into())
        }
    );

    on_call.finish.notify_one();
    wait_for("the re-check to resolve the ticket", || {
        ticket_of(&store, &name).is_some_and(|t| t.status == Status::Resolved)
    })
    .await;
    let ticket = ticket_of(&store, &name).expect("ticket");
    assert_eq!(ticket.resolved_by, Some(Cause::Agent));
    let timeline = store.timeline(ticket.id).expect("timeline");
    let steps: Vec<(EntryKind, Option<Actor>)> =
        timeline.iter().map(|e| (e.kind, e.actor)).collect();
    assert_eq!(
        steps,
        vec![
            (EntryKind::Detected, None),
            (EntryKind::ActionStarted, Some(Actor::Agent)),
            (EntryKind::AgentDispatched, None),
            (EntryKind::ActionResult, Some(Actor::Agent)),
            (EntryKind::Recheck, None),
            (EntryKind::Resolved, None),
        ],
        "{timeline:#?}"
    );
    assert_eq!(on_call.calls.load(Ordering::SeqCst), 1);

    cancel.cancel();
    running
        .await
        .expect("controller task")
        .expect("controller stops cleanly");
}

fn ticket_key(cluster: &str, name: &str) -> operator::docker::ServiceKey {
    operator::docker::ServiceKey::new(cluster, name)
}
