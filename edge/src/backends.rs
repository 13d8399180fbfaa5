//! The gRPC channels from the edge to the four services, and the metadata every call carries
//! (DESIGN §3): correlation ID, W3C trace context, client IP, caller's bearer token, deadline.

use std::{net::IpAddr, time::Duration};

use portico_config::EdgeSettings;
use portico_telemetry::{metrics, RequestContext};
use tonic::{
    metadata::{MetadataMap, MetadataValue},
    transport::{Channel, Endpoint},
};

/// How long a backend connection attempt may take before the call fails as UNAVAILABLE.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// One backend service.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Short name used in checks and metrics (`auth`, `content`, `chat`, `ratelimit`).
    pub name: &'static str,
    /// Full gRPC service name checked by health probes.
    pub service: &'static str,
    /// Whether readiness is `unhealthy` (rather than `degraded`) when it is down.
    pub critical: bool,
    /// The lazily connected channel.
    pub channel: Channel,
}

/// The four services.
#[derive(Debug, Clone)]
pub struct Backends {
    /// AuthService.
    pub auth: Backend,
    /// ContentService.
    pub content: Backend,
    /// ChatService.
    pub chat: Backend,
    /// RateLimitService.
    pub ratelimit: Backend,
}

impl Backends {
    /// Lazily connected channels to the configured URLs: the edge starts even when a service
    /// is not up yet, and readiness says so.
    pub fn new(settings: &EdgeSettings) -> Result<Self, tonic::transport::Error> {
        use portico_proto::names;
        Ok(Self {
            auth: Backend::new("auth", names::AUTH, true, &settings.auth_url)?,
            content: Backend::new("content", names::CONTENT, true, &settings.content_url)?,
            chat: Backend::new("chat", names::CHAT, false, &settings.chat_url)?,
            ratelimit: Backend::new(
                "ratelimit",
                names::RATELIMIT,
                false,
                &settings.ratelimit_url,
            )?,
        })
    }

    /// All four, in readiness order.
    pub fn all(&self) -> [&Backend; 4] {
        [&self.auth, &self.content, &self.chat, &self.ratelimit]
    }
}

impl Backend {
    fn new(
        name: &'static str,
        service: &'static str,
        critical: bool,
        url: &str,
    ) -> Result<Self, tonic::transport::Error> {
        let channel = Endpoint::from_shared(url.to_owned())?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true)
            .connect_lazy();
        Ok(Self {
            name,
            service,
            critical,
            channel,
        })
    }
}

/// Wraps `message` in a request carrying the request's metadata and a deadline.
pub fn request<T>(
    message: T,
    context: &RequestContext,
    client_ip: Option<IpAddr>,
    authorization: Option<&http::HeaderValue>,
    timeout: Duration,
) -> tonic::Request<T> {
    let mut headers = http::HeaderMap::new();
    context.inject(&mut headers);
    let mut request = tonic::Request::new(message);
    *request.metadata_mut() = MetadataMap::from_headers(headers);
    if let Some(ip) = client_ip {
        if let Ok(value) = MetadataValue::try_from(ip.to_string()) {
            request.metadata_mut().insert("x-forwarded-for", value);
        }
    }
    if let Some(value) = authorization.and_then(|v| v.to_str().ok()) {
        if let Ok(value) = MetadataValue::try_from(value) {
            request.metadata_mut().insert("authorization", value);
        }
    }
    request.set_timeout(timeout);
    request
}

/// Counts a finished backend call in `grpc_client_requests_total`.
pub fn record(service: &str, method: &str, code: tonic::Code) {
    metrics::http()
        .grpc_client
        .get_or_create(&metrics::GrpcClientLabels {
            service: service.to_owned(),
            method: method.to_owned(),
            code: crate::error::code_name(code).to_owned(),
        })
        .inc();
}
