//! Trace export: one request through the edge yields spans from the edge and from a service,
//! exported over OTLP/gRPC to an in-test collector, sharing one trace id and carrying
//! `correlation_id`. Its own test binary, because telemetry installs a process-global
//! subscriber.

#[path = "suite/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::{collections::HashMap, time::Duration};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        trace_service_server::{TraceService, TraceServiceServer},
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    },
    common::v1::any_value::Value as AnyValue,
    trace::v1::Span,
};
use tokio::sync::mpsc;

struct Collector {
    spans: mpsc::UnboundedSender<Span>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                for span in scope.spans {
                    let _ = self.spans.send(span);
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(s) => Some(s.clone()),
            _ => None,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_is_one_trace_across_edge_and_service() {
    // Arrange: a collector on port 0, and telemetry exporting to it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let (sender, mut received) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector { spans: sender }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let settings = portico_config::Settings::from_source(&HashMap::from([(
        "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
        endpoint,
    )]))
    .expect("settings");
    let guard = std::sync::Arc::new(
        portico_telemetry::init_quiet("suite", &settings.telemetry).expect("telemetry"),
    );
    assert!(portico_telemetry::otlp_enabled());
    let suite = harness::TestSuite::spawn().await;

    // Act: one request whose readiness check calls every service over gRPC.
    let response = suite
        .http
        .get(suite.url("/readyz"))
        .header("x-correlation-id", "abc-123")
        .send()
        .await
        .expect("edge answers");
    assert_eq!(response.status(), 200);
    let flusher = guard.clone();
    tokio::task::spawn_blocking(move || flusher.flush())
        .await
        .expect("flush");

    // Assert: the edge's span and a service's span share the trace and the correlation ID.
    let mut edge_span: Option<Span> = None;
    let mut service_spans: Vec<Span> = Vec::new();
    let collect = async {
        while let Some(span) = received.recv().await {
            if attribute(&span, "correlation_id").as_deref() != Some("abc-123") {
                continue;
            }
            match span.name.as_str() {
                "GET /readyz" => edge_span = Some(span),
                "grpc.health.v1.Health/Check" => service_spans.push(span),
                _ => {}
            }
            let components: std::collections::HashSet<_> = service_spans
                .iter()
                .filter_map(|s| attribute(s, "component"))
                .collect();
            if edge_span.is_some() && components.len() == 4 {
                break;
            }
        }
    };
    // The bound only turns a lost export into a failure instead of a hang.
    let _ = tokio::time::timeout(Duration::from_secs(15), collect).await;
    let edge_span = edge_span.expect("the edge's span was exported");
    for span in &service_spans {
        assert_eq!(span.trace_id, edge_span.trace_id, "one request, one trace");
        assert!(
            !span.parent_span_id.is_empty(),
            "the service span has a remote parent"
        );
        assert_eq!(
            attribute(span, "correlation_id").as_deref(),
            Some("abc-123")
        );
    }
    let components: std::collections::HashSet<_> = service_spans
        .iter()
        .filter_map(|s| attribute(s, "component"))
        .collect();
    assert_eq!(
        components.len(),
        4,
        "a server span from every service: {components:?}"
    );
}
