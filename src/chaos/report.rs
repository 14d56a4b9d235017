//! A run's report, rendered from its journal alone: `report.md` (the drill, its seed and
//! versions, a side-by-side summary per remediation, then every trial in full) and two SVG
//! charts ([`charts`]): a per-trial timeline and the TTD/TTR distribution. `operator chaos
//! report DIR` re-renders it; `operator chaos list` reads the folders through [`list_runs`].
//!
//! # Guarantees
//! - The same journal renders to the same bytes (no wall clock, no host fonts, no map
//!   iteration order), so a report can be compared and re-rendered at will.
//! - Every file is written atomically (a temporary file renamed over it): a reader, or a run
//!   killed while rendering, never sees half a report.
//!
//! Percentiles are nearest-rank over the trials that have a value (see [`nearest_rank`]);
//! the report states the method next to its figures.

pub mod charts;

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use super::journal::{
    FaultRecord, JOURNAL_FILE, Journal, Outcome, RunStatus, TicketRecord, Trial, WorkloadVerdict,
};

/// The report's Markdown file inside a run's folder.
pub const REPORT_FILE: &str = "report.md";
/// The per-trial timeline chart.
pub const TIMELINE_FILE: &str = "timeline.svg";
/// The TTD/TTR distribution chart.
pub const DISTRIBUTION_FILE: &str = "distribution.svg";

/// The order remediations are compared in; any other name follows, sorted.
const REMEDIATION_ORDER: [&str; 3] = ["controller", "agent", "baseline"];

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("writing the chaos report {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("drawing the chaos report's chart {path}: {source}")]
    Chart {
        path: PathBuf,
        #[source]
        source: charts::ChartError,
    },
}

/// Nearest-rank percentiles of one measure (TTD or TTR) over the trials that have it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Percentiles {
    /// How many trials had a value (the others are left out, not counted as zero).
    pub count: usize,
    pub p50_ms: Option<u64>,
    pub p95_ms: Option<u64>,
    pub max_ms: Option<u64>,
}

impl Percentiles {
    pub fn of(values: impl IntoIterator<Item = u64>) -> Percentiles {
        let mut sorted: Vec<u64> = values.into_iter().collect();
        sorted.sort_unstable();
        Percentiles {
            count: sorted.len(),
            p50_ms: nearest_rank(&sorted, 50),
            p95_ms: nearest_rank(&sorted, 95),
            max_ms: sorted.last().copied(),
        }
    }
}

/// The `percent`-th percentile of `sorted` (ascending) by the nearest-rank method: the value
/// at 1-based rank ⌈percent/100 × n⌉, so always one of the values measured (never an
/// interpolation between two trials). `None` for no values.
pub fn nearest_rank(sorted: &[u64], percent: u32) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    let rank = (percent as usize * n).div_ceil(100).clamp(1, n);
    Some(sorted[rank - 1])
}

/// One remediation's figures over its trials.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RemediationSummary {
    /// `controller`, `agent` or `baseline`.
    pub remediation: String,
    /// Trials measured: run to their end (the interrupted ones are counted apart).
    pub trials: usize,
    pub passed: usize,
    pub failed: usize,
    pub timed_out: usize,
    /// A ticket escalated: the remediation gave up.
    pub escalated: usize,
    /// Recovered, but with no action of the remediation before the faults ended by
    /// themselves (never for the baseline, which does not act).
    pub no_action: usize,
    /// Cut short by Ctrl-C or SIGTERM: shown, not measured.
    pub interrupted: usize,
    /// `passed / trials`, from 0 to 1 (0 when no trial was measured).
    pub success_rate: f64,
    pub ttd: Percentiles,
    pub ttr: Percentiles,
    /// How many trials had a workload verdict.
    pub workload_trials: usize,
    /// Acknowledged writes lost and phantom writes, summed over the trials with a workload
    /// verdict; `None` when no trial ran a workload (not the same as none lost).
    pub lost_writes: Option<u64>,
    pub phantom_writes: Option<u64>,
}

