//! `operator chaos run`: trials of a drill against a cluster the controller manages.
//!
//! A run:
//! 1. makes sure a controller manages the cluster: the one that owns the database (attached),
//!    or one the runner starts itself (`operator run MANIFEST --db DB`), which it stops at
//!    the end. `--baseline` needs the latter: the runner restarts it with `--observe-only`
//!    and sets the engine's restart policy on the cluster's containers for the baseline
//!    trials, then puts both back;
//! 2. refuses to break a cluster that is not in its steady state, saying what is wrong;
//! 3. per trial: starts the workload, injects each fault at its offset (written to the
//!    ledger first), holds it, undoes it, waits for the steady state to hold again for the
//!    drill's `hold`, reads the workload back, and reads what the controller did from the
//!    ticket database (`Store::episodes`): detected, first action, resolved and by whom;
//! 4. writes the journal after every trial and the report at the end.
//!
//! Every wait is bounded, and every fault is undone whatever happens: the fault tasks undo on
//! cancellation (Ctrl-C, SIGTERM), and the ledger lets `operator chaos cleanup` or the next
//! controller start undo what a killed runner left.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rustix::process::{Signal, kill_process, kill_process_group, set_parent_process_death_signal};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::manifest::{Cluster, DesiredState};
use crate::tickets::{EntryKind, Ownership, Store, TicketError, TicketQuery};

use super::canary::Canary;
use super::fault::procfs::{self, liveness};
use super::fault::{Applied, FaultTarget, Faults, Holder, Liveness, Peer};
use super::journal::{
    FaultRecord, Journal, Outcome, RunStatus, TicketRecord, Trial, WorkloadVerdict,
};
use super::spec::{Drill, FaultSpec, Remediation, Target, Workload};
use super::steady::{Look, Steady};

/// How long the first look may wait for a cluster that is settling (a controller the runner
/// just started creates and starts it) before the run is refused as not steady.
pub const DEFAULT_SETTLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How often the steady state is looked at while waiting for it.
const LOOK_EVERY: Duration = Duration::from_millis(500);
/// The workload runs this long before the first fault and after recovery.
const WORKLOAD_MARGIN: Duration = Duration::from_secs(2);
/// The most a controller the runner started may take to stop.
const CONTROLLER_STOP: Duration = Duration::from_secs(70);

#[derive(Debug, Clone)]
pub struct RunConfig {
    pub drill: Drill,
    /// The drill's manifest, loaded.
    pub desired: DesiredState,
    pub db: PathBuf,
    /// This run's report folder.
    pub report_dir: PathBuf,
    pub run_id: String,
    pub trials: u32,
    pub seed: u64,
    /// Also run every trial under the baseline (controller observing, engine restarting).
    pub baseline: bool,
    /// The `operator` binary, to start a controller with.
    pub operator_bin: PathBuf,
    /// How long the first steady-state look may wait.
    pub settle_timeout: Duration,
}

/// What the runner tells whoever shows progress.
#[derive(Debug, Clone)]
pub enum Event {
    /// A line worth printing as is.
    Note(String),
    /// Waiting: what for, and what is still wrong.
    Waiting { what: String, problems: Vec<String> },
    /// A trial is over.
    TrialDone(Box<Trial>),
}

