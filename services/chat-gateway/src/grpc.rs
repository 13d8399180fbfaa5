//! `portico.chat.v1.ChatService` over gRPC: validation, then the gateway.

use std::{pin::Pin, sync::Arc};

use portico_config::SecretString;
use portico_proto::chat::{self as pb, chat_service_server::ChatService};
use tokio_stream::{wrappers::ReceiverStream, Stream};
use tonic::{Request, Response, Status};

use crate::{
    gateway::{Gateway, Provider},
    store::{Runtime, Store},
};

/// Most messages in one conversation.
const MAX_MESSAGES: usize = 256;
/// Most stop sequences (OpenAI's limit).
const MAX_STOP: usize = 4;
/// Most bytes of conversation text.
const MAX_TEXT_BYTES: usize = 1 << 20;

/// The gRPC face of the chat gateway.
#[derive(Debug, Clone)]
pub struct ChatGrpc {
    pub(crate) gateway: Arc<Gateway>,
    pub(crate) store: Store,
    pub(crate) admin_key: Option<SecretString>,
    pub(crate) verifier: portico_tokens::Verifier,
    /// `CHAT_ALLOW_UNTRUSTED`: callers other than a trusted peer need no credentials.
    pub(crate) allow_untrusted: bool,
    /// `LLM_MAX_TOKENS`.
    pub(crate) max_tokens: u32,
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::CompletionChunk, Status>> + Send>>;

/// The request's problems, as one INVALID_ARGUMENT; then the `max_tokens` every provider call
/// carries (the caller's, or the ceiling when it asked for none).
fn validate(request: &mut pb::CompleteRequest, max_tokens: u32) -> Result<(), Status> {
    let invalid = |message: String| Err(Status::invalid_argument(message));
    if request.messages.is_empty() || request.messages.len() > MAX_MESSAGES {
        return invalid(format!("messages must hold 1 to {MAX_MESSAGES} messages"));
    }
    if let Some(bad) = request
        .messages
        .iter()
        .find(|m| !matches!(m.role.as_str(), "system" | "user" | "assistant" | "tool"))
    {
        return invalid(format!(
            "message role `{}` is not system, user, assistant or tool",
            bad.role
        ));
    }
    let text: usize = request.messages.iter().map(|m| m.content.len()).sum();
    if text > MAX_TEXT_BYTES {
        return invalid(format!("messages hold more than {MAX_TEXT_BYTES} bytes"));
    }
    if request
        .temperature
        .is_some_and(|t| !(0.0..=2.0).contains(&t))
    {
        return invalid("temperature must be between 0 and 2".into());
    }
    if request.max_tokens == Some(0) {
        return invalid("max_tokens must be at least 1".into());
    }
    if request.max_tokens.is_some_and(|n| n > max_tokens) {
        return invalid(format!("max_tokens must be at most {max_tokens}"));
    }
    if request.stop.len() > MAX_STOP || request.stop.iter().any(String::is_empty) {
        return invalid(format!("at most {MAX_STOP} stop sequences, none empty"));
    }
    if request.model.len() > 256 {
        return invalid("model is longer than 256 characters".into());
    }
    request.max_tokens.get_or_insert(max_tokens);
    Ok(())
}

fn provider(p: &Provider) -> pb::Provider {
    pb::Provider {
        name: p.spec.name.clone(),
        base_url: p.spec.base_url.clone(),
        model: p.spec.model.clone(),
        priority: p.priority(),
        enabled: p.enabled(),
        circuit_state: p.circuit().name().into(),
    }
}

impl ChatGrpc {
    /// Completions spend the provider's money: the edge (a trusted peer) has applied the
    /// public rules (anonymous chat or not); anyone else brings a bearer token or the admin
    /// key, unless `CHAT_ALLOW_UNTRUSTED`.
    async fn require_caller<T>(&self, request: &Request<T>) -> Result<(), Status> {
        portico_tokens::authorize_caller(
            request.metadata(),
            self.allow_untrusted || portico_grpc::Peer::of(request).trusted,
            self.admin_key.as_ref(),
            &self.verifier,
        )
        .await
        .map_err(Status::from)
    }
}

#[tonic::async_trait]
impl ChatService for ChatGrpc {
    type StreamCompleteStream = ChunkStream;

    async fn complete(
        &self,
        request: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::CompleteResponse>, Status> {
        self.require_caller(&request).await?;
        let mut request = request.into_inner();
        validate(&mut request, self.max_tokens)?;
        self.gateway.complete(&request).await.map(Response::new)
    }

    async fn stream_complete(
        &self,
        request: Request<pb::CompleteRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        self.require_caller(&request).await?;
        let mut request = request.into_inner();
        validate(&mut request, self.max_tokens)?;
        let chunks = self.gateway.stream(request).await?;
        Ok(Response::new(Box::pin(ReceiverStream::new(chunks))))
    }

    /// Open to callers inside the mesh (the edge's readiness reads the circuits); it returns no
    /// secret. The REST route in front of it is admin-only.
    async fn list_providers(
        &self,
        _: Request<pb::ListProvidersRequest>,
    ) -> Result<Response<pb::ListProvidersResponse>, Status> {
        let providers = self
            .gateway
            .providers()
            .iter()
            .map(|p| provider(p))
            .collect();
        Ok(Response::new(pb::ListProvidersResponse { providers }))
    }

    async fn set_provider_priority(
        &self,
        request: Request<pb::SetProviderPriorityRequest>,
    ) -> Result<Response<pb::Provider>, Status> {
        let identity = portico_tokens::authorize_admin(
            request.metadata(),
            self.admin_key.as_ref(),
            &self.verifier,
        )
        .await
        .map_err(Status::from)?;
        let change = request.into_inner();
        if change.priority.is_none() && change.enabled.is_none() {
            return Err(Status::invalid_argument("set priority, enabled or both"));
        }
        if change
            .priority
            .is_some_and(|p| !(-1_000_000..=1_000_000).contains(&p))
        {
            return Err(Status::invalid_argument(
                "priority must be between -1000000 and 1000000",
            ));
        }
        let target = self.gateway.provider(&change.name).ok_or_else(|| {
            Status::not_found(format!("no LLM provider is called `{}`", change.name))
        })?;
        let runtime = Runtime {
            name: change.name.clone(),
            priority: change.priority.unwrap_or_else(|| target.priority()),
            enabled: change.enabled.unwrap_or_else(|| target.enabled()),
        };
        // The table first: when it cannot be written nothing changes anywhere.
        if !self.store.set(&runtime).await.map_err(crate::Error::from)? {
            return Err(Status::not_found(format!(
                "no LLM provider is called `{}`",
                change.name
            )));
        }
        target.set(runtime.priority, runtime.enabled);
        tracing::info!(
            provider = %runtime.name,
            priority = runtime.priority,
            enabled = runtime.enabled,
            by = %identity.user_id,
            "LLM provider changed"
        );
        Ok(Response::new(provider(&target)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(role: &str) -> pb::ChatMessage {
        pb::ChatMessage {
            role: role.into(),
            content: "hi".into(),
        }
    }

    #[test]
    fn bad_requests_are_invalid_arguments_that_say_why() {
        let good = pb::CompleteRequest {
            messages: vec![message("user")],
            ..Default::default()
        };
        let mut bounded = good.clone();
        assert!(validate(&mut bounded, 4096).is_ok());
        assert_eq!(
            bounded.max_tokens,
            Some(4096),
            "the ceiling when none was asked"
        );
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
        ] {
            let mut request = request;
            let status = validate(&mut request, 4096).expect_err(fragment);
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().contains(fragment), "{}", status.message());
        }
    }
}
