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

use std::collections::HashMap;
use std::path::PathBuf;
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
use crate::manifest::{DesiredState, SafetyMode};
use crate::metrics::Metrics;
use crate::remediation::{
    Completed, Completions, Dispatch, RemediationError, RemediationRequest, Remediator, SessionId,
};
use crate::tickets::{
    Actor, EntryKind, Journal, NewSession, SafetyMode as StoredMode, Status, Verdict,
};

use super::api;
use super::audit::{AuditLog, Redactor};
use super::prompt;
use super::proxy::Registry;
use super::sandbox::{OwnContainer, Sandbox, SandboxSpec};
use super::session::{self, SessionConfig, SessionDeps};
use super::shell::{ChildEnv, EnvPolicy};
use super::tools::ToolContext;

/// The model used when neither the manifest, a flag nor `$OPERATOR_AGENT_MODEL` names one.
pub const DEFAULT_MODEL: &str = "claude-sonnet-4-5";
/// How long a ticket claim lasts unless renewed (renewed every third of it), by default.
pub const CLAIM_TTL: Duration = Duration::from_secs(60);

/// The controller-wide agent configuration (per-cluster limits are in the manifest).
#[derive(Clone)]
pub struct AgentConfig {
    /// Needed to serve ([`Mode::Local`], [`Mode::Standalone`]); not to queue.
    pub key: Option<api::ApiKey>,
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
    /// How long a ticket claim lasts unless renewed (a dead dispatcher frees its ticket after
    /// it).
    pub claim_ttl: Duration,
    /// The toolbox image (`--toolbox-image`); by default the sidecar's own, or
    /// [`super::toolbox::DEFAULT_IMAGE`] on a host.
    pub toolbox_image: Option<String>,
}

/// How a budget refusal begins when the tokens used cannot be read.
const USAGE_UNREADABLE: &str = "cannot read the tokens used in the last hour";

/// A request taken from the queue, being served here.
#[derive(Clone)]
struct Job {
    session: String,
    key: ServiceKey,
    ticket: i64,
}

/// Where the dispatcher runs sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// In the controller's process: it queues requests and serves them.
    Local,
    /// The controller only queues; `operator agent` processes on the same database serve.
    Queue,
    /// `operator agent`: serves the queue of a controller running elsewhere.
    Standalone,
}

/// A request this process queued, awaiting its end to tell the controller.
struct Pending {
    key: ServiceKey,
    ticket: i64,
    completions: Completions,
}