pub type Progress = Arc<dyn Fn(Event) + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "the cluster {cluster} is not in its steady state, so the drill was not started:\n  - {}",
        problems.join("\n  - ")
    )]
    NotSteady {
        cluster: String,
        problems: Vec<String>,
    },
    #[error(
        "--baseline (and remediation: baseline) needs a controller the runner starts itself, but {holder} owns {db}: stop it, or run without --baseline"
    )]
    BaselineAttached { db: PathBuf, holder: String },
    #[error(
        "another drill runs against cluster {cluster} (run {run}, {holder}): one at a time, or each measures the other's faults; wait for it, or `operator chaos cleanup` if it is gone"
    )]
    Busy {
        cluster: String,
        run: String,
        holder: String,
    },
    #[error(
        "the cluster {cluster} did not come back to its steady state after {after}, so no further trial was run:\n  - {}",
        problems.join("\n  - ")
    )]
    NotRecovered {
        cluster: String,
        /// `baseline trial 1`.
        after: String,
        problems: Vec<String>,
    },
    #[error("the drill's cluster {0} is not in its manifest")]
    NoCluster(String),
    #[error(transparent)]
    Tickets(#[from] TicketError),
    #[error(transparent)]
    Docker(#[from] crate::docker::DockerError),
    #[error("cannot start the controller ({bin}): {source}")]
    Spawn {
        bin: PathBuf,
        source: std::io::Error,
    },
    #[error("the controller the runner started exited ({status}); its log: {log}")]
    ControllerDied { status: String, log: PathBuf },
    #[error("{0}")]
    Journal(#[from] super::journal::JournalError),
    #[error("{0}")]
    Fault(String),
}

/// Runs the drill; returns the journal, also when the run was interrupted or failed, and
/// `None` when it was refused before any trial (another run holds the cluster, a baseline
/// beside a foreign controller, the engine did not answer, the cluster not in its steady
/// state): nothing ran, so no report folder is left (one the run created is removed).
pub async fn run(
    cfg: RunConfig,
    cancel: CancellationToken,
    progress: Progress,
) -> (Option<Journal>, Option<RunError>) {
    let folder_existed = cfg.report_dir.exists();
    let mut journal = Journal {
        format: super::journal::FORMAT,
        run_id: cfg.run_id.clone(),
        drill: cfg.drill.name.clone(),
        drill_file: cfg.drill.source.clone(),
        drill_sha256: sha256_of(std::slice::from_ref(&cfg.drill.source)),
        manifest_sha256: sha256_of(&manifest_files(&cfg.drill.manifest)),
        cluster: cfg.drill.cluster.clone(),
        operator_version: env!("CARGO_PKG_VERSION").to_string(),
        engine_version: None,
        seed: cfg.seed,
        started_at: Utc::now(),
        ended_at: None,
        status: RunStatus::Running,
        deviated: false,
        reason: None,
        trials: Vec::new(),
    };
    let mut runner = match Runner::new(&cfg, cancel.clone(), progress).await {
        Ok(runner) => runner,
        // Refused before anything was recorded: no ledger row, no folder.
        Err(e) => return (None, Some(e)),
    };
    journal.engine_version = runner.engine_version.clone();
    // Written once the run holds the cluster in the ledger, so a run killed before its
    // first trial is still listed (and its status then read from the ledger, which `chaos
    // cleanup` ends).
    let error = match journal.write(&cfg.report_dir) {
        Ok(_) => runner.trials(&mut journal).await.err(),
        Err(e) => Some(e.into()),
    };
    // The safety net: whatever path the trials took, nothing of this run stays in the
    // ledger undone.
    let left = runner.sweep_own().await;
    runner.finish().await;
    let written = runner.logs.clone();
    journal.ended_at = Some(Utc::now());
    journal.deviated = journal
        .trials
        .iter()
        .any(|t| t.recovered_at.is_none() && t.outcome != Outcome::Interrupted);
    journal.status = match &error {
        _ if cancel.is_cancelled() => RunStatus::Interrupted,
        Some(RunError::NotSteady { .. })
        | Some(RunError::BaselineAttached { .. })
        | Some(RunError::Busy { .. }) => RunStatus::Aborted,
        Some(_) => RunStatus::Failed,
        None => RunStatus::Completed,
    };
    let not_undone: Vec<String> = journal
        .trials
        .iter()
        .flat_map(|t| &t.faults)
        .filter(|f| {
            f.error
                .as_deref()
                .is_some_and(|e| e.starts_with("not undone"))
        })
        .map(|f| format!("ledger #{} ({} on {})", f.ledger_id, f.kind, f.service))
        .chain(left)
        .collect();
    let undone = if not_undone.is_empty() {
        "every fault was undone".to_string()
    } else {
        format!(
            "NOT undone: {}; `operator chaos cleanup` retries them",
            not_undone.join(", ")
        )
    };
    journal.reason = match (&error, cancel.is_cancelled()) {
        (_, true) => Some(format!("interrupted (SIGINT, SIGTERM or SIGHUP); {undone}")),
        (Some(e), _) if not_undone.is_empty() => Some(e.to_string()),
        (Some(e), _) => Some(format!("{e}; {undone}")),
        (None, _) if not_undone.is_empty() => None,
        (None, _) => Some(undone),
    };
    // The ledger's run row ends with the journal's status (a no-op if it was never recorded).
    match Store::open(&cfg.db) {
        Ok(store) => {
            if let Err(e) = store.chaos_run_ended(&cfg.run_id, journal.status.as_str(), Utc::now())
            {
                warn!(error = %e, "cannot record the end of the chaos run");
            }
        }
        Err(e) => warn!(error = %e, "cannot record the end of the chaos run"),
    }
    // Refused at the first look (the cluster was not steady, so nothing was broken): the
    // run leaves no report folder, as a run refused earlier does; the reason is the error's.
    if journal.status == RunStatus::Aborted && journal.trials.is_empty() {
        let removed = if folder_existed {
            // Not ours to remove: only what this run wrote into it.
            let journal_file = cfg.report_dir.join(super::journal::JOURNAL_FILE);
            std::iter::once(journal_file)
                .chain(written)
                .try_for_each(std::fs::remove_file)
        } else {
            std::fs::remove_dir_all(&cfg.report_dir)
        };
        if let Err(e) = removed {
            warn!(error = %e, dir = %cfg.report_dir.display(), "cannot remove what the refused run wrote in its report folder");
        }
        return (None, error);
    }
    (Some(journal), error)
}

/// A controller process the runner started (killed on drop if still running).
struct OwnController {
    child: tokio::process::Child,
    log: PathBuf,
    observe_only: bool,
}

struct Runner<'a> {
    cfg: &'a RunConfig,
    cancel: CancellationToken,
    progress: Progress,
    docker: bollard::Docker,
    cluster: Cluster,
    faults: Faults,
    steady: Steady,
    /// `None` while attached to the controller that owns the database.
    controller: Option<OwnController>,
    attached_to: Option<String>,
    engine_version: Option<String>,
    rng: SplitMix,
    /// The controllers' logs this run wrote, in the order they were started.
    logs: Vec<PathBuf>,
}

impl<'a> Runner<'a> {
    async fn new(
        cfg: &'a RunConfig,
        cancel: CancellationToken,
        progress: Progress,
    ) -> Result<Runner<'a>, RunError> {
        let cluster = cfg
            .desired
            .cluster(&cfg.drill.cluster)
            .cloned()
            .ok_or_else(|| RunError::NoCluster(cfg.drill.cluster.clone()))?;
        let docker = crate::docker::connect(Duration::from_secs(15)).await?;
        let engine_version = docker.version().await.ok().and_then(|v| v.version);
        let store = Arc::new(Store::open(&cfg.db)?);
        let faults = Faults::new(docker.clone(), store.clone());
        let attached_to = match Ownership::acquire(&cfg.db) {
            // Free: released at once, for the controller the runner starts.
            Ok(ownership) => {
                drop(ownership);
                None
            }
            Err(TicketError::Owned { holder, .. }) => Some(holder),
            Err(e) => return Err(e.into()),
        };
        let wants_baseline = cfg.baseline || cfg.drill.remediation == Remediation::Baseline;
        if let (Some(holder), true) = (&attached_to, wants_baseline) {
            return Err(RunError::BaselineAttached {
                db: cfg.db.clone(),
                holder: holder.clone(),
            });
        }
        let steady = Steady::new(
            docker.clone(),
            cluster.clone(),
            cfg.drill.steady_state.clone(),
            cfg.db.clone(),
            drill_dir(&cfg.drill),
        );
        // One drill at a time per cluster: two would break it together and each would
        // measure the other's faults.
        let holder = Holder::current();
        let me = crate::tickets::ChaosRun {
            id: cfg.run_id.clone(),
            drill: cfg.drill.name.clone(),
            drill_file: cfg.drill.source.clone(),
            cluster: cluster.name.clone(),
            report_dir: cfg.report_dir.clone(),
            holder: holder.name,
            holder_pid: holder.pid,
            holder_start: holder.start,
            started_at: Utc::now(),
            ended_at: None,
            status: "running".into(),
        };
        if let Some(other) =
            store.chaos_run_started_alone(&me, |r| liveness(r) != Liveness::Gone)?
        {
            return Err(RunError::Busy {
                cluster: cluster.name.clone(),
                run: other.id,
                holder: other.holder,
            });
        }
        Ok(Runner {
            cfg,
            cancel,
            progress,
            docker,
            cluster,
            faults,
            steady,
            controller: None,
            attached_to,
            engine_version,
            rng: SplitMix(cfg.seed),
            logs: Vec::new(),
        })
    }

    fn note(&self, text: String) {
        debug!("{text}");
        (self.progress)(Event::Note(text));
    }

    /// Every phase's trials, in order.
    async fn trials(&mut self, journal: &mut Journal) -> Result<(), RunError> {
        let mut phases = vec![self.cfg.drill.remediation];
        if self.cfg.baseline && self.cfg.drill.remediation != Remediation::Baseline {
            phases.push(Remediation::Baseline);
        }
        let mut outcome = Ok(());
        for phase in phases {
            self.controller_for(phase, &format!("controller-{}", phase.as_str()))
                .await?;
            let restored = if phase == Remediation::Baseline {
                Some(self.engine_restarts().await?)
            } else {
                None
            };
            let result = self.phase(phase, journal).await;
            if let Some(previous) = restored {
                self.restore_restart_policies(previous).await;
            }
            if let Err(e) = result {
                outcome = Err(e);
                break;
            }
            if self.cancel.is_cancelled() {
                break;
            }
        }
        // The baseline may leave what nothing but the controller repairs (a removed
        // container): hand the cluster back to a controller that acts, and wait for it, so
        // the run leaves the cluster as it found it.
        if self.controller.as_ref().is_some_and(|c| c.observe_only)
            && self.cfg.drill.remediation != Remediation::Baseline
            && !self.cancel.is_cancelled()
        {
            // A log of its own: the one of the controller that made the trials' repairs is
            // the report's evidence and must not be overwritten.
            self.controller_for(Remediation::Controller, "controller-after-baseline")
                .await?;
            let (look, _) = self
                .wait_steady(
                    self.cfg.drill.recovery_timeout,
                    "the cluster repaired after the baseline",
                )
                .await;
            if !look.holds() {
                self.note(format!(
                    "after the baseline the cluster is still not steady: {}",
                    look.problems.join("; ")
                ));
            }
        }
        outcome
    }

    async fn phase(&mut self, phase: Remediation, journal: &mut Journal) -> Result<(), RunError> {
        for index in 1..=self.cfg.trials {
            if self.cancel.is_cancelled() {
                return Ok(());
            }
            // The first look of a run may wait for a cluster that is settling; later ones
            // wait for the last trial's recovery to finish settling too.
            let first = journal.trials.is_empty();
            let wait = if first {
                self.cfg.settle_timeout
            } else {
                self.cfg.drill.recovery_timeout
            };
            let (look, _) = self
                .wait_steady(wait, "the steady state before the trial")
                .await;
            if self.cancel.is_cancelled() {
                return Ok(());
            }
            if !look.holds() {
                if first {
                    return Err(RunError::NotSteady {
                        cluster: self.cluster.name.clone(),
                        problems: look.problems,
                    });
                }
                return Err(RunError::NotRecovered {
                    cluster: self.cluster.name.clone(),
                    after: journal
                        .trials
                        .last()
                        .map(|t| format!("{} trial {}", t.remediation, t.index))
                        .unwrap_or_else(|| "the last trial".into()),
                    problems: look.problems,
                });
            }
            let trial = self.trial(phase, index).await;
            (self.progress)(Event::TrialDone(Box::new(trial.clone())));
            journal.trials.push(trial);
            journal.write(&self.cfg.report_dir)?;
        }
        Ok(())
    }

    /// Waits until the steady state holds without a break for the drill's `hold`, at most
    /// `timeout`. Returns the last look and when the holding window began.
    async fn wait_steady(
        &mut self,
        timeout: Duration,
        what: &str,
    ) -> (Look, Option<DateTime<Utc>>) {
        let deadline = Instant::now() + timeout;
        let hold = self.cfg.drill.steady_state.hold;
        let mut since: Option<(Instant, DateTime<Utc>)> = None;
        loop {
            let look = tokio::select! {
                look = self.steady.look() => look,
                _ = self.cancel.cancelled() => return (Look { problems: vec!["interrupted".into()] }, None),
            };
            let now = Instant::now();
            if look.holds() {
                let (began, wall) = *since.get_or_insert((now, Utc::now()));
                if now.duration_since(began) >= hold {
                    return (look, Some(wall));
                }
            } else {
                since = None;
                (self.progress)(Event::Waiting {
                    what: what.to_string(),
                    problems: look.problems.clone(),
                });
            }
            if now >= deadline {
                // Holding, but not yet for `hold`: not recovered.
                let problems = if look.holds() {
                    vec![format!(
                        "the steady state held, but not for {} s in a row",
                        hold.as_secs()
                    )]
                } else {
                    look.problems
                };
                return (Look { problems }, None);
            }
            tokio::select! {
                _ = tokio::time::sleep(LOOK_EVERY) => {}
                _ = self.cancel.cancelled() => {}
            }
        }
    }

    /// Waits for the steady state to hold for the drill's `hold` at a moment when the
    /// faults are `over`; at most `timeout` after they are. Returns the last look, when the
    /// holding window began (it may have begun before the faults' nominal end), and the
    /// moment the wait would give up (the faults' end plus `timeout`) once it is known.
    async fn wait_recovery(
        &mut self,
        timeout: Duration,
        applied: &CancellationToken,
        over: &CancellationToken,
        index: u32,
        phase: Remediation,
    ) -> (Look, Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
        let hold = self.cfg.drill.steady_state.hold;
        let mut deadline: Option<Instant> = None;
        let mut gives_up: Option<DateTime<Utc>> = None;
        let mut since: Option<(Instant, DateTime<Utc>)> = None;
        loop {
            // A stretch of steady looks counts only from a look that began once every fault
            // was applied (a fault with a `start` offset has not broken anything before it),
            // and it is dated from that look's beginning.
            let look_began = (Instant::now(), Utc::now());
            let after_faults = applied.is_cancelled();
            let look = tokio::select! {
                look = self.steady.look() => look,
                _ = self.cancel.cancelled() => return (Look { problems: vec!["interrupted".into()] }, None, gives_up),
            };
            let now = Instant::now();
            if deadline.is_none() && over.is_cancelled() {
                deadline = Some(now + timeout);
                gives_up = chrono::Duration::from_std(timeout)
                    .ok()
                    .map(|t| Utc::now() + t);
                self.note(format!(
                    "trial {index} ({}): faults over; waiting for the steady state (at most {} s)",
                    phase.as_str(),
                    timeout.as_secs()
                ));
            }
            if look.holds() {
                if since.is_none() && after_faults {
                    since = Some(look_began);
                }
                if let Some((began, wall)) = since
                    && over.is_cancelled()
                    && now.duration_since(began) >= hold
                {
                    return (look, Some(wall), gives_up);
                }
            } else {
                since = None;
                (self.progress)(Event::Waiting {
                    what: format!("trial {index} ({}): recovery", phase.as_str()),
                    problems: look.problems.clone(),
                });
            }
            if deadline.is_some_and(|d| now >= d) {
                let problems = if look.holds() {
                    vec![format!(
                        "the steady state held, but not for {} s in a row",
                        hold.as_secs()
                    )]
                } else {
                    look.problems
                };
                return (Look { problems }, None, gives_up);
            }
            tokio::select! {
                _ = tokio::time::sleep(LOOK_EVERY) => {}
                _ = self.cancel.cancelled() => {}
            }
        }
    }

    async fn trial(&mut self, phase: Remediation, index: u32) -> Trial {
        let drill = &self.cfg.drill;
        let mut notes = Vec::new();
        let canary = match &drill.workload {
            Some(Workload::EtcdCanary { endpoints, rate }) => {
                let prefix = format!(
                    "operator-canary/{}/{}-{index}/",
                    self.cfg.run_id,
                    phase.as_str()
                );
                let canary = Canary::start(endpoints.clone(), *rate, prefix);
                tokio::time::sleep(WORKLOAD_MARGIN).await;
                Some(canary)
            }
            _ => None,
        };
        let command = match &drill.workload {
            Some(Workload::Command { command, timeout }) => {
                Some(CommandWorkload::start(command, *timeout, &drill_dir(drill)))
            }
            _ => None,
        };
        let injected_at = Utc::now();
        self.note(format!(
            "trial {index} ({}): injecting {} fault(s)",
            phase.as_str(),
            drill.faults.len()
        ));
        let mut tasks = tokio::task::JoinSet::new();
        // Faults held "until the trial ends" (no duration) are undone once the recovery
        // wait is over; the others by their own task.
        let trial_end = CancellationToken::new();
        let mut settled = Vec::new();
        let mut applied = Vec::new();
        for (n, spec) in drill.faults.iter().enumerate() {
            let targets = match self.targets(spec).await {
                Ok(t) => t,
                Err(e) => {
                    notes.push(format!("fault {}: {e}", n + 1));
                    continue;
                }
            };
            for service in targets {
                let target = self.fault_target(&service, spec);
                let faults = self.faults.clone();
                let cancel = self.cancel.clone();
                let end = trial_end.clone();
                let (run, spec) = (self.cfg.run_id.clone(), spec.clone());
                let (tx, rx) = tokio::sync::oneshot::channel();
                settled.push(rx);
                let (applied_tx, applied_rx) = tokio::sync::oneshot::channel();
                applied.push(applied_rx);
                let trial_no = index;
                let signals = FaultSignals {
                    cancel,
                    trial_end: end,
                    applied: applied_tx,
                    settled: tx,
                };
                tasks.spawn(async move {
                    run_fault(faults, run, trial_no, target, spec, signals).await
                });
            }
        }
        // The faults are over once every timed one is (a dropped sender, from a task that
        // ended early, counts as over). The steady state is watched from the injection on:
        // a controller that repaired a fault before its nominal end recovered then.
        let all_applied = CancellationToken::new();
        {
            let all_applied = all_applied.clone();
            tokio::spawn(async move {
                for rx in applied {
                    let _ = rx.await;
                }
                all_applied.cancel();
            });
        }
        let over = CancellationToken::new();
        let over_at = Arc::new(std::sync::Mutex::new(None));
        {
            let (over, over_at) = (over.clone(), over_at.clone());
            tokio::spawn(async move {
                for rx in settled {
                    let _ = rx.await;
                }
                *over_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Utc::now());
                over.cancel();
            });
        }
        let (look, recovered_at, recovery_deadline) = self
            .wait_recovery(drill.recovery_timeout, &all_applied, &over, index, phase)
            .await;
        if recovered_at.is_none() && !self.cancel.is_cancelled() {
            let at = over_at
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .map(|t| t.format("%H:%M:%S").to_string())
                .unwrap_or_else(|| "?".into());
            notes.push(format!(
                "not recovered within {} s of the faults' end ({at}): {}",
                drill.recovery_timeout.as_secs(),
                look.problems.join("; ")
            ));
        }
        // Faults held to the trial's end go now; every fault task has ended after this.
        trial_end.cancel();
        let mut faults = Vec::new();
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(record) => faults.push(record),
                Err(e) => notes.push(format!("a fault task failed: {e}")),
            }
        }
        faults.sort_by_key(|f| (f.injected_at, f.ledger_id));
        let workload = match canary {
            Some(canary) => {
                tokio::time::sleep(WORKLOAD_MARGIN).await;
                Some(canary.finish().await)
            }
            None => match command {
                Some(c) => Some(c.finish().await),
                None => None,
            },
        };
        let tickets = match self.tickets_since(injected_at) {
            Ok(t) => t,
            Err(e) => {
                notes.push(format!("the tickets cannot be read: {e}"));
                Vec::new()
            }
        };
        measure(Seen {
            index,
            phase,
            faults,
            injected_at,
            recovered_at,
            recovery_deadline,
            workload,
            tickets,
            notes,
            interrupted: self.cancel.is_cancelled(),
        })
    }

    /// The services a fault hits (a query target is asked when the trial injects).
    async fn targets(&mut self, spec: &FaultSpec) -> Result<Vec<String>, String> {
        match &spec.target {
            Target::Query {
                promql,
                service_label,
                services,
            } => {
                let url = self
                    .cluster
                    .prometheus
                    .url
                    .clone()
                    .ok_or("the cluster declares no Prometheus to ask")?;
                let prometheus =
                    crate::health::Prometheus::new(&url, self.cluster.prometheus.timeout)
                        .map_err(|e| e.to_string())?;
                let series = prometheus.query(promql).await.map_err(|e| e.to_string())?;
                let mut hit = Vec::new();
                for s in &series {
                    let Some(value) = s.labels.get(service_label) else {
                        continue;
                    };
                    let service = services.get(value).cloned().unwrap_or_else(|| {
                        value
                            .rsplit_once(':')
                            .map_or(value.as_str(), |(host, _)| host)
                            .to_string()
                    });
                    if self.cluster.service(&service).is_some() && !hit.contains(&service) {
                        hit.push(service);
                    }
                }
                if hit.is_empty() {
                    return Err(format!(
                        "the target query {promql} named no service of the cluster ({} sample(s))",
                        series.len()
                    ));
                }
                Ok(hit)
            }
            Target::Services { services } => Ok(services.clone()),
            Target::Selector { labels } => {
                let hit: Vec<String> = self
                    .cluster
                    .services
                    .iter()
                    .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
                    .map(|s| s.name.clone())
                    .collect();
                if hit.is_empty() {
                    Err(format!("no service has the labels {labels:?}"))
                } else {
                    Ok(hit)
                }
            }
            Target::Random { among, count } => {
                let mut pool: Vec<String> = if among.is_empty() {
                    self.cluster
                        .services
                        .iter()
                        .map(|s| s.name.clone())
                        .collect()
                } else {
                    among.clone()
                };
                let mut picked = Vec::new();
                for _ in 0..(*count as usize).min(pool.len()) {
                    let i = (self.rng.next() % pool.len() as u64) as usize;
                    picked.push(pool.swap_remove(i));
                }
                Ok(picked)
            }
        }
    }

    fn fault_target(&self, service: &str, spec: &FaultSpec) -> FaultTarget {
        // A service's container is named after it.
        let peers = match &spec.kind {
            super::spec::FaultKind::Partition { from } => from
                .iter()
                .map(|p| Peer {
                    service: p.clone(),
                    container: p.clone(),
                })
                .collect(),
            _ => Vec::new(),
        };
        FaultTarget {
            cluster: self.cluster.name.clone(),
            service: service.to_string(),
            container: service.to_string(),
            network: Some(self.cluster.network.name.clone()),
            peers,
            stop_timeout: self.cluster.service(service).and_then(|s| s.stop_timeout),
        }
    }

    fn tickets_since(&self, since: DateTime<Utc>) -> Result<Vec<TicketRecord>, TicketError> {
        let store = Store::open_read_only(&self.cfg.db)?;
        let episodes = store.episodes(&TicketQuery::since(since).cluster(&self.cluster.name))?;
        let mut out = Vec::new();
        for e in episodes {
            let status = store
                .get(e.ticket)?
                .map(|t| t.status.as_str().to_string())
                .unwrap_or_default();
            // An escalation during the trial is in the timeline; a ticket found escalated
            // without one (opened so) escalated when it was detected.
            let escalated_at = store
                .timeline(e.ticket)?
                .into_iter()
                .find(|entry| entry.kind == EntryKind::Escalated && entry.at >= since)
                .map(|entry| entry.at)
                .or_else(|| (status == "escalated").then_some(e.detected_at));
            out.push(TicketRecord {
                id: e.ticket,
                drift: e.drift.as_str().to_string(),
                target: e.fingerprint.to_string(),
                detected_at: e.detected_at,
                first_action_at: e.first_action_at,
                first_actor: e.first_actor.map(|a| a.as_str().to_string()),
                resolved_at: e.resolved_at,
                resolved_by: e.resolved_by.map(|c| c.as_str().to_string()),
                escalated_at,
                status,
            });
        }
        Ok(out)
    }

    /// Makes sure the controller for `phase` manages the cluster; one the runner starts logs
    /// to `LOG_NAME.log` in the report folder (never over an existing file: see
    /// [`fresh_log`]).
    async fn controller_for(&mut self, phase: Remediation, log_name: &str) -> Result<(), RunError> {
        let observe_only = phase == Remediation::Baseline;
        if let Some(holder) = &self.attached_to {
            self.note(format!("using the running controller ({holder})"));
            return Ok(());
        }
        if let Some(c) = &self.controller {
            if c.observe_only == observe_only {
                return Ok(());
            }
            self.stop_controller().await;
        }
        std::fs::create_dir_all(&self.cfg.report_dir).map_err(|source| RunError::Spawn {
            bin: self.cfg.report_dir.clone(),
            source,
        })?;
        let (log, file) = fresh_log(&self.cfg.report_dir, log_name)
            .map_err(|(log, source)| RunError::Spawn { bin: log, source })?;
        self.logs.push(log.clone());
        let mut cmd = tokio::process::Command::new(&self.cfg.operator_bin);
        cmd.arg("run")
            .arg(&self.cfg.drill.manifest)
            .arg("--db")
            .arg(&self.cfg.db)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--resync",
                "5s",
                "--log-format",
                "json",
            ]);
        if observe_only {
            cmd.arg("--observe-only");
        }
        // The kernel SIGTERMs the controller when the runner dies (even by SIGKILL), so a
        // killed runner never leaves a controller of its own behind holding the database.
        // Set between fork and exec, where std offers no safe hook: `pre_exec` stays unsafe.
        #[allow(unsafe_code)]
        // SAFETY: the closure only makes one prctl(2) system call (rustix calls the kernel
        // directly): async-signal-safe, no allocation, no lock, nothing shared with the parent.
        unsafe {
            cmd.pre_exec(|| {
                set_parent_process_death_signal(Some(Signal::TERM))?;
                Ok(())
            });
        }
        let child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(file)
            // Its own process group: a Ctrl-C at the runner's terminal is the runner's to
            // handle; it stops the controller itself once every fault is undone.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| RunError::Spawn {
                bin: self.cfg.operator_bin.clone(),
                source,
            })?;
        self.note(format!(
            "started a controller{} (pid {}; log {})",
            if observe_only {
                " that only observes"
            } else {
                ""
            },
            child.id().unwrap_or(0),
            log.display()
        ));
        self.controller = Some(OwnController {
            child,
            log,
            observe_only,
        });
        // It owns the database once it is up: wait for that, bounded, watching it live.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(c) = &mut self.controller
                && let Ok(Some(status)) = c.child.try_wait()
            {
                return Err(RunError::ControllerDied {
                    status: status.to_string(),
                    log: c.log.clone(),
                });
            }
            // Read, never taken: probing the lock would race the controller's own single
            // try at it. The holder writes `pid N on HOST since ...` once it holds it.
            let pid = self.controller.as_ref().and_then(|c| c.child.id());
            let lock = std::fs::read_to_string(crate::tickets::lock_path(&self.cfg.db))
                .unwrap_or_default();
            if pid.is_some_and(|pid| lock.starts_with(&format!("pid {pid} on "))) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let log = self
                    .controller
                    .as_ref()
                    .map(|c| c.log.clone())
                    .unwrap_or_default();
                return Err(RunError::ControllerDied {
                    status: "did not take the database within 30 s".into(),
                    log,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn stop_controller(&mut self) {
        let Some(mut c) = self.controller.take() else {
            return;
        };
        // The child we started and have not reaped.
        if let Some(pid) = c.child.id().and_then(procfs::pid) {
            let _ = kill_process(pid, Signal::TERM);
        }
        match tokio::time::timeout(CONTROLLER_STOP, c.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                warn!(
                    "the controller did not stop within {} s; killing it",
                    CONTROLLER_STOP.as_secs()
                );
                let _ = c.child.kill().await;
            }
        }
    }

    /// Baseline: the engine restarts the cluster's containers itself. Returns each
    /// container's previous policy, recorded in the ledger so a killed run is put back.
    async fn engine_restarts(&mut self) -> Result<Vec<Applied>, RunError> {
        let mut changed = Vec::new();
        for service in &self.cluster.services {
            let target = FaultTarget {
                cluster: self.cluster.name.clone(),
                service: service.name.clone(),
                container: service.name.clone(),
                ..Default::default()
            };
            match self.faults.engine_restarts(&self.cfg.run_id, &target).await {
                Ok(applied) => changed.push(applied),
                Err(e) => {
                    self.restore_restart_policies(changed).await;
                    return Err(RunError::Fault(e.to_string()));
                }
            }
        }
        self.note("baseline: the engine's restart policy (unless-stopped) is set on the cluster's containers".into());
        Ok(changed)
    }

    async fn restore_restart_policies(&self, changed: Vec<Applied>) {
        for applied in changed {
            if let Err(e) = self.faults.undo(&applied).await {
                warn!(error = %e, "cannot restore a container's restart policy");
            }
        }
    }

    /// Undoes every fault of this run the ledger still holds (none, unless a path failed
    /// to undo one); returns those it could not undo.
    async fn sweep_own(&self) -> Vec<String> {
        let sweep = match self.faults.undo_left(Some(&self.cfg.run_id), true).await {
            Ok(sweep) => sweep,
            Err(e) => {
                warn!(error = %e, "cannot read this run's faults from the ledger");
                return vec![format!("(the ledger could not be read: {e})")];
            }
        };
        let mut failed = Vec::new();
        for (row, result) in sweep.undone {
            let what = format!("ledger #{} ({} on {})", row.id, row.kind, row.service);
            match result {
                Ok(()) => warn!("undid a fault the trial had left: {what}"),
                Err(e) => {
                    warn!(error = %e, "cannot undo {what}");
                    failed.push(what);
                }
            }
        }
        failed
    }

    async fn finish(&mut self) {
        self.stop_controller().await;
        let _ = &self.docker;
    }
}

