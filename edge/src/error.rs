//! The edge's one error → HTTP mapping (docs/CONTRACT.md §4): gRPC codes follow grpc-gateway's table,
//! except an LLM provider failure (502, with `Retry-After` while a circuit is open) and an LLM
//! timeout (504), which the chat gateway marks with the `x-portico-error` metadata key.

use http::StatusCode;
use serde_json::json;
use tonic::Code;

use crate::response::{json_response, Response};

pub use portico_proto::{
    ERROR_REASON_KEY, REASON_LLM_TIMEOUT, REASON_LLM_UNAVAILABLE, REASON_MODEL_NOT_FOUND,
    REASON_OVERLOADED,
};

tokio::task_local! {
    /// Set while the edge answers an OpenAI route (`/v1/…`): its errors take OpenAI's shape.
    pub static OPENAI_SHAPE: bool;
}

/// The HTTP status of a gRPC code (grpc-gateway's table).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::BAD_REQUEST,
        Code::Aborted => StatusCode::CONFLICT,
        Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
    }
}

/// An error the edge answers with: a gRPC code, a message for the caller, and optionally the
/// seconds after which a retry makes sense.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The gRPC code; its name is the JSON `code`.
    pub code: Code,
    /// What the caller can act on. Never an internal cause.
    pub message: String,
    /// HTTP status, when it differs from the code's (502 for LLM failures, 413, 405).
    pub status: Option<StatusCode>,
    /// `Retry-After` seconds.
    pub retry_after: Option<u64>,
    /// OpenAI's `code`, when the service said more than the gRPC code (`model_not_found`).
    pub openai_code: Option<&'static str>,
    /// The service's `google.rpc` error details (`ErrorInfo`, `BadRequest`, `RetryInfo`) in
    /// their JSON mapping, answered as the body's `details` when there are any.
    pub details: Vec<serde_json::Value>,
}

