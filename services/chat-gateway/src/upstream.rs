//! Calling one provider: an OpenAI-compatible `POST {base_url}/chat/completions` (whole or as
//! server-sent events) or `POST {base_url}/embeddings`, or the built-in `echo` provider. Bodies
//! pass through: the provider receives the caller's JSON (see `request`), and its answer — every
//! chunk of a stream — is kept exactly as it came, next to the few fields Portico reads from it.
//! Failures are classified here, once: the caller's fault, or the provider's (which the circuit
//! breaker counts and failover skips).

use std::{pin::Pin, time::Duration};

use eventsource_stream::Eventsource as _;
use futures_util::{stream, Stream, StreamExt as _};
use portico_config::ExposeSecret as _;
use portico_proto::chat as pb;
use serde::Deserialize;
use serde_json::Value;

use crate::{
    providers::Spec,
    request::{Chat, Embedding},
};

/// Token usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt: u32,
    pub completion: u32,
    /// `prompt_tokens_details.cached_tokens`.
    pub cached: u32,
    /// `completion_tokens_details.reasoning_tokens`.
    pub reasoning: u32,
}

/// A whole answer: the provider's JSON and what Portico reads from it.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The provider's body, as it sent it.
    pub json: String,
    pub id: String,
    pub model: String,
    /// The first choice's text.
    pub content: String,
    /// The first choice's refusal.
    pub refusal: String,
    /// The first choice's tool calls.
    pub tool_calls: Vec<pb::ToolCall>,
    /// Every choice's finish reason, in order.
    pub finish_reasons: Vec<String>,
    pub usage: Usage,
}

/// Embeddings: the provider's JSON and its accounting.
#[derive(Debug, Clone)]
pub struct Embedded {
    pub json: String,
    pub model: String,
    pub usage: Usage,
}

/// One piece of a streamed answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// One `chat.completion.chunk`: its data exactly as sent, and what Portico reads from it.
    Chunk {
        json: String,
        id: String,
        model: String,
        /// The first choice's delta role, text and finish reason.
        role: String,
        content: String,
        finish_reason: Option<String>,
        /// Whether the chunk has any choice (the usage chunk has none).
        has_choices: bool,
        usage: Option<Usage>,
    },
    /// `data: [DONE]`: the answer is complete.
    Done,
}

/// Why a call failed.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The provider refused the caller's request (400, 413, 422): the caller's fault, so no
    /// retry and no failover.
    Refused { status: u16, message: String },
    /// Any other HTTP error status.
    Status {
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    /// The attempt ran out of time.
    Timeout,
    /// Connecting or reading failed.
    Transport(String),
    /// The provider answered something that is not OpenAI's format, or a stream ended early.
    Protocol(String),
}

impl Failure {
    /// Worth another attempt on the same provider: 408, 429, 5xx, timeouts and broken
    /// connections. A bad key (401/403) or an unknown model (404) is not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Failure::Refused { .. } => false,
            Failure::Status { status, .. } => matches!(status, 408 | 409 | 429 | 500..),
            Failure::Timeout | Failure::Transport(_) | Failure::Protocol(_) => true,
        }
    }

    /// The `Retry-After` the provider asked for.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Failure::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused { status, message }
            | Failure::Status {
                status, message, ..
            } => {
                write!(f, "HTTP {status}: {message}")
            }
            Failure::Timeout => f.write_str("timed out"),
            Failure::Transport(message) => write!(f, "connection failed: {message}"),
            Failure::Protocol(message) => write!(f, "bad response: {message}"),
        }
    }
}

/// A stream of events ending in [`Event::Done`] or a failure.
pub type Events = Pin<Box<dyn Stream<Item = Result<Event, Failure>> + Send>>;

