//! Manifest load time: `manifest::load` (read, parse, validate, checks' PromQL included) of
//!
//! 1. the TiKV flagship, `manifests/tikv` (8 services, 12 checks);
//! 2. a generated manifest of 1,000 services, each with a check whose `expr` is PromQL
//!    (written to a temporary folder, removed at the end).
//!
//! Offline: no Docker, no Prometheus (loading asks neither). Prints the median and p99 of
//! each, in one process, the two alternating so that both see the same machine.
//!
//!     cargo bench --bench manifest_load -- [TIKV_ITERATIONS] [BIG_ITERATIONS]   (defaults 2000 and 60)
//!
//! Before and after a change, side by side: `scripts/bench-compare.sh REV manifest_load`.

mod stats;

use std::path::{Path, PathBuf};
use std::time::Instant;

use stats::summary;

const SERVICES: usize = 1000;

/// One cluster of `SERVICES` services, each with one check blamed on it; the queries vary
/// (functions, aggregations, matchers, ranges, binary operators) as real ones do.
fn big_manifest() -> String {
    let mut services = String::new();
    let mut checks = String::new();
    for n in 0..SERVICES {
        services += &format!(
            "    - name: svc{n}\n      image: local/empty:latest\n      command: [\"/bin/sh\", \"-c\", \"sleep 3600\"]\n      env: {{ROLE: worker, INDEX: \"{n}\"}}\n"
        );
        let expr = match n % 4 {
            0 => format!("up{{job=\"svc\", instance=\"svc{n}:9100\"}} == 0"),
            1 => format!(
                "sum by (instance) (rate(http_requests_total{{job=\"svc\", instance=\"svc{n}:9100\", code=~\"5..\"}}[5m])) > 0.5"
            ),
            2 => format!(
                "(1 - node_filesystem_avail_bytes{{instance=\"svc{n}:9100\"}} / ignoring(type) node_filesystem_size_bytes{{instance=\"svc{n}:9100\"}}) > 0.8"
            ),
            _ => format!(
                "histogram_quantile(0.99, sum by (le) (rate(request_seconds_bucket{{instance=\"svc{n}:9100\"}}[1m]))) > 2 and on() (count(up{{job=\"svc\"}} == 0) < 3)"
            ),
        };
        checks += &format!(
            "    - name: svc{n}-ok\n      expr: >-\n        {expr}\n      for: 30s\n      service: svc{n}\n"
        );
    }
    format!(
        "apiVersion: operator/v1\nkind: Cluster\nmetadata:\n  name: big\nspec:\n  prometheus: {{url: \"http://127.0.0.1:9090\"}}\n  services:\n{services}  checks:\n{checks}"
    )
}

/// Milliseconds one load of `path` takes; panics on an invalid manifest (the figures of a
/// load that fails early would mean nothing).
fn load_ms(path: &Path) -> f64 {
    let start = Instant::now();
    let desired = operator::manifest::load(&[path.to_path_buf()])
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    std::hint::black_box(desired);
    ms
}

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse::<usize>().ok());
    let tikv_iterations = args.next().unwrap_or(2000).max(1);
    let big_iterations = args.next().unwrap_or(60).max(1);

    let tikv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("manifests/tikv");
    let dir = std::env::temp_dir().join(format!("operator-bench-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary folder");
    let big = dir.join("big.yaml");
    std::fs::write(&big, big_manifest()).expect("the generated manifest");

    // Warm up the page cache and the allocator.
    for _ in 0..20 {
        load_ms(&tikv);
    }
    load_ms(&big);

    // Alternate: one big load every `per_big` TiKV loads.
    let per_big = (tikv_iterations / big_iterations).max(1);
    let mut tikv_ms = Vec::with_capacity(tikv_iterations);
    let mut big_ms = Vec::with_capacity(big_iterations);
    while tikv_ms.len() < tikv_iterations || big_ms.len() < big_iterations {
        for _ in 0..per_big {
            if tikv_ms.len() < tikv_iterations {
                tikv_ms.push(load_ms(&tikv));
            }
        }
        if big_ms.len() < big_iterations {
            big_ms.push(load_ms(&big));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "manifest load (load average {})",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    summary("manifests/tikv", tikv_ms);
    summary(
        &format!("{SERVICES} services, one PromQL check each"),
        big_ms,
    );
    println!("reproduce: cargo bench --bench manifest_load -- {tikv_iterations} {big_iterations}");
}
