//! The gRPC channels from the edge to the four services, and the metadata every call carries
//! (docs/CONTRACT.md §3): correlation ID, W3C trace context, client IP, caller's bearer token, deadline.

use std::{net::IpAddr, time::Duration};

use portico_config::EdgeSettings;
use portico_grpc::client::{channel, ChannelError, ClientTls};
use portico_telemetry::{metrics, RequestContext};
use portico_tls::PeerKey;
use tonic::{metadata::MetadataMap, transport::Channel};

/// One backend service.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Short name used in checks and metrics (`auth`, `content`, `chat`, `ratelimit`).
    pub name: &'static str,
    /// Full gRPC service name checked by health probes.
    pub service: &'static str,
    /// Whether readiness is `unhealthy` (rather than `degraded`) when it is down.
    pub critical: bool,
    /// A health name whose NOT_SERVING makes this backend `degraded` (its optional dependency).
    pub component: Option<&'static str>,
    /// The lazily connected channel, timing every call in `grpc_client_handling_seconds`.
    pub channel: TimedChannel,
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
    pub fn new(settings: &EdgeSettings, tls: &ClientTls) -> Result<Self, ChannelError> {
        use portico_proto::names;
        Ok(Self {
            auth: Backend::new("auth", names::AUTH, true, None, &settings.auth_url, tls)?,
            content: Backend::new(
                "content",
                names::CONTENT,
                true,
                None,
                &settings.content_url,
                tls,
            )?,
            chat: Backend::new("chat", names::CHAT, false, None, &settings.chat_url, tls)?,
            ratelimit: Backend::new(
                "ratelimit",
                names::RATELIMIT,
                false,
                Some(names::RATELIMIT_REDIS),
                &settings.ratelimit_url,
                tls,
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
        component: Option<&'static str>,
        url: &str,
        tls: &ClientTls,
    ) -> Result<Self, ChannelError> {
        Ok(Self {
            name,
            service,
            critical,
            component,
            channel: TimedChannel(channel(url, tls)?),
        })
    }
}

/// What the edge forwards about the HTTP caller on every call.
#[derive(Debug, Clone)]
pub struct Forwarded {
    /// The client IP as the edge decided it (`x-forwarded-for`); none for the edge's own calls.
    pub client_ip: Option<IpAddr>,
    /// The caller's `Authorization` header.
    pub authorization: Option<http::HeaderValue>,
    /// The caller's `X-Admin-Key` header (checked by the service itself).
    pub admin_key: Option<http::HeaderValue>,
    /// On plaintext hops, the key that proves to the service that the edge is calling.
    pub signer: Option<PeerKey>,
}

impl Forwarded {
    /// From an HTTP request's headers.
    pub fn from_headers(
        client_ip: IpAddr,
        headers: &http::HeaderMap,
        signer: Option<PeerKey>,
    ) -> Self {
        Self {
            client_ip: Some(client_ip),
            authorization: headers.get(http::header::AUTHORIZATION).cloned(),
            admin_key: headers.get("x-admin-key").cloned(),
            signer,
        }
    }

    /// Only the client IP.
    pub fn client(client_ip: IpAddr, signer: Option<PeerKey>) -> Self {
        Self {
            client_ip: Some(client_ip),
            authorization: None,
            admin_key: None,
            signer,
        }
    }

    /// Nothing: the edge calling on its own behalf (health checks).
    pub fn none() -> Self {
        Self {
            client_ip: None,
            authorization: None,
            admin_key: None,
            signer: None,
        }
    }
}

/// Wraps `message` in a request carrying the request's metadata and a deadline.
pub fn request<T>(
    message: T,
    context: &RequestContext,
    forwarded: &Forwarded,
    timeout: Duration,
) -> tonic::Request<T> {
    let mut headers = http::HeaderMap::new();
    context.inject(&mut headers);
    let client_ip = forwarded.client_ip.map(|ip| ip.to_string());
    if let Some(ip) = &client_ip {
        if let Ok(value) = http::HeaderValue::from_str(ip) {
            headers.insert("x-forwarded-for", value);
        }
    }
    if let Some(signer) = &forwarded.signer {
        let credential = signer.sign_now(client_ip.as_deref().unwrap_or_default());
        if let Ok(value) = http::HeaderValue::from_str(&credential) {
            headers.insert(portico_tls::PEER_HEADER, value);
        }
    }
    if let Some(value) = &forwarded.authorization {
        headers.insert(http::header::AUTHORIZATION, value.clone());
    }
    if let Some(value) = &forwarded.admin_key {
        headers.insert("x-admin-key", value.clone());
    }
    let mut request = tonic::Request::new(message);
    *request.metadata_mut() = MetadataMap::from_headers(headers);
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

/// A channel whose calls are timed, per gRPC method, from the request until the last byte of the
/// answer (trailers included) in `grpc_client_handling_seconds`. Generated clients take it as
/// they take a [`Channel`].
#[derive(Debug, Clone)]
pub struct TimedChannel(Channel);

impl From<Channel> for TimedChannel {
    fn from(channel: Channel) -> Self {
        Self(channel)
    }
}

impl TimedChannel {
    /// The plain channel (for clients that time their own calls or need the concrete type).
    pub fn inner(&self) -> Channel {
        self.0.clone()
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for TimedChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        tower::Service::poll_ready(&mut self.0, cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let started = std::time::Instant::now();
        let (service, method) = request
            .uri()
            .path()
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or(("unknown", "unknown"));
        let labels = metrics::GrpcMethodLabels {
            grpc_service: service.to_owned(),
            grpc_method: method.to_owned(),
        };
        let call = tower::Service::call(&mut self.0, request);
        Box::pin(async move {
            let histogram = metrics::http()
                .grpc_client_duration
                .get_or_create(&labels)
                .clone();
            match call.await {
                Ok(response) => Ok(response.map(|body| {
                    tonic::body::Body::new(TimedBody {
                        inner: body,
                        started,
                        histogram: Some(histogram),
                    })
                })),
                Err(error) => {
                    histogram.observe(started.elapsed().as_secs_f64());
                    Err(error)
                }
            }
        })
    }
}

/// Observes its histogram at the end of the body or when it is dropped, whichever comes first.
struct TimedBody {
    inner: tonic::body::Body,
    started: std::time::Instant,
    histogram: Option<prometheus_client::metrics::histogram::Histogram>,
}

impl TimedBody {
    fn observe(&mut self) {
        if let Some(histogram) = self.histogram.take() {
            histogram.observe(self.started.elapsed().as_secs_f64());
        }
    }
}

impl http_body::Body for TimedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(None | Some(Err(_))) = &polled {
            self.observe();
        } else if let std::task::Poll::Ready(Some(Ok(frame))) = &polled {
            if frame.is_trailers() {
                self.observe();
            }
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

impl Drop for TimedBody {
    fn drop(&mut self) {
        self.observe();
    }
}