struct Inner {
    cfg: AgentConfig,
    /// Absent in [`Mode::Queue`]: the key stays with the `operator agent` processes.
    client: Option<api::Client>,
    docker: Docker,
    desired: Box<dyn Fn() -> Arc<DesiredState> + Send + Sync>,
    journal: Journal,
    metrics: Arc<Metrics>,
    mode: Mode,
    /// Requests this process queued, by session id.
    pending: Mutex<HashMap<String, Pending>>,
    wake: Notify,
    /// Why dispatching stopped for good (a fatal API answer).
    stopped: Mutex<Option<String>>,
    http: reqwest::Client,
    /// What the sessions' proxies have under way, per cluster (the quorum gate's state for
    /// the agent's requests, shared by every session of this dispatcher).
    registry: Arc<Registry>,
    /// The sessions this process runs now: their toolboxes are never swept (a restarted
    /// sidecar is PID 1 on the same hostname again, so a holder string cannot tell a dead
    /// predecessor's session from one of its own).
    running: Mutex<std::collections::HashSet<String>>,
    /// A toolbox sweep is under way (they run beside the dispatcher's loop, one at a time).
    sweeping: std::sync::atomic::AtomicBool,
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
        mode: Mode,
        cfg: AgentConfig,
        docker: Docker,
        desired: impl Fn() -> Arc<DesiredState> + Send + Sync + 'static,
        journal: Journal,
        metrics: Arc<Metrics>,
    ) -> Result<Dispatcher, api::ApiError> {
        let client = match (&cfg.key, mode) {
            (_, Mode::Queue) | (None, _) => None,
            (Some(key), _) => Some(api::Client::new(
                api::ClientConfig::new(&cfg.base_url),
                key.clone(),
            )?),
        };
        metrics.agent_dispatching.set(1);
        Ok(Dispatcher {
            inner: Arc::new(Inner {
                cfg,
                client,
                docker,
                desired: Box::new(desired),
                journal,
                metrics,
                mode,
                pending: Mutex::new(HashMap::new()),
                wake: Notify::new(),
                stopped: Mutex::new(None),
                http: reqwest::Client::new(),
                registry: Arc::new(Registry::default()),
                running: Mutex::new(Default::default()),
                sweeping: Default::default(),
            }),
        })
    }

    /// Serves the queue (unless [`Mode::Queue`]) and tells the controller when its requests
    /// end, until `cancel`; a session running then is cancelled (recorded as such) first.
    pub async fn run(self, cancel: CancellationToken) {
        if self.inner.mode != Mode::Standalone {
            // One controller owns the database: what is still queued was queued by an earlier
            // run of it (a crash), whose leases are gone. Withdrawn, so no session starts for
            // a key nobody waits on; the controller pages again within budget.
            let why = "withdrawn: queued by an earlier run of the controller";
            match self
                .inner
                .journal
                .call(move |s| s.fail_queued_requests(why, Utc::now()))
                .await
            {
                Ok(left) if !left.is_empty() => {
                    warn!(
                        requests = left.len(),
                        "withdrew agent requests an earlier run of the controller left queued"
                    )
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "cannot withdraw the agent requests left queued"),
            }
        }
        self.sweep_toolboxes_beside();
        let serves = self.inner.mode != Mode::Queue && self.inner.client.is_some();
        let slots = Arc::new(Semaphore::new(self.inner.cfg.concurrency.max(1)));
        let mut running = tokio::task::JoinSet::new();
        let mut sweep = tokio::time::interval(self.inner.cfg.claim_ttl / 3);
        let mut poll = tokio::time::interval(Duration::from_millis(500));
        loop {
            while serves && lock(&self.inner.stopped).is_none() {
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    break;
                };
                let job = match self.take().await {
                    Ok(Some(job)) => job,
                    Ok(None) => break,
                    Err(e) => {
                        warn!(error = %e, "cannot take an agent request; trying again");
                        break;
                    }
                };
                let this = self.clone();
                let stop = cancel.child_token();
                running.spawn(async move {
                    this.run_job(job, stop).await;
                    this.inner.wake.notify_one();
                    drop(permit);
                });
            }
            self.deliver().await;
            // `operator agent` has nothing left to do once the API refused to serve.
            if self.inner.mode == Mode::Standalone && lock(&self.inner.stopped).is_some() {
                break;
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.inner.wake.notified() => {}
                Some(_) = running.join_next(), if !running.is_empty() => {}
                _ = poll.tick() => {}
                _ = sweep.tick() => {
                    self.close_orphans().await;
                    self.sweep_toolboxes_beside();
                }
            }
        }
        while running.join_next().await.is_some() {}
        // What this controller queued and nobody began: withdrawn, so no session starts for
        // a key the controller no longer leases.
        let queued: Vec<String> = lock(&self.inner.pending).keys().cloned().collect();
        for session in queued {
            self.withdraw_request(
                &session,
                "the controller stopped before the session began",
                false,
            )
            .await;
        }
        self.deliver().await;
    }

    /// Ends request `session` as failed with `reason` if nobody has begun it yet, or also
    /// while it runs when `running_too` (the session's dispatcher, in this process or another,
    /// sees that when it next renews its claim and ends the session).
    async fn withdraw_request(&self, session: &str, reason: &'static str, running_too: bool) {
        let id = session.to_string();
        let withdrawn = self
            .inner
            .journal
            .call(move |s| {
                s.agent_request(&id)?
                    .filter(|r| r.state == "queued" || (running_too && r.state == "running"))
                    .map(|_| s.finish_request(&id, false, Some(reason), Utc::now()))
                    .transpose()
            })
            .await;
        if let Err(e) = withdrawn {
            warn!(session, error = %e, "cannot withdraw the agent request");
        }
    }

    /// Removes the toolboxes of this database left by a process that died mid-session (their
    /// proxies died with it, so they reach nothing; removing them ends what they still run)
    /// and marks their sessions interrupted. At the controller's start and at every claim
    /// sweep after it (a dead process's claim may outlive it by up to its TTL); never a
    /// toolbox of this process's own sessions, nor one whose session's dispatcher still holds
    /// a live claim (an `operator agent` on the same database keeps serving while a
    /// controller restarts).
    /// Starts a [`Dispatcher::sweep_toolboxes`] beside the dispatcher's loop (each removal
    /// may wait on the engine), unless one is still under way.
    fn sweep_toolboxes_beside(&self) {
        use std::sync::atomic::Ordering;
        if self.inner.mode == Mode::Standalone || self.inner.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            this.sweep_toolboxes().await;
            this.inner.sweeping.store(false, Ordering::Release);
        });
    }

    async fn sweep_toolboxes(&self) {
        let inner = &self.inner;
        let found = match super::toolbox::list(&inner.docker, &inner.cfg.db).await {
            Ok(found) => found,
            Err(e) => {
                warn!(error = %e, "cannot look for toolboxes left by an earlier run");
                return;
            }
        };
        let claims = match inner.journal.live_claims(Utc::now()).await {
            Ok(claims) => claims,
            Err(e) => {
                // Unknown: removing a live session's toolbox would be worse than leaving a
                // dead one to its own lifetime.
                warn!(error = %e, "cannot read the claims; leaving the toolboxes found");
                return;
            }
        };
        let sockets = super::sandbox::sockets_dir(&inner.cfg.db);
        let ours = |session: &str| lock(&inner.running).contains(session);
        for toolbox in found {
            if ours(&toolbox.session) {
                continue;
            }
            let session = match inner.journal.session(toolbox.session.clone()).await {
                Ok(session) => session,
                // Unknown is not dead: looked at again at the next sweep.
                Err(_) => continue,
            };
            // Another process's session whose dispatcher still holds its claim.
            let served = session.as_ref().is_some_and(|s| {
                s.session.holder != inner.cfg.holder
                    && claims
                        .iter()
                        .any(|c| c.ticket_id == s.session.ticket_id && c.holder == s.session.holder)
            });
            if served {
                continue;
            }
            super::toolbox::remove_found(&inner.docker, &toolbox).await;
            // Only this session's socket folder: the folder is shared by every database
            // beside this one.
            let _ = std::fs::remove_dir_all(sockets.join(&toolbox.session));
            warn!(session = %toolbox.session, "removed a toolbox left by an earlier run of the controller");
            let why = "interrupted: its controller stopped mid-session; the toolbox was removed at the next start, and a command it had open may have run";
            let marked = inner
                .journal
                .mark_interrupted(toolbox.session.clone(), why.to_string(), Utc::now())
                .await;
            if let Ok(false) = marked {
                let entry = crate::tickets::NewEntry::new(
                    crate::tickets::AuditKind::Note,
                    json!({"note": why}),
                );
                let _ = inner
                    .journal
                    .append_entry(toolbox.session.clone(), entry, Utc::now())
                    .await;
            }
        }
        // Socket folders whose toolbox is already gone (it ended by itself after its
        // lifetime): this database's sessions only, that no longer run (a session's row is
        // written before its folder is made), and never this process's own.
        let Ok(entries) = std::fs::read_dir(&sockets) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if ours(&name) {
                continue;
            }
            let Ok(Some(log)) = inner.journal.session(name.clone()).await else {
                continue;
            };
            if log.session.outcome != crate::tickets::Outcome::Running {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// What the sessions' proxies have under way (the controller hands it its own, see
    /// [`Registry::also_controller`]).
    pub fn registry(&self) -> &Arc<Registry> {
        &self.inner.registry
    }

    /// Why dispatching stopped for good, if it did (a fatal API answer).
    pub fn stopped(&self) -> Option<String> {
        lock(&self.inner.stopped).clone()
    }

    /// Takes the next request whose ticket is free, claiming the ticket.
    async fn take(&self) -> Result<Option<Job>, crate::tickets::TicketError> {
        let holder = self.inner.cfg.holder.clone();
        let ttl = chrono::Duration::from_std(self.inner.cfg.claim_ttl).unwrap_or_default();
        let taken = self
            .inner
            .journal
            .call(move |s| {
                let now = Utc::now();
                s.take_request(&holder, now + ttl, now)
            })
            .await?;
        Ok(taken.map(|r| Job {
            key: ServiceKey::new(&r.cluster, &r.service),
            session: r.session_id,
            ticket: r.ticket_id,
        }))
    }

    /// Tells the controller about each of its requests that ended (here or in another
    /// dispatcher), so its lease ends and it re-checks.
    async fn deliver(&self) {
        let sessions: Vec<String> = lock(&self.inner.pending).keys().cloned().collect();
        for session in sessions {
            let id = session.clone();
            let request = match self.inner.journal.call(move |s| s.agent_request(&id)).await {
                Ok(Some(request)) => request,
                Ok(None) => continue,
                Err(e) => {
                    // Tried again at the next poll; the lease timeout bounds the wait.
                    warn!(session = %session, error = %e, "cannot read an agent request");
                    continue;
                }
            };
            if request.state != "done" {
                continue;
            }
            let Some(p) = lock(&self.inner.pending).remove(&session) else {
                continue;
            };
            let sid = SessionId(session);
            let result = if request.ok == Some(true) {
                Ok(())
            } else {
                Err(RemediationError::Session {
                    session: sid.clone(),
                    reason: request
                        .reason
                        .unwrap_or_else(|| "the session ended without finishing".into()),
                })
            };
            let _ = p.completions.send(Completed {
                key: p.key,
                ticket: Some(p.ticket),
                session: sid,
                result,
            });
        }
    }

    /// Sessions left `running` by a process that died (its claim expired): marked
    /// interrupted, so the audit does not show them running forever. Their tickets' actions
    /// are closed by the controller, which re-dispatches within the agent's budget.
    async fn close_orphans(&self) {
        let audit = &self.inner.journal;
        let now = Utc::now();
        match audit.call(move |s| s.abandon_orphan_requests(now)).await {
            Ok(ended) => {
                for r in ended {
                    warn!(session = %r.session_id, ticket = r.ticket_id, holder = r.holder.as_deref().unwrap_or("?"), "agent request ended: its dispatcher stopped mid-session");
                }
            }
            Err(e) => warn!(error = %e, "cannot end orphaned agent requests"),
        }
        let orphans = match audit.interrupted_sessions(None, now).await {
            Ok(orphans) => orphans,
            Err(e) => {
                warn!(error = %e, "cannot look for interrupted agent sessions");
                return;
            }
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

    /// Ends `job`'s request in the database (where the controller, in this process or
    /// another, reads it).
    async fn finish(&self, job: &Job, result: Result<(), String>) {
        let (id, ok) = (job.session.clone(), result.is_ok());
        let reason = result.err();
        if let Err(e) = self
            .inner
            .journal
            .call(move |s| s.finish_request(&id, ok, reason.as_deref(), Utc::now()))
            .await
        {
            error!(session = %job.session, error = %e, "cannot record the end of an agent request");
        }
    }

    async fn release(&self, job: &Job) {
        if let Err(e) = self
            .inner
            .journal
            .release_claim(job.ticket, self.inner.cfg.holder.clone())
            .await
        {
            warn!(ticket = job.ticket, error = %e, "cannot release the ticket's claim");
        }
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

    /// Why the controller-wide rolling token budget forbids another session, if it does
    /// (starting with [`USAGE_UNREADABLE`] when the usage cannot be read).
    async fn hourly_budget_spent(&self) -> Option<String> {
        let limit = self.inner.cfg.hourly_tokens?;
        let since = Utc::now() - chrono::Duration::hours(1);
        match self.inner.journal.usage_since(since).await {
            Ok(used) => {
                let total = used.input + used.output + used.cache_read + used.cache_write;
                (total >= limit).then(|| {
                    format!(
                        "the agent's token budget is spent ({total} of {limit} tokens in the last hour)"
                    )
                })
            }
            // Unknown is not "within budget".
            Err(e) => Some(format!("{USAGE_UNREADABLE}: {e}")),
        }
    }

    async fn run_job(&self, job: Job, cancel: CancellationToken) {
        lock(&self.inner.running).insert(job.session.clone());
        self.serve_job(&job, cancel).await;
        lock(&self.inner.running).remove(&job.session);
    }

    async fn serve_job(&self, job: &Job, cancel: CancellationToken) {
        let job = job.clone();
        let inner = &self.inner;
        let stopped = lock(&inner.stopped).clone();
        if let Some(why) = stopped {
            self.finish(&job, Err(why)).await;
            self.release(&job).await;
            return;
        }
        if let Some(why) = self.hourly_budget_spent().await {
            warn!(ticket = job.ticket, "{why}");
            self.note(job.ticket, why.clone()).await;
            self.finish(&job, Err(why)).await;
            self.release(&job).await;
            return;
        }
        // The ticket was claimed when the request was taken; renewed while the session runs.
        let ttl = chrono::Duration::from_std(inner.cfg.claim_ttl).unwrap_or_default();
        let every = inner.cfg.claim_ttl / 3;
        let renewing = cancel.child_token();
        let renew = {
            let audit = inner.journal.clone();
            let (ticket, holder, stop) = (job.ticket, inner.cfg.holder.clone(), renewing.clone());
            let session = job.session.clone();
            let lost = cancel.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(every) => {}
                    }
                    let until = Utc::now() + ttl;
                    if let Err(e) = audit.renew_claim(ticket, holder.clone(), until).await {
                        // Another dispatcher may serve the ticket now: this session must stop.
                        warn!(ticket, error = %e, "lost the ticket's claim; ending the session");
                        lost.cancel();
                        return;
                    }
                    // The controller stopped waiting for it (its lease expired, in this
                    // process or another): nobody would read its end, so it ends now.
                    let id = session.clone();
                    if let Ok(Some(r)) = audit.call(move |s| s.agent_request(&id)).await
                        && r.state == "done"
                    {
                        warn!(ticket, session = %session, "the controller withdrew the request; ending the session");
                        lost.cancel();
                        return;
                    }
                }
            })
        };
        let began = Utc::now();
        let (result, log) = self.session(&job, &cancel).await;
        renewing.cancel();
        let _ = renew.await;
        // Finished before the claim goes, so no sweep takes a session that ended cleanly for
        // one whose dispatcher died.
        self.finish(&job, result.clone()).await;
        self.release(&job).await;
        if let Some((log, mutations)) = log {
            let journal = inner.journal.clone();
            let ticket = job.ticket;
            let credit = Credit {
                began,
                mutations: mutations.len(),
            };
            tokio::spawn(async move { record_verdict(journal, log, ticket, credit).await });
        }
    }

    /// Runs the session of `job`: `Ok` when the model finished its turn; the session's audit
    /// once it began, with the mutations its proxy let through.
    async fn session(
        &self,
        job: &Job,
        cancel: &CancellationToken,
    ) -> (Result<(), String>, Option<(AuditLog, Vec<Mutation>)>) {
        match self.prepare(job).await {
            Ok((deps, cfg, incident, sandbox)) => {
                let result = self.converse(job, &deps, &cfg, incident, cancel).await;
                let mutations = sandbox.close().await;
                (result, Some((deps.audit, mutations)))
            }
            Err(why) => (Err(why), None),
        }
    }

    /// Everything a session of `job` needs: its audit opened, its sandbox (proxy and
    /// toolbox) up. A sandbox that cannot be opened ends the session before its first turn,
    /// with one line on the ticket naming the fix: commands never run anywhere else.
    async fn prepare(
        &self,
        job: &Job,
    ) -> Result<(SessionDeps, SessionConfig, String, Sandbox), String> {
        let inner = &self.inner;
        let Some(client) = inner.client.clone() else {
            return Err("this dispatcher only queues (no API key here)".into());
        };
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
        let manifest_secrets = prompt::manifest_secrets(&cluster);
        // The values the audit redacts and the proxy masks: one list for both.
        let secret_values: Vec<String> = secret_names
            .iter()
            .filter_map(|n| std::env::var(n).ok())
            .filter(|v| !v.is_empty())
            .chain(manifest_secrets.iter().cloned())
            .collect();
        let redactor = Redactor::new(secret_values.iter().cloned());
        let sessions_dir = super::audit::default_sessions_dir(&inner.cfg.db);
        let audit = AuditLog::start(
            inner.journal.clone(),
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
        for value in &manifest_secrets {
            policy = policy.secret_value(value.clone());
        }
        let own = match OwnContainer::find(&inner.docker).await {
            Ok(own) => own,
            Err(e) => {
                let why = format!("the agent's session did not run: {e}");
                error!(service = %job.key, ticket = job.ticket, session = %job.session, "{why}");
                self.note(job.ticket, why.clone()).await;
                Self::end_unrun(&audit, &why).await;
                return Err(why);
            }
        };
        let sandbox = Sandbox::open(
            &inner.docker,
            &inner.journal,
            &inner.registry,
            SandboxSpec {
                session: &job.session,
                mode,
                cluster: &cluster,
                db: &inner.cfg.db,
                image: inner.cfg.toolbox_image.as_deref(),
                lifetime: cluster.agent.max_session_time,
                secret_names: secret_names.iter().map(|n| n.to_string()).collect(),
                secret_values,
                own: own.as_ref(),
            },
            &audit,
        )
        .await;
        let sandbox = match sandbox {
            Ok(sandbox) => sandbox,
            Err(e) => {
                let why = format!("the agent's session did not run: {e}");
                error!(service = %job.key, ticket = job.ticket, session = %job.session, "{why}");
                self.note(job.ticket, why.clone()).await;
                Self::end_unrun(&audit, &why).await;
                return Err(why);
            }
        };
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
            client,
            tools: ToolContext {
                docker: inner.docker.clone(),
                desired: desired.clone(),
                journal: inner.journal.clone(),
                cluster: cluster.name.clone(),
                ticket: job.ticket,
                http: inner.http.clone(),
            },
            env: ChildEnv::from_current(&policy),
            toolbox: sandbox.toolbox.clone(),
            audit,
            approvals: inner.journal.clone(),
        };
        info!(service = %job.key, ticket = job.ticket, session = %job.session, mode = %mode, "agent session started");
        Ok((deps, cfg, incident, sandbox))
    }

    /// Ends the audit of a session that never ran (its sandbox could not be opened), with
    /// why, so it is not left `running`.
    async fn end_unrun(audit: &AuditLog, why: &str) {
        let _ = audit
            .record(crate::tickets::NewEntry::new(
                crate::tickets::AuditKind::Note,
                json!({"note": why}),
            ))
            .await;
        let end = crate::tickets::SessionEnd {
            outcome: crate::tickets::Outcome::Failed,
            stop_reason: Some(crate::tickets::StopReason::ToolError),
            claim: None,
            tokens: Default::default(),
            turns: 0,
            request_ids: Vec::new(),
        };
        if let Err(e) = audit.end(end).await {
            warn!(session = audit.id(), error = %e, "cannot record the end of a session that did not run");
        }
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
            self.note(job.ticket, why.clone()).await;
            // Nothing more is taken from the queue by this dispatcher (`run` checks
            // `stopped`), and every request waiting in it fails now, with the reason (whoever
            // queued it: a controller in another process reads that back).
            let reason = why.clone();
            match inner
                .journal
                .call(move |s| s.fail_queued_requests(&reason, Utc::now()))
                .await
            {
                Ok(failed) => {
                    for r in failed {
                        self.note(r.ticket_id, "agent dispatching stopped; see the log".into())
                            .await;
                    }
                }
                Err(e) => error!(error = %e, "cannot fail the queued agent requests"),
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

/// A mutation a session's proxy let through and the engine accepted: when, and what.
type Mutation = (chrono::DateTime<Utc>, String);

/// What a session did that could earn it the ticket's resolution.
struct Credit {
    /// When the session began.
    began: chrono::DateTime<Utc>,
    /// Mutations the engine accepted from its toolbox.
    mutations: usize,
}

/// After the controller's re-check: the session's verdict is what happened to its ticket,
/// read (never decided) here. `resolved` only when the ticket was resolved in the agent's
/// name, this session changed something (a session that changed nothing cannot have fixed
/// it, whatever came after), and no later session of the ticket began before the
/// resolution (the fix was not another's).
async fn record_verdict(journal: Journal, log: AuditLog, ticket: i64, credit: Credit) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Ok(Some(t)) = journal.get(ticket).await else {
            if tokio::time::Instant::now() >= deadline {
                // The ticket cannot be read: no credit, and no wait past the bound.
                let seen = json!({"ticket": "unreadable", "mutations": credit.mutations});
                if let Err(e) = log.verdict(Verdict::NotResolved, &seen).await {
                    warn!(ticket, error = %e, "cannot record the session's verdict");
                }
                return;
            }
            continue;
        };
        let done = t.status == Status::Resolved;
        if done || tokio::time::Instant::now() >= deadline || t.status == Status::Escalated {
            let by_agent = done && t.resolved_by.map(|c| c.as_str()) == Some(Actor::Agent.as_str());
            let resolved_at = t.resolved_at.unwrap_or_else(Utc::now);
            let later = match journal.sessions_of_ticket(ticket).await {
                Ok(sessions) => sessions.iter().any(|s| {
                    s.id != log.id() && s.started_at > credit.began && s.started_at < resolved_at
                }),
                // Unknown is not "nobody else": no credit.
                Err(_) => true,
            };
            let verdict = if by_agent && credit.mutations > 0 && !later {
                Verdict::Resolved
            } else {
                Verdict::NotResolved
            };
            let seen = json!({"ticket_status": t.status, "resolved_by": t.resolved_by, "mutations": credit.mutations, "later_session": later});
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

    fn exhausted(&self) -> BoxFuture<'_, Option<String>> {
        async move {
            let why = self.hourly_budget_spent().await?;
            // A usage that cannot be read now (a busy database) is no reason to hand the
            // ticket to a person for good: the session itself is still refused below, and
            // the next look asks again.
            if why.starts_with(USAGE_UNREADABLE) {
                warn!("{why}");
                return None;
            }
            Some(why)
        }
        .boxed()
    }

    fn withdraw<'a>(&'a self, session: &'a SessionId) -> BoxFuture<'a, ()> {
        async move {
            lock(&self.inner.pending).remove(&session.0);
            self.withdraw_request(
                &session.0,
                "withdrawn: the controller stopped waiting for it",
                true,
            )
            .await;
        }
        .boxed()
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
            let (id, key) = (session.clone(), request.key.clone());
            let queued = inner
                .journal
                .call(move |s| {
                    s.request_session(&id, ticket, &key.cluster, &key.service, Utc::now())
                })
                .await;
            if let Err(e) = queued {
                return Dispatch::Done(Err(RemediationError::Session {
                    session: SessionId(session),
                    reason: format!("cannot queue the request: {e}"),
                }));
            }
            lock(&inner.pending).insert(
                session.clone(),
                Pending {
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