/// A run's figures as data: for `--json` and for the runner's last line ([`fmt::Display`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub run_id: String,
    pub drill: String,
    pub status: RunStatus,
    pub deviated: bool,
    /// Controller, agent, baseline (those that ran), then any other, by name.
    pub remediations: Vec<RemediationSummary>,
}

/// The per-remediation figures of a journal.
pub fn summary(journal: &Journal) -> Summary {
    let mut groups: BTreeMap<(usize, &str), Vec<&Trial>> = BTreeMap::new();
    // An interrupted trial was not measured to its end: counted as interrupted, left out of
    // the rates and percentiles.
    for trial in &journal.trials {
        let name = trial.remediation.as_str();
        let order = REMEDIATION_ORDER
            .iter()
            .position(|r| *r == name)
            .unwrap_or(REMEDIATION_ORDER.len());
        groups.entry((order, name)).or_default().push(trial);
    }
    let remediations = groups
        .into_iter()
        .map(|((_, name), all)| {
            let interrupted = all.iter().filter(|t| is_interrupted(t)).count();
            let trials: Vec<&Trial> = all.into_iter().filter(|t| !is_interrupted(t)).collect();
            let count = |o: Outcome| trials.iter().filter(|t| t.outcome == o).count();
            let verdicts: Vec<&WorkloadVerdict> =
                trials.iter().filter_map(|t| t.workload.as_ref()).collect();
            let total = |f: fn(&WorkloadVerdict) -> u64| {
                (!verdicts.is_empty()).then(|| verdicts.iter().map(|v| f(v)).sum())
            };
            let passed = count(Outcome::Pass);
            RemediationSummary {
                remediation: name.to_string(),
                trials: trials.len(),
                passed,
                failed: count(Outcome::Fail),
                timed_out: count(Outcome::Timeout),
                escalated: count(Outcome::Escalated),
                no_action: count(Outcome::NoAction),
                interrupted,
                success_rate: if trials.is_empty() {
                    0.0
                } else {
                    passed as f64 / trials.len() as f64
                },
                ttd: Percentiles::of(trials.iter().filter_map(|t| t.ttd_ms)),
                ttr: Percentiles::of(trials.iter().filter_map(|t| t.ttr_ms)),
                workload_trials: verdicts.len(),
                lost_writes: total(|v| v.lost),
                phantom_writes: total(|v| v.phantom),
            }
        })
        .collect();
    Summary {
        run_id: journal.run_id.clone(),
        drill: journal.drill.clone(),
        status: journal.status,
        deviated: journal.deviated,
        remediations,
    }
}

/// Whether a trial was cut short (format 1 journals marked it only with the flag).
fn is_interrupted(t: &Trial) -> bool {
    t.interrupted || t.outcome == Outcome::Interrupted
}

impl RemediationSummary {
    /// `1 escalated, 1 no action`: the trials that did not pass, by why; empty when none.
    fn not_passed(&self) -> String {
        [
            (self.failed, "fail"),
            (self.timed_out, "timeout"),
            (self.escalated, "escalated"),
            (self.no_action, "no action"),
            (self.interrupted, "interrupted, not measured"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect::<Vec<_>>()
        .join(", ")
    }
}

/// One line: `run ID (drill D) completed: controller 2/2 pass, TTD p50 1.20 s p95 1.50 s,
/// TTR p50 4.00 s p95 5.10 s, lost 0; baseline ...`; the trials that did not pass are
/// named by why (`controller 1/2 pass (1 escalated)`).
impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "run {} (drill {}) {}",
            self.run_id,
            self.drill,
            status_text(self.status, self.deviated)
        )?;
        if self.remediations.is_empty() {
            return write!(f, ": no trial ran");
        }
        for (i, r) in self.remediations.iter().enumerate() {
            let sep = if i == 0 { ":" } else { ";" };
            let not_passed = r.not_passed();
            if r.trials == 0 {
                write!(f, "{sep} {} {not_passed}", r.remediation)?;
                continue;
            }
            write!(f, "{sep} {} {}/{} pass", r.remediation, r.passed, r.trials)?;
            if !not_passed.is_empty() {
                write!(f, " ({not_passed})")?;
            }
            write!(
                f,
                ", TTD p50 {} p95 {}, TTR p50 {} p95 {}",
                ms_opt(r.ttd.p50_ms),
                ms_opt(r.ttd.p95_ms),
                ms_opt(r.ttr.p50_ms),
                ms_opt(r.ttr.p95_ms),
            )?;
            if let Some(lost) = r.lost_writes {
                write!(f, ", lost {lost}")?;
            }
        }
        Ok(())
    }
}

