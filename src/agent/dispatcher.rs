//! Pages the agent: the [`Remediator`] the controller hands `agent` drifts to. A request is
//! queued and answered at once with [`Dispatch::Started`] (the controller leases the key and
//! keeps healing everything else); sessions run outside the reconcile workers, at most
//! `concurrency` at a time, in ticket order; each reports back with a [`Completed`], after
//! which only the controller's re-check may resolve the ticket.
//!
//! # Guarantees
//! - A ticket is claimed in the database (a lease renewed while the session runs) before its
//!   session starts, so two dispatchers never run one ticket; a dispatcher that dies frees it
//!   when the lease expires.
//! - A fatal API answer (key refused, no permission, spend limit) stops all dispatching at
//!   once: queued and later requests fail with the reason (log, ticket, `/metrics`), nothing
//!   is retried.
//! - The controller-wide rolling token budget (per hour) is checked before each session.
//! - The API key is only in the client's request header: redacted from the audit, absent
//!   from the commands' environment.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use chrono::Utc;
use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::json;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::docker::ServiceKey;
use crate::manifest::{DesiredState, SafetyMode, VolumeMount};
use crate::metrics::Metrics;
use crate::remediation::{
    Completed, Completions, Dispatch, RemediationError, RemediationRequest, Remediator, SessionId,
};
use crate::tickets::{
    Actor, AuditJournal, ClaimOutcome, EntryKind, Journal, NewSession, SafetyMode as StoredMode,
    Status, Verdict,
};

use super::api;
use super::audit::{AuditLog, Redactor};
use super::prompt;
use super::safety::SafetyContext;
use super::session::{self, SessionConfig, SessionDeps};
use super::shell::{ChildEnv, EnvPolicy};
use super::tools::ToolContext;

/// The model used when neither the manifest, a flag nor `$OPERATOR_AGENT_MODEL` names one.
pub const DEFAULT_MODEL: &str = "claude-sonnet-4-5";
/// How long a ticket claim lasts unless renewed (renewed every third of it).
pub const CLAIM_TTL: Duration = Duration::from_secs(60);

/// The controller-wide agent configuration (per-cluster limits are in the manifest).
#[derive(Clone)]
pub struct AgentConfig {
    pub key: api::ApiKey,
    pub base_url: String,
    pub model: String,
    pub mode: SafetyMode,
    /// Sessions at once (default 1).
    pub concurrency: usize,
    /// Tokens (input, cache included, and output) all sessions may use in any hour.
    pub hourly_tokens: Option<u64>,
    pub approval_timeout: Duration,
    /// Names of environment variables the commands must not see (besides the key and the
    /// names that look secret).
    pub secret_env: Vec<String>,
    /// The ticket database (protected from the agent's commands; sessions are filed beside).
    pub db: PathBuf,
    /// Who runs the sessions, for claims and the audit: `pid N on HOST`.
    pub holder: String,
}

struct Job {
    session: String,
    key: ServiceKey,
    ticket: i64,
    completions: Completions,
}

struct Inner {
    cfg: AgentConfig,
    client: api::Client,
    docker: Docker,
    desired: Box<dyn Fn() -> Arc<DesiredState> + Send + Sync>,
    journal: Journal,
    audit: AuditJournal,
    metrics: Arc<Metrics>,
    queue: Mutex<BTreeMap<(i64, u64), Job>>,
    seq: AtomicU64,
    wake: Notify,
    /// Why dispatching stopped for good (a fatal API answer).
    stopped: Mutex<Option<String>>,
    http: reqwest::Client,
}

/// The agent remediator; clones share everything.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn stored(mode: SafetyMode) -> StoredMode {
    match mode {
        SafetyMode::Observe => StoredMode::Observe,
        SafetyMode::Approve => StoredMode::Approve,
        SafetyMode::Execute => StoredMode::Execute,
    }
}

impl Dispatcher {
    pub fn new(
        cfg: AgentConfig,
        docker: Docker,
        desired: impl Fn() -> Arc<DesiredState> + Send + Sync + 'static,
        journal: Journal,
        audit: AuditJournal,
        metrics: Arc<Metrics>,
    ) -> Result<Dispatcher, api::ApiError> {
        let client = api::Client::new(api::ClientConfig::new(&cfg.base_url), cfg.key.clone())?;
        metrics.agent_dispatching.set(1);
        Ok(Dispatcher {
            inner: Arc::new(Inner {
                cfg,
                client,
                docker,
                desired: Box::new(desired),
                journal,
                audit,
                metrics,
                queue: Mutex::new(BTreeMap::new()),
                seq: AtomicU64::new(0),
                wake: Notify::new(),
                stopped: Mutex::new(None),
                http: reqwest::Client::new(),
            }),
        })
    }