impl ApiError {
    /// An error with the code's usual HTTP status.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            status: None,
            retry_after: None,
            openai_code: None,
            details: Vec::new(),
        }
    }

    /// Overrides the HTTP status.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    /// Adds `Retry-After`.
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// Maps a service's gRPC error. `service` names the backend for "unavailable" messages.
    pub fn from_status(status: &tonic::Status, service: &str) -> Self {
        let metadata = status.metadata();
        let reason = metadata.get(ERROR_REASON_KEY).and_then(|v| v.to_str().ok());
        let retry_after = metadata
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let message = match status.code() {
            // A transport failure (connect refused, reset) carries its cause as `source`; its
            // message is tonic's, not the service's, so say what happened instead.
            Code::Unavailable
                if status.message().is_empty() || std::error::Error::source(status).is_some() =>
            {
                format!("the {service} service is unavailable")
            }
            // Any other failure of the call itself (an HTTP/2 error, a header the peer refused)
            // says something about the edge's plumbing, nothing the caller can act on.
            _ if std::error::Error::source(status).is_some() => {
                tracing::warn!(%status, service, "backend call failed");
                format!("the call to the {service} service failed")
            }
            _ => status.message().to_owned(),
        };
        let (details, retry_delay) = status_details(status);
        let mut error = Self::new(status.code(), message);
        // The `retry-after` metadata wins; a `RetryInfo` alone still gives `Retry-After`.
        error.retry_after = retry_after.or(retry_delay);
        error.details = details;
        match reason {
            Some(REASON_LLM_UNAVAILABLE) => error.with_status(StatusCode::BAD_GATEWAY),
            Some(REASON_LLM_TIMEOUT) => error.with_status(StatusCode::GATEWAY_TIMEOUT),
            Some(REASON_OVERLOADED) => error.with_status(StatusCode::SERVICE_UNAVAILABLE),
            Some(REASON_MODEL_NOT_FOUND) => {
                error.openai_code = Some("model_not_found");
                error
            }
            Some(portico_proto::REASON_TOKEN_BUDGET) => {
                error.openai_code = Some("insufficient_quota");
                error
            }
            _ => error,
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        self.status.unwrap_or_else(|| http_status(self.code))
    }

    /// OpenAI's `{"error": {"message", "type", "param", "code"}}`, with Portico's
    /// `correlationId` beside them. The SDKs pick their exception class from the HTTP status.
    pub fn openai_body(&self, correlation_id: &str) -> serde_json::Value {
        let status = self.status();
        let (kind, code) = match status.as_u16() {
            400 | 408 | 413 | 422 => ("invalid_request_error", None),
            401 => ("authentication_error", Some("invalid_api_key")),
            403 => ("permission_error", None),
            404 => ("invalid_request_error", Some("not_found")),
            405 | 409 => ("invalid_request_error", None),
            429 => ("rate_limit_error", Some("rate_limit_exceeded")),
            502 => ("api_error", Some("upstream_error")),
            503 => ("api_error", Some("service_unavailable")),
            504 => ("timeout_error", Some("timeout")),
            _ => ("api_error", None),
        };
        json!({
            "error": {
                "message": self.message,
                "type": kind,
                "param": self.openai_param(),
                "code": self.openai_code.or(code),
                "correlationId": correlation_id,
            }
        })
    }

    /// OpenAI's `param`: the field at fault, `model` for an unknown model, else the first
    /// field of the service's `BadRequest` (the message lists them all), else `null`.
    fn openai_param(&self) -> serde_json::Value {
        if self.openai_code == Some("model_not_found") {
            return json!("model");
        }
        self.details
            .iter()
            .find(|detail| detail["@type"] == tonic_types::BadRequest::TYPE_URL)
            .and_then(|bad| bad["fieldViolations"].get(0))
            .map_or(serde_json::Value::Null, |first| first["field"].clone())
    }

    /// The JSON error response (docs/CONTRACT.md §4; OpenAI's shape on the OpenAI routes).
    pub fn into_response(self, correlation_id: &str) -> Response {
        let openai = OPENAI_SHAPE.try_with(|openai| *openai).unwrap_or(false);
        let body = if openai {
            self.openai_body(correlation_id)
        } else {
            let mut body = json!({
                "error": {
                    "code": code_name(self.code),
                    "message": self.message,
                    "correlationId": correlation_id,
                }
            });
            if !self.details.is_empty() {
                body["error"]["details"] = serde_json::Value::Array(self.details.clone());
            }
            body
        };
        let mut response = json_response(self.status(), &body);
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

/// A status's `google.rpc` details in their proto3 JSON mapping (`@type` first), and the
/// `RetryInfo` delay rounded up to whole seconds. Details that do not decode are left out.
fn status_details(status: &tonic::Status) -> (Vec<serde_json::Value>, Option<u64>) {
    use tonic_types::{BadRequest, ErrorInfo, RetryInfo, StatusExt};
    let Ok(details) = status.check_error_details() else {
        return (Vec::new(), None);
    };
    let mut out = Vec::new();
    if let Some(info) = details.error_info() {
        let mut value = json!({
            "@type": ErrorInfo::TYPE_URL,
            "reason": info.reason,
            "domain": info.domain,
        });
        if !info.metadata.is_empty() {
            value["metadata"] = json!(info.metadata);
        }
        out.push(value);
    }
    if let Some(bad) = details.bad_request() {
        let violations: Vec<_> = bad
            .field_violations
            .iter()
            .map(|v| json!({"field": v.field, "description": v.description}))
            .collect();
        out.push(json!({"@type": BadRequest::TYPE_URL, "fieldViolations": violations}));
    }
    let mut retry_seconds = None;
    if let Some(delay) = details.retry_info().and_then(|r| r.retry_delay) {
        let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        retry_seconds = Some(seconds);
        let text = if delay.subsec_nanos() == 0 {
            format!("{}s", delay.as_secs())
        } else {
            format!("{}.{:09}s", delay.as_secs(), delay.subsec_nanos())
        };
        out.push(json!({"@type": RetryInfo::TYPE_URL, "retryDelay": text}));
    }
    (out, retry_seconds)
}

/// The canonical upper-case name of a gRPC code (`NOT_FOUND`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_seventeen_codes_map_as_grpc_gateway_does() {
        let table = [
            (Code::Ok, 200),
            (Code::Cancelled, 499),
            (Code::Unknown, 500),
            (Code::InvalidArgument, 400),
            (Code::DeadlineExceeded, 504),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::PermissionDenied, 403),
            (Code::ResourceExhausted, 429),
            (Code::FailedPrecondition, 400),
            (Code::Aborted, 409),
            (Code::OutOfRange, 400),
            (Code::Unimplemented, 501),
            (Code::Internal, 500),
            (Code::Unavailable, 503),
            (Code::DataLoss, 500),
            (Code::Unauthenticated, 401),
        ];
        for (code, expected) in table {
            assert_eq!(http_status(code).as_u16(), expected, "{code:?}");
            // Every code's name round-trips through tonic's own parser of names.
            assert_eq!(Code::from_i32(code as i32), code);
        }
        assert_eq!(table.len(), 17);
    }

    #[test]
    fn llm_failures_are_bad_gateway_and_timeouts_gateway_timeout() {
        let mut status = tonic::Status::unavailable("all providers failed");
        status.metadata_mut().insert(
            ERROR_REASON_KEY,
            REASON_LLM_UNAVAILABLE.parse().expect("ascii"),
        );
        status
            .metadata_mut()
            .insert("retry-after", "30".parse().expect("ascii"));
        let error = ApiError::from_status(&status, "chat");
        assert_eq!(error.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(error.retry_after, Some(30));

        let mut status = tonic::Status::deadline_exceeded("provider timed out");
        status
            .metadata_mut()
            .insert(ERROR_REASON_KEY, REASON_LLM_TIMEOUT.parse().expect("ascii"));
        assert_eq!(
            ApiError::from_status(&status, "chat").status(),
            StatusCode::GATEWAY_TIMEOUT
        );

        // A saturated service (RESOURCE_EXHAUSTED marked `overloaded`) is 503, not 429.
        let mut status = tonic::Status::resource_exhausted("busy");
        status
            .metadata_mut()
            .insert(ERROR_REASON_KEY, REASON_OVERLOADED.parse().expect("ascii"));
        status
            .metadata_mut()
            .insert("retry-after", "1".parse().expect("ascii"));
        let error = ApiError::from_status(&status, "auth");
        assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error.retry_after, Some(1));

        // Without the marker an UNAVAILABLE service is the usual 503.
        let status = tonic::Status::unavailable("");
        let error = ApiError::from_status(&status, "auth");
        assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error.message, "the auth service is unavailable");
    }

    #[test]
    fn error_details_become_the_bodys_details_and_retry_after() {
        use tonic_types::{ErrorDetails, FieldViolation, StatusExt};
        let mut details = ErrorDetails::with_error_info(
            "LOGIN_LOCKED_OUT",
            "portico.dev",
            std::collections::HashMap::new(),
        );
        details.set_retry_info(Some(std::time::Duration::from_millis(1500)));
        details.set_bad_request(vec![
            FieldViolation::new("title", "title must be 1 to 200 characters"),
            FieldViolation::new("status", "status must be STATUS_DRAFT or STATUS_PUBLISHED"),
        ]);
        // No `retry-after` metadata: the RetryInfo gives it, rounded up.
        let status = tonic::Status::with_error_details(
            Code::ResourceExhausted,
            "too many failed logins; retry after 2 s",
            details,
        );
        let error = ApiError::from_status(&status, "auth");
        assert_eq!(error.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(error.retry_after, Some(2));
        assert_eq!(error.message, "too many failed logins; retry after 2 s");
        assert_eq!(
            serde_json::Value::Array(error.details.clone()),
            json!([
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                 "reason": "LOGIN_LOCKED_OUT", "domain": "portico.dev"},
                {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [
                    {"field": "title", "description": "title must be 1 to 200 characters"},
                    {"field": "status",
                     "description": "status must be STATUS_DRAFT or STATUS_PUBLISHED"}]},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.500000000s"},
            ])
        );

        // The metadata, when present, wins over the RetryInfo.
        let mut status = tonic::Status::with_error_details(
            Code::Unavailable,
            "down",
            ErrorDetails::with_retry_info(Some(std::time::Duration::from_secs(9))),
        );
        status
            .metadata_mut()
            .insert("retry-after", "3".parse().expect("ascii"));
        assert_eq!(ApiError::from_status(&status, "auth").retry_after, Some(3));

        // A status without details answers the body it always did.
        let error = ApiError::from_status(&tonic::Status::not_found("no such item"), "content");
        assert!(error.details.is_empty());
    }

    #[test]
    fn openais_param_is_the_first_bad_field_and_the_message_lists_every_one() {
        let status = portico_grpc::bad_request(vec![
            (
                "messages[1].role".into(),
                "message 1: role `robot` is not …".into(),
            ),
            (
                "temperature".into(),
                "temperature must be between 0 and 2".into(),
            ),
        ]);
        let body = ApiError::from_status(&status, "chat").openai_body("c-1");
        assert_eq!(body["error"]["param"], "messages[1].role");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        let message = body["error"]["message"].as_str().expect("message");
        assert!(
            message.contains("robot") && message.contains("temperature"),
            "{message}"
        );
        // Without a BadRequest there is no field to name.
        let plain = ApiError::from_status(&tonic::Status::invalid_argument("no"), "chat");
        assert!(plain.openai_body("c-2")["error"]["param"].is_null());
    }
}