/// What a fault's task is told and tells: `cancel` (the run is interrupted), `trial_end`
/// (faults held for the trial go now); it sends `applied` once the fault is in place and
/// `settled` once it no longer stands in the way of recovery. A dropped sender (the fault
/// never applied) counts as sent.
struct FaultSignals {
    cancel: CancellationToken,
    trial_end: CancellationToken,
    applied: tokio::sync::oneshot::Sender<()>,
    settled: tokio::sync::oneshot::Sender<()>,
}

/// One fault's life: wait for its offset, inject, hold, undo (also on cancellation).
/// `settled` is sent once the fault no longer stands in the way of recovery: an instant fault
/// once applied, a timed one once undone, one held to the trial's end once applied (it is
/// undone when `trial_end` fires, after the recovery wait).
async fn run_fault(
    faults: Faults,
    run: String,
    trial: u32,
    target: FaultTarget,
    spec: FaultSpec,
    signals: FaultSignals,
) -> FaultRecord {
    let FaultSignals {
        cancel,
        trial_end,
        applied: applied_signal,
        settled,
    } = signals;
    let mut record = FaultRecord {
        ledger_id: 0,
        kind: spec.kind.name().to_string(),
        service: target.service.clone(),
        container: target.container.clone(),
        params: serde_json::to_value(&spec.kind).unwrap_or_default(),
        injected_at: None,
        undone_at: None,
        held_ms: spec
            .duration
            .filter(|_| !spec.kind.is_instant())
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        error: None,
    };
    tokio::select! {
        _ = tokio::time::sleep(spec.start) => {}
        _ = cancel.cancelled() => return record,
    }
    // Injected when the fault was asked for: the engine may report its effect (and the
    // controller detect it) before the call returns.
    let asked = Utc::now();
    let applied = match faults.inject(&run, trial, &target, &spec.kind).await {
        Ok(applied) => applied,
        Err(e) => {
            record.error = Some(format!("not injected: {e}"));
            return record;
        }
    };
    record.ledger_id = applied.ledger_id;
    record.injected_at = Some(asked);
    let _ = applied_signal.send(());
    if spec.kind.is_instant() {
        // Nothing to undo: over once applied (the ledger marks it so too).
        record.undone_at = Some(applied.applied_at);
        return record;
    }
    match spec.duration {
        Some(hold) => {
            tokio::select! {
                _ = tokio::time::sleep(hold) => {}
                _ = cancel.cancelled() => {}
            }
        }
        None => {
            let _ = settled.send(());
            tokio::select! {
                _ = trial_end.cancelled() => {}
                _ = cancel.cancelled() => {}
            }
        }
    }
    match faults.undo(&applied).await {
        Ok(()) => record.undone_at = Some(Utc::now()),
        Err(e) => record.error = Some(format!("not undone: {e}")),
    }
    record
}

