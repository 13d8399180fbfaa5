//! Telemetry shared by every Portico process: JSON logs carrying `correlation_id` and
//! `trace_id`, OTLP/gRPC trace export when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, W3C trace
//! context propagation, correlation IDs (docs/CONTRACT.md §5) and the process's Prometheus registry.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::{trace as sdktrace, Resource};
use portico_config::{Sampler, TelemetrySettings};
use tracing_subscriber::{
    layer::SubscriberExt as _, util::SubscriberInitExt as _, EnvFilter, Layer,
};

pub mod context;
pub mod logs;
pub mod metrics;

pub use context::{Incoming, RequestContext, CORRELATION_HEADER};

mod time;
pub use time::{rfc3339, rfc3339_millis};

/// True once [`init`] installed an OTLP exporter; spans then carry real OpenTelemetry context.
static OTLP_ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported over OTLP in this process.
pub fn otlp_enabled() -> bool {
    OTLP_ENABLED.load(Ordering::Relaxed)
}

/// Errors while setting up telemetry.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built.
    #[error("OTEL_EXPORTER_OTLP_ENDPOINT: cannot build the OTLP exporter: {0}")]
    Exporter(String),
    /// `LOG_LEVEL`/`RUST_LOG` is not a valid filter.
    #[error("LOG_LEVEL: `{0}` is not a valid level or filter such as info or portico=debug,info")]
    Filter(String),
}

/// Flushes and shuts down the OTLP exporter when dropped.
#[must_use = "dropping the guard shuts the exporter down"]
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    provider: Option<sdktrace::SdkTracerProvider>,
    /// Dropped last: writes out the log lines still queued.
    log_worker: Option<logs::WriterGuard>,
}

impl TelemetryGuard {
    /// Exports every finished span now. Blocks: call it from a blocking context.
    pub fn flush(&self) {
        if let Some(provider) = &self.provider {
            if let Err(error) = provider.force_flush() {
                tracing::warn!(%error, "flushing spans failed");
            }
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            // Shutdown exports what is still queued; errors only mean the collector is gone.
            let _ = provider.shutdown();
        }
        // Then the log lines still queued (the shutdown above may have logged).
        drop(self.log_worker.take());
    }
}

/// Installs the global subscriber: logs to stdout (JSON or pretty, through a background writer:
/// see [`logs`]), filtered by `LOG_LEVEL`,
/// plus an OpenTelemetry layer when an OTLP endpoint is configured. `component` names the
/// process (`edge`, `auth`, … or `suite`) and defaults `service.name` to `portico-<component>`.
///
/// Must run inside a Tokio runtime (the OTLP exporter uses tonic). Calling it twice keeps the
/// first subscriber.
pub fn init(
    component: &str,
    settings: &TelemetrySettings,
) -> Result<TelemetryGuard, TelemetryError> {
    let filter = EnvFilter::try_new(&settings.log_filter)
        .map_err(|_| TelemetryError::Filter(settings.log_filter.clone()))?;
    init_with(component, settings, Some(filter))
}

/// Like [`init`], but with logging off (tests keep spans and export, without the noise).
pub fn init_quiet(
    component: &str,
    settings: &TelemetrySettings,
) -> Result<TelemetryGuard, TelemetryError> {
    init_with(component, settings, None)
}

fn init_with(
    component: &str,
    settings: &TelemetrySettings,
    log_filter: Option<EnvFilter>,
) -> Result<TelemetryGuard, TelemetryError> {
    let service_name = settings
        .service_name
        .clone()
        .unwrap_or_else(|| format!("portico-{component}"));
    let provider = match &settings.otlp_endpoint {
        Some(endpoint) => Some(tracer_provider(endpoint, &service_name, settings.sampler)?),
        None => None,
    };
    let otel_layer = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("portico"))
            .with_filter(EnvFilter::new("info"))
    });
    let mut log_worker = None;
    let fmt_layer = log_filter.map(|filter| {
        let (writer, worker) = logs::background_stdout();
        log_worker = Some(worker);
        if settings.log_json {
            tracing_subscriber::fmt::layer()
                .event_format(logs::JsonLines)
                .fmt_fields(logs::JsonSpanFields)
                .with_writer(writer)
                .with_filter(filter)
                .boxed()
        } else {
            tracing_subscriber::fmt::layer()
                .with_writer(writer)
                .with_filter(filter)
                .boxed()
        }
    });
    let installed = tracing_subscriber::registry()
        .with(otel_layer)
        .with(fmt_layer)
        .try_init()
        .is_ok();
    if installed && provider.is_some() {
        OTLP_ENABLED.store(true, Ordering::Relaxed);
    }
    Ok(TelemetryGuard {
        provider: provider.filter(|_| installed),
        log_worker: log_worker.filter(|_| installed),
    })
}

fn tracer_provider(
    endpoint: &str,
    service_name: &str,
    sampler: Sampler,
) -> Result<sdktrace::SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|error| TelemetryError::Exporter(error.to_string()))?;
    let sampler = match sampler {
        Sampler::AlwaysOn => sdktrace::Sampler::AlwaysOn,
        Sampler::AlwaysOff => sdktrace::Sampler::AlwaysOff,
        Sampler::TraceIdRatio(ratio) => sdktrace::Sampler::TraceIdRatioBased(ratio),
        Sampler::ParentBasedAlwaysOn => {
            sdktrace::Sampler::ParentBased(Box::new(sdktrace::Sampler::AlwaysOn))
        }
        Sampler::ParentBasedTraceIdRatio(ratio) => {
            sdktrace::Sampler::ParentBased(Box::new(sdktrace::Sampler::TraceIdRatioBased(ratio)))
        }
    };
    Ok(sdktrace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler)
        .with_resource(
            Resource::builder()
                .with_service_name(service_name.to_owned())
                .build(),
        )
        .build())
}
