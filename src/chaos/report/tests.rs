use std::sync::atomic::{AtomicU64, Ordering};

use chrono::TimeZone;

use super::*;
use crate::chaos::journal::{FORMAT, FaultRecord, TicketRecord, WorkloadVerdict};

/// A fresh folder under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "operator-chaos-report-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fixed clock: `at(ms)` is 2025-03-01T12:00:00Z plus `ms` milliseconds.
fn at(ms: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap() + chrono::Duration::milliseconds(ms)
}

fn fault(ledger_id: i64, start: i64, undone: Option<i64>) -> FaultRecord {
    FaultRecord {
        ledger_id,
        kind: "kill".into(),
        service: "etcd".into(),
        container: "etcd-1".into(),
        params: serde_json::json!({"signal": "SIGKILL"}),
        injected_at: Some(at(start)),
        undone_at: undone.map(at),
        held_ms: None,
        error: None,
    }
}

fn workload(lost: u64) -> WorkloadVerdict {
    WorkloadVerdict {
        kind: "etcd-canary".into(),
        attempted: 100,
        acknowledged: 98,
        lost,
        phantom: 0,
        indeterminate: 2,
        lost_examples: (0..lost).map(|i| 40 + i).collect(),
        uncounted: false,
        ok: lost == 0,
        detail: None,
    }
}

/// A trial starting at `start` ms whose detection and recovery come `ttd` and `ttr` ms
/// after, with one kill fault held 500 ms and undone.
fn trial(
    remediation: &str,
    index: u32,
    outcome: Outcome,
    start: i64,
    ttd: Option<u64>,
    ttr: Option<u64>,
) -> Trial {
    let after = |d: Option<u64>| d.map(|d| at(start + d as i64));
    Trial {
        index,
        interrupted: false,
        remediation: remediation.into(),
        faults: vec![fault(index as i64, start, Some(start + 500))],
        injected_at: at(start),
        detected_at: after(ttd),
        first_action_at: after(ttd.map(|d| d + 100)),
        first_actor: ttd.map(|_| "controller".to_string()),
        recovered_at: after(ttr),
        resolved_at: after(ttr.map(|r| r + 200)),
        resolved_by: ttr.map(|_| "controller".to_string()),
        ttd_ms: ttd,
        ttr_ms: ttr,
        recovery_deadline: None,
        outcome,
        workload: None,
        tickets: vec![],
        notes: vec![],
    }
}

fn journal(trials: Vec<Trial>) -> Journal {
    Journal {
        format: FORMAT,
        run_id: "20250301T120000Z-0badcafe".into(),
        drill: "etcd-kill-member".into(),
        drill_file: "chaos/etcd-kill-member.yaml".into(),
        drill_sha256: "d".repeat(64),
        manifest_sha256: "m".repeat(64),
        cluster: "etcd".into(),
        operator_version: "0.1.0".into(),
        engine_version: Some("20.10.24".into()),
        seed: 424242,
        started_at: at(-5_000),
        ended_at: Some(at(125_000)),
        status: RunStatus::Completed,
        deviated: false,
        reason: None,
        trials,
    }
}

/// The Markdown row of the summary table whose first cell is `measure`.
fn row<'a>(md: &'a str, measure: &str) -> &'a str {
    let prefix = format!("| {measure} |");
    md.lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no row {measure:?} in:\n{md}"))
}

fn report(j: &Journal) -> String {
    markdown(j, &summary(j))
}

/// A rough well-formedness check: starts with `<svg`, and every element opened is closed
/// in order (enough to catch a truncated or interleaved file without an XML crate).
fn assert_balanced_svg(svg: &str) {
    assert!(
        svg.starts_with("<svg"),
        "not an SVG: {}",
        &svg[..svg.len().min(80)]
    );
    let mut stack: Vec<&str> = Vec::new();
    let mut rest = svg;
    while let Some(open) = rest.find('<') {
        let close = rest[open..].find('>').expect("a tag is closed") + open;
        let tag = &rest[open + 1..close];
        rest = &rest[close + 1..];
        if tag.starts_with('?') || tag.starts_with('!') || tag.ends_with('/') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(stack.pop(), Some(name.trim()), "unbalanced </{name}>");
        } else {
            let name = tag.split_whitespace().next().expect("a tag has a name");
            stack.push(name);
        }
    }
    assert!(stack.is_empty(), "never closed: {stack:?}");
    assert!(svg.trim_end().ends_with("</svg>"));
}

