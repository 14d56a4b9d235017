//! `operator run`: the long-running controller (or one pass with `--once`).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::manifest;
use crate::metrics::Metrics;
use crate::reconcile::{Controller, ControllerConfig, Outcome};
use crate::tickets::Journal;

use super::reload::fingerprint;
use super::table::Table;
use super::{Failure, RunArgs, outln};

use super::report::CONNECT_TIMEOUT;
/// How often the manifest files are checked for edits.
const RELOAD_POLL: Duration = Duration::from_secs(2);

pub async fn run(args: RunArgs) -> Result<ExitCode, Failure> {
    // Validate everything before touching Docker.
    let (desired, positions) = manifest::load_with_positions(&args.paths.paths)?;
    // A Prometheus that is down now is the controller's to watch for: it runs with those
    // checks frozen, and their observability-lost ticket (one warning) opens if it lasts.
    // So this is said once, at info level, not as a second warning.
    for u in super::report::check_promql(&desired, &positions, false).await? {
        info!(
            cluster = %u.cluster,
            prometheus = %u.url,
            reason = %u.reason,
            "Prometheus cannot be asked at start: the checks are frozen (their PromQL parses; it is evaluated once Prometheus answers)"
        );
    }
    // One controller per database, taken before anything is opened or migrated; held until
    // this function returns.
    let db = args.db.path();
    let ownership = crate::tickets::Ownership::acquire(&db)?;
    info!(lock = %ownership.path().display(), "this controller owns the ticket database");
    // The listener next, then the engine (essential: no engine, no controller), so a taken
    // port or a missing socket fails before a database is created or migrated.
    let metrics = Arc::new(Metrics::new());
    // The observed store: the controller's watcher writes it, /healthz reads it.
    let observed = crate::docker::store::Writer::new();
    let cancel = CancellationToken::new();
    let server = if args.once {
        None
    } else {
        let (bound, serve) = crate::server::bind(
            args.listen,
            metrics.clone(),
            observed.reader(),
            cancel.clone(),
        )
        .await?;
        info!(listen = %bound, "serving /metrics and /healthz");
        Some(serve)
    };
    let docker = crate::docker::connect(CONNECT_TIMEOUT).await?;
    let store = Arc::new(crate::tickets::Store::open(&db)?);
    info!(db = %store.path().display(), "ticket store open");
    // A drill killed mid-fault left its faults behind (a paused container, a fill file...):
    // undone before the loop, so the controller does not start by "repairing" a fault that
    // nobody will undo. Never fails the start.
    super::chaos::undo_left_at_start(store.clone()).await;
    let config = ControllerConfig::default()
        .resync(args.resync)
        .relist(args.relist)
        .workers(args.workers)
        .settle(args.settle)
        .lease_timeout(args.agent_lease_timeout)
        .observe_only(args.observe_only);
    let journal = Journal::new(store.clone(), metrics.clone());
    // The agent needs the controller's desired state, and the controller its remediator.
    let controller_cell: Arc<std::sync::OnceLock<Controller>> = Arc::default();
    let agent = agent_dispatcher(
        &args.agent,
        &db,
        docker.clone(),
        &desired,
        controller_cell.clone(),
        journal.clone(),
        metrics.clone(),
    )?;
    let mut builder = Controller::builder(docker, desired)
        .metrics(metrics.clone())
        .store(observed)
        .config(config)
        .journal(journal);
    if let Some(agent) = &agent {
        builder = builder.remediator(manifest::Policy::Agent, Arc::new(agent.clone()));
    }
    let controller = builder.build();
    let _ = controller_cell.set(controller.clone());
    let agent_task = agent.map(|a| tokio::spawn(a.run(cancel.child_token())));

    let Some(serve) = server else {
        let exit = once(&controller, args.json).await;
        cancel.cancel();
        if let Some(task) = agent_task {
            let _ = task.await;
        }
        return exit;
    };
    let server = tokio::spawn(serve);

    let signals = tokio::spawn(watch_signals_and_manifests(
        controller.clone(),
        args.paths.paths.clone(),
        cancel.clone(),
    ));
    let result = controller.run(cancel.clone()).await;
    cancel.cancel();
    signals.abort();
    if let Some(task) = agent_task {
        let _ = task.await;
    }
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Err(e))) => warn!(error = %e, "http server ended with an error"),
        Err(_) => warn!("http server did not stop within 5 s; leaving it"),
        _ => {}
    }
    result?;
    info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// The agent remediator: serving sessions here when `ANTHROPIC_API_KEY` is set, only
