//! Bad manifests of every kind give an error naming the file, the line and the field, exit
//! non-zero, and leave Docker untouched.

mod common;

use common::operator::{TempDir, operator};
use common::{BUSYBOX_IMAGE, docker_ok, free_port, require_docker, unique};

struct Case {
    name: &'static str,
    /// The services list (YAML, indented under `spec:`).
    services: String,
    /// Text of the line the error must point at (its first occurrence, or `nth` one).
    marker: &'static str,
    nth: usize,
    /// Must appear in the message (the field path, the value...).
    expect: &'static [&'static str],
}

fn service(name: &str, extra: &str) -> String {
    format!(
        "    - name: {name}\n      image: {BUSYBOX_IMAGE}\n      command: [\"sleep\", \"1000\"]\n{extra}"
    )
}

fn cases(c: &str) -> Vec<Case> {
    vec![
        Case {
            name: "unknown field",
            services: service(&format!("{c}-a"), "      imagePullPolicy: always\n"),
            marker: "imagePullPolicy",
            nth: 0,
            expect: &["imagePullPolicy"],
        },
        Case {
            name: "duplicate service names",
            services: service(&format!("{c}-a"), "") + &service(&format!("{c}-a"), ""),
            marker: "- name:",
            nth: 1,
            expect: &["spec.services[1]", "duplicate"],
        },
        Case {
            name: "dependency cycle",
            services: service(&format!("{c}-a"), &format!("      dependsOn: [{c}-b]\n"))
                + &service(&format!("{c}-b"), &format!("      dependsOn: [{c}-a]\n")),
            marker: "dependsOn",
            nth: 0,
            expect: &["dependsOn", "cycle"],
        },
        Case {
            name: "bad duration",
            services: service(
                &format!("{c}-a"),
                "      remediation:\n        window: 10 minutes\n",
            ),
            marker: "window:",
            nth: 0,
            expect: &["spec.services[0].remediation.window", "10 minutes"],
        },
        Case {
            name: "bad port",
            services: service(&format!("{c}-a"), "      ports: [\"80:abc\"]\n"),
            marker: "ports:",
            nth: 0,
            expect: &["spec.services[0].ports[0]", "80:abc"],
        },
        Case {
            name: "bad volume",
            services: service(&format!("{c}-a"), "      volumes: [\"relative/only\"]\n"),
            marker: "volumes:",
            nth: 0,
            expect: &["spec.services[0].volumes[0]", "relative/only"],
        },
        Case {
            name: "host port used twice",
            services: service(&format!("{c}-a"), "      ports: [\"18080:80\"]\n")
                + &service(&format!("{c}-b"), "      ports: [\"18080:8080\"]\n"),
            marker: "ports:",
            nth: 1,
            expect: &["spec.services[1].ports[0]", "18080"],
        },
        Case {
            name: "tab in the indentation",
            services: service(&format!("{c}-a"), "      env:\n        A: one\n\tB: two\n"),
            marker: "\tB: two",
            nth: 0,
            expect: &["invalid YAML: tab character at column 1"],
        },
        Case {
            name: "duplicate key",
            services: service(
                &format!("{c}-a"),
                "      env:\n        A: one\n        A: two\n",
            ),
            marker: "A: two",
            nth: 0,
            expect: &["spec.services[0].env.A: duplicate key \"A\""],
        },
        Case {
            name: "alias bomb",
            services: service(&format!("{c}-a"), "") + &alias_bomb_check(9),
            marker: "l5: &l5",
            nth: 0,
            expect: &["spec.checks[0].http.json.equals.l5[0]: ", "alias bomb"],
        },
        Case {
            name: "hexadecimal env value",
            services: service(&format!("{c}-a"), "      env: {MASK: 0x1F}\n"),
            marker: "MASK",
            nth: 0,
            expect: &["spec.services[0].env.MASK", "0x1F", "31", "quote it"],
        },
        Case {
            name: "invalid UTF-8",
            services: service(
                &format!("{c}-a"),
                &format!("      env: {{A: caf{NOT_UTF8}}}\n"),
            ),
            marker: NOT_UTF8,
            nth: 0,
            expect: &["invalid UTF-8 at byte offset", "\\xff"],
        },
    ]
}