async fn send(
    client: &reqwest::Client,
    spec: &Spec,
    path: &str,
    body: Vec<u8>,
) -> Result<reqwest::Response, Failure> {
    let mut call = client
        .post(format!("{}/{path}", spec.base_url))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body);
    if let Some(key) = &spec.api_key {
        call = call.bearer_auth(key.expose_secret());
    }
    let response = call.send().await.map_err(transport)?;
    let status = response.status().as_u16();
    if response.status().is_success() {
        return Ok(response);
    }
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok());
    let text = response.text().await.unwrap_or_default();
    let message = error_message(&text);
    Err(match status {
        400 | 413 | 422 => Failure::Refused { status, message },
        _ => Failure::Status {
            status,
            message,
            retry_after,
        },
    })
}

fn transport(error: reqwest::Error) -> Failure {
    if error.is_timeout() {
        Failure::Timeout
    } else {
        // The source chain says what really happened (refused, reset, DNS).
        let mut message = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            message = format!("{message}: {cause}");
            source = cause.source();
        }
        Failure::Transport(message)
    }
}

/// OpenAI's `{"error": {"message": …}}`, or the start of whatever else came back.
fn error_message(text: &str) -> String {
    #[derive(Deserialize)]
    struct Envelope {
        error: Detail,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Detail {
        Object { message: String },
        Text(String),
    }
    match serde_json::from_str::<Envelope>(text) {
        Ok(Envelope {
            error: Detail::Object { message } | Detail::Text(message),
        }) => message,
        Err(_) => text.chars().take(200).collect(),
    }
}

#[derive(Deserialize, Default)]
struct WireDetails {
    #[serde(default)]
    cached_tokens: u32,
    #[serde(default)]
    reasoning_tokens: u32,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
    #[serde(default)]
    prompt_tokens_details: Option<WireDetails>,
    #[serde(default)]
    completion_tokens_details: Option<WireDetails>,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Self {
        Usage {
            prompt: u.prompt_tokens,
            completion: u.completion_tokens,
            cached: u.prompt_tokens_details.map_or(0, |d| d.cached_tokens),
            reasoning: u
                .completion_tokens_details
                .map_or(0, |d| d.reasoning_tokens),
        }
    }
}

#[derive(Deserialize)]
struct WireFunction {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct WireToolCall {
    #[serde(default)]
    id: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    function: Option<WireFunction>,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
}

#[derive(Deserialize)]
struct WireChoice {
    #[serde(default)]
    index: u32,
    message: Option<WireMessage>,
    delta: Option<WireMessage>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireCompletion {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    choices: Vec<WireChoice>,
    usage: Option<WireUsage>,
    error: Option<Value>,
}

/// Reads a whole answer's fields.
fn parse_completion(json: String) -> Result<Completion, Failure> {
    let wire: WireCompletion = serde_json::from_str(&json)
        .map_err(|e| Failure::Protocol(format!("not a chat completion: {e}")))?;
    if wire.choices.is_empty() {
        return Err(Failure::Protocol("the completion has no choices".into()));
    }
    let finish_reasons = wire
        .choices
        .iter()
        .map(|c| c.finish_reason.clone().unwrap_or_else(|| "stop".into()))
        .collect();
    let first = wire
        .choices
        .into_iter()
        .min_by_key(|c| c.index)
        .and_then(|c| c.message);
    let (content, refusal, tool_calls) = match first {
        Some(message) => (
            message.content.unwrap_or_default(),
            message.refusal.unwrap_or_default(),
            message
                .tool_calls
                .unwrap_or_default()
                .into_iter()
                .map(|call| {
                    let function = call.function.unwrap_or(WireFunction {
                        name: None,
                        arguments: None,
                    });
                    pb::ToolCall {
                        id: call.id.unwrap_or_default(),
                        r#type: call.kind.unwrap_or_else(|| "function".into()),
                        name: function.name.unwrap_or_default(),
                        arguments: function.arguments.unwrap_or_default(),
                    }
                })
                .collect(),
        ),
        None => Default::default(),
    };
    Ok(Completion {
        id: wire.id,
        model: wire.model,
        content,
        refusal,
        tool_calls,
        finish_reasons,
        usage: wire.usage.map(Usage::from).unwrap_or_default(),
        json,
    })
}

/// One whole answer from an OpenAI-compatible provider.
pub async fn complete(
    client: &reqwest::Client,
    spec: &Spec,
    model: &str,
    request: &Chat,
) -> Result<Completion, Failure> {
    if spec.is_echo() {
        return parse_completion(echo::complete(model, request));
    }
    let response = send(
        client,
        spec,
        "chat/completions",
        request.for_deployment(model, false),
    )
    .await?;
    let bytes = response.bytes().await.map_err(transport)?;
    let json = String::from_utf8(bytes.to_vec())
        .map_err(|_| Failure::Protocol("the completion is not UTF-8".into()))?;
    parse_completion(json)
}

/// Embeddings from an OpenAI-compatible provider.
pub async fn embed(
    client: &reqwest::Client,
    spec: &Spec,
    model: &str,
    request: &Embedding,
) -> Result<Embedded, Failure> {
    let json = if spec.is_echo() {
        echo::embed(model, request)
    } else {
        let response = send(client, spec, "embeddings", request.for_deployment(model)).await?;
        let bytes = response.bytes().await.map_err(transport)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| Failure::Protocol("the embeddings are not UTF-8".into()))?
    };
    #[derive(Deserialize)]
    struct Wire {
        #[serde(default)]
        model: String,
        data: Vec<Value>,
        usage: Option<WireUsage>,
    }
    let wire: Wire = serde_json::from_str(&json)
        .map_err(|e| Failure::Protocol(format!("not an embeddings list: {e}")))?;
    let _ = wire.data;
    Ok(Embedded {
        model: wire.model,
        usage: wire.usage.map(Usage::from).unwrap_or_default(),
        json,
    })
}

/// Opens a streamed answer. The stream ends with [`Event::Done`], or with a failure when the
/// provider sends an error event or the connection ends before the answer did.
pub async fn stream(
    client: &reqwest::Client,
    spec: &Spec,
    model: &str,
    request: &Chat,
) -> Result<Events, Failure> {
    if spec.is_echo() {
        let events: Vec<Result<Event, Failure>> = echo::stream(model, request)
            .into_iter()
            .map(|data| parse_chunk(data).map(|e| e.unwrap_or(Event::Done)))
            .chain(std::iter::once(Ok(Event::Done)))
            .collect();
        return Ok(Box::pin(stream::iter(events)));
    }
    let response = send(
        client,
        spec,
        "chat/completions",
        request.for_deployment(model, true),
    )
    .await?;
    let events = response.bytes_stream().eventsource();
    struct State<S> {
        events: S,
        finished: bool,
        over: bool,
    }
    let state = State {
        events,
        finished: false,
        over: false,
    };
    Ok(Box::pin(stream::unfold(state, |mut state| async move {
        if state.over {
            return None;
        }
        loop {
            let item = match state.events.next().await {
                None if state.finished => Ok(Event::Done),
                None => Err(Failure::Protocol(
                    "the stream ended before the answer did".into(),
                )),
                Some(Err(error)) => Err(Failure::Transport(error.to_string())),
                Some(Ok(event)) if event.data.trim() == "[DONE]" => Ok(Event::Done),
                Some(Ok(event)) => match parse_chunk(event.data) {
                    Ok(Some(event)) => {
                        if let Event::Chunk {
                            finish_reason: Some(_),
                            ..
                        } = &event
                        {
                            state.finished = true;
                        }
                        Ok(event)
                    }
                    // Keep-alives and chunks with nothing in them.
                    Ok(None) => continue,
                    Err(failure) => Err(failure),
                },
            };
            state.over = !matches!(item, Ok(Event::Chunk { .. }));
            return Some((item, state));
        }
    })))
}

fn parse_chunk(data: String) -> Result<Option<Event>, Failure> {
    if data.trim().is_empty() {
        return Ok(None);
    }
    let wire: WireCompletion = serde_json::from_str(&data)
        .map_err(|e| Failure::Protocol(format!("not a chat.completion.chunk: {e}")))?;
    if let Some(error) = wire.error {
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .map_or_else(|| error.to_string(), str::to_owned);
        return Err(Failure::Status {
            status: 502,
            message: format!("error event mid-stream: {message}"),
            retry_after: None,
        });
    }
    let has_choices = !wire.choices.is_empty();
    let usage = wire.usage.map(Usage::from);
    if !has_choices && usage.is_none() {
        return Ok(None);
    }
    let first = wire.choices.into_iter().find(|c| c.index == 0);
    let (role, content, finish_reason) = match first {
        Some(choice) => {
            let delta = choice.delta.or(choice.message);
            (
                delta
                    .as_ref()
                    .and_then(|d| d.role.clone())
                    .unwrap_or_default(),
                delta.and_then(|d| d.content).unwrap_or_default(),
                choice.finish_reason,
            )
        }
        None => Default::default(),
    };
    Ok(Some(Event::Chunk {
        json: data,
        id: wire.id,
        model: wire.model,
        role,
        content,
        finish_reason,
        has_choices,
        usage,
    }))
}

/// The built-in provider, deterministic so `cargo run` works offline and tests (and the SDK
/// check) can predict every byte. It speaks OpenAI's JSON like any provider:
/// - offered `tools` (and `tool_choice` is not `none`) with a user message last, it calls one
///   tool: the function `tool_choice` names, else the first; its arguments are
///   `{"<first required parameter, else first parameter, else input>": "<the user's text>"}`;
///   streamed as a call delta with id and name, then the arguments in 8-byte fragments;
/// - otherwise it answers with the last user or tool message's text (the tool result), word by
///   word when streaming, cut at a stop sequence and at `max_completion_tokens`/`max_tokens`
///   words;
/// - `n` choices, all alike; usage counts words;
/// - embeddings: per input, a unit vector (`dimensions`, default 16) of FNV-1a hashes of the
///   input and the coordinate's index; `encoding_format: base64` as OpenAI encodes it.
mod echo {
    use base64::Engine as _;
    use serde_json::{json, Map};

    use super::*;
    use crate::request::text_of;

    /// Characters of the arguments per streamed fragment.
    const FRAGMENT: usize = 8;
    /// Embedding size when the caller names none.
    const DIMENSIONS: usize = 16;

    fn fnv(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
        })
    }

    /// Counts words, the echo provider's tokens.
    fn words(text: &str) -> u32 {
        text.split_whitespace().count() as u32
    }

    fn messages(body: &Map<String, Value>) -> &[Value] {
        body.get("messages")
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice)
    }

    fn prompt_tokens(body: &Map<String, Value>) -> u32 {
        messages(body)
            .iter()
            .map(|m| words(&text_of(m.get("content"))))
            .sum()
    }

    enum Reply {
        Text(Vec<String>, &'static str),
        Call {
            id: String,
            name: String,
            arguments: String,
        },
    }

    /// The tool to call, when one should be called.
    fn tool(body: &Map<String, Value>) -> Option<(String, String)> {
        let tools = body.get("tools")?.as_array()?;
        let last = messages(body).last()?;
        if last.get("role").and_then(Value::as_str) != Some("user")
            || body.get("tool_choice").and_then(Value::as_str) == Some("none")
        {
            return None;
        }
        let named = body
            .get("tool_choice")
            .and_then(|c| c.pointer("/function/name"))
            .and_then(Value::as_str);
        let function = tools
            .iter()
            .filter_map(|t| t.get("function"))
            .find(|f| named.is_none() || f.get("name").and_then(Value::as_str) == named)?;
        let name = function.get("name")?.as_str()?.to_owned();
        let parameters = function.get("parameters");
        let parameter = parameters
            .and_then(|p| p.pointer("/required/0"))
            .and_then(Value::as_str)
            .or_else(|| {
                parameters
                    .and_then(|p| p.get("properties"))
                    .and_then(Value::as_object)
                    .and_then(|p| p.keys().next().map(String::as_str))
            })
            .unwrap_or("input");
        let mut arguments = Map::new();
        arguments.insert(
            parameter.to_owned(),
            Value::String(text_of(last.get("content"))),
        );
        Some((name, Value::Object(arguments).to_string()))
    }

    fn reply(body: &Map<String, Value>) -> Reply {
        if let Some((name, arguments)) = tool(body) {
            let id = format!("call_{:016x}", fnv(format!("{name}{arguments}").as_bytes()));
            return Reply::Call {
                id,
                name,
                arguments,
            };
        }
        let last = messages(body)
            .iter()
            .rev()
            .find(|m| matches!(m.get("role").and_then(Value::as_str), Some("user" | "tool")))
            .map_or_else(String::new, |m| text_of(m.get("content")));
        let mut text = last.as_str();
        let stops: Vec<&str> = match body.get("stop") {
            Some(Value::String(stop)) => vec![stop.as_str()],
            Some(Value::Array(stops)) => stops.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        for stop in stops {
            if let Some(at) = text.find(stop) {
                text = &text[..at];
            }
        }
        let mut words: Vec<String> = text.split_whitespace().map(str::to_owned).collect();
        let mut reason = "stop";
        let max = body
            .get("max_completion_tokens")
            .or_else(|| body.get("max_tokens"))
            .and_then(Value::as_u64);
        if let Some(max) = max {
            if words.len() as u64 > max {
                words.truncate(max as usize);
                reason = "length";
            }
        }
        Reply::Text(words, reason)
    }

    fn choices(body: &Map<String, Value>) -> u32 {
        body.get("n").and_then(Value::as_u64).unwrap_or(1).max(1) as u32
    }

    fn usage(body: &Map<String, Value>, completion: u32) -> Value {
        let prompt = prompt_tokens(body);
        json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
    }

    fn id() -> String {
        format!("chatcmpl-{}", uuid::Uuid::new_v4().simple())
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    pub(super) fn complete(model: &str, request: &Chat) -> String {
        let body = &request.body;
        let n = choices(body);
        let (message, reason, tokens) = match reply(body) {
            Reply::Text(words, reason) => (
                json!({"role": "assistant", "content": words.join(" "), "refusal": null}),
                reason,
                words.len() as u32,
            ),
            Reply::Call {
                id,
                name,
                arguments,
            } => (
                json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": [
                    {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}
                ]}),
                "tool_calls",
                words(&arguments),
            ),
        };
        let choices: Vec<Value> = (0..n)
            .map(|index| json!({"index": index, "message": message, "logprobs": null, "finish_reason": reason}))
            .collect();
        json!({
            "id": id(), "object": "chat.completion", "created": now(), "model": model,
            "choices": choices, "usage": usage(body, tokens * n), "system_fingerprint": "portico-echo",
        })
        .to_string()
    }

    /// The `data:` payloads of a stream (without `[DONE]`).
    pub(super) fn stream(model: &str, request: &Chat) -> Vec<String> {
        let body = &request.body;
        let id = id();
        let created = now();
        let chunk = |index: u32, delta: Value, finish: Option<&str>| {
            json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": "portico-echo",
                "choices": [{"index": index, "delta": delta, "logprobs": null, "finish_reason": finish}],
            })
            .to_string()
        };
        let n = choices(body);
        let mut data = Vec::new();
        let mut tokens = 0;
        let reply = reply(body);
        for index in 0..n {
            match &reply {
                Reply::Text(words, reason) => {
                    for (i, word) in words.iter().enumerate() {
                        let delta = if i == 0 {
                            json!({"role": "assistant", "content": word})
                        } else {
                            json!({"content": format!(" {word}")})
                        };
                        data.push(chunk(index, delta, None));
                    }
                    let last = if words.is_empty() {
                        json!({"role": "assistant", "content": ""})
                    } else {
                        json!({"content": ""})
                    };
                    data.push(chunk(index, last, Some(reason)));
                    tokens += words.len() as u32;
                }
                Reply::Call {
                    id: call,
                    name,
                    arguments,
                } => {
                    data.push(chunk(
                        index,
                        json!({"role": "assistant", "content": null, "tool_calls": [
                            {"index": 0, "id": call, "type": "function", "function": {"name": name, "arguments": ""}}
                        ]}),
                        None,
                    ));
                    let chars: Vec<char> = arguments.chars().collect();
                    for fragment in chars.chunks(FRAGMENT) {
                        let fragment: String = fragment.iter().collect();
                        data.push(chunk(
                            index,
                            json!({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]}),
                            None,
                        ));
                    }
                    data.push(chunk(index, json!({}), Some("tool_calls")));
                    tokens += words(arguments);
                }
            }
        }
        data.push(
            json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": "portico-echo", "choices": [], "usage": usage(body, tokens),
            })
            .to_string(),
        );
        data
    }

    /// One deterministic unit vector per input.
    pub(super) fn vector(text: &str, dimensions: usize) -> Vec<f32> {
        let raw: Vec<f64> = (0..dimensions)
            .map(|i| {
                let hash = fnv(format!("{i}:{text}").as_bytes());
                (hash as f64 / u64::MAX as f64) * 2.0 - 1.0
            })
            .collect();
        let norm = raw
            .iter()
            .map(|x| x * x)
            .sum::<f64>()
            .sqrt()
            .max(f64::EPSILON);
        raw.iter().map(|x| (x / norm) as f32).collect()
    }

    pub(super) fn embed(model: &str, request: &Embedding) -> String {
        let body = &request.body;
        let inputs: Vec<String> = match body.get("input") {
            Some(Value::String(text)) => vec![text.clone()],
            Some(Value::Array(items)) if items.iter().all(|i| i.is_number()) => {
                vec![Value::Array(items.clone()).to_string()]
            }
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        let dimensions = body
            .get("dimensions")
            .and_then(Value::as_u64)
            .map_or(DIMENSIONS, |d| d as usize);
        let base64 = body.get("encoding_format").and_then(Value::as_str) == Some("base64");
        let tokens: u32 = inputs.iter().map(|i| words(i).max(1)).sum();
        let data: Vec<Value> = inputs
            .iter()
            .enumerate()
            .map(|(index, input)| {
                let vector = vector(input, dimensions);
                let embedding = if base64 {
                    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
                } else {
                    json!(vector)
                };
                json!({"object": "embedding", "index": index, "embedding": embedding})
            })
            .collect();
        json!({
            "object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chat(body: Value) -> Chat {
        crate::request::chat(
            pb::CompleteRequest {
                openai_json: body.to_string(),
                ..Default::default()
            },
            4096,
        )
        .expect("valid")
    }

    #[test]
    fn chunks_usage_and_error_events_are_told_apart() {
        let data = r#"{"id":"c1","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}]}"#;
        let delta = parse_chunk(data.into()).expect("chunk");
        assert_eq!(
            delta,
            Some(Event::Chunk {
                json: data.into(),
                id: "c1".into(),
                model: "m".into(),
                role: "assistant".into(),
                content: "Hi".into(),
                finish_reason: None,
                has_choices: true,
                usage: None,
            })
        );
        let usage = parse_chunk(
            r#"{"id":"c1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5,"prompt_tokens_details":{"cached_tokens":1},"completion_tokens_details":{"reasoning_tokens":2}}}"#.into(),
        )
        .expect("usage");
        let Some(Event::Chunk {
            usage: Some(usage),
            has_choices: false,
            ..
        }) = usage
        else {
            panic!("a usage chunk: {usage:?}");
        };
        assert_eq!(
            usage,
            Usage {
                prompt: 3,
                completion: 2,
                cached: 1,
                reasoning: 2
            }
        );
        let error = parse_chunk(r#"{"error":{"message":"overloaded"}}"#.into()).expect_err("error");
        assert!(error.to_string().contains("overloaded"));
        assert!(parse_chunk("not json".into()).is_err());
    }

    #[test]
    fn only_provider_trouble_is_retried() {
        let status = |status| Failure::Status {
            status,
            message: String::new(),
            retry_after: None,
        };
        assert!(status(503).is_retryable());
        assert!(status(429).is_retryable());
        assert!(!status(401).is_retryable());
        assert!(Failure::Timeout.is_retryable());
        assert!(!Failure::Refused {
            status: 400,
            message: String::new()
        }
        .is_retryable());
        assert_eq!(
            error_message(r#"{"error":{"message":"model not found","type":"x"}}"#),
            "model not found"
        );
    }

    #[test]
    fn echo_answers_with_the_last_user_message_within_max_tokens_and_stops() {
        let mut body = json!({"messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "one two three four END five"},
        ]});
        let whole = parse_completion(echo::complete("echo", &chat(body.clone()))).expect("json");
        assert_eq!(whole.content, "one two three four END five");
        assert_eq!(
            (whole.usage.prompt, whole.usage.completion),
            (8, 6),
            "words"
        );
        body["stop"] = json!(["END"]);
        let cut = parse_completion(echo::complete("echo", &chat(body.clone()))).expect("json");
        assert_eq!(cut.content, "one two three four");
        body["max_tokens"] = json!(2);
        let short = parse_completion(echo::complete("echo", &chat(body))).expect("json");
        assert_eq!(
            (short.content.as_str(), short.finish_reasons.as_slice()),
            ("one two", ["length".to_owned()].as_slice())
        );
    }

    #[test]
    fn echo_calls_a_tool_then_answers_with_its_result() {
        let tools = json!([{"type": "function", "function": {"name": "lookup",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
        let ask =
            json!({"tools": tools, "n": 2, "messages": [{"role": "user", "content": "Paris"}]});
        let called = parse_completion(echo::complete("echo", &chat(ask.clone()))).expect("json");
        assert_eq!(called.finish_reasons, ["tool_calls", "tool_calls"]);
        assert_eq!(called.tool_calls.len(), 1);
        let call = &called.tool_calls[0];
        assert_eq!(
            (call.name.as_str(), call.arguments.as_str()),
            ("lookup", r#"{"city":"Paris"}"#)
        );
        // Streamed: the same call, its arguments in fragments that add up.
        let chunks = echo::stream("echo", &chat(ask));
        let mut arguments = String::new();
        for data in &chunks {
            let value: Value = serde_json::from_str(data).expect("json");
            if let Some(fragment) =
                value.pointer("/choices/0/delta/tool_calls/0/function/arguments")
            {
                if value.pointer("/choices/0/index") == Some(&json!(0)) {
                    arguments.push_str(fragment.as_str().expect("text"));
                }
            }
        }
        assert_eq!(arguments, call.arguments);
        let answered = json!({"tools": tools, "messages": [
            {"role": "user", "content": "Paris"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": call.id, "type": "function", "function": {"name": "lookup", "arguments": call.arguments}}]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
        ]});
        let answer = parse_completion(echo::complete("echo", &chat(answered))).expect("json");
        assert_eq!(answer.content, "sunny, 21 C");
        assert!(answer.tool_calls.is_empty());
    }

    #[test]
    fn echo_embeddings_are_deterministic_unit_vectors() {
        let a = echo::vector("hello", 16);
        assert_eq!(a, echo::vector("hello", 16));
        assert_ne!(a, echo::vector("hullo", 16));
        let norm: f32 = a.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
        let request = crate::request::embedding(pb::EmbedRequest {
            openai_json: r#"{"input":["a b","c"],"encoding_format":"base64","dimensions":4}"#
                .into(),
            ..Default::default()
        })
        .expect("valid");
        let json: Value = serde_json::from_str(&echo::embed("echo", &request)).expect("json");
        assert_eq!(json["data"].as_array().map(Vec::len), Some(2));
        assert_eq!(json["usage"]["prompt_tokens"], 3);
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(json["data"][0]["embedding"].as_str().expect("base64"))
            .expect("decodes");
        assert_eq!(bytes.len(), 16, "four f32");
    }
}