/// What a trial saw, for [`measure`].
struct Seen {
    index: u32,
    phase: Remediation,
    faults: Vec<FaultRecord>,
    /// When the trial began injecting (the first fault's own time wins when it has one).
    injected_at: DateTime<Utc>,
    recovered_at: Option<DateTime<Utc>>,
    recovery_deadline: Option<DateTime<Utc>>,
    workload: Option<WorkloadVerdict>,
    tickets: Vec<TicketRecord>,
    notes: Vec<String>,
    interrupted: bool,
}

/// The actors whose actions are a remediation's own: a person's are not.
fn remediates(actor: Option<&str>) -> bool {
    matches!(actor, Some("controller" | "agent"))
}

/// The trial's figures and verdict from what was seen. The verdict, first that applies:
/// `interrupted`; `escalated` (a ticket of the trial escalated); `timeout` (no recovery);
/// `fail` (a fault not applied or not undone, or the workload not ok); `no action` (outside
/// the baseline, no remediation took an action before the steady state came back, or before
/// the faults held for a fixed time ended by themselves); else `pass`.
fn measure(seen: Seen) -> Trial {
    let Seen {
        index,
        phase,
        faults,
        injected_at,
        recovered_at,
        recovery_deadline,
        workload,
        mut tickets,
        mut notes,
        interrupted,
    } = seen;
    let injected_at = faults
        .iter()
        .filter_map(|f| f.injected_at)
        .min()
        .unwrap_or(injected_at);
    // A ticket opened before the first fault (during a `start` offset) is not the trial's.
    tickets.retain(|t| t.detected_at >= injected_at);
    let detected_at = tickets.iter().map(|t| t.detected_at).min();
    let first = tickets
        .iter()
        .filter_map(|t| t.first_action_at.map(|at| (at, t)))
        .min_by_key(|(at, _)| *at);
    let all_resolved = !tickets.is_empty() && tickets.iter().all(|t| t.resolved_at.is_some());
    let last_resolved = tickets
        .iter()
        .filter_map(|t| t.resolved_at.map(|at| (at, t)))
        .max_by_key(|(at, _)| *at);
    let ms = |at: Option<DateTime<Utc>>| {
        at.map(|at| (at - injected_at).num_milliseconds().max(0) as u64)
    };
    let fault_failed = faults.iter().any(|f| f.error.is_some());
    if tickets.is_empty() && !interrupted {
        notes.push("no ticket was opened: the controller did not detect the fault".into());
    }
    let escalated = tickets
        .iter()
        .filter_map(|t| t.escalated_at.map(|at| (at, t)))
        .min_by_key(|(at, _)| *at);
    // A repair counts if it came before the steady state was back, and before a fault held
    // for a fixed time ended by itself: after that, the fault's end is what recovered.
    let ended_by_itself = faults
        .iter()
        .filter(|f| f.held_ms.is_some())
        .filter_map(|f| f.undone_at)
        .max();
    let act_by = recovered_at.map(|r| ended_by_itself.map_or(r, |e| e.min(r)));
    let acted = act_by.is_some_and(|by| {
        tickets.iter().any(|t| {
            remediates(t.first_actor.as_deref()) && t.first_action_at.is_some_and(|at| at <= by)
        })
    });
    let outcome = if interrupted {
        Outcome::Interrupted
    } else if escalated.is_some() {
        Outcome::Escalated
    } else if recovered_at.is_none() {
        Outcome::Timeout
    } else if fault_failed || workload.as_ref().is_some_and(|w| !w.ok) {
        Outcome::Fail
    } else if phase != Remediation::Baseline && !acted {
        Outcome::NoAction
    } else {
        Outcome::Pass
    };
    match outcome {
        Outcome::Interrupted => notes.push("interrupted; its faults were undone".into()),
        Outcome::Escalated => {
            if let Some((at, t)) = escalated {
                notes.push(format!(
                    "ticket #{} ({}) escalated {} after the first fault: the {} gave up on its repair",
                    t.id,
                    t.target,
                    super::report::ms((at - injected_at).num_milliseconds().max(0) as u64),
                    phase.as_str()
                ));
            }
        }
        Outcome::NoAction => notes.push(match (ended_by_itself, recovered_at) {
            (Some(end), Some(r)) if end <= r => format!(
                "no action by the {} before the faults ended by themselves: the steady state came back after the fault's end, not after a repair",
                phase.as_str()
            ),
            _ => format!(
                "no action by the {} before the steady state came back: something else recovered the cluster",
                phase.as_str()
            ),
        }),
        _ => {}
    }
    Trial {
        index,
        interrupted,
        remediation: phase.as_str().to_string(),
        faults,
        injected_at,
        detected_at,
        first_action_at: first.map(|(at, _)| at),
        first_actor: first.and_then(|(_, t)| t.first_actor.clone()),
        recovered_at,
        resolved_at: if all_resolved {
            last_resolved.map(|(at, _)| at)
        } else {
            None
        },
        resolved_by: if all_resolved {
            last_resolved.and_then(|(_, t)| t.resolved_by.clone())
        } else {
            None
        },
        ttd_ms: ms(detected_at),
        ttr_ms: ms(recovered_at),
        recovery_deadline,
        outcome,
        workload,
        tickets,
        notes,
    }
}

