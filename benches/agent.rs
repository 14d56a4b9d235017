//! Agent benchmark: the controller's own cost around a session, against the local stand-in
//! for the Claude API (`tests/common/claude.rs`: scripted answers, simulated token counts and
//! prompt caching). No real model answers here.
//!
//! Needs a Docker engine and the local images (`scripts/setup.sh`). Run:
//!
//!     cargo bench --bench agent -- [ROUNDS]        (default 10)
//!
//! Each round SIGKILLs a container whose manifest says `policy: agent`; the scripted model runs
//! `docker ps`, then `docker start`, then ends its turn; the controller's re-check resolves the
//! ticket. Printed:
//! - drift to API: from the engine's `die` event to the first request reaching the stand-in;
//! - controller overhead per turn: time in the session outside the HTTP calls and commands
//!   (the session's own measure, from its log line);
//! - tokens per session (input, cache write, cache read, output), as the session logs them
//!   from the answers' `usage`. They are the stand-in's arithmetic, not a real model's
//!   count: one token per 4 bytes of the request's JSON (of the scripted answer's, for
//!   output), and prompt caching simulated at the request's `cache_control` marks. What
//!   they show is the shape (from the second session on, the system prompt and tools are
//!   read from the cache), not what a session would cost.
//!
//! Then the sandbox (docs/agent.md), side by side with running the same commands directly on
//! the host, the way every command ran before the toolbox (`sh -c` in the controller's
//! process tree, `docker` on the engine's socket):
//! - session start: the session's proxy and toolbox up and a first command (`docker version`,
//!   through the proxy) answered;
//! - per command: `true`, and `docker ps -q`, in the toolbox through the proxy against the
//!   same on the host; the overhead is the difference of the medians;
//! - controller memory: `operator run`'s resident set while 4 sessions run at once (each
//!   toolbox following `docker events` and `docker stats` through its proxy), against the
//!   same controller idle before.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[path = "../tests/common/mod.rs"]
mod common;
mod stats;

use common::claude::{ClaudeStandIn, Script, TEST_KEY};
use common::operator::wait_until;
use common::{BUSYBOX_IMAGE, Fixture, cluster_yaml, docker_ok};
use serde_json::{Value, json};
use stats::summary;

const LOOP: &str = r#"["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]"#;

