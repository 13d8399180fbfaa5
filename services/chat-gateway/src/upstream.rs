//! Calling one provider: an OpenAI-compatible `POST {base_url}/chat/completions` (whole or as
//! server-sent events), or the built-in `echo` provider. Failures are classified here, once:
//! the caller's fault, or the provider's (which the circuit breaker counts and failover skips).

use std::{pin::Pin, time::Duration};

use eventsource_stream::Eventsource as _;
use futures_util::{stream, Stream, StreamExt as _};
use portico_config::ExposeSecret as _;
use portico_proto::chat as pb;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::providers::Spec;

/// Token usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt: u32,
    pub completion: u32,
}

/// A whole answer.
#[derive(Debug, Clone)]
pub struct Completion {
    pub id: String,
    pub model: String,
    pub content: String,
    pub finish_reason: String,
    pub usage: Usage,
}

/// One piece of a streamed answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Text (possibly empty) and, on the last content chunk, why the answer ended.
    Delta {
        id: String,
        model: String,
        content: String,
        finish_reason: Option<String>,
    },
    /// The provider's token accounting.
    Usage(Usage),
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

fn body(spec: &Spec, request: &pb::CompleteRequest, stream: bool) -> Value {
    let model = if request.model.is_empty() {
        &spec.model
    } else {
        &request.model
    };
    let messages: Vec<Value> = request
        .messages
        .iter()
        .map(|m| json!({"role": m.role, "content": m.content}))
        .collect();
    let mut body = json!({"model": model, "messages": messages, "stream": stream});
    if let Some(temperature) = request.temperature {
        body["temperature"] = json!(temperature);
    }
    if let Some(max_tokens) = request.max_tokens {
        body["max_tokens"] = json!(max_tokens);
    }
    if !request.stop.is_empty() {
        body["stop"] = json!(request.stop);
    }
    if stream {
        // Always asked for, so token counters are right even when the caller did not ask.
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

async fn send(
    client: &reqwest::Client,
    spec: &Spec,
    request: &pb::CompleteRequest,
    stream: bool,
) -> Result<reqwest::Response, Failure> {
    let mut call = client
        .post(format!("{}/chat/completions", spec.base_url))
        .json(&body(spec, request, stream));
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

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Self {
        Usage {
            prompt: u.prompt_tokens,
            completion: u.completion_tokens,
        }
    }
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct WireChoice {
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

/// One whole answer from an OpenAI-compatible provider.
pub async fn complete(
    client: &reqwest::Client,
    spec: &Spec,
    request: &pb::CompleteRequest,
) -> Result<Completion, Failure> {
    if spec.is_echo() {
        return Ok(echo::complete(spec, request));
    }
    let response = send(client, spec, request, false).await?;
    let bytes = response.bytes().await.map_err(transport)?;
    let wire: WireCompletion = serde_json::from_slice(&bytes)
        .map_err(|e| Failure::Protocol(format!("not a chat completion: {e}")))?;
    let Some(choice) = wire.choices.into_iter().next() else {
        return Err(Failure::Protocol("the completion has no choices".into()));
    };
    Ok(Completion {
        id: wire.id,
        model: wire.model,
        content: choice.message.and_then(|m| m.content).unwrap_or_default(),
        finish_reason: choice.finish_reason.unwrap_or_else(|| "stop".into()),
        usage: wire.usage.map(Usage::from).unwrap_or_default(),
    })
}

/// Opens a streamed answer. The stream ends with [`Event::Done`], or with a failure when the
/// provider sends an error event or the connection ends before the answer did.
pub async fn stream(
    client: &reqwest::Client,
    spec: &Spec,
    request: &pb::CompleteRequest,
) -> Result<Events, Failure> {
    if spec.is_echo() {
        return Ok(echo::stream(spec, request));
    }
    let response = send(client, spec, request, true).await?;
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
                Some(Ok(event)) => match parse_chunk(&event.data) {
                    Ok(Some(event)) => {
                        if let Event::Delta {
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
            state.over = !matches!(item, Ok(Event::Delta { .. } | Event::Usage(_)));
            return Some((item, state));
        }
    })))
}

fn parse_chunk(data: &str) -> Result<Option<Event>, Failure> {
    if data.trim().is_empty() {
        return Ok(None);
    }
    let wire: WireCompletion = serde_json::from_str(data)
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
    if let Some(choice) = wire.choices.into_iter().next() {
        return Ok(Some(Event::Delta {
            id: wire.id,
            model: wire.model,
            content: choice.delta.and_then(|d| d.content).unwrap_or_default(),
            finish_reason: choice.finish_reason,
        }));
    }
    Ok(wire.usage.map(|usage| Event::Usage(usage.into())))
}

/// The built-in provider: answers with the last user message, word by word. Deterministic, so
/// `cargo run` works offline and tests can predict every chunk.
mod echo {
    use super::*;

    /// Counts words, the echo provider's tokens.
    fn words(text: &str) -> u32 {
        text.split_whitespace().count() as u32
    }

    /// The reply's words and why it ended.
    fn reply(request: &pb::CompleteRequest) -> (Vec<String>, &'static str) {
        let last = request
            .messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map_or("", |m| m.content.as_str());
        let mut text = last;
        for stop in &request.stop {
            if let Some(at) = text.find(stop.as_str()) {
                text = &text[..at];
            }
        }
        let mut words: Vec<String> = text.split_whitespace().map(str::to_owned).collect();
        let mut reason = "stop";
        if let Some(max) = request.max_tokens {
            if words.len() > max as usize {
                words.truncate(max as usize);
                reason = "length";
            }
        }
        (words, reason)
    }

    fn usage(request: &pb::CompleteRequest, completion: usize) -> Usage {
        Usage {
            prompt: request.messages.iter().map(|m| words(&m.content)).sum(),
            completion: completion as u32,
        }
    }

    fn id() -> String {
        format!("chatcmpl-{}", uuid::Uuid::new_v4().simple())
    }

    pub(super) fn complete(spec: &Spec, request: &pb::CompleteRequest) -> Completion {
        let (words, reason) = reply(request);
        Completion {
            id: id(),
            model: spec.model.clone(),
            content: words.join(" "),
            finish_reason: reason.into(),
            usage: usage(request, words.len()),
        }
    }

    pub(super) fn stream(spec: &Spec, request: &pb::CompleteRequest) -> Events {
        let (words, reason) = reply(request);
        let id = id();
        let count = words.len();
        let mut events: Vec<Result<Event, Failure>> = Vec::with_capacity(count + 3);
        for (index, word) in words.into_iter().enumerate() {
            events.push(Ok(Event::Delta {
                id: id.clone(),
                model: spec.model.clone(),
                content: if index == 0 { word } else { format!(" {word}") },
                finish_reason: None,
            }));
        }
        events.push(Ok(Event::Delta {
            id,
            model: spec.model.clone(),
            content: String::new(),
            finish_reason: Some(reason.into()),
        }));
        events.push(Ok(Event::Usage(usage(request, count))));
        events.push(Ok(Event::Done));
        Box::pin(stream::iter(events))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_usage_and_error_events_are_told_apart() {
        let delta = parse_chunk(
            r#"{"id":"c1","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#,
        )
        .expect("chunk");
        assert_eq!(
            delta,
            Some(Event::Delta {
                id: "c1".into(),
                model: "m".into(),
                content: "Hi".into(),
                finish_reason: None
            })
        );
        let usage = parse_chunk(
            r#"{"id":"c1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#,
        )
        .expect("usage");
        assert_eq!(
            usage,
            Some(Event::Usage(Usage {
                prompt: 3,
                completion: 2
            }))
        );
        let error = parse_chunk(r#"{"error":{"message":"overloaded"}}"#).expect_err("error");
        assert!(error.to_string().contains("overloaded"));
        assert!(parse_chunk("not json").is_err());
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
        let spec = crate::providers::echo(Duration::from_secs(1));
        let mut request = pb::CompleteRequest {
            messages: vec![
                pb::ChatMessage {
                    role: "system".into(),
                    content: "be brief".into(),
                },
                pb::ChatMessage {
                    role: "user".into(),
                    content: "one two three four END five".into(),
                },
            ],
            ..Default::default()
        };
        let whole = echo::complete(&spec, &request);
        assert_eq!(whole.content, "one two three four END five");
        assert_eq!(
            whole.usage,
            Usage {
                prompt: 8,
                completion: 6
            }
        );
        request.stop = vec!["END".into()];
        assert_eq!(
            echo::complete(&spec, &request).content,
            "one two three four"
        );
        request.max_tokens = Some(2);
        let short = echo::complete(&spec, &request);
        assert_eq!(
            (short.content.as_str(), short.finish_reason.as_str()),
            ("one two", "length")
        );
    }
}
