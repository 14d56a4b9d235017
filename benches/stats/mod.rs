//! Figures for the benchmark programs. Their fixtures (Docker, the controller, Prometheus,
//! free ports) are the integration tests' own: `#[path = "../tests/common/mod.rs"] mod common;`.

/// The value at percentile `p` (0-100) of an ascending slice, nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Prints one row of figures; returns the median.
pub fn summary(label: &str, mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let p50 = percentile(&xs, 50.0);
    println!(
        "{label:<44} n={:<3} p50={:>9.2} ms  p90={:>9.2} ms  p99={:>9.2} ms  max={:>9.2} ms",
        xs.len(),
        p50,
        percentile(&xs, 90.0),
        percentile(&xs, 99.0),
        xs.last().copied().unwrap_or(f64::NAN)
    );
    p50
}
