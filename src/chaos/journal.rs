//! The journal of one `operator chaos run`: what ran, with which seed against which
//! versions, and every trial's timestamps, tickets and workload verdict. Written as JSON
//! (`journal.json` in the run's report folder) after every trial, so a run killed half way
//! still leaves the trials it finished; the Markdown report is rendered from it alone.
//!
//! Statuses borrow Chaos Toolkit's vocabulary: a run is `completed`, `failed` (the runner
//! itself could not go on), `interrupted` (Ctrl-C, SIGTERM) or `aborted` (refused before
//! any fault: the cluster was not in its steady state); `deviated` when a trial's steady
//! state did not come back. A refused run (another run holds the cluster, a baseline beside
//! a foreign controller, an engine that does not answer, a cluster not in its steady state)
//! leaves no journal: nothing ran, so there is nothing to list; `aborted` then lives only in
//! the ledger's row of the run (and in format 1 journals).

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The journal's file name inside a report folder.
pub const JOURNAL_FILE: &str = "journal.json";
/// The journal format; bumped when a field changes meaning or a value is added that an older
/// operator would not read (format 2: the outcomes `escalated`, `no-action` and
/// `interrupted`). Every format from 1 up to this one is read.
pub const FORMAT: u32 = 2;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Journal {
    pub format: u32,
    /// `{UTC timestamp}-{8 hex}`, as agent sessions are named.
    pub run_id: String,
    pub drill: String,
    pub drill_file: PathBuf,
    /// sha256 of the drill file's bytes and of the manifest files' bytes (sorted by path).
    pub drill_sha256: String,
    pub manifest_sha256: String,
    pub cluster: String,
    pub operator_version: String,
    /// The Docker engine's version, when it answered.
    pub engine_version: Option<String>,
    pub seed: u64,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub status: RunStatus,
    /// Some trial's steady state did not come back.
    pub deviated: bool,
    /// Why the run is `aborted`, `failed` or `interrupted`.
    pub reason: Option<String>,
    /// Trials in the order they ran; with `--baseline` the controller's trials and the
    /// baseline's alternate.
    pub trials: Vec<Trial>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Completed,
    Failed,
    Interrupted,
    Aborted,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Aborted => "aborted",
        }
    }
}

/// A trial's verdict. Only `Pass` is a pass: the others say, in one word, why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The steady state came back within the recovery timeout, no acknowledged write was
    /// lost, and (outside the baseline) the remediation acted before the faults ended by
    /// themselves.
    Pass,
    /// It came back, but the workload lost acknowledged writes (or failed), or a fault
    /// could not be injected or undone.
    Fail,
    /// The steady state did not come back within the recovery timeout.
    Timeout,
    /// A ticket of the trial escalated: the controller gave up on a repair, whatever the
    /// steady state did afterwards.
    Escalated,
    /// The steady state came back, but the controller (or agent) took no action before it
    /// did, or before the faults ended by themselves: what recovered the cluster was the
    /// fault's end, or someone else.
    NoAction,
    /// Cut short by Ctrl-C, SIGTERM or SIGHUP: not measured, not a deviation.
    Interrupted,
}