/// Writes `report.md`, `timeline.svg` and `distribution.svg` into `dir` (created if
/// missing), each atomically, and returns their paths in that order.
pub fn render(journal: &Journal, dir: &Path) -> Result<Vec<PathBuf>, ReportError> {
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let chart = |file: &str, svg: Result<String, charts::ChartError>| {
        svg.map_err(|source| ReportError::Chart {
            path: dir.join(file),
            source,
        })
    };
    let summary = summary(journal);
    let timeline = chart(TIMELINE_FILE, charts::timeline(journal))?;
    let distribution = chart(DISTRIBUTION_FILE, charts::distribution(journal, &summary))?;
    let markdown = markdown(journal, &summary);
    let mut written = Vec::new();
    for (file, text) in [
        (REPORT_FILE, markdown),
        (TIMELINE_FILE, timeline),
        (DISTRIBUTION_FILE, distribution),
    ] {
        written.push(write_atomically(dir, file, text.as_bytes())?);
    }
    Ok(written)
}

fn write_atomically(dir: &Path, file: &str, bytes: &[u8]) -> Result<PathBuf, ReportError> {
    let path = dir.join(file);
    let tmp = dir.join(format!(".{file}.tmp"));
    let io = |source| ReportError::Io {
        path: path.clone(),
        source,
    };
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(path)
}

// ---------------------------------------------------------------------------------------
// Formatting helpers (`ms` is public for the runner's progress lines).

/// `850 ms`, `1.23 s`, `2m05s`: milliseconds as people read a recovery time. Integer
/// arithmetic (truncating), so the text never depends on float rounding.
pub fn ms(value: u64) -> String {
    match value {
        0..1_000 => format!("{value} ms"),
        1_000..60_000 => format!("{}.{:02} s", value / 1000, value % 1000 / 10),
        _ => {
            let s = value / 1000;
            if s < 3600 {
                format!("{}m{:02}s", s / 60, s % 60)
            } else {
                format!("{}h{:02}m{:02}s", s / 3600, s % 3600 / 60, s % 60)
            }
        }
    }
}

fn ms_opt(value: Option<u64>) -> String {
    value.map_or_else(|| "n/a".to_string(), ms)
}

/// An offset from the trial's injection, signed: `+1.23 s`, `-20 ms`.
fn offset(from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    let delta = (to - from).num_milliseconds();
    let sign = if delta < 0 { "-" } else { "+" };
    format!("{sign}{}", ms(delta.unsigned_abs()))
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn status_text(status: RunStatus, deviated: bool) -> String {
    if deviated {
        format!("{} (deviated)", status.as_str())
    } else {
        status.as_str().to_string()
    }
}

/// A value safe inside a Markdown table cell: pipes escaped, line breaks flattened.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\r', '\n'], " ")
}

/// Inline code in a table cell; a backtick inside would end the span, so it becomes `'`.
fn code(text: &str) -> String {
    format!("`{}`", cell(&text.replace('`', "'")))
}

