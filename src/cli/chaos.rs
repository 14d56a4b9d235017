//! `operator chaos ...`: chaos drills. `run` a drill (progress on a terminal, the journal
//! and report at the end), `validate` drill files, `report` and `list` past runs, and
//! `cleanup`, which undoes what a killed drill left behind; and the sweep the controller
//! runs at its start.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::chaos::fault::{FaultError, Faults, Sweep};
use crate::chaos::journal::{Journal, Outcome, RunStatus};
use crate::chaos::runner::{self, Event, RunConfig};
use crate::chaos::spec::Drill;
use crate::manifest::DesiredState;
use crate::tickets::{FaultRow, Store};

use super::{ChaosCommand, ChaosRunArgs, Failure, outln};

/// How long the engine handshake of a sweep may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(command: ChaosCommand) -> Result<ExitCode, Failure> {
    match command {
        ChaosCommand::Run(args) => run_drill(args).await,
        ChaosCommand::Validate { drills } => validate(&drills).await,
        ChaosCommand::Report { dir, json } => report(&dir, json).await,
        ChaosCommand::List { root, json, db } => list(root, &db.path(), json),
        ChaosCommand::Cleanup { force, json, db } => cleanup(&db.path(), force, json).await,
    }
}

/// `fault 3 (pause of tikv-pd1, service pd1; run R, trial 2)`.
fn describe(f: &FaultRow) -> String {
    format!(
        "fault {} ({} of {}, service {}; run {}, trial {})",
        f.id, f.kind, f.container_name, f.service, f.run_id, f.trial
    )
}

fn json_of(sweep: &Sweep) -> serde_json::Value {
    let undone: Vec<serde_json::Value> = sweep
        .undone
        .iter()
        .map(|(f, r)| {
            serde_json::json!({
                "fault": f,
                "undone": r.is_ok(),
                "error": r.as_ref().err().map(ToString::to_string),
            })
        })
        .collect();
    let skipped: Vec<serde_json::Value> = sweep
        .skipped
        .iter()
        .map(|(f, why)| serde_json::json!({"fault": f, "reason": why}))
        .collect();
    serde_json::json!({"undone": undone, "skipped": skipped, "ended_runs": sweep.ended_runs})
}