/// Whether the SVG draws `text` (plotters puts it on a line of its own).
fn has_text(svg: &str, text: &str) -> bool {
    svg.contains(&format!(">\n{text}\n</text>"))
}

#[test]
fn nearest_rank_takes_the_value_at_the_ceiling_rank() {
    let twenty: Vec<u64> = (1..=20).collect();
    assert_eq!(nearest_rank(&twenty, 50), Some(10));
    assert_eq!(nearest_rank(&twenty, 95), Some(19));
    assert_eq!(nearest_rank(&twenty, 100), Some(20));
    assert_eq!(nearest_rank(&[7], 50), Some(7));
    assert_eq!(nearest_rank(&[7], 95), Some(7));
    assert_eq!(nearest_rank(&[1, 2, 3], 50), Some(2));
    assert_eq!(nearest_rank(&[1, 2, 3, 4], 50), Some(2));
    assert_eq!(nearest_rank(&[], 50), None);
    assert_eq!(
        Percentiles::of([30, 10, 20]),
        Percentiles {
            count: 3,
            p50_ms: Some(20),
            p95_ms: Some(30),
            max_ms: Some(30)
        }
    );
}

#[test]
fn durations_read_as_people_write_them() {
    assert_eq!(ms(0), "0 ms");
    assert_eq!(ms(999), "999 ms");
    assert_eq!(ms(1_234), "1.23 s");
    assert_eq!(ms(59_999), "59.99 s");
    assert_eq!(ms(65_000), "1m05s");
    assert_eq!(ms(3_725_000), "1h02m05s");
}

#[test]
fn one_trial_report_gives_its_figures_as_every_percentile() {
    let mut t = trial("controller", 1, Outcome::Pass, 0, Some(1_200), Some(4_500));
    t.workload = Some(workload(0));
    t.tickets = vec![TicketRecord {
        id: 17,
        drift: "exited".into(),
        target: "service etcd".into(),
        detected_at: at(1_200),
        first_action_at: Some(at(1_300)),
        first_actor: Some("controller".into()),
        resolved_at: Some(at(4_700)),
        resolved_by: Some("controller".into()),
        escalated_at: None,
        status: "resolved".into(),
    }];
    t.notes = vec!["member rejoined".into()];
    let j = journal(vec![t]);
    let md = report(&j);

    assert!(md.starts_with("# Chaos run 20250301T120000Z-0badcafe\n"));
    assert!(md.contains(
        "Drill **etcd-kill-member** against cluster **etcd**: status **completed**, not deviated."
    ));
    assert!(md.contains("| Seed | 424242 |"));
    assert!(md.contains(&format!("| Drill sha256 | `{}` |", "d".repeat(64))));
    assert!(md.contains(&format!("| Manifest sha256 | `{}` |", "m".repeat(64))));
    assert!(md.contains("| Docker engine | 20.10.24 |"));
    assert!(md.contains("| Duration | 2m10s |"));
    assert_eq!(row(&md, "Measure"), "| Measure | controller |");
    assert_eq!(row(&md, "Success rate"), "| Success rate | 100.0% |");
    assert_eq!(row(&md, "TTD p50"), "| TTD p50 | 1.20 s |");
    assert_eq!(row(&md, "TTD p95"), "| TTD p95 | 1.20 s |");
    assert_eq!(row(&md, "TTD max"), "| TTD max | 1.20 s |");
    assert_eq!(row(&md, "TTR p95"), "| TTR p95 | 4.50 s |");
    assert_eq!(
        row(&md, "Lost writes (total)"),
        "| Lost writes (total) | 0 |"
    );
    assert_eq!(
        row(&md, "Phantom writes (total)"),
        "| Phantom writes (total) | 0 |"
    );
    assert!(md.contains("nearest-rank"), "the method is stated");
    assert!(md.contains("](timeline.svg)") && md.contains("](distribution.svg)"));

    assert!(md.contains("### controller #1: pass\n"));
    assert!(md.contains("Faults undone: all 1 of 1 were undone."));
    assert!(md.contains(
        "| 1 | kill | etcd | `etcd-1` | `{\"signal\":\"SIGKILL\"}` | 2025-03-01T12:00:00.000Z (+0 ms) | 2025-03-01T12:00:00.500Z (+500 ms) | - |"
    ));
    assert!(md.contains("| Detected | 2025-03-01T12:00:01.200Z | +1.20 s |"));
    assert!(md.contains("| First action (by controller) | 2025-03-01T12:00:01.300Z | +1.30 s |"));
    assert!(md.contains("| Recovered | 2025-03-01T12:00:04.500Z | +4.50 s |"));
    assert!(md.contains("| Resolved (by controller) | 2025-03-01T12:00:04.700Z | +4.70 s |"));
    assert!(md.contains("TTD 1.20 s, TTR 4.50 s."));
    assert!(md.contains("| Lost (acknowledged, not read back) | 0 |"));
    assert!(md.contains(
        "| #17 | exited | service etcd | 2025-03-01T12:00:01.200Z | 2025-03-01T12:00:01.300Z | 2025-03-01T12:00:04.700Z | controller | resolved |"
    ));
    assert!(md.contains("- member rejoined"));
    assert!(md.ends_with("- member rejoined\n"));
}

