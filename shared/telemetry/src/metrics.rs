//! The process's Prometheus registry and the metrics of DESIGN §7. Every component in a
//! process registers here once; the edge's `/metrics` encodes it.

use std::sync::{Mutex, OnceLock};

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(Registry::default()))
}

/// Registers a metric in the process registry. Call once per metric (from a `OnceLock`).
pub fn register(name: &str, help: &str, metric: impl prometheus_client::registry::Metric) {
    let mut registry = registry()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    registry.register(name, help, metric);
}

/// The registry in Prometheus text exposition format.
pub fn encode_text() -> String {
    let registry = registry()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

/// Labels of `http_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// HTTP method.
    pub method: &'static str,
    /// Route template (never the raw path, to bound cardinality).
    pub route: &'static str,
    /// Status code.
    pub status: u16,
}

/// Labels of `http_request_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// HTTP method.
    pub method: &'static str,
    /// Route template.
    pub route: &'static str,
}

/// A method as a static label value (anything unusual is `OTHER`, bounding cardinality).
pub fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::PATCH => "PATCH",
        _ => "OTHER",
    }
}

/// Labels of `grpc_client_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcClientLabels {
    /// Called service (`auth`, `content`, …).
    pub service: String,
    /// Called method.
    pub method: String,
    /// gRPC status code name.
    pub code: String,
}

/// Labels of `rate_limit_exceeded_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    /// `global`, `auth` or `chat`.
    pub policy: String,
}

/// HTTP metrics of the edge.
#[derive(Debug)]
pub struct HttpMetrics {
    /// `http_requests_total{method,route,status}`.
    pub requests: Family<HttpLabels, Counter>,
    /// `http_request_duration_seconds{method,route}`.
    pub duration: Family<RouteLabels, Histogram>,
    /// `grpc_client_requests_total{service,method,code}`.
    pub grpc_client: Family<GrpcClientLabels, Counter>,
    /// `database_connection_errors_total`.
    pub database_errors: Counter,
    /// `rate_limit_exceeded_total{policy}`.
    pub rate_limited: Family<PolicyLabels, Counter>,
}

/// The edge's metrics, registered on first use.
pub fn http() -> &'static HttpMetrics {
    static METRICS: OnceLock<HttpMetrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let metrics = HttpMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new([
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ])
            }),
            grpc_client: Family::default(),
            database_errors: Counter::default(),
            rate_limited: Family::default(),
        };
        register(
            "http_requests",
            "HTTP requests answered by the edge",
            metrics.requests.clone(),
        );
        register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request at the edge",
            metrics.duration.clone(),
        );
        register(
            "grpc_client_requests",
            "gRPC calls made by the edge to the services",
            metrics.grpc_client.clone(),
        );
        register(
            "database_connection_errors",
            "Failed database health probes",
            metrics.database_errors.clone(),
        );
        register(
            "rate_limit_exceeded",
            "Requests refused with 429 by a rate limit policy",
            metrics.rate_limited.clone(),
        );
        metrics
    })
}