/// Written as the byte 0xff, which is never UTF-8.
const NOT_UTF8: &str = "<0xff>";

/// An http check whose `equals` holds `levels` levels of nine aliases each ("billion
/// laughs": 9^levels expansions), the one field that takes any YAML value.
fn alias_bomb_check(levels: usize) -> String {
    let mut text = String::from(
        "  checks:\n    - name: bomb\n      http:\n        url: http://127.0.0.1:1/\n        json:\n          path: a\n          equals:\n            l0: &l0 [lol, lol]\n",
    );
    for level in 1..=levels {
        let below = format!("*l{}", level - 1);
        let items = [below.as_str(); 9].join(", ");
        text.push_str(&format!("            l{level}: &l{level} [{items}]\n"));
    }
    text
}

fn document(cluster: &str, services: &str) -> String {
    format!(
        "apiVersion: operator/v1\nkind: Cluster\nmetadata:\n  name: {cluster}\nspec:\n  network:\n    name: {cluster}-net\n    internal: true\n  services:\n{services}"
    )
}

#[test]
fn every_kind_of_bad_manifest_is_refused_with_file_line_and_field() {
    require_docker();
    for case in cases(&unique("bad")) {
        let cluster = unique("bad");
        let dir = TempDir::new(&cluster);
        let text = document(&cluster, &case.services);
        let file = dir.write("cluster.yaml", &text);
        if text.contains(NOT_UTF8) {
            let bytes = text
                .split(NOT_UTF8)
                .map(str::as_bytes)
                .collect::<Vec<_>>()
                .join(&0xff_u8);
            std::fs::write(&file, bytes).expect("write the bad byte");
        }
        let line = text
            .lines()
            .enumerate()
            .filter(|(_, l)| l.contains(case.marker))
            .nth(case.nth)
            .map(|(i, _)| i + 1)
            .unwrap_or_else(|| panic!("{}: marker {:?} not in the text", case.name, case.marker));
        let location = format!("{}:{line}", file.display());

        for args in [
            vec!["validate", file.to_str().unwrap()],
            vec!["run", file.to_str().unwrap(), "--once"],
            vec!["run", file.to_str().unwrap(), "--listen", "127.0.0.1:0"],
            vec!["plan", file.to_str().unwrap()],
        ] {
            let out = operator(&args, None);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success(),
                "{}: `operator {args:?}` succeeded",
                case.name
            );
            assert!(
                stderr.contains(&location),
                "{}: `operator {args:?}` does not point at {location}:\n{stderr}",
                case.name
            );
            for needle in case.expect {
                assert!(
                    stderr.contains(needle),
                    "{}: no {needle:?} in:\n{stderr}",
                    case.name
                );
            }
        }
        let left = docker_ok(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=operator.cluster={cluster}"),
        ]);
        assert!(
            left.trim().is_empty(),
            "{}: containers were created",
            case.name
        );
        let nets = docker_ok(&[
            "network",
            "ls",
            "-q",
            "--filter",
            &format!("name={cluster}-net"),
        ]);
        assert!(
            nets.trim().is_empty(),
            "{}: a network was created",
            case.name
        );
    }
}

