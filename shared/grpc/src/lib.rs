//! gRPC server plumbing shared by every Portico service: health (`""` and each full service
//! name), server reflection, a layer that reads `x-correlation-id` and `traceparent` and opens
//! one span per RPC, and graceful shutdown (NOT_SERVING, then drain).

use std::{future::Future, net::SocketAddr, time::Duration};

use futures_util::StreamExt as _;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::{server::HealthReporter, ServingStatus};

pub mod client;
mod layer;
mod metrics;
mod peer;
mod server_metrics;
mod watch;

pub use layer::{RequestContextLayer, RequestContextService};
pub use metrics::serve_metrics;
pub use peer::{Peer, PeerLayer, PeerPolicy, PeerService};
pub use portico_telemetry::RequestContext;
pub use server_metrics::{MeteredBody, ServerMetricsLayer, ServerMetricsService};

/// Errors of the gRPC server plumbing.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The reflection descriptors could not be loaded.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The listener's address could not be read.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS files are unusable.
    #[error("GRPC_TLS_*: {0}")]
    Tls(#[from] portico_tls::TlsError),
    /// The plaintext health port could not be bound.
    #[error("{key}={addr}: {error}")]
    HealthAddr {
        /// The variable.
        key: &'static str,
        /// Its value.
        addr: SocketAddr,
        /// Why it failed.
        error: std::io::Error,
    },
}

/// Most concurrent HTTP/2 streams per client connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;
/// Most requests handled at once per connection (beyond it, requests wait).
pub const CONCURRENCY_PER_CONNECTION: usize = 256;
/// Longest an RPC may take before the server answers DEADLINE_EXCEEDED (streams: until their
/// first message; the chat gateway bounds streams itself).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest a client may take for its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How a server is reached and whom it trusts.
#[derive(Debug, Clone)]
pub struct Transport {
    tls: Option<portico_tls::Reloading<portico_tls::rustls::ServerConfig>>,
    peers: PeerPolicy,
    health_addr: Option<(&'static str, SocketAddr)>,
}

impl Transport {
    /// From `GRPC_TLS_*`, `GRPC_TRUSTED_PEERS` and `GRPC_PEER_KEY`; `health` names this
    /// service's plaintext health port variable and value. Certificate files are re-read every
    /// `TLS_RELOAD_INTERVAL` until `shutdown`.
    pub fn from_settings(
        settings: &portico_config::Settings,
        health: (&'static str, Option<SocketAddr>),
        shutdown: &CancellationToken,
    ) -> Result<Self, ServeError> {
        use secrecy::ExposeSecret as _;
        let transport = &settings.transport;
        let tls = match &transport.grpc_tls {
            Some(portico_config::GrpcTls {
                ca,
                identity: Some(files),
            }) => {
                let identity = portico_tls::Identity {
                    cert: files.cert.clone(),
                    key: files.key.clone(),
                };
                let config = portico_tls::server(&identity, Some(ca), &[b"h2"])?;
                config.spawn_watch(
                    "GRPC_TLS_CERT_FILE",
                    transport.reload_interval,
                    shutdown.clone(),
                );
                Some(config)
            }
            Some(portico_config::GrpcTls { identity: None, .. }) => {
                // A server cannot do TLS without a certificate: refuse rather than serve
                // plaintext beside a CA that promises TLS.
                return Err(ServeError::Tls(portico_tls::TlsError::Config(
                    "GRPC_TLS_CA_FILE is set but GRPC_TLS_CERT_FILE/GRPC_TLS_KEY_FILE are not: \
                     a gRPC server needs its own certificate"
                        .into(),
                )));
            }
            None => None,
        };
        let peers = match (&tls, &transport.peer_key) {
            (Some(_), _) => {
                PeerPolicy::Certificates(std::sync::Arc::new(transport.trusted_peers.clone()))
            }
            (None, Some(key)) => {
                PeerPolicy::SignedBy(portico_tls::PeerKey::new(key.expose_secret().as_bytes()))
            }
            (None, None) => PeerPolicy::Nobody,
        };
        let (key, addr) = health;
        Ok(Self {
            tls,
            peers,
            health_addr: addr.map(|addr| (key, addr)),
        })
    }

    /// Plaintext, trusting nobody, no health port (tests of the plumbing).
    pub fn plaintext() -> Self {
        Self {
            tls: None,
            peers: PeerPolicy::Nobody,
            health_addr: None,
        }
    }
}

/// How often a service's database is pinged for its health status.
pub const DATABASE_PROBE_INTERVAL: Duration = portico_migrations::PROBE_INTERVAL;

/// The `domain` of every `google.rpc.ErrorInfo` Portico's services attach.
pub const ERROR_DOMAIN: &str = "portico.dev";

/// `ErrorInfo.reason` of an UNAVAILABLE dependency (database, Redis).
pub const REASON_DEPENDENCY_UNAVAILABLE: &str = "DEPENDENCY_UNAVAILABLE";

/// `ErrorInfo.reason` of a request whose fields fail validation (with a `BadRequest`).
pub const REASON_INVALID_FIELDS: &str = "INVALID_FIELDS";

/// A retryable status (RESOURCE_EXHAUSTED, UNAVAILABLE) carrying `google.rpc.ErrorInfo`
/// (`reason`, domain [`ERROR_DOMAIN`]) and `google.rpc.RetryInfo` (`retry_after`, at least a
/// second), plus the `retry-after` metadata (whole seconds) the edge and older clients read.
pub fn retryable_status(
    code: tonic::Code,
    message: impl Into<String>,
    reason: &str,
    retry_after: Duration,
) -> tonic::Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let seconds = retry_after.as_secs().max(1);
    let mut details =
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, std::collections::HashMap::new());
    details.set_retry_info(Some(Duration::from_secs(seconds)));
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert("retry-after", tonic::metadata::MetadataValue::from(seconds));
    tonic::Status::with_error_details_and_metadata(code, message, details, metadata)
}

