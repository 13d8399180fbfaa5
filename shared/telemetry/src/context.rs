//! Per-request context: the correlation ID (docs/CONTRACT.md §5) and the W3C trace context,
//! read from incoming headers and written onto outgoing ones.

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::{
    propagation::{Extractor, Injector, TextMapPropagator as _},
    trace::TraceContextExt as _,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Header (and gRPC metadata key) carrying the correlation ID.
pub const CORRELATION_HEADER: &str = "x-correlation-id";
const TRACEPARENT: &str = "traceparent";

/// True for 1–128 characters of `[A-Za-z0-9._-]`, the only IDs Portico repeats back.
pub fn is_valid_correlation_id(value: &str) -> bool {
    (1..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A new correlation ID (UUIDv7: sortable by time).
pub fn new_correlation_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The correlation ID and trace of one request, carried from the edge through every service.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The validated or generated correlation ID.
    pub correlation_id: String,
    /// The W3C trace id (32 hex digits) shared by every span of the request.
    pub trace_id: String,
    /// The span the request runs in.
    pub span: Span,
}

impl RequestContext {
    /// Reads the correlation ID and `traceparent` from `headers`, parents `span` on the
    /// incoming trace and records `trace_id` on it. `span` must declare an empty `trace_id`
    /// field.
    pub fn attach(span: Span, headers: &HeaderMap) -> Self {
        let incoming = Incoming::read(headers);
        span.record("correlation_id", incoming.correlation_id.as_str());
        if let Some(trace_id) = &incoming.trace_id {
            span.record("trace_id", trace_id.as_str());
        }
        Self::with_ids(span, headers, incoming)
    }

    /// [`RequestContext::attach`] for a span made with `correlation_id` and (when
    /// [`Incoming::trace_id`] is known) `trace_id` already set from `incoming`, as the edge
    /// makes its request span: each later `record` is one more visit of every layer. With
    /// OTLP the trace follows the incoming `traceparent` and `trace_id` is recorded here.
    pub fn with_ids(span: Span, headers: &HeaderMap, incoming: Incoming) -> Self {
        let trace_id = match incoming.trace_id {
            Some(trace_id) => trace_id,
            None => {
                let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
                let _ = span.set_parent(parent);
                let trace_id = span.context().span().span_context().trace_id().to_string();
                span.record("trace_id", trace_id.as_str());
                trace_id
            }
        };
        Self {
            correlation_id: incoming.correlation_id,
            trace_id,
            span,
        }
    }

    /// Writes `x-correlation-id` and `traceparent` for a call made on behalf of this request.
    pub fn inject(&self, headers: &mut HeaderMap) {
        if let Ok(value) = HeaderValue::from_str(&self.correlation_id) {
            headers.insert(CORRELATION_HEADER, value);
        }
        if crate::otlp_enabled() {
            TraceContextPropagator::new()
                .inject_context(&self.span.context(), &mut HeaderInjector(headers));
        } else {
            // No OpenTelemetry spans: still propagate the trace id so every log line of the
            // request, in every process, carries the same `trace_id`.
            let span_id = uuid::Uuid::new_v4().as_u128() as u64;
            let value = format!("00-{}-{span_id:016x}-01", self.trace_id);
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(TRACEPARENT, value);
            }
        }
    }
}

/// What a request's headers say of its identity, read before its span is made.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The caller's correlation ID when valid, else a new one.
    pub correlation_id: String,
    /// The caller's trace id, or a new one; `None` when OTLP exports, where the trace is the
    /// span's own, parented on the incoming `traceparent`.
    pub trace_id: Option<String>,
}

impl Incoming {
    /// Reads `x-correlation-id` and `traceparent`.
    pub fn read(headers: &HeaderMap) -> Self {
        let correlation_id = headers
            .get(CORRELATION_HEADER)
            .and_then(|value| value.to_str().ok())
            .filter(|value| is_valid_correlation_id(value))
            .map_or_else(new_correlation_id, str::to_owned);
        let trace_id = (!crate::otlp_enabled()).then(|| {
            incoming_trace_id(headers)
                .unwrap_or_else(|| format!("{:032x}", uuid::Uuid::new_v4().as_u128()))
        });
        Self {
            correlation_id,
            trace_id,
        }
    }
}

fn incoming_trace_id(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(TRACEPARENT)?.to_str().ok()?;
    let mut parts = value.split('-');
    let (_version, trace_id) = (parts.next()?, parts.next()?);
    let valid = trace_id.len() == 32
        && trace_id.bytes().all(|b| b.is_ascii_hexdigit())
        && trace_id.bytes().any(|b| b != b'0');
    valid.then(|| trace_id.to_ascii_lowercase())
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correlation_ids_are_validated() {
        assert!(is_valid_correlation_id("abc-123"));
        assert!(is_valid_correlation_id("A.b_c-9"));
        assert!(!is_valid_correlation_id(""));
        assert!(!is_valid_correlation_id("has space"));
        assert!(!is_valid_correlation_id("<script>"));
        assert!(!is_valid_correlation_id(&"a".repeat(129)));
        assert!(is_valid_correlation_id(&"a".repeat(128)));
    }

    #[test]
    fn trace_id_is_taken_from_traceparent() {
        let mut headers = HeaderMap::new();
        headers.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        headers.insert(CORRELATION_HEADER, HeaderValue::from_static("abc-123"));
        let context = RequestContext::attach(tracing::Span::none(), &headers);
        assert_eq!(context.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.correlation_id, "abc-123");

        let mut outgoing = HeaderMap::new();
        context.inject(&mut outgoing);
        let traceparent = outgoing
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert_eq!(
            outgoing.get(CORRELATION_HEADER).map(|v| v.as_bytes()),
            Some(&b"abc-123"[..])
        );
    }

    #[test]
    fn bad_correlation_id_is_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(CORRELATION_HEADER, HeaderValue::from_static("bad id!"));
        let context = RequestContext::attach(tracing::Span::none(), &headers);
        assert_ne!(context.correlation_id, "bad id!");
        assert!(is_valid_correlation_id(&context.correlation_id));
    }
}