/// queueing them with `--agent-dispatch external`; otherwise `None`, said once in the log
/// (agent tickets then stay open with a note saying why).
#[allow(clippy::too_many_arguments)]
fn agent_dispatcher(
    args: &super::AgentArgs,
    db: &std::path::Path,
    docker: bollard::Docker,
    desired: &manifest::DesiredState,
    controller: Arc<std::sync::OnceLock<Controller>>,
    journal: Journal,
    metrics: Arc<Metrics>,
) -> Result<Option<crate::agent::dispatcher::Dispatcher>, Failure> {
    use crate::agent::dispatcher::{Dispatcher, Mode};
    let key = super::agent::api_key()?;
    let mode = if args.agent_dispatch == "external" {
        Mode::Queue
    } else {
        Mode::Local
    };
    if key.is_none() && mode == Mode::Local {
        metrics.agent_dispatching.set(0);
        if !desired.agent_users().is_empty() {
            warn!(
                "the agent is disabled: ANTHROPIC_API_KEY is not set; agent tickets stay open for a person"
            );
        }
        return Ok(None);
    }
    let cfg = super::agent::config(args, db, if mode == Mode::Queue { None } else { key });
    let initial = Arc::new(desired.clone());
    let cell = controller.clone();
    let agent = Dispatcher::new(
        mode,
        cfg,
        docker,
        move || {
            cell.get()
                .map(|c| c.desired())
                .unwrap_or_else(|| initial.clone())
        },
        journal,
        metrics,
    )
    .map_err(|e| Failure::new(e.to_string()))?;
    // The agent's proxies judge against what this controller has under way too.
    agent.registry().also_controller(move |cluster| {
        controller
            .get()
            .map(|c| c.under_way(cluster))
            .unwrap_or_default()
    });
    match mode {
        Mode::Queue => {
            info!("agent sessions are queued for `operator agent` (--agent-dispatch external)")
        }
        _ => {
            info!(model = %args.agent_model, safety_mode = %args.safety_mode, sessions = args.agent_sessions, "the agent is enabled")
        }
    }
    Ok(Some(agent))
}

/// Cancels on SIGINT/SIGTERM; reloads the manifests on SIGHUP and when the files change.
async fn watch_signals_and_manifests(
    controller: Controller,
    paths: Vec<std::path::PathBuf>,
    cancel: CancellationToken,
) {
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        error!("cannot install signal handlers; stop the controller with SIGKILL");
        return;
    };
    let mut seen = fingerprint(&paths);
    let mut poll = tokio::time::interval(RELOAD_POLL);
    loop {
        let forced = tokio::select! {
            _ = term.recv() => { stop_requested(&cancel, "SIGTERM"); continue; }
            _ = int.recv() => { stop_requested(&cancel, "SIGINT"); continue; }
            _ = hup.recv() => true,
            _ = poll.tick() => false,
        };
        if cancel.is_cancelled() {
            continue;
        }
        let now = fingerprint(&paths);
        if !forced && now == seen {
            continue;
        }
        seen = now;
        reload(&controller, &paths);
    }
}

/// The first stop signal lets in-flight repairs finish; a second one exits at once.
fn stop_requested(cancel: &CancellationToken, signal: &str) {
    if cancel.is_cancelled() {
        warn!(
            signal,
            "second stop signal: exiting now, in-flight repairs abandoned"
        );
        std::process::exit(130);
    }
    info!(
        signal,
        "stop requested: finishing in-flight repairs (send it again to exit at once)"
    );
    cancel.cancel();
}

fn reload(controller: &Controller, paths: &[std::path::PathBuf]) {
    let metrics = controller.metrics();
    match manifest::load(paths) {
        Ok(desired) => {
            if *controller.desired() == desired {
                info!("manifests unchanged");
                return;
            }
            info!("manifests changed: rolling out");
            metrics.reload("applied");
            controller.set_desired(desired);
        }
        Err(e) => {
            metrics.reload("rejected");
            error!(error = %e, "manifest edit rejected; keeping the last good state");
        }
    }
}

async fn once(controller: &Controller, json: bool) -> Result<ExitCode, Failure> {
    let outcomes = controller.reconcile_once().await?;
    let ok = outcomes.iter().all(|(_, o)| {
        matches!(
            o,
            Outcome::Clean | Outcome::Acted { .. } | Outcome::Observed
        )
    });
    if json {
        let rows: Vec<_> = outcomes
            .iter()
            .map(|(key, outcome)| {
                serde_json::json!({
                    "cluster": key.cluster,
                    "service": key.service,
                    "result": outcome,
                })
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        let mut table = Table::new(&["CLUSTER", "SERVICE", "RESULT"]);
        for (key, outcome) in &outcomes {
            let detail = match outcome {
                Outcome::Acted { action } => format!("repaired: {action}"),
                Outcome::Failed { action, error } => format!("{action} failed: {error}"),
                Outcome::Unknown { error } => format!("unknown: {error}"),
                Outcome::Unrecorded { error } => format!("not acting, cannot record: {error}"),
                Outcome::Waiting { dependency } => format!("waiting for {dependency}"),
                Outcome::BackingOff { retry_in_ms } => format!("backing off ({retry_in_ms} ms)"),
                Outcome::NotRepaired { drift, detail } => {
                    format!("not repaired: {drift}: {detail}")
                }
                Outcome::Settling => {
                    "not settled: running less than the settle time, or not yet healthy".into()
                }
                other => other.label().to_string(),
            };
            table.row(vec![key.cluster.clone(), key.service.clone(), detail]);
        }
        table.print()?;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
