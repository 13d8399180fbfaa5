//! A caller's request as providers will see it. The caller's JSON is kept as it came (every
//! field, known or not, content parts and tools included) with the typed gRPC fields written
//! over it; the gateway checks the few fields it reasons about and, per attempt, writes only
//! what it owns: `model` (the deployment's name for it), `stream` and `stream_options`, and
//! `max_tokens` when the caller set no bound.

use portico_proto::{chat as pb, limits::chat as limits};
use serde::Serialize;
use serde_json::{Map, Value};
use tonic::Status;

// The contract's limits (`portico_proto::limits::chat`, which the edge's OpenAPI states too),
// in the types the checks compare with.
const MAX_MESSAGES: usize = limits::MAX_MESSAGES as usize;
const MAX_STOP: usize = limits::MAX_STOP as usize;
pub const MAX_CHOICES: u64 = limits::MAX_CHOICES as u64;
const MAX_TOOLS: usize = limits::MAX_TOOLS as usize;
const MAX_INPUTS: usize = limits::MAX_INPUTS as usize;
const MAX_MODEL_CHARS: usize = limits::MAX_MODEL_CHARS as usize;
/// Most bytes of conversation text.
const MAX_TEXT_BYTES: usize = 1 << 20;
/// The roles OpenAI's chat API knows.
const ROLES: &[&str] = &[
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

fn invalid<T>(message: impl Into<String>) -> Result<T, Status> {
    Err(Status::invalid_argument(message.into()))
}

/// The bad fields of one request, gathered so a caller hears of every one in a single
/// INVALID_ARGUMENT (a `google.rpc.BadRequest`), not one per round trip.
#[derive(Debug, Default)]
struct Violations(Vec<(String, String)>);

impl Violations {
    /// Records that `field` (a path such as `messages[2].content`) is bad, and why.
    fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push((field.into(), description.into()));
    }

    /// `Ok` when nothing was recorded, else every violation in one status.
    fn finish(self) -> Result<(), Status> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(portico_grpc::bad_request(self.0))
        }
    }
}

/// A chat request, checked.
#[derive(Debug, Clone)]
pub struct Chat {
    /// The caller's fields but `model`, `stream` and `stream_options`.
    pub body: Map<String, Value>,
    /// The alias asked for; empty for the default.
    pub alias: String,
    /// The caller's `stream_options`, less `include_usage` (which the gateway always sets).
    pub stream_options: Map<String, Value>,
    /// Whether the caller wants the usage chunk.
    pub include_usage: bool,
}

/// An embeddings request, checked.
#[derive(Debug, Clone)]
pub struct Embedding {
    /// The caller's fields but `model`.
    pub body: Map<String, Value>,
    /// The alias asked for; empty for the default.
    pub alias: String,
}

#[derive(Serialize)]
struct Outgoing<'a> {
    model: &'a str,
    #[serde(flatten)]
    body: &'a Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<Map<String, Value>>,
}

impl Chat {
    /// The body one deployment receives.
    pub fn for_deployment(&self, model: &str, stream: bool) -> Vec<u8> {
        let stream_options = stream.then(|| {
            let mut options = self.stream_options.clone();
            // Always asked for, so token counters are right even when the caller did not ask.
            options.insert("include_usage".into(), Value::Bool(true));
            options
        });
        let outgoing = Outgoing {
            model,
            body: &self.body,
            stream: stream.then_some(true),
            stream_options,
        };
        serde_json::to_vec(&outgoing).unwrap_or_default()
    }
}

impl Embedding {
    /// The body one deployment receives.
    pub fn for_deployment(&self, model: &str) -> Vec<u8> {
        let outgoing = Outgoing {
            model,
            body: &self.body,
            stream: None,
            stream_options: None,
        };
        serde_json::to_vec(&outgoing).unwrap_or_default()
    }
}

fn object(json: &str) -> Result<Map<String, Value>, Status> {
    if json.trim().is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str::<Value>(json) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => invalid("the request body must be a JSON object"),
        Err(error) => invalid(format!("the request body is not valid JSON: {error}")),
    }
}

