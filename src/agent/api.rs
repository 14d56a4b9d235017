//! The Claude Messages API client: `POST {base}/v1/messages` over reqwest (there is no Rust
//! SDK), non-streaming, with the official clients' retries.
//!
//! # Guarantees
//! - Every call sends `x-api-key`, `anthropic-version: 2023-06-01` and
//!   `content-type: application/json`. The key goes only into that header (marked sensitive
//!   so the HTTP stack never logs it); [`ApiKey`] prints as `[REDACTED]` and cannot be
//!   serialized, so it cannot leak through a log line, an error or an audit record.
//! - The request body is serialized once and the same bytes are sent on every attempt.
//! - Retries follow [`retry`](RetryPolicy)'s rules: no answer, 408, 409, 429, 5xx and 529 are
//!   tried again up to [`RetryPolicy::max_retries`] times (2 by default), waiting 0.5 s
//!   doubling to 8 s with jitter, or what `retry-after-ms` / `retry-after` ask when it is at
//!   most 60 s; `x-should-retry` overrides the status rule. The answers in [`Fatal`] (401,
//!   403, 402, a spend limit reached) are never retried: [`ApiError::fatal`] tells the
//!   caller to stop all dispatching. 400, 404 and 413 are not retried.
//! - A 2xx whose body is not a Messages response is [`ApiError::Malformed`], naming what is
//!   wrong, and is **not** retried: the model has run and been billed for that answer, and
//!   the same endpoint (often a proxy behind `ANTHROPIC_BASE_URL`) would most likely answer
//!   the same way again. A body cut short while reading is a lost answer and is retried.
//! - Every outcome, success or error, carries [`CallMeta`]: each attempt's `request-id`
//!   (retried ones too), status, HTTP time and the wait that followed it.
//! - Every attempt is bounded by [`ClientConfig::timeout`] (connect, send and read of the
//!   whole body); a call is bounded by `(max_retries + 1) × timeout` plus the waits.
//!
//! # Caveats
//! Redirects are not followed (a 3xx is an error answer, not retried). The waits go through
//! a [`RetryClock`], so tests make them deterministic with `tokio::time::pause` or their
//! own clock.

mod retry;
mod types;

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Serialize, Serializer};

pub use retry::{
    Fatal, RetryClock, RetryPolicy, TokioClock, classify, retry_after, retryable_status,
    should_retry,
};
pub use types::{
    CacheControl, ContentBlock, Message, MessagesRequest, MessagesResponse, Refusal, Role,
    StopReason, SystemBlock, TextBlock, Tool, ToolChoice, ToolResultBlock, ToolResultContent,
    ToolUseBlock, Usage,
};

/// The public endpoint, used unless `ANTHROPIC_BASE_URL` says otherwise.
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
/// The `anthropic-version` header every call sends.
pub const API_VERSION: &str = "2023-06-01";
/// The environment variable the official clients read the base URL from.
pub const BASE_URL_ENV: &str = "ANTHROPIC_BASE_URL";

/// An API key. It prints as `[REDACTED]` (`Debug` and `Display`) and has no `Serialize`,
/// so only the request header ever holds its text.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    /// Accepts any non-empty key that can travel in an HTTP header.
    pub fn new(key: impl Into<String>) -> Result<Self, ApiError> {
        let key = key.into();
        if key.trim().is_empty() {
            return Err(ApiError::InvalidKey {
                reason: "it is empty",
            });
        }
        if HeaderValue::from_str(&key).is_err() {
            return Err(ApiError::InvalidKey {
                reason: "it holds characters an HTTP header cannot carry",
            });
        }
        Ok(ApiKey(key))
    }

    /// `text` with every occurrence of the key replaced by `[REDACTED]`, for tool output
    /// and audit entries.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if text.contains(&self.0) {
            Cow::Owned(text.replace(&self.0, "[REDACTED]"))
        } else {
            Cow::Borrowed(text)
        }
    }

    fn header(&self) -> Result<HeaderValue, ApiError> {
        let mut value = HeaderValue::from_str(&self.0).map_err(|_| ApiError::InvalidKey {
            reason: "it holds characters an HTTP header cannot carry",
        })?;
        value.set_sensitive(true);
        Ok(value)
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey([REDACTED])")
    }
}

