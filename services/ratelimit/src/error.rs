//! The ratelimit service's errors and their gRPC codes.

use tonic::Status;

/// Everything that can go wrong in the ratelimit service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller's request is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// No admin credentials were presented.
    #[error("{0}")]
    Unauthenticated(String),
    /// The admin credentials are wrong or admin access is not configured.
    #[error("{0}")]
    PermissionDenied(String),
    /// Redis is known to be down and the operation has no fallback (a bucket lookup).
    #[error("{0}")]
    Unavailable(String),
    /// Redis failed during an operation that has no fallback (reset, a bucket lookup).
    #[error("redis: {0}")]
    Redis(portico_redis::fred::error::Error),
    /// `RATE_LIMIT_DESCRIPTORS_FILE` or `REDIS_URL` is unusable.
    #[error("{0}")]
    Config(String),
    /// The gRPC server could not start.
    #[error("gRPC server: {0}")]
    Serve(#[from] portico_grpc::ServeError),
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::InvalidArgument(message) => Status::invalid_argument(message),
            Error::Unauthenticated(message) => Status::unauthenticated(message),
            Error::PermissionDenied(message) => Status::permission_denied(message),
            Error::Unavailable(message) => Status::unavailable(message),
            Error::Redis(error) => {
                tracing::error!(%error, "redis error");
                Status::unavailable("the rate limit store is unavailable; retry shortly")
            }
            Error::Config(message) => Status::internal(message),
            Error::Serve(error) => Status::internal(error.to_string()),
        }
    }
}