fn engine_die_ns(name: &str, since: &str) -> Option<u128> {
    let out = docker_ok(&[
        "events",
        "--since",
        since,
        "--until",
        "0s",
        "--filter",
        &format!("container={name}"),
        "--filter",
        "event=die",
        "--format",
        "{{.TimeNano}}",
    ]);
    out.lines().last().and_then(|l| l.trim().parse().ok())
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .filter(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    let stand_in = ClaudeStandIn::start(Script::new());
    let url = stand_in.base_url();
    let f = Fixture::builder("benchagent")
        .manifest("cluster.yaml", |c| {
            let services = format!(
                "    - name: {c}-app\n      image: {BUSYBOX_IMAGE}\n      command: {LOOP}\n      remediation: {{policy: agent, maxRestarts: 1000, stableAfter: 1s, backoff: {{initial: 100ms, max: 200ms}}}}\n"
            );
            cluster_yaml(c, &services).replace(
                "spec:\n",
                "spec:\n  agent: {safetyMode: execute, sessionsPerTicket: 1000, sessionBackoff: 0s}\n",
            )
        })
        .env("ANTHROPIC_API_KEY", TEST_KEY)
        .env("ANTHROPIC_BASE_URL", &url)
        .args(&["--settle", "1s"])
        .start();
    let name = f.name("app");
    f.wait_running(&name, "the start");

    let mut to_api = Vec::new();
    let mut overhead_per_turn = Vec::new();
    let mut sessions_tokens: Vec<Value> = Vec::new();
    for round in 1..=rounds {
        let before = stand_in.requests().len();
        stand_in.push(
            Script::new()
                .tool_use(&[(
                    "shell",
                    json!({"command": "docker ps --format '{{.Names}}'"}),
                )])
                .tool_use(&[("shell", json!({"command": format!("docker start {name}")}))])
                .end_turn("Started it; it runs."),
        );
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .saturating_sub(1)
            .to_string();
        docker_ok(&["kill", "--signal", "KILL", &name]);
        let resolved = wait_until(Duration::from_secs(60), || {
            stand_in.requests().len() >= before + 3
                && f.tickets().iter().all(|t| t["status"] == "resolved")
        });
        assert!(
            resolved,
            "round {round}: not resolved; log:\n{}",
            f.operator.log()
        );
        let first = &stand_in.requests()[before];
        let first_ns = first
            .received
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        if let Some(die) = engine_die_ns(&name, &since) {
            to_api.push((first_ns.saturating_sub(die)) as f64 / 1e6);
        }
        // The session's own figures, from its last "ended" log line.
        let log = f.operator.log();
        if let Some(line) = log
            .lines()
            .rfind(|l| l.contains("agent session ended"))
            .and_then(|l| serde_json::from_str::<Value>(l).ok())
        {
            let turns = line["turns"].as_f64().unwrap_or(1.0).max(1.0);
            overhead_per_turn.push(line["overhead_ms"].as_f64().unwrap_or(0.0) / turns);
            sessions_tokens.push(json!({
                "input": line["input_tokens"],
                "output": line["output_tokens"],
                "cache_read": line["cache_read_tokens"],
                "cache_write": line["cache_write_tokens"],
            }));
        }
        println!("round {round}/{rounds}: resolved");
        std::thread::sleep(Duration::from_millis(1500));
    }
    println!();
    summary("drift (die event) -> first API request", to_api);
    summary("controller overhead per turn", overhead_per_turn);
    println!(
        "\ntokens per session: the stand-in's arithmetic (about 1 per 4 bytes of JSON, caching simulated), not a real model's count:"
    );
    for (i, t) in sessions_tokens.iter().enumerate().take(3) {
        println!("session {}: stand-in tokens {t}", i + 1);
    }
    if let Some(last) = sessions_tokens.last() {
        println!("session {}: stand-in tokens {last}", sessions_tokens.len());
    }
    drop(f);
    sandbox(rounds);
    controller_memory();
    println!("\nreproduce: cargo bench --bench agent -- {rounds}");
}

/// The engine's client, as the controller makes it.
async fn engine() -> bollard::Docker {
    operator::docker::connect(Duration::from_secs(10))
        .await
        .expect("the engine answers")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Session start and per-command overhead of the toolbox and its proxy, against the host.
fn sandbox(rounds: usize) {
    use operator::agent::proxy::{Proxy, ProxyConfig, Registry};
    use operator::agent::shell::{ChildEnv, EnvPolicy, ShellLimits};
    use operator::agent::toolbox::{self, Toolbox, ToolboxSpec};
    use operator::manifest::SafetyMode;
    use operator::tickets::{Journal, Store};

    let cluster_name = common::unique("benchbox");
    let dir = common::operator::TempDir::new(&cluster_name);
    let services = format!(
        "    - name: {cluster_name}-app\n      image: {BUSYBOX_IMAGE}\n      command: {LOOP}\n"
    );
    let manifest = dir.write("cluster.yaml", &cluster_yaml(&cluster_name, &services));
    let desired = operator::manifest::load(&[manifest]).expect("the bench's manifest");
    let cluster = desired.cluster(&cluster_name).expect("its cluster").clone();
    let db = dir.path().join("tickets.db");
    let store = Store::open(&db).expect("a ticket store");
    let journal = Journal::new(Arc::new(store), Arc::new(operator::metrics::Metrics::new()));
    let registry = Arc::new(Registry::default());
    let redact = ChildEnv::build(Vec::<(String, String)>::new(), &EnvPolicy::default());
    let limits = ShellLimits::default();
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let samples = rounds.max(10);
    let (mut start, mut in_true, mut in_ps) = (Vec::new(), Vec::new(), Vec::new());
    let (mut host_true, mut host_ps) = (Vec::new(), Vec::new());
    rt.block_on(async {
        let docker = engine().await;
        for i in 0..samples {
            let session = format!("bench-{i}-{}", std::process::id());
            let sockets = dir.path().join(&session);
            std::fs::create_dir_all(&sockets).unwrap();
            let began = Instant::now();
            let (events, mut drain) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(async move { while drain.recv().await.is_some() {} });
            let proxy = Proxy::start(ProxyConfig {
                session: session.clone(),
                listen: sockets.join(toolbox::SOCKET_NAME),
                socket_owner: Some((65534, 65534)),
                engine_socket: operator::docker::endpoint()
                    .strip_prefix("unix://")
                    .expect("the bench needs the engine on a unix socket")
                    .into(),
                docker: docker.clone(),
                mode: SafetyMode::Execute,
                cluster: cluster.clone(),
                journal: journal.clone(),
                secret_names: Vec::new(),
                secret_values: Vec::new(),
                protected: Vec::new(),
                registry: registry.clone(),
                events,
            })
            .await
            .expect("the proxy starts");
            std::os::unix::fs::chown(&sockets, Some(65534), Some(65534)).unwrap();
            let spec = ToolboxSpec::new(toolbox::DEFAULT_IMAGE, sockets.clone(), &db)
                .lifetime(Duration::from_secs(120));
            let tb = Toolbox::start(&docker, &session, &spec)
                .await
                .expect("the toolbox starts (scripts/setup.sh builds its image)");
            let first = tb
                .run(
                    "docker version --format '{{.Server.APIVersion}}'",
                    &limits,
                    &redact,
                )
                .await
                .expect("the first command");
            start.push(ms(began.elapsed()));
            assert_eq!(first.exit_code, Some(0), "{first:?}");
            for _ in 0..5 {
                let t = Instant::now();
                tb.run("true", &limits, &redact).await.expect("true");
                in_true.push(ms(t.elapsed()));
                let t = Instant::now();
                let out = tb.run("docker ps -q", &limits, &redact).await.expect("ps");
                in_ps.push(ms(t.elapsed()));
                assert_eq!(out.exit_code, Some(0), "{out:?}");
                let t = Instant::now();
                let ok = tokio::process::Command::new("sh")
                    .args(["-c", "true"])
                    .process_group(0)
                    .output()
                    .await
                    .expect("sh");
                host_true.push(ms(t.elapsed()));
                assert!(ok.status.success());
                let t = Instant::now();
                let ok = tokio::process::Command::new("sh")
                    .args(["-c", "docker ps -q"])
                    .process_group(0)
                    .output()
                    .await
                    .expect("sh");
                host_ps.push(ms(t.elapsed()));
                assert!(ok.status.success());
            }
            tb.remove().await;
            proxy.stop().await;
            let _ = std::fs::remove_dir_all(&sockets);
        }
    });
    println!();
    summary("session start: proxy + toolbox + 1st command", start);
    let a = summary("`true` in the toolbox", in_true);
    let b = summary("`true` on the host (sh -c, as before)", host_true);
    let c = summary("`docker ps -q` in the toolbox, via the proxy", in_ps);
    let d = summary("`docker ps -q` on the host, on the engine", host_ps);
    println!(
        "per-command overhead (p50 difference): `true` {:.1} ms ({:.1}x), `docker ps -q` {:.1} ms ({:.1}x)",
        a - b,
        a / b,
        c - d,
        c / d
    );
}

/// Resident memory of `pid` in kB (VmRSS).
fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The controller's resident set idle, and while 4 sessions run at once.
fn controller_memory() {
    let stand_in = ClaudeStandIn::start(Script::new());
    let url = stand_in.base_url();
    let f = Fixture::builder("benchmem")
        .manifest("cluster.yaml", |c| {
            let services: String = (0..4)
                .map(|i| format!(
                    "    - name: {c}-a{i}\n      image: {BUSYBOX_IMAGE}\n      command: {LOOP}\n      remediation: {{policy: agent}}\n"
                ))
                .collect();
            cluster_yaml(c, &services).replace(
                "spec:\n",
                "spec:\n  agent: {safetyMode: execute, sessionsPerTicket: 1, commandTimeout: 30s}\n",
            )
        })
        .env("ANTHROPIC_API_KEY", TEST_KEY)
        .env("ANTHROPIC_BASE_URL", &url)
        .args(&["--settle", "1s", "--agent-sessions", "4"])
        .start();
    let names: Vec<String> = (0..4).map(|i| f.name(&format!("a{i}"))).collect();
    for n in &names {
        f.wait_running(n, "the start");
    }
    std::thread::sleep(Duration::from_secs(3));
    let pid = f.operator.pid();
    let idle = rss_kb(pid).unwrap_or(0);
    // The stand-in answers requests in arrival order, whichever session sends them: the
    // four first requests get the command, the four second ones the end.
    let mut script = Script::new();
    for _ in &names {
        script = script.tool_use(&[(
            "shell",
            json!({"command": "(timeout 12 docker events >/dev/null &); timeout 12 docker stats >/dev/null; true"}),
        )]);
    }
    for _ in &names {
        script = script.end_turn("Looked.");
    }
    stand_in.push(script);
    for n in &names {
        docker_ok(&["kill", "--signal", "KILL", n]);
    }
    let label = format!(
        "label=operator.toolbox.db={}",
        operator::agent::toolbox::db_label(f.db())
    );
    let running = || docker_ok(&["ps", "-q", "--filter", &label]).lines().count();
    assert!(
        wait_until(Duration::from_secs(60), || running() == 4),
        "4 sessions did not run at once; log:\n{}",
        f.operator.log()
    );
    let mut peak = 0;
    let began = Instant::now();
    while began.elapsed() < Duration::from_secs(10) && running() == 4 {
        peak = peak.max(rss_kb(pid).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "controller resident memory: idle {:.1} MB, peak with 4 sessions running {:.1} MB",
        idle as f64 / 1024.0,
        peak as f64 / 1024.0
    );
}
