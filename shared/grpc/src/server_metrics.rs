//! gRPC server metrics under the names grpc-prometheus (go-grpc-prometheus, its dashboards and
//! alerts) made standard: `grpc_server_started_total`, `grpc_server_handled_total` by code and
//! the `grpc_server_handling_seconds` histogram, each labelled `grpc_type`, `grpc_service`,
//! `grpc_method`. A tower layer over every server: the code is read from the trailers (or the
//! headers of a trailers-only answer), the duration runs to the last byte of the answer, and a
//! call whose client went away first counts as CANCELLED. Only methods this server serves get
//! their own labels (a path nobody serves is `unknown`), so the label sets stay bounded.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Instant,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
};
use prost::Message as _;
use tower::{Layer, Service};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    grpc_type: &'static str,
    grpc_service: String,
    grpc_method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandledLabels {
    grpc_type: &'static str,
    grpc_service: String,
    grpc_method: String,
    grpc_code: &'static str,
}

struct Metrics {
    started: Family<MethodLabels, Counter>,
    handled: Family<HandledLabels, Counter>,
    handling: Family<MethodLabels, Histogram>,
}

fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        use portico_telemetry::metrics::{latency_buckets, register};
        let metrics = Metrics {
            started: Family::default(),
            handled: Family::default(),
            handling: Family::new_with_constructor(latency_buckets),
        };
        register(
            "grpc_server_started",
            "RPCs started on the server",
            metrics.started.clone(),
        );
        register(
            "grpc_server_handled",
            "RPCs completed on the server, by gRPC status code",
            metrics.handled.clone(),
        );
        register(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC until the server sent the last byte of its answer",
            metrics.handling.clone(),
        );
        metrics
    })
}

/// The gRPC status code names, as grpc-prometheus writes them.
fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "Canceled",
        tonic::Code::Unknown => "Unknown",
        tonic::Code::InvalidArgument => "InvalidArgument",
        tonic::Code::DeadlineExceeded => "DeadlineExceeded",
        tonic::Code::NotFound => "NotFound",
        tonic::Code::AlreadyExists => "AlreadyExists",
        tonic::Code::PermissionDenied => "PermissionDenied",
        tonic::Code::ResourceExhausted => "ResourceExhausted",
        tonic::Code::FailedPrecondition => "FailedPrecondition",
        tonic::Code::Aborted => "Aborted",
        tonic::Code::OutOfRange => "OutOfRange",
        tonic::Code::Unimplemented => "Unimplemented",
        tonic::Code::Internal => "Internal",
        tonic::Code::Unavailable => "Unavailable",
        tonic::Code::DataLoss => "DataLoss",
        tonic::Code::Unauthenticated => "Unauthenticated",
    }
}

/// Counts and times every RPC of a server (see the module documentation).
#[derive(Debug, Clone)]
pub struct ServerMetricsLayer {
    methods: Arc<HashMap<String, MethodLabels>>,
}

impl ServerMetricsLayer {
    /// The methods of `service_names` found in the encoded descriptor sets; each starts at
    /// zero, so a rate over a quiet method is 0 rather than absent.
    pub fn new(descriptor_sets: &[&[u8]], service_names: &[&str]) -> Self {
        let mut methods = HashMap::new();
        for set in descriptor_sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(*set) else {
                continue;
            };
            for file in set.file {
                let package = file.package.unwrap_or_default();
                for service in file.service {
                    let name = format!("{package}.{}", service.name.unwrap_or_default());
                    if !service_names.contains(&name.as_str()) {
                        continue;
                    }
                    for method in service.method {
                        let method_name = method.name.unwrap_or_default();
                        let grpc_type = match (
                            method.client_streaming.unwrap_or(false),
                            method.server_streaming.unwrap_or(false),
                        ) {
                            (false, false) => "unary",
                            (false, true) => "server_stream",
                            (true, false) => "client_stream",
                            (true, true) => "bidi_stream",
                        };
                        let labels = MethodLabels {
                            grpc_type,
                            grpc_service: name.clone(),
                            grpc_method: method_name.clone(),
                        };
                        let _ = metrics().started.get_or_create(&labels);
                        let _ = metrics().handling.get_or_create(&labels);
                        let _ = metrics()
                            .handled
                            .get_or_create(&handled(&labels, tonic::Code::Ok));
                        methods.insert(format!("/{name}/{method_name}"), labels);
                    }
                }
            }
        }
        Self {
            methods: Arc::new(methods),
        }
    }

    fn labels(&self, path: &str) -> MethodLabels {
        self.methods
            .get(path)
            .cloned()
            .unwrap_or_else(|| MethodLabels {
                grpc_type: "unknown",
                grpc_service: "unknown".into(),
                grpc_method: "unknown".into(),
            })
    }
}

fn handled(labels: &MethodLabels, code: tonic::Code) -> HandledLabels {
    HandledLabels {
        grpc_type: labels.grpc_type,
        grpc_service: labels.grpc_service.clone(),
        grpc_method: labels.grpc_method.clone(),
        grpc_code: code_name(code),
    }
}

impl<S> Layer<S> for ServerMetricsLayer {
    type Service = ServerMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerMetricsService {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`ServerMetricsLayer`].
#[derive(Debug, Clone)]
pub struct ServerMetricsService<S> {
    inner: S,
    layer: ServerMetricsLayer,
}

impl<S, B, R> Service<http::Request<B>> for ServerMetricsService<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<MeteredBody<R>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The clone is not ready; keep the ready one for this call (tower's readiness contract).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let labels = self.layer.labels(request.uri().path());
        metrics().started.get_or_create(&labels).inc();
        let started = Instant::now();
        Box::pin(async move {
            let response = inner.call(request).await?;
            // A trailers-only answer (most errors) carries its status in the headers.
            let code = response
                .headers()
                .get("grpc-status")
                .map(|v| tonic::Code::from_bytes(v.as_bytes()));
            let mut call = Call {
                labels,
                started,
                done: false,
            };
            if let Some(code) = code {
                call.finish(code);
            }
            Ok(response.map(|body| MeteredBody { inner: body, call }))
        })
    }
}

struct Call {
    labels: MethodLabels,
    started: Instant,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: tonic::Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        metrics()
            .handled
            .get_or_create(&handled(&self.labels, code))
            .inc();
        metrics()
            .handling
            .get_or_create(&self.labels)
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// A response body that records its RPC when its trailers pass (or it ends, or is dropped).
pub struct MeteredBody<B> {
    inner: B,
    call: Call,
}

impl<B> std::fmt::Debug for MeteredBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeteredBody").finish_non_exhaustive()
    }
}

impl<B> http_body::Body for MeteredBody<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = trailers
                        .get("grpc-status")
                        .map_or(tonic::Code::Unknown, |v| {
                            tonic::Code::from_bytes(v.as_bytes())
                        });
                    this.call.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => this.call.finish(tonic::Code::Internal),
            Poll::Ready(None) => this.call.finish(tonic::Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        // The connection or the client went away before the answer ended.
        self.call.finish(tonic::Code::Cancelled);
    }
}
