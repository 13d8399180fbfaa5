//! The ratelimit service's errors and their gRPC codes.

use tonic::Status;

/// Everything that can go wrong in the ratelimit service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The gRPC server could not start.
    #[error("gRPC server: {0}")]
    Serve(#[from] portico_grpc::ServeError),
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::Serve(error) => Status::internal(error.to_string()),
        }
    }
}
