//! The chat routes: `POST /api/v1/chat` (Portico's shape, unknown fields refused) and OpenAI's
//! `POST /v1/chat/completions`, `POST /v1/embeddings`, `GET /v1/models[/{id}]`. The OpenAI
//! routes pass bodies through: the caller's JSON goes to the chat gateway as it came (every
//! field, known to Portico or not), and the provider's answer — each chunk of a stream — comes
//! back as the provider sent it. Chat and embeddings are limited by the `chat` policy per user,
//! or per IP for anonymous callers; all need a bearer token when `CHAT_ALLOW_ANONYMOUS=false`.

use std::convert::Infallible;

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt as _, StreamBody};
use portico_proto::{
    chat::{self as pb, chat_service_client::ChatServiceClient},
    limits::chat::{MAX_CHOICES, MAX_INPUTS, MAX_MESSAGES, MAX_MODEL_CHARS, MAX_STOP, MAX_TOOLS},
};
use portico_telemetry::RequestContext;
use serde::Deserialize;
use serde_json::{json, Value};
use tonic::Code;

use crate::{
    backends::{self, Forwarded},
    finish, parse_json, read_body,
    response::{self, Response},
    ApiError, Edge,
};

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
    /// Read at full precision and checked here: as an `f32`, `2.0000000000000004` would be 2
    /// and `1e308` infinite, where the schema's bounds are on the number sent.
    temperature: Option<f64>,
    #[serde(default, deserialize_with = "crate::whole::option")]
    max_tokens: Option<u32>,
    stop: Option<Stop>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// What the edge reads of OpenAI's request: whether to stream. The body itself goes to the
