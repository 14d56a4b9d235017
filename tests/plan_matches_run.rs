//! `plan` and `run` share the decision and the planner: for the same situations, the outcome
//! `plan --json` predicts for each service is the one a pass of `run --once --json` reports.
//! One cluster holds one service per situation; the expected outcomes are written out too,
//! so the two cannot agree on a wrong answer.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::operator::{TempDir, operator};
use common::{BUSYBOX_IMAGE, Cleanup, LOOP, cluster_yaml, docker_ok, unique};

/// The cluster; `setup`: every service under `restart`, so that a first pass creates them
/// all (a service under `observe` is never created).
fn manifest(c: &str, setup: bool) -> String {
    let observe = if setup {
        "      remediation: {policy: restart}\n"
    } else {
        "      remediation: {policy: observe}\n"
    };
    let service = |name: &str, extra: &str| {
        format!(
            "    - name: {c}-{name}\n      image: {BUSYBOX_IMAGE}\n      networkMode: host\n      command: {LOOP}\n      stopTimeout: 0s\n{extra}"
        )
    };
    let fast = "      remediation: {backoff: {initial: 100ms, max: 200ms}}\n";
    let services = [
        service("run", fast),
        service("obs", observe),
        service("dep", observe),
        service("waits", &format!("      dependsOn: [{c}-dep]\n{fast}")),
        service(
            "spent",
            "      remediation: {maxRestarts: 1, backoff: {initial: 100ms, max: 200ms}}\n",
        ),
        service("clean", fast),
        service("new", fast),
    ];
    cluster_yaml(c, &services.concat())
}

/// `run --once` on the manifests and database; the JSON rows when `json`.
fn once(dir: &Path, db: &Path, json: bool) -> Vec<serde_json::Value> {
    let (dir, db) = (dir.to_str().unwrap(), db.to_str().unwrap());
    let mut args = vec!["run", dir, "--db", db, "--once", "--settle", "1s"];
    if json {
        args.push("--json");
    }
    let out = operator(&args, None);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !json {
        assert!(
            out.status.success(),
            "run --once: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return Vec::new();
    }
    serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "run --once --json: {e}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn plan_predicts_the_outcome_run_reports_for_each_situation() {
    let c = unique("planrun");
    let _cleanup = Cleanup::new(format!("operator.cluster={c}"));
    let dir = TempDir::new(&c);
    let db = dir.path().join("state").join("tickets.db");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(manifests.join("cluster.yaml"), manifest(&c, true)).unwrap();
    let name = |s: &str| format!("{c}-{s}");

    // Everything created; then `spent` repaired once, its budget of one spent.
    once(&manifests, &db, false);
    docker_ok(&["stop", "--time", "0", &name("spent")]);
    once(&manifests, &db, false);

    // The situations.
    std::fs::write(manifests.join("cluster.yaml"), manifest(&c, false)).unwrap();
    for s in ["run", "obs", "dep", "waits", "spent"] {
        docker_ok(&["stop", "--time", "0", &name(s)]);
    }
    docker_ok(&["rm", "-f", &name("new")]);

    let plan = operator(
        &[
            "plan",
            manifests.to_str().unwrap(),
            "--db",
            db.to_str().unwrap(),
            "--json",
        ],
        None,
    );
    assert!(
        plan.status.success(),
        "{}",
        String::from_utf8_lossy(&plan.stderr)
    );
    let steps: Vec<serde_json::Value> = serde_json::from_slice(&plan.stdout).unwrap();
    let predicted: BTreeMap<String, String> = steps
        .iter()
        .map(|s| {
            (
                s["service"].as_str().unwrap().to_string(),
                s["outcome"].as_str().unwrap_or("(none)").to_string(),
            )
        })
        .collect();

    let rows = once(&manifests, &db, true);
    let reported: BTreeMap<String, String> = rows
        .iter()
        .map(|r| {
            (
                r["service"].as_str().unwrap().to_string(),
                r["result"]["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();

    let expected = [
        ("run", "acted"),
        ("obs", "observed"),
        ("dep", "observed"),
        ("waits", "waiting"),
        ("spent", "escalated"),
        ("clean", "clean"),
        ("new", "acted"),
    ];
    for (s, want) in expected {
        let service = name(s);
        // `plan --json` lists the services that drift; one it leaves out is clean.
        let plan_says = predicted
            .get(&service)
            .cloned()
            .unwrap_or_else(|| "clean".into());
        assert_eq!(
            (
                plan_says.as_str(),
                reported.get(&service).map(String::as_str)
            ),
            (want, Some(want)),
            "{service}: plan predicted {plan_says}, run reported {:?}; plan: {steps:#?}; run: {rows:#?}",
            reported.get(&service)
        );
    }
}
