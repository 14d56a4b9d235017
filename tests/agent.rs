//! The agent end to end: a real controller on a real engine pages the agent through the
//! local stand-in for the Claude API (the only stand-in the tests use), the agent's commands
//! really run, and only the controller's own re-check resolves the ticket.

mod common;

use std::time::Duration;

use serde_json::{Value, json};

use common::claude::{ClaudeStandIn, Script, TEST_KEY};
use common::operator::{is_running, operator, wait_until};
use common::{BUSYBOX_IMAGE, Fixture, FixtureBuilder, LOOP, cluster_yaml, docker_ok};

/// A secret in a manifest's env: `docker inspect` shows it, the model and the audit must not.
const MANIFEST_SECRET: &str = "manifest-secret-0123456789";

/// One service `{cluster}-app` under `policy`, and the agent block.
fn manifest(cluster: &str, remediation: &str, agent: &str) -> String {
    let services = format!(
        "    - name: {cluster}-app\n      image: {BUSYBOX_IMAGE}\n      command: {LOOP}\n      env: {{DB_PASSWORD: \"{MANIFEST_SECRET}\"}}\n      remediation: {remediation}\n"
    );
    cluster_yaml(cluster, &services).replace("spec:\n", &format!("spec:\n  agent: {agent}\n"))
}

/// A fixture whose controller pages the agent through `stand_in`.
fn paging(prefix: &str, stand_in: &ClaudeStandIn) -> FixtureBuilder {
    Fixture::builder(prefix)
        .env("ANTHROPIC_API_KEY", TEST_KEY)
        .env("ANTHROPIC_BASE_URL", &stand_in.base_url())
}

fn with_agent(prefix: &str, stand_in: &ClaudeStandIn, remediation: &str, agent: &str) -> Fixture {
    let remediation = remediation.to_string();
    let agent = agent.to_string();
    let f = paging(prefix, stand_in)
        .manifest("cluster.yaml", move |c| manifest(c, &remediation, &agent))
        // A variable a configuration marks secret: the agent's commands must not see it.
        .env("TEST_DB_PASSWORD", "hunter2-not-for-the-agent")
        .args(&["--settle", "1s"])
        .resync("2s")
        .start();
    f.wait_running(&f.name("app"), "the start");
    f
}

