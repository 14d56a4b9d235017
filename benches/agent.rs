//! Agent benchmark: the controller's own cost around a session, against the local stand-in
//! for the Claude API (scripted answers, simulated token counts and prompt caching).
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
//! - tokens per session (input, cache write, cache read, output), as the stand-in counts them:
//!   from the second session on, the system prompt and tools are read from the cache.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    for (i, t) in sessions_tokens.iter().enumerate().take(3) {
        println!("session {}: tokens {t}", i + 1);
    }
    if let Some(last) = sessions_tokens.last() {
        println!("session {}: tokens {last}", sessions_tokens.len());
    }
    println!("\nreproduce: cargo bench --bench agent -- {rounds}");
}
