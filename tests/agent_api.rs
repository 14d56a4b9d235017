//! The Messages API client against the local stand-in over loopback (no Docker): retries,
//! the answers that stop dispatching, malformed bodies, and the stand-in's own strictness
//! (it refuses what the real API refuses, so the tool loop's tests mean something).
//!
//! The retry waits go through a recording clock (jitter 0, no real sleep): the tests assert
//! the waits the client chose, never wall-clock time.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use serde_json::{Value, json};

use common::claude::{ClaudeStandIn, MODEL, Script, TEST_KEY};
use operator::agent::api::{
    ApiError, ApiKey, CacheControl, Client, ClientConfig, ContentBlock, Fatal, Message,
    MessagesRequest, RetryClock, StopReason, SystemBlock, Tool,
};

/// Records the waits instead of sleeping; jitter draw 0 (the full backoff).
#[derive(Default)]
struct RecordingClock {
    waits: Mutex<Vec<Duration>>,
}

impl RetryClock for RecordingClock {
    fn sleep(&self, delay: Duration) -> BoxFuture<'static, ()> {
        self.waits.lock().unwrap().push(delay);
        Box::pin(async {})
    }
    fn random(&self) -> f64 {
        0.0
    }
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

fn client(api: &ClaudeStandIn, key: &str) -> (Client, Arc<RecordingClock>) {
    let clock = Arc::new(RecordingClock::default());
    let config = ClientConfig::new(api.base_url()).timeout(Duration::from_secs(30));
    let client = Client::new(config, ApiKey::new(key).unwrap())
        .unwrap()
        .with_clock(clock.clone());
    (client, clock)
}

fn shell_tool() -> Tool {
    Tool {
        name: "shell".into(),
        description: "Runs a shell command".into(),
        input_schema: json!({"type": "object", "properties": {"command": {"type": "string"}},
                             "required": ["command"]}),
        cache_control: Some(CacheControl::Ephemeral),
    }
}

fn request(messages: Vec<Message>) -> MessagesRequest {
    MessagesRequest {
        model: MODEL.into(),
        max_tokens: 1024,
        system: vec![SystemBlock::text("You are the on-call SRE.").cached()],
        tools: vec![shell_tool()],
        tool_choice: None,
        messages,
    }
}

fn ask(text: &str) -> MessagesRequest {
    request(vec![Message::user(vec![ContentBlock::text(text)])])
}

#[tokio::test]
async fn overloaded_then_success_retries_once_and_records_both_request_ids() {
    let api = ClaudeStandIn::start(Script::new().overloaded().end_turn("all good"));
    let (client, clock) = client(&api, TEST_KEY);

    let reply = client
        .create_message(&ask("status?"))
        .await
        .expect("retried to success");

    assert_eq!(reply.response.stop_reason, Some(StopReason::EndTurn));
    assert_eq!(reply.response.text(), "all good");
    let seen = api.requests();
    assert_eq!(seen.len(), 2);
    let ids: Vec<&str> = seen.iter().map(|r| r.request_id.as_str()).collect();
    assert_eq!(reply.meta.request_ids(), ids);
    assert_eq!(reply.meta.attempts[0].status, Some(529));
    assert_eq!(reply.meta.attempt_count(), 2);
    // The first backoff, full length at jitter 0; the same bytes sent twice.
    assert_eq!(*clock.waits.lock().unwrap(), [Duration::from_millis(500)]);
    assert_eq!(seen[0].body, seen[1].body);
    // The key travels in x-api-key only: not in the body, the path or another header.
    for r in &seen {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/v1/messages");
        assert_eq!(r.header("x-api-key"), Some(TEST_KEY));
        assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(!r.body_text().contains(TEST_KEY));
        assert!(!r.path.contains(TEST_KEY));
        let carriers: Vec<&str> = r
            .headers
            .iter()
            .filter(|(_, v)| v.contains(TEST_KEY))
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(carriers, ["x-api-key"]);
    }
}

