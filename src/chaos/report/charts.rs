//! The report's two SVG charts, drawn with `plotters`' SVG backend into a string:
//! - the timeline: one row per trial, in seconds since the trial's first fault, with each
//!   fault's hold span shaded and marks for detected, first action, recovered, resolved;
//! - the distribution: TTD and TTR per remediation as one point per trial, with the p50,
//!   p95 and max drawn across, readable with 1 trial and with 50.
//!
//! # Guarantees
//! The same journal draws the same bytes: coordinates are integers, the point spread is
//! a fixed sequence (not random), and text is emitted as SVG `<text>` (plotters is built
//! without `ttf`, so no font file is read and no glyph is measured from the host).

use chrono::{DateTime, Utc};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::super::journal::{Journal, Outcome, Trial};
use super::Summary;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ChartError(String);

fn draw_error(e: impl std::fmt::Display) -> ChartError {
    ChartError(e.to_string())
}

const WIDTH: u32 = 960;
/// Height of one trial's row in the timeline, in pixels.
const ROW: u32 = 24;
const FONT: &str = "sans-serif";

const FAULT_SPAN: RGBColor = RGBColor(255, 170, 60);
const INJECTED: RGBColor = RGBColor(0, 0, 0);
const DETECTED: RGBColor = RGBColor(30, 100, 220);
const FIRST_ACTION: RGBColor = RGBColor(140, 60, 180);
const RECOVERED: RGBColor = RGBColor(20, 150, 60);
const RESOLVED: RGBColor = RGBColor(110, 110, 110);
const TIMED_OUT: RGBColor = RGBColor(210, 40, 40);
const FAILED: RGBColor = RGBColor(230, 120, 20);
const ESCALATED: RGBColor = RGBColor(150, 20, 90);
const NO_ACTION: RGBColor = RGBColor(150, 190, 150);
const INTERRUPTED: RGBColor = RGBColor(170, 170, 170);

/// Milliseconds from the trial's first fault to `at`, never before it: the timeline's x
/// coordinates are integers, so its ticks can sit on exact values.
fn offset_ms(trial: &Trial, at: DateTime<Utc>) -> i64 {
    (at - trial.injected_at).num_milliseconds().max(0)
}

/// The last moment the trial records (its right end on the timeline), in ms: a timed-out
/// trial's recovery deadline included.
fn trial_end(trial: &Trial) -> i64 {
    let fault_times = trial
        .faults
        .iter()
        .flat_map(|f| [f.injected_at, f.undone_at]);
    [
        trial.detected_at,
        trial.first_action_at,
        trial.recovered_at,
        trial.resolved_at,
        trial.recovery_deadline,
    ]
    .into_iter()
    .chain(fault_times)
    .flatten()
    .map(|t| offset_ms(trial, t))
    .fold(0, i64::max)
}

/// The recovery bar of a trial: where it ends (ms) and its color. It runs to the recovery
/// when there was one; a trial that never recovered runs to its recovery deadline (the
/// faults' end plus `recoveryTimeout`), or, without one (an interrupted trial, a format 1
/// journal), to the last moment it recorded.
fn bar(t: &Trial) -> (i64, RGBColor) {
    let to_recovery = t.recovered_at.map(|r| offset_ms(t, r));
    let to_deadline = t
        .recovery_deadline
        .map_or_else(|| trial_end(t), |d| offset_ms(t, d));
    let color = match t.outcome {
        _ if t.interrupted => INTERRUPTED,
        Outcome::Pass => RECOVERED,
        Outcome::Fail => FAILED,
        Outcome::Timeout => TIMED_OUT,
        Outcome::Escalated => ESCALATED,
        Outcome::NoAction => NO_ACTION,
        Outcome::Interrupted => INTERRUPTED,
    };
    match (t.outcome, to_recovery) {
        (Outcome::Interrupted, _) => (trial_end(t), color),
        _ if t.interrupted => (trial_end(t), color),
        (_, Some(end)) => (end, color),
        (_, None) => (to_deadline, color),
    }
}

/// Where a trial's recovery bar ends, in ms since its first fault (see [`bar`]).
#[cfg(test)]
pub(super) fn bar_end_ms(t: &Trial) -> i64 {
    bar(t).0
}

/// The timeline's tick step for an axis of `span_ms`: the smallest of 0.1, 0.2, 0.5, 1, 2,
/// 5, 10... s that draws at most 12 ticks, so every tick is a round value.
fn tick_step_ms(span_ms: i64) -> i64 {
    let mut decade = 100;
    loop {
        for step in [decade, 2 * decade, 5 * decade] {
            if span_ms / step <= 12 {
                return step;
            }
        }
        decade *= 10;
    }
}