fn audit_json(f: &Fixture, args: &[&str]) -> Value {
    let db = f.db().to_str().unwrap().to_string();
    let mut all: Vec<&str> = vec!["audit"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--db", &db, "--json"]);
    let out = operator(&all, None);
    assert!(out.status.success(), "operator {all:?}: {out:?}");
    serde_json::from_slice(&out.stdout).expect("audit --json")
}

#[test]
fn a_killed_container_under_policy_agent_is_started_by_the_agent_and_resolved_by_the_recheck() {
    let stand_in = ClaudeStandIn::start(Script::new());
    let f = with_agent(
        "agentfix",
        &stand_in,
        "{policy: agent}",
        "{safetyMode: execute, sessionBackoff: 0s}",
    );
    let name = f.name("app");
    let script = Script::new()
        .tool_use(&[
            ("shell", json!({"command": "env"})),
            (
                "shell",
                json!({"command": format!("docker inspect {name}")}),
            ),
        ])
        .tool_use(&[("shell", json!({"command": format!("docker start {name}")}))])
        .end_turn("Started the container; it is running again.");
    let ids = script.tool_use_ids();
    stand_in.push(script);

    docker_ok(&["kill", "--signal", "KILL", &name]);
    assert!(
        wait_until(Duration::from_secs(60), || f
            .ticket("stopped", &name)
            .is_some_and(|t| t["status"] == "resolved")),
        "the ticket was not resolved: {:#?}; log:\n{}",
        f.tickets(),
        f.operator.log()
    );
    assert!(is_running(&name, None), "the agent's docker start ran");
    let ticket = f.ticket("stopped", &name).unwrap();
    assert_eq!(ticket["resolved_by"], "agent", "{ticket:#}");

    // Every request reached the API as the real one requires (the stand-in refuses anything
    // else), with the key only in its header.
    let requests = stand_in.requests();
    assert_eq!(requests.len(), 3, "{requests:#?}");
    for r in &requests {
        assert!(r.rejected.is_none(), "rejected: {:?}", r.rejected);
        assert_eq!(r.header("x-api-key"), Some(TEST_KEY));
        assert!(
            !r.body_text().contains(TEST_KEY),
            "the key is in a request body"
        );
        assert!(
            !r.body_text().contains(MANIFEST_SECRET),
            "a manifest secret reached the model"
        );
    }
    assert!(
        requests[1].body_text().contains("DB_PASSWORD"),
        "docker inspect's answer was sent (with the value masked)"
    );
    // The command's environment held neither the key nor the secret-marked variable.
    let env_result = requests[1].json.as_ref().unwrap()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .unwrap()["content"][0]["content"]
        .to_string();
    assert!(env_result.contains("PATH="), "{env_result}");
    assert!(!env_result.contains(TEST_KEY), "{env_result}");
    assert!(!env_result.contains("hunter2"), "{env_result}");

    // The audit: the session, every step in order, calls linked to results by tool_use id.
    let sessions = audit_json(&f, &["list", "--ticket", &ticket["id"].to_string()]);
    let sessions = sessions.as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{sessions:#?}");
    let id = sessions[0]["id"].as_str().unwrap().to_string();
    let shown = audit_json(&f, &["show", &id]);
    let entries = shown["entries"].as_array().unwrap();
    let calls: Vec<&str> = entries
        .iter()
        .filter(|e| e["kind"] == "tool-call")
        .filter_map(|e| e["tool_use_id"].as_str())
        .collect();
    let results: Vec<&str> = entries
        .iter()
        .filter(|e| e["kind"] == "tool-result")
        .filter_map(|e| e["tool_use_id"].as_str())
        .collect();
    assert_eq!(calls, ids.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(results, calls, "each call answered, in order");
    let seqs: Vec<i64> = entries.iter().filter_map(|e| e["seq"].as_i64()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(shown["session"]["stop_reason"], "end_turn", "{shown:#}");
    assert!(
        wait_until(
            Duration::from_secs(20),
            || audit_json(&f, &["show", &id])["session"]["verdict"] == "resolved"
        ),
        "the session's verdict is the re-check's: {:#}",
        audit_json(&f, &["show", &id])
    );
    // No file or row holds the key or the secret.
    let db_bytes = std::fs::read(f.db()).unwrap();
    let needle = TEST_KEY.as_bytes();
    assert!(
        !db_bytes.windows(needle.len()).any(|w| w == needle),
        "the key is in the database"
    );
    // Only this test's own session files: the folder beside the db is shared by every
    // fixture running in parallel, whose atomic writes come and go as `.X.json.tmp`.
    let sessions_dir = f.db().parent().unwrap().join("sessions");
    let own = audit_json(&f, &["list"]);
    let own: Vec<&str> = own
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert!(own.contains(&id.as_str()), "{own:?}");
    for session in own {
        let file = sessions_dir.join(format!("{session}.json"));
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(!text.contains(TEST_KEY), "the key is in {}", file.display());
        assert!(
            !text.contains("hunter2"),
            "the secret is in {}",
            file.display()
        );
        assert!(
            !text.contains(MANIFEST_SECRET),
            "a manifest secret is in {}",
            file.display()
        );
    }
}

#[test]
fn a_model_that_only_says_fixed_resolves_nothing_and_the_ticket_escalates_at_its_budget() {
    let stand_in = ClaudeStandIn::start(Script::new());
    let f = with_agent(
        "agentclaim",
        &stand_in,
        "{policy: agent}",
        "{safetyMode: execute, sessionsPerTicket: 2, sessionBackoff: 0s}",
    );
    let name = f.name("app");
    stand_in.push(
        Script::new()
            .end_turn("Fixed it.")
            .end_turn("Fixed it again."),
    );
    docker_ok(&["kill", "--signal", "KILL", &name]);
    assert!(
        wait_until(Duration::from_secs(60), || f
            .ticket("stopped", &name)
            .is_some_and(|t| t["status"] == "escalated")),
        "not escalated after two sessions that did nothing: {:#?}; log:\n{}",
        f.tickets(),
        f.operator.log()
    );
    assert!(!is_running(&name, None), "nobody started it");
    assert_eq!(stand_in.requests().len(), 2, "two sessions, one turn each");
    let ticket = f.ticket("stopped", &name).unwrap();
    let sessions = audit_json(&f, &["list", "--ticket", &ticket["id"].to_string()]);
    assert_eq!(sessions.as_array().unwrap().len(), 2, "{sessions:#}");
}

#[test]
fn escalate_to_agent_pages_the_agent_only_once_the_restart_budget_is_spent() {
    let stand_in = ClaudeStandIn::start(Script::new());
    let f = paging("agentesc", &stand_in)
        .manifest("cluster.yaml", |c| {
            let services = format!(
                "    - name: {c}-app\n      image: {BUSYBOX_IMAGE}\n      command: [\"sh\", \"-c\", \"sleep 0.2; exit 1\"]\n      remediation: {{maxRestarts: 2, escalateTo: agent, backoff: {{initial: 100ms, max: 200ms}}}}\n"
            );
            cluster_yaml(c, &services)
                .replace("spec:\n", "spec:\n  agent: {safetyMode: observe, sessionsPerTicket: 1}\n")
        })
        .args(&["--settle", "1s"])
        .resync("1s")
        .start();
    let name = f.name("app");
    stand_in.push(
        Script::new()
            .end_turn("It exits with status 1 by design; a person must change its command."),
    );
    assert!(
        wait_until(Duration::from_secs(60), || f.tickets().iter().any(
            |t| t["service"] == name.as_str() && t["status"] == "escalated"
        )),
        "never escalated: {:#?}; log:\n{}",
        f.tickets(),
        f.operator.log()
    );
    let ticket = f
        .tickets()
        .into_iter()
        .find(|t| t["service"] == name.as_str())
        .unwrap();
    let timeline = f.operator.ticket_json(ticket["id"].as_i64().unwrap())["timeline"]
        .as_array()
        .unwrap()
        .clone();
    let actors: Vec<&str> = timeline
        .iter()
        .filter(|e| e["kind"] == "action-started")
        .filter_map(|e| e["actor"].as_str())
        .collect();
    assert_eq!(
        actors,
        vec!["controller", "controller", "agent"],
        "two restarts, then the agent: {timeline:#?}"
    );
    assert_eq!(stand_in.requests().len(), 1);
}

/// The `tool_result` blocks the model received in request `n` (0-based), as JSON.
fn results_sent(stand_in: &ClaudeStandIn, n: usize) -> Vec<Value> {
    let requests = stand_in.requests();
    let body = requests[n].json.clone().unwrap();
    let last = body["messages"].as_array().unwrap().last().unwrap().clone();
    last["content"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "tool_result")
        .cloned()
        .collect()
}

#[test]
fn observe_runs_the_command_but_its_proxy_refuses_the_mutation_and_tells_the_model_why() {
    let stand_in = ClaudeStandIn::start(Script::new());
    let f = with_agent(
        "agentobs",
        &stand_in,
        "{policy: agent}",
        "{safetyMode: observe, sessionsPerTicket: 1}",
    );
    let name = f.name("app");
    stand_in.push(
        Script::new()
            .tool_use(&[("shell", json!({"command": format!("docker start {name}")}))])
            .end_turn("I may not start it in observe mode."),
    );
    docker_ok(&["kill", "--signal", "KILL", &name]);
    assert!(
        wait_until(Duration::from_secs(60), || stand_in.requests().len() >= 2),
        "the session did not go on after the refusal; log:\n{}",
        f.operator.log()
    );
    let results = results_sent(&stand_in, 1);
    assert_eq!(results.len(), 1, "{results:#?}");
    // The command ran in the toolbox; the docker CLI printed the proxy's refusal.
    let shell: Value = serde_json::from_str(results[0]["content"].as_str().unwrap()).unwrap();
    assert_eq!(shell["exit_code"], 1, "{shell:#}");
    let stderr = shell["stderr"].as_str().unwrap();
    assert!(
        stderr.contains("refused by operator") && stderr.contains("observe"),
        "{stderr}"
    );
    assert!(!is_running(&name, None), "observe ran a mutating command");
}

#[test]
fn approve_runs_a_command_only_after_a_person_approves_it_and_never_after_a_reject() {
    let stand_in = ClaudeStandIn::start(Script::new());
    let f = with_agent(
        "agentapp",
        &stand_in,
        "{policy: agent}",
        "{safetyMode: approve, sessionsPerTicket: 5, sessionBackoff: 0s}",
    );
    let name = f.name("app");
    let db = f.db().to_str().unwrap().to_string();
    let decide = |verb: &str, extra: &[&str]| {
        let ticket = f.ticket("stopped", &name)?;
        let id = ticket["id"].to_string();
        let mut args = vec!["tickets", verb, id.as_str(), "--db", db.as_str()];
        args.extend_from_slice(extra);
        operator(&args, None).status.success().then_some(())
    };

    // Rejected: the command never runs, and the model reads the reason.
    stand_in.push(
        Script::new()
            .tool_use(&[("shell", json!({"command": format!("docker start {name}")}))])
            .end_turn("A person declined; leaving it."),
    );
    docker_ok(&["kill", "--signal", "KILL", &name]);
    assert!(
        wait_until(Duration::from_secs(60), || decide(
            "reject",
            &["--reason", "not during the freeze"]
        )
        .is_some()),
        "nothing waited for a decision; log:\n{}",
        f.operator.log()
    );
    assert!(
        wait_until(Duration::from_secs(30), || stand_in.requests().len() >= 2),
        "the session did not go on after the reject"
    );
    let text = results_sent(&stand_in, 1)[0]["content"].to_string();
    assert!(text.contains("not during the freeze"), "{text}");
    assert!(!is_running(&name, None), "a rejected command ran");

    // Approved: it runs, and the controller's re-check resolves the ticket.
    stand_in.push(
        Script::new()
            .tool_use(&[("shell", json!({"command": format!("docker start {name}")}))])
            .end_turn("Started after approval."),
    );
    assert!(
        wait_until(Duration::from_secs(60), || decide("approve", &[]).is_some()),
        "the second session never asked; log:\n{}",
        f.operator.log()
    );
    assert!(
        wait_until(Duration::from_secs(60), || f
            .ticket("stopped", &name)
            .is_some_and(
                |t| t["status"] == "resolved" && t["resolved_by"] == "agent"
            )),
        "not resolved by the agent after the approval: {:#?}; log:\n{}",
        f.tickets(),
        f.operator.log()
    );
    assert!(is_running(&name, None));
}

#[test]
fn the_proxy_refuses_removing_a_managed_container_or_volume_even_in_execute() {
    let stand_in = ClaudeStandIn::start(Script::new());
    let volume_holder = common::unique("agentvol");
    let volume = format!("{volume_holder}-data");
    let f = paging("agentvol", &stand_in)
        .manifest("cluster.yaml", |c| {
            let services = format!(
                "    - name: {c}-app\n      image: {BUSYBOX_IMAGE}\n      command: {LOOP}\n      volumes: [\"{volume}:/data\"]\n      remediation: {{policy: agent}}\n"
            );
            cluster_yaml(c, &services)
                .replace("spec:\n", "spec:\n  agent: {safetyMode: execute, sessionsPerTicket: 1}\n")
        })
        .also_clean(format!("operator.test.volume={volume}"))
        .start();
    let name = f.name("app");
    f.wait_running(&name, "the start");
    stand_in.push(
        Script::new()
            .tool_use(&[(
                "shell",
                json!({"command": format!("docker rm -f {name} && docker volume rm {volume}")}),
            )])
            .end_turn("Tried to start clean."),
    );
    docker_ok(&["kill", "--signal", "KILL", &name]);
    assert!(
        wait_until(Duration::from_secs(60), || stand_in.requests().len() >= 2),
        "the session did not go on; log:\n{}",
        f.operator.log()
    );
    let result = &results_sent(&stand_in, 1)[0];
    let shell: Value = serde_json::from_str(result["content"].as_str().unwrap()).unwrap();
    assert_eq!(shell["exit_code"], 1, "{shell:#}");
    let why = shell["stderr"].as_str().unwrap();
    assert!(why.contains("refused by operator"), "{why}");
    assert!(
        common::docker(&["inspect", &name]).status.success(),
        "the managed container was removed"
    );
    assert!(
        docker_ok(&["volume", "ls", "-q"])
            .lines()
            .any(|v| v == volume),
        "the managed volume was removed"
    );
    let _ = common::docker(&["rm", "-f", &name]);
    let _ = common::docker(&["volume", "rm", &volume]);
}

/// The text of every `tool_result` the model received in request `n`, in order, with
/// `is_error`.
fn results_text(stand_in: &ClaudeStandIn, n: usize) -> Vec<(String, bool)> {
    results_sent(stand_in, n)
        .iter()
        .map(|r| {
            let text = match &r["content"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (text, r["is_error"] == true)
        })
        .collect()
}

#[test]
fn tool_calls_are_bounded_unknown_tools_refused_repeats_guarded_and_every_call_answered() {
    let stand_in = ClaudeStandIn::start(Script::new());
    let f = with_agent(
        "agenttools",
        &stand_in,
        "{policy: agent}",
        "{safetyMode: execute, sessionsPerTicket: 1, commandTimeout: 1s}",
    );
    let name = f.name("app");
    let marker = common::unique("agenttimeout").replace('-', "");
    let same = json!({"command": "echo same"});
    stand_in.push(
        Script::new()
            // Parallel calls: an unknown tool, a command past its timeout (with a child in
            // its group), and a read-only tool.
            .tool_use(&[
                ("frobnicate", json!({})),
                ("shell", json!({"command": format!("sleep 30 & exec sleep 31 # {marker}")})),
                ("cluster_status", json!({})),
            ])
            // Megabytes of output.
            .tool_use(&[("shell", json!({"command": "head -c 5000000 /dev/zero | tr '\\0' a"}))])
            // The same call three times: the third is refused.
            .tool_use(&[("shell", same.clone())])
            .tool_use(&[("shell", same.clone())])
            .tool_use(&[("shell", same)])
            // Cut at max_tokens in the middle of a call: answered as not run.
            .message(
                vec![
                    json!({"type": "text", "text": "Starting"}),
                    json!({"type": "tool_use", "id": "toolu_cut_1", "name": "shell", "input": {"command": format!("docker start {name}")}}),
                ],
                "max_tokens",
                None,
            )
            .end_turn("Done looking."),
    );
    docker_ok(&["kill", "--signal", "KILL", &name]);
    assert!(
        wait_until(Duration::from_secs(90), || stand_in.requests().len() >= 7),
        "the session did not reach its end: {} requests; log:\n{}",
        stand_in.requests().len(),
        f.operator.log()
    );
    for r in stand_in.requests() {
        assert!(
            r.rejected.is_none(),
            "the API would refuse: {:?}",
            r.rejected
        );
    }
    let parallel = results_text(&stand_in, 1);
    assert_eq!(parallel.len(), 3, "{parallel:#?}");
    assert!(
        parallel[0].1 && parallel[0].0.contains("unknown tool"),
        "{parallel:?}"
    );
    let timed_out: Value = serde_json::from_str(&parallel[1].0).expect("shell JSON");
    assert_eq!(timed_out["timed_out"], true, "{timed_out:#}");
    assert!(
        !parallel[2].1 && parallel[2].0.contains(&name),
        "cluster_status answers: {:?}",
        parallel[2]
    );
    // The whole group is gone: nothing of the timed-out command survives.
    let left = std::process::Command::new("pgrep")
        .args(["-f", &marker])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&left.stdout).trim().is_empty(),
        "processes of the timed-out command survive"
    );

    let big = &results_text(&stand_in, 2)[0].0;
    assert!(
        big.len() < 300_000,
        "output not capped: {} bytes",
        big.len()
    );
    assert!(big.contains("cut"), "the cut is not stated");

    assert!(!results_text(&stand_in, 3)[0].1);
    assert!(!results_text(&stand_in, 4)[0].1);
    let third = &results_text(&stand_in, 5)[0];
    assert!(third.1 && third.0.contains("already made"), "{third:?}");

    let cut = results_text(&stand_in, 6);
    assert!(cut[0].1 && cut[0].0.contains("max_tokens"), "{cut:?}");
    assert!(!is_running(&name, None), "a call cut at max_tokens ran");
}

#[test]
fn an_overloaded_api_is_retried_a_paused_turn_resent_and_a_refusal_ends_the_session_unresolved() {
    let stand_in = ClaudeStandIn::start(Script::new());
    let f = with_agent(
        "agentretry",
        &stand_in,
        "{policy: agent}",
        "{safetyMode: execute, sessionsPerTicket: 1}",
    );
    let name = f.name("app");
    stand_in.push(
        Script::new()
            .overloaded()
            // A paused long turn is sent back as it is (its server block unchanged).
            .pause_turn()
            .refusal("I will not act on this cluster."),
    );
    docker_ok(&["kill", "--signal", "KILL", &name]);
    assert!(
        wait_until(Duration::from_secs(60), || f
            .ticket("stopped", &name)
            .is_some_and(|t| t["status"] == "escalated")),
        "not escalated after a refused session: {:#?}; log:\n{}",
        f.tickets(),
        f.operator.log()
    );
    let requests = stand_in.requests();
    assert_eq!(requests.len(), 3, "529, the retry, then after the pause");
    assert!(
        requests.iter().all(|r| r.rejected.is_none()),
        "the API would refuse: {:?}",
        requests.iter().map(|r| &r.rejected).collect::<Vec<_>>()
    );
    let resent = requests[2].json.as_ref().unwrap()["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        resent["role"], "assistant",
        "the paused turn is sent back: {resent:#}"
    );
    assert_eq!(
        resent["content"][0]["type"], "server_tool_use",
        "{resent:#}"
    );
    let ticket = f.ticket("stopped", &name).unwrap();
    let sessions = audit_json(&f, &["list", "--ticket", &ticket["id"].to_string()]);
    let session = &sessions.as_array().unwrap()[0];
    assert_eq!(session["stop_reason"], "refusal", "{session:#}");
    assert_eq!(
        session["request_ids"].as_array().map(Vec::len),
        Some(3),
        "every attempt's request id: {session:#}"
    );
}

/// The escalation entry of a ticket's timeline, with its reason.
fn escalation(f: &Fixture, ticket: &Value) -> Value {
    let shown = f.operator.ticket_json(ticket["id"].as_i64().unwrap());
    shown["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "escalated")
        .cloned()
        .unwrap_or_else(|| panic!("no escalation entry: {shown:#}"))
}

#[test]
fn a_malformed_answer_and_a_full_context_window_end_their_sessions_and_the_escalation_says_why() {
    let stand_in = ClaudeStandIn::start(Script::new());
    let f = with_agent(
        "agentbroken",
        &stand_in,
        "{policy: agent}",
        "{safetyMode: execute, sessionsPerTicket: 2, sessionBackoff: 0s}",
    );
    let name = f.name("app");
    stand_in.push(
        Script::new()
            // Not retried: an answer that is not the API's JSON ends the session.
            .malformed("{\"type\": \"message\", \"content\": [")
            .context_window_exceeded(),
    );
    docker_ok(&["kill", "--signal", "KILL", &name]);
    assert!(
        wait_until(Duration::from_secs(60), || f
            .ticket("stopped", &name)
            .is_some_and(|t| t["status"] == "escalated")),
        "not escalated after two broken sessions: {:#?}; log:\n{}",
        f.tickets(),
        f.operator.log()
    );
    assert_eq!(stand_in.requests().len(), 2, "neither answer was retried");
    let ticket = f.ticket("stopped", &name).unwrap();
    let sessions = audit_json(&f, &["list", "--ticket", &ticket["id"].to_string()]);
    let mut stops: Vec<String> = sessions
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stop_reason"].as_str().unwrap_or("?").to_string())
        .collect();
    stops.sort();
    assert_eq!(
        stops,
        ["api-error", "model_context_window_exceeded"],
        "{sessions:#}"
    );
    let escalated = escalation(&f, &ticket);
    let last = escalated["detail"]["last_session"].as_str().unwrap_or("");
    assert!(last.contains("context window"), "{escalated:#}");
    assert_eq!(escalated["detail"]["reason"], "agent sessions spent");
}

#[test]
fn the_hourly_token_budget_escalates_with_its_reason_instead_of_paging_again() {
    let stand_in = ClaudeStandIn::start(Script::new());
    let f = paging("agenthourly", &stand_in)
        .manifest("cluster.yaml", |c| {
            manifest(
                c,
                "{policy: agent}",
                "{safetyMode: execute, sessionsPerTicket: 3, sessionBackoff: 0s}",
            )
        })
        // One session's tokens spend it: the second page must not reach the API.
        .args(&["--settle", "1s", "--agent-hourly-tokens", "100"])
        .resync("2s")
        .start();
    let name = f.name("app");
    f.wait_running(&name, "the start");
    stand_in.push(Script::new().end_turn("Fixed it.").end_turn("never sent"));
    docker_ok(&["kill", "--signal", "KILL", &name]);
    assert!(
        wait_until(Duration::from_secs(60), || f
            .ticket("stopped", &name)
            .is_some_and(|t| t["status"] == "escalated")),
        "not escalated with the budget spent: {:#?}; log:\n{}",
        f.tickets(),
        f.operator.log()
    );
    assert_eq!(stand_in.requests().len(), 1, "paged past the budget");
    let ticket = f.ticket("stopped", &name).unwrap();
    let escalated = escalation(&f, &ticket);
    assert_eq!(
        escalated["detail"]["reason"], "agent token budget spent",
        "{escalated:#}"
    );
    assert!(
        escalated["detail"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("of 100 tokens in the last hour")),
        "{escalated:#}"
    );
}

/// A fatal answer from the API (`script`) stops all dispatching at once and says so.
fn a_fatal_answer_stops_dispatching(prefix: &str, script: Script) {
    let stand_in = ClaudeStandIn::start(Script::new());
    let f = with_agent(
        prefix,
        &stand_in,
        "{policy: agent}",
        "{safetyMode: execute, sessionsPerTicket: 3, sessionBackoff: 0s}",
    );
    let name = f.name("app");
    stand_in.push(script.end_turn("never sent"));
    docker_ok(&["kill", "--signal", "KILL", &name]);
    assert!(
        wait_until(Duration::from_secs(60), || f
            .operator
            .metric("operator_agent_dispatching")
            == Some(0.0)),
        "dispatching did not stop; log:\n{}",
        f.operator.log()
    );
    // Nothing is retried or dispatched again, however often the controller looks (several
    // resyncs, every 2 s; a stalled loop fails here), and no attempt is spent on an agent
    // that cannot serve: the ticket waits for a person.
    f.operator.wait_resyncs(2);
    assert_eq!(stand_in.requests().len(), 1, "the spend limit was retried");
    let ticket = f.ticket("stopped", &name).unwrap();
    assert_eq!(ticket["status"], "open", "{ticket:#}");
    assert_eq!(
        ticket["actions"], 1,
        "attempts spent on a stopped agent: {ticket:#}"
    );
    let shown = f.operator.ticket_json(ticket["id"].as_i64().unwrap());
    assert!(
        shown["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["detail"]["note"]
                .as_str()
                .is_some_and(|n| n.contains("dispatching stopped"))),
        "the ticket does not say why: {shown:#}"
    );
    assert_eq!(
        f.operator.served_metric("operator_agent_dispatching"),
        0.0,
        "dispatching did not stop; log:\n{}",
        f.operator.log()
    );
}

#[test]
fn a_spend_limit_stops_all_dispatching_at_once_and_says_so() {
    a_fatal_answer_stops_dispatching("agentspend", Script::new().spend_limit());
}

#[test]
fn a_refused_key_stops_all_dispatching_at_once_and_says_so() {
    a_fatal_answer_stops_dispatching("agent401", Script::new().unauthorized());
}

/// An `operator agent` process on the fixture's manifests and database; killed on drop.
struct Dispatcher {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Dispatcher {
    fn start(f: &Fixture, stand_in: &ClaudeStandIn, claim_ttl: &str) -> Dispatcher {
        let log = std::env::temp_dir().join(format!("{}.log", common::unique("operator-agent")));
        let file = std::fs::File::create(&log).unwrap();
        let child = std::process::Command::new(common::operator::operator_bin())
            .args(["agent", f.dir.path().to_str().unwrap(), "--db"])
            .arg(f.db())
            .args(["--agent-claim-ttl", claim_ttl, "--log-format", "json"])
            .env("ANTHROPIC_API_KEY", TEST_KEY)
            .env("ANTHROPIC_BASE_URL", stand_in.base_url())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start operator agent");
        Dispatcher { child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

#[test]
fn split_dispatchers_never_run_one_ticket_twice_and_a_killed_one_frees_it_within_its_lease() {
    let stand_in = ClaudeStandIn::start(Script::new());
    let remediation = "{policy: agent}".to_string();
    let agent = "{safetyMode: execute, sessionsPerTicket: 3, sessionBackoff: 0s}".to_string();
    // The controller has no key: it decides and queues; the dispatchers run the sessions.
    let f = Fixture::builder("agentsplit")
        .manifest("cluster.yaml", move |c| manifest(c, &remediation, &agent))
        .args(&["--agent-dispatch", "external", "--settle", "1s"])
        .resync("2s")
        .start();
    let name = f.name("app");
    f.wait_running(&name, "the start");
    let one = Dispatcher::start(&f, &stand_in, "3s");
    let two = Dispatcher::start(&f, &stand_in, "3s");

    // The first session's answer never comes in time: its dispatcher is killed meanwhile.
    stand_in.push(
        Script::new()
            .end_turn("too late")
            .delay(Duration::from_secs(60)),
    );
    docker_ok(&["kill", "--signal", "KILL", &name]);
    assert!(
        wait_until(Duration::from_secs(30), || !stand_in.requests().is_empty()),
        "no session began; controller log:\n{}\none:\n{}\ntwo:\n{}",
        f.operator.log(),
        one.log(),
        two.log()
    );
    let ticket = f.ticket("stopped", &name).unwrap();
    let id = ticket["id"].to_string();
    let sessions = audit_json(&f, &["list", "--ticket", &id]);
    let holder = sessions[0]["holder"].as_str().unwrap().to_string();
    let (mut victim, survivor) = if holder.contains(&format!("pid {} ", one.pid())) {
        (one, two)
    } else {
        (two, one)
    };
    let _ = victim.child.kill();
    let _ = victim.child.wait();

    // Within the lease (3 s) the ticket is free again; the controller pages anew and the
    // other dispatcher serves it.
    stand_in.push(
        Script::new()
            .tool_use(&[("shell", json!({"command": format!("docker start {name}")}))])
            .end_turn("Started it."),
    );
    assert!(
        wait_until(Duration::from_secs(60), || f
            .ticket("stopped", &name)
            .is_some_and(
                |t| t["status"] == "resolved" && t["resolved_by"] == "agent"
            )),
        "not resolved by the surviving dispatcher: {:#?}; controller log:\n{}\nsurvivor:\n{}",
        f.tickets(),
        f.operator.log(),
        survivor.log()
    );
    let sessions = audit_json(&f, &["list", "--ticket", &id]);
    let sessions = sessions.as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{sessions:#?}");
    let holders: Vec<&str> = sessions
        .iter()
        .filter_map(|s| s["holder"].as_str())
        .collect();
    assert_ne!(holders[0], holders[1], "the second session ran elsewhere");
    let outcomes: Vec<&str> = sessions
        .iter()
        .filter_map(|s| s["outcome"].as_str())
        .collect();
    assert!(outcomes.contains(&"interrupted"), "{sessions:#?}");
    // Never two sessions of one ticket at once: the second began after the first ended.
    let mut spans: Vec<(String, String)> = sessions
        .iter()
        .map(|s| {
            (
                s["started_at"].as_str().unwrap_or_default().to_string(),
                s["ended_at"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    spans.sort();
    assert!(spans[0].1 <= spans[1].0, "overlapping sessions: {spans:?}");
    drop(victim);
}

#[test]
fn a_session_the_controller_stopped_waiting_for_is_ended_by_its_dispatcher_with_its_command() {
    let stand_in = ClaudeStandIn::start(Script::new());
    let remediation = "{policy: agent}".to_string();
    let agent = "{safetyMode: execute, sessionsPerTicket: 1, sessionBackoff: 0s}".to_string();
    let f = Fixture::builder("agentwithdraw")
        .manifest("cluster.yaml", move |c| manifest(c, &remediation, &agent))
        .args(&[
            "--agent-dispatch",
            "external",
            "--settle",
            "1s",
            "--agent-lease-timeout",
            "5s",
        ])
        .resync("1s")
        .start();
    let name = f.name("app");
    f.wait_running(&name, "the start");
    let dispatcher = Dispatcher::start(&f, &stand_in, "3s");
    // The session's command outlives the controller's patience (and is far inside its own
    // 120 s timeout): only the withdrawal can end it.
    let marker = common::unique("withdrawn");
    stand_in.push(
        Script::new()
            .tool_use(&[(
                "shell",
                json!({"command": format!("sleep 600; echo {marker}")}),
            )])
            .end_turn("never sent"),
    );
    docker_ok(&["kill", "--signal", "KILL", &name]);
    let running = || {
        std::process::Command::new("pgrep")
            .args(["-f", &marker])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    assert!(
        wait_until(Duration::from_secs(30), running),
        "the command never ran; dispatcher:\n{}",
        dispatcher.log()
    );
    let ticket = f.ticket("stopped", &name).unwrap();
    let id = ticket["id"].to_string();
    // 5 s of lease, then at most one claim renewal (1 s) and the kill.
    assert!(
        wait_until(Duration::from_secs(30), || audit_json(
            &f,
            &["list", "--ticket", &id]
        )[0]["outcome"]
            != "running"),
        "the session still runs: {:#}; dispatcher:\n{}",
        audit_json(&f, &["list", "--ticket", &id]),
        dispatcher.log()
    );
    assert!(
        wait_until(Duration::from_secs(10), || !running()),
        "the session's command outlived it"
    );
    let session = &audit_json(&f, &["list", "--ticket", &id])[0];
    assert_eq!(session["stop_reason"], "cancelled", "{session:#}");
    assert_eq!(
        stand_in.requests().len(),
        1,
        "nothing more was asked of the model"
    );
    assert!(
        dispatcher
            .log()
            .contains("the controller withdrew the request"),
        "{}",
        dispatcher.log()
    );
}

#[test]
fn a_controller_restart_mid_session_marks_it_interrupted_and_pages_again_within_budget() {
    let stand_in = ClaudeStandIn::start(Script::new());
    let remediation = "{policy: agent}".to_string();
    let agent = "{safetyMode: execute, sessionsPerTicket: 3, sessionBackoff: 0s}".to_string();
    let mut f = paging("agentrestart", &stand_in)
        .manifest("cluster.yaml", move |c| manifest(c, &remediation, &agent))
        .args(&["--settle", "1s", "--agent-claim-ttl", "2s"])
        .resync("2s")
        .start();
    let name = f.name("app");
    f.wait_running(&name, "the start");
    // The first session's answer never comes in time: the controller dies meanwhile.
    stand_in.push(
        Script::new()
            .end_turn("too late")
            .delay(Duration::from_secs(60)),
    );
    docker_ok(&["kill", "--signal", "KILL", &name]);
    assert!(
        wait_until(Duration::from_secs(30), || !stand_in.requests().is_empty()),
        "no session began; log:\n{}",
        f.operator.log()
    );
    stand_in.push(
        Script::new()
            .tool_use(&[("shell", json!({"command": format!("docker start {name}")}))])
            .end_turn("Started it."),
    );
    f.restart_operator();
    assert!(
        wait_until(Duration::from_secs(60), || f
            .ticket("stopped", &name)
            .is_some_and(
                |t| t["status"] == "resolved" && t["resolved_by"] == "agent"
            )),
        "not resolved after the restart: {:#?}; log:\n{}",
        f.tickets(),
        f.operator.log()
    );
    let ticket = f.ticket("stopped", &name).unwrap();
    let sessions = audit_json(&f, &["list", "--ticket", &ticket["id"].to_string()]);
    let outcomes: Vec<&str> = sessions
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["outcome"].as_str())
        .collect();
    assert_eq!(outcomes.len(), 2, "{sessions:#}");
    assert!(outcomes.contains(&"interrupted"), "{sessions:#}");
    // The dead controller's toolbox was removed by the new one at its start, and the
    // interrupted session says a command it had open may have run.
    let interrupted = sessions
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["outcome"] == "interrupted")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let left = docker_ok(&[
        "ps",
        "-a",
        "-q",
        "--filter",
        &format!("label=operator.toolbox.session={interrupted}"),
    ]);
    assert!(
        left.is_empty(),
        "the dead controller's toolbox is still there"
    );
    let shown = audit_json(&f, &["show", &interrupted]);
    assert!(
        shown.to_string().contains("may have run"),
        "the interruption names the open command: {shown:#}"
    );
}

#[test]
fn a_failing_check_with_policy_agent_pages_the_agent_and_its_fix_resolves_the_check() {
    let stand_in = ClaudeStandIn::start(Script::new());
    let port = common::free_port();
    let f = paging("agentcheck", &stand_in)
        .manifest("cluster.yaml", |c| {
            let services = format!(
                "    - name: {c}-web\n      image: {BUSYBOX_IMAGE}\n      command: [\"sh\", \"-c\", \"mkdir -p /www && exec httpd -f -p 8080 -h /www\"]\n      ports: [\"127.0.0.1:{port}:8080\"]\n"
            );
            format!(
                "{}  agent: {{safetyMode: execute, sessionsPerTicket: 2, sessionBackoff: 0s}}\n  prometheus: {{interval: 1s}}\n  checks:\n    - name: ready-file\n      http: {{url: \"http://127.0.0.1:{port}/ready\", timeout: 1s}}\n      service: {c}-web\n      remediation: {{policy: agent}}\n",
                cluster_yaml(c, &services)
            )
        })
        .args(&["--settle", "1s"])
        .resync("2s")
        .start();
    let web = f.name("web");
    f.wait_running(&web, "the start");
    stand_in.push(
        Script::new()
            .tool_use(&[(
                "shell",
                json!({"command": format!("docker exec {web} sh -c 'echo ok > /www/ready'")}),
            )])
            .end_turn("Wrote the readiness file."),
    );
    assert!(
        wait_until(Duration::from_secs(60), || f
            .ticket("check-failed", &web)
            .is_some_and(|t| t["status"] == "resolved")),
        "the check ticket did not resolve: {:#?}; log:\n{}",
        f.tickets(),
        f.operator.log()
    );
    let ticket = f.ticket("check-failed", &web).unwrap();
    assert_eq!(ticket["resolved_by"], "agent", "{ticket:#}");
    assert!(is_running(&web, None), "nobody restarted the service");
}

/// Credit goes to the session that changed something: of two sessions on one ticket, the
/// first only looks and the second starts the container; the ticket is resolved by the
/// agent, and only the second session's verdict is `resolved` (the proxy saw its change).
#[test]
fn only_a_session_that_changed_something_is_credited_with_the_resolution() {
    let stand_in = ClaudeStandIn::start(Script::new());
    let f = with_agent(
        "agentcredit",
        &stand_in,
        "{policy: agent}",
        "{safetyMode: execute, sessionsPerTicket: 2, sessionBackoff: 0s}",
    );
    let name = f.name("app");
    stand_in.push(
        Script::new()
            .tool_use(&[("shell", json!({"command": "docker ps -a"}))])
            .end_turn("Only looked.")
            .tool_use(&[("shell", json!({"command": format!("docker start {name}")}))])
            .end_turn("Started it."),
    );
    docker_ok(&["kill", "--signal", "KILL", &name]);
    assert!(
        wait_until(Duration::from_secs(90), || f
            .ticket("stopped", &name)
            .is_some_and(
                |t| t["status"] == "resolved" && t["resolved_by"] == "agent"
            )),
        "not resolved by the agent: {:#?}; log:\n{}",
        f.tickets(),
        f.operator.log()
    );
    let ticket = f.ticket("stopped", &name).unwrap()["id"].to_string();
    let verdicts = || -> Vec<Value> {
        let listed = audit_json(&f, &["list", "--ticket", &ticket]);
        let mut sessions = listed.as_array().cloned().unwrap_or_default();
        sessions.sort_by_key(|s| s["started_at"].as_str().map(str::to_string));
        sessions.iter().map(|s| s["verdict"].clone()).collect()
    };
    assert!(
        wait_until(Duration::from_secs(30), || verdicts()
            .iter()
            .all(|v| !v.is_null())),
        "verdicts not recorded: {:?}",
        verdicts()
    );
    assert_eq!(
        verdicts(),
        vec![json!("not-resolved"), json!("resolved")],
        "the looking session earns nothing, the starting one the resolution"
    );
}

/// No toolbox, no session: with an image the engine does not have, the model is never asked,
/// nothing runs anywhere else, and the ticket says why in one line naming the fix.
#[test]
fn a_session_whose_toolbox_cannot_start_does_not_run_and_the_ticket_names_the_fix() {
    let stand_in = ClaudeStandIn::start(Script::new());
    let remediation = "{policy: agent}".to_string();
    let agent = "{safetyMode: execute, sessionsPerTicket: 1}".to_string();
    let f = paging("agentnobox", &stand_in)
        .manifest("cluster.yaml", move |c| manifest(c, &remediation, &agent))
        .args(&[
            "--settle",
            "1s",
            "--toolbox-image",
            "operator-no-such-toolbox:latest",
        ])
        .start();
    let name = f.name("app");
    f.wait_running(&name, "the start");
    stand_in.push(
        Script::new()
            .tool_use(&[("shell", json!({"command": format!("docker start {name}")}))])
            .end_turn("Started."),
    );
    docker_ok(&["kill", "--signal", "KILL", &name]);
    let why = "the agent's toolbox image operator-no-such-toolbox:latest is not on the engine: build it with `scripts/build-image.sh --toolbox`";
    assert!(
        wait_until(Duration::from_secs(60), || f.noted("stopped", &name, why)),
        "the ticket does not say why: {:#?}; log:\n{}",
        f.tickets(),
        f.operator.log()
    );
    assert!(stand_in.requests().is_empty(), "the model was asked anyway");
    assert!(!is_running(&name, None), "something ran the command anyway");
}

/// A session that changes nothing earns nothing, even when the ticket is resolved in the
/// agent's name right after it: here a person starts the container while the session only
/// looks, and the re-check after the session resolves the ticket; the session's verdict is
/// `not-resolved` (its proxy saw no change of its own).
#[test]
fn a_session_that_changed_nothing_is_not_credited_with_a_fix_made_beside_it() {
    let stand_in = ClaudeStandIn::start(Script::new());
    let f = with_agent(
        "agentnocredit",
        &stand_in,
        "{policy: agent}",
        "{safetyMode: execute, sessionsPerTicket: 1, sessionBackoff: 0s}",
    );
    let name = f.name("app");
    stand_in.push(
        Script::new()
            .tool_use(&[("shell", json!({"command": "sleep 4; docker ps -a"}))])
            .end_turn("Only looked."),
    );
    docker_ok(&["kill", "--signal", "KILL", &name]);
    assert!(
        wait_until(Duration::from_secs(60), || !stand_in.requests().is_empty()),
        "no session began; log:\n{}",
        f.operator.log()
    );
    // A person, beside the session.
    docker_ok(&["start", &name]);
    assert!(
        wait_until(Duration::from_secs(90), || f
            .ticket("stopped", &name)
            .is_some_and(|t| t["status"] == "resolved")),
        "not resolved: {:#?}; log:\n{}",
        f.tickets(),
        f.operator.log()
    );
    let ticket = f.ticket("stopped", &name).unwrap();
    // In the agent's name: what made the old verdict `resolved`, however the fix came.
    assert_eq!(ticket["resolved_by"], "agent", "{ticket:#}");
    let id = ticket["id"].to_string();
    let verdict = || {
        audit_json(&f, &["list", "--ticket", &id])
            .as_array()
            .and_then(|s| s.first().cloned())
            .map(|s| s["verdict"].clone())
            .unwrap_or(Value::Null)
    };
    assert!(
        wait_until(Duration::from_secs(30), || !verdict().is_null()),
        "no verdict recorded"
    );
    assert_eq!(
        verdict(),
        json!("not-resolved"),
        "a session that changed nothing was credited (the ticket: {ticket:#})"
    );
}