/// chat gateway unchanged (which checks it).
#[derive(Deserialize)]
struct OpenAiChat {
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

// The request schemas below state the chat gateway's limits (`portico_proto::limits::chat`,
// which its checks use); the token bound is the deployment's `LLM_MAX_TOKENS`, 4096 by default.

fn or_null(schema: Value) -> Value {
    json!({"anyOf": [schema, {"type": "null"}]})
}

fn model_schema() -> Value {
    or_null(json!({"type": "string", "maxLength": MAX_MODEL_CHARS,
        "description": "A model alias (GET /v1/models); empty or absent: the default alias"}))
}

fn stop_schema() -> Value {
    let sequence = json!({"type": "string", "minLength": 1});
    or_null(
        json!({"anyOf": [sequence, {"type": "array", "maxItems": MAX_STOP, "items": sequence}]}),
    )
}

fn tokens_schema(max_tokens: u32) -> Value {
    or_null(json!({"type": "integer", "minimum": 1, "maximum": max_tokens}))
}

/// `POST /api/v1/chat`: Portico's own chat JSON (every field it knows; no others).
pub(crate) fn portico_body_schema(max_tokens: u32) -> Value {
    json!({
        "type": "object",
        "required": ["messages"],
        "additionalProperties": false,
        "properties": {
            "messages": {"type": "array", "minItems": 1, "maxItems": MAX_MESSAGES, "items": {
                "type": "object", "required": ["role", "content"],
                "properties": {
                    "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "function"]},
                    "content": {"type": "string"},
                },
            }},
            "model": model_schema(),
            "stream": or_null(json!({"type": "boolean"})),
            "temperature": or_null(json!({"type": "number", "minimum": 0, "maximum": 2})),
            "max_tokens": tokens_schema(max_tokens),
            "stop": stop_schema(),
        },
    })
}

/// `POST /v1/chat/completions`: OpenAI's request. The fields the gateway reasons about are
/// stated; every other field goes to the provider unchanged.
pub(crate) fn openai_body_schema(max_tokens: u32) -> Value {
    let parts = json!({"type": "array", "items": {
        "type": "object", "required": ["type"], "properties": {"type": {"type": "string"}}}});
    let content = json!({"anyOf": [{"type": "string"}, parts]});
    let message = json!({"anyOf": [
        {"type": "object", "required": ["role", "content"], "properties": {
            "role": {"type": "string", "enum": ["system", "developer", "user", "function"]},
            "content": content}},
        {"type": "object", "required": ["role"], "properties": {
            "role": {"const": "assistant"},
            "content": or_null(content.clone()),
            // `null` as well: SDKs send an answer's message back as it came (`tool_calls: null`).
            "tool_calls": or_null(json!({"type": "array", "items": {"type": "object"}}))}},
        {"type": "object", "required": ["role", "content", "tool_call_id"], "properties": {
            "role": {"const": "tool"}, "content": content, "tool_call_id": {"type": "string"}}},
    ]});
    json!({
        "type": "object",
        "required": ["messages"],
        "properties": {
            "messages": {"type": "array", "minItems": 1, "maxItems": MAX_MESSAGES, "items": message},
            "model": model_schema(),
            "stream": or_null(json!({"type": "boolean"})),
            "stream_options": or_null(json!({"type": "object",
                "properties": {"include_usage": {"type": "boolean"}}})),
            "temperature": or_null(json!({"type": "number", "minimum": 0, "maximum": 2})),
            "top_p": or_null(json!({"type": "number", "minimum": 0, "maximum": 1})),
            "max_tokens": tokens_schema(max_tokens),
            "max_completion_tokens": tokens_schema(max_tokens),
            "n": or_null(json!({"type": "integer", "minimum": 1, "maximum": MAX_CHOICES})),
            "stop": stop_schema(),
            "tools": or_null(json!({"type": "array", "maxItems": MAX_TOOLS,
                "items": {"type": "object"}})),
        },
    })
}

/// `POST /v1/embeddings`: OpenAI's request; fields other than these go to the provider.
pub(crate) fn embeddings_body_schema() -> Value {
    json!({
        "type": "object",
        "required": ["input"],
        "properties": {
            "input": {"anyOf": [{"type": "string"},
                {"type": "array", "minItems": 1, "maxItems": MAX_INPUTS}]},
            "model": model_schema(),
            "dimensions": or_null(json!({"type": "integer", "minimum": 1, "maximum": 8192})),
        },
    })
}

/// `PUT /api/v1/admin/llm/providers/{name}`: `priority`, `enabled` or both.
pub(crate) fn provider_change_schema() -> Value {
    let priority = json!({"type": "integer", "minimum": -1_000_000, "maximum": 1_000_000});
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {"priority": or_null(priority.clone()), "enabled": or_null(json!({"type": "boolean"}))},
        "anyOf": [
            {"required": ["priority"], "properties": {"priority": priority}},
            {"required": ["enabled"], "properties": {"enabled": {"type": "boolean"}}},
        ],
    })
}

/// Which wire format answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Portico,
    OpenAi,
}

/// The gRPC request. Its rules (message count and roles, temperature, stop sequences) are the
/// chat gateway's to check, for every caller: a violation comes back as INVALID_ARGUMENT → 400.
fn request(
    messages: Vec<Message>,
    model: Option<String>,
    temperature: Option<f32>,
    max_tokens: Option<u32>,
    stop: Option<Stop>,
    include_usage: bool,
) -> pb::CompleteRequest {
    pb::CompleteRequest {
        messages: messages
            .into_iter()
            .map(|m| pb::ChatMessage {
                role: m.role,
                content: m.content,
                ..Default::default()
            })
            .collect(),
        model: model.unwrap_or_default(),
        temperature,
        max_tokens,
        stop: match stop {
            None => Vec::new(),
            Some(Stop::One(one)) => vec![one],
            Some(Stop::Many(many)) => many,
        },
        include_usage,
        ..Default::default()
    }
}