#[tokio::test]
async fn rate_limited_with_retry_after_waits_what_the_server_asked() {
    let api = ClaudeStandIn::start(Script::new().rate_limited("3").end_turn("ok"));
    let (client, clock) = client(&api, TEST_KEY);

    let reply = client
        .create_message(&ask("hi"))
        .await
        .expect("second attempt");

    assert_eq!(api.requests().len(), 2);
    assert_eq!(*clock.waits.lock().unwrap(), [Duration::from_secs(3)]);
    assert_eq!(reply.meta.retry_delays(), [Duration::from_secs(3)]);
}

#[tokio::test]
async fn the_real_sleep_honours_retry_after_ms() {
    // The production clock, with a wait short enough for a test.
    let api = ClaudeStandIn::start(
        Script::new()
            .rate_limited("30")
            .header("retry-after-ms", "20")
            .end_turn("ok"),
    );
    let config = ClientConfig::new(api.base_url());
    let client = Client::new(config, ApiKey::new(TEST_KEY).unwrap()).unwrap();

    let reply = client.create_message(&ask("hi")).await.expect("retried");

    assert_eq!(reply.meta.retry_delays(), [Duration::from_millis(20)]);
    assert_eq!(api.requests().len(), 2);
}

#[tokio::test]
async fn spend_limit_is_not_retried_and_says_stop_dispatching() {
    let api = ClaudeStandIn::start(Script::new().spend_limit().end_turn("never sent"));
    let (client, clock) = client(&api, TEST_KEY);

    let err = client.create_message(&ask("hi")).await.unwrap_err();

    assert_eq!(err.fatal(), Some(Fatal::SpendLimit));
    assert_eq!(api.requests().len(), 1);
    assert_eq!(api.remaining(), 1);
    assert!(clock.waits.lock().unwrap().is_empty());
    let ApiError::Status(answer) = &err else {
        panic!("{err}")
    };
    assert_eq!(answer.status, 429);
    assert_eq!(answer.error_type.as_deref(), Some("rate_limit_error"));
    assert_eq!(
        answer.error_code.as_deref(),
        Some("enforced_spend_limit_reached")
    );
    assert_eq!(
        answer.request_id.as_deref(),
        Some(api.requests()[0].request_id.as_str())
    );
    let text = err.to_string();
    assert!(
        text.contains("429") && text.contains("stop dispatching"),
        "{text}"
    );
}

#[tokio::test]
async fn a_wrong_key_gets_401_once_and_the_error_never_shows_the_key() {
    let api = ClaudeStandIn::start(Script::new().end_turn("never sent"));
    let wrong = "sk-ant-api03-wrong-key";
    let (client, _) = client(&api, wrong);

    let err = client.create_message(&ask("hi")).await.unwrap_err();

    assert_eq!(err.fatal(), Some(Fatal::Authentication));
    assert_eq!(err.status(), Some(401));
    assert_eq!(api.requests().len(), 1);
    assert_eq!(
        api.requests()[0].rejected.as_deref(),
        Some("invalid x-api-key")
    );
    let printed = format!("{err} {err:?} {client:?}");
    assert!(!printed.contains(wrong), "{printed}");
}

#[tokio::test]
async fn scripted_401_and_403_stop_at_once() {
    let api = ClaudeStandIn::start(Script::new().unauthorized().forbidden());
    let (client, _) = client(&api, TEST_KEY);
    let first = client.create_message(&ask("hi")).await.unwrap_err();
    let second = client.create_message(&ask("hi")).await.unwrap_err();
    assert_eq!(first.fatal(), Some(Fatal::Authentication));
    assert_eq!(second.fatal(), Some(Fatal::Permission));
    assert_eq!(api.requests().len(), 2);
}

#[tokio::test]
async fn malformed_json_is_an_error_naming_the_problem_and_is_not_retried() {
    let api = ClaudeStandIn::start(
        Script::new()
            .malformed("{\"id\": \"msg_1\", \"type\": \"mess")
            .malformed("{\"type\": \"message\", \"id\": \"msg_2\"}")
            .end_turn("not reached"),
    );
    let (client, clock) = client(&api, TEST_KEY);

    let truncated = client.create_message(&ask("hi")).await.unwrap_err();
    let incomplete = client.create_message(&ask("hi")).await.unwrap_err();

    assert!(
        matches!(truncated, ApiError::Malformed { status: 200, .. }),
        "{truncated}"
    );
    assert!(truncated.to_string().contains("not JSON"), "{truncated}");
    assert!(
        matches!(incomplete, ApiError::Malformed { .. }),
        "{incomplete}"
    );
    assert!(
        incomplete.to_string().contains("missing field"),
        "{incomplete}"
    );
    assert_eq!(api.requests().len(), 2, "neither was retried");
    assert!(clock.waits.lock().unwrap().is_empty());
    assert_eq!(
        truncated.meta().unwrap().request_ids(),
        [api.requests()[0].request_id.as_str()]
    );
}