#[test]
fn every_error_of_a_file_is_listed_in_one_run() {
    let cluster = unique("allerrs");
    let dir = TempDir::new(&cluster);
    // An unknown field and a wrong type in one service, bad values in the next.
    let text = document(
        &cluster,
        &(service(
            &format!("{cluster}-a"),
            "      imagePullPolicy: always\n      env: [A=1]\n",
        ) + &service(
            &format!("{cluster}-b"),
            "      ports: [\"80:abc\"]\n      remediation:\n        window: 10\n",
        )),
    );
    let file = dir.write("c.yaml", &text);
    let line = |marker: &str| {
        let n = text
            .lines()
            .position(|l| l.contains(marker))
            .unwrap_or_else(|| panic!("{marker:?} not in the text"));
        format!("{}:{}: ", file.display(), n + 1)
    };
    let out = operator(&["validate", file.to_str().unwrap()], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for (marker, field, said) in [
        (
            "imagePullPolicy",
            "spec.services[0].imagePullPolicy",
            "unknown field `imagePullPolicy`",
        ),
        ("env:", "spec.services[0].env", "invalid type: sequence"),
        ("80:abc", "spec.services[1].ports[0]", "\"80:abc\""),
        (
            "window:",
            "spec.services[1].remediation.window",
            "duration \"10\" has no unit",
        ),
    ] {
        let expected = format!("{}{field}: ", line(marker));
        assert!(
            stderr.contains(&expected) && stderr.contains(said),
            "no {expected:?} ... {said:?} in:\n{stderr}"
        );
    }
    assert!(stderr.contains("4 errors in the manifests"), "{stderr}");
}

#[test]
fn a_valid_manifest_validates_without_docker() {
    let cluster = unique("good");
    let dir = TempDir::new(&cluster);
    let file = dir.write(
        "c.yaml",
        &document(&cluster, &service(&format!("{cluster}-a"), "")),
    );
    // Point at an engine that does not exist: validate must not need one.
    let out = operator(
        &["validate", file.to_str().unwrap()],
        Some("unix:///nonexistent.sock"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&cluster));
}

/// The syntax verdict needs no Prometheus: with none answering, a query that does not parse
/// is one error naming the file, the query's line, the field and the parser's reason.
#[test]
fn validate_refuses_a_bad_query_with_no_prometheus_running() {
    let cluster = unique("badquery");
    let dir = TempDir::new(&cluster);
    let port = free_port();
    let text = document(&cluster, &service(&format!("{cluster}-a"), "")).replace(
        "  services:\n",
        &format!("  prometheus:\n    url: http://127.0.0.1:{port}\n  services:\n"),
    ) + "  checks:\n    - name: ok\n      healthy: up\n    - name: typo\n      expr: >-\n        sum by (instance)\n        (rate(up{job=\"a\"}[5m]) > 0\n";
    let file = dir.write("c.yaml", &text);
    let expr_line = text
        .lines()
        .position(|l| l.contains("expr: >-"))
        .expect("the expr line")
        + 1;
    for args in [vec!["validate"], vec!["validate", "--strict"]] {
        let mut args = args;
        args.push(file.to_str().unwrap());
        let out = operator(&args, Some("unix:///nonexistent.sock"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(
            lines,
            [
                format!(
                    "error: {}:{expr_line}: spec.checks[1].expr: invalid PromQL \"sum by (instance) (rate(up{{job=\"a\"}}[5m]) > 0\": unclosed left parenthesis",
                    file.display()
                )
                .as_str(),
                "1 error in the manifests"
            ],
            "{args:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn validate_with_prometheus_down_is_a_note_and_with_strict_an_error_at_its_url() {
    let cluster = unique("promdown");
    let dir = TempDir::new(&cluster);
    // A loopback port nobody listens on: connection refused at once.
    let port = free_port();
    let text = document(&cluster, &service(&format!("{cluster}-a"), "")).replace(
        "  services:\n",
        &format!("  prometheus:\n    url: http://127.0.0.1:{port}\n  services:\n"),
    ) + "  checks:\n    - name: up\n      healthy: up\n";
    let file = dir.write("c.yaml", &text);
    let url_line = text
        .lines()
        .position(|l| l.contains("url: http://127.0.0.1"))
        .expect("the url line")
        + 1;

    let out = operator(&["validate", file.to_str().unwrap()], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("note: ") && stderr.contains("PromQL parsed but not evaluated"),
        "{stderr}"
    );
    // Why it cannot be asked, in the words that say what to fix.
    assert!(stderr.contains("(connection refused"), "{stderr}");

    let out = operator(&["validate", "--strict", file.to_str().unwrap()], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    let prefix = format!(
        "error: {}:{url_line}: spec.prometheus.url: Prometheus at http://127.0.0.1:{port} cannot be asked",
        file.display()
    );
    assert!(lines[0].starts_with(&prefix), "{stderr}");
    assert_eq!(lines[1], "1 error in the manifests", "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