/// A tick's label, exact at the step's precision: `0`, `0.5`, `1`, `1.5` for a 0.5 s step,
/// `0.2`, `0.4` for 0.2 s; integer arithmetic, never a rounded float.
fn tick_label(ms: i64, step_ms: i64) -> String {
    let whole = ms / 1000;
    if step_ms % 1000 == 0 || ms % 1000 == 0 {
        whole.to_string()
    } else {
        format!("{whole}.{}", (ms % 1000) / 100)
    }
}

/// The same color per remediation in every chart.
fn remediation_color(name: &str) -> RGBColor {
    match name {
        "controller" => RGBColor(30, 100, 220),
        "agent" => RGBColor(140, 60, 180),
        "baseline" => RGBColor(110, 110, 110),
        _ => RGBColor(20, 150, 60),
    }
}

/// An SVG that says there is nothing to draw, so the report's links never dangle.
fn empty(title: &str, message: &str) -> Result<String, ChartError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, 120)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        root.draw(&Text::new(
            title.to_string(),
            (20, 20),
            (FONT, 20).into_font(),
        ))
        .map_err(draw_error)?;
        root.draw(&Text::new(
            message.to_string(),
            (20, 60),
            (FONT, 16).into_font(),
        ))
        .map_err(draw_error)?;
        root.present().map_err(draw_error)?;
    }
    Ok(svg)
}

