//! The Messages API's wire shapes (non-streaming), over serde.
//!
//! What the tool loop needs is typed (text, `tool_use`, `tool_result`, the stop reason, the
//! usage); everything else is kept as JSON so that nothing the API sends is lost on the way
//! back: a block of a type this code does not know (`thinking`, `redacted_thinking`,
//! `server_tool_use`, `web_search_tool_result`, ...) is [`ContentBlock::Other`] holding the
//! block verbatim, and the known blocks keep their unknown fields (`citations`,
//! `cache_control`, ...) in `extra`. Appending a response's `content` to the conversation
//! therefore sends back exactly what the API produced, which the API requires (a thinking
//! block must come back unchanged, signature included).

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// Marks the end of a cacheable prefix (`{"type": "ephemeral"}`, the default five-minute
/// cache). The API caches tools, then system, then messages, up to the last marked block;
/// a prefix below the model's minimum length is silently not cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum CacheControl {
    Ephemeral,
}

/// One block of the `system` prompt (always sent as an array of text blocks, so that the
/// last one can carry [`CacheControl`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "text")]
pub struct SystemBlock {
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<CacheControl>,
}

impl SystemBlock {
    pub fn text(text: impl Into<String>) -> Self {
        SystemBlock {
            text: text.into(),
            cache_control: None,
        }
    }

    /// The same block, marked as the end of the cached prefix.
    pub fn cached(mut self) -> Self {
        self.cache_control = Some(CacheControl::Ephemeral);
        self
    }
}

/// A client tool the model may call: its name, what it does, and the JSON Schema of its
/// input (an object schema).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    pub description: String,
    pub input_schema: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<CacheControl>,
}

/// `tool_choice`: whether the model must, may or must not call a tool. `None` is how tools
/// are withheld on a last turn without dropping their definitions (a request whose history
/// holds `tool_use` blocks must still define the tools, and changing the tools would
/// invalidate the cached prefix).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToolChoice {
    Auto {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disable_parallel_tool_use: Option<bool>,
    },
    Any {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disable_parallel_tool_use: Option<bool>,
    },
    Tool {
        name: String,
    },
    None,
}

/// Who speaks a [`Message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

/// One turn of the conversation. The content is always sent as an array of blocks; a plain
/// string is accepted when reading one (the API allows both).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    #[serde(deserialize_with = "string_or_blocks")]
    pub content: Vec<ContentBlock>,
}

impl Message {
    pub fn user(content: Vec<ContentBlock>) -> Self {
        Message {
            role: Role::User,
            content,
        }
    }

    pub fn assistant(content: Vec<ContentBlock>) -> Self {
        Message {
            role: Role::Assistant,
            content,
        }
    }
}

fn string_or_blocks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ContentBlock>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Content {
        Text(String),
        Blocks(Vec<ContentBlock>),
    }
    Ok(match Content::deserialize(d)? {
        Content::Text(text) => vec![ContentBlock::text(text)],
        Content::Blocks(blocks) => blocks,
    })
}

/// A `POST /v1/messages` request body (non-streaming).
///
/// Serialization is deterministic (fields in declaration order, JSON object keys of
/// `input_schema`/`input` sorted by `serde_json`), so the same system prompt and tools give
/// the same bytes in every session: that is what makes the cached prefix hit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessagesRequest {
    pub model: String,
    pub max_tokens: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub system: Vec<SystemBlock>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<Tool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    pub messages: Vec<Message>,
}

