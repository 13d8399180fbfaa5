//! Channels to Portico's gRPC services, the one way every component dials another. A host
//! name (a Kubernetes headless Service) is re-resolved every [`RESOLVE_INTERVAL`] and calls
//! are balanced across every address, one HTTP/2 connection each. `https://` means TLS with
//! the CA of `GRPC_TLS_CA_FILE` and this process's certificate: when the files change, every
//! endpoint is rebuilt with the new material (open connections finish on the old one).

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use portico_tls::{ClientMaterial, Reloading};
use tonic::transport::{
    channel::Change, Certificate, Channel, ClientTlsConfig, Endpoint, Identity,
};

/// How often a backend's host name is re-resolved (pods come and go).
pub const RESOLVE_INTERVAL: Duration = Duration::from_secs(5);
/// How often a TLS channel looks for new certificate material.
const TLS_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long a connection attempt may take before the call fails as UNAVAILABLE.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// TLS material for `https://` channels (`None`: plaintext only).
pub type ClientTls = Option<Reloading<ClientMaterial>>;

/// The client TLS material from `GRPC_TLS_*`, re-read every `TLS_RELOAD_INTERVAL`.
pub fn client_tls(
    settings: &portico_config::Settings,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<ClientTls, portico_tls::TlsError> {
    let transport = &settings.transport;
    let Some(tls) = &transport.grpc_tls else {
        return Ok(None);
    };
    let identity = tls.identity.as_ref().map(|files| portico_tls::Identity {
        cert: files.cert.clone(),
        key: files.key.clone(),
    });
    let material = portico_tls::client(&tls.ca, identity.as_ref())?;
    material.spawn_watch(
        "GRPC_TLS_CA_FILE",
        transport.reload_interval,
        shutdown.clone(),
    );
    Ok(Some(material))
}

/// Why a channel could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The URL is not one.
    #[error("{0}")]
    Url(#[from] tonic::transport::Error),
    /// `https://` without `GRPC_TLS_CA_FILE`.
    #[error("https:// needs GRPC_TLS_CA_FILE")]
    NoTls,
}

fn tls_config(material: &ClientMaterial, domain: &str) -> ClientTlsConfig {
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&material.ca_pem))
        .domain_name(domain);
    match &material.identity_pem {
        Some((cert, key)) => config.identity(Identity::from_pem(cert, key)),
        None => config,
    }
}

fn endpoint(
    url: String,
    tls: Option<(&ClientMaterial, &str)>,
) -> Result<Endpoint, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(url)?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    match tls {
        Some((material, domain)) => endpoint.tls_config(tls_config(material, domain)),
        None => Ok(endpoint),
    }
}

/// A lazily connected channel to `url` (the process starts while the service is down). An IP
/// address over plaintext gets one plain connection; a host name, or any `https://` URL (so a
/// certificate rotation reaches its endpoints), a balanced channel.
pub fn channel(url: &str, tls: &ClientTls) -> Result<Channel, ChannelError> {
    let https = url.starts_with("https://");
    if https && tls.is_none() {
        return Err(ChannelError::NoTls);
    }
    let single = endpoint(url.to_owned(), None)?;
    let uri = single.uri().clone();
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_matches(['[', ']'])
        .to_owned();
    let literal = host.parse::<IpAddr>().ok();
    if tokio::runtime::Handle::try_current().is_err() || (literal.is_some() && !https) {
        return Ok(single.connect_lazy());
    }
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let scheme = uri.scheme_str().unwrap_or("http").to_owned();
    let tls = if https { tls.clone() } else { None };
    let name = host.clone();
    Ok(balanced(scheme, host, port, tls, move || {
        let name = name.clone();
        async move {
            match literal {
                Some(ip) => Ok(vec![SocketAddr::new(ip, port)]),
                None => tokio::net::lookup_host((name.as_str(), port))
                    .await
                    .map(Iterator::collect),
            }
        }
    }))
}

/// One member of a balanced backend.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Target {
    /// A resolved address.
    Addr(SocketAddr),
    /// The unresolved name, while nothing resolves.
    Name,
}

/// A channel balanced across what `resolve` returns, re-resolved every [`RESOLVE_INTERVAL`];
/// with TLS, endpoints verify the server as `host`, and are rebuilt when the material changes.
fn balanced<R, F>(scheme: String, host: String, port: u16, tls: ClientTls, resolve: R) -> Channel
where
    R: Fn() -> F + Send + 'static,
    F: std::future::Future<Output = std::io::Result<Vec<SocketAddr>>> + Send,
{
    let (channel, changes) = Channel::balance_channel::<Target>(64);
    tokio::spawn(async move {
        let mut current: HashSet<Target> = HashSet::new();
        let mut generation = tls.as_ref().map(Reloading::generation);
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
            let now = tls.as_ref().map(Reloading::generation);
            if now != generation {
                // New certificates: every endpoint again, with the new material (an insert
                // under a known key replaces the old endpoint).
                generation = now;
                current.clear();
            }
            let material = tls.as_ref().map(Reloading::current);
            for new in wanted.difference(&current) {
                let url = match new {
                    Target::Addr(addr) => format!("{scheme}://{addr}"),
                    Target::Name => format!("{scheme}://{host}:{port}"),
                };
                let tls = material.as_deref().map(|m| (m, host.as_str()));
                let endpoint = match endpoint(url, tls) {
                    Ok(endpoint) => endpoint,
                    Err(error) => {
                        tracing::error!(%host, %error, "backend endpoint unusable");
                        continue;
                    }
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
            // With TLS, look for new certificates every second (resolving as often is cheap).
            let pause = if tls.is_some() {
                TLS_CHECK_INTERVAL
            } else {
                RESOLVE_INTERVAL
            };
            tokio::time::sleep(pause).await;
        }
    });
    channel
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
        let channel = balanced("http".into(), "pods".into(), 0, None, move || async move {
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
        let channel = balanced("http".into(), "nowhere.invalid".into(), 1, None, || async {
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

    #[test]
    fn https_without_tls_material_is_refused() {
        assert!(matches!(
            channel("https://auth:50051", &None),
            Err(ChannelError::NoTls)
        ));
    }
}