/// A legend strip: a mark and its words per entry, left to right, on a second line of its
/// own (22 px lower) once the first is full.
fn legend(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    entries: &[(&str, RGBColor, Mark)],
) -> Result<(), ChartError> {
    let mut x = 60;
    let mut y = 15;
    for (label, color, mark) in entries {
        if x + 14 + 8 * label.len() as i32 > WIDTH as i32 {
            (x, y) = (60, y + 22);
        }
        match mark {
            Mark::Span => area.draw(&Rectangle::new(
                [(x - 6, y - 6), (x + 6, y + 6)],
                color.mix(0.35).filled(),
            )),
            Mark::Bar => area.draw(&Rectangle::new(
                [(x - 8, y - 3), (x + 8, y + 3)],
                color.filled(),
            )),
            Mark::Tick => area.draw(&PathElement::new(
                vec![(x, y - 7), (x, y + 7)],
                color.stroke_width(2),
            )),
            Mark::Dot => area.draw(&Circle::new((x, y), 5, color.filled())),
            Mark::Ring => area.draw(&Circle::new((x, y), 6, color.stroke_width(2))),
            Mark::Triangle => area.draw(&TriangleMarker::new((x, y), 6, color.filled())),
            Mark::Cross => area.draw(&Cross::new((x, y), 5, color.stroke_width(2))),
            Mark::Line(w) => area.draw(&PathElement::new(
                vec![(x - 10, y), (x + 10, y)],
                color.stroke_width(*w),
            )),
        }
        .map_err(draw_error)?;
        area.draw(&Text::new(
            label.to_string(),
            (x + 14, y - 7),
            (FONT, 16).into_font(),
        ))
        .map_err(draw_error)?;
        // The naive font's estimate of the text's width, plus room for the next mark.
        x += 40 + 8 * label.len() as i32;
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Mark {
    Span,
    Bar,
    Tick,
    Dot,
    Ring,
    Triangle,
    Cross,
    Line(u32),
}

/// `timeline.svg`: one row per trial (the first at the top), in seconds since its first
/// fault, with ticks on round values labelled exactly ([`tick_step_ms`]). The shaded band
/// is each fault's hold (injected → undone; to the right edge when never undone); the bar
/// runs to recovery ([`bar`]): green for a pass, orange for a failure, light green for no
/// action, purple for an escalation, red for a timeout (to its recovery deadline), grey for
/// an interrupted trial.
pub fn timeline(journal: &Journal) -> Result<String, ChartError> {
    let trials = &journal.trials;
    if trials.is_empty() {
        return empty("Trial timeline", "No trial ran.");
    }
    let n = trials.len();
    let x_max = trials.iter().map(trial_end).fold(1000, i64::max) * 105 / 100;
    let step = tick_step_ms(x_max);
    let ticks: Vec<i64> = (0..=x_max / step).map(|k| k * step).collect();
    // Room below the plot for a legend of two lines.
    let height = 110 + 62 + ROW * n as u32;
    let labels: Vec<String> = trials
        .iter()
        .map(|t| format!("{} #{} {}", t.remediation, t.index, t.outcome.as_str()))
        .collect();
    // Rows in hundredths (integer coordinates: plotters draws f64 axes only with its own
    // tick positions, and the labels must sit on the rows). Row i (0 = first trial) spans
    // y in [top(i) - 100, top(i)]: plotters' y grows upwards.
    let top = |i: usize| (n - i) as i32 * 100;
    let centers: Vec<i32> = (0..n).map(|i| top(i) - 50).collect();
    let label_of = |y: &i32| {
        let i = (n as i32 * 100 - y - 50) / 100;
        usize::try_from(i)
            .ok()
            .and_then(|i| labels.get(i))
            .cloned()
            .unwrap_or_default()
    };
    let label_width = labels.iter().map(|l| l.len()).max().unwrap_or(0) as u32 * 7 + 16;

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        let (plot, key) = root.split_vertically(height - 62);
        let mut chart = ChartBuilder::on(&plot)
            .caption(
                format!("Trial timeline: {} ({})", journal.drill, journal.run_id),
                (FONT, 22),
            )
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(label_width.max(90))
            .build_cartesian_2d(
                (0..x_max).with_key_points(ticks),
                (0..n as i32 * 100).with_key_points(centers),
            )
            .map_err(draw_error)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .x_desc("seconds since the trial's first fault")
            .x_label_formatter(&|x| tick_label(*x, step))
            .y_label_formatter(&label_of)
            .label_style((FONT, 15))
            .draw()
            .map_err(draw_error)?;

        for (i, t) in trials.iter().enumerate() {
            let (y0, y1) = (top(i) - 100, top(i));
            let mid = y0 + 50;
            // Fault holds, behind everything else.
            for f in &t.faults {
                let Some(start) = f.injected_at else { continue };
                let end = f.undone_at.map_or(x_max, |u| offset_ms(t, u));
                let style = if f.undone_at.is_some() {
                    FAULT_SPAN.mix(0.35).filled()
                } else {
                    TIMED_OUT.mix(0.35).filled()
                };
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(offset_ms(t, start), y0 + 10), (end, y1 - 10)],
                        style,
                    )))
                    .map_err(draw_error)?;
            }
            // The recovery bar.
            let (bar_end, color) = bar(t);
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(0, mid - 8), (bar_end, mid + 8)],
                    color.filled(),
                )))
                .map_err(draw_error)?;
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(0, y0 + 15), (0, y1 - 15)],
                    INJECTED.stroke_width(2),
                )))
                .map_err(draw_error)?;
            if let Some(at) = t.detected_at {
                chart
                    .draw_series(std::iter::once(Circle::new(
                        (offset_ms(t, at), mid),
                        5,
                        DETECTED.filled(),
                    )))
                    .map_err(draw_error)?;
            }
            if let Some(at) = t.first_action_at {
                chart
                    .draw_series(std::iter::once(TriangleMarker::new(
                        (offset_ms(t, at), mid),
                        6,
                        FIRST_ACTION.filled(),
                    )))
                    .map_err(draw_error)?;
            }
            if let Some(at) = t.recovered_at {
                chart
                    .draw_series(std::iter::once(Circle::new(
                        (offset_ms(t, at), mid),
                        7,
                        RECOVERED.stroke_width(2),
                    )))
                    .map_err(draw_error)?;
            }
            if let Some(at) = t.resolved_at {
                chart
                    .draw_series(std::iter::once(Cross::new(
                        (offset_ms(t, at), mid),
                        5,
                        RESOLVED.stroke_width(2),
                    )))
                    .map_err(draw_error)?;
            }
        }
        legend(
            &key,
            &[
                ("fault held", FAULT_SPAN, Mark::Span),
                ("not undone", TIMED_OUT, Mark::Span),
                ("injected", INJECTED, Mark::Tick),
                ("detected", DETECTED, Mark::Dot),
                ("first action", FIRST_ACTION, Mark::Triangle),
                ("recovered", RECOVERED, Mark::Ring),
                ("resolved", RESOLVED, Mark::Cross),
                ("timeout", TIMED_OUT, Mark::Bar),
                ("escalated", ESCALATED, Mark::Bar),
                ("no action", NO_ACTION, Mark::Bar),
                ("interrupted", INTERRUPTED, Mark::Bar),
            ],
        )?;
        root.present().map_err(draw_error)?;
    }
    Ok(svg)
}

/// Columns are this many x units wide (integer coordinates, as for the timeline's rows).
const COLUMN: i32 = 1000;

/// The k-th point's horizontal offset inside its column, within ±30% of it: the fractional
/// parts of k × the golden ratio spread any number of points evenly and always the same
/// way (a random jitter would change the bytes).
fn spread(k: usize) -> i32 {
    let golden = 0.618_033_988_749_895_f64;
    (((k as f64 * golden).fract() - 0.5) * 0.6 * COLUMN as f64).round() as i32
}

