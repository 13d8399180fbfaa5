//! The chat routes: `POST /api/v1/chat` (Portico's shape, unknown fields refused) and
//! `POST /v1/chat/completions` (OpenAI's shape; unknown fields ignored, as OpenAI SDKs send
//! many). Both are limited by the `chat` policy per user, or per IP for anonymous callers, and
//! need a bearer token when `CHAT_ALLOW_ANONYMOUS=false`.

use bytes::Bytes;
use http::StatusCode;
use portico_proto::chat::{self as pb, chat_service_client::ChatServiceClient};
use portico_telemetry::RequestContext;
use serde::Deserialize;
use serde_json::json;
use tonic::Code;

use crate::{
    backends::Forwarded,
    finish, parse_json, read_body,
    response::{self, Response},
    ApiError, Edge,
};

/// Most messages in one conversation.
const MAX_MESSAGES: usize = 256;
/// Most stop sequences (OpenAI's limit).
const MAX_STOP: usize = 4;

#[derive(Deserialize)]
struct Message {
    role: String,
    content: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PorticoChat {
    messages: Vec<Message>,
    model: Option<String>,
    stream: Option<bool>,
    temperature: Option<f32>,
    max_tokens: Option<u32>,
    stop: Option<Stop>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// OpenAI's request: fields Portico does not use (`n`, `user`, `top_p`, …) are ignored.
#[derive(Deserialize)]
struct OpenAiChat {
    messages: Vec<Message>,
    model: Option<String>,
    stream: Option<bool>,
    temperature: Option<f32>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    stop: Option<Stop>,
    stream_options: Option<StreamOptions>,
}

/// Which wire format answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Portico,
    OpenAi,
}

fn request(
    messages: Vec<Message>,
    model: Option<String>,
    temperature: Option<f32>,
    max_tokens: Option<u32>,
    stop: Option<Stop>,
    include_usage: bool,
) -> Result<pb::CompleteRequest, ApiError> {
    let invalid = |message: String| ApiError::new(Code::InvalidArgument, message);
    if messages.is_empty() || messages.len() > MAX_MESSAGES {
        return Err(invalid(format!(
            "messages must hold 1 to {MAX_MESSAGES} messages"
        )));
    }
    if let Some(bad) = messages
        .iter()
        .find(|m| !matches!(m.role.as_str(), "system" | "user" | "assistant" | "tool"))
    {
        return Err(invalid(format!(
            "message role `{}` is not system, user, assistant or tool",
            bad.role
        )));
    }
    if temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
        return Err(invalid("temperature must be between 0 and 2".into()));
    }
    let stop = match stop {
        None => Vec::new(),
        Some(Stop::One(one)) => vec![one],
        Some(Stop::Many(many)) => many,
    };
    if stop.len() > MAX_STOP {
        return Err(invalid(format!("at most {MAX_STOP} stop sequences")));
    }
    Ok(pb::CompleteRequest {
        messages: messages
            .into_iter()
            .map(|m| pb::ChatMessage {
                role: m.role,
                content: m.content,
            })
            .collect(),
        model: model.unwrap_or_default(),
        temperature,
        max_tokens,
        stop,
        include_usage,
    })
}

impl Edge {
    /// The `chat` policy key of the caller: `user:{id}` for a valid bearer token, the client IP
    /// for anonymous callers (when allowed).
    pub(crate) async fn chat_key(
        &self,
        headers: &http::HeaderMap,
        client_ip: &str,
    ) -> Result<String, ApiError> {
        let bearer = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match bearer {
            Some(token) => match self.inner.verifier.verify(token).await {
                Ok(identity) => Ok(format!("user:{}", identity.user_id)),
                Err(refused) => {
                    tracing::info!(reason = %refused.0, "chat bearer token refused");
                    Err(ApiError::new(
                        Code::Unauthenticated,
                        "the bearer token is invalid, expired or revoked",
                    ))
                }
            },
            None if self.inner.allow_anonymous_chat => Ok(client_ip.to_owned()),
            None => Err(ApiError::new(
                Code::Unauthenticated,
                "chat needs a bearer token (CHAT_ALLOW_ANONYMOUS=false)",
            )),
        }
    }

    /// Answers one chat route.
    pub(crate) async fn chat<B>(
        &self,
        dialect: Dialect,
        body: B,
        context: &RequestContext,
        forwarded: &Forwarded,
    ) -> Result<Response, ApiError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let body = read_body(body).await?;
        let (message, stream) = match dialect {
            Dialect::Portico => {
                let c: PorticoChat = parse_json(&body)?;
                (
                    request(
                        c.messages,
                        c.model,
                        c.temperature,
                        c.max_tokens,
                        c.stop,
                        false,
                    )?,
                    c.stream,
                )
            }
            Dialect::OpenAi => {
                let c: OpenAiChat = parse_json(&body)?;
                let usage = c.stream_options.is_some_and(|o| o.include_usage);
                let max_tokens = c.max_completion_tokens.or(c.max_tokens);
                (
                    request(
                        c.messages,
                        c.model,
                        c.temperature,
                        max_tokens,
                        c.stop,
                        usage,
                    )?,
                    c.stream,
                )
            }
        };
        if stream == Some(true) {
            // Server-sent events come with the chat gateway (issue 6); say so rather than
            // pretend with a non-streamed answer.
            return Err(ApiError::new(
                Code::Unimplemented,
                "streaming chat is not implemented yet",
            ));
        }
        let backend = &self.inner.backends.chat;
        let mut client = ChatServiceClient::new(backend.channel.clone());
        let answer = finish(
            backend,
            "Complete",
            client
                .complete(self.call(message, context, forwarded))
                .await,
        )?;
        let usage = answer.usage.unwrap_or_default();
        let content = answer.message.map(|m| m.content).unwrap_or_default();
        let body = match dialect {
            Dialect::Portico => json!({
                "id": answer.id,
                "model": answer.model,
                "provider": answer.provider,
                "message": {"role": "assistant", "content": content},
                "finishReason": answer.finish_reason,
                "usage": {
                    "promptTokens": usage.prompt_tokens,
                    "completionTokens": usage.completion_tokens,
                    "totalTokens": usage.total_tokens,
                },
            }),
            Dialect::OpenAi => json!({
                "id": answer.id,
                "object": "chat.completion",
                "created": answer.created,
                "model": answer.model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": answer.finish_reason,
                }],
                "usage": {
                    "prompt_tokens": usage.prompt_tokens,
                    "completion_tokens": usage.completion_tokens,
                    "total_tokens": usage.total_tokens,
                },
            }),
        };
        Ok(response::json_response(StatusCode::OK, &body))
    }
}
