//! A local stand-in for the Claude Messages API: an HTTP server on `127.0.0.1:0` that
//! checks each request as the real API would and answers from a script.
//!
//! ```ignore
//! let script = Script::new()
//!     .overloaded()                                                  // 529 first
//!     .tool_use(&[("shell", json!({"command": "docker start x"}))])  // then a tool call
//!     .end_turn("fixed");                                            // then the claim
//! let api = ClaudeStandIn::start(script);   // own thread and runtime: sync or async tests
//! // point the client (or `ANTHROPIC_BASE_URL` of a child process) at api.base_url(),
//! // with the key claude::TEST_KEY
//! let seen = api.requests();                // every request, headers and body, in order
//! ```
//!
//! # What it checks (answering 4xx with the API's error shape, as the real API does)
//! - `POST /v1/messages` only (404 otherwise); `x-api-key` equal to the stand-in's key
//!   (401 `authentication_error`); `anthropic-version: 2023-06-01` and
//!   `content-type: application/json` (400); a JSON object body without unknown top-level
//!   fields; no `stream: true` (it does not stream).
//! - `model` a non-empty string starting with `claude-` (404 `not_found_error` otherwise),
//!   `max_tokens` ≥ 1, `system` a string or non-empty text blocks, tools with valid unique
//!   names and an object `input_schema`, `tool_choice` naming a defined tool, at most 4
//!   `cache_control` marks, each `{type: ephemeral}`.
//! - `messages`: non-empty, starting with `user`, alternating `user`/`assistant`; blocks of
//!   types allowed for the role; non-empty text; unique `tool_use` ids; a request holding
//!   tool blocks defines tools; every `tool_use` of an assistant turn is answered by exactly
//!   one `tool_result` in the next user message, and those results **open** that message
//!   (before any other block), none naming an unknown id.
//! - Stricter than the real API in two ways, both to catch a tool loop's bugs: consecutive
//!   turns of one role are refused (the real API merges them), and an assistant turn holding
//!   `tool_use` ids the stand-in issued must be exactly the content it answered (the whole
//!   assistant content appended unchanged; the real API enforces this for thinking blocks).
//!
//! A refused request is recorded with its reason and does not use up a scripted reply.
//! Past the end of the script it answers 500 with `x-should-retry: false`.
//!
//! # What it answers
//! Scripted replies, each a status, headers and a body. Every answer carries a `request-id`
//! header (`req_stand_in_N`). A scripted message gets an `id`, the request's `model`, and a
//! `usage` computed from the request: about one token per 4 bytes of JSON, with prompt
//! caching simulated (the prefix up to a `cache_control` mark is written the first time it
//! is seen and read afterwards, if at least [`ClaudeStandIn::min_cache_tokens`] long,
//! 1024 by default; byte-identical prefixes only hit because the key is their text).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The key the stand-in accepts unless started with another one.
pub const TEST_KEY: &str = "sk-ant-api03-stand-in-test-key-0123456789";
/// A model name the stand-in accepts (any `claude-*` is accepted).
pub const MODEL: &str = "claude-sonnet-4-5";
/// Top-level request fields the real API knows (others are refused, as it does).
const KNOWN_FIELDS: &[&str] = &[
    "model",
    "max_tokens",
    "messages",
    "system",
    "tools",
    "tool_choice",
    "metadata",
    "stop_sequences",
    "temperature",
    "top_p",
    "top_k",
    "stream",
    "thinking",
    "service_tier",
    "container",
    "mcp_servers",
    "context_management",
];

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: ReplyBody,
    /// Wait this long before answering (a slow API, or a client timeout).
    pub delay: Duration,
}

#[derive(Debug, Clone)]
pub enum ReplyBody {
    /// A Messages response; `id`, `model` and (unless set) `usage` are filled in when sent.
    Message(Value),
    /// Sent as is (error bodies, malformed JSON).
    Raw(Vec<u8>),
}

/// A queue of replies, built in the order they will be sent.
#[derive(Debug, Clone, Default)]
pub struct Script {
    replies: Vec<Reply>,
}

impl Script {
    pub fn new() -> Self {
        Script::default()
    }