/// A JSON body that is already encoded.
fn raw_json(body: String) -> Response {
    let mut response = http::Response::new(response::full(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn utf8(body: Bytes) -> Result<String, ApiError> {
    String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::new(Code::InvalidArgument, "invalid JSON body: not UTF-8"))
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
                // An API key acts for its owner (the owner's `chat` bucket), with the scope.
                Ok(identity) if !identity.may(portico_tokens::Scope::Chat) => Err(ApiError::new(
                    Code::PermissionDenied,
                    "this API key lacks the `chat` scope",
                )),
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
                // Out of bounds as sent goes as NaN, which the gateway refuses along with every
                // other bad field (as an f32, 2.0000000000000004 would be a valid 2).
                let temperature = c.temperature.map(|t| match t {
                    t if (0.0..=2.0).contains(&t) => t as f32,
                    _ => f32::NAN,
                });
                (
                    request(
                        c.messages,
                        c.model,
                        temperature,
                        c.max_tokens,
                        c.stop,
                        false,
                    ),
                    c.stream,
                )
            }
            Dialect::OpenAi => {
                let c: OpenAiChat = parse_json(&body)?;
                let include_usage = c.stream_options.is_some_and(|o| o.include_usage);
                (
                    pb::CompleteRequest {
                        openai_json: utf8(body)?,
                        include_usage,
                        ..Default::default()
                    },
                    c.stream,
                )
            }
        };
        let backend = &self.inner.backends.chat;
        let mut client = ChatServiceClient::new(backend.channel.clone());
        let include_usage = message.include_usage;
        let call = backends::request(message, context, forwarded, self.inner.chat_timeout);
        if stream == Some(true) {
            let chunks = finish(
                backend,
                "StreamComplete",
                client.stream_complete(call).await,
            )?;
            return Ok(sse(
                dialect,
                chunks,
                include_usage,
                context.correlation_id.clone(),
            ));
        }
        let answer = finish(backend, "Complete", client.complete(call).await)?;
        if dialect == Dialect::OpenAi && !answer.openai_json.is_empty() {
            // The provider's answer as it sent it: every choice, tool calls, logprobs, usage
            // details, fields Portico does not know.
            return Ok(raw_json(answer.openai_json));
        }
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
                    "logprobs": null,
                    "finish_reason": answer.finish_reason,
                }],
                "usage": {
                    "prompt_tokens": usage.prompt_tokens,
                    "completion_tokens": usage.completion_tokens,
                    "total_tokens": usage.total_tokens,
                },
                "system_fingerprint": null,
            }),
        };
        Ok(response::json_response(StatusCode::OK, &body))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderChange {
    #[serde(default, deserialize_with = "crate::whole::option")]
    priority: Option<i32>,
    enabled: Option<bool>,
}

fn provider_json(p: &pb::Provider) -> Value {
    json!({
        "name": p.name,
        "baseUrl": p.base_url,
        "model": p.model,
        "priority": p.priority,
        "enabled": p.enabled,
        "circuitState": p.circuit_state,
    })
}

impl Edge {
    /// `GET /api/v1/admin/llm/providers`: the providers and the model aliases with their
    /// deployments. ListProviders and ListModels are open inside the mesh (readiness reads
    /// them), so the edge checks the admin credentials itself, with the one routine the services
    /// use.
    pub(crate) async fn llm_providers(
        &self,
        headers: &http::HeaderMap,
        context: &RequestContext,
        forwarded: &Forwarded,
    ) -> Result<Response, ApiError> {
        let metadata = tonic::metadata::MetadataMap::from_headers(headers.clone());
        portico_tokens::authorize_admin(
            &metadata,
            self.inner.admin_key.as_ref(),
            &self.inner.verifier,
        )
        .await
        .map_err(|refusal| ApiError::from_status(&refusal.into(), "chat"))?;
        let backend = &self.inner.backends.chat;
        let answer = ChatServiceClient::new(backend.channel.clone())
            .list_providers(self.call(pb::ListProvidersRequest {}, context, forwarded))
            .await;
        let list = finish(backend, "ListProviders", answer)?;
        let providers: Vec<Value> = list.providers.iter().map(provider_json).collect();
        let answer = ChatServiceClient::new(backend.channel.clone())
            .list_models(self.call(pb::ListModelsRequest {}, context, forwarded))
            .await;
        let models: Vec<Value> = finish(backend, "ListModels", answer)?
            .models
            .iter()
            .map(|m| {
                let deployments: Vec<Value> = m
                    .deployments
                    .iter()
                    .map(|d| {
                        json!({
                            "name": d.name, "provider": d.provider, "model": d.model,
                            "priority": d.priority, "weight": d.weight, "enabled": d.enabled,
                            "inFlight": d.in_flight,
                        })
                    })
                    .collect();
                json!({"id": m.id, "default": m.default, "balance": m.balance, "deployments": deployments})
            })
            .collect();
        Ok(response::json_response(
            StatusCode::OK,
            &json!({ "providers": providers, "models": models }),
        ))
    }