fn table(out: &mut String, headers: &[&str], rows: &[Vec<String>]) {
    let _ = writeln!(out, "| {} |", headers.join(" | "));
    let _ = writeln!(
        out,
        "|{}",
        headers.iter().map(|_| "---|").collect::<String>()
    );
    for row in rows {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
}

// ---------------------------------------------------------------------------------------
// report.md

/// The Markdown report (what `render` writes as `report.md`).
pub fn markdown(journal: &Journal, summary: &Summary) -> String {
    let mut out = String::new();
    header(&mut out, journal);
    summary_section(&mut out, summary);
    let _ = writeln!(out, "## Charts\n");
    let _ = writeln!(
        out,
        "![Timeline: one row per trial, seconds since its first fault]({TIMELINE_FILE})\n"
    );
    let _ = writeln!(
        out,
        "![Time to detect and time to recover per remediation]({DISTRIBUTION_FILE})\n"
    );
    let _ = writeln!(out, "## Trials\n");
    if journal.trials.is_empty() {
        let _ = writeln!(out, "No trial ran.\n");
    }
    for trial in &journal.trials {
        trial_section(&mut out, trial);
    }
    // One newline at the end, whatever the last section wrote.
    let trimmed = out.trim_end().len();
    out.truncate(trimmed);
    out.push('\n');
    out
}

fn header(out: &mut String, j: &Journal) {
    let _ = writeln!(out, "# Chaos run {}\n", j.run_id);
    let _ = writeln!(
        out,
        "Drill **{}** against cluster **{}**: status **{}**{}.\n",
        j.drill,
        j.cluster,
        j.status.as_str(),
        if j.deviated {
            ", **deviated**: the steady state of at least one trial did not come back"
        } else {
            ", not deviated"
        }
    );
    if let Some(reason) = &j.reason {
        let _ = writeln!(out, "Reason: {reason}\n");
    }
    let duration = j
        .ended_at
        .map(|end| ms((end - j.started_at).num_milliseconds().max(0) as u64));
    let rows = vec![
        vec![
            "Drill file".into(),
            code(&j.drill_file.display().to_string()),
        ],
        vec!["Drill sha256".into(), code(&j.drill_sha256)],
        vec!["Manifest sha256".into(), code(&j.manifest_sha256)],
        vec!["Seed".into(), j.seed.to_string()],
        vec!["Operator version".into(), cell(&j.operator_version)],
        vec![
            "Docker engine".into(),
            j.engine_version
                .as_deref()
                .map_or("unknown (the engine did not answer)".into(), cell),
        ],
        vec!["Started".into(), time(j.started_at)],
        vec!["Ended".into(), j.ended_at.map_or("not ended".into(), time)],
        vec!["Duration".into(), duration.unwrap_or_else(|| "n/a".into())],
        vec!["Trials run".into(), j.trials.len().to_string()],
        vec![
            "Journal format".into(),
            format!("{} ({JOURNAL_FILE})", j.format),
        ],
    ];
    table(out, &["Run", ""], &rows);
    out.push('\n');
}

fn summary_section(out: &mut String, summary: &Summary) {
    let _ = writeln!(out, "## Summary\n");
    if summary.remediations.is_empty() {
        let _ = writeln!(out, "No trial ran, so there is nothing to measure.\n");
    } else {
        let rs = &summary.remediations;
        let mut headers = vec!["Measure"];
        headers.extend(rs.iter().map(|r| r.remediation.as_str()));
        let row = |name: &str, f: &dyn Fn(&RemediationSummary) -> String| {
            let mut cells = vec![name.to_string()];
            cells.extend(rs.iter().map(f));
            cells
        };
        let samples =
            |p: &Percentiles, r: &RemediationSummary| format!("{} of {}", p.count, r.trials);
        let rows = vec![
            row("Trials", &|r| r.trials.to_string()),
            row("Passed / failed / timeout", &|r| {
                format!("{} / {} / {}", r.passed, r.failed, r.timed_out)
            }),
            row("Escalated / no action", &|r| {
                format!("{} / {}", r.escalated, r.no_action)
            }),
            row("Interrupted (not measured)", &|r| r.interrupted.to_string()),
            row("Success rate", &|r| {
                if r.trials == 0 {
                    "n/a".into()
                } else {
                    format!("{:.1}%", r.success_rate * 100.0)
                }
            }),
            row("TTD p50", &|r| ms_opt(r.ttd.p50_ms)),
            row("TTD p95", &|r| ms_opt(r.ttd.p95_ms)),
            row("TTD max", &|r| ms_opt(r.ttd.max_ms)),
            row("TTD measured in", &|r| samples(&r.ttd, r)),
            row("TTR p50", &|r| ms_opt(r.ttr.p50_ms)),
            row("TTR p95", &|r| ms_opt(r.ttr.p95_ms)),
            row("TTR max", &|r| ms_opt(r.ttr.max_ms)),
            row("TTR measured in", &|r| samples(&r.ttr, r)),
            row("Lost writes (total)", &|r| {
                r.lost_writes.map_or("n/a".into(), |n| n.to_string())
            }),
            row("Phantom writes (total)", &|r| {
                r.phantom_writes.map_or("n/a".into(), |n| n.to_string())
            }),
            row("Trials with a workload", &|r| {
                format!("{} of {}", r.workload_trials, r.trials)
            }),
        ];
        table(out, &headers, &rows);
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "How to read it: **TTD** (time to detect) runs from a trial's first fault to the first \
         ticket of the cluster opened after it; **TTR** (time to recover) from that fault until \
         the drill's steady state held again, judged by the drill's probes, not by the tickets. \
         Percentiles are **nearest-rank** over the trials that have a value: sort the n values \
         and take the one at rank ⌈p/100 × n⌉ (1-based), so every figure is a measured trial, \
         never an interpolation; a trial without a value (not detected, not recovered) is left \
         out, not counted as zero, and \"measured in\" says how many had one. \"n/a\": no trial \
         had a value. A trial passes only if the remediation repaired it: **escalated** (a \
         ticket escalated: it gave up) and **no action** (the steady state came back with no \
         repair before it, or before the faults ended by themselves) are not passes; a \
         remediation that never acts (the engine's restarts alone) is not held to the latter. **Interrupted** trials are \
         counted apart and left out of every figure. **Lost writes**: acknowledged writes not read back after recovery; \
         **phantom writes**: keys read back that were never attempted; both must be 0, and are \
         \"n/a\" when no trial ran a workload.\n"
    );
}

fn trial_section(out: &mut String, t: &Trial) {
    let _ = writeln!(
        out,
        "### {} #{}: {}\n",
        t.remediation,
        t.index,
        t.outcome.as_str()
    );
    match t.outcome {
        Outcome::Pass => {}
        Outcome::Fail => {
            let _ = writeln!(
                out,
                "**Failed**: the steady state came back, but the workload lost or invented \
                 writes, or a fault could not be injected or undone (see below).\n"
            );
        }
        _ if is_interrupted(t) => {
            let _ = writeln!(
                out,
                "**Interrupted** (Ctrl-C or SIGTERM) before the trial ended: not measured, and \
                 not counted as a deviation.\n"
            );
        }
        Outcome::Escalated => {
            let _ = writeln!(
                out,
                "**Escalated**: a ticket of the trial escalated, so the {} gave up on a repair \
                 (see the notes and tickets). Not a pass, whatever the steady state did \
                 afterwards.\n",
                t.remediation
            );
        }
        Outcome::NoAction => {
            let _ = writeln!(
                out,
                "**No action**: the steady state came back, but the {} took no action before it \
                 did (or before the faults ended by themselves): the cluster was not repaired by \
                 it. Not a pass.\n",
                t.remediation
            );
        }
        Outcome::Interrupted | Outcome::Timeout => {
            let _ = writeln!(
                out,
                "**Timed out**: the steady state did not come back within the drill's recovery \
                 timeout.\n"
            );
        }
    }
    let _ = writeln!(out, "{}\n", undo_verdict(&t.faults));

    let _ = writeln!(out, "#### Faults\n");
    if t.faults.is_empty() {
        let _ = writeln!(out, "No fault recorded.\n");
    } else {
        let rows: Vec<Vec<String>> = t.faults.iter().map(|f| fault_row(t, f)).collect();
        table(
            out,
            &[
                "Ledger id",
                "Kind",
                "Service",
                "Container",
                "Parameters",
                "Injected",
                "Undone",
                "Error",
            ],
            &rows,
        );
        out.push('\n');
    }

    let _ = writeln!(out, "#### Timeline\n");
    let at = |when: Option<DateTime<Utc>>, missing: &str| match when {
        Some(w) => (time(w), offset(t.injected_at, w)),
        None => (missing.to_string(), "n/a".to_string()),
    };
    let by = |who: &Option<String>| {
        who.as_deref()
            .map_or_else(String::new, |w| format!(" (by {})", cell(w)))
    };
    let events = [
        (
            "Injected".to_string(),
            (time(t.injected_at), "+0 ms".to_string()),
        ),
        ("Detected".to_string(), at(t.detected_at, "not detected")),
        (
            format!("First action{}", by(&t.first_actor)),
            at(t.first_action_at, "no action"),
        ),
        ("Recovered".to_string(), at(t.recovered_at, "not recovered")),
        (
            format!("Resolved{}", by(&t.resolved_by)),
            at(t.resolved_at, "not resolved"),
        ),
    ];
    let rows: Vec<Vec<String>> = events
        .into_iter()
        .map(|(name, (when, since))| vec![name, when, since])
        .collect();
    table(out, &["Event", "At (UTC)", "Since injection"], &rows);
    let _ = writeln!(
        out,
        "\nTTD {}, TTR {}.\n",
        t.ttd_ms.map_or("n/a (not detected)".into(), ms),
        t.ttr_ms.map_or("n/a (not recovered)".into(), ms)
    );

    let _ = writeln!(out, "#### Workload\n");
    match &t.workload {
        None => {
            let _ = writeln!(out, "No workload ran.\n");
        }
        Some(w) => workload(out, w),
    }

    let _ = writeln!(out, "#### Tickets\n");
    if t.tickets.is_empty() {
        let _ = writeln!(out, "No ticket touched.\n");
    } else {
        let rows: Vec<Vec<String>> = t.tickets.iter().map(ticket_row).collect();
        table(
            out,
            &[
                "Ticket",
                "Drift",
                "Target",
                "Detected",
                "First action",
                "Resolved",
                "By",
                "Status",
            ],
            &rows,
        );
        out.push('\n');
    }

    if !t.notes.is_empty() {
        let _ = writeln!(out, "#### Notes\n");
        for note in &t.notes {
            let _ = writeln!(out, "- {}", note.replace(['\r', '\n'], " "));
        }
        out.push('\n');
    }
}

/// Whether every fault was undone, said plainly: a fault left behind is the one thing a
/// drill must never do, so the report names it and what to run.
fn undo_verdict(faults: &[FaultRecord]) -> String {
    if faults.is_empty() {
        return "No fault was recorded for this trial.".to_string();
    }
    let left: Vec<&FaultRecord> = faults
        .iter()
        .filter(|f| f.injected_at.is_some() && f.undone_at.is_none())
        .collect();
    let never = faults.iter().filter(|f| f.injected_at.is_none()).count();
    let mut text = if left.is_empty() {
        let undone = faults.len() - never;
        if undone == faults.len() {
            format!(
                "Faults undone: all {} of {} were undone.",
                faults.len(),
                faults.len()
            )
        } else {
            format!("Faults undone: all {undone} that were injected were undone.")
        }
    } else {
        let names: Vec<String> = left
            .iter()
            .map(|f| {
                format!(
                    "ledger #{} ({} on {}){}",
                    f.ledger_id,
                    f.kind,
                    f.container,
                    f.error
                        .as_deref()
                        .map_or_else(String::new, |e| format!(": {}", e.replace('\n', " ")))
                )
            })
            .collect();
        format!(
            "**Faults NOT undone**: {} of {} ({}); `operator chaos cleanup` undoes what the \
             ledger still holds.",
            left.len(),
            faults.len(),
            names.join("; ")
        )
    };
    if never > 0 {
        let _ = write!(
            text,
            " {never} could not be injected (see the Error column)."
        );
    }
    text
}

fn fault_row(t: &Trial, f: &FaultRecord) -> Vec<String> {
    let params = serde_json::to_string(&f.params).unwrap_or_else(|_| "?".into());
    let when = |w: Option<DateTime<Utc>>, missing: &str| {
        w.map_or(missing.to_string(), |w| {
            format!("{} ({})", time(w), offset(t.injected_at, w))
        })
    };
    vec![
        f.ledger_id.to_string(),
        cell(&f.kind),
        cell(&f.service),
        code(&f.container),
        code(&params),
        when(f.injected_at, "not injected"),
        when(f.undone_at, "**not undone**"),
        f.error.as_deref().map_or("-".into(), cell),
    ]
}

fn ticket_row(k: &TicketRecord) -> Vec<String> {
    let opt = |w: Option<DateTime<Utc>>| w.map_or("-".to_string(), time);
    vec![
        format!("#{}", k.id),
        cell(&k.drift),
        cell(&k.target),
        time(k.detected_at),
        opt(k.first_action_at),
        opt(k.resolved_at),
        k.resolved_by.as_deref().map_or("-".into(), cell),
        cell(&k.status),
    ]
}

fn workload(out: &mut String, w: &WorkloadVerdict) {
    let verdict = if w.ok { "ok" } else { "**not ok**" };
    let _ = writeln!(out, "`{}`: {verdict}.\n", w.kind.replace('`', "'"));
    if w.uncounted {
        // Zeros here would read as measurements.
        let _ = writeln!(
            out,
            "Its writes were not counted: it printed no counts line.\n"
        );
        if let Some(detail) = &w.detail {
            let _ = writeln!(out, "{}\n", detail.replace(['\r', '\n'], " "));
        }
        return;
    }
    let lost_examples = if w.lost_examples.is_empty() {
        "-".to_string()
    } else {
        w.lost_examples
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let rows = vec![
        vec!["Attempted".into(), w.attempted.to_string()],
        vec!["Acknowledged".into(), w.acknowledged.to_string()],
        vec![
            "Lost (acknowledged, not read back)".into(),
            w.lost.to_string(),
        ],
        vec![
            "Phantom (read back, never attempted)".into(),
            w.phantom.to_string(),
        ],
        vec![
            "Indeterminate (no answer; not counted lost)".into(),
            w.indeterminate.to_string(),
        ],
        vec!["Lost sequence numbers (examples)".into(), lost_examples],
    ];
    table(out, &["Writes", ""], &rows);
    out.push('\n');
    if let Some(detail) = &w.detail {
        let _ = writeln!(out, "{}\n", detail.replace(['\r', '\n'], " "));
    }
}

// ---------------------------------------------------------------------------------------
// operator chaos list

/// One folder under the runs' root, as `operator chaos list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunListing {
    /// The folder's name (the run id when the journal is readable).
    pub run_id: String,
    pub dir: PathBuf,
    pub run: ListedRun,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum ListedRun {
    Readable(RunInfo),
    /// The journal is missing, corrupt or in a format this operator does not read.
    Unreadable {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunInfo {
    pub drill: String,
    pub cluster: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub status: RunStatus,
    pub deviated: bool,
    pub summary: Summary,
}

/// The runs under `root` (`~/.operator/chaos/` by default: one folder per run holding its
/// `journal.json`), newest first (run ids start with their UTC start time). A folder whose
/// journal cannot be read is listed with the reason instead of being dropped; hidden
/// folders and plain files are skipped. A missing or unreadable root lists nothing.
pub fn list_runs(root: &Path) -> Vec<RunListing> {
    list_runs_with(root, &[])
}

/// The runs under `root` and, besides, the report folders `elsewhere` (the ledger's runs
/// written with `--report DIR`): each folder once (a folder under `root` is not listed
/// twice), newest first. A folder of `elsewhere` that is gone (removed by hand) is left
/// out: the list is of reports.
pub fn list_runs_with(root: &Path, elsewhere: &[PathBuf]) -> Vec<RunListing> {
    let under_root = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (!name.starts_with('.')).then_some((name, e.path()))
        });
    let others = elsewhere.iter().filter(|d| d.is_dir()).map(|dir| {
        let name = dir.file_name().map_or_else(
            || dir.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        (name, dir.clone())
    });
    let mut seen = std::collections::HashSet::new();
    let mut runs: Vec<RunListing> = under_root
        .chain(others)
        .filter(|(_, dir)| seen.insert(std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone())))
        .map(|(name, dir)| listing(name, dir))
        .collect();
    runs.sort_by(|a, b| b.run_id.cmp(&a.run_id).then_with(|| b.dir.cmp(&a.dir)));
    runs
}

fn listing(name: String, dir: PathBuf) -> RunListing {
    let run = match Journal::read(&dir.join(JOURNAL_FILE)) {
        Ok(j) => ListedRun::Readable(RunInfo {
            summary: summary(&j),
            drill: j.drill,
            cluster: j.cluster,
            started_at: j.started_at,
            ended_at: j.ended_at,
            status: j.status,
            deviated: j.deviated,
        }),
        Err(e) => ListedRun::Unreadable {
            reason: e.to_string(),
        },
    };
    let run_id = match &run {
        ListedRun::Readable(info) => info.summary.run_id.clone(),
        ListedRun::Unreadable { .. } => name,
    };
    RunListing { run_id, dir, run }
}

/// `45s`, `1m23s`, `2h05m`, as the other lists print durations.
fn human(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// The list as a plain-text table in the house's CLI style: every column as wide as its
/// widest cell, two spaces between, the last unpadded; an unreadable run is a row marked
/// `unreadable` with its reason on the line under it. Pure: the CLI prints it.
pub fn render_list(runs: &[RunListing]) -> String {
    let headers = [
        "RUN", "DRILL", "CLUSTER", "STARTED", "DURATION", "STATUS", "TRIALS", "RESULTS",
    ];
    let mut lines: Vec<Result<Vec<String>, String>> =
        vec![Ok(headers.iter().map(|h| h.to_string()).collect())];
    for run in runs {
        match &run.run {
            ListedRun::Readable(info) => {
                let results = info
                    .summary
                    .remediations
                    .iter()
                    .map(|r| {
                        format!(
                            "{} {}/{} pass TTR p50 {}",
                            r.remediation,
                            r.passed,
                            r.trials,
                            ms_opt(r.ttr.p50_ms)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                lines.push(Ok(vec![
                    run.run_id.clone(),
                    info.drill.clone(),
                    info.cluster.clone(),
                    info.started_at.to_rfc3339_opts(SecondsFormat::Secs, true),
                    info.ended_at
                        .map_or("-".into(), |end| human(end - info.started_at)),
                    status_text(info.status, info.deviated),
                    info.summary
                        .remediations
                        .iter()
                        .map(|r| r.trials)
                        .sum::<usize>()
                        .to_string(),
                    if results.is_empty() {
                        "-".into()
                    } else {
                        results
                    },
                ]));
            }
            ListedRun::Unreadable { reason } => {
                lines.push(Ok(vec![
                    run.run_id.clone(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "unreadable".into(),
                    "-".into(),
                    "-".into(),
                ]));
                lines.push(Err(format!("    {reason}")));
            }
        }
    }
    let mut widths = vec![0; headers.len()];
    for cells in lines.iter().filter_map(|l| l.as_ref().ok()) {
        for (w, c) in widths.iter_mut().zip(cells) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for line in &lines {
        match line {
            Err(note) => out.push_str(note),
            Ok(cells) => {
                let mut row = String::new();
                for (i, c) in cells.iter().enumerate() {
                    row.push_str(c);
                    if i + 1 < cells.len() {
                        row.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
                    }
                }
                out.push_str(row.trim_end());
            }
        }
        out.push('\n');
    }
    if runs.is_empty() {
        out.push_str("(no chaos runs)\n");
    }
    out
}

#[cfg(test)]
mod tests;