/// The most lines of a command workload's standard output kept (the last ones), and the
/// most characters kept of each: its counts line is its last words.
const WORKLOAD_TAIL_LINES: usize = 200;
const WORKLOAD_LINE_CHARS: usize = 1000;
/// How long the runner reads a stopped workload's output for: a grandchild that kept the
/// pipe open must not hold the trial.
const WORKLOAD_DRAIN: Duration = Duration::from_secs(5);

/// The counts a command workload printed, as the built-in canary counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Counts {
    attempted: u64,
    acknowledged: u64,
    lost: u64,
    phantom: u64,
    indeterminate: u64,
}

/// The counts of one line, if it gives them: `N acknowledged` and `N lost` at least, with
/// `N writes` (or `N attempted`), `N phantom` and `N indeterminate` optional, in any order,
/// separated by spaces, commas or semicolons; `acknowledged=N` works too. `net-canary: 21
/// writes, 21 acknowledged, 0 lost` is one. Attempted defaults to acknowledged.
fn counts_in(line: &str) -> Option<Counts> {
    let words: Vec<String> = line
        .split(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | '(' | ')'))
        .filter(|w| !w.is_empty())
        .flat_map(|w| match w.split_once('=') {
            // `acknowledged=21` reads as `21 acknowledged`.
            Some((name, n)) => vec![n.to_string(), name.to_string()],
            None => vec![w.to_string()],
        })
        .collect();
    let (mut attempted, mut acknowledged, mut lost, mut phantom, mut indeterminate) =
        (None, None, None, None, None);
    for pair in words.windows(2) {
        let Ok(n) = pair[0].parse::<u64>() else {
            continue;
        };
        let slot = match pair[1]
            .trim_end_matches(['.', ':'])
            .to_ascii_lowercase()
            .as_str()
        {
            "writes" | "write" | "attempted" => &mut attempted,
            "acknowledged" | "acked" => &mut acknowledged,
            "lost" => &mut lost,
            "phantom" | "phantoms" => &mut phantom,
            "indeterminate" => &mut indeterminate,
            _ => continue,
        };
        *slot = Some(n);
    }
    let (acknowledged, lost) = (acknowledged?, lost?);
    Some(Counts {
        attempted: attempted.unwrap_or(acknowledged),
        acknowledged,
        lost,
        phantom: phantom.unwrap_or(0),
        indeterminate: indeterminate.unwrap_or(0),
    })
}