impl std::fmt::Display for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// Where and how the client calls. Defaults in one place: the public endpoint, 10 min per
/// attempt (the official clients' non-streaming timeout), 10 s to connect, 2 retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Scheme, host and an optional path prefix (a gateway's); `/v1/messages` is appended.
    pub base_url: String,
    /// Bound of one attempt, from connecting to the last byte of the body.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub retry: RetryPolicy,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            base_url: DEFAULT_BASE_URL.to_string(),
            timeout: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
        }
    }
}

impl ClientConfig {
    pub fn new(base_url: impl Into<String>) -> Self {
        ClientConfig {
            base_url: base_url.into(),
            ..ClientConfig::default()
        }
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn max_retries(mut self, max_retries: u32) -> Self {
        self.retry.max_retries = max_retries;
        self
    }

    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }
}

/// One HTTP attempt of a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attempt {
    /// `None` when no answer came (connection error, timeout, body cut short).
    pub status: Option<u16>,
    /// The answer's `request-id` header (or the error body's `request_id`).
    pub request_id: Option<String>,
    /// From sending the request to the last byte of the answer.
    #[serde(rename = "http_ms", serialize_with = "as_millis")]
    pub http_time: Duration,
    /// The wait before the next attempt; `None` for the last one.
    #[serde(rename = "retry_delay_ms", serialize_with = "option_as_millis")]
    pub retry_delay: Option<Duration>,
    /// Why there was no answer, when there was none.
    pub error: Option<String>,
}

fn as_millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn option_as_millis<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => as_millis(d, s),
        None => s.serialize_none(),
    }
}

/// What a call cost on the wire, for the audit: every attempt in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CallMeta {
    pub attempts: Vec<Attempt>,
}

impl CallMeta {
    /// The `request-id` of every attempt that got an answer, in order.
    pub fn request_ids(&self) -> Vec<&str> {
        self.attempts
            .iter()
            .filter_map(|a| a.request_id.as_deref())
            .collect()
    }

    pub fn attempt_count(&self) -> u32 {
        u32::try_from(self.attempts.len()).unwrap_or(u32::MAX)
    }

    /// Time spent in HTTP, all attempts together (the waits between them excluded).
    pub fn http_time(&self) -> Duration {
        self.attempts.iter().map(|a| a.http_time).sum()
    }

    /// The waits between attempts, in order.
    pub fn retry_delays(&self) -> Vec<Duration> {
        self.attempts.iter().filter_map(|a| a.retry_delay).collect()
    }
}

/// A successful call: the response and how it was obtained.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub response: MessagesResponse,
    pub meta: CallMeta,
}

/// What went wrong, with the endpoint, the status, the API's own error type and message and
/// the request id wherever there was an answer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the API key is not usable: {reason}")]
    InvalidKey { reason: &'static str },
    #[error("the API base URL {url:?} is not usable: {reason}")]
    InvalidBaseUrl { url: String, reason: String },
    #[error("building the HTTP client failed: {0}")]
    Build(#[source] reqwest::Error),
    #[error("encoding the request body failed: {0}")]
    Encode(#[source] serde_json::Error),
    /// No answer on the last attempt (all attempts were tried).
    #[error("POST {url}: no answer after {} attempt(s): {reason}", .meta.attempt_count())]
    Transport {
        url: String,
        reason: String,
        meta: CallMeta,
    },
    /// An error answer that was not retried, or the last one after the retries.
    #[error("{0}")]
    Status(Box<ErrorAnswer>),
    /// A 2xx answer that is not a Messages response (not retried; see the module doc).
    #[error(
        "POST {url}: HTTP {status} but the body is malformed: {reason} (request-id {})",
        .request_id.as_deref().unwrap_or("none")
    )]
    Malformed {
        url: String,
        status: u16,
        reason: String,
        request_id: Option<String>,
        meta: CallMeta,
    },
}

/// An error answer of the API, as [`ApiError::Status`] carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorAnswer {
    pub url: String,
    pub status: u16,
    /// `error.type` of the body (`rate_limit_error`, `overloaded_error`, ...).
    pub error_type: Option<String>,
    /// `error.details.error_code` of the body (`enforced_spend_limit_reached`).
    pub error_code: Option<String>,
    /// `error.message`, or the start of a body that is not the documented shape.
    pub message: String,
    /// The `request-id` header, or the body's `request_id`.
    pub request_id: Option<String>,
    /// `Some` when dispatching must stop (see [`Fatal`]).
    pub fatal: Option<Fatal>,
    pub meta: CallMeta,
}

