//! The content service's errors and their gRPC codes.

use tonic::Status;

/// Everything that can go wrong in the content service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database failed or is unreachable.
    #[error("database: {0}")]
    Database(#[from] sea_orm::DbErr),
    /// The gRPC server could not start.
    #[error("gRPC server: {0}")]
    Serve(#[from] portico_grpc::ServeError),
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::Database(error) => {
                tracing::error!(%error, "database error");
                Status::unavailable("the content store is unavailable; retry shortly")
            }
            Error::Serve(error) => Status::internal(error.to_string()),
        }
    }
}