/// One content block, in a request or a response.
///
/// # Guarantees
/// Reading a block and writing it back gives the same JSON object (key order aside): the
/// typed variants keep unknown fields in `extra`, and a block of any other `type` is kept
/// whole in [`ContentBlock::Other`].
#[derive(Debug, Clone, PartialEq)]
pub enum ContentBlock {
    Text(TextBlock),
    ToolUse(ToolUseBlock),
    ToolResult(ToolResultBlock),
    /// Any other block (`thinking`, `redacted_thinking`, `server_tool_use`, `image`, ...),
    /// verbatim, `type` included.
    Other(Value),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextBlock {
    pub text: String,
    /// Fields this code does not use (`citations`, `cache_control`), kept for the way back.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The model asks for a tool call. `id` is what the [`ToolResultBlock`] must name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolUseBlock {
    pub id: String,
    pub name: String,
    pub input: Value,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The answer to one `tool_use`; `is_error` tells the model the call failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolResultBlock {
    pub tool_use_id: String,
    #[serde(default = "ToolResultContent::empty")]
    pub content: ToolResultContent,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_error: bool,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A tool result's content: a string, or blocks (text, images).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ToolResultContent {
    Text(String),
    Blocks(Vec<ContentBlock>),
}

impl ToolResultContent {
    fn empty() -> Self {
        ToolResultContent::Text(String::new())
    }
}

impl ContentBlock {
    pub fn text(text: impl Into<String>) -> Self {
        ContentBlock::Text(TextBlock {
            text: text.into(),
            extra: Map::new(),
        })
    }

    /// A `tool_result` answering `tool_use_id`.
    pub fn tool_result(
        tool_use_id: impl Into<String>,
        content: impl Into<String>,
        is_error: bool,
    ) -> Self {
        ContentBlock::ToolResult(ToolResultBlock {
            tool_use_id: tool_use_id.into(),
            content: ToolResultContent::Text(content.into()),
            is_error,
            extra: Map::new(),
        })
    }

    /// The block's `type` as the API spells it.
    pub fn kind(&self) -> &str {
        match self {
            ContentBlock::Text(_) => "text",
            ContentBlock::ToolUse(_) => "tool_use",
            ContentBlock::ToolResult(_) => "tool_result",
            ContentBlock::Other(v) => v.get("type").and_then(Value::as_str).unwrap_or(""),
        }
    }
}

impl Serialize for ContentBlock {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error as _;
        let (kind, fields) = match self {
            ContentBlock::Other(v) => return v.serialize(s),
            ContentBlock::Text(b) => ("text", serde_json::to_value(b)),
            ContentBlock::ToolUse(b) => ("tool_use", serde_json::to_value(b)),
            ContentBlock::ToolResult(b) => ("tool_result", serde_json::to_value(b)),
        };
        let Value::Object(fields) = fields.map_err(S::Error::custom)? else {
            return Err(S::Error::custom(
                "a content block serialized to a non-object",
            ));
        };
        let mut object = Map::with_capacity(fields.len() + 1);
        object.insert("type".to_string(), Value::String(kind.to_string()));
        object.extend(fields);
        Value::Object(object).serialize(s)
    }
}

impl<'de> Deserialize<'de> for ContentBlock {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        let Value::Object(mut object) = value else {
            return Err(D::Error::custom(format!(
                "a content block must be a JSON object, found {value}"
            )));
        };
        let kind = match object.get("type") {
            Some(Value::String(kind)) => kind.clone(),
            _ => return Err(D::Error::custom("a content block has no string `type`")),
        };
        let typed = |object: Map<String, Value>| Value::Object(object);
        match kind.as_str() {
            "text" | "tool_use" | "tool_result" => {
                object.remove("type");
                let fields = typed(object);
                let block = match kind.as_str() {
                    "text" => serde_json::from_value(fields).map(ContentBlock::Text),
                    "tool_use" => serde_json::from_value(fields).map(ContentBlock::ToolUse),
                    _ => serde_json::from_value(fields).map(ContentBlock::ToolResult),
                };
                block.map_err(|e| D::Error::custom(format!("a `{kind}` block: {e}")))
            }
            _ => Ok(ContentBlock::Other(typed(object))),
        }
    }
}

/// Why the model stopped. Unknown values (the API adds some now and then) are kept as
/// text in [`StopReason::Other`] rather than failing the whole response.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StopReason {
    EndTurn,
    ToolUse,
    MaxTokens,
    StopSequence,
    /// A server tool's long turn was paused: send the conversation back as is to continue.
    PauseTurn,
    /// The model declined; `stop_details` says why.
    Refusal,
    ModelContextWindowExceeded,
    Other(String),
}

