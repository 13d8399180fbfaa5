//! The gRPC channels from the edge to the four services, and the metadata every call carries
//! (DESIGN §3): correlation ID, W3C trace context, client IP, caller's bearer token, deadline.

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use portico_config::EdgeSettings;
use portico_telemetry::{metrics, RequestContext};
use tonic::{
    metadata::MetadataMap,
    transport::{channel::Change, Channel, Endpoint},
};

/// How often a backend's host name is re-resolved (pods come and go).
const RESOLVE_INTERVAL: Duration = Duration::from_secs(5);
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
    /// A health name whose NOT_SERVING makes this backend `degraded` (its optional dependency).
    pub component: Option<&'static str>,
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
            auth: Backend::new("auth", names::AUTH, true, None, &settings.auth_url)?,
            content: Backend::new("content", names::CONTENT, true, None, &settings.content_url)?,
            chat: Backend::new("chat", names::CHAT, false, None, &settings.chat_url)?,
            ratelimit: Backend::new(
                "ratelimit",
                names::RATELIMIT,
                false,
                Some(names::RATELIMIT_REDIS),
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
        component: Option<&'static str>,
        url: &str,
    ) -> Result<Self, tonic::transport::Error> {
        Ok(Self {
            name,
            service,
            critical,
            component,
            channel: channel(url)?,
        })
    }
}

fn endpoint(url: String) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url)?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true))
}

/// A lazily connected channel to `url`. A host name (a Kubernetes headless Service) is
/// re-resolved every [`RESOLVE_INTERVAL`] and calls are balanced across every address it
/// returns, one HTTP/2 connection each: a single connection to a ClusterIP would pin every call
/// of this edge to one pod. An IP address gets one plain connection.
fn channel(url: &str) -> Result<Channel, tonic::transport::Error> {
    let single = endpoint(url.to_owned())?;
    let uri = single.uri().clone();
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_matches(['[', ']'])
        .to_owned();
    if host.parse::<IpAddr>().is_ok() || tokio::runtime::Handle::try_current().is_err() {
        return Ok(single.connect_lazy());
    }
    let port = uri.port_u16().unwrap_or(80);
    let scheme = uri.scheme_str().unwrap_or("http").to_owned();
    let name = host.clone();
    Ok(balanced(scheme, host, port, move || {
        let name = name.clone();
        async move {
            tokio::net::lookup_host((name.as_str(), port))
                .await
                .map(Iterator::collect)
        }
    }))
}

/// A channel balanced across what `resolve` returns, re-resolved every [`RESOLVE_INTERVAL`].
fn balanced<R, F>(scheme: String, host: String, port: u16, resolve: R) -> Channel
where
    R: Fn() -> F + Send + 'static,
    F: std::future::Future<Output = std::io::Result<Vec<SocketAddr>>> + Send,
{
    let (channel, changes) = Channel::balance_channel::<Target>(64);
    tokio::spawn(async move {
        let mut current: HashSet<Target> = HashSet::new();
        loop {
            let resolved: HashSet<Target> = match resolve().await {
                Ok(addrs) => addrs.into_iter().map(Target::Addr).collect(),
                Err(error) => {
                    tracing::debug!(%host, %error, "backend name does not resolve");
                    HashSet::new()
                }
            };
            // Nothing resolves (no ready pod): keep the name itself, so calls fail fast with
            // UNAVAILABLE instead of waiting for an address until their deadline.
            let wanted = if resolved.is_empty() {
                HashSet::from([Target::Name])
            } else {
                resolved
            };
            for gone in current.difference(&wanted) {
                if changes.send(Change::Remove(gone.clone())).await.is_err() {
                    return;
                }
            }
            for new in wanted.difference(&current) {
                let url = match new {
                    Target::Addr(addr) => format!("{scheme}://{addr}"),
                    Target::Name => format!("{scheme}://{host}:{port}"),
                };
                let Ok(endpoint) = endpoint(url) else {
                    continue;
                };
                if changes
                    .send(Change::Insert(new.clone(), endpoint))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            current = wanted;
            tokio::time::sleep(RESOLVE_INTERVAL).await;
        }
    });
    channel
}

/// One member of a balanced backend.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Target {
    /// A resolved address.
    Addr(SocketAddr),
    /// The unresolved name, while nothing resolves.
    Name,
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
}

impl Forwarded {
    /// From an HTTP request's headers.
    pub fn from_headers(client_ip: IpAddr, headers: &http::HeaderMap) -> Self {
        Self {
            client_ip: Some(client_ip),
            authorization: headers.get(http::header::AUTHORIZATION).cloned(),
            admin_key: headers.get("x-admin-key").cloned(),
        }
    }

    /// Only the client IP.
    pub fn client(client_ip: IpAddr) -> Self {
        Self {
            client_ip: Some(client_ip),
            authorization: None,
            admin_key: None,
        }
    }

    /// Nothing: the edge calling on its own behalf (health checks).
    pub fn none() -> Self {
        Self {
            client_ip: None,
            authorization: None,
            admin_key: None,
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
    if let Some(ip) = forwarded.client_ip {
        if let Ok(value) = http::HeaderValue::from_str(&ip.to_string()) {
            headers.insert("x-forwarded-for", value);
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

#[cfg(test)]
mod tests {
    use tonic_health::{
        pb::{health_client::HealthClient, HealthCheckRequest},
        ServingStatus,
    };

    use super::*;

    /// A health server on `ip` answering `status` for the name "who".
    async fn server(ip: &str, status: ServingStatus) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter.set_service_status("who", status).await;
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    }

    #[tokio::test]
    async fn calls_spread_across_every_resolved_address() {
        let a = server("127.0.0.1", ServingStatus::Serving).await;
        let b = server("127.0.0.1", ServingStatus::NotServing).await;
        let channel = balanced("http".into(), "pods".into(), 0, move || async move {
            Ok(vec![a, b])
        });
        let mut client = HealthClient::new(channel);
        let mut seen = HashSet::new();
        for _ in 0..64 {
            let answer = client
                .check(HealthCheckRequest {
                    service: "who".into(),
                })
                .await
                .expect("a pod answers");
            seen.insert(answer.into_inner().status);
            if seen.len() == 2 {
                break;
            }
        }
        assert_eq!(seen.len(), 2, "both pods served calls");
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_nothing_fails_fast_as_unavailable() {
        let channel = balanced("http".into(), "nowhere.invalid".into(), 1, || async {
            Ok(Vec::new())
        });
        let mut request = tonic::Request::new(HealthCheckRequest::default());
        request.set_timeout(Duration::from_secs(30));
        let status = HealthClient::new(channel)
            .check(request)
            .await
            .expect_err("nothing to call");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
    }
}