/// A command workload's verdict from how it ended and what it printed: the last line with
/// counts ([`counts_in`]) gives the figures. With counts, it is ok only if it exited well,
/// lost nothing, invented nothing and had a write acknowledged (as the canary: otherwise
/// nothing was proved); without, its exit status alone decides, and the verdict says the
/// figures were not reported.
fn command_verdict(ended: Result<(), String>, output: &[String]) -> WorkloadVerdict {
    let found = output
        .iter()
        .rev()
        .find_map(|line| counts_in(line).map(|c| (c, line)));
    let mut problems: Vec<String> = ended.err().into_iter().collect();
    let (counts, said) = match found {
        Some((c, line)) => {
            if c.lost > 0 {
                problems.push(format!("{} acknowledged write(s) lost", c.lost));
            }
            if c.phantom > 0 {
                problems.push(format!("{} phantom write(s)", c.phantom));
            }
            if c.acknowledged == 0 {
                problems.push("no write was acknowledged, so nothing was proved".into());
            }
            (Some(c), format!("its counts: `{}`", line.trim()))
        }
        None => (
            None,
            "it printed no counts line (`N writes, N acknowledged, N lost`), so its writes were not counted"
                .to_string(),
        ),
    };
    let ok = problems.is_empty();
    problems.push(said);
    let c = counts.unwrap_or_default();
    WorkloadVerdict {
        kind: "command".into(),
        attempted: c.attempted,
        acknowledged: c.acknowledged,
        lost: c.lost,
        phantom: c.phantom,
        indeterminate: c.indeterminate,
        lost_examples: Vec::new(),
        uncounted: counts.is_none(),
        ok,
        detail: Some(problems.join("; ")),
    }
}