impl StopReason {
    pub fn as_str(&self) -> &str {
        match self {
            StopReason::EndTurn => "end_turn",
            StopReason::ToolUse => "tool_use",
            StopReason::MaxTokens => "max_tokens",
            StopReason::StopSequence => "stop_sequence",
            StopReason::PauseTurn => "pause_turn",
            StopReason::Refusal => "refusal",
            StopReason::ModelContextWindowExceeded => "model_context_window_exceeded",
            StopReason::Other(text) => text,
        }
    }

    pub fn parse(text: &str) -> Self {
        match text {
            "end_turn" => StopReason::EndTurn,
            "tool_use" => StopReason::ToolUse,
            "max_tokens" => StopReason::MaxTokens,
            "stop_sequence" => StopReason::StopSequence,
            "pause_turn" => StopReason::PauseTurn,
            "refusal" => StopReason::Refusal,
            "model_context_window_exceeded" => StopReason::ModelContextWindowExceeded,
            other => StopReason::Other(other.to_string()),
        }
    }
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for StopReason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for StopReason {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(StopReason::parse(&String::deserialize(d)?))
    }
}

/// Token counts of one response. The cache fields are `null` or absent when nothing was
/// cached; both read as 0.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    #[serde(default, deserialize_with = "null_as_zero")]
    pub cache_creation_input_tokens: u64,
    #[serde(default, deserialize_with = "null_as_zero")]
    pub cache_read_input_tokens: u64,
    /// Whatever else the API reports (`service_tier`, `server_tool_use`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn null_as_zero<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(Option::<u64>::deserialize(d)?.unwrap_or(0))
}

/// A successful response (`"type": "message"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessagesResponse {
    pub id: String,
    #[serde(default)]
    pub model: String,
    pub role: Role,
    pub content: Vec<ContentBlock>,
    /// Always set in a non-streaming response; `None` only if the API sent `null`.
    pub stop_reason: Option<StopReason>,
    #[serde(default)]
    pub stop_sequence: Option<String>,
    /// Details of the stop (for a refusal: `{type, category, explanation}`), verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_details: Option<Value>,
    pub usage: Usage,
}

/// The structured reason of a refusal, read from `stop_details`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub category: Option<String>,
    pub explanation: Option<String>,
}

impl MessagesResponse {
    /// The assistant turn to append to the conversation: the whole content, unchanged.
    pub fn to_message(&self) -> Message {
        Message::assistant(self.content.clone())
    }

    /// The `tool_use` blocks, in the order the model wrote them.
    pub fn tool_uses(&self) -> impl Iterator<Item = &ToolUseBlock> {
        self.content.iter().filter_map(|b| match b {
            ContentBlock::ToolUse(t) => Some(t),
            _ => None,
        })
    }

    /// The text blocks joined by newlines (the model's claim, for the audit).
    pub fn text(&self) -> String {
        let texts: Vec<&str> = self
            .content
            .iter()
            .filter_map(|b| match b {
                ContentBlock::Text(t) => Some(t.text.as_str()),
                _ => None,
            })
            .collect();
        texts.join("\n")
    }

    /// The refusal's category and explanation when `stop_details` is a refusal.
    pub fn refusal(&self) -> Option<Refusal> {
        let details = self.stop_details.as_ref()?;
        if details.get("type").and_then(Value::as_str) != Some("refusal") {
            return None;
        }
        let field = |name: &str| {
            details
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        Some(Refusal {
            category: field("category"),
            explanation: field("explanation"),
        })
    }
}

/// Reads a 2xx body as a [`MessagesResponse`], saying what is wrong when it is not one.
pub(super) fn parse_response(body: &[u8]) -> Result<MessagesResponse, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        format!(
            "the body is not JSON ({e}); it starts with {:?}",
            preview(body)
        )
    })?;
    match value.get("type").and_then(Value::as_str) {
        Some("message") => {}
        Some(other) => return Err(format!("`type` is {other:?}, expected \"message\"")),
        None => return Err("the body has no `type` (expected \"message\")".to_string()),
    }
    serde_json::from_value(value).map_err(|e| format!("not a Messages response: {e}"))
}