#[tokio::test]
async fn x_should_retry_false_stops_a_500_and_true_retries_a_400() {
    let api = ClaudeStandIn::start(
        Script::new()
            .error(500, "api_error", "Internal server error")
            .header("x-should-retry", "false")
            .error(400, "invalid_request_error", "try again")
            .header("x-should-retry", "true")
            .end_turn("ok"),
    );
    let (client, clock) = client(&api, TEST_KEY);

    let err = client.create_message(&ask("hi")).await.unwrap_err();
    assert_eq!(err.status(), Some(500));
    assert_eq!(err.meta().unwrap().attempt_count(), 1);
    assert_eq!(api.requests().len(), 1);

    let reply = client
        .create_message(&ask("hi"))
        .await
        .expect("retried 400");
    assert_eq!(reply.meta.attempt_count(), 2);
    assert_eq!(api.requests().len(), 3);
    assert_eq!(*clock.waits.lock().unwrap(), [Duration::from_millis(500)]);
}

#[tokio::test]
async fn retries_give_up_after_two_and_report_every_attempt() {
    let api = ClaudeStandIn::start(
        Script::new()
            .overloaded()
            .overloaded()
            .overloaded()
            .end_turn("late"),
    );
    let (client, clock) = client(&api, TEST_KEY);

    let err = client.create_message(&ask("hi")).await.unwrap_err();

    assert_eq!(err.status(), Some(529));
    assert_eq!(err.meta().unwrap().request_ids().len(), 3);
    assert_eq!(
        *clock.waits.lock().unwrap(),
        [Duration::from_millis(500), Duration::from_secs(1)]
    );
    assert_eq!(api.remaining(), 1);
}

/// The conversation after one assistant turn with `calls`, answered by `results`.
fn after_tool_use(reply_content: &[ContentBlock], results: Vec<ContentBlock>) -> MessagesRequest {
    request(vec![
        Message::user(vec![ContentBlock::text("hello-web is down")]),
        Message::assistant(reply_content.to_vec()),
        Message::user(results),
    ])
}