    /// Any reply.
    pub fn reply(mut self, reply: Reply) -> Self {
        self.replies.push(reply);
        self
    }

    /// A 200 Messages response with this content and stop reason.
    pub fn message(
        self,
        content: Vec<Value>,
        stop_reason: &str,
        stop_details: Option<Value>,
    ) -> Self {
        let mut body = json!({
            "type": "message",
            "role": "assistant",
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": null,
        });
        if let Some(details) = stop_details {
            body["stop_details"] = details;
        }
        self.reply(Reply {
            status: 200,
            headers: Vec::new(),
            body: ReplyBody::Message(body),
            delay: Duration::ZERO,
        })
    }

    /// A `tool_use` turn: a short text, then one `tool_use` block per call (several make
    /// parallel calls). Ids are `toolu_stand_in_N`, unique in the process; see
    /// [`Script::tool_use_ids`].
    pub fn tool_use(self, calls: &[(&str, Value)]) -> Self {
        let mut content = vec![json!({"type": "text", "text": "Let me look."})];
        for (name, input) in calls {
            content.push(json!({
                "type": "tool_use",
                "id": format!("toolu_stand_in_{}", next_id()),
                "name": name,
                "input": input,
            }));
        }
        self.message(content, "tool_use", None)
    }

    /// A closing turn: one text block, `end_turn`.
    pub fn end_turn(self, text: &str) -> Self {
        self.message(
            vec![json!({"type": "text", "text": text})],
            "end_turn",
            None,
        )
    }

    pub fn max_tokens(self, text: &str) -> Self {
        self.message(
            vec![json!({"type": "text", "text": text})],
            "max_tokens",
            None,
        )
    }

    pub fn stop_sequence(self, text: &str, sequence: &str) -> Self {
        let mut s = self.message(
            vec![json!({"type": "text", "text": text})],
            "stop_sequence",
            None,
        );
        if let Some(Reply {
            body: ReplyBody::Message(body),
            ..
        }) = s.replies.last_mut()
        {
            body["stop_sequence"] = json!(sequence);
        }
        s
    }

    /// A paused server-tool turn (the client sends the conversation back to continue).
    pub fn pause_turn(self) -> Self {
        self.message(
            vec![
                json!({"type": "server_tool_use", "id": format!("srvtoolu_stand_in_{}", next_id()),
                       "name": "web_search", "input": {"query": "tikv store down"}}),
            ],
            "pause_turn",
            None,
        )
    }

    /// A refusal with `stop_details {type: refusal, category, explanation}`.
    pub fn refusal(self, explanation: &str) -> Self {
        self.message(
            vec![json!({"type": "text", "text": "I can't help with that."})],
            "refusal",
            Some(json!({"type": "refusal", "category": "cyber", "explanation": explanation})),
        )
    }

    pub fn context_window_exceeded(self) -> Self {
        self.message(
            vec![json!({"type": "text", "text": "The conversation is too long"})],
            "model_context_window_exceeded",
            None,
        )
    }

    /// An error answer with the documented body.
    pub fn error(self, status: u16, error_type: &str, message: &str) -> Self {
        let body = json!({"type": "error", "error": {"type": error_type, "message": message}});
        self.raw(status, body.to_string().as_bytes())
    }

    /// 529 `overloaded_error`.
    pub fn overloaded(self) -> Self {
        self.error(529, "overloaded_error", "Overloaded")
    }

    /// 429 `rate_limit_error` with `retry-after: SECONDS`.
    pub fn rate_limited(self, retry_after: &str) -> Self {
        self.error(
            429,
            "rate_limit_error",
            "This request would exceed the rate limit for your organization of 50 requests per minute.",
        )
        .header("retry-after", retry_after)
    }

    /// The tier's monthly spend cap: 429 `rate_limit_error` with
    /// `error.details.error_code: enforced_spend_limit_reached` and no `retry-after`.
    pub fn spend_limit(self) -> Self {
        let body = json!({"type": "error", "error": {
            "type": "rate_limit_error",
            "message": "You have reached your API usage limits: your organization has crossed its monthly API usage threshold, set based on your organization's API tier. You will regain access on 2026-09-01 at 00:00 UTC.",
            "details": {"error_code": "enforced_spend_limit_reached"}}});
        self.raw(429, body.to_string().as_bytes())
    }