    /// Runs queued sessions until `cancel`; a session running then is cancelled (recorded as
    /// such) and reports back before this returns.
    pub async fn run(self, cancel: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.inner.cfg.concurrency.max(1)));
        let mut running = tokio::task::JoinSet::new();
        let mut sweep = tokio::time::interval(CLAIM_TTL / 3);
        loop {
            loop {
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    break;
                };
                let Some(job) = lock(&self.inner.queue).pop_first().map(|(_, job)| job) else {
                    break;
                };
                let this = self.clone();
                let stop = cancel.child_token();
                running.spawn(async move {
                    this.run_job(job, stop).await;
                    drop(permit);
                });
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.inner.wake.notified() => {}
                Some(_) = running.join_next(), if !running.is_empty() => {}
                _ = sweep.tick() => self.close_orphans().await,
            }
        }
        while running.join_next().await.is_some() {}
        // Requests never started: their keys must not stay leased.
        let left: Vec<Job> = std::mem::take(&mut *lock(&self.inner.queue))
            .into_values()
            .collect();
        for job in left {
            self.complete(
                &job,
                Err("the controller stopped before the session began".into()),
            );
        }
    }

    /// Sessions left `running` by a process that died (its claim expired): marked
    /// interrupted, so the audit does not show them running forever. Their tickets' actions
    /// are closed by the controller, which re-dispatches within the agent's budget.
    async fn close_orphans(&self) {
        let audit = &self.inner.audit;
        let now = Utc::now();
        let Ok(orphans) = audit.interrupted_sessions(None, now).await else {
            return;
        };
        for session in orphans {
            let why = format!("its dispatcher ({}) stopped mid-session", session.holder);
            match audit.mark_interrupted(session.id.clone(), why, now).await {
                Ok(true) => {
                    warn!(session = %session.id, ticket = session.ticket_id, holder = %session.holder, "agent session interrupted by its dispatcher's end")
                }
                Ok(false) => {}
                Err(e) => {
                    warn!(session = %session.id, error = %e, "cannot mark the session interrupted")
                }
            }
        }
    }

    fn complete(&self, job: &Job, result: Result<(), String>) {
        let session = SessionId(job.session.clone());
        let _ = job.completions.send(Completed {
            key: job.key.clone(),
            ticket: Some(job.ticket),
            session: session.clone(),
            result: result.map_err(|reason| RemediationError::Session { session, reason }),
        });
    }

    async fn note(&self, ticket: i64, note: String) {
        if let Err(e) = self
            .inner
            .journal
            .note(ticket, EntryKind::Note, json!({"note": note}))
            .await
        {
            warn!(ticket, error = %e, "cannot note on the ticket");
        }
    }

    async fn run_job(&self, job: Job, cancel: CancellationToken) {
        let inner = &self.inner;
        if let Some(why) = lock(&inner.stopped).clone() {
            self.complete(&job, Err(why));
            return;
        }
        if let Some(limit) = inner.cfg.hourly_tokens {
            let since = Utc::now() - chrono::Duration::hours(1);
            if let Ok(used) = inner.audit.usage_since(since).await {
                let total = used.input + used.output + used.cache_read + used.cache_write;
                if total >= limit {
                    let why = format!(
                        "the agent's token budget is spent ({total} of {limit} tokens in the last hour)"
                    );
                    self.note(job.ticket, why.clone()).await;
                    self.complete(&job, Err(why));
                    return;
                }
            }
        }
        let now = Utc::now();
        let ttl = chrono::Duration::from_std(CLAIM_TTL).unwrap_or_default();
        match inner
            .audit
            .claim(
                job.ticket,
                inner.cfg.holder.clone(),
                Some(job.session.clone()),
                now + ttl,
                now,
            )
            .await
        {
            Ok(ClaimOutcome::Claimed(_)) => {}
            Ok(ClaimOutcome::HeldBy(other)) => {
                let why = format!("ticket {} is claimed by {}", job.ticket, other.holder);
                self.complete(&job, Err(why));
                return;
            }
            Err(e) => {
                self.complete(&job, Err(format!("cannot claim the ticket: {e}")));
                return;
            }
        }
        let renewing = cancel.child_token();
        let renew = {
            let audit = inner.audit.clone();
            let (ticket, holder, stop) = (job.ticket, inner.cfg.holder.clone(), renewing.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(CLAIM_TTL / 3) => {}
                    }
                    let until = Utc::now() + ttl;
                    if let Err(e) = audit.renew_claim(ticket, holder.clone(), until).await {
                        warn!(ticket, error = %e, "cannot renew the ticket's claim");
                    }
                }
            })
        };
        let (result, log) = self.session(&job, &cancel).await;
        renewing.cancel();
        let _ = renew.await;
        if let Err(e) = inner
            .audit
            .release_claim(job.ticket, inner.cfg.holder.clone())
            .await
        {
            warn!(ticket = job.ticket, error = %e, "cannot release the ticket's claim");
        }
        self.complete(&job, result.clone());
        if let Some(log) = log {
            let journal = inner.journal.clone();
            let ticket = job.ticket;
            tokio::spawn(async move { record_verdict(journal, log, ticket).await });
        }
    }

    /// Runs the session of `job`: `Ok` when the model finished its turn, and the session's
    /// audit once it began.
    async fn session(
        &self,
        job: &Job,
        cancel: &CancellationToken,
    ) -> (Result<(), String>, Option<AuditLog>) {
        match self.prepare(job).await {
            Ok((deps, cfg, incident)) => {
                let result = self.converse(job, &deps, &cfg, incident, cancel).await;
                (result, Some(deps.audit))
            }
            Err(why) => (Err(why), None),
        }
    }

    /// Everything a session of `job` needs, its audit opened.
    async fn prepare(&self, job: &Job) -> Result<(SessionDeps, SessionConfig, String), String> {
        let inner = &self.inner;
        let desired = (inner.desired)();
        let Some(cluster) = desired.cluster(&job.key.cluster).cloned() else {
            return Err(format!("cluster {} is no longer declared", job.key.cluster));
        };
        let ticket = match inner.journal.get(job.ticket).await {
            Ok(Some(t)) => t,
            Ok(None) => return Err(format!("no ticket {}", job.ticket)),
            Err(e) => return Err(e.to_string()),
        };
        let timeline = inner
            .journal
            .timeline(job.ticket)
            .await
            .map_err(|e| e.to_string())?;
        let model = cluster
            .agent
            .model
            .clone()
            .unwrap_or_else(|| inner.cfg.model.clone());
        let mode = cluster.agent.safety_mode.unwrap_or(inner.cfg.mode);
        let secret_names: Vec<&str> = std::iter::once(super::shell::API_KEY_VAR)
            .chain(inner.cfg.secret_env.iter().map(String::as_str))
            .collect();
        let redactor = Redactor::from_env(secret_names.iter().copied());
        let sessions_dir = super::audit::default_sessions_dir(&inner.cfg.db);
        let audit = AuditLog::start(
            inner.audit.clone(),
            &sessions_dir,
            redactor,
            NewSession {
                id: job.session.clone(),
                ticket_id: job.ticket,
                cluster: cluster.name.clone(),
                service: job.key.service.clone(),
                model: model.clone(),
                mode: stored(mode),
                holder: inner.cfg.holder.clone(),
            },
            Utc::now(),
        )
        .await
        .map_err(|e| format!("cannot open the session's audit: {e}"))?;
        let mut policy = EnvPolicy::default();
        for name in &inner.cfg.secret_env {
            policy = policy.secret_name(name.clone());
        }
        let home = std::env::var("HOME").ok();
        let mut safety = SafetyContext::default()
            .protect_database(inner.cfg.db.clone())
            .protect_path(sessions_dir.clone());
        if let Some(home) = &home {
            safety = safety.home(home.clone());
        }
        for service in &cluster.services {
            for volume in &service.volumes {
                if let VolumeMount::Named { name, .. } = volume {
                    safety = safety.managed_volume(name.clone());
                }
            }
        }
        if let Ok(me) = std::env::var("HOSTNAME") {
            // In a container, the controller's own container answers to its hostname.
            safety = safety.controller_container(me);
        }
        let limits = prompt::Limits {
            mode,
            max_turns: cluster.agent.max_turns,
            max_session_time: cluster.agent.max_session_time,
            command_timeout: cluster.agent.command_timeout,
        };
        let incident = prompt::incident(&ticket, &timeline, &cluster, &limits);
        let cfg = SessionConfig {
            model,
            mode,
            max_tokens_per_turn: 4096,
            max_turns: cluster.agent.max_turns,
            max_time: cluster.agent.max_session_time,
            max_input_tokens: cluster.agent.max_input_tokens,
            max_output_tokens: cluster.agent.max_output_tokens,
            command_timeout: cluster.agent.command_timeout,
            approval_timeout: inner.cfg.approval_timeout,
            repeat_limit: 2,
        };
        let deps = SessionDeps {
            client: inner.client.clone(),
            tools: ToolContext {
                docker: inner.docker.clone(),
                desired: desired.clone(),
                journal: inner.journal.clone(),
                cluster: cluster.name.clone(),
                ticket: job.ticket,
                http: inner.http.clone(),
            },
            env: ChildEnv::from_current(&policy),
            safety,
            audit,
            approvals: inner.audit.clone(),
        };
        info!(service = %job.key, ticket = job.ticket, session = %job.session, mode = %mode, "agent session started");
        Ok((deps, cfg, incident))
    }

    async fn converse(
        &self,
        job: &Job,
        deps: &SessionDeps,
        cfg: &SessionConfig,
        incident: String,
        cancel: &CancellationToken,
    ) -> Result<(), String> {
        let inner = &self.inner;
        let summary = session::run(deps, cfg, incident, cancel).await;
        let m = &inner.metrics;
        m.agent_sessions
            .get_or_create(&vec![("stop", summary.stop.as_str().to_string())])
            .inc();
        for (kind, n) in [
            ("input", summary.tokens.input),
            ("output", summary.tokens.output),
            ("cache_read", summary.tokens.cache_read),
            ("cache_write", summary.tokens.cache_write),
        ] {
            m.agent_tokens
                .get_or_create(&vec![("kind", kind.to_string())])
                .inc_by(n);
        }
        info!(service = %job.key, ticket = job.ticket, session = %job.session, stop = summary.stop.as_str(), turns = summary.turns, input_tokens = summary.tokens.input, output_tokens = summary.tokens.output, cache_read_tokens = summary.tokens.cache_read, cache_write_tokens = summary.tokens.cache_write, overhead_ms = summary.overhead.as_millis() as u64, "agent session ended; the controller re-checks");
        if let Some(fatal) = summary.fatal {
            let why = format!(
                "agent dispatching stopped: the API refused to serve ({}): {}",
                fatal.as_str(),
                summary.error.as_deref().unwrap_or("")
            );
            error!(ticket = job.ticket, "{why}");
            *lock(&inner.stopped) = Some(why.clone());
            m.agent_dispatching.set(0);
            self.note(job.ticket, why).await;
            // Everything queued fails now, with the reason.
            let left: Vec<Job> = std::mem::take(&mut *lock(&inner.queue))
                .into_values()
                .collect();
            for other in left {
                self.note(
                    other.ticket,
                    "agent dispatching stopped; see the log".into(),
                )
                .await;
                self.complete(
                    &other,
                    Err(lock(&inner.stopped).clone().unwrap_or_default()),
                );
            }
        }
        if summary.finished() {
            Ok(())
        } else {
            Err(summary
                .error
                .unwrap_or_else(|| format!("the session ended: {}", summary.stop.as_str())))
        }
    }
}