/// A `workload: {command}`: started before the faults, stopped after recovery; its standard
/// output's last lines are kept for its counts.
struct CommandWorkload {
    task: tokio::task::JoinHandle<(Result<(), String>, Vec<String>)>,
    stop: CancellationToken,
}

impl CommandWorkload {
    fn start(command: &str, timeout: Duration, dir: &Path) -> CommandWorkload {
        let stop = CancellationToken::new();
        let (command, token, dir) = (command.to_string(), stop.clone(), dir.to_path_buf());
        let task = tokio::spawn(async move {
            let spawned = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(&command)
                .current_dir(&dir)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .process_group(0)
                .kill_on_drop(true)
                .spawn();
            let mut child = match spawned {
                Ok(child) => child,
                Err(e) => return (Err(format!("cannot run sh: {e}")), Vec::new()),
            };
            let reader = child.stdout.take().map(|out| tokio::spawn(tail(out)));
            let ended = Self::wait(&mut child, &command, timeout, &token).await;
            let output = match reader {
                Some(reader) => tokio::time::timeout(WORKLOAD_DRAIN, reader)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default(),
                None => Vec::new(),
            };
            (ended, output)
        });
        CommandWorkload { task, stop }
    }

    /// Until it ends by itself (an error: it must run through the trial) or is stopped.
    async fn wait(
        child: &mut tokio::process::Child,
        command: &str,
        timeout: Duration,
        stop: &CancellationToken,
    ) -> Result<(), String> {
        let pid = child.id();
        tokio::select! {
            status = child.wait() => {
                return match status {
                    Ok(s) if s.success() => Ok(()),
                    Ok(s) => Err(format!("`{command}` exited with {s} during the trial")),
                    Err(e) => Err(e.to_string()),
                };
            }
            _ = stop.cancelled() => {}
        }
        // The group this child leads; not reaped yet.
        if let Some(pid) = pid.and_then(procfs::pid) {
            let _ = kill_process_group(pid, Signal::TERM);
        }
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(s)) if s.success() || s.code().is_none() => Ok(()),
            Ok(Ok(s)) => Err(format!("`{command}` exited with {s} when stopped")),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => {
                let _ = child.kill().await;
                Err(format!(
                    "`{command}` did not stop within {} s of SIGTERM",
                    timeout.as_secs()
                ))
            }
        }
    }

    async fn finish(self) -> WorkloadVerdict {
        self.stop.cancel();
        let (ended, output) = self
            .task
            .await
            .unwrap_or_else(|e| (Err(e.to_string()), Vec::new()));
        command_verdict(ended, &output)
    }
}

/// The last [`WORKLOAD_TAIL_LINES`] lines of a stream, each cut to [`WORKLOAD_LINE_CHARS`].
/// Read to the end (bytes, not text: a line that is not UTF-8 must not stop the reading and
/// leave the workload blocked on a full pipe).
async fn tail(out: impl tokio::io::AsyncRead + Unpin) -> Vec<String> {
    use tokio::io::AsyncBufReadExt;
    let mut reader = tokio::io::BufReader::new(out);
    let mut kept = std::collections::VecDeque::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if kept.len() == WORKLOAD_TAIL_LINES {
            kept.pop_front();
        }
        let text = String::from_utf8_lossy(&line);
        kept.push_back(
            text.trim_end_matches(['\n', '\r'])
                .chars()
                .take(WORKLOAD_LINE_CHARS)
                .collect::<String>(),
        );
    }
    kept.into()
}

/// A new log file `NAME.log` in `dir`, or `NAME-2.log`, `NAME-3.log`... when that exists
/// (a report folder given again with `--report`): created exclusively, so a controller's
/// log never overwrites another's.
fn fresh_log(
    dir: &Path,
    name: &str,
) -> Result<(PathBuf, std::fs::File), (PathBuf, std::io::Error)> {
    let mut n = 1;
    loop {
        let path = if n == 1 {
            dir.join(format!("{name}.log"))
        } else {
            dir.join(format!("{name}-{n}.log"))
        };
        match std::fs::File::create_new(&path) {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
            Err(e) => return Err((path, e)),
        }
    }
}

/// Where a drill's commands run: its file's folder (as its `manifest` is resolved).
pub fn drill_dir(drill: &Drill) -> PathBuf {
    drill
        .source
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A small seeded generator (SplitMix64): random targets are reproducible from the seed
/// recorded in the journal, without a dependency.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A seed for a run that was not given one.
pub fn fresh_seed() -> u64 {
    let nanos = Utc::now().timestamp_nanos_opt().unwrap_or_default() as u64;
    SplitMix(nanos ^ u64::from(std::process::id())).next()
}

/// A run's id: `{UTC timestamp}-{8 hex}`, as agent sessions are named.
pub fn run_id() -> String {
    format!(
        "{}-{:08x}",
        Utc::now().format("%Y%m%dT%H%M%SZ"),
        fresh_seed() as u32
    )
}

/// The manifest files a drill's `manifest` names (a file, or a folder's YAML files).
fn manifest_files(path: &Path) -> Vec<PathBuf> {
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    }
}