impl std::fmt::Display for ErrorAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "POST {}: HTTP {} {}: {} (request-id {}, attempt {})",
            self.url,
            self.status,
            self.error_type.as_deref().unwrap_or("(no error type)"),
            self.message,
            self.request_id.as_deref().unwrap_or("none"),
            self.meta.attempt_count()
        )?;
        if let Some(fatal) = self.fatal {
            write!(f, "; {fatal}: stop dispatching")?;
        }
        Ok(())
    }
}

impl ApiError {
    /// `Some` when the account, not this request, is the problem: stop all dispatching.
    pub fn fatal(&self) -> Option<Fatal> {
        match self {
            ApiError::Status(answer) => answer.fatal,
            _ => None,
        }
    }

    /// The attempts made, when the call was sent at all.
    pub fn meta(&self) -> Option<&CallMeta> {
        match self {
            ApiError::Transport { meta, .. } | ApiError::Malformed { meta, .. } => Some(meta),
            ApiError::Status(answer) => Some(&answer.meta),
            _ => None,
        }
    }

    /// The HTTP status of the last answer, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status(answer) => Some(answer.status),
            ApiError::Malformed { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The Messages API client. Cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    url: reqwest::Url,
    headers: HeaderMap,
    retry: RetryPolicy,
    clock: Arc<dyn RetryClock>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.url.as_str())
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl Client {
    pub fn new(config: ClientConfig, key: ApiKey) -> Result<Self, ApiError> {
        let url = messages_url(&config.base_url)?;
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("operator/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(ApiError::Build)?;
        let mut headers = HeaderMap::new();
        headers.insert(HeaderName::from_static("x-api-key"), key.header()?);
        headers.insert(
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static(API_VERSION),
        );
        headers.insert(
            reqwest::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Ok(Client {
            http,
            url,
            headers,
            retry: config.retry,
            clock: Arc::new(TokioClock),
        })
    }

    /// The same client waiting and drawing jitter through `clock` (tests).
    pub fn with_clock(mut self, clock: Arc<dyn RetryClock>) -> Self {
        self.clock = clock;
        self
    }

    /// The full endpoint, `{base}/v1/messages`.
    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// Sends one Messages request, retrying as the module doc says.
    pub async fn create_message(&self, request: &MessagesRequest) -> Result<Reply, ApiError> {
        let body = serde_json::to_vec(request).map_err(ApiError::Encode)?;
        let attempt = || {
            let sent = self
                .http
                .post(self.url.clone())
                .headers(self.headers.clone())
                .body(body.clone())
                .send();
            async move {
                let response = sent.await.map_err(|e| error_chain(&e))?;
                let status = response.status().as_u16();
                let headers = response.headers().clone();
                let body = response
                    .bytes()
                    .await
                    .map_err(|e| error_chain(&e))?
                    .to_vec();
                Ok(Answer {
                    status,
                    headers,
                    body,
                })
            }
        };
        call_with_retries(self.url.as_str(), &self.retry, self.clock.as_ref(), attempt).await
    }
}

/// `{base}/v1/messages`, keeping a path prefix of the base (a gateway's).
fn messages_url(base: &str) -> Result<reqwest::Url, ApiError> {
    let invalid = |reason: String| ApiError::InvalidBaseUrl {
        url: base.to_string(),
        reason,
    };
    let mut url = reqwest::Url::parse(base.trim())
        .map_err(|e| invalid(format!("{e} (expected e.g. {DEFAULT_BASE_URL})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "the scheme is {:?}, expected http or https",
            url.scheme()
        )));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("a query or fragment is not allowed".to_string()));
    }
    let path = format!("{}/v1/messages", url.path().trim_end_matches('/'));
    url.set_path(&path);
    Ok(url)
}

/// An error and all its sources, one line (reqwest's own message omits the cause).
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// One answer as received.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// The documented error body `{"type":"error","error":{"type","message","details"},
/// "request_id"}`, leniently: whatever is missing stays `None`.
struct ErrorBody {
    error_type: Option<String>,
    error_code: Option<String>,
    message: String,
    request_id: Option<String>,
}

fn parse_error_body(body: &[u8]) -> ErrorBody {
    let value: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let error = value.as_ref().and_then(|v| v.get("error"));
    let text = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).map(str::to_string);
    let message = text(error.and_then(|e| e.get("message"))).unwrap_or_else(|| {
        if body.is_empty() {
            "(empty body)".to_string()
        } else {
            format!("(not the documented error shape) {}", types::preview(body))
        }
    });
    ErrorBody {
        error_type: text(error.and_then(|e| e.get("type"))),
        error_code: text(
            error
                .and_then(|e| e.get("details"))
                .and_then(|d| d.get("error_code")),
        ),
        message,
        request_id: text(value.as_ref().and_then(|v| v.get("request_id"))),
    }
}

