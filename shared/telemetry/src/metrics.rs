//! The process's Prometheus registry and the metrics of README, Metrics. Every component in a
//! process registers here once; the edge's `/metrics` encodes it, as OpenMetrics or as the
//! Prometheus text format 0.0.4, whichever the scraper asks for.

use std::{
    borrow::Cow,
    sync::{Mutex, OnceLock},
};

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

mod process;
mod text;

pub use text::Format;

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(process::ProcessCollector));
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "portico_build_info",
            "Always 1; the labels say which Portico build this process runs",
            build,
        );
        Mutex::new(registry)
    })
}

/// Labels of `portico_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// Registers a metric in the process registry. Call once per metric (from a `OnceLock`).
pub fn register(name: &str, help: &str, metric: impl prometheus_client::registry::Metric) {
    let mut registry = registry()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    registry.register(name, help, metric);
}

/// The registry in the OpenMetrics text format.
pub fn encode_text() -> String {
    let registry = registry()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

/// The registry in `format` (see [`Format::negotiate`]).
pub fn encode_as(format: Format) -> String {
    match format {
        Format::OpenMetrics => encode_text(),
        Format::Text => text::from_openmetrics(&encode_text()),
    }
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
    /// `http_response_first_byte_seconds{method,route}`: until the response head is sent.
    pub first_byte: Family<RouteLabels, Histogram>,
    /// `grpc_client_handling_seconds{grpc_service,grpc_method}`: the edge's calls, until the
    /// last byte of the answer.
    pub grpc_client_duration: Family<GrpcMethodLabels, Histogram>,
}

/// Labels of a histogram per gRPC method (grpc-prometheus' names).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcMethodLabels {
    /// Full service name (`portico.auth.v1.AuthService`).
    pub grpc_service: String,
    /// Method name (`Login`).
    pub grpc_method: String,
}

/// The buckets of every latency histogram here, in seconds: 0.5 ms to 30 s (streams).
pub fn latency_buckets() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

/// The edge's metrics, registered on first use.
pub fn http() -> &'static HttpMetrics {
    static METRICS: OnceLock<HttpMetrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let metrics = HttpMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_buckets),
            grpc_client: Family::default(),
            database_errors: Counter::default(),
            rate_limited: Family::default(),
            first_byte: Family::new_with_constructor(latency_buckets),
            grpc_client_duration: Family::new_with_constructor(latency_buckets),
        };
        // Present from the start, so `rate(…)` and absent-series alerts see a zero.
        for policy in ["global", "auth", "chat"] {
            let _ = metrics.rate_limited.get_or_create(&PolicyLabels {
                policy: policy.to_owned(),
            });
        }
        register(
            "http_requests",
            "HTTP requests answered by the edge",
            metrics.requests.clone(),
        );
        register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request at the edge, until the last byte of the body (a stream: its end)",
            metrics.duration.clone(),
        );
        register(
            "http_response_first_byte_seconds",
            "Time until the edge sent the response head (for streams, time to first byte)",
            metrics.first_byte.clone(),
        );
        register(
            "grpc_client_handling_seconds",
            "Duration of the edge's gRPC calls to the services, until the last byte of the answer",
            metrics.grpc_client_duration.clone(),
        );
        register(
            "grpc_client_requests",
            "gRPC calls made by the edge to the services",
            metrics.grpc_client.clone(),
        );
        register(
            "database_connection_errors",
            "Failed database checks of the edge's readiness (see dependency_up for the state)",
            metrics.database_errors.clone(),
        );
        register(
            "rate_limit_exceeded",
            "Responses refused with 429 by a rate limit policy (one per response: the policy that refused)",
            metrics.rate_limited.clone(),
        );
        metrics
    })
}

/// Labels of `dependency_up`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DependencyLabels {
    /// The process part that depends on it (`edge`, `auth`, `content`, `chat-gateway`,
    /// `ratelimit`).
    pub component: &'static str,
    /// `database`, `redis`, a backend service (`auth`, `content`, `chat`, `ratelimit`) or an
    /// LLM provider (`llm:<name>`, one per configured provider: bounded by the configuration).
    pub dependency: Cow<'static, str>,
}

fn dependencies() -> &'static Family<DependencyLabels, Gauge> {
    static METRIC: OnceLock<Family<DependencyLabels, Gauge>> = OnceLock::new();
    METRIC.get_or_init(|| {
        let family = Family::default();
        register(
            "dependency_up",
            "1 while the component reaches the dependency (its background probe, or for an LLM provider a closed circuit), 0 while it does not",
            family.clone(),
        );
        family
    })
}

/// Records what a background probe saw: `dependency_up{component,dependency}`.
pub fn dependency_up(component: &'static str, dependency: impl Into<Cow<'static, str>>, up: bool) {
    dependency_gauge(component, dependency).set(i64::from(up));
}

/// The `dependency_up{component,dependency}` gauge itself, for a component that keeps it from
/// state it already holds (a circuit breaker) rather than calling [`dependency_up`] each time.
/// `dependency` must come from configuration, never from a request, so the series stay few.
pub fn dependency_gauge(
    component: &'static str,
    dependency: impl Into<Cow<'static, str>>,
) -> Gauge {
    dependencies()
        .get_or_create(&DependencyLabels {
            component,
            dependency: dependency.into(),
        })
        .clone()
}

/// Labels of `cache_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// Where the lookup happened: `edge` (the edge's copy), `l1` (the content service's
    /// in-process cache) or `redis`.
    pub layer: &'static str,
    /// `hit` or `miss`.
    pub result: &'static str,
}

/// Counts one cache lookup in `cache_requests_total{layer,result}`.
pub fn cache_lookup(layer: &'static str, hit: bool) {
    static METRIC: OnceLock<Family<CacheLabels, Counter>> = OnceLock::new();
    METRIC
        .get_or_init(|| {
            let family = Family::default();
            register(
                "cache_requests",
                "Content cache lookups by layer (edge, l1, redis) and result (hit, miss)",
                family.clone(),
            );
            family
        })
        .get_or_create(&CacheLabels {
            layer,
            result: if hit { "hit" } else { "miss" },
        })
        .inc();
}
