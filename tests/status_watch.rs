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
