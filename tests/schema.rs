//! `operator schema manifest|drill`: every manifest and drill the project ships (and every
//! whole one in the docs) passes its schema; what the loader refuses for its shape, the
//! schema refuses too; what the loader accepts, the schema accepts (it is never stricter).
//! Needs no Docker.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::operator::{TempDir, operator, operator_bin};
use common::repo;
use serde::Deserialize as _;
use serde_json::Value;

/// The schema `operator schema FORMAT` prints.
fn printed_schema(format: &str) -> Value {
    let out = operator(&["schema", format], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the schema is JSON")
}

fn validator(format: &str) -> jsonschema::Validator {
    jsonschema::draft7::new(&printed_schema(format)).expect("the schema is a valid draft-07 schema")
}

/// Each non-empty document of a YAML text, as JSON (what an editor checks).
fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("YAML that converts to JSON"))
        .filter(|v| !v.is_null())
        .collect()
}

/// Why `doc` fails the schema, one line per problem; empty when it passes.
fn problems(v: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    v.iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// Every `*.yaml` under `dir`, sub-folders included.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).expect("a readable folder") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The whole documents of `kind` in the docs' ```yaml blocks (the ones with an apiVersion).
fn documented(kind: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for doc in std::fs::read_dir(repo("docs")).expect("docs/") {
        let path = doc.expect("an entry").path();
        if path.extension().is_none_or(|e| e != "md") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable");
        for block in text.split("```yaml\n").skip(1) {
            let block = block.split("```").next().unwrap_or_default();
            if !block.contains("apiVersion:") || !block.contains(&format!("kind: {kind}")) {
                continue;
            }
            for value in documents(block) {
                out.push((path.display().to_string(), value));
            }
        }
    }
    out
}

fn kind_of(doc: &Value) -> &str {
    doc.get("kind").and_then(Value::as_str).unwrap_or_default()
}

#[test]
fn every_shipped_manifest_passes_the_manifest_schema() {
    let v = validator("manifest");
    let mut checked = Vec::new();
    for file in yaml_files(&repo("manifests")) {
        let text = std::fs::read_to_string(&file).expect("readable");
        // Prometheus' own configuration lives beside the manifests; a manifest has an apiVersion.
        for doc in documents(&text)
            .into_iter()
            .filter(|d| d.get("apiVersion").is_some())
        {
            let found = problems(&v, &doc);
            assert!(found.is_empty(), "{}: {found:#?}", file.display());
            checked.push(file.display().to_string());
        }
    }
    for needed in [
        "examples/hello.yaml",
        "examples/etcd.yaml",
        "etcd-net.yaml",
        "tikv/cluster.yaml",
    ] {
        assert!(
            checked.iter().any(|f| f.ends_with(needed)),
            "{needed} not checked: {checked:?}"
        );
    }
    let in_docs = documented("Cluster");
    assert!(!in_docs.is_empty(), "docs/manifests.md has whole manifests");
    for (file, doc) in in_docs {
        let found = problems(&v, &doc);
        assert!(found.is_empty(), "{file}: {found:#?}\n{doc:#}");
    }
}

#[test]
fn every_shipped_drill_passes_the_drill_schema() {
    let v = validator("drill");
    let mut checked = 0;
    for file in yaml_files(&repo("chaos")) {
        let text = std::fs::read_to_string(&file).expect("readable");
        for doc in documents(&text)
            .into_iter()
            .filter(|d| kind_of(d) == "Drill")
        {
            let found = problems(&v, &doc);
            assert!(found.is_empty(), "{}: {found:#?}", file.display());
            checked += 1;
        }
    }
    assert!(checked >= 14, "only {checked} drills under chaos/");
    let in_docs = documented("Drill");
    assert!(!in_docs.is_empty(), "docs/chaos.md has whole drills");
    for (file, doc) in in_docs {
        let found = problems(&v, &doc);
        assert!(found.is_empty(), "{file}: {found:#?}\n{doc:#}");
    }
}

const MANIFEST: &str = "\
apiVersion: operator/v1
kind: Cluster
metadata:
  name: schema-test
spec:
  services:
    - name: schema-web
      image: busybox
";

/// `MANIFEST` with `lines` added to its service.
fn with_service_lines(lines: &str) -> String {
    format!("{MANIFEST}{lines}")
}

/// Whether `operator validate` accepts `text`, and its message.
fn loader_accepts_manifest(dir: &TempDir, text: &str) -> (bool, String) {
    let file = dir.write("m.yaml", text);
    let out = operator(&["validate", file.to_str().expect("UTF-8")], None);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn manifests_the_loader_refuses_for_their_shape_the_schema_refuses() {
    let v = validator("manifest");
    let dir = TempDir::new("schema-refused");
    let cases = [
        with_service_lines("      imagePullPolicy: always\n"),
        MANIFEST.replace("      image: busybox\n", ""),
        MANIFEST.replace("operator/v1", "operator/v2"),
        MANIFEST.replace("kind: Cluster", "kind: Pod"),
        MANIFEST.replace("  name: schema-test\n", ""),
        with_service_lines("      remediation: {policy: reboot}\n"),
        with_service_lines("      remediation: {window: 10}\n"),
        with_service_lines("      remediation: {escalateTo: pager}\n"),
        with_service_lines("      stopTimeout: 10\n"),
        with_service_lines("      restartPolicy: sometimes\n"),
        with_service_lines("      command: 5\n"),
        with_service_lines("      ports: \"80:80\"\n"),
        with_service_lines("      env: [A=1]\n"),
        with_service_lines("      env: {VERSION: 1.10}\n"),
        with_service_lines("      adopt: {spec: mine}\n"),
        with_service_lines("      adopt: {compose: {service: db}}\n"),
        with_service_lines("      healthcheck: {interval: 5s}\n"),
        with_service_lines("      resources: {cpus: true}\n"),
        format!(
            "{MANIFEST}  groups:\n    - name: g\n      members: [schema-web]\n      quorum: most\n"
        ),
        format!("{MANIFEST}  network: {{external: yes}}\n"),
        format!(
            "{MANIFEST}  checks:\n    - name: c\n      http: {{url: \"http://127.0.0.1:1/\", status: 999}}\n"
        ),
        format!(
            "{MANIFEST}  checks:\n    - name: c\n      healthy: up\n      severity: fatal\n  prometheus: {{url: \"http://127.0.0.1:1\"}}\n"
        ),
        format!("{MANIFEST}  agent: {{safetyMode: yolo}}\n"),
    ];
    for text in cases {
        let (accepted, message) = loader_accepts_manifest(&dir, &text);
        assert!(!accepted, "the loader accepts:\n{text}");
        let doc = documents(&text).remove(0);
        assert!(
            !v.is_valid(&doc),
            "the loader refuses ({message}) but the schema accepts:\n{text}"
        );
    }
}

#[test]
fn manifests_the_loader_accepts_the_schema_accepts() {
    let v = validator("manifest");
    let dir = TempDir::new("schema-accepted");
    let cases = [
        MANIFEST.to_string(),
        // Empty values where lists and mappings go are empty ones.
        with_service_lines("      ports:\n      env:\n      dependsOn: ~\n      remediation:\n"),
        "apiVersion: operator/v1\nkind: Cluster\nmetadata:\n  name: schema-test\nspec:\n".into(),
        // Numbers and booleans where text goes are read as written.
        MANIFEST.replace("schema-test", "12"),
        with_service_lines(
            "      aliases: [web1]\n      command: [sleep, 10, true]\n      networkMode: 5\n",
        ),
        with_service_lines(
            "      env: {PORT: 8080, DEBUG: true, NAME: x}\n      labels: {tier: 1}\n",
        ),
        // Each form a field takes.
        with_service_lines(
            "      restartPolicy: false\n      stopSignal: 9\n      stopTimeout: 1m30s\n",
        ),
        with_service_lines("      restartPolicy: unless-stopped\n      stopSignal: SIGINT\n"),
        with_service_lines("      command: sh -c 'echo hi'\n      entrypoint: [/bin/sh]\n"),
        with_service_lines("      adopt: true\n"),
        with_service_lines("      adopt: {spec: owned, compose: {project: p}}\n"),
        with_service_lines(
            "      resources: {cpus: 0.5, memory: 512m}\n      healthcheck: {test: [CMD, true], interval: 2s, retries: 3}\n",
        ),
        with_service_lines(
            "      remediation: {policy: restart, maxRestarts: 3, window: 10m, backoff: {initial: 1s, max: .5m}, stableAfter: 30s}\n",
        ),
        format!(
            "{MANIFEST}    - name: schema-db\n      image: busybox\n  groups:\n    - name: g\n      members: [schema-web, schema-db]\n      quorum: 1\n      live: {{timeout: 2m}}\n      replacements: {{max: 4, window: 10m}}\n  maxConcurrentDisruptions: 1\n"
        ),
        format!(
            "{MANIFEST}  network: {{name: schema-net, internal: true}}\n  agent: {{safetyMode: approve, maxTurns: 5}}\n"
        ),
    ];
    for text in cases {
        let (accepted, message) = loader_accepts_manifest(&dir, &text);
        assert!(accepted, "the loader refuses ({message}):\n{text}");
        let doc = documents(&text).remove(0);
        let found = problems(&v, &doc);
        assert!(
            found.is_empty(),
            "the loader accepts but the schema refuses: {found:#?}\n{text}"
        );
    }
}

/// A drill on the etcd example, with `fault` as its one fault.
fn drill(fault: &str) -> String {
    let manifest = repo("manifests/examples/etcd.yaml");
    format!(
        "apiVersion: operator/v1\nkind: Drill\nspec:\n  manifest: {}\n  cluster: etcd\n  faults:\n{fault}",
        manifest.display()
    )
}

#[test]
fn drills_are_refused_and_accepted_as_the_loader_does() {
    let v = validator("drill");
    let dir = TempDir::new("schema-drills");
    let check = |text: &str| {
        let file = dir.write("d.yaml", text);
        let out = operator(&["chaos", "validate", file.to_str().expect("UTF-8")], None);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), said)
    };
    let refused = [
        drill("    - target: {service: etcd1}\n      kind: explode\n"),
        drill("    - target: {service: etcd1}\n      kind: stop\n      duration: 30\n"),
        drill("    - target: {service: etcd1}\n      kind: kill\n      colour: red\n"),
        drill("    - kind: kill\n"),
        drill("    - target: {service: etcd1}\n      kind: kill\n  remediation: later\n"),
        drill("    - target: {service: etcd1}\n      kind: kill\n  trials: 2.5\n"),
        drill(
            "    - target: {service: etcd1}\n      kind: kill\n  workload: {canary: {kind: redis}}\n",
        ),
        drill("    - target: {service: etcd1}\n      kind: kill\n")
            .replace("kind: Drill", "kind: Cluster"),
    ];
    for text in refused {
        let (accepted, said) = check(&text);
        assert!(!accepted, "the loader accepts:\n{text}");
        let doc = documents(&text).remove(0);
        assert!(
            !v.is_valid(&doc),
            "the loader refuses ({said}) but the schema accepts:\n{text}"
        );
    }
    let accepted = [
        drill("    - target: {service: etcd1}\n      kind: kill\n      signal: 9\n"),
        drill("    - target: {service: etcd1}\n      kind: stop\n      start: 1s\n      duration: trial\n"),
        drill("    - target: {services: [etcd0, etcd1]}\n      kind: pause\n      duration: 2s\n  steadyState:\n    hold: 1s\n    probes:\n  cluster: etcd\n")
            .replacen("  cluster: etcd\n", "", 1),
        drill("    - target: {random: {among: [etcd0, etcd1], count: 1}}\n      kind: restart\n  trials: 2\n  seed: 7\n  remediation: baseline\n"),
    ];
    for text in accepted {
        let (ok, said) = check(&text);
        assert!(ok, "the loader refuses ({said}):\n{text}");
        let doc = documents(&text).remove(0);
        let found = problems(&v, &doc);
        assert!(
            found.is_empty(),
            "the loader accepts but the schema refuses: {found:#?}\n{text}"
        );
    }
}

#[test]
fn a_reader_that_closes_the_pipe_early_is_no_error() {
    for format in ["manifest", "drill"] {
        let mut child = Command::new(operator_bin())
            .args(["schema", format])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("operator starts");
        // Closed before the command writes, as `| head -0` would: its write fails.
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("operator ends");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
