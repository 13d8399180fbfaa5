//! `portico.chat.v1.ChatService` over gRPC. The RPCs arrive with the chat-gateway issue; until
//! then each answers UNIMPLEMENTED.

use std::pin::Pin;

use portico_proto::chat::{self as pb, chat_service_server::ChatService};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// The gRPC face of the chat gateway.
#[derive(Debug, Clone)]
pub struct ChatGrpc {
    pub(crate) _db: sea_orm::DatabaseConnection,
}

fn unimplemented(rpc: &str) -> Status {
    Status::unimplemented(format!("ChatService.{rpc} is not implemented yet"))
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::CompletionChunk, Status>> + Send>>;

#[tonic::async_trait]
impl ChatService for ChatGrpc {
    type StreamCompleteStream = ChunkStream;

    async fn complete(
        &self,
        _: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::CompleteResponse>, Status> {
        Err(unimplemented("Complete"))
    }

    async fn stream_complete(
        &self,
        _: Request<pb::CompleteRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        Err(unimplemented("StreamComplete"))
    }

    async fn list_providers(
        &self,
        _: Request<pb::ListProvidersRequest>,
    ) -> Result<Response<pb::ListProvidersResponse>, Status> {
        Err(unimplemented("ListProviders"))
    }

    async fn set_provider_priority(
        &self,
        _: Request<pb::SetProviderPriorityRequest>,
    ) -> Result<Response<pb::Provider>, Status> {
        Err(unimplemented("SetProviderPriority"))
    }
}