/// At most 200 characters of a body, for error messages.
pub(super) fn preview(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut cut: String = text.chars().take(200).collect();
    if text.chars().count() > 200 {
        cut.push('…');
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn round_trip(value: Value) -> ContentBlock {
        let block: ContentBlock = serde_json::from_value(value.clone()).expect("parses");
        assert_eq!(serde_json::to_value(&block).expect("serializes"), value);
        block
    }

    #[test]
    fn text_block_round_trips_with_its_unknown_fields() {
        let block = round_trip(json!({"type": "text", "text": "hi", "citations": [{"x": 1}]}));
        let ContentBlock::Text(text) = block else {
            panic!("not text")
        };
        assert_eq!(text.text, "hi");
        assert!(text.extra.contains_key("citations"));
    }

    #[test]
    fn tool_use_block_round_trips() {
        let block = round_trip(json!({
            "type": "tool_use", "id": "toolu_01", "name": "shell",
            "input": {"command": "docker start x"}
        }));
        let ContentBlock::ToolUse(call) = block else {
            panic!("not tool_use")
        };
        assert_eq!(call.id, "toolu_01");
        assert_eq!(call.input["command"], "docker start x");
    }

    #[test]
    fn tool_result_block_round_trips_as_string_or_blocks_and_omits_a_false_is_error() {
        round_trip(json!({"type": "tool_result", "tool_use_id": "t1", "content": "ok"}));
        let block = round_trip(json!({
            "type": "tool_result", "tool_use_id": "t1",
            "content": [{"type": "text", "text": "boom"}], "is_error": true
        }));
        let ContentBlock::ToolResult(result) = block else {
            panic!("not tool_result")
        };
        assert!(result.is_error);
        assert!(matches!(result.content, ToolResultContent::Blocks(ref b) if b.len() == 1));
        let made = ContentBlock::tool_result("t2", "out", false);
        assert_eq!(
            serde_json::to_value(&made).unwrap(),
            json!({"type": "tool_result", "tool_use_id": "t2", "content": "out"})
        );
        let parsed: ContentBlock =
            serde_json::from_value(json!({"type": "tool_result", "tool_use_id": "t3"})).unwrap();
        assert_eq!(parsed, ContentBlock::tool_result("t3", "", false));
    }

    #[test]
    fn unknown_blocks_are_kept_verbatim() {
        for value in [
            json!({"type": "thinking", "thinking": "hmm", "signature": "c2lnbmF0dXJl"}),
            json!({"type": "redacted_thinking", "data": "opaque"}),
            json!({"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "q"}}),
            json!({"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []}),
        ] {
            let block = round_trip(value.clone());
            assert_eq!(block, ContentBlock::Other(value.clone()));
            assert_eq!(block.kind(), value["type"].as_str().unwrap());
        }
    }

    #[test]
    fn malformed_known_blocks_are_errors_naming_the_block() {
        let err = serde_json::from_value::<ContentBlock>(json!({"type": "tool_use", "id": "x"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`tool_use` block"), "{err}");
        assert!(serde_json::from_value::<ContentBlock>(json!({"text": "no type"})).is_err());
        assert!(serde_json::from_value::<ContentBlock>(json!("text")).is_err());
    }

    #[test]
    fn every_stop_reason_parses_and_prints_back_and_unknown_ones_are_kept() {
        for text in [
            "end_turn",
            "tool_use",
            "max_tokens",
            "stop_sequence",
            "pause_turn",
            "refusal",
            "model_context_window_exceeded",
            "something_new",
        ] {
            let reason: StopReason = serde_json::from_value(json!(text)).unwrap();
            assert_eq!(reason.as_str(), text);
            assert_eq!(serde_json::to_value(&reason).unwrap(), json!(text));
        }
        assert_eq!(StopReason::parse("refusal"), StopReason::Refusal);
        assert_eq!(
            StopReason::parse("something_new"),
            StopReason::Other("something_new".into())
        );
    }

    #[test]
    fn request_serializes_system_and_tools_with_cache_control_and_is_stable() {
        let request = MessagesRequest {
            model: "claude-sonnet-4-5".into(),
            max_tokens: 1024,
            system: vec![SystemBlock::text("a"), SystemBlock::text("b").cached()],
            tools: vec![Tool {
                name: "shell".into(),
                description: "runs".into(),
                input_schema: json!({"type": "object", "properties": {"command": {"type": "string"}}}),
                cache_control: Some(CacheControl::Ephemeral),
            }],
            tool_choice: None,
            messages: vec![Message::user(vec![ContentBlock::text("go")])],
        };
        let value = serde_json::to_value(&request).unwrap();
        assert_eq!(
            value["system"],
            json!([{"type": "text", "text": "a"},
                   {"type": "text", "text": "b", "cache_control": {"type": "ephemeral"}}])
        );
        assert_eq!(
            value["tools"][0]["cache_control"],
            json!({"type": "ephemeral"})
        );
        assert!(value.get("tool_choice").is_none());
        assert_eq!(
            value["messages"],
            json!([{"role": "user", "content": [{"type": "text", "text": "go"}]}])
        );
        let again: MessagesRequest = serde_json::from_value(value).unwrap();
        assert_eq!(again, request);
        assert_eq!(
            serde_json::to_vec(&request).unwrap(),
            serde_json::to_vec(&again).unwrap()
        );
        let none = serde_json::to_value(ToolChoice::None).unwrap();
        assert_eq!(none, json!({"type": "none"}));
    }

    #[test]
    fn a_message_with_string_content_reads_as_one_text_block() {
        let message: Message =
            serde_json::from_value(json!({"role": "user", "content": "hello"})).unwrap();
        assert_eq!(message, Message::user(vec![ContentBlock::text("hello")]));
    }

    #[test]
    fn response_parses_with_usage_cache_fields_null_or_absent_and_refusal_details() {
        let body = json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [{"type": "text", "text": "no"}],
            "stop_reason": "refusal", "stop_sequence": null,
            "stop_details": {"type": "refusal", "category": "cyber", "explanation": "unsafe"},
            "usage": {"input_tokens": 10, "output_tokens": 2,
                      "cache_creation_input_tokens": null, "service_tier": "standard"}
        });
        let response = parse_response(body.to_string().as_bytes()).unwrap();
        assert_eq!(response.stop_reason, Some(StopReason::Refusal));
        assert_eq!(response.usage.cache_creation_input_tokens, 0);
        assert_eq!(response.usage.cache_read_input_tokens, 0);
        assert_eq!(response.usage.extra["service_tier"], "standard");
        assert_eq!(
            response.refusal(),
            Some(Refusal {
                category: Some("cyber".into()),
                explanation: Some("unsafe".into())
            })
        );
        assert_eq!(response.text(), "no");
    }

    #[test]
    fn the_assistant_turn_appended_is_the_whole_content_unchanged() {
        let content = json!([
            {"type": "thinking", "thinking": "t", "signature": "s"},
            {"type": "text", "text": "I will start it."},
            {"type": "tool_use", "id": "toolu_a", "name": "shell", "input": {"command": "a"}},
            {"type": "tool_use", "id": "toolu_b", "name": "status", "input": {}}
        ]);
        let body = json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "m",
            "content": content, "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 1, "output_tokens": 1}
        });
        let response = parse_response(body.to_string().as_bytes()).unwrap();
        let ids: Vec<&str> = response.tool_uses().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["toolu_a", "toolu_b"]);
        let message = serde_json::to_value(response.to_message()).unwrap();
        assert_eq!(message, json!({"role": "assistant", "content": content}));
    }

    #[test]
    fn malformed_bodies_say_what_is_wrong() {
        let not_json = parse_response(b"<html>oops</html>").unwrap_err();
        assert!(
            not_json.contains("not JSON") && not_json.contains("<html>"),
            "{not_json}"
        );
        let error_type = parse_response(br#"{"type":"error"}"#).unwrap_err();
        assert!(error_type.contains("\"error\""), "{error_type}");
        let no_usage = parse_response(
            br#"{"type":"message","id":"m","role":"assistant","content":[],"stop_reason":"end_turn"}"#,
        )
        .unwrap_err();
        assert!(no_usage.contains("usage"), "{no_usage}");
        let no_type = parse_response(b"{}").unwrap_err();
        assert!(no_type.contains("no `type`"), "{no_type}");
    }
}