fn sha256_of(files: &[PathBuf]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for f in files {
        h.update(std::fs::read(f).unwrap_or_default());
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn ticket(id: i64, detected: i64, action: Option<i64>, resolved: Option<i64>) -> TicketRecord {
        TicketRecord {
            id,
            drift: "stopped".into(),
            target: format!("c/s{id}/stopped"),
            detected_at: at(detected),
            first_action_at: action.map(at),
            first_actor: action.map(|_| "controller".into()),
            resolved_at: resolved.map(at),
            resolved_by: resolved.map(|_| "controller".into()),
            escalated_at: None,
            status: if resolved.is_some() {
                "resolved"
            } else {
                "open"
            }
            .into(),
        }
    }

    fn fault(injected: i64) -> FaultRecord {
        FaultRecord {
            ledger_id: 1,
            kind: "kill".into(),
            service: "s".into(),
            container: "c-s".into(),
            params: serde_json::Value::Null,
            injected_at: Some(at(injected)),
            undone_at: None,
            held_ms: None,
            error: None,
        }
    }

    /// A fault held `held` seconds from `injected` and undone then, as the runner does.
    fn held(injected: i64, held: i64) -> FaultRecord {
        FaultRecord {
            kind: "pause".into(),
            undone_at: Some(at(injected + held)),
            held_ms: Some(held as u64 * 1000),
            ..fault(injected)
        }
    }

    /// A controller trial injected at 0 that recovered at `recovered`.
    fn seen(faults: Vec<FaultRecord>, recovered: Option<i64>, tickets: Vec<TicketRecord>) -> Seen {
        Seen {
            index: 1,
            phase: Remediation::Controller,
            faults,
            injected_at: at(0),
            recovered_at: recovered.map(at),
            recovery_deadline: None,
            workload: None,
            tickets,
            notes: Vec::new(),
            interrupted: false,
        }
    }

    #[test]
    fn times_are_measured_from_the_first_fault_to_the_first_ticket_and_the_recovery() {
        let t = measure(Seen {
            injected_at: at(9),
            ..seen(
                vec![fault(10)],
                Some(25),
                vec![
                    ticket(1, 12, Some(13), Some(24)),
                    ticket(2, 14, None, Some(26)),
                ],
            )
        });
        assert_eq!(t.ttd_ms, Some(2000));
        assert_eq!(t.ttr_ms, Some(15000));
        assert_eq!(t.first_action_at, Some(at(13)));
        assert_eq!(t.resolved_at, Some(at(26)));
        assert_eq!(t.outcome, Outcome::Pass);
    }

    #[test]
    fn no_recovery_is_a_timeout_and_lost_writes_or_a_failed_fault_a_failure() {
        let t = measure(seen(vec![fault(0)], None, vec![ticket(1, 1, None, None)]));
        assert_eq!(t.outcome, Outcome::Timeout);
        assert_eq!(t.resolved_at, None, "an unresolved ticket: not resolved");
        let lost = WorkloadVerdict {
            kind: "etcd-canary".into(),
            attempted: 10,
            acknowledged: 10,
            lost: 1,
            phantom: 0,
            indeterminate: 0,
            lost_examples: vec![3],
            uncounted: false,
            ok: false,
            detail: None,
        };
        let t = measure(Seen {
            workload: Some(lost),
            ..seen(vec![fault(0)], Some(5), vec![])
        });
        assert_eq!(t.outcome, Outcome::Fail);
        assert!(
            t.notes.iter().any(|n| n.contains("no ticket")),
            "{:?}",
            t.notes
        );
        let mut broken = fault(0);
        broken.error = Some("not undone: gone".into());
        let t = measure(seen(
            vec![broken],
            Some(5),
            vec![ticket(1, 1, Some(1), Some(2))],
        ));
        assert_eq!(t.outcome, Outcome::Fail);
    }

    #[test]
    fn an_escalated_ticket_makes_the_trial_escalated_even_when_the_cluster_came_back() {
        let mut escalated = ticket(1, 1, Some(2), None);
        escalated.escalated_at = Some(at(3));
        escalated.status = "escalated".into();
        let t = measure(seen(vec![fault(0)], Some(8), vec![escalated.clone()]));
        assert_eq!(t.outcome.as_str(), "escalated", "{:?}", t.notes);
        assert!(
            t.notes
                .iter()
                .any(|n| n.contains("#1") && n.contains("escalated")),
            "{:?}",
            t.notes
        );
        // Not recovered either: the escalation is the cause, and the word.
        let t = measure(seen(vec![fault(0)], None, vec![escalated]));
        assert_eq!(t.outcome.as_str(), "escalated");
    }

    #[test]
    fn a_recovery_without_a_repair_before_the_fault_ended_is_no_action() {
        // Paused for 30 s; nobody acted; the steady state came back after the undo.
        let t = measure(seen(
            vec![held(0, 30)],
            Some(31),
            vec![ticket(1, 1, None, Some(31))],
        ));
        assert_eq!(t.outcome.as_str(), "no action", "{:?}", t.notes);
        assert!(
            t.notes.iter().any(|n| n.contains("ended by themselves")),
            "{:?}",
            t.notes
        );
        // An action only after the fault's own end does not count either.
        let t = measure(seen(
            vec![held(0, 30)],
            Some(33),
            vec![ticket(1, 1, Some(32), Some(33))],
        ));
        assert_eq!(t.outcome.as_str(), "no action");
        // An instant fault that something else repaired (no ticket acted on).
        let t = measure(seen(
            vec![fault(0)],
            Some(3),
            vec![ticket(1, 1, None, Some(3))],
        ));
        assert_eq!(t.outcome.as_str(), "no action");
        // A person's action is not the controller's.
        let mut by_hand = ticket(1, 1, Some(2), Some(3));
        by_hand.first_actor = Some("human".into());
        let t = measure(seen(vec![fault(0)], Some(3), vec![by_hand]));
        assert_eq!(t.outcome.as_str(), "no action");
        // A repair before the fault's end passes; so does the baseline, which never acts.
        let t = measure(seen(
            vec![held(0, 30)],
            Some(2),
            vec![ticket(1, 1, Some(1), Some(2))],
        ));
        assert_eq!(t.outcome, Outcome::Pass);
        let t = measure(Seen {
            phase: Remediation::Baseline,
            ..seen(
                vec![held(0, 30)],
                Some(31),
                vec![ticket(1, 1, None, Some(31))],
            )
        });
        assert_eq!(t.outcome, Outcome::Pass);
    }

    #[test]
    fn an_interrupted_trial_is_labelled_interrupted() {
        let t = measure(Seen {
            interrupted: true,
            ..seen(vec![held(0, 30)], None, vec![ticket(1, 1, None, None)])
        });
        assert!(t.interrupted);
        assert_eq!(t.outcome.as_str(), "interrupted");
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(json["outcome"], "interrupted");
    }

    #[test]
    fn a_command_workloads_counts_line_is_read() {
        let out = |lines: &[&str]| lines.iter().map(|l| l.to_string()).collect::<Vec<_>>();
        let v = command_verdict(
            Ok(()),
            &out(&["starting", "net-canary: 21 writes, 21 acknowledged, 0 lost"]),
        );
        assert_eq!(
            (v.attempted, v.acknowledged, v.lost, v.uncounted, v.ok),
            (21, 21, 0, false, true),
            "{v:?}"
        );
        // The last counts line wins; key=value works; a loss fails the verdict even with
        // a clean exit.
        let v = command_verdict(
            Ok(()),
            &out(&[
                "1 writes, 1 acknowledged, 0 lost",
                "lost: operator-canary/x/00000007",
                "attempted=30 acknowledged=28 lost=2 phantom=0 indeterminate=1",
            ]),
        );
        assert_eq!(
            (v.attempted, v.acknowledged, v.lost, v.indeterminate, v.ok),
            (30, 28, 2, 1, false),
            "{v:?}"
        );
        // Nothing acknowledged proves nothing, as for the canary.
        let v = command_verdict(Ok(()), &out(&["5 writes, 0 acknowledged, 0 lost"]));
        assert!(!v.ok, "{v:?}");
        // No counts line: the exit status decides, and the figures are said to be missing.
        let v = command_verdict(Ok(()), &out(&["hello"]));
        assert!(v.ok && v.uncounted, "{v:?}");
        assert!(v.detail.unwrap().contains("no counts line"));
        let v = command_verdict(Err("`x` exited with 1".into()), &[]);
        assert!(!v.ok && v.uncounted, "{v:?}");
    }

    #[tokio::test]
    async fn a_command_workload_stopped_by_sigterm_reports_the_counts_it_prints() {
        let dir = std::env::temp_dir().join(format!(
            "operator-chaos-command-workload-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // As net-canary.sh does: a loop until SIGTERM, then its counts on standard output.
        // `ready` says the trap is set (a TERM before it would end sh silently).
        let script = "STOP=0; trap 'STOP=1' TERM; : > ready; \
            while [ $STOP -eq 0 ]; do sleep 0.05; done; \
            echo \"canary: 21 writes, 21 acknowledged, 0 lost\"";
        let w = CommandWorkload::start(script, Duration::from_secs(20), &dir);
        for _ in 0..400 {
            if dir.join("ready").exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(dir.join("ready").exists(), "the workload never started");
        let v = w.finish().await;
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(v.kind, "command");
        assert_eq!((v.attempted, v.acknowledged, v.lost), (21, 21, 0), "{v:?}");
        assert!(v.ok && !v.uncounted, "{v:?}");
    }

    #[test]
    fn a_controller_log_never_overwrites_another() {
        let dir =
            std::env::temp_dir().join(format!("operator-chaos-fresh-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("controller-controller.log"), "the repairs\n").unwrap();
        let (path, _) = fresh_log(&dir, "controller-controller").unwrap();
        assert_eq!(path, dir.join("controller-controller-2.log"));
        assert_eq!(
            std::fs::read_to_string(dir.join("controller-controller.log")).unwrap(),
            "the repairs\n"
        );
        let (path, _) = fresh_log(&dir, "controller-after-baseline").unwrap();
        assert_eq!(path, dir.join("controller-after-baseline.log"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_seeded_picks_repeat_with_the_seed() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = SplitMix(42);
                move |_| r.next()
            })
            .collect();
        let b: Vec<u64> = (0..4)
            .map({
                let mut r = SplitMix(42);
                move |_| r.next()
            })
            .collect();
        let c: Vec<u64> = (0..4)
            .map({
                let mut r = SplitMix(43);
                move |_| r.next()
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