async fn cleanup(db: &Path, force: bool, json: bool) -> Result<ExitCode, Failure> {
    if !db.exists() {
        if json {
            outln!("{}", json_of(&Sweep::default()));
        } else {
            outln!("no ticket database at {}: no fault to undo", db.display());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let store = Arc::new(Store::open(db)?);
    let faults = Faults::connect(store, CONNECT_TIMEOUT).await?;
    let sweep = faults.undo_left(None, force).await?;
    if json {
        outln!("{:#}", json_of(&sweep));
    } else {
        for (f, result) in &sweep.undone {
            match result {
                Ok(()) => outln!("undone: {}", describe(f)),
                Err(e) => outln!("FAILED to undo {}: {e}", describe(f)),
            }
        }
        for (f, why) in &sweep.skipped {
            outln!("left: {}: {why} (--force undoes it anyway)", describe(f));
        }
        for run in &sweep.ended_runs {
            outln!("run {run} marked interrupted: its runner is gone");
        }
        if sweep.undone.is_empty() && sweep.skipped.is_empty() {
            outln!("no fault left to undo");
        }
    }
    Ok(if sweep.failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// At the controller's start: undoes the faults of drills whose runner is gone (a killed
/// `operator chaos run`), logging each one. Never fails: a fault that cannot be undone is
/// logged, and the controller starts anyway.
pub async fn undo_left_at_start(store: Arc<Store>) {
    let faults = match Faults::connect(store, CONNECT_TIMEOUT).await {
        Ok(f) => f,
        Err(e) => {
            warn!(error = %e, "cannot look for chaos faults left behind");
            return;
        }
    };
    let sweep = match faults.undo_left(None, false).await {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot look for chaos faults left behind");
            return;
        }
    };
    log_sweep(&sweep);
}

fn log_sweep(sweep: &Sweep) {
    for (f, result) in &sweep.undone {
        let what = describe(f);
        match result {
            Ok(()) => {
                warn!(fault = f.id, run = %f.run_id, "undid a chaos fault left behind by a drill whose runner is gone: {what}")
            }
            Err(FaultError::Ledger(e)) => {
                warn!(fault = f.id, error = %e, "could not record the undo of {what}")
            }
            Err(e) => {
                warn!(fault = f.id, run = %f.run_id, error = %e, "could not undo a chaos fault left behind: {what}; `operator chaos cleanup` retries")
            }
        }
    }
    if !sweep.skipped.is_empty() {
        info!(
            faults = sweep.skipped.len(),
            "chaos faults of drills still running are left to their runners"
        );
    }
    for run in &sweep.ended_runs {
        warn!(run = %run, "chaos run marked interrupted: its runner is gone");
    }
}

/// Where a run's report goes by default: `chaos/RUN_ID` beside the database.
fn report_root(db: &Path) -> PathBuf {
    db.parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
        .join("chaos")
}

fn load_drill(path: &Path) -> Result<(Drill, DesiredState), Failure> {
    crate::chaos::drill::load_with_manifest(path, &crate::chaos::netfault::netem_available).map_err(
        |d| {
            let lines: Vec<String> = d.iter().map(|d| d.to_string()).collect();
            Failure::new(format!(
                "{}\n{} problem(s) in the drill {}",
                lines.join("\n"),
                d.len(),
                path.display()
            ))
        },
    )
}

pub async fn validate(paths: &[PathBuf]) -> Result<ExitCode, Failure> {
    let mut failed = 0;
    for path in paths {
        match load_drill(path) {
            Ok((drill, _)) => outln!(
                "ok: drill {} ({}): {} fault(s) on cluster {}, {} trial(s), remediation {}",
                drill.name,
                path.display(),
                drill.faults.len(),
                drill.cluster,
                drill.trials,
                drill.remediation.as_str()
            ),
            Err(e) => {
                failed += 1;
                eprintln!("{}", e.message);
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A line on standard error that never fails: a run must go on undoing its faults when
/// whoever reads its progress has gone (`2>&1 | head`, a closed terminal).
fn err_line(text: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// Shows progress: a spinner line on a terminal, plain lines otherwise (never both).
struct Shown {
    bar: Option<indicatif::ProgressBar>,
    last_waiting: std::sync::Mutex<Option<(Vec<String>, std::time::Instant)>>,
}

impl Shown {
    /// `trials`: how many trials the run will make in all (the bar's length).
    fn new(trials: u64) -> Shown {
        use std::io::IsTerminal;
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(trials);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{spinner} trials {pos}/{len} [{elapsed_precise}] {wide_msg}",
            ) {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Shown {
            bar,
            last_waiting: std::sync::Mutex::new(None),
        }
    }

    fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => err_line(text),
        }
    }

    fn event(&self, e: Event) {
        match e {
            Event::Note(text) => self.line(&text),
            Event::Waiting { what, problems } => {
                let first = problems.first().cloned().unwrap_or_default();
                match &self.bar {
                    Some(bar) => bar.set_message(format!("{what}: {first}")),
                    None => {
                        // Plain lines: only when what is wrong changes, or every 10 s.
                        let mut last = self.last_waiting.lock().unwrap_or_else(|p| p.into_inner());
                        let due = last.as_ref().is_none_or(|(p, at)| {
                            *p != problems || at.elapsed() >= Duration::from_secs(10)
                        });
                        if due {
                            err_line(&format!("waiting for {what}: {}", problems.join("; ")));
                            *last = Some((problems, std::time::Instant::now()));
                        }
                    }
                }
            }
            Event::TrialDone(t) => {
                if let Some(bar) = &self.bar {
                    bar.inc(1);
                    bar.set_message("");
                }
                let ms = |v: Option<u64>| {
                    v.map(|v| format!("{:.1}s", v as f64 / 1000.0))
                        .unwrap_or_else(|| "-".into())
                };
                let lost = t
                    .workload
                    .as_ref()
                    .map(|w| {
                        format!(
                            ", {} acknowledged write(s), {} lost",
                            w.acknowledged, w.lost
                        )
                    })
                    .unwrap_or_default();
                self.line(&format!(
                    "trial {} ({}): {} — detected {}, recovered {}{lost}",
                    t.index,
                    t.remediation,
                    t.outcome.as_str(),
                    ms(t.ttd_ms),
                    ms(t.ttr_ms)
                ));
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

pub async fn run_drill(args: ChaosRunArgs) -> Result<ExitCode, Failure> {
    let (drill, desired) = load_drill(&args.drill)?;
    let db = args.db.path();
    let run_id = runner::run_id();
    let report_dir = args
        .report
        .clone()
        .unwrap_or_else(|| report_root(&db).join(&run_id));
    // Absolute in the ledger, so `chaos list` finds it from any folder.
    let report_dir = std::path::absolute(&report_dir).unwrap_or(report_dir);
    let seed = args.seed.or(drill.seed).unwrap_or_else(runner::fresh_seed);
    let trials = args.trials.unwrap_or(drill.trials);
    let cfg = RunConfig {
        drill,
        desired,
        db,
        report_dir: report_dir.clone(),
        run_id,
        trials,
        seed,
        baseline: args.baseline,
        operator_bin: std::env::current_exe()
            .map_err(|e| Failure::new(format!("cannot find the operator binary: {e}")))?,
        settle_timeout: args.settle_timeout,
    };
    let cancel = CancellationToken::new();
    // Ctrl-C or SIGTERM: every fault is undone before the run ends; a second signal is only
    // told so (leaving a fault behind is what this command never does).
    {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            // SIGHUP too: a closed terminal or a dropped ssh session must not kill the run
            // with its faults applied.
            let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
                signal(SignalKind::hangup()),
            ) else {
                return;
            };
            loop {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                    _ = hup.recv() => {}
                }
                if cancel.is_cancelled() {
                    err_line("still undoing the faults; the run ends when they are undone");
                } else {
                    cancel.cancel();
                    err_line("interrupted: undoing every fault, then writing the journal");
                }
            }
        });
    }
    let total = u64::from(cfg.trials) * if cfg.baseline { 2 } else { 1 };
    let shown = Arc::new(Shown::new(total));
    shown.line(&format!(
        "drill {} on cluster {}: {} trial(s){}, seed {}, report {}",
        cfg.drill.name,
        cfg.drill.cluster,
        cfg.trials,
        if cfg.baseline {
            " and as many under the baseline"
        } else {
            ""
        },
        cfg.seed,
        report_dir.display()
    ));
    let progress: runner::Progress = {
        let shown = shown.clone();
        Arc::new(move |e| shown.event(e))
    };
    let (journal, error) = runner::run(cfg, cancel, progress).await;
    shown.finish();
    // Refused before any trial: nothing ran, so nothing is written (the reason is the error).
    let Some(journal) = journal else {
        let reason = error.map_or_else(|| "the run was refused".to_string(), |e| e.to_string());
        return Err(Failure::new(format!(
            "{reason}\n(nothing was broken, and no report was written)"
        )));
    };
    journal.write(&report_dir)?;
    let rendered = crate::chaos::report::render(&journal, &report_dir);
    let summary = crate::chaos::report::summary(&journal);
    // The exit status is the run's, whoever reads the output: `| head -1` closing standard
    // output must not turn a failed drill into a success.
    let all_passed = error.is_none()
        && !journal.trials.is_empty()
        && journal.trials.iter().all(|t| t.outcome == Outcome::Pass)
        && journal.status == RunStatus::Completed;
    let printed = (|| -> Result<(), Failure> {
        if args.json {
            outln!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({"journal": journal, "summary": summary})
                )?
            );
        } else {
            match &rendered {
                Ok(files) => {
                    for f in files {
                        outln!("wrote {}", f.display());
                    }
                }
                Err(e) => err_line(&format!("error: the report could not be written: {e}")),
            }
            outln!("{summary}");
        }
        Ok(())
    })();
    if let Err(f) = printed
        && !f.broken_pipe
    {
        return Err(f);
    }
    if let Some(e) = error {
        return Err(Failure::new(e.to_string()));
    }
    Ok(if all_passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub async fn report(dir: &Path, json: bool) -> Result<ExitCode, Failure> {
    let journal = Journal::read(dir)?;
    let folder = if dir.is_dir() {
        dir.to_path_buf()
    } else {
        dir.parent().map(Path::to_path_buf).unwrap_or_default()
    };
    let files = crate::chaos::report::render(&journal, &folder)?;
    let summary = crate::chaos::report::summary(&journal);
    if json {
        outln!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        for f in files {
            outln!("wrote {}", f.display());
        }
        outln!("{summary}");
    }
    Ok(ExitCode::SUCCESS)
}

/// How many of the ledger's runs `chaos list` looks up for report folders outside the root.
const LISTED_FROM_LEDGER: usize = 10_000;

pub fn list(root: Option<PathBuf>, db: &Path, json: bool) -> Result<ExitCode, Failure> {
    let chosen_root = root.is_some();
    let root = root.unwrap_or_else(|| report_root(db));
    let store = if db.exists() {
        Store::open_read_only(db).ok()
    } else {
        None
    };
    // Without `--root`: also every run of the database's ledger whose report went elsewhere
    // (`--report DIR`); with it, that folder alone.
    let elsewhere: Vec<PathBuf> = match (&store, chosen_root) {
        (Some(store), false) => store
            .chaos_runs(LISTED_FROM_LEDGER)
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.report_dir)
            .collect(),
        _ => Vec::new(),
    };
    let mut runs = crate::chaos::report::list_runs_with(&root, &elsewhere);
    // A run killed mid-way left its journal saying `running`; the ledger knows better once
    // `chaos cleanup` (or a controller start) ended it.
    if let Some(store) = &store {
        for listing in &mut runs {
            if let crate::chaos::report::ListedRun::Readable(info) = &mut listing.run
                && info.status == RunStatus::Running
                && let Ok(Some(row)) = store.chaos_run(&listing.run_id)
                && row.ended_at.is_some()
                && let Ok(status) =
                    serde_json::from_value::<RunStatus>(serde_json::Value::String(row.status))
            {
                info.status = status;
                info.ended_at = row.ended_at;
            }
        }
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&runs)?);
    } else {
        use std::io::Write as _;
        write!(
            std::io::stdout().lock(),
            "{}",
            crate::chaos::report::render_list(&runs)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