/// Twenty controller trials, journaled in reverse so the percentiles must sort: k = 1..=20,
/// TTD 250·k ms except trial 7 (not detected), TTR 1000·k ms except the timeouts (15, 20);
/// 5 and 10 fail with one lost write each.
fn twenty_mixed() -> Journal {
    let trials = (1..=20u32)
        .rev()
        .map(|k| {
            let outcome = match k {
                15 | 20 => Outcome::Timeout,
                5 | 10 => Outcome::Fail,
                _ => Outcome::Pass,
            };
            let ttd = (k != 7).then_some(250 * k as u64);
            let ttr = (outcome != Outcome::Timeout).then_some(1000 * k as u64);
            let mut t = trial("controller", k, outcome, k as i64 * 60_000, ttd, ttr);
            t.workload = Some(workload(if outcome == Outcome::Fail { 1 } else { 0 }));
            t
        })
        .collect();
    journal(trials)
}

#[test]
fn twenty_mixed_trials_report_nearest_rank_percentiles_of_those_with_a_value() {
    let j = twenty_mixed();
    let s = summary(&j);
    let c = &s.remediations[0];
    assert_eq!((c.trials, c.passed, c.failed, c.timed_out), (20, 16, 2, 2));
    // TTD: 19 values (k ≠ 7); p50 = rank 10 = k 11; p95 = rank ⌈18.05⌉ = 19 = k 20.
    assert_eq!(c.ttd.count, 19);
    assert_eq!(
        (c.ttd.p50_ms, c.ttd.p95_ms, c.ttd.max_ms),
        (Some(2_750), Some(5_000), Some(5_000))
    );
    // TTR: 18 values (no 15, 20); p50 = rank 9 = 9 s; p95 = rank ⌈17.1⌉ = 18 = 19 s.
    assert_eq!(c.ttr.count, 18);
    assert_eq!(
        (c.ttr.p50_ms, c.ttr.p95_ms, c.ttr.max_ms),
        (Some(9_000), Some(19_000), Some(19_000))
    );
    assert_eq!((c.lost_writes, c.phantom_writes), (Some(2), Some(0)));

    let md = report(&j);
    assert_eq!(
        row(&md, "Passed / failed / timeout"),
        "| Passed / failed / timeout | 16 / 2 / 2 |"
    );
    assert_eq!(row(&md, "Success rate"), "| Success rate | 80.0% |");
    assert_eq!(row(&md, "TTD p50"), "| TTD p50 | 2.75 s |");
    assert_eq!(row(&md, "TTD p95"), "| TTD p95 | 5.00 s |");
    assert_eq!(
        row(&md, "TTD measured in"),
        "| TTD measured in | 19 of 20 |"
    );
    assert_eq!(row(&md, "TTR p50"), "| TTR p50 | 9.00 s |");
    assert_eq!(row(&md, "TTR p95"), "| TTR p95 | 19.00 s |");
    assert_eq!(row(&md, "TTR max"), "| TTR max | 19.00 s |");
    assert_eq!(
        row(&md, "TTR measured in"),
        "| TTR measured in | 18 of 20 |"
    );
    assert_eq!(
        row(&md, "Lost writes (total)"),
        "| Lost writes (total) | 2 |"
    );

    let timeout = md
        .split("### controller #15: timeout\n")
        .nth(1)
        .expect("trial 15 has its section");
    let timeout = timeout.split("\n### ").next().unwrap();
    assert!(timeout.contains("**Timed out**: the steady state did not come back"));
    assert!(timeout.contains("Faults undone: all 1 of 1 were undone."));
    assert!(timeout.contains("| Recovered | not recovered | n/a |"));
    assert!(timeout.contains("TTR n/a (not recovered)"));
    let failed = md.split("### controller #5: fail\n").nth(1).unwrap();
    assert!(failed.trim_start().starts_with("**Failed**"));
    assert!(failed.contains("| Lost sequence numbers (examples) | 40 |"));
    // Trials appear in the order they ran.
    assert!(md.find("### controller #20").unwrap() < md.find("### controller #1:").unwrap());
}

