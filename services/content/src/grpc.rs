//! `portico.content.v1.ContentService` over gRPC. The RPCs arrive with the content issue; until
//! then each answers UNIMPLEMENTED.

use portico_proto::content::{self as pb, content_service_server::ContentService};
use tonic::{Request, Response, Status};

/// The gRPC face of the content service.
#[derive(Debug, Clone)]
pub struct ContentGrpc {
    pub(crate) _db: sea_orm::DatabaseConnection,
}

fn unimplemented(rpc: &str) -> Status {
    Status::unimplemented(format!("ContentService.{rpc} is not implemented yet"))
}

#[tonic::async_trait]
impl ContentService for ContentGrpc {
    async fn get_content(
        &self,
        _: Request<pb::GetContentRequest>,
    ) -> Result<Response<pb::Content>, Status> {
        Err(unimplemented("GetContent"))
    }

    async fn list_content(
        &self,
        _: Request<pb::ListContentRequest>,
    ) -> Result<Response<pb::ListContentResponse>, Status> {
        Err(unimplemented("ListContent"))
    }

    async fn create_content(
        &self,
        _: Request<pb::CreateContentRequest>,
    ) -> Result<Response<pb::Content>, Status> {
        Err(unimplemented("CreateContent"))
    }

    async fn update_content(
        &self,
        _: Request<pb::UpdateContentRequest>,
    ) -> Result<Response<pb::Content>, Status> {
        Err(unimplemented("UpdateContent"))
    }

    async fn delete_content(
        &self,
        _: Request<pb::DeleteContentRequest>,
    ) -> Result<Response<pb::DeleteContentResponse>, Status> {
        Err(unimplemented("DeleteContent"))
    }
}
