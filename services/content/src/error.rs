//! The content service's errors and their gRPC codes.

use tonic::Status;

/// Everything that can go wrong in the content service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Malformed input; the message says what to fix.
    #[error("{0}")]
    InvalidArgument(String),
    /// Fields that fail validation, every one as `(field, description)`: INVALID_ARGUMENT
    /// with a `google.rpc.BadRequest`.
    #[error("{}", .0.iter().map(|(_, d)| d.as_str()).collect::<Vec<_>>().join("; "))]
    InvalidFields(Vec<(String, String)>),
    /// No credentials for an admin call.
    #[error("{0}")]
    Unauthenticated(String),
    /// Credentials that are not an admin's.
    #[error("{0}")]
    PermissionDenied(String),
    /// No such item (or not visible to this caller).
    #[error("{0}")]
    NotFound(String),
    /// The slug is taken.
    #[error("{0}")]
    AlreadyExists(String),
    /// The caller's expected version is not the current one.
    #[error("{0}")]
    Aborted(String),
    /// The content store failed or is unreachable.
    #[error("database: {0}")]
    Database(#[from] sea_orm::DbErr),
    /// A write refused because its cache invalidation cannot be recorded (Redis down).
    #[error("the content cache is unreachable")]
    CacheUnavailable,
    /// Settings unusable at start.
    #[error("{0}")]
    Config(String),
    /// The gRPC server could not start.
    #[error("gRPC server: {0}")]
    Serve(#[from] portico_grpc::ServeError),
}

impl From<portico_tokens::AdminRefusal> for Error {
    fn from(refusal: portico_tokens::AdminRefusal) -> Self {
        match refusal {
            portico_tokens::AdminRefusal::Unauthenticated(m) => Error::Unauthenticated(m),
            portico_tokens::AdminRefusal::PermissionDenied(m) => Error::PermissionDenied(m),
        }
    }
}

impl From<crate::cache::WriteRefused> for Error {
    fn from(_: crate::cache::WriteRefused) -> Self {
        Error::CacheUnavailable
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::InvalidArgument(m) => Status::invalid_argument(m),
            Error::InvalidFields(violations) => portico_grpc::bad_request(violations),
            Error::Unauthenticated(m) => Status::unauthenticated(m),
            Error::PermissionDenied(m) => Status::permission_denied(m),
            Error::NotFound(m) => Status::not_found(m),
            Error::AlreadyExists(m) => Status::already_exists(m),
            Error::Aborted(m) => Status::aborted(m),
            Error::Database(error) => {
                tracing::error!(%error, "database error");
                portico_grpc::unavailable("the content store is unavailable; retry shortly")
            }
            Error::CacheUnavailable => portico_grpc::unavailable(
                "content writes are paused while the content cache is unreachable; retry shortly",
            ),
            Error::Config(m) => Status::internal(m),
            Error::Serve(error) => Status::internal(error.to_string()),
        }
    }
}