/// `model` from the typed field, else the JSON's (removed from the body).
fn take_model(body: &mut Map<String, Value>, typed: String, bad: &mut Violations) -> String {
    let from_json = match body.remove("model") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(model)) => model,
        Some(_) => {
            bad.add("model", "model must be a string");
            String::new()
        }
    };
    let model = if typed.is_empty() { from_json } else { typed };
    if model.chars().count() > MAX_MODEL_CHARS {
        bad.add(
            "model",
            format!("model is longer than {MAX_MODEL_CHARS} characters"),
        );
    }
    model
}

/// An f32 as the decimal its caller most likely wrote (0.7, not 0.699999988…).
fn decimal(value: f32) -> Value {
    format!("{value}")
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

fn typed_message(message: pb::ChatMessage) -> Value {
    let mut value = Map::new();
    value.insert("role".into(), Value::String(message.role));
    let content = if message.content.is_empty() && !message.tool_calls.is_empty() {
        Value::Null
    } else {
        Value::String(message.content)
    };
    value.insert("content".into(), content);
    if !message.tool_call_id.is_empty() {
        value.insert("tool_call_id".into(), Value::String(message.tool_call_id));
    }
    if !message.refusal.is_empty() {
        value.insert("refusal".into(), Value::String(message.refusal));
    }
    if !message.tool_calls.is_empty() {
        let calls = message
            .tool_calls
            .into_iter()
            .map(|call| {
                serde_json::json!({
                    "id": call.id,
                    "type": if call.r#type.is_empty() { "function".to_owned() } else { call.r#type },
                    "function": {"name": call.name, "arguments": call.arguments},
                })
            })
            .collect();
        value.insert("tool_calls".into(), Value::Array(calls));
    }
    Value::Object(value)
}

/// The text of a message's content: a string, or the `text` of its parts.
pub fn text_of(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn check_messages(body: &Map<String, Value>, bad: &mut Violations) {
    let messages = match body.get("messages") {
        Some(Value::Array(messages)) if !messages.is_empty() && messages.len() <= MAX_MESSAGES => {
            messages
        }
        _ => {
            bad.add(
                "messages",
                format!("messages must hold 1 to {MAX_MESSAGES} messages"),
            );
            return;
        }
    };
    let mut text = 0;
    for (index, message) in messages.iter().enumerate() {
        let field = format!("messages[{index}]");
        let Some(message) = message.as_object() else {
            bad.add(field, format!("message {index} is not an object"));
            continue;
        };
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        if !ROLES.contains(&role) {
            bad.add(
                format!("{field}.role"),
                format!(
                    "message {index}: role `{role}` is not system, developer, user, assistant or tool"
                ),
            );
        }
        match message.get("content") {
            None | Some(Value::Null) if role == "assistant" => {}
            Some(Value::String(content)) => text += content.len(),
            Some(Value::Array(parts)) => {
                for (part_index, part) in parts.iter().enumerate() {
                    if part.get("type").and_then(Value::as_str).is_none() {
                        bad.add(
                            format!("{field}.content[{part_index}].type"),
                            format!("message {index}: every content part needs a `type`"),
                        );
                    }
                    text += part.get("text").and_then(Value::as_str).map_or(0, str::len);
                }
            }
            _ => bad.add(
                format!("{field}.content"),
                format!("message {index}: content must be a string or an array of parts"),
            ),
        }
        match message.get("tool_calls") {
            None | Some(Value::Null) => {}
            Some(Value::Array(calls)) if calls.iter().all(Value::is_object) => {}
            Some(_) => bad.add(
                format!("{field}.tool_calls"),
                format!("message {index}: tool_calls must be an array of tool calls"),
            ),
        }
        if role == "tool" && !message.get("tool_call_id").is_some_and(Value::is_string) {
            bad.add(
                format!("{field}.tool_call_id"),
                format!("message {index}: a tool message needs tool_call_id"),
            );
        }
    }
    if text > MAX_TEXT_BYTES {
        bad.add(
            "messages",
            format!("messages hold more than {MAX_TEXT_BYTES} bytes"),
        );
    }
}

/// `field` as a number; a value of another type is recorded as a violation (and read as unset).
fn number(body: &Map<String, Value>, field: &str, bad: &mut Violations) -> Option<f64> {
    let value = body.get(field).filter(|v| !v.is_null())?;
    let n = value.as_f64();
    if n.is_none() {
        bad.add(field, format!("{field} must be a number"));
    }
    n
}

/// `field` as a whole number; a value of another type is recorded as a violation.
fn count(body: &Map<String, Value>, field: &str, bad: &mut Violations) -> Option<u64> {
    let value = body.get(field).filter(|v| !v.is_null())?;
    // `2.0` is a whole number too (JSON Schema's `integer`; OpenAI's API takes it).
    let n = value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.fract() == 0.0 && (0.0..1e19).contains(f))
            .map(|f| f as u64)
    });
    if n.is_none() {
        bad.add(field, format!("{field} must be a whole number"));
    }
    n
}