    pub fn unauthorized(self) -> Self {
        self.error(401, "authentication_error", "invalid x-api-key")
    }

    pub fn forbidden(self) -> Self {
        self.error(
            403,
            "permission_error",
            "Your API key does not have permission to use the specified resource.",
        )
    }

    /// A 200 whose body is `body`, as is (e.g. truncated JSON).
    pub fn malformed(self, body: &str) -> Self {
        self.raw(200, body.as_bytes())
    }

    /// Any status and body, as is.
    pub fn raw(self, status: u16, body: &[u8]) -> Self {
        self.reply(Reply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: ReplyBody::Raw(body.to_vec()),
            delay: Duration::ZERO,
        })
    }

    /// Adds a header to the last reply.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        let last = self
            .replies
            .last_mut()
            .expect("Script::header after a reply");
        last.headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    /// Makes the last reply wait `delay` before it is sent.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.replies
            .last_mut()
            .expect("Script::delay after a reply")
            .delay = delay;
        self
    }

    /// Fixes the last message's `usage` instead of computing it.
    pub fn usage(mut self, usage: Value) -> Self {
        match self.replies.last_mut() {
            Some(Reply {
                body: ReplyBody::Message(body),
                ..
            }) => body["usage"] = usage,
            _ => panic!("Script::usage after a message reply"),
        }
        self
    }

    /// The `tool_use` ids of the script, in order.
    pub fn tool_use_ids(&self) -> Vec<String> {
        self.replies
            .iter()
            .filter_map(|r| match &r.body {
                ReplyBody::Message(body) => body["content"].as_array(),
                ReplyBody::Raw(_) => None,
            })
            .flatten()
            .filter(|b| b["type"] == "tool_use")
            .filter_map(|b| b["id"].as_str().map(str::to_string))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.replies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.replies.is_empty()
    }
}

/// One request as received, and what the stand-in answered.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Every header, names lower case, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body as JSON, when it is.
    pub json: Option<Value>,
    pub status: u16,
    pub request_id: String,
    /// Why it was refused (the error message sent), or `None` when it reached the script.
    pub rejected: Option<String>,
    /// The body sent back.
    pub response: Vec<u8>,
    pub received: SystemTime,
}

impl Recorded {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn response_json(&self) -> Option<Value> {
        serde_json::from_slice(&self.response).ok()
    }
}

struct State {
    key: String,
    min_cache_tokens: u64,
    script: VecDeque<Reply>,
    requests: Vec<Recorded>,
    /// Cached prefixes: their text and token count.
    cache: HashMap<String, u64>,
    /// The content of every message answered, by the tool_use ids it holds.
    issued: HashMap<String, Value>,
    answered: u64,
}

/// The running stand-in; stops (and joins its thread) when dropped.
pub struct ClaudeStandIn {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ClaudeStandIn {
    /// Starts on `127.0.0.1:0`, accepting [`TEST_KEY`].
    pub fn start(script: Script) -> Self {
        ClaudeStandIn::start_with_key(TEST_KEY, script)
    }