/// INVALID_ARGUMENT listing every bad field in a `google.rpc.BadRequest` (and an `ErrorInfo`
/// with [`REASON_INVALID_FIELDS`]); the message joins the descriptions, so a caller without
/// the details still reads every problem. `violations` are `(field, description)` pairs.
pub fn bad_request(violations: Vec<(String, String)>) -> tonic::Status {
    use tonic_types::{ErrorDetails, FieldViolation, StatusExt};
    let message = violations
        .iter()
        .map(|(_, description)| description.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    let mut details = ErrorDetails::with_bad_request(
        violations
            .into_iter()
            .map(|(field, description)| FieldViolation::new(field, description))
            .collect::<Vec<_>>(),
    );
    details.set_error_info(
        REASON_INVALID_FIELDS,
        ERROR_DOMAIN,
        std::collections::HashMap::new(),
    );
    tonic::Status::with_error_details(tonic::Code::InvalidArgument, message, details)
}

/// UNAVAILABLE for a dependency that is down, with a retry delay (`RetryInfo` and the
/// `retry-after` metadata, in seconds) of one probe interval: the edge turns it into `503` +
/// `Retry-After`, and the call fails fast until the background probe sees the dependency back.
pub fn unavailable(message: impl Into<String>) -> tonic::Status {
    retryable_status(
        tonic::Code::Unavailable,
        message,
        REASON_DEPENDENCY_UNAVAILABLE,
        DATABASE_PROBE_INTERVAL,
    )
}

/// The services every server carries besides its own.
const PLUMBING_SERVICES: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// The health name Kubernetes' liveness probe asks: SERVING as long as the process answers.
pub const LIVENESS: &str = "liveness";

/// The health state of one server: `""` plus each of its full service names.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    names: Vec<&'static str>,
    /// The process part, the `component` of `dependency_up`.
    component: &'static str,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("names", &self.names)
            .finish()
    }
}

impl Health {
    /// Sets `""` and every service name to SERVING or NOT_SERVING.
    pub async fn set_serving(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status("", status).await;
        for name in &self.names {
            self.reporter.set_service_status(*name, status).await;
        }
    }

    /// Sets one extra health name (a component such as Redis) without touching `""` or the
    /// service names.
    pub async fn set_component(&self, name: &str, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status(name, status).await;
    }

    /// [`Health::watch_dependency`] on the service's database: a ping every
    /// [`DATABASE_PROBE_INTERVAL`], which also tells the service's calls when the database
    /// is back after they started failing fast.
    pub fn watch_database(
        &self,
        db: portico_migrations::Db,
        shutdown: CancellationToken,
    ) -> JoinHandle<()> {
        self.watch_dependency("database", DATABASE_PROBE_INTERVAL, shutdown, move || {
            let db = db.clone();
            async move { db.probe(DATABASE_PROBE_INTERVAL).await }
        })
    }