fn check_fields(body: &Map<String, Value>, max_tokens: u32, bad: &mut Violations) {
    if number(body, "temperature", bad).is_some_and(|t| !(0.0..=2.0).contains(&t)) {
        bad.add("temperature", "temperature must be between 0 and 2");
    }
    if number(body, "top_p", bad).is_some_and(|p| !(0.0..=1.0).contains(&p)) {
        bad.add("top_p", "top_p must be between 0 and 1");
    }
    for field in ["max_tokens", "max_completion_tokens"] {
        match count(body, field, bad) {
            Some(0) => bad.add(field, format!("{field} must be at least 1")),
            Some(n) if n > u64::from(max_tokens) => {
                bad.add(field, format!("{field} must be at most {max_tokens}"));
            }
            _ => {}
        }
    }
    if count(body, "n", bad).is_some_and(|n| !(1..=MAX_CHOICES).contains(&n)) {
        bad.add("n", format!("n must be between 1 and {MAX_CHOICES}"));
    }
    let stop_ok = match body.get("stop") {
        None | Some(Value::Null) => true,
        Some(Value::String(stop)) => !stop.is_empty(),
        Some(Value::Array(stops)) => {
            stops.len() <= MAX_STOP
                && stops
                    .iter()
                    .all(|s| s.as_str().is_some_and(|s| !s.is_empty()))
        }
        Some(_) => false,
    };
    if !stop_ok {
        bad.add(
            "stop",
            format!("at most {MAX_STOP} stop sequences, none empty"),
        );
    }
    match body.get("tools") {
        None | Some(Value::Null) => {}
        Some(Value::Array(tools)) if tools.len() <= MAX_TOOLS => {
            for (index, _) in tools.iter().enumerate().filter(|(_, t)| !t.is_object()) {
                bad.add(format!("tools[{index}]"), "every tool must be an object");
            }
        }
        Some(_) => bad.add(
            "tools",
            format!("tools must be an array of at most {MAX_TOOLS}"),
        ),
    }
}

/// Reads and checks a chat request; every call then carries a bound on its tokens (the
/// caller's, or `max_tokens` — `LLM_MAX_TOKENS` — when it set none).
///
/// A body that is not a JSON object is refused alone; otherwise every bad field is reported
/// in one INVALID_ARGUMENT whose `BadRequest` names each (`messages[2].content`, `stop`).
pub fn chat(request: pb::CompleteRequest, max_tokens: u32) -> Result<Chat, Status> {
    let mut body = object(&request.openai_json)?;
    let mut bad = Violations::default();
    if !request.messages.is_empty() {
        if body.contains_key("messages") {
            bad.add(
                "messages",
                "messages are given twice (typed and in openai_json)",
            );
        } else {
            let messages = request.messages.into_iter().map(typed_message).collect();
            body.insert("messages".into(), Value::Array(messages));
        }
    }
    let alias = take_model(&mut body, request.model, &mut bad);
    // Infinity or NaN is no JSON number: written as `null`, it would read as unset.
    let unbounded_temperature = request.temperature.is_some_and(|t| !t.is_finite());
    if let Some(temperature) = request.temperature.filter(|t| t.is_finite()) {
        body.insert("temperature".into(), decimal(temperature));
    }
    if let Some(max) = request.max_tokens {
        body.insert("max_tokens".into(), Value::from(max));
    }
    if !request.stop.is_empty() {
        body.insert(
            "stop".into(),
            Value::Array(request.stop.into_iter().map(Value::String).collect()),
        );
    }
    body.remove("stream");
    let mut stream_options = match body.remove("stream_options") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(options)) => options,
        Some(_) => {
            bad.add("stream_options", "stream_options must be an object");
            Map::new()
        }
    };
    let include_usage = request.include_usage
        || matches!(
            stream_options.remove("include_usage"),
            Some(Value::Bool(true))
        );
    check_messages(&body, &mut bad);
    if unbounded_temperature {
        bad.add("temperature", "temperature must be between 0 and 2");
    }
    check_fields(&body, max_tokens, &mut bad);
    bad.finish()?;
    if !body.contains_key("max_tokens") && !body.contains_key("max_completion_tokens") {
        body.insert("max_tokens".into(), Value::from(max_tokens));
    }
    Ok(Chat {
        body,
        alias,
        stream_options,
        include_usage,
    })
}

