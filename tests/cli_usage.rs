//! The command line's own errors and counts: usage errors that say what is wrong (and are
//! one JSON line under `--log-format json`), singular counts, and what `status` calls a
//! service whose name a foreign container holds.

mod common;

use std::time::Duration;

use common::operator::{TempDir, operator, wait_until};
use common::{BUSYBOX_IMAGE, Fixture, docker_ok, unique};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A manifest file with one service, in a folder of its own.
fn one_service(cluster: &str) -> (TempDir, String) {
    let dir = TempDir::new(cluster);
    let file = dir.write(
        "c.yaml",
        &common::cluster_yaml(
            cluster,
            &format!(
                "    - name: {cluster}-web\n      image: {BUSYBOX_IMAGE}\n      command: [\"sleep\", \"3600\"]\n"
            ),
        ),
    );
    let file = file.to_str().unwrap().to_string();
    (dir, file)
}

#[test]
fn zero_workers_is_a_usage_error_that_says_why() {
    let (_dir, file) = one_service(&unique("workers"));
    let out = operator(
        &["run", &file, "--workers", "0"],
        Some("unix:///nonexistent.sock"),
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--workers") && err.contains("must be at least 1"),
        "{err}"
    );
}

#[test]
fn a_usage_error_under_json_logs_is_one_json_line() {
    let (_dir, file) = one_service(&unique("jsonusage"));
    for args in [
        vec!["--log-format", "json", "run", &file, "--no-such-flag"],
        vec!["run", &file, "--workers", "0", "--log-format=json"],
        vec!["--log-format", "json", "run"],
    ] {
        let out = operator(&args, Some("unix:///nonexistent.sock"));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: not one line:\n{err}");
        let line: serde_json::Value = serde_json::from_str(lines[0])
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {err}"));
        assert_eq!(line["level"], "ERROR", "{line}");
        let message = line["message"].as_str().unwrap_or_default();
        assert!(!message.starts_with("error:"), "{line}");
        assert!(!message.is_empty(), "{line}");
    }
    // Text stays clap's own, with its exit code.
    let out = operator(&["run", &file, "--no-such-flag"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).starts_with("error: "), "{}", stderr(&out));
}

#[test]
fn an_address_that_is_no_ip_is_called_invalid_not_a_host_name() {
    let (_dir, file) = one_service(&unique("listen"));
    let out = operator(&["run", &file, "--listen", "999.1.1.1:1"], None);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("\"999.1.1.1\" is not a valid IPv4 address"),
        "{err}"
    );
    assert!(!err.contains("host name"), "{err}");
    // A host name is still said to be one.
    let out = operator(&["run", &file, "--listen", "localhost:9464"], None);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("a host name is not accepted"), "{err}");
}

#[test]
fn validate_counts_one_service_in_the_singular() {
    let cluster = unique("count");
    let (_dir, file) = one_service(&cluster);
    let out = operator(&["validate", &file], Some("unix:///nonexistent.sock"));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(said.contains(": 1 service on network"), "{said}");
    assert!(said.contains(", 0 checks"), "{said}");
}

#[test]
fn run_logs_one_service_in_the_singular() {
    let f = Fixture::builder("onesvc")
        .manifest("cluster.yaml", |c| {
            common::cluster_yaml(
                c,
                &format!(
                    "    - name: {c}-web\n      image: {BUSYBOX_IMAGE}\n      command: [\"sleep\", \"3600\"]\n"
                ),
            )
        })
        .start();
    // The first full pass is done: its time since start-up is served (0 until then; a
    // series not served at all panics naming it).
    let first = "operator_first_reconcile_seconds";
    assert!(
        wait_until(Duration::from_secs(60), || f.operator.served_metric(first)
            > 0.0),
        "{first} is still {} after 60 s; log:\n{}",
        f.operator.served_metric(first),
        f.operator.log()
    );
    // What this test is about is the wording of the line said at that moment, which only
    // the log carries; it is written right after the gauge is set.
    assert!(
        f.operator
            .wait_for_log("first full reconcile done", Duration::from_secs(5)),
        "{}",
        f.operator.log()
    );
    let log = f.operator.log();
    let line = log
        .lines()
        .find(|l| l.contains("first full reconcile done"))
        .unwrap_or_default();
    assert!(line.contains("(1 service)"), "{line}");
}

#[test]
fn a_name_held_by_a_foreign_container_is_a_name_conflict_in_status() {
    common::require_docker();
    let cluster = unique("foreign");
    let (dir, file) = one_service(&cluster);
    let name = format!("{cluster}-web");
    // Not the controller's: none of its labels, started by hand (and removed however the
    // test ends).
    let label = format!("operator.test.foreign={cluster}");
    let _cleanup = common::Cleanup::new(label.clone());
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "none",
        "--label",
        common::TEST_LABEL,
        "--label",
        &label,
        BUSYBOX_IMAGE,
        "sleep",
        "300",
    ]);
    let mut status = std::process::Command::new(common::operator::operator_bin());
    // No ticket database: the containers alone.
    status
        .args(["status", &file])
        .env("HOME", dir.path())
        .env_remove("OPERATOR_DB");
    let out = common::run_with_timeout(status, Duration::from_secs(120));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    let row = said
        .lines()
        .find(|l| l.contains(&name))
        .unwrap_or_else(|| panic!("no row for {name}:\n{said}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells.get(2), Some(&"name-conflict"), "{said}");
    assert!(!row.contains("absent"), "{said}");
}
