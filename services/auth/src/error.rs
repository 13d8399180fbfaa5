//! The auth service's errors and their gRPC codes.

use tonic::{metadata::MetadataValue, Status};

/// `google.rpc.ErrorInfo.reason` of a login refused while the account is locked out.
pub const REASON_LOCKED_OUT: &str = "LOGIN_LOCKED_OUT";

/// Everything that can go wrong in the auth service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Malformed input; the message says what to fix.
    #[error("{0}")]
    InvalidArgument(String),
    /// Several fields are malformed: `(field, description)` each, answered as one
    /// INVALID_ARGUMENT with a `google.rpc.BadRequest` listing them all.
    #[error("{}", .0.iter().map(|(_, description)| description.as_str()).collect::<Vec<_>>().join("; "))]
    InvalidFields(Vec<(String, String)>),
    /// Bad credentials or token (deliberately vague).
    #[error("{0}")]
    Unauthenticated(String),
    /// Authenticated but not allowed.
    #[error("{0}")]
    PermissionDenied(String),
    /// The email is taken (only when verification is not required).
    #[error("{0}")]
    AlreadyExists(String),
    /// Login refused until the email is verified.
    #[error("{0}")]
    FailedPrecondition(String),
    /// No such account or session (for this caller).
    #[error("{0}")]
    NotFound(String),
    /// Over a per-account request limit: retry after this many seconds.
    #[error("{message}; retry after {seconds} s")]
    RateLimited { seconds: u64, message: String },
    /// Locked out: retry after this many seconds.
    #[error("too many failed logins; retry after {0} s")]
    LockedOut(u64),
    /// The account store failed or is unreachable.
    #[error("database: {0}")]
    Database(#[from] sea_orm::DbErr),
    /// The lockout store (Redis, or the database without Redis) failed or is unreachable.
    #[error("lockout store: {0}")]
    LockoutStore(String),
    /// Too many passwords are waiting to be hashed: retry after a moment.
    #[error("the service is busy")]
    Overloaded,
    /// Hashing or signing failed.
    #[error("{0}")]
    Internal(String),
    /// Keys or settings are unusable at start.
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
            Error::InvalidFields(violations) => portico_grpc::bad_request(violations),
            Error::Unauthenticated(message) => Status::unauthenticated(message),
            Error::PermissionDenied(message) => Status::permission_denied(message),
            Error::AlreadyExists(message) => Status::already_exists(message),
            Error::FailedPrecondition(message) => Status::failed_precondition(message),
            Error::NotFound(message) => Status::not_found(message),
            Error::RateLimited { seconds, message } => portico_grpc::retryable_status(
                tonic::Code::ResourceExhausted,
                format!("{message}; retry after {seconds} s"),
                "RATE_LIMITED",
                std::time::Duration::from_secs(seconds),
            ),
            Error::LockedOut(seconds) => portico_grpc::retryable_status(
                tonic::Code::ResourceExhausted,
                format!("too many failed logins; retry after {seconds} s"),
                REASON_LOCKED_OUT,
                std::time::Duration::from_secs(seconds),
            ),
            Error::Database(error) => {
                tracing::error!(%error, "database error");
                portico_grpc::unavailable("the account store is unavailable; retry shortly")
            }
            Error::LockoutStore(message) => {
                tracing::error!(%message, "lockout store error");
                portico_grpc::unavailable("the account store is unavailable; retry shortly")
            }
            Error::Overloaded => {
                // RESOURCE_EXHAUSTED for gRPC callers; the reason makes it 503 at the edge (the
                // service is saturated, not the caller over a quota).
                let mut status = portico_grpc::retryable_status(
                    tonic::Code::ResourceExhausted,
                    "too many logins are being checked; retry shortly",
                    "OVERLOADED",
                    std::time::Duration::from_secs(1),
                );
                status.metadata_mut().insert(
                    portico_proto::ERROR_REASON_KEY,
                    MetadataValue::from_static(portico_proto::REASON_OVERLOADED),
                );
                status
            }
            Error::Internal(message) => {
                tracing::error!(%message, "internal error");
                Status::internal("internal error")
            }
            Error::Config(message) => Status::internal(message),
            Error::Serve(error) => Status::internal(error.to_string()),
        }
    }
}