    /// `PUT /api/v1/admin/llm/providers/{name}` `{priority?, enabled?}`.
    pub(crate) async fn llm_provider_update<B>(
        &self,
        name: String,
        body: B,
        context: &RequestContext,
        forwarded: &Forwarded,
    ) -> Result<Response, ApiError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let change: ProviderChange = parse_json(&read_body(body).await?)?;
        if change.priority.is_none() && change.enabled.is_none() {
            return Err(ApiError::new(
                Code::InvalidArgument,
                "set priority, enabled or both",
            ));
        }
        let backend = &self.inner.backends.chat;
        let request = pb::SetProviderPriorityRequest {
            name,
            priority: change.priority,
            enabled: change.enabled,
        };
        let answer = ChatServiceClient::new(backend.channel.clone())
            .set_provider_priority(self.call(request, context, forwarded))
            .await;
        let provider = finish(backend, "SetProviderPriority", answer)?;
        Ok(response::json_response(
            StatusCode::OK,
            &provider_json(&provider),
        ))
    }
}

fn model_json(model: &pb::Model) -> Value {
    json!({"id": model.id, "object": "model", "created": model.created, "owned_by": model.owned_by})
}

impl Edge {
    /// `GET /v1/models` and `/v1/models/{id}`: the aliases callers may name, in OpenAI's shape.
    /// They need what chat needs (a bearer token when anonymous chat is off).
    pub(crate) async fn models(
        &self,
        id: Option<String>,
        headers: &http::HeaderMap,
        context: &RequestContext,
        forwarded: &Forwarded,
    ) -> Result<Response, ApiError> {
        self.chat_key(headers, "").await?;
        let backend = &self.inner.backends.chat;
        let answer = ChatServiceClient::new(backend.channel.clone())
            .list_models(self.call(pb::ListModelsRequest {}, context, forwarded))
            .await;
        let list = finish(backend, "ListModels", answer)?;
        let body = match id {
            None => {
                let data: Vec<Value> = list.models.iter().map(model_json).collect();
                json!({"object": "list", "data": data})
            }
            Some(id) => match list.models.iter().find(|m| m.id == id) {
                Some(model) => model_json(model),
                None => {
                    let mut error = ApiError::new(
                        Code::NotFound,
                        format!("the model `{id}` does not exist here; GET /v1/models lists the models you may use"),
                    );
                    error.openai_code = Some("model_not_found");
                    return Err(error);
                }
            },
        };
        Ok(response::json_response(StatusCode::OK, &body))
    }

    /// `POST /v1/embeddings`: ChatService.Embed, the body passed through both ways.
    pub(crate) async fn embeddings<B>(
        &self,
        body: B,
        context: &RequestContext,
        forwarded: &Forwarded,
    ) -> Result<Response, ApiError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let body = read_body(body).await?;
        let _: Value = parse_json(&body)?;
        let request = pb::EmbedRequest {
            openai_json: utf8(body)?,
            ..Default::default()
        };
        let backend = &self.inner.backends.chat;
        let call = backends::request(request, context, forwarded, self.inner.chat_timeout);
        let answer = finish(
            backend,
            "Embed",
            ChatServiceClient::new(backend.channel.clone())
                .embed(call)
                .await,
        )?;
        Ok(raw_json(answer.openai_json))
    }
}

