//! The Grafana dashboards provisioned in the TiKV stack (docker/tikv/grafana) and the stack's
//! Prometheus configuration: well-formed, every query parsed and run by a real Prometheus,
//! and every controller metric the controller's dashboard plots one the controller exports.
//! A renamed metric breaks this test rather than leaving an empty panel.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::operator::TempDir;
use common::prometheus::Prometheus;
use common::{free_port, repo, run_with_timeout, unique};

fn dashboard(name: &str) -> serde_json::Value {
    let path = repo(&format!("docker/tikv/grafana/dashboards/{name}"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn dashboards() -> Vec<(String, serde_json::Value)> {
    let dir = repo("docker/tikv/grafana/dashboards");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("dashboards folder")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    assert!(
        names.iter().any(|n| n == "operator.json"),
        "the controller's dashboard operator.json is provisioned: {names:?}"
    );
    names
        .into_iter()
        .map(|n| (n.clone(), dashboard(&n)))
        .collect()
}

fn exprs(d: &serde_json::Value) -> Vec<String> {
    d["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect()
}

/// The data source uid the stack provisions; every panel must use it.
fn provisioned_datasource_uid() -> String {
    let text = std::fs::read_to_string(repo(
        "docker/tikv/grafana/provisioning/datasources/prometheus.yml",
    ))
    .expect("datasource provisioning");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("datasource yaml");
    doc["datasources"][0]["uid"]
        .as_str()
        .expect("a fixed datasource uid")
        .to_string()
}

#[test]
fn dashboards_are_well_formed_and_use_the_provisioned_datasource() {
    let uid = provisioned_datasource_uid();
    let mut uids = BTreeSet::new();
    for (name, d) in dashboards() {
        let duid = d["uid"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no uid"));
        assert!(
            uids.insert(duid.to_string()),
            "{name}: uid {duid} used twice"
        );
        assert!(
            d["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{name}: no title"
        );
        let panels = d["panels"].as_array().expect("panels");
        assert!(!panels.is_empty(), "{name}: no panels");
        let mut ids = BTreeSet::new();
        let mut cells = BTreeSet::new();
        for p in panels {
            let title = p["title"].as_str().unwrap_or("?");
            assert!(
                ids.insert(p["id"].as_i64().expect("panel id")),
                "{name}: panel id twice ({title})"
            );
            assert_eq!(
                p["datasource"]["uid"],
                uid.as_str(),
                "{name}: {title}: datasource"
            );
            let targets = p["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{name}: {title}: no query");
            for t in targets {
                assert_eq!(
                    t["datasource"]["uid"],
                    uid.as_str(),
                    "{name}: {title}: target datasource"
                );
            }
            // Panels inside Grafana's 24 columns and never on top of one another.
            let g = &p["gridPos"];
            let (x, y, w, h) = (
                g["x"].as_i64().expect("x"),
                g["y"].as_i64().expect("y"),
                g["w"].as_i64().expect("w"),
                g["h"].as_i64().expect("h"),
            );
            assert!(
                x >= 0 && w > 0 && x + w <= 24 && h > 0,
                "{name}: {title}: gridPos {g}"
            );
            for cx in x..x + w {
                for cy in y..y + h {
                    assert!(
                        cells.insert((cx, cy)),
                        "{name}: {title} overlaps another panel"
                    );
                }
            }
        }
    }
}

#[test]
fn every_controller_metric_on_its_dashboard_is_one_the_controller_exports() {
    // Every family the controller registers (src/metrics.rs registers them all, under the
    // prefix `operator`). Read from the source, since a labelled family with no sample yet
    // is absent from a fresh registry's rendering.
    let source = std::fs::read_to_string(repo("src/metrics.rs")).expect("src/metrics.rs");
    let families: BTreeSet<String> = source
        .split("registry.register(")
        .skip(1)
        .filter_map(|call| call.split('"').nth(1))
        .map(|name| format!("operator_{name}"))
        .collect();
    assert!(families.len() >= 20, "registered families: {families:?}");
    let d = dashboard("operator.json");
    let mut used = BTreeSet::new();
    for expr in exprs(&d) {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("operator_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            used.insert(name);
        }
    }
    assert!(
        used.len() >= 15,
        "the dashboard plots the controller's metrics: {used:?}"
    );
    for name in &used {
        let family = ["_bucket", "_sum", "_count", "_total"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            families.contains(family) || families.contains(name.as_str()),
            "operator.json plots {name}, which the controller does not export (families: {families:?})"
        );
    }
}

/// Each query of both dashboards, run by a real Prometheus: a syntax error (or a Grafana-only
/// variable Prometheus cannot expand) is an error here instead of a red panel.
#[test]
fn every_dashboard_query_parses_and_runs_in_prometheus() {
    let dir = TempDir::new(&unique("dashboard-prom"));
    let port = free_port();
    let prom = Prometheus::start(dir.path().join("prom"), port, "operator", &[port]);
    for (name, d) in dashboards() {
        for expr in exprs(&d) {
            assert!(
                prom.query(&expr).is_some(),
                "{name}: Prometheus refuses the query {expr}"
            );
        }
    }
    // And a query Prometheus refuses is refused here, so the loop above can fail.
    assert!(prom.query("sum(rate(up[5m])").is_none());
}

/// The stack's Prometheus configuration (it scrapes the sidecar as job operator), checked by
/// Debian's promtool.
#[test]
fn the_stacks_prometheus_configuration_passes_promtool() {
    let mut cmd = Command::new("promtool");
    cmd.args(["check", "config", "--syntax-only"])
        .arg(repo("docker/tikv/prometheus.yml"));
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "promtool check config docker/tikv/prometheus.yml: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(repo("docker/tikv/prometheus.yml")).expect("read");
    assert!(
        text.contains("job_name: operator") && text.contains("operator:9464"),
        "the stack's Prometheus scrapes the sidecar"
    );
}