    /// Probes a required dependency (the database) every `interval` and reports NOT_SERVING
    /// for `""` and every service name while it fails or takes longer than `interval`, SERVING
    /// again once it recovers. Stops with `shutdown`.
    pub fn watch_dependency<F, Fut>(
        &self,
        dependency: &'static str,
        interval: Duration,
        shutdown: CancellationToken,
        mut probe: F,
    ) -> JoinHandle<()>
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = bool> + Send,
    {
        let health = self.clone();
        tokio::spawn(async move {
            let mut healthy = true;
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = ticker.tick() => {}
                }
                // A probe that hangs (a half-dead TCP connection) counts as a failure.
                let ok = tokio::time::timeout(interval, probe())
                    .await
                    .unwrap_or(false);
                portico_telemetry::metrics::dependency_up(health.component, dependency, ok);
                if ok == healthy {
                    continue;
                }
                healthy = ok;
                let services = health.names.join(",");
                if ok {
                    tracing::info!(dependency, services, "dependency recovered: SERVING");
                } else {
                    tracing::error!(dependency, services, "dependency unreachable: NOT_SERVING");
                }
                health.set_serving(ok).await;
            }
        })
    }
}

/// Accepted connections after their TLS handshake (each with the certificate current at
/// that moment; handshakes run concurrently, bounded by [`HANDSHAKE_TIMEOUT`]). A client that
/// fails the handshake — no certificate, one the CA did not sign, plaintext — never reaches
/// the server.
fn tls_incoming(
    listener: TcpListener,
    tls: portico_tls::Reloading<portico_tls::rustls::ServerConfig>,
) -> tokio_stream::wrappers::ReceiverStream<
    Result<portico_tls::tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::io::Error>,
> {
    let (accepted, incoming) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            // Ends when the server drops the incoming stream, never before: ending it on the
            // shutdown token would let tonic's accept loop see the stream end before its own
            // signal, skipping NOT_SERVING and the drain.
            let (stream, peer) = tokio::select! {
                () = accepted.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let acceptor = portico_tls::tokio_rustls::TlsAcceptor::from(tls.current());
            let accepted = accepted.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let _ = accepted.send(Ok(stream)).await;
                    }
                    Ok(Err(error)) => {
                        tracing::info!(%peer, %error, "TLS handshake refused");
                    }
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(incoming)
}