/// One chunk as the dialect frames it.
fn chunk_json(dialect: Dialect, chunk: &pb::CompletionChunk, include_usage: bool) -> Value {
    let usage = chunk.usage.as_ref();
    match dialect {
        Dialect::OpenAi => {
            let mut value = if let Some(usage) = usage {
                json!({
                    "choices": [],
                    "usage": {
                        "prompt_tokens": usage.prompt_tokens,
                        "completion_tokens": usage.completion_tokens,
                        "total_tokens": usage.total_tokens,
                    },
                })
            } else {
                let mut delta = json!({"content": chunk.delta});
                if !chunk.role.is_empty() {
                    delta["role"] = json!(chunk.role);
                }
                let finish = (!chunk.finish_reason.is_empty()).then_some(&chunk.finish_reason);
                let mut value = json!({
                    "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
                });
                if include_usage {
                    // OpenAI sends `usage: null` on every chunk but the last when usage is asked.
                    value["usage"] = Value::Null;
                }
                value
            };
            value["id"] = json!(chunk.id);
            value["object"] = json!("chat.completion.chunk");
            value["created"] = json!(chunk.created);
            value["model"] = json!(chunk.model);
            value["system_fingerprint"] = Value::Null;
            value
        }
        Dialect::Portico => {
            let mut value = json!({
                "id": chunk.id,
                "model": chunk.model,
                "provider": chunk.provider,
                "delta": chunk.delta,
            });
            if !chunk.role.is_empty() {
                value["role"] = json!(chunk.role);
            }
            if !chunk.finish_reason.is_empty() {
                value["finishReason"] = json!(chunk.finish_reason);
            }
            if let Some(usage) = usage {
                value["usage"] = json!({
                    "promptTokens": usage.prompt_tokens,
                    "completionTokens": usage.completion_tokens,
                    "totalTokens": usage.total_tokens,
                });
            }
            value
        }
    }
}

fn event(data: &str) -> Result<Frame<Bytes>, Infallible> {
    Ok(Frame::data(Bytes::from(format!("data: {data}\n\n"))))
}

/// Server-sent events as OpenAI frames them: `data: {chunk}` … `data: [DONE]`. A failure after
/// the stream started is an error event and the stream ends without `[DONE]`, so no client
/// mistakes a cut-off answer for a complete one. Dropping the body (the client went away)
/// drops the gRPC stream, which cancels the provider's request.
fn sse(
    dialect: Dialect,
    chunks: tonic::Streaming<pb::CompletionChunk>,
    include_usage: bool,
    correlation_id: String,
) -> Response {
    struct State {
        chunks: tonic::Streaming<pb::CompletionChunk>,
        over: bool,
        correlation_id: String,
    }
    let state = State {
        chunks,
        over: false,
        correlation_id,
    };
    let frames = futures_util::stream::unfold(state, move |mut state| async move {
        if state.over {
            return None;
        }
        let frame = match state.chunks.message().await {
            // The provider's chunk byte for byte (tool-call deltas as it sent them, in order).
            Ok(Some(chunk)) if dialect == Dialect::OpenAi && !chunk.openai_json.is_empty() => {
                event(&chunk.openai_json)
            }
            Ok(Some(chunk)) => event(&chunk_json(dialect, &chunk, include_usage).to_string()),
            Ok(None) => {
                state.over = true;
                event("[DONE]")
            }
            Err(status) => {
                state.over = true;
                backends::record("chat", "StreamComplete", status.code());
                let error = ApiError::from_status(&status, "chat");
                tracing::warn!(code = ?status.code(), message = %status.message(), "chat stream failed after it started");
                event(
                    &json!({"error": {
                        "message": error.message,
                        "type": if status.code() == Code::DeadlineExceeded { "timeout" } else { "upstream_error" },
                        "param": null,
                        "code": crate::error::code_name(status.code()),
                        "correlationId": state.correlation_id,
                    }})
                    .to_string(),
                )
            }
        };
        Some((frame, state))
    });
    let mut response = http::Response::new(StreamBody::new(frames).boxed());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx and friends must not buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}