/// `distribution.svg`: TTD (left) and TTR (right), one column per remediation, one point
/// per trial that has the value, with lines across at p50 (thick), p95 and max.
pub fn distribution(journal: &Journal, summary: &Summary) -> Result<String, ChartError> {
    if summary.remediations.is_empty() {
        return empty("Time to detect and time to recover", "No trial ran.");
    }
    let names: Vec<&str> = summary
        .remediations
        .iter()
        .map(|r| r.remediation.as_str())
        .collect();
    let values = |pick: fn(&Trial) -> Option<u64>| -> Vec<Vec<f64>> {
        names
            .iter()
            .map(|name| {
                journal
                    .trials
                    .iter()
                    .filter(|t| t.remediation == *name)
                    // Interrupted trials were not measured (as in the summary).
                    .filter(|t| !t.interrupted && t.outcome != Outcome::Interrupted)
                    .filter_map(pick)
                    .map(|v| v as f64 / 1000.0)
                    .collect()
            })
            .collect()
    };
    let ttd = values(|t| t.ttd_ms);
    let ttr = values(|t| t.ttr_ms);
    let percentiles = |pick: fn(&super::RemediationSummary) -> super::Percentiles| {
        summary
            .remediations
            .iter()
            .map(|r| {
                let p = pick(r);
                [p.p50_ms, p.p95_ms, p.max_ms].map(|v| v.map(|v| v as f64 / 1000.0))
            })
            .collect::<Vec<_>>()
    };

    let height = 480;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        let (plots, key) = root.split_vertically(height - 40);
        let (left, right) = plots.split_horizontally(WIDTH / 2);
        panel(
            &left,
            "Time to detect (TTD)",
            &names,
            &ttd,
            &percentiles(|r| r.ttd),
        )?;
        panel(
            &right,
            "Time to recover (TTR)",
            &names,
            &ttr,
            &percentiles(|r| r.ttr),
        )?;
        legend(
            &key,
            &[
                ("one trial", RGBColor(30, 100, 220), Mark::Dot),
                ("p50", INJECTED, Mark::Line(3)),
                ("p95", TIMED_OUT, Mark::Line(2)),
                ("max", RESOLVED, Mark::Line(1)),
            ],
        )?;
        root.present().map_err(draw_error)?;
    }
    Ok(svg)
}

fn panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    title: &str,
    names: &[&str],
    values: &[Vec<f64>],
    percentiles: &[[Option<f64>; 3]],
) -> Result<(), ChartError> {
    let k = names.len();
    let y_max = values.iter().flatten().copied().fold(1.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 22))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(
            (-COLUMN / 2..k as i32 * COLUMN - COLUMN / 2)
                .with_key_points((0..k as i32).map(|i| i * COLUMN).collect()),
            0f64..y_max,
        )
        .map_err(draw_error)?;
    let name_of = |x: &i32| {
        usize::try_from(x / COLUMN)
            .ok()
            .filter(|_| x % COLUMN == 0)
            .and_then(|i| names.get(i))
            .map_or_else(String::new, |n| n.to_string())
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&name_of)
        .y_desc("seconds")
        .y_label_formatter(&|y| format!("{y:.1}"))
        .label_style((FONT, 15))
        .draw()
        .map_err(draw_error)?;
    for (i, (name, points)) in names.iter().zip(values).enumerate() {
        let x = i as i32 * COLUMN;
        let color = remediation_color(name);
        // Smaller, fainter points when there are many, so 50 stay readable.
        let (size, alpha) = if points.len() > 20 {
            (3, 0.5)
        } else {
            (4, 0.7)
        };
        chart
            .draw_series(
                points.iter().enumerate().map(|(j, v)| {
                    Circle::new((x + spread(j), *v), size, color.mix(alpha).filled())
                }),
            )
            .map_err(draw_error)?;
        let [p50, p95, max] = percentiles[i];
        for (value, color, width) in [(max, RESOLVED, 1), (p95, TIMED_OUT, 2), (p50, INJECTED, 3)] {
            if let Some(v) = value {
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        vec![(x - COLUMN * 38 / 100, v), (x + COLUMN * 38 / 100, v)],
                        color.stroke_width(width),
                    )))
                    .map_err(draw_error)?;
            }
        }
        let note = if points.is_empty() {
            "n/a: no trial had a value".to_string()
        } else {
            format!("n={}", points.len())
        };
        chart
            .draw_series(std::iter::once(Text::new(
                note,
                (x - COLUMN * 3 / 10, y_max * 0.97),
                (FONT, 15).into_font(),
            )))
            .map_err(draw_error)?;
    }
    Ok(())
}