/// The retry loop, over any transport: `attempt` sends the request once and returns the
/// answer, or why there was none.
async fn call_with_retries<F, Fut>(
    url: &str,
    policy: &RetryPolicy,
    clock: &dyn RetryClock,
    mut attempt: F,
) -> Result<Reply, ApiError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Answer, String>>,
{
    let mut meta = CallMeta::default();
    let mut retries_done = 0u32;
    loop {
        let started = tokio::time::Instant::now();
        let outcome = attempt().await;
        let http_time = started.elapsed();
        let retries_left = retries_done < policy.max_retries;
        let answer = match outcome {
            Err(reason) => {
                meta.attempts.push(Attempt {
                    status: None,
                    request_id: None,
                    http_time,
                    retry_delay: None,
                    error: Some(reason.clone()),
                });
                if !retries_left {
                    return Err(ApiError::Transport {
                        url: url.to_string(),
                        reason,
                        meta,
                    });
                }
                let delay = policy.delay(retries_done, None, clock.now(), clock.random());
                wait(&mut meta, clock, delay).await;
                retries_done += 1;
                continue;
            }
            Ok(answer) => answer,
        };
        let header_id = answer
            .headers
            .get("request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let success = (200..300).contains(&answer.status);
        let error = (!success).then(|| parse_error_body(&answer.body));
        let request_id = header_id.or_else(|| error.as_ref().and_then(|e| e.request_id.clone()));
        meta.attempts.push(Attempt {
            status: Some(answer.status),
            request_id: request_id.clone(),
            http_time,
            retry_delay: None,
            error: None,
        });
        let Some(error) = error else {
            return match types::parse_response(&answer.body) {
                Ok(response) => Ok(Reply { response, meta }),
                Err(reason) => Err(ApiError::Malformed {
                    url: url.to_string(),
                    status: answer.status,
                    reason,
                    request_id,
                    meta,
                }),
            };
        };
        let fatal = classify(
            answer.status,
            error.error_type.as_deref(),
            error.error_code.as_deref(),
            &error.message,
        );
        if retries_left && should_retry(answer.status, &answer.headers, fatal) {
            let delay = policy.delay(
                retries_done,
                Some(&answer.headers),
                clock.now(),
                clock.random(),
            );
            wait(&mut meta, clock, delay).await;
            retries_done += 1;
            continue;
        }
        return Err(ApiError::Status(Box::new(ErrorAnswer {
            url: url.to_string(),
            status: answer.status,
            error_type: error.error_type,
            error_code: error.error_code,
            message: error.message,
            request_id,
            fatal,
            meta,
        })));
    }
}

async fn wait(meta: &mut CallMeta, clock: &dyn RetryClock, delay: Duration) {
    if let Some(last) = meta.attempts.last_mut() {
        last.retry_delay = Some(delay);
    }
    clock.sleep(delay).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    const URL: &str = "http://stand-in/v1/messages";

    fn ok_body() -> String {
        json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "m",
            "content": [{"type": "text", "text": "done"}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 3, "output_tokens": 1}
        })
        .to_string()
    }

    fn error_body(kind: &str, message: &str) -> String {
        json!({"type": "error", "error": {"type": kind, "message": message}}).to_string()
    }

    /// A scripted answer: status, extra headers, body; `Err` = no answer.
    type Scripted = Result<(u16, Vec<(&'static str, String)>, String), String>;
    type Queue = Arc<Mutex<VecDeque<Result<Answer, String>>>>;

    /// A scripted transport: each call pops the next answer.
    fn script(answers: Vec<Scripted>) -> (Queue, Arc<Mutex<u32>>) {
        let mut queue = VecDeque::new();
        for (n, answer) in answers.into_iter().enumerate() {
            queue.push_back(answer.map(|(status, pairs, body)| {
                let mut headers = HeaderMap::new();
                headers.insert(
                    "request-id",
                    HeaderValue::from_str(&format!("req_{n}")).unwrap(),
                );
                for (name, value) in pairs {
                    headers.insert(name, HeaderValue::from_str(&value).unwrap());
                }
                Answer {
                    status,
                    headers,
                    body: body.into_bytes(),
                }
            }));
        }
        (Arc::new(Mutex::new(queue)), Arc::new(Mutex::new(0)))
    }

    async fn run(policy: &RetryPolicy, answers: Vec<Scripted>) -> (Result<Reply, ApiError>, u32) {
        let (queue, calls) = script(answers);
        let attempt = || {
            *calls.lock().unwrap() += 1;
            let next = queue.lock().unwrap().pop_front().expect("script exhausted");
            async move { next }
        };
        let result = call_with_retries(URL, policy, &TokioClock, attempt).await;
        let calls = *calls.lock().unwrap();
        (result, calls)
    }

    #[tokio::test(start_paused = true)]
    async fn a_529_then_success_waits_the_first_backoff_and_keeps_both_request_ids() {
        let started = tokio::time::Instant::now();
        let (result, calls) = run(
            &RetryPolicy::default(),
            vec![
                Ok((529, vec![], error_body("overloaded_error", "Overloaded"))),
                Ok((200, vec![], ok_body())),
            ],
        )
        .await;
        let reply = result.expect("second attempt succeeds");
        assert_eq!(calls, 2);
        assert_eq!(reply.meta.request_ids(), ["req_0", "req_1"]);
        assert_eq!(reply.meta.attempts[0].status, Some(529));
        let waited = started.elapsed();
        // 0.5 s shortened by at most 25 % jitter, in paused (virtual) time.
        assert!(
            waited >= Duration::from_millis(375) && waited <= Duration::from_millis(500),
            "{waited:?}"
        );
        assert_eq!(reply.meta.retry_delays().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_after_max_retries_and_return_the_last_answer() {
        let started = tokio::time::Instant::now();
        let answer = || Ok((500, vec![], error_body("api_error", "Internal")));
        let (result, calls) = run(
            &RetryPolicy::default(),
            vec![answer(), answer(), answer(), answer()],
        )
        .await;
        assert_eq!(calls, 3, "2 retries by default");
        let err = result.unwrap_err();
        assert_eq!(err.status(), Some(500));
        assert_eq!(err.fatal(), None);
        let meta = err.meta().unwrap();
        assert_eq!(meta.request_ids(), ["req_0", "req_1", "req_2"]);
        assert_eq!(meta.attempts[2].retry_delay, None);
        // 0.5 s then 1 s, each shortened by at most 25 %.
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(1125) && waited <= Duration::from_millis(1500),
            "{waited:?}"
        );
        assert!(err.to_string().contains("attempt 3"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_waits_exactly_its_retry_after() {
        let started = tokio::time::Instant::now();
        let (result, calls) = run(
            &RetryPolicy::default(),
            vec![
                Ok((
                    429,
                    vec![("retry-after", "7".to_string())],
                    error_body("rate_limit_error", "slow down"),
                )),
                Ok((200, vec![], ok_body())),
            ],
        )
        .await;
        assert!(result.is_ok());
        assert_eq!(calls, 2);
        assert_eq!(started.elapsed(), Duration::from_secs(7));
    }

    #[tokio::test(start_paused = true)]
    async fn connection_errors_are_retried_and_the_last_one_is_reported() {
        let started = tokio::time::Instant::now();
        let (result, calls) = run(
            &RetryPolicy::default(),
            vec![
                Err("connection refused".into()),
                Err("connection reset".into()),
                Err("operation timed out".into()),
            ],
        )
        .await;
        assert_eq!(calls, 3);
        let err = result.unwrap_err();
        assert!(matches!(err, ApiError::Transport { .. }));
        assert!(err.to_string().contains("operation timed out"), "{err}");
        assert!(err.to_string().contains("3 attempt(s)"), "{err}");
        assert!(err.meta().unwrap().request_ids().is_empty());
        assert!(started.elapsed() >= Duration::from_millis(1125));
    }

    #[tokio::test(start_paused = true)]
    async fn fatal_and_client_errors_are_not_retried() {
        let spend = json!({"type": "error", "error": {
            "type": "rate_limit_error",
            "message": "You have reached your API usage limits",
            "details": {"error_code": "enforced_spend_limit_reached"}},
            "request_id": "req_body"})
        .to_string();
        let cases: Vec<(u16, String, Option<Fatal>)> = vec![
            (
                401,
                error_body("authentication_error", "invalid x-api-key"),
                Some(Fatal::Authentication),
            ),
            (
                403,
                error_body("permission_error", "no"),
                Some(Fatal::Permission),
            ),
            (429, spend, Some(Fatal::SpendLimit)),
            (
                400,
                error_body("invalid_request_error", "messages: bad"),
                None,
            ),
            (404, error_body("not_found_error", "model: x"), None),
            (413, error_body("request_too_large", "too big"), None),
        ];
        for (status, body, fatal) in cases {
            let started = tokio::time::Instant::now();
            let (result, calls) = run(
                &RetryPolicy::default(),
                vec![Ok((
                    status,
                    vec![("x-should-retry", "true".into())]
                        .into_iter()
                        .filter(|_| fatal.is_some())
                        .collect(),
                    body,
                ))],
            )
            .await;
            assert_eq!(calls, 1, "{status}");
            assert_eq!(started.elapsed(), Duration::ZERO);
            let err = result.unwrap_err();
            assert_eq!(err.fatal(), fatal, "{status}");
            assert_eq!(err.status(), Some(status));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn x_should_retry_false_stops_a_500_at_once() {
        let (result, calls) = run(
            &RetryPolicy::default(),
            vec![Ok((
                500,
                vec![("x-should-retry", "false".into())],
                error_body("api_error", "boom"),
            ))],
        )
        .await;
        assert_eq!(calls, 1);
        let err = result.unwrap_err();
        let ApiError::Status(answer) = &err else {
            panic!("{err}")
        };
        assert_eq!(answer.error_type.as_deref(), Some("api_error"));
        assert_eq!(answer.message, "boom");
        assert_eq!(answer.request_id.as_deref(), Some("req_0"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_malformed_2xx_is_not_retried_and_says_why() {
        let (result, calls) = run(
            &RetryPolicy::default(),
            vec![Ok((200, vec![], "{\"id\": \"msg".to_string()))],
        )
        .await;
        assert_eq!(calls, 1);
        let err = result.unwrap_err();
        assert!(
            matches!(err, ApiError::Malformed { status: 200, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("not JSON"), "{err}");
        assert_eq!(err.meta().unwrap().request_ids(), ["req_0"]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_body_that_is_not_json_keeps_its_start_as_the_message() {
        let (result, _) = run(
            &RetryPolicy {
                max_retries: 0,
                ..RetryPolicy::default()
            },
            vec![Ok((502, vec![], "<html>Bad Gateway</html>".into()))],
        )
        .await;
        let err = result.unwrap_err();
        assert!(err.to_string().contains("<html>Bad Gateway"), "{err}");
        assert!(err.to_string().contains("(no error type)"), "{err}");
    }

    #[test]
    fn messages_url_appends_the_path_and_keeps_a_prefix() {
        let url = |base: &str| messages_url(base).map(|u| u.to_string());
        assert_eq!(
            url("https://api.anthropic.com").unwrap(),
            "https://api.anthropic.com/v1/messages"
        );
        assert_eq!(
            url("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080/v1/messages"
        );
        assert_eq!(
            url("https://gw.example/anthropic/").unwrap(),
            "https://gw.example/anthropic/v1/messages"
        );
        for bad in ["api.anthropic.com", "ftp://x", "http://x/?a=b", ""] {
            let err = url(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn the_key_never_prints_and_is_redacted_from_text() {
        let key = ApiKey::new("sk-ant-secret-123").unwrap();
        assert_eq!(format!("{key}"), "[REDACTED]");
        assert_eq!(format!("{key:?}"), "ApiKey([REDACTED])");
        assert_eq!(
            key.redact("env: KEY=sk-ant-secret-123 ok"),
            "env: KEY=[REDACTED] ok"
        );
        assert!(matches!(key.redact("nothing"), Cow::Borrowed(_)));
        assert!(ApiKey::new("").is_err());
        assert!(ApiKey::new("bad\nkey").is_err());
        let client = Client::new(ClientConfig::default(), key).unwrap();
        let printed = format!("{client:?}");
        assert!(!printed.contains("secret"), "{printed}");
    }

    #[test]
    fn attempts_serialize_with_millisecond_fields() {
        let meta = CallMeta {
            attempts: vec![Attempt {
                status: Some(529),
                request_id: Some("req_1".into()),
                http_time: Duration::from_millis(12),
                retry_delay: Some(Duration::from_millis(480)),
                error: None,
            }],
        };
        assert_eq!(
            serde_json::to_value(&meta).unwrap(),
            json!({"attempts": [{"status": 529, "request_id": "req_1", "http_ms": 12,
                                 "retry_delay_ms": 480, "error": null}]})
        );
    }
}
