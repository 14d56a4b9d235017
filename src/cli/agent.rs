//! `operator agent`: the dispatcher alone (the split deployment), and the agent
//! configuration `run` shares with it.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::agent::api;
use crate::agent::dispatcher::{AgentConfig, Dispatcher, Mode};
use crate::manifest;
use crate::metrics::Metrics;
use crate::tickets::{Journal, Store};

use super::report::CONNECT_TIMEOUT;
use super::{AgentArgs, AgentCommandArgs, Failure};

/// `ANTHROPIC_API_KEY`, if set (never a flag: flags show in `ps`).
pub fn api_key() -> Result<Option<api::ApiKey>, Failure> {
    match std::env::var(crate::agent::shell::API_KEY_VAR) {
        Ok(key) if !key.trim().is_empty() => api::ApiKey::new(key)
            .map(Some)
            .map_err(|e| Failure::new(e.to_string())),
        _ => Ok(None),
    }
}

/// The agent configuration from the flags and the environment.
pub fn config(args: &AgentArgs, db: &Path, key: Option<api::ApiKey>) -> AgentConfig {
    AgentConfig {
        key,
        base_url: std::env::var(api::BASE_URL_ENV)
            .ok()
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| api::DEFAULT_BASE_URL.to_string()),
        model: args.agent_model.clone(),
        mode: manifest::SafetyMode::parse(&args.safety_mode).unwrap_or_default(),
        concurrency: args.agent_sessions.max(1),
        hourly_tokens: args.agent_hourly_tokens,
        approval_timeout: args.approval_timeout,
        secret_env: args.secret_env.clone(),
        db: db.to_path_buf(),
        holder: format!(
            "pid {} on {}",
            std::process::id(),
            crate::tickets::host_name()
        ),
        claim_ttl: args.agent_claim_ttl,
        toolbox_image: args.toolbox_image.clone().filter(|i| !i.trim().is_empty()),
    }
}

pub async fn run(args: AgentCommandArgs) -> Result<ExitCode, Failure> {
    let desired = Arc::new(std::sync::RwLock::new(Arc::new(manifest::load(
        &args.paths.paths,
    )?)));
    let Some(key) = api_key()? else {
        return Err(Failure::new(
            "operator agent runs sessions and needs ANTHROPIC_API_KEY in its environment",
        ));
    };
    let db = args.db.path();
    crate::tickets::require_existing(&db)?;
    // Not the controller's lock: the controller owns the database; this process only takes
    // requests from it, under claims.
    let store = Arc::new(Store::open(&db)?);
    let metrics = Arc::new(Metrics::new());
    let docker = crate::docker::connect(CONNECT_TIMEOUT).await?;
    let cfg = config(&args.agent, &db, Some(key));
    let holder = cfg.holder.clone();
    let current = desired.clone();
    let dispatcher = Dispatcher::new(
        Mode::Standalone,
        cfg,
        docker,
        move || current.read().unwrap_or_else(|e| e.into_inner()).clone(),
        Journal::new(store, metrics.clone()),
        metrics,
    )
    .map_err(|e| Failure::new(e.to_string()))?;
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        if let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            info!("stop requested: cancelling the running session");
            stop.cancel();
        }
    });
    // Edits to the manifests are picked up as `run` picks them up (checked every 2 s); an
    // invalid edit is logged and the last good state kept.
    let paths = args.paths.paths.clone();
    let watching = cancel.clone();
    tokio::spawn(async move {
        let mut seen = super::reload::fingerprint(&paths);
        loop {
            tokio::select! {
                _ = watching.cancelled() => return,
                _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
            }
            let now = super::reload::fingerprint(&paths);
            if now == seen {
                continue;
            }
            seen = now;
            match manifest::load(&paths) {
                Ok(next) => {
                    *desired.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
                    info!("manifests reloaded");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "manifest edit rejected; keeping the last good state")
                }
            }
        }
    });
    info!(db = %db.display(), %holder, "agent dispatcher ready: taking requests");
    dispatcher.clone().run(cancel).await;
    if let Some(why) = dispatcher.stopped() {
        return Err(Failure::new(why));
    }
    info!("stopped");
    Ok(ExitCode::SUCCESS)
}