#[tokio::test]
async fn parallel_tool_calls_round_trip_and_the_stand_in_is_strict_about_results() {
    let script = Script::new()
        .tool_use(&[
            ("shell", json!({"command": "docker start hello-web"})),
            ("shell", json!({"command": "docker ps"})),
        ])
        .end_turn("fixed");
    let ids = script.tool_use_ids();
    assert_eq!(ids.len(), 2);
    let api = ClaudeStandIn::start(script);
    let (client, _) = client(&api, TEST_KEY);

    let first = client
        .create_message(&ask("hello-web is down"))
        .await
        .unwrap();
    assert_eq!(first.response.stop_reason, Some(StopReason::ToolUse));
    let calls: Vec<&str> = first.response.tool_uses().map(|t| t.id.as_str()).collect();
    assert_eq!(calls, ids);
    let content = first.response.content.clone();
    let result = |id: &str| ContentBlock::tool_result(id, "{\"exit_code\":0}", false);

    // Each wrong shape is refused with 400 and uses up no scripted reply.
    let refused: Vec<(MessagesRequest, &str)> = vec![
        (
            after_tool_use(
                &content,
                vec![
                    ContentBlock::text("here you go"),
                    result(&ids[0]),
                    result(&ids[1]),
                ],
            ),
            "immediately after",
        ),
        (
            after_tool_use(&content, vec![result(&ids[0])]),
            "immediately after",
        ),
        (
            after_tool_use(
                &content,
                vec![result(&ids[0]), result(&ids[0]), result(&ids[1])],
            ),
            "Found multiple `tool_result` blocks",
        ),
        (
            after_tool_use(
                &content,
                vec![result(&ids[0]), result(&ids[1]), result("toolu_nope")],
            ),
            "unexpected `tool_use_id`",
        ),
        (
            after_tool_use(&content[1..], vec![result(&ids[0]), result(&ids[1])]),
            "whole content appended unchanged",
        ),
        (
            MessagesRequest {
                tools: vec![],
                ..after_tool_use(&content, vec![result(&ids[0]), result(&ids[1])])
            },
            "must define tools",
        ),
    ];
    for (body, expected) in refused {
        let err = client.create_message(&body).await.unwrap_err();
        assert_eq!(err.status(), Some(400), "{err}");
        assert!(err.to_string().contains("invalid_request_error"), "{err}");
        assert!(
            err.to_string().contains(expected),
            "expected {expected:?} in {err}"
        );
        assert_eq!(
            err.meta().unwrap().attempt_count(),
            1,
            "a 400 is not retried"
        );
    }
    assert_eq!(api.remaining(), 1);

    // Results in any order, opening the message, then more text: accepted.
    let good = after_tool_use(
        &content,
        vec![
            result(&ids[1]),
            ContentBlock::tool_result(&ids[0], "boom", true),
            ContentBlock::text("and?"),
        ],
    );
    let last = client.create_message(&good).await.expect("accepted");
    assert_eq!(last.response.text(), "fixed");
    let accepted = api.accepted();
    assert_eq!(accepted.len(), 2);
    let sent: Value = accepted[1].json.clone().unwrap();
    assert_eq!(sent["messages"][2]["content"][1]["is_error"], true);
    assert_eq!(
        sent["messages"][1]["content"],
        serde_json::to_value(&content).unwrap()
    );
}

#[tokio::test]
async fn the_stand_in_refuses_what_the_real_api_refuses() {
    let api = ClaudeStandIn::start(Script::new().end_turn("ok"));
    let (client, _) = client(&api, TEST_KEY);
    let user = |t: &str| Message::user(vec![ContentBlock::text(t)]);
    let assistant = |t: &str| Message::assistant(vec![ContentBlock::text(t)]);
    let cases: Vec<(MessagesRequest, u16, &str)> = vec![
        (request(vec![assistant("hi")]), 400, "first message"),
        (request(vec![user("a"), user("b")]), 400, "alternate"),
        (request(vec![]), 400, "at least one message"),
        (request(vec![user("")]), 400, "non-empty"),
        (
            MessagesRequest {
                max_tokens: 0,
                ..ask("x")
            },
            400,
            "max_tokens",
        ),
        (
            MessagesRequest {
                model: "gpt-4".into(),
                ..ask("x")
            },
            404,
            "model: gpt-4",
        ),
        (
            MessagesRequest {
                tools: vec![shell_tool(), shell_tool()],
                ..ask("x")
            },
            400,
            "unique",
        ),
        (
            MessagesRequest {
                system: (0..5)
                    .map(|i| SystemBlock::text(format!("s{i}")).cached())
                    .collect(),
                ..ask("x")
            },
            400,
            "maximum of 4",
        ),
        (
            request(vec![user("a"), assistant("b ")]),
            400,
            "trailing whitespace",
        ),
    ];
    for (body, status, expected) in cases {
        let err = client.create_message(&body).await.unwrap_err();
        assert_eq!(err.status(), Some(status), "{err}");
        assert!(
            err.to_string().contains(expected),
            "expected {expected:?} in {err}"
        );
    }
    assert_eq!(api.remaining(), 1);
    assert!(client.create_message(&ask("fine")).await.is_ok());
}