impl Outcome {
    /// The word the report, the progress lines and `chaos list` use.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::Timeout => "timeout",
            Outcome::Escalated => "escalated",
            Outcome::NoAction => "no action",
            Outcome::Interrupted => "interrupted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// 1-based, per remediation.
    pub index: u32,
    /// Cut short by Ctrl-C or SIGTERM (its outcome is then `interrupted`, its faults undone);
    /// not counted as a deviation. Format 1 journals said `timeout` with this set.
    #[serde(default)]
    pub interrupted: bool,
    /// `controller`, `agent` or `baseline`.
    pub remediation: String,
    pub faults: Vec<FaultRecord>,
    /// When the first fault was applied.
    pub injected_at: DateTime<Utc>,
    /// The first ticket of the cluster opened after the injection.
    pub detected_at: Option<DateTime<Utc>>,
    /// The first action on such a ticket, and who took it.
    pub first_action_at: Option<DateTime<Utc>>,
    pub first_actor: Option<String>,
    /// When the drill's steady state held again (judged by the drill, not the tickets).
    pub recovered_at: Option<DateTime<Utc>>,
    /// When the last ticket the trial opened was resolved, and the cause.
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolved_by: Option<String>,
    /// Time to detect and to recover, from `injected_at`, in milliseconds.
    pub ttd_ms: Option<u64>,
    pub ttr_ms: Option<u64>,
    /// When the recovery wait would give up: the faults' end plus the drill's
    /// `recoveryTimeout` (a timed-out trial's bar on the timeline runs to it). `None` when
    /// the faults never ended within the trial (interrupted) and in format 1 journals.
    #[serde(default)]
    pub recovery_deadline: Option<DateTime<Utc>>,
    pub outcome: Outcome,
    pub workload: Option<WorkloadVerdict>,
    /// Every ticket the trial touched (opened or reopened after its injection).
    pub tickets: Vec<TicketRecord>,
    /// What went wrong or was noticed, in words.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultRecord {
    /// The ledger's id for it.
    pub ledger_id: i64,
    pub kind: String,
    pub service: String,
    pub container: String,
    /// The fault's parameters as the drill gave them.
    pub params: serde_json::Value,
    pub injected_at: Option<DateTime<Utc>>,
    pub undone_at: Option<DateTime<Utc>>,
    /// How long the drill held it (`duration`), for a fault held for a fixed time: its
    /// undo is then the fault ending by itself. `None` for instant faults and those held to
    /// the trial's end.
    #[serde(default)]
    pub held_ms: Option<u64>,
    /// Why it could not be injected or undone.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TicketRecord {
    pub id: i64,
    pub drift: String,
    /// The fingerprint's target: `service NAME` or `check NAME`.
    pub target: String,
    pub detected_at: DateTime<Utc>,
    pub first_action_at: Option<DateTime<Utc>>,
    /// Who took the first action (`controller`, `agent`, `human`).
    #[serde(default)]
    pub first_actor: Option<String>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolved_by: Option<String>,
    /// When it escalated during the trial (its timeline's `escalated` entry, or its
    /// detection for a ticket found escalated without one).
    #[serde(default)]
    pub escalated_at: Option<DateTime<Utc>>,
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadVerdict {
    /// `etcd-canary` or `command`.
    pub kind: String,
    /// Writes attempted, and acknowledged by the cluster.
    pub attempted: u64,
    pub acknowledged: u64,
    /// Acknowledged writes not read back after recovery (must be 0).
    pub lost: u64,
    /// Keys read back that were never attempted (must be 0).
    pub phantom: u64,
    /// Writes whose answer never came (they may or may not have landed; not counted lost).
    pub indeterminate: u64,
    /// Some lost sequence numbers, for the report.
    pub lost_examples: Vec<u64>,
    /// The workload reported no counts (a command that printed no counts line): the figures
    /// above are zeros, not measurements.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub uncounted: bool,
    pub ok: bool,
    pub detail: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a chaos journal: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: journal format {found}, this operator reads formats 1 to {FORMAT}")]
    Format { path: PathBuf, found: u32 },
}

impl Journal {
    /// Writes `dir/journal.json` atomically (a temporary file renamed over it), so a reader
    /// or a crash never sees half a journal.
    pub fn write(&self, dir: &Path) -> Result<PathBuf, JournalError> {
        let path = dir.join(JOURNAL_FILE);
        let io = |source| JournalError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let tmp = dir.join(format!(".{JOURNAL_FILE}.tmp"));
        let bytes = serde_json::to_vec_pretty(self).expect("a journal serializes");
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        Ok(path)
    }

    /// Reads a journal from a report folder or the journal file itself.
    pub fn read(path: &Path) -> Result<Journal, JournalError> {
        let path = if path.is_dir() {
            path.join(JOURNAL_FILE)
        } else {
            path.to_path_buf()
        };
        let bytes = std::fs::read(&path).map_err(|source| JournalError::Io {
            path: path.clone(),
            source,
        })?;
        #[derive(Deserialize)]
        struct Head {
            format: u32,
        }
        if let Ok(head) = serde_json::from_slice::<Head>(&bytes)
            && !(1..=FORMAT).contains(&head.format)
        {
            return Err(JournalError::Format {
                path,
                found: head.format,
            });
        }
        let mut journal: Journal = serde_json::from_slice(&bytes)
            .map_err(|source| JournalError::Parse { path, source })?;
        // Format 1 had no `interrupted` outcome: such a trial said `timeout`.
        for trial in &mut journal.trials {
            if trial.interrupted {
                trial.outcome = Outcome::Interrupted;
            }
        }
        Ok(journal)
    }
}
