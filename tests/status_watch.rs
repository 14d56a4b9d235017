//! `operator status --watch`: the live view redraws with the services and the open tickets,
//! and ends quietly when its reader goes away; `operator healthcheck` asks the same controller.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::operator::operator_bin;
use common::{BUSYBOX_IMAGE, Fixture, docker_ok};

#[test]
fn the_live_view_redraws_the_services_and_the_open_tickets() {
    let manifest = |c: &str, policy: &str| {
        common::cluster_yaml(
            c,
            &format!(
                "    - name: {c}-web\n      image: {BUSYBOX_IMAGE}\n      command: [\"sleep\", \"3600\"]\n      remediation: {{policy: {policy}}}\n"
            ),
        )
    };
    // Created, then only observed: a kill stays a stopped container with an open ticket.
    let f = Fixture::builder("watch")
        .manifest("cluster.yaml", |c| manifest(c, "restart"))
        .run_once()
        .manifest("cluster.yaml", |c| manifest(c, "observe"))
        .start();
    let web = f.name("web");
    f.wait_running(&web, "the start");
    docker_ok(&["kill", &web]);
    assert!(
        common::operator::wait_until(Duration::from_secs(30), || f
            .ticket("stopped", &web)
            .is_some()),
        "no ticket for the kill: {:#?}",
        f.tickets()
    );

    let mut child = Command::new(operator_bin())
        .args([
            "status",
            f.dir.path().to_str().unwrap(),
            "--db",
            f.db().to_str().unwrap(),
            "--watch",
            "--interval",
            "200ms",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut frames, mut service_row, mut ticket_row) = (0, false, false);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    for line in lines {
        let line = line.unwrap();
        if line.starts_with("operator status, ") {
            frames += 1;
        }
        service_row |= line.contains(&web) && line.contains("exited");
        ticket_row |= line.starts_with('#') && line.contains("stopped") && line.contains("open");
        seen.push(line);
        if (frames >= 2 && service_row && ticket_row) || Instant::now() > deadline {
            break;
        }
    }
    // The reader goes away: the view ends quietly.
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        frames >= 2 && service_row && ticket_row,
        "frames {frames}, service row {service_row}, ticket row {ticket_row}:\n{}",
        seen.join("\n")
    );
    assert!(status.success(), "{status}: {err}");
    assert!(err.is_empty(), "{err}");

    // The controller answers its healthcheck (what an image's HEALTHCHECK runs).
    let listen = f.operator.listen_addr().expect("the controller's address");
    let out = common::operator::operator(&["healthcheck", "--listen", &listen], None);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.starts_with("healthy: "),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A stand-in Prometheus: answers every query with no series while `answering` is set, then
/// accepts connections and never answers (a Prometheus that hangs).
fn hanging_prometheus() -> (u16, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let answering = std::sync::Arc::new(AtomicBool::new(true));
    let flag = answering.clone();
    std::thread::spawn(move || {
        let mut hung = Vec::new();
        for mut socket in listener.incoming().flatten() {
            if !flag.load(Ordering::SeqCst) {
                hung.push(socket);
                continue;
            }
            let mut request = Vec::new();
            let mut buf = [0; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let body = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
            let _ = write!(
                socket,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, answering)
}

#[test]
fn the_live_view_is_drawn_only_once_it_is_fetched() {
    common::require_docker();
    let dir = common::operator::TempDir::new(&common::unique("watch-fetch"));
    let (port, answering) = hanging_prometheus();
    let cluster = common::unique("watchfetch");
    let manifest = dir.write(
        "cluster.yaml",
        &format!(
            "apiVersion: operator/v1\nkind: Cluster\nmetadata:\n  name: {cluster}\nspec:\n  prometheus:\n    url: http://127.0.0.1:{port}\n    timeout: 10m\n  checks:\n    - name: nothing-down\n      expr: up == 0\n"
        ),
    );
    let mut child = Command::new(operator_bin())
        .args([
            "status",
            manifest.to_str().unwrap(),
            "--watch",
            "--interval",
            "100ms",
        ])
        // No ticket database: the view shows the checks without tickets.
        .env("HOME", dir.path())
        .env_remove("OPERATOR_DB")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    // The first view, whole; then Prometheus hangs.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !seen.iter().any(|l: &String| l.contains("nothing-down")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("no first view:\n{}", seen.join("\n")),
        }
    }
    answering.store(false, std::sync::atomic::Ordering::SeqCst);
    // Whatever comes while the next view waits for Prometheus: nothing, or a whole view.
    // A view begun before its data came (its title alone) is a blank screen on a terminal.
    let mut after = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(3)) {
        after.push(line);
    }
    let _ = child.kill();
    let _ = child.wait();
    // Views drawn before the hang are whole; the last one must be too.
    let last_title = after
        .iter()
        .rposition(|l| l.starts_with("operator status, "));
    if let Some(at) = last_title {
        assert!(
            after[at..].iter().any(|l| l.contains("nothing-down")),
            "a view was begun before Prometheus answered:\n{}",
            after.join("\n")
        );
    }
}
