//! The chat gateway's errors and their gRPC codes. LLM failures carry the `x-portico-error`
//! reason the edge maps to 502 (`llm-unavailable`, with `retry-after` while a circuit is open)
//! or 504 (`llm-timeout`), as docs/CONTRACT.md §4 says.

use std::time::Duration;

use tonic::{metadata::MetadataValue, Status};

/// Everything that can go wrong in the chat gateway.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database failed or is unreachable.
    #[error("database: {0}")]
    Database(#[from] sea_orm::DbErr),
    /// The gRPC server could not start.
    #[error("gRPC server: {0}")]
    Serve(#[from] portico_grpc::ServeError),
    /// The providers' configuration is wrong.
    #[error("LLM providers: {0}")]
    Providers(crate::providers::SpecError),
    /// Something else in the configuration is wrong.
    #[error("configuration: {0}")]
    Config(String),
}

// Not `#[from]`: that would make the spec error a `source` too, and the CLI prints sources.
impl From<crate::providers::SpecError> for Error {
    fn from(error: crate::providers::SpecError) -> Self {
        Error::Providers(error)
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::Database(error) => {
                tracing::error!(%error, "database error");
                portico_grpc::unavailable("the provider store is unavailable; retry shortly")
            }
            other => Status::internal(other.to_string()),
        }
    }
}

/// What a caller is told when no provider could answer (the reasons are in the log).
pub const LLM_UNAVAILABLE_MESSAGE: &str = "no LLM provider could answer; retry later";
/// What a caller is told when every provider's circuit refused the call.
pub const LLM_CIRCUIT_OPEN_MESSAGE: &str =
    "no LLM provider could answer (circuit open); retry later";
/// What a caller is told when the LLM call ran out of time.
pub const LLM_TIMEOUT_MESSAGE: &str = "the LLM call timed out";

fn with_reason(mut status: Status, reason: &'static str) -> Status {
    status.metadata_mut().insert(
        portico_proto::ERROR_REASON_KEY,
        MetadataValue::from_static(reason),
    );
    status
}

/// Every provider failed or is open: UNAVAILABLE, which the edge answers with 502.
pub fn llm_unavailable(message: String, retry_after: Option<Duration>) -> Status {
    let mut status = with_reason(
        Status::unavailable(message),
        portico_proto::REASON_LLM_UNAVAILABLE,
    );
    if let Some(wait) = retry_after {
        // Whole seconds, rounded up: never ask to come back before the circuit half-opens.
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        status
            .metadata_mut()
            .insert("retry-after", MetadataValue::from(seconds.max(1)));
    }
    status
}

/// The LLM call ran out of time: DEADLINE_EXCEEDED, which the edge answers with 504.
pub fn llm_timeout(message: String) -> Status {
    with_reason(
        Status::deadline_exceeded(message),
        portico_proto::REASON_LLM_TIMEOUT,
    )
}

/// The caller named a model alias nobody serves here: NOT_FOUND, which the edge answers with 404
/// and OpenAI's `model_not_found` code.
pub fn model_not_found(alias: &str) -> Status {
    with_reason(
        Status::not_found(format!(
            "the model `{alias}` does not exist here; GET /v1/models lists the models you may use"
        )),
        portico_proto::REASON_MODEL_NOT_FOUND,
    )
}