#[tokio::test]
async fn stop_reasons_and_refusal_details_reach_the_client() {
    let api = ClaudeStandIn::start(
        Script::new()
            .max_tokens("cut")
            .refusal("policy")
            .pause_turn()
            .stop_sequence("up to", "STOP")
            .context_window_exceeded(),
    );
    let (client, _) = client(&api, TEST_KEY);
    let mut reasons = Vec::new();
    for _ in 0..5 {
        let reply = client.create_message(&ask("go")).await.unwrap();
        if reply.response.stop_reason == Some(StopReason::Refusal) {
            let refusal = reply.response.refusal().expect("stop_details");
            assert_eq!(refusal.explanation.as_deref(), Some("policy"));
        }
        if reply.response.stop_reason == Some(StopReason::PauseTurn) {
            // The server tool block is kept verbatim for the way back.
            assert_eq!(reply.response.content[0].kind(), "server_tool_use");
        }
        reasons.push(reply.response.stop_reason.unwrap());
    }
    assert_eq!(
        reasons,
        [
            StopReason::MaxTokens,
            StopReason::Refusal,
            StopReason::PauseTurn,
            StopReason::StopSequence,
            StopReason::ModelContextWindowExceeded
        ]
    );
}

#[tokio::test]
async fn a_byte_stable_cached_prefix_is_written_once_then_read() {
    let api = ClaudeStandIn::start(
        Script::new()
            .end_turn("one")
            .end_turn("two")
            .end_turn("three"),
    );
    let (client, _) = client(&api, TEST_KEY);
    let long = "The cluster runs 3 PD and 3 TiKV. ".repeat(200); // well past 1024 tokens
    let with_system = |system: &str, question: &str| MessagesRequest {
        system: vec![SystemBlock::text(system).cached()],
        ..ask(question)
    };

    let first = client
        .create_message(&with_system(&long, "a"))
        .await
        .unwrap();
    let second = client
        .create_message(&with_system(&long, "b"))
        .await
        .unwrap();
    let changed = client
        .create_message(&with_system(&format!("{long} now"), "c"))
        .await
        .unwrap();

    let usage = |r: &operator::agent::api::Reply| {
        (
            r.response.usage.cache_creation_input_tokens,
            r.response.usage.cache_read_input_tokens,
        )
    };
    let (written, read) = usage(&first);
    assert!(written > 1024 && read == 0, "{:?}", usage(&first));
    assert_eq!(usage(&second), (0, written));
    assert!(
        usage(&changed).0 > 0 && usage(&changed).1 == 0,
        "{:?}",
        usage(&changed)
    );
    assert!(second.response.usage.input_tokens > 0);
}

#[tokio::test]
async fn an_attempt_past_its_timeout_is_retried_as_no_answer() {
    let api = ClaudeStandIn::start(
        Script::new()
            .end_turn("too slow")
            .delay(Duration::from_secs(3))
            .end_turn("in time"),
    );
    let clock = Arc::new(RecordingClock::default());
    let config = ClientConfig::new(api.base_url()).timeout(Duration::from_millis(300));
    let client = Client::new(config, ApiKey::new(TEST_KEY).unwrap())
        .unwrap()
        .with_clock(clock.clone());

    let reply = client
        .create_message(&ask("hi"))
        .await
        .expect("second attempt");

    assert_eq!(reply.response.text(), "in time");
    let first = &reply.meta.attempts[0];
    assert_eq!((first.status, first.request_id.as_deref()), (None, None));
    let reason = first.error.as_deref().unwrap_or_default();
    assert!(reason.contains("timed out"), "{reason}");
    assert_eq!(api.requests().len(), 2);
    assert_eq!(
        reply.meta.request_ids(),
        [api.requests()[1].request_id.as_str()]
    );
    assert_eq!(*clock.waits.lock().unwrap(), [Duration::from_millis(500)]);
}

#[tokio::test]
async fn no_listener_is_a_transport_error_after_the_retries_naming_the_cause() {
    // A loopback port that was free a moment ago and that nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let clock = Arc::new(RecordingClock::default());
    let config = ClientConfig::new(format!("http://127.0.0.1:{port}"));
    let client = Client::new(config, ApiKey::new(TEST_KEY).unwrap())
        .unwrap()
        .with_clock(clock.clone());

    let err = client.create_message(&ask("hi")).await.unwrap_err();

    assert!(matches!(err, ApiError::Transport { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("3 attempt(s)") && text.contains(&format!("127.0.0.1:{port}")),
        "{text}"
    );
    assert!(text.to_lowercase().contains("refused"), "{text}");
    assert_eq!(clock.waits.lock().unwrap().len(), 2);
}