/// Reads and checks an embeddings request (every bad field reported together, as for chat).
pub fn embedding(request: pb::EmbedRequest) -> Result<Embedding, Status> {
    let mut body = object(&request.openai_json)?;
    let mut bad = Violations::default();
    let alias = take_model(&mut body, request.model, &mut bad);
    let ok = match body.get("input") {
        Some(Value::String(_)) => true,
        Some(Value::Array(inputs)) => !inputs.is_empty() && inputs.len() <= MAX_INPUTS,
        _ => false,
    };
    if !ok {
        bad.add(
            "input",
            format!("input must be a string or an array of 1 to {MAX_INPUTS} inputs"),
        );
    }
    if count(&body, "dimensions", &mut bad).is_some_and(|d| !(1..=8192).contains(&d)) {
        bad.add("dimensions", "dimensions must be between 1 and 8192");
    }
    bad.finish()?;
    Ok(Embedding { body, alias })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message(role: &str) -> pb::ChatMessage {
        pb::ChatMessage {
            role: role.into(),
            content: "hi".into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_callers_json_reaches_the_provider_with_only_the_gateways_fields_rewritten() {
        let caller = json!({
            "model": "chat-default", "stream": true,
            "stream_options": {"include_usage": true, "future_option": 1},
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": "auto", "temperature": 0.7, "seed": 7, "brand_new_field": {"x": [1]},
        });
        let read = chat(
            pb::CompleteRequest {
                openai_json: caller.to_string(),
                ..Default::default()
            },
            4096,
        )
        .expect("valid");
        assert_eq!(read.alias, "chat-default");
        assert!(read.include_usage);
        let sent: Value =
            serde_json::from_slice(&read.for_deployment("gpt-4o-2024-08-06", true)).expect("json");
        let mut expected = caller.clone();
        expected["model"] = json!("gpt-4o-2024-08-06");
        expected["max_tokens"] = json!(4096);
        assert_eq!(sent, expected);
        let whole: Value = serde_json::from_slice(&read.for_deployment("m", false)).expect("json");
        assert!(whole.get("stream").is_none() && whole.get("stream_options").is_none());
        // Typed fields are written over the JSON; a typed float stays the decimal it was.
        let typed = chat(
            pb::CompleteRequest {
                messages: vec![message("user")],
                temperature: Some(0.7),
                openai_json: r#"{"seed": 1, "temperature": 1.5}"#.into(),
                ..Default::default()
            },
            4096,
        )
        .expect("valid");
        assert_eq!(typed.body["temperature"], json!(0.7));
        assert_eq!(typed.body["seed"], json!(1));
        assert_eq!(
            typed.body["messages"],
            json!([{"role": "user", "content": "hi"}])
        );
    }

    #[test]
    fn bad_requests_are_invalid_arguments_that_say_why() {
        let good = pb::CompleteRequest {
            messages: vec![message("user")],
            ..Default::default()
        };
        let bounded = chat(good.clone(), 4096).expect("valid");
        assert_eq!(
            bounded.body["max_tokens"],
            json!(4096),
            "the ceiling when none was asked"
        );
        let json = |text: &str| pb::CompleteRequest {
            openai_json: text.into(),
            ..Default::default()
        };
        for (request, fragment) in [
            (pb::CompleteRequest::default(), "1 to 256"),
            (
                pb::CompleteRequest {
                    messages: vec![message("robot")],
                    ..Default::default()
                },
                "robot",
            ),
            (
                pb::CompleteRequest {
                    temperature: Some(2.5),
                    ..good.clone()
                },
                "temperature",
            ),
            (
                pb::CompleteRequest {
                    temperature: Some(f32::INFINITY),
                    ..good.clone()
                },
                "temperature",
            ),
            (
                pb::CompleteRequest {
                    temperature: Some(f32::NAN),
                    ..good.clone()
                },
                "temperature",
            ),
            (
                pb::CompleteRequest {
                    stop: vec![String::new()],
                    ..good.clone()
                },
                "stop",
            ),
            (
                pb::CompleteRequest {
                    max_tokens: Some(0),
                    ..good.clone()
                },
                "max_tokens",
            ),
            (
                pb::CompleteRequest {
                    max_tokens: Some(4_000_000_000),
                    ..good.clone()
                },
                "at most 4096",
            ),
            (
                json(
                    r#"{"messages":[{"role":"user","content":"x"}],"max_completion_tokens":5000}"#,
                ),
                "max_completion_tokens must be at most 4096",
            ),
            (
                json(r#"{"messages":[{"role":"user","content":"x"}],"n":9}"#),
                "n must be between 1 and 8",
            ),
            (
                json(r#"{"messages":[{"role":"tool","content":"x"}]}"#),
                "tool_call_id",
            ),
            (
                json(r#"{"messages":[{"role":"user","content":[{"text":"x"}]}]}"#),
                "type",
            ),
            (
                json(r#"{"messages":[{"role":"assistant","content":null,"tool_calls":false}]}"#),
                "tool_calls must be an array",
            ),
            (
                json(r#"{"messages":[{"role":"user","content":"x"}],"n":1.5}"#),
                "n must be a whole number",
            ),
            (json("[1]"), "JSON object"),
            (
                pb::CompleteRequest {
                    openai_json: r#"{"messages":[]}"#.into(),
                    ..good.clone()
                },
                "twice",
            ),
        ] {
            let status = chat(request, 4096).expect_err(fragment);
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().contains(fragment), "{}", status.message());
        }
        let embed = |text: &str| {
            embedding(pb::EmbedRequest {
                openai_json: text.into(),
                ..Default::default()
            })
        };
        assert!(
            chat(
                json(r#"{"messages":[{"role":"user","content":"x"}],"n":2.0,"max_tokens":5.0}"#),
                4096
            )
            .is_ok(),
            "a whole number written as 2.0 is JSON Schema's integer"
        );
        assert!(
            chat(
                json(r#"{"messages":[{"role":"assistant","content":null,"tool_calls":null}]}"#),
                4096
            )
            .is_ok(),
            "an answer's message sent back as an SDK returned it: no content, tool_calls null"
        );
        assert!(embed(r#"{"input":"hi","model":"e"}"#).is_ok());
        assert!(embed(r#"{"input":[]}"#).is_err());
        assert!(embed(r#"{"model":"e"}"#).is_err());
    }

    #[test]
    fn every_bad_field_is_reported_at_once_with_its_path() {
        use tonic_types::StatusExt;
        let status = chat(
            pb::CompleteRequest {
                openai_json: json!({
                    "messages": [
                        {"role": "user", "content": "fine"},
                        {"role": "robot", "content": "x"},
                        {"role": "user", "content": 42},
                        {"role": "tool", "content": [{"text": "no type"}]},
                    ],
                    "temperature": 3, "n": "two", "stop": [""], "tools": [{}, 1],
                })
                .to_string(),
                ..Default::default()
            },
            4096,
        )
        .expect_err("invalid");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let fields: Vec<String> = status
            .get_details_bad_request()
            .expect("BadRequest")
            .field_violations
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(
            fields,
            [
                "messages[1].role",
                "messages[2].content",
                "messages[3].content[0].type",
                "messages[3].tool_call_id",
                "temperature",
                "n",
                "stop",
                "tools[1]",
            ]
        );
        // The message names every problem too, for callers that read no details.
        for fragment in [
            "robot",
            "message 2: content",
            "temperature",
            "n must be",
            "stop",
        ] {
            assert!(status.message().contains(fragment), "{}", status.message());
        }
        let embed = embedding(pb::EmbedRequest {
            openai_json: r#"{"input": [], "dimensions": 0, "model": 7}"#.into(),
            ..Default::default()
        })
        .expect_err("invalid");
        let fields: Vec<String> = embed
            .get_details_bad_request()
            .expect("BadRequest")
            .field_violations
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(fields, ["model", "input", "dimensions"]);
    }
}