    pub fn start_with_key(key: &str, script: Script) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(Mutex::new(State {
            key: key.to_string(),
            min_cache_tokens: 1024,
            script: script.replies.into(),
            requests: Vec::new(),
            cache: HashMap::new(),
            issued: HashMap::new(),
            answered: 0,
        }));
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let shared = state.clone();
        let thread = std::thread::Builder::new()
            .name("claude-stand-in".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("stand-in runtime");
                runtime.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    let app = Router::new().fallback(
                        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                            let state = shared.clone();
                            async move { handle(state, method, uri, headers, body).await }
                        },
                    );
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async move {
                            let _ = stopped.await;
                        })
                        .await;
                });
            })
            .expect("spawn the stand-in thread");
        ClaudeStandIn {
            addr,
            state,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`: the client's base URL (`ANTHROPIC_BASE_URL`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Appends replies to the script.
    pub fn push(&self, script: Script) {
        self.lock().script.extend(script.replies);
    }

    /// The smallest prefix (in simulated tokens) that is cached.
    pub fn min_cache_tokens(&self, tokens: u64) {
        self.lock().min_cache_tokens = tokens;
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// The requests that passed the checks and were answered from the script.
    pub fn accepted(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.rejected.is_none())
            .collect()
    }

    /// The content of every `tool_result` the client sent, as JSON text, in order (each
    /// request repeats the conversation, so a result shows once per later request too):
    /// what the model read of the tools.
    pub fn tool_results(&self) -> Vec<String> {
        self.requests()
            .iter()
            .filter_map(|r| r.json.as_ref())
            .flat_map(|b| b["messages"].as_array().cloned().unwrap_or_default())
            .flat_map(|m| m["content"].as_array().cloned().unwrap_or_default())
            .filter(|b| b["type"] == "tool_result")
            .map(|b| b["content"].to_string())
            .collect()
    }

    /// Scripted replies not yet sent.
    pub fn remaining(&self) -> usize {
        self.lock().script.len()
    }

    /// Waits until `count` requests have arrived (panics after `timeout`), for tests that
    /// drive a child process.
    pub fn wait_for_requests(&self, count: usize, timeout: Duration) -> Vec<Recorded> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.requests();
            if seen.len() >= count {
                return seen;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the Claude stand-in received {} request(s) in {timeout:?}, expected {count}",
                    seen.len()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for ClaudeStandIn {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An error answer: status, `error.type`, `error.message`.
type Rejection = (u16, &'static str, String);

fn invalid(message: impl Into<String>) -> Rejection {
    (400, "invalid_request_error", message.into())
}

async fn handle(
    state: Arc<Mutex<State>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let received = SystemTime::now();
    let json: Option<Value> = serde_json::from_slice(&body).ok();
    let recorded_headers: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let request_id = format!("req_stand_in_{}", next_id());

    // Decide under the lock, wait (a scripted delay) outside it.
    let (status, extra_headers, response, rejected, delay) = {
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        let checked = check_transport(&st.key, &method, &uri, &headers)
            .and_then(|()| {
                json.as_ref()
                    .ok_or_else(|| invalid("There was an error parsing the body: it is not JSON"))
            })
            .and_then(|body| validate(body).map(|()| body))
            .and_then(|body| check_appended(&st.issued, body).map(|()| body));
        match checked {
            Err((status, kind, message)) => {
                let body = json!({"type": "error", "error": {"type": kind, "message": message},
                                  "request_id": request_id});
                (
                    status,
                    Vec::new(),
                    body.to_string().into_bytes(),
                    Some(message),
                    Duration::ZERO,
                )
            }
            Ok(request) => match st.script.pop_front() {
                None => {
                    let message = format!(
                        "the Claude stand-in's script is exhausted ({} replies sent)",
                        st.answered
                    );
                    let body = json!({"type": "error", "error": {"type": "api_error", "message": message},
                                      "request_id": request_id});
                    (
                        500,
                        vec![("x-should-retry".to_string(), "false".to_string())],
                        body.to_string().into_bytes(),
                        None,
                        Duration::ZERO,
                    )
                }
                Some(reply) => {
                    st.answered += 1;
                    let bytes = match reply.body {
                        ReplyBody::Raw(bytes) => bytes,
                        ReplyBody::Message(mut message) => {
                            message["id"] = json!(format!("msg_stand_in_{}", next_id()));
                            message["model"] = request["model"].clone();
                            if message.get("usage").is_none() {
                                let usage = simulate_usage(&mut st, request, &message["content"]);
                                message["usage"] = usage;
                            }
                            for block in message["content"].as_array().into_iter().flatten() {
                                if let Some(id) =
                                    block["id"].as_str().filter(|_| block["type"] == "tool_use")
                                {
                                    st.issued.insert(id.to_string(), message["content"].clone());
                                }
                            }
                            message.to_string().into_bytes()
                        }
                    };
                    (reply.status, reply.headers, bytes, None, reply.delay)
                }
            },
        }
    };
    // Recorded before a scripted delay, so a request the client gave up on is still seen.
    state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .requests
        .push(Recorded {
            method: method.to_string(),
            path: uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            headers: recorded_headers,
            body: body.to_vec(),
            json,
            status,
            request_id: request_id.clone(),
            rejected,
            response: response.clone(),
            received,
        });
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut builder = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("request-id", &request_id);
    let mut has_type = false;
    for (name, value) in &extra_headers {
        has_type |= name.eq_ignore_ascii_case("content-type");
        builder = builder.header(name.as_str(), value.as_str());
    }
    if !has_type {
        builder = builder.header("content-type", "application/json");
    }
    builder
        .body(axum::body::Body::from(response))
        .unwrap_or_else(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response())
}

fn check_transport(
    key: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<(), Rejection> {
    if uri.path() != "/v1/messages" || method != Method::POST {
        return Err((
            404,
            "not_found_error",
            format!("Not found: {method} {}", uri.path()),
        ));
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match header("x-api-key") {
        None => {
            return Err((
                401,
                "authentication_error",
                "x-api-key header is required".into(),
            ));
        }
        Some(given) if given != key => {
            return Err((401, "authentication_error", "invalid x-api-key".into()));
        }
        Some(_) => {}
    }
    match header("anthropic-version") {
        None => return Err(invalid("anthropic-version: header is required")),
        Some("2023-06-01") => {}
        Some(other) => {
            return Err(invalid(format!(
                "anthropic-version: invalid version {other:?}"
            )));
        }
    }
    match header("content-type") {
        Some(t) if t.starts_with("application/json") => Ok(()),
        other => Err(invalid(format!(
            "content-type must be application/json, got {other:?}"
        ))),
    }
}

const USER_BLOCKS: &[&str] = &["text", "image", "document", "search_result", "tool_result"];
const ASSISTANT_BLOCKS: &[&str] = &[
    "text",
    "tool_use",
    "thinking",
    "redacted_thinking",
    "server_tool_use",
    "web_search_tool_result",
    "web_fetch_tool_result",
    "code_execution_tool_result",
    "bash_code_execution_tool_result",
    "text_editor_code_execution_tool_result",
    "mcp_tool_use",
    "mcp_tool_result",
    "container_upload",
];

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn check_cache_control(value: &Value, at: &str, count: &mut usize) -> Result<(), Rejection> {
    let Some(cc) = value.get("cache_control") else {
        return Ok(());
    };
    if cc.is_null() {
        return Ok(());
    }
    if cc["type"] != "ephemeral" {
        return Err(invalid(format!(
            "{at}.cache_control.type: Input should be 'ephemeral'"
        )));
    }
    if let Some(ttl) = cc.get("ttl")
        && ttl != "5m"
        && ttl != "1h"
    {
        return Err(invalid(format!(
            "{at}.cache_control.ttl: Input should be '5m' or '1h'"
        )));
    }
    *count += 1;
    Ok(())
}

/// The body checks of the real API that a tool loop can get wrong (see the module doc).
pub fn validate(body: &Value) -> Result<(), Rejection> {
    let Some(object) = body.as_object() else {
        return Err(invalid("The request body must be a JSON object"));
    };
    if let Some(extra) = object.keys().find(|k| !KNOWN_FIELDS.contains(&k.as_str())) {
        return Err(invalid(format!("{extra}: Extra inputs are not permitted")));
    }
    match body.get("model") {
        Some(Value::String(m)) if m.starts_with("claude-") => {}
        Some(Value::String(m)) if !m.is_empty() => {
            return Err((404, "not_found_error", format!("model: {m}")));
        }
        Some(_) => return Err(invalid("model: Input should be a valid string")),
        None => return Err(invalid("model: Field required")),
    }
    match body.get("max_tokens").map(Value::as_u64) {
        None => return Err(invalid("max_tokens: Field required")),
        Some(Some(n)) if n >= 1 => {}
        Some(_) => {
            return Err(invalid(
                "max_tokens: Input should be greater than or equal to 1",
            ));
        }
    }
    if body.get("stream") == Some(&Value::Bool(true)) {
        return Err(invalid(
            "stream: the stand-in does not stream; send stream: false or omit it",
        ));
    }
    let mut marks = 0usize;
    match body.get("system") {
        None | Some(Value::String(_)) => {}
        Some(Value::Array(blocks)) => {
            for (i, block) in blocks.iter().enumerate() {
                if block["type"] != "text" {
                    return Err(invalid(format!("system.{i}.type: Input should be 'text'")));
                }
                match block["text"].as_str() {
                    Some(t) if !t.is_empty() => {}
                    _ => {
                        return Err(invalid(format!(
                            "system.{i}: text content blocks must be non-empty"
                        )));
                    }
                }
                check_cache_control(block, &format!("system.{i}"), &mut marks)?;
            }
        }
        Some(_) => {
            return Err(invalid(
                "system: Input should be a valid string or list of text blocks",
            ));
        }
    }
    let mut tool_names = HashSet::new();
    if let Some(tools) = body.get("tools") {
        let Some(tools) = tools.as_array() else {
            return Err(invalid("tools: Input should be a valid list"));
        };
        for (i, tool) in tools.iter().enumerate() {
            let name = tool["name"].as_str().unwrap_or_default();
            if !valid_name(name) {
                return Err(invalid(format!(
                    "tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
                )));
            }
            if !tool_names.insert(name.to_string()) {
                return Err(invalid("tools: Tool names must be unique."));
            }
            if tool["input_schema"]["type"] != "object" {
                return Err(invalid(format!(
                    "tools.{i}.custom.input_schema.type: Input should be 'object'"
                )));
            }
            if let Some(d) = tool.get("description")
                && !d.is_string()
            {
                return Err(invalid(format!(
                    "tools.{i}.custom.description: Input should be a valid string"
                )));
            }
            check_cache_control(tool, &format!("tools.{i}"), &mut marks)?;
        }
    }
    if let Some(choice) = body.get("tool_choice") {
        match choice["type"].as_str() {
            Some("auto" | "any" | "none") => {}
            Some("tool") => {
                let name = choice["name"].as_str().unwrap_or_default();
                if !tool_names.contains(name) {
                    return Err(invalid(format!(
                        "tool_choice.name: no tool named {name:?} is defined"
                    )));
                }
            }
            _ => {
                return Err(invalid(
                    "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'",
                ));
            }
        }
    }
    let Some(messages) = body.get("messages").and_then(Value::as_array) else {
        return Err(invalid("messages: Field required"));
    };
    if messages.is_empty() {
        return Err(invalid("messages: at least one message is required"));
    }
    let mut seen_tool_use = HashSet::new();
    let mut has_tool_blocks = false;
    let mut previous_role = None;
    for (i, message) in messages.iter().enumerate() {
        let role = match message["role"].as_str() {
            Some(r @ ("user" | "assistant")) => r,
            _ => {
                return Err(invalid(format!(
                    "messages.{i}.role: Input should be 'user' or 'assistant'"
                )));
            }
        };
        if i == 0 && role != "user" {
            return Err(invalid(
                "messages: first message must use the \"user\" role",
            ));
        }
        if previous_role == Some(role) {
            return Err(invalid(format!(
                "messages.{i}: roles must alternate between \"user\" and \"assistant\", but found multiple \"{role}\" roles in a row"
            )));
        }
        previous_role = Some(role);
        let blocks = match &message["content"] {
            Value::String(s) if !s.is_empty() => continue,
            Value::String(_) => {
                return Err(invalid(format!(
                    "messages.{i}: text content blocks must be non-empty"
                )));
            }
            Value::Array(blocks) if !blocks.is_empty() => blocks,
            Value::Array(_) => {
                let last_assistant = role == "assistant" && i + 1 == messages.len();
                if last_assistant {
                    continue;
                }
                return Err(invalid(format!(
                    "messages.{i}: all messages must have non-empty content except for the optional final assistant message"
                )));
            }
            _ => {
                return Err(invalid(format!(
                    "messages.{i}.content: Input should be a valid string or list"
                )));
            }
        };
        let allowed = if role == "user" {
            USER_BLOCKS
        } else {
            ASSISTANT_BLOCKS
        };
        for (j, block) in blocks.iter().enumerate() {
            let at = format!("messages.{i}.content.{j}");
            let kind = block["type"].as_str().unwrap_or_default();
            if !allowed.contains(&kind) {
                return Err(invalid(format!(
                    "{at}.type: Input tag '{kind}' found using 'type' does not match any of the expected tags for a {role} message"
                )));
            }
            check_cache_control(block, &at, &mut marks)?;
            match kind {
                "text" => match block["text"].as_str() {
                    Some(t) if !t.is_empty() => {}
                    _ => {
                        return Err(invalid(format!(
                            "{at}: text content blocks must be non-empty"
                        )));
                    }
                },
                "tool_use" => {
                    has_tool_blocks = true;
                    let id = block["id"].as_str().unwrap_or_default();
                    if id.is_empty()
                        || !id
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                    {
                        return Err(invalid(format!(
                            "{at}.id: String should match pattern '^[a-zA-Z0-9_-]+$'"
                        )));
                    }
                    if !seen_tool_use.insert(id.to_string()) {
                        return Err(invalid(format!("{at}: `tool_use` ids must be unique")));
                    }
                    if block["name"].as_str().is_none_or(str::is_empty) {
                        return Err(invalid(format!("{at}.name: Field required")));
                    }
                    if !block["input"].is_object() {
                        return Err(invalid(format!(
                            "{at}.input: Input should be a valid dictionary"
                        )));
                    }
                }
                "tool_result" => {
                    has_tool_blocks = true;
                    if block["tool_use_id"].as_str().is_none() {
                        return Err(invalid(format!("{at}.tool_use_id: Field required")));
                    }
                    match block.get("content") {
                        None | Some(Value::String(_)) => {}
                        Some(Value::Array(parts)) => {
                            for (k, part) in parts.iter().enumerate() {
                                if !matches!(
                                    part["type"].as_str(),
                                    Some("text" | "image" | "document" | "search_result")
                                ) {
                                    return Err(invalid(format!(
                                        "{at}.content.{k}.type: Input tag found using 'type' does not match any of the expected tags"
                                    )));
                                }
                            }
                        }
                        Some(_) => {
                            return Err(invalid(format!(
                                "{at}.content: Input should be a valid string or list"
                            )));
                        }
                    }
                    if let Some(e) = block.get("is_error")
                        && !e.is_boolean()
                    {
                        return Err(invalid(format!(
                            "{at}.is_error: Input should be a valid boolean"
                        )));
                    }
                }
                _ => {}
            }
        }
        if role == "assistant"
            && i + 1 == messages.len()
            && let Some(Value::String(t)) = blocks.last().map(|b| &b["text"])
            && t.ends_with(char::is_whitespace)
        {
            return Err(invalid(
                "messages: final assistant content cannot end with trailing whitespace",
            ));
        }
    }
    if marks > 4 {
        return Err(invalid(format!(
            "A maximum of 4 blocks with cache_control may be provided. Found {marks}."
        )));
    }
    if has_tool_blocks
        && body
            .get("tools")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
    {
        return Err(invalid(
            "Requests which include `tool_use` or `tool_result` blocks must define tools.",
        ));
    }
    check_tool_pairing(messages)
}

fn blocks_of(message: &Value) -> &[Value] {
    message["content"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// Every `tool_use` of an assistant turn answered by exactly one `tool_result` at the
/// start of the next user message; no result without its call.
fn check_tool_pairing(messages: &[Value]) -> Result<(), Rejection> {
    for (i, message) in messages.iter().enumerate() {
        if message["role"] != "user" {
            continue;
        }
        let calls: Vec<&str> = match i.checked_sub(1).map(|p| &messages[p]) {
            Some(previous) => blocks_of(previous)
                .iter()
                .filter(|b| b["type"] == "tool_use")
                .filter_map(|b| b["id"].as_str())
                .collect(),
            None => Vec::new(),
        };
        let blocks = blocks_of(message);
        let leading = blocks
            .iter()
            .take_while(|b| b["type"] == "tool_result")
            .count();
        let mut answered = HashSet::new();
        for (j, block) in blocks
            .iter()
            .enumerate()
            .filter(|(_, b)| b["type"] == "tool_result")
        {
            let id = block["tool_use_id"].as_str().unwrap_or_default();
            if !calls.contains(&id) {
                return Err(invalid(format!(
                    "messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: {id}. Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
                )));
            }
            if !answered.insert(id) {
                return Err(invalid(format!(
                    "messages.{i}.content.{j}: each tool_use must have a single result. Found multiple `tool_result` blocks with id: {id}"
                )));
            }
        }
        let opening: HashSet<&str> = blocks[..leading]
            .iter()
            .filter_map(|b| b["tool_use_id"].as_str())
            .collect();
        let missing: Vec<&str> = calls
            .iter()
            .copied()
            .filter(|id| !opening.contains(id))
            .collect();
        if !missing.is_empty() {
            let where_ = if answered.len() > opening.len() {
                " (tool_result blocks must come first in the user message, before any other content)"
            } else {
                ""
            };
            return Err(invalid(format!(
                "messages.{}: `tool_use` ids were found without `tool_result` blocks immediately after: {}. Each `tool_use` block must have a corresponding `tool_result` block in the next message.{where_}",
                i - 1,
                missing.join(", ")
            )));
        }
    }
    // A tool_use in the last assistant turn with no user message after it is a prefill;
    // a tool_use followed by nothing at all in a middle turn cannot happen (roles alternate).
    Ok(())
}

/// An assistant turn holding `tool_use` ids this stand-in issued must be exactly what it
/// answered (stricter than the real API; see the module doc).
fn check_appended(issued: &HashMap<String, Value>, body: &Value) -> Result<(), Rejection> {
    for (i, message) in body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if message["role"] != "assistant" {
            continue;
        }
        let original = blocks_of(message)
            .iter()
            .filter(|b| b["type"] == "tool_use")
            .find_map(|b| b["id"].as_str().and_then(|id| issued.get(id)));
        if let Some(original) = original
            && *original != message["content"]
        {
            return Err(invalid(format!(
                "messages.{i}: the assistant turn differs from the content the API answered (the stand-in requires the whole content appended unchanged): sent {}, answered {original}",
                message["content"]
            )));
        }
    }
    Ok(())
}

fn tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

/// Usage for an answer: input tokens from the request's size with prompt caching
/// simulated at its `cache_control` marks; output tokens from the answer's size.
fn simulate_usage(state: &mut State, request: &Value, content: &Value) -> Value {
    // The order the API caches in: tools, system, then messages.
    let mut segments: Vec<(String, bool)> = Vec::new();
    let marked = |v: &Value| v.get("cache_control").is_some_and(|c| !c.is_null());
    for tool in request["tools"].as_array().into_iter().flatten() {
        segments.push((tool.to_string(), marked(tool)));
    }
    match &request["system"] {
        Value::String(s) => segments.push((s.clone(), false)),
        Value::Array(blocks) => {
            for b in blocks {
                segments.push((b.to_string(), marked(b)));
            }
        }
        _ => {}
    }
    for message in request["messages"].as_array().into_iter().flatten() {
        match &message["content"] {
            Value::String(s) => segments.push((s.clone(), false)),
            Value::Array(blocks) => {
                for b in blocks {
                    segments.push((b.to_string(), marked(b)));
                }
            }
            _ => {}
        }
    }
    let total: u64 = segments.iter().map(|(s, _)| tokens(s)).sum::<u64>() + 8;
    let model = request["model"].as_str().unwrap_or_default().to_string();
    let mut prefix = model.clone();
    let mut prefix_tokens = 0u64;
    let mut breakpoints = Vec::new();
    for (text, is_mark) in &segments {
        prefix.push_str(text);
        prefix_tokens += tokens(text);
        if *is_mark {
            breakpoints.push((prefix.clone(), prefix_tokens));
        }
    }
    let min = state.min_cache_tokens;
    let read = breakpoints
        .iter()
        .rev()
        .find(|(p, n)| *n >= min && state.cache.contains_key(p))
        .map(|(_, n)| *n)
        .unwrap_or(0);
    let written = match breakpoints.last() {
        Some((_, n)) if *n >= min => n - read,
        _ => 0,
    };
    for (p, n) in breakpoints {
        if n >= min {
            state.cache.insert(p, n);
        }
    }
    json!({
        "input_tokens": total - read - written,
        "output_tokens": tokens(&content.to_string()).max(1),
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": read,
        "service_tier": "standard",
    })
}