#[test]
fn baseline_and_agent_sit_beside_the_controller_in_a_fixed_order() {
    let mut trials = Vec::new();
    for k in 1..=3u32 {
        let start = k as i64 * 100_000;
        trials.push(trial(
            "baseline",
            k,
            Outcome::Pass,
            start,
            Some(900),
            Some(30_000 + k as u64),
        ));
        trials.push(trial(
            "controller",
            k,
            Outcome::Pass,
            start + 50_000,
            Some(800 + k as u64),
            Some(3_000),
        ));
    }
    trials.push(trial(
        "agent",
        1,
        Outcome::Timeout,
        900_000,
        Some(700),
        None,
    ));
    let j = journal(trials);
    let md = report(&j);
    assert_eq!(
        row(&md, "Measure"),
        "| Measure | controller | agent | baseline |"
    );
    assert_eq!(row(&md, "Trials"), "| Trials | 3 | 1 | 3 |");
    assert_eq!(
        row(&md, "Success rate"),
        "| Success rate | 100.0% | 0.0% | 100.0% |"
    );
    assert_eq!(
        row(&md, "TTD p50"),
        "| TTD p50 | 802 ms | 700 ms | 900 ms |"
    );
    assert_eq!(row(&md, "TTR p50"), "| TTR p50 | 3.00 s | n/a | 30.00 s |");
    assert_eq!(row(&md, "TTR p95"), "| TTR p95 | 3.00 s | n/a | 30.00 s |");
    assert_eq!(
        row(&md, "Lost writes (total)"),
        "| Lost writes (total) | n/a | n/a | n/a |"
    );
    let line = summary(&j).to_string();
    assert_eq!(
        line,
        "run 20250301T120000Z-0badcafe (drill etcd-kill-member) completed: \
         controller 3/3 pass, TTD p50 802 ms p95 803 ms, TTR p50 3.00 s p95 3.00 s; \
         agent 0/1 pass (1 timeout), TTD p50 700 ms p95 700 ms, TTR p50 n/a p95 n/a; \
         baseline 3/3 pass, TTD p50 900 ms p95 900 ms, TTR p50 30.00 s p95 30.00 s"
    );
}

#[test]
fn without_a_baseline_only_the_controller_is_compared() {
    let j = journal(vec![
        trial("controller", 1, Outcome::Pass, 0, Some(1_000), Some(2_000)),
        trial(
            "controller",
            2,
            Outcome::Pass,
            60_000,
            Some(3_000),
            Some(4_000),
        ),
    ]);
    let md = report(&j);
    assert_eq!(row(&md, "Measure"), "| Measure | controller |");
    assert_eq!(row(&md, "TTD p50"), "| TTD p50 | 1.00 s |");
    assert_eq!(row(&md, "TTD p95"), "| TTD p95 | 3.00 s |");
    assert!(!md.contains("baseline"));
}

#[test]
fn a_trial_nobody_detected_says_so_and_is_left_out_of_the_percentiles() {
    let mut t = trial("controller", 1, Outcome::Pass, 0, None, Some(8_000));
    t.first_action_at = None;
    t.first_actor = None;
    let j = journal(vec![t]);
    let md = report(&j);
    assert_eq!(row(&md, "TTD p50"), "| TTD p50 | n/a |");
    assert_eq!(row(&md, "TTD max"), "| TTD max | n/a |");
    assert_eq!(row(&md, "TTD measured in"), "| TTD measured in | 0 of 1 |");
    assert_eq!(row(&md, "TTR p50"), "| TTR p50 | 8.00 s |");
    assert!(md.contains("| Detected | not detected | n/a |"));
    assert!(md.contains("| First action | no action | n/a |"));
    assert!(md.contains("TTD n/a (not detected), TTR 8.00 s."));
    assert!(md.contains("No ticket touched."));
}

