//! Who is calling: a service believes what a caller says about someone else — the client IP in
//! `x-forwarded-for` — only from a trusted peer. Under mTLS a peer is trusted when its
//! certificate names one of `GRPC_TRUSTED_PEERS`; on plaintext hops, when it brings the edge's
//! signed credential ([`portico_tls::PeerKey`]). Everyone else is their own socket peer: the
//! layer strips what they forwarded before any handler sees it, and records a [`Peer`] that
//! handlers of privileged RPCs check.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use portico_tls::{names_match, PeerKey, PEER_HEADER};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

/// What the service knows of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// A trusted peer (the edge, or Envoy): it may forward a client IP and call privileged
    /// RPCs on a client's behalf.
    pub trusted: bool,
}

impl Peer {
    /// The caller of `request` (untrusted when the layer did not run).
    pub fn of<T>(request: &tonic::Request<T>) -> Self {
        request
            .extensions()
            .get::<Peer>()
            .copied()
            .unwrap_or(Peer { trusted: false })
    }
}

/// How a server decides trust.
#[derive(Debug, Clone)]
pub enum PeerPolicy {
    /// mTLS: the peer certificate must name one of these.
    Certificates(Arc<Vec<String>>),
    /// Plaintext hops: the edge's signed credential.
    SignedBy(PeerKey),
    /// Nobody is trusted.
    Nobody,
}

impl PeerPolicy {
    fn trusts<B>(&self, request: &http::Request<B>) -> bool {
        match self {
            PeerPolicy::Certificates(names) => request
                .extensions()
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(TlsConnectInfo::peer_certs)
                .is_some_and(|certs| certs.first().is_some_and(|leaf| names_match(leaf, names))),
            PeerPolicy::SignedBy(key) => {
                let header = |name: &str| {
                    request
                        .headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                };
                key.verify_now(header(PEER_HEADER), header("x-forwarded-for"))
            }
            PeerPolicy::Nobody => false,
        }
    }
}

/// Adds [`PeerService`] around a gRPC server.
#[derive(Debug, Clone)]
pub struct PeerLayer {
    policy: PeerPolicy,
}

impl PeerLayer {
    /// A layer deciding trust by `policy`.
    pub fn new(policy: PeerPolicy) -> Self {
        Self { policy }
    }
}

impl<S> Layer<S> for PeerLayer {
    type Service = PeerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PeerService {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// See [`PeerLayer`].
#[derive(Debug, Clone)]
pub struct PeerService<S> {
    inner: S,
    policy: PeerPolicy,
}

impl<S, B> Service<http::Request<B>> for PeerService<S>
where
    S: Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let trusted = self.policy.trusts(&request);
        let headers = request.headers_mut();
        headers.remove(PEER_HEADER);
        if !trusted {
            // Not the edge: what it says about other clients is not evidence.
            headers.remove("x-forwarded-for");
        }
        request.extensions_mut().insert(Peer { trusted });
        Box::pin(self.inner.call(request))
    }
}
