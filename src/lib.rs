//! The `portico` suite launcher: boots the four gRPC services and the REST edge in one process
//! on given or ephemeral ports, wires the edge to them over real gRPC (loopback), and shuts
//! everything down gracefully.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use anyhow::Context as _;
use portico_config::Settings;
use portico_edge::EdgeHandle;
use portico_grpc::ServerHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A component of the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// The auth service.
    Auth,
    /// The content service.
    Content,
    /// The chat gateway.
    Chat,
    /// The ratelimit service.
    RateLimit,
}

impl Component {
    /// Every service, in start order.
    pub const ALL: [Component; 4] = [
        Component::Auth,
        Component::Content,
        Component::Chat,
        Component::RateLimit,
    ];

    /// The name used in logs and subcommands.
    pub fn name(self) -> &'static str {
        match self {
            Component::Auth => "auth",
            Component::Content => "content",
            Component::Chat => "chat-gateway",
            Component::RateLimit => "ratelimit",
        }
    }

    fn addr_variable(self) -> &'static str {
        match self {
            Component::Auth => "AUTH_ADDR",
            Component::Content => "CONTENT_ADDR",
            Component::Chat => "CHAT_ADDR",
            Component::RateLimit => "RATELIMIT_ADDR",
        }
    }

    fn addr(self, settings: &Settings) -> SocketAddr {
        match self {
            Component::Auth => settings.addrs.auth,
            Component::Content => settings.addrs.content,
            Component::Chat => settings.addrs.chat,
            Component::RateLimit => settings.addrs.ratelimit,
        }
    }
}

/// Binds `addr`, naming `variable` when it fails (port taken, no permission).
pub async fn bind(variable: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("{variable}={addr}: cannot listen"))
}

/// Starts one service on `listener`.
pub async fn start_service(
    component: Component,
    settings: &Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<ServerHandle> {
    start_service_with(
        component,
        settings,
        listener,
        shutdown,
        portico_auth::Options::default(),
    )
    .await
}

/// [`start_service`] with the auth service's injected parts (its mailer, its clock).
pub async fn start_service_with(
    component: Component,
    settings: &Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
    auth: portico_auth::Options,
) -> anyhow::Result<ServerHandle> {
    let name = component.name();
    let handle = match component {
        Component::Auth => portico_auth::serve_with(settings, listener, shutdown, auth).await?,
        Component::Content => portico_content::serve(settings, listener, shutdown).await?,
        Component::Chat => portico_chat_gateway::serve(settings, listener, shutdown).await?,
        Component::RateLimit => portico_ratelimit::serve(settings, listener, shutdown).await?,
    };
    tracing::info!(service = name, addr = %handle.local_addr, "service started");
    Ok(handle)
}

/// The whole suite running in this process.
#[derive(Debug)]
pub struct Suite {
    /// Where the edge listens (HTTPS when `EDGE_TLS_CERT_FILE` is set).
    pub edge_addr: SocketAddr,
    /// The edge's extra plaintext listener (`EDGE_PLAINTEXT_ADDR` beside HTTPS).
    pub edge_plaintext_addr: Option<SocketAddr>,
    services: Vec<(Component, CancellationToken, ServerHandle)>,
    edge: EdgeHandle,
    shutdown: CancellationToken,
    shutdown_timeout: Duration,
}

impl Suite {
    /// Binds every listener (port 0 allowed), starts the four services, then the edge pointed
    /// at the addresses they actually bound.
    pub async fn start(settings: Settings) -> anyhow::Result<Self> {
        Self::start_with(settings, portico_auth::Options::default()).await
    }

    /// [`Suite::start`] with the auth service's injected parts (a test's capturing mailer).
    pub async fn start_with(
        mut settings: Settings,
        auth: portico_auth::Options,
    ) -> anyhow::Result<Self> {
        let shutdown = CancellationToken::new();
        let tls = settings
            .transport
            .grpc_tls
            .as_ref()
            .is_some_and(|tls| tls.identity.is_some());
        if !tls && settings.transport.peer_key.is_none() {
            // Plaintext loopback hops: the edge proves itself with a key that never leaves
            // this process, so another local program cannot pose as the edge.
            settings.transport.peer_key = Some(portico_config::SecretString::from(format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            )));
        }
        let scheme = if tls { "https" } else { "http" };
        let mut listeners = Vec::new();
        for component in Component::ALL {
            let listener = bind(component.addr_variable(), component.addr(&settings)).await?;
            let url = format!("{scheme}://{}", dialable(listener.local_addr()?));
            match component {
                Component::Auth => settings.edge.auth_url = url,
                Component::Content => settings.edge.content_url = url,
                Component::Chat => settings.edge.chat_url = url,
                Component::RateLimit => settings.edge.ratelimit_url = url,
            }
            listeners.push((component, listener));
        }
        let edge_listener = bind("EDGE_ADDR", settings.addrs.edge).await?;

        let starts = listeners.into_iter().map(|(component, listener)| {
            let token = shutdown.child_token();
            let settings = &settings;
            let auth = auth.clone();
            async move {
                let handle =
                    start_service_with(component, settings, listener, token.clone(), auth).await?;
                anyhow::Ok((component, token, handle))
            }
        });
        let services = futures_util::future::try_join_all(starts).await?;
        let edge = portico_edge::serve(&settings, edge_listener, shutdown.child_token()).await?;
        Ok(Self {
            edge_addr: edge.local_addr,
            edge_plaintext_addr: edge.plaintext_addr,
            services,
            edge,
            shutdown,
            shutdown_timeout: settings.shutdown_timeout,
        })
    }

    /// The address a service listens on.
    pub fn service_addr(&self, component: Component) -> Option<SocketAddr> {
        self.services
            .iter()
            .find(|(c, _, _)| *c == component)
            .map(|(_, _, handle)| handle.local_addr)
    }

    /// Stops one service (gracefully), leaving the rest running: how tests take a backend down.
    pub async fn stop_service(&mut self, component: Component) -> bool {
        let Some(index) = self.services.iter().position(|(c, _, _)| *c == component) else {
            return false;
        };
        let (_, token, handle) = self.services.remove(index);
        token.cancel();
        handle.wait(self.shutdown_timeout).await
    }

    /// The token whose cancellation starts the suite's graceful shutdown.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Graceful shutdown: services flip to NOT_SERVING, the edge stops accepting, in-flight
    /// requests finish; all of it within `SHUTDOWN_TIMEOUT`. Returns false when the deadline cut
    /// the drain short.
    pub async fn shutdown(self) -> bool {
        self.shutdown.cancel();
        self.wait().await
    }

    /// Waits for the suite to stop after its shutdown token fired.
    pub async fn wait(self) -> bool {
        let deadline = tokio::time::Instant::now() + self.shutdown_timeout;
        let edge_ok = self.edge.wait(self.shutdown_timeout).await;
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let drains = self
            .services
            .into_iter()
            .map(|(_, _, handle)| handle.wait(remaining.max(Duration::from_millis(100))));
        let services_ok = futures_util::future::join_all(drains)
            .await
            .into_iter()
            .all(|ok| ok);
        edge_ok && services_ok
    }
}

/// An address a client can dial: a wildcard listen address is reached over loopback.
pub fn dialable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}