#[test]
fn a_timeout_whose_fault_could_not_be_undone_names_it_and_the_error() {
    let mut t = trial("controller", 1, Outcome::Timeout, 0, Some(1_000), None);
    let mut stuck = fault(7, 100, None);
    stuck.kind = "partition".into();
    stuck.container = "etcd-2".into();
    stuck.params = serde_json::json!({"from": "etcd-2", "to": "etcd-1|etcd-3"});
    stuck.error = Some("iptables -D: no chain\nby that name".into());
    t.faults.push(stuck);
    let mut j = journal(vec![t]);
    j.deviated = true;
    let md = report(&j);
    assert!(md.contains("status **completed**, **deviated**"));
    assert!(md.contains("**Timed out**"));
    assert!(md.contains(
        "**Faults NOT undone**: 1 of 2 (ledger #7 (partition on etcd-2): iptables -D: no chain by that name); `operator chaos cleanup`"
    ));
    // A pipe in a parameter must not split the table's cell.
    assert!(md.contains(r#"`{"from":"etcd-2","to":"etcd-1\|etcd-3"}`"#));
    assert!(md.contains("| **not undone** | iptables -D: no chain by that name |"));
}

#[test]
fn an_aborted_run_without_trials_still_renders_with_its_reason() {
    let mut j = journal(vec![]);
    j.status = RunStatus::Aborted;
    j.reason = Some("not in its steady state: ticket #3 is open".into());
    j.ended_at = None;
    j.engine_version = None;
    let md = report(&j);
    assert!(md.contains("status **aborted**"));
    assert!(md.contains("Reason: not in its steady state: ticket #3 is open"));
    assert!(md.contains("| Ended | not ended |"));
    assert!(md.contains("| Docker engine | unknown (the engine did not answer) |"));
    assert!(md.contains("No trial ran, so there is nothing to measure."));
    assert_eq!(
        summary(&j).to_string(),
        "run 20250301T120000Z-0badcafe (drill etcd-kill-member) aborted: no trial ran"
    );
    let s = summary(&j);
    assert_balanced_svg(&charts::timeline(&j).unwrap());
    assert_balanced_svg(&charts::distribution(&j, &s).unwrap());
}

/// 25 controller trials and 25 baseline ones, alternating; the baseline never detects
/// (no tickets without the controller) and times out every tenth trial.
fn fifty_with_baseline() -> Journal {
    let mut trials = Vec::new();
    for k in 1..=25u32 {
        let start = k as i64 * 60_000;
        let (ttd, ttr) = (500 + 37 * k as u64, 2_000 + 311 * k as u64);
        trials.push(trial(
            "controller",
            k,
            Outcome::Pass,
            start,
            Some(ttd),
            Some(ttr),
        ));
        let outcome = if k % 10 == 0 {
            Outcome::Timeout
        } else {
            Outcome::Pass
        };
        let ttr = (outcome == Outcome::Pass).then_some(20_000 + 97 * k as u64);
        trials.push(trial("baseline", k, outcome, start + 30_000, None, ttr));
    }
    journal(trials)
}

#[test]
fn charts_are_well_formed_and_the_same_bytes_every_time() {
    let one = journal(vec![trial(
        "controller",
        1,
        Outcome::Pass,
        0,
        Some(1_200),
        Some(4_500),
    )]);
    let fifty = fifty_with_baseline();
    for j in [&one, &twenty_mixed(), &fifty] {
        let s = summary(j);
        let timeline = charts::timeline(j).unwrap();
        let distribution = charts::distribution(j, &s).unwrap();
        assert_balanced_svg(&timeline);
        assert_balanced_svg(&distribution);
        assert_eq!(timeline, charts::timeline(j).unwrap());
        assert_eq!(distribution, charts::distribution(j, &s).unwrap());
        // Every trial has its row label, and every remediation its column.
        for t in &j.trials {
            let label = format!("{} #{} {}", t.remediation, t.index, t.outcome.as_str());
            assert!(has_text(&timeline, &label), "no row {label}");
        }
        for r in &s.remediations {
            assert!(has_text(&distribution, &r.remediation));
        }
    }
    // A baseline that never detected anything says so instead of drawing nothing.
    let s = summary(&fifty);
    let distribution = charts::distribution(&fifty, &s).unwrap();
    assert!(has_text(&distribution, "n/a: no trial had a value"));
    assert!(has_text(&distribution, "n=25"));
}

#[test]
fn render_writes_the_report_and_charts_atomically_and_reproducibly() {
    let j = twenty_mixed();
    let (a, b) = (TempDir::new(), TempDir::new());
    let written = render(&j, &a.0.join("run")).unwrap();
    assert_eq!(
        written,
        vec![
            a.0.join("run/report.md"),
            a.0.join("run/timeline.svg"),
            a.0.join("run/distribution.svg"),
        ]
    );
    render(&j, &b.0).unwrap();
    // Twice over the same folder: the same bytes, and no temporary file left.
    render(&j, &b.0).unwrap();
    for file in [REPORT_FILE, TIMELINE_FILE, DISTRIBUTION_FILE] {
        let first = std::fs::read(a.0.join("run").join(file)).unwrap();
        assert!(!first.is_empty());
        assert_eq!(
            first,
            std::fs::read(b.0.join(file)).unwrap(),
            "{file} differs"
        );
    }
    let mut names: Vec<String> = std::fs::read_dir(&b.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["distribution.svg", "report.md", "timeline.svg"]);
}

#[test]
fn render_names_the_folder_it_cannot_write() {
    let tmp = TempDir::new();
    let blocker = tmp.0.join("file");
    std::fs::write(&blocker, "not a folder").unwrap();
    let err = render(&journal(vec![]), &blocker.join("run")).unwrap_err();
    assert!(matches!(err, ReportError::Io { .. }));
    assert!(
        err.to_string()
            .contains(&blocker.join("run").display().to_string())
    );
}

#[test]
fn list_runs_reads_good_runs_and_gives_a_reason_for_the_others() {
    let root = TempDir::new();
    let good = twenty_mixed();
    good.write(&root.0.join(&good.run_id)).unwrap();
    let mut older = journal(vec![]);
    older.run_id = "20250101T000000Z-00000001".into();
    older.status = RunStatus::Aborted;
    older.ended_at = Some(older.started_at + chrono::Duration::seconds(3));
    older.write(&root.0.join(&older.run_id)).unwrap();

    let corrupt = root.0.join("20250201T000000Z-corrupt0");
    std::fs::create_dir_all(&corrupt).unwrap();
    std::fs::write(corrupt.join(JOURNAL_FILE), "{\"format\": 1, \"run_id\": ").unwrap();
    let future = root.0.join("20250401T000000Z-future00");
    std::fs::create_dir_all(&future).unwrap();
    std::fs::write(
        future.join(JOURNAL_FILE),
        "{\"format\": 99, \"run_id\": \"x\", \"something\": \"new\"}",
    )
    .unwrap();
    // Not runs: a hidden folder and a plain file.
    std::fs::create_dir_all(root.0.join(".tmp-run")).unwrap();
    std::fs::write(root.0.join("notes.txt"), "hello").unwrap();

    let runs = list_runs(&root.0);
    let ids: Vec<&str> = runs.iter().map(|r| r.run_id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "20250401T000000Z-future00",
            "20250301T120000Z-0badcafe",
            "20250201T000000Z-corrupt0",
            "20250101T000000Z-00000001",
        ]
    );
    match &runs[0].run {
        ListedRun::Unreadable { reason } => {
            assert!(reason.contains("journal format 99"), "{reason}");
            assert!(
                reason.contains("future00"),
                "the reason names the file: {reason}"
            );
        }
        other => panic!("a future format is not readable: {other:?}"),
    }
    match &runs[1].run {
        ListedRun::Readable(info) => {
            assert_eq!(info.summary, summary(&good));
            assert_eq!(info.drill, "etcd-kill-member");
        }
        other => panic!("the good run is readable: {other:?}"),
    }
    match &runs[2].run {
        ListedRun::Unreadable { reason } => {
            assert!(reason.contains("not a chaos journal"), "{reason}")
        }
        other => panic!("a corrupt journal is not readable: {other:?}"),
    }
    assert_eq!(runs[1].dir, root.0.join("20250301T120000Z-0badcafe"));

    let text = render_list(&runs);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("RUN                        DRILL             CLUSTER  STARTED"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("20250401T000000Z-future00  -  "),
        "{text}"
    );
    assert!(lines[1].contains("  unreadable  "));
    assert!(lines[2].starts_with("    ") && lines[2].contains("journal format 99"));
    assert_eq!(
        lines[3],
        "20250301T120000Z-0badcafe  etcd-kill-member  etcd     2025-03-01T11:59:55Z  2m10s     completed   20      controller 16/20 pass TTR p50 9.00 s"
    );
    assert!(lines[5].contains("not a chaos journal"));
    assert_eq!(
        lines[6],
        "20250101T000000Z-00000001  etcd-kill-member  etcd     2025-03-01T11:59:55Z  3s        aborted     0       -"
    );
    assert_eq!(lines.len(), 7);
    // The JSON form tags each run's state.
    let json = serde_json::to_value(&runs[0]).unwrap();
    assert_eq!(json["run"]["state"], "unreadable");
    let json = serde_json::to_value(&runs[1]).unwrap();
    assert_eq!(json["run"]["state"], "readable");
    assert_eq!(
        json["run"]["summary"]["remediations"][0]["ttr"]["p50_ms"],
        9000
    );
}

#[test]
fn an_empty_or_missing_root_lists_nothing() {
    let root = TempDir::new();
    assert!(list_runs(&root.0).is_empty());
    assert!(list_runs(&root.0.join("missing")).is_empty());
    assert_eq!(
        render_list(&[]),
        "RUN  DRILL  CLUSTER  STARTED  DURATION  STATUS  TRIALS  RESULTS\n(no chaos runs)\n"
    );
}

/// The numbers an SVG draws as text, in order (the x axis's tick labels of a timeline).
fn numeric_texts(svg: &str) -> Vec<String> {
    svg.split("</text>")
        .filter_map(|chunk| chunk.rsplit_once(">\n").map(|(_, t)| t.trim().to_string()))
        .filter(|t| !t.is_empty() && t.parse::<f64>().is_ok())
        .collect()
}

#[test]
fn the_timelines_axis_labels_are_exact_and_each_tick_has_its_own() {
    // Four seconds of trial: ticks every 0.5 s, which `{:.0}` once printed as
    // `0 0 1 2 2 2 3 4`.
    let j = journal(vec![trial(
        "controller",
        1,
        Outcome::Pass,
        0,
        Some(1_000),
        Some(4_000),
    )]);
    let svg = charts::timeline(&j).unwrap();
    let labels = numeric_texts(&svg);
    assert_eq!(
        labels,
        ["0", "0.5", "1", "1.5", "2", "2.5", "3", "3.5", "4"],
        "{svg}"
    );
    // A long trial: whole seconds, each once.
    let j = journal(vec![trial(
        "controller",
        1,
        Outcome::Pass,
        0,
        Some(1_000),
        Some(47_000),
    )]);
    let labels = numeric_texts(&charts::timeline(&j).unwrap());
    let mut unique = labels.clone();
    unique.dedup();
    assert_eq!(labels, unique, "a label repeated");
    assert_eq!(labels.first().map(String::as_str), Some("0"));
    assert!(labels.iter().all(|l| !l.contains('.')), "{labels:?}");
}

#[test]
fn a_timed_out_trials_bar_runs_to_its_recovery_deadline() {
    // The fault undone at 0.5 s, the recovery wait giving up 60 s later: the bar and the
    // axis run to 60.5 s, not to the last event the trial recorded.
    let mut t = trial("controller", 1, Outcome::Timeout, 0, Some(1_000), None);
    t.recovery_deadline = Some(at(60_500));
    assert_eq!(charts::bar_end_ms(&t), 60_500);
    let svg = charts::timeline(&journal(vec![t.clone()])).unwrap();
    assert!(has_text(&svg, "60"), "the axis stops short of the deadline");
    // A journal without the deadline (format 1): the last moment recorded.
    t.recovery_deadline = None;
    assert_eq!(charts::bar_end_ms(&t), 1_100);
    // A pass: to its recovery.
    let t = trial("controller", 1, Outcome::Pass, 0, Some(1_000), Some(4_000));
    assert_eq!(charts::bar_end_ms(&t), 4_000);
}

#[test]
fn escalated_and_no_action_trials_are_named_and_not_counted_as_passes() {
    let escalated = trial(
        "controller",
        1,
        Outcome::Escalated,
        0,
        Some(1_000),
        Some(9_000),
    );
    let no_action = trial(
        "controller",
        2,
        Outcome::NoAction,
        60_000,
        Some(1_000),
        Some(31_000),
    );
    let passed = trial(
        "controller",
        3,
        Outcome::Pass,
        120_000,
        Some(1_000),
        Some(2_000),
    );
    let j = journal(vec![escalated, no_action, passed]);
    let md = report(&j);
    assert!(md.contains("### controller #1: escalated\n"), "{md}");
    assert!(md.contains("**Escalated**"), "{md}");
    assert!(md.contains("### controller #2: no action\n"), "{md}");
    assert!(md.contains("**No action**"), "{md}");
    assert_eq!(
        row(&md, "Escalated / no action"),
        "| Escalated / no action | 1 / 1 |"
    );
    assert_eq!(row(&md, "Success rate"), "| Success rate | 33.3% |");
    let line = summary(&j).to_string();
    assert!(
        line.contains("controller 1/3 pass (1 escalated, 1 no action)"),
        "{line}"
    );
    let svg = charts::timeline(&j).unwrap();
    assert!(has_text(&svg, "controller #2 no action"), "{svg}");
    let json = serde_json::to_value(&j.trials[1]).unwrap();
    assert_eq!(json["outcome"], "no-action");
}

#[test]
fn an_interrupted_trial_is_labelled_so_and_the_summary_says_it_ran() {
    let mut t = trial("controller", 1, Outcome::Interrupted, 0, Some(1_000), None);
    t.interrupted = true;
    let mut j = journal(vec![t]);
    j.status = RunStatus::Interrupted;
    let md = report(&j);
    assert!(md.contains("### controller #1: interrupted\n"), "{md}");
    assert!(md.contains("**Interrupted**"), "{md}");
    assert_eq!(
        row(&md, "Interrupted (not measured)"),
        "| Interrupted (not measured) | 1 |"
    );
    assert_eq!(row(&md, "Success rate"), "| Success rate | n/a |");
    let line = summary(&j).to_string();
    assert!(!line.contains("no trial ran"), "{line}");
    assert!(
        line.contains("controller 1 interrupted, not measured"),
        "{line}"
    );
    assert_balanced_svg(&charts::timeline(&j).unwrap());
    assert_balanced_svg(&charts::distribution(&j, &summary(&j)).unwrap());
}

#[test]
fn a_format_1_journals_interrupted_trial_reads_as_interrupted() {
    let dir = TempDir::new();
    let mut t = trial("controller", 1, Outcome::Timeout, 0, Some(1_000), None);
    t.interrupted = true;
    let mut j = journal(vec![t]);
    j.format = 1;
    j.write(&dir.0).unwrap();
    let read = Journal::read(&dir.0).unwrap();
    assert_eq!(read.trials[0].outcome, Outcome::Interrupted);
}

#[test]
fn a_command_workload_that_printed_no_counts_does_not_show_zeros_as_figures() {
    let mut t = trial("controller", 1, Outcome::Pass, 0, Some(1_000), Some(2_000));
    t.workload = Some(WorkloadVerdict {
        kind: "command".into(),
        attempted: 0,
        acknowledged: 0,
        lost: 0,
        phantom: 0,
        indeterminate: 0,
        lost_examples: vec![],
        uncounted: true,
        ok: true,
        detail: Some("it printed no counts line".into()),
    });
    let md = report(&journal(vec![t]));
    assert!(md.contains("Its writes were not counted"), "{md}");
    assert!(!md.contains("| Attempted | 0 |"), "{md}");
}

#[test]
fn runs_reported_elsewhere_are_listed_once_beside_the_roots() {
    let root = TempDir::new();
    let elsewhere = TempDir::new();
    let mut a = journal(vec![]);
    a.run_id = "20250101T000000Z-0000000a".into();
    a.write(&root.0.join(&a.run_id)).unwrap();
    let mut b = journal(vec![]);
    b.run_id = "20250102T000000Z-0000000b".into();
    let b_dir = elsewhere.0.join("my-report");
    b.write(&b_dir).unwrap();
    let gone = elsewhere.0.join("removed-by-hand");
    let runs = list_runs_with(&root.0, &[b_dir.clone(), root.0.join(&a.run_id), gone]);
    let ids: Vec<&str> = runs.iter().map(|r| r.run_id.as_str()).collect();
    assert_eq!(ids, [b.run_id.as_str(), a.run_id.as_str()]);
    assert_eq!(runs[0].dir, b_dir);
}