/// A running gRPC server.
#[derive(Debug)]
pub struct ServerHandle {
    /// Address the server listens on (useful with port 0).
    pub local_addr: SocketAddr,
    /// Its health state.
    pub health: Health,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl ServerHandle {
    /// Flips health to NOT_SERVING, stops accepting, and waits for in-flight RPCs to finish,
    /// at most `timeout`. Returns false when the drain had to be cut short.
    pub async fn shutdown(self, timeout: Duration) -> bool {
        self.shutdown.cancel();
        self.wait(timeout).await
    }

    /// Waits for the server to stop (after its shutdown token fired), at most `timeout`.
    pub async fn wait(self, timeout: Duration) -> bool {
        let abort = self.task.abort_handle();
        match tokio::time::timeout(timeout, self.task).await {
            Ok(Ok(Ok(()))) => true,
            Ok(Ok(Err(error))) => {
                tracing::error!(%error, "gRPC server failed");
                false
            }
            Ok(Err(_)) => false,
            Err(_) => {
                tracing::warn!(
                    ?timeout,
                    "drain deadline passed; closing remaining connections"
                );
                abort.abort();
                false
            }
        }
    }
}

/// Serves `routes` on `listener` with health, reflection and the request-context layer.
/// `component` names the process part in spans (`auth`, …); `service_names` are the full
/// gRPC names reported by health. Cancelling `shutdown` starts the graceful drain.
pub async fn serve(
    component: &'static str,
    listener: TcpListener,
    routes: Routes,
    service_names: &[&'static str],
    transport: Transport,
    shutdown: CancellationToken,
) -> Result<ServerHandle, ServeError> {
    let local_addr = listener.local_addr()?;
    let reporter = HealthReporter::new();
    // Set once NOT_SERVING is reported at shutdown: open Watch streams then end (see watch.rs).
    let draining = CancellationToken::new();
    let health_service = tonic_health::pb::health_server::HealthServer::new(
        watch::DrainingHealth::new(reporter.clone(), draining.clone()),
    );
    let health = Health {
        reporter,
        names: service_names.to_vec(),
        component,
    };
    health.set_serving(true).await;
    // For liveness probes: SERVING while the process runs, whatever its dependencies do (a
    // database outage must take pods out of rotation, not restart them).
    health
        .reporter
        .set_service_status(LIVENESS, ServingStatus::Serving)
        .await;

    // Advertise only what this server serves: every Portico descriptor is registered (the
    // files import nothing from each other), but `grpcurl list` must not promise the others.
    let reflection = || {
        let builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(portico_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(portico_proto::ENVOY_RLS_FILE_DESCRIPTOR_SET)
            // Both reflection versions describe both reflection services (grpcurl asks v1alpha
            // about v1, and newer clients the other way round).
            .include_reflection_service(false)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection");
        service_names
            .iter()
            .fold(builder, |builder, name| builder.with_service_name(*name))
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let health_port = match transport.health_addr {
        Some((key, addr)) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|error| ServeError::HealthAddr { key, addr, error })?,
        ),
        None => None,
    };
    if let Some(listener) = health_port {
        // Kubelet's `grpc:` probes speak plaintext: health alone, on its own port.
        let addr = listener.local_addr()?;
        let signal = {
            let shutdown = shutdown.clone();
            async move { shutdown.cancelled().await }
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health_service.clone())
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal),
        );
        tracing::info!(component, %addr, "gRPC health (plaintext) listening");
    }
    let routes = routes
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);

    let signal = {
        let health = health.clone();
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            health.set_serving(false).await;
            draining.cancel();
            tracing::info!(
                component,
                "shutting down: NOT_SERVING, draining in-flight RPCs"
            );
        }
    };
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .concurrency_limit_per_connection(CONCURRENCY_PER_CONNECTION)
        .timeout(REQUEST_TIMEOUT)
        .layer(ServerMetricsLayer::new(
            &[
                portico_proto::FILE_DESCRIPTOR_SET,
                portico_proto::ENVOY_RLS_FILE_DESCRIPTOR_SET,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            ],
            &[service_names, &PLUMBING_SERVICES].concat(),
        ))
        .layer(PeerLayer::new(transport.peers.clone()))
        .layer(RequestContextLayer::new(component))
        .add_routes(routes);
    let task = match transport.tls {
        None => {
            // Small RPCs must not wait for Nagle's algorithm.
            let incoming = TcpListenerStream::new(listener).map(|stream| {
                if let Ok(stream) = &stream {
                    let _ = stream.set_nodelay(true);
                }
                stream
            });
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, signal))
        }
        Some(tls) => {
            let incoming = tls_incoming(listener, tls);
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, signal))
        }
    };
    tracing::info!(component, %local_addr, "gRPC server listening");
    Ok(ServerHandle {
        local_addr,
        health,
        shutdown,
        task,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    };

    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };

    use super::*;

    #[tokio::test]
    async fn dependency_outage_flips_health_and_recovery_flips_it_back() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let shutdown = CancellationToken::new();
        let handle = serve(
            "test",
            listener,
            Routes::default(),
            &["test.v1.Service"],
            Transport::plaintext(),
            shutdown.clone(),
        )
        .await
        .expect("serve");
        let database_up = Arc::new(AtomicBool::new(true));
        let probe_state = database_up.clone();
        handle.health.watch_dependency(
            "database",
            Duration::from_millis(20),
            shutdown.clone(),
            move || {
                let up = probe_state.load(Ordering::SeqCst);
                async move { up }
            },
        );

        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", handle.local_addr))
                .expect("url")
                .connect()
                .await
                .expect("connect");
        let mut client = HealthClient::new(channel);
        let mut watch = client
            .watch(HealthCheckRequest {
                service: "test.v1.Service".into(),
            })
            .await
            .expect("watch")
            .into_inner();
        let status = |m: Option<tonic_health::pb::HealthCheckResponse>| m.map(|m| m.status);
        assert_eq!(
            status(watch.message().await.expect("stream")),
            Some(ServingStatus::Serving as i32)
        );

        database_up.store(false, Ordering::SeqCst);
        assert_eq!(
            status(watch.message().await.expect("stream")),
            Some(ServingStatus::NotServing as i32)
        );
        // The gauge follows the probe itself, with no health call in between.
        let gauge = "dependency_up{component=\"test\",dependency=\"database\"} 0";
        assert!(portico_telemetry::metrics::encode_text().contains(gauge));
        let server = client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("check");
        assert_eq!(
            server.get_ref().status,
            ServingStatus::NotServing as i32,
            "the whole server too"
        );

        database_up.store(true, Ordering::SeqCst);
        assert_eq!(
            status(watch.message().await.expect("stream")),
            Some(ServingStatus::Serving as i32)
        );
        let gauge = "dependency_up{component=\"test\",dependency=\"database\"} 1";
        assert!(portico_telemetry::metrics::encode_text().contains(gauge));

        drop(watch);
        drop(client);
        assert!(handle.shutdown(Duration::from_secs(5)).await);
    }

    async fn plain_server(names: &[&'static str]) -> (ServerHandle, tonic::transport::Channel) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let handle = serve(
            "test",
            listener,
            Routes::default(),
            names,
            Transport::plaintext(),
            CancellationToken::new(),
        )
        .await
        .expect("serve");
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", handle.local_addr))
                .expect("url")
                .connect()
                .await
                .expect("connect");
        (handle, channel)
    }

    #[tokio::test]
    async fn shutdown_ends_open_watch_streams_after_not_serving() {
        let (handle, channel) = plain_server(&["test.v1.Service"]).await;
        let mut watch = HealthClient::new(channel)
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("watch")
            .into_inner();
        let first = watch.message().await.expect("stream").map(|m| m.status);
        assert_eq!(first, Some(ServingStatus::Serving as i32));

        // The stream stays open: the drain must not wait for it.
        let drain = tokio::spawn(handle.shutdown(Duration::from_secs(10)));
        let mut last = None;
        while let Some(message) = watch.message().await.expect("the stream ends cleanly") {
            last = Some(message.status);
        }
        assert_eq!(last, Some(ServingStatus::NotServing as i32));
        let drained = tokio::time::timeout(Duration::from_secs(1), drain)
            .await
            .expect("the drain finishes within a second, not at SHUTDOWN_TIMEOUT")
            .expect("join");
        assert!(drained, "a clean drain");
    }

    #[tokio::test]
    async fn every_rpc_is_counted_by_code_and_timed_under_grpc_prometheus_names() {
        let (handle, channel) = plain_server(&["test.v1.Metered"]).await;
        let handled = |code: &str| {
            let wanted = format!(
                "grpc_server_handled_total{{grpc_type=\"unary\",grpc_service=\"grpc.health.v1.Health\",grpc_method=\"Check\",grpc_code=\"{code}\"}} "
            );
            portico_telemetry::metrics::encode_text()
                .lines()
                .find_map(|line| line.strip_prefix(&wanted).map(str::to_owned))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let (ok_before, not_found_before) = (handled("OK"), handled("NotFound"));
        let mut client = HealthClient::new(channel);
        client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("check");
        let unknown = client
            .check(HealthCheckRequest {
                service: "no.such.Service".into(),
            })
            .await
            .expect_err("not registered");
        assert_eq!(unknown.code(), tonic::Code::NotFound);

        // Other tests in this binary call Check too: at least ours were counted.
        assert!(handled("OK") > ok_before);
        assert!(handled("NotFound") > not_found_before);
        let text = portico_telemetry::metrics::encode_text();
        assert!(text.contains("grpc_server_handling_seconds_count{grpc_type=\"unary\",grpc_service=\"grpc.health.v1.Health\",grpc_method=\"Check\"}"));
        assert!(text.contains("grpc_server_started_total{grpc_type=\"server_stream\",grpc_service=\"grpc.health.v1.Health\",grpc_method=\"Watch\"}"));
        drop(client);
        assert!(handle.shutdown(Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn reflection_describes_envoys_rate_limit_service_and_its_messages() {
        use tonic_reflection::pb::v1::{
            server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
            ServerReflectionRequest,
        };
        let (handle, channel) = plain_server(&[portico_proto::names::ENVOY_RLS]).await;
        let mut client = ServerReflectionClient::new(channel);
        for symbol in [
            "envoy.service.ratelimit.v3.RateLimitService",
            "envoy.service.ratelimit.v3.RateLimitRequest",
            "envoy.extensions.common.ratelimit.v3.RateLimitDescriptor",
        ] {
            let request = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::FileContainingSymbol(symbol.into())),
            };
            let mut answers = client
                .server_reflection_info(tokio_stream::once(request))
                .await
                .expect("reflection")
                .into_inner();
            let answer = answers
                .message()
                .await
                .expect("stream")
                .expect("one answer");
            match answer.message_response {
                Some(MessageResponse::FileDescriptorResponse(files)) => {
                    assert!(!files.file_descriptor_proto.is_empty(), "{symbol}");
                }
                other => panic!("{symbol}: {other:?}"),
            }
        }
        drop(client);
        assert!(handle.shutdown(Duration::from_secs(5)).await);
    }
}