/// After the controller's re-check: the session's verdict is what happened to its ticket,
/// read (never decided) here — resolved in the agent's name, or not.
async fn record_verdict(journal: Journal, log: AuditLog, ticket: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Ok(Some(t)) = journal.get(ticket).await else {
            continue;
        };
        let done = t.status == Status::Resolved;
        if done || tokio::time::Instant::now() >= deadline || t.status == Status::Escalated {
            let verdict =
                if done && t.resolved_by.map(|c| c.as_str()) == Some(Actor::Agent.as_str()) {
                    Verdict::Resolved
                } else {
                    Verdict::NotResolved
                };
            let seen = json!({"ticket_status": t.status, "resolved_by": t.resolved_by});
            if let Err(e) = log.verdict(verdict, &seen).await {
                warn!(ticket, error = %e, "cannot record the session's verdict");
            }
            return;
        }
    }
}

impl Remediator for Dispatcher {
    fn actor(&self) -> Actor {
        Actor::Agent
    }

    fn available(&self) -> bool {
        lock(&self.inner.stopped).is_none()
    }

    fn remediate<'a>(&'a self, request: RemediationRequest<'a>) -> BoxFuture<'a, Dispatch> {
        async move {
            let inner = &self.inner;
            if let Some(why) = lock(&inner.stopped).clone() {
                return Dispatch::Done(Err(RemediationError::Session {
                    session: SessionId("-".into()),
                    reason: why,
                }));
            }
            let Some(ticket) = request.ticket else {
                return Dispatch::Done(Err(RemediationError::NoAction));
            };
            let session = match super::audit::new_session_id(Utc::now()) {
                Ok(id) => id,
                Err(e) => {
                    return Dispatch::Done(Err(RemediationError::Session {
                        session: SessionId("-".into()),
                        reason: e.to_string(),
                    }));
                }
            };
            let seq = inner.seq.fetch_add(1, Ordering::Relaxed);
            lock(&inner.queue).insert(
                (ticket, seq),
                Job {
                    session: session.clone(),
                    key: request.key.clone(),
                    ticket,
                    completions: request.completions.clone(),
                },
            );
            inner.wake.notify_one();
            Dispatch::Started {
                session: SessionId(session),
            }
        }
        .boxed()
    }
}
