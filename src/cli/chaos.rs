//! `operator chaos ...`: chaos drills. For now `cleanup`, which undoes what a killed drill
//! left behind; and the sweep the controller runs at its start.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::chaos::fault::{FaultError, Faults, Sweep};
use crate::tickets::{FaultRow, Store};

use super::{ChaosCommand, Failure, outln};

/// How long the engine handshake of a sweep may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(command: ChaosCommand) -> Result<ExitCode, Failure> {
    match command {
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
