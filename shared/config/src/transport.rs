//! Transport security settings: HTTPS at the edge, mTLS between components, which peers are
//! trusted to speak for a client, and TLS to the stores. A scheme that promises TLS never
//! runs in plaintext: every inconsistency is a start-up error naming the variable.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use secrecy::{ExposeSecret as _, SecretString};

use crate::{Reader, Unit};

/// Default `GRPC_TRUSTED_PEERS`.
pub const DEFAULT_TRUSTED_PEERS: &str = "portico-edge";
/// Default `TLS_RELOAD_INTERVAL`.
pub const DEFAULT_TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(10);
/// Shortest `GRPC_PEER_KEY`.
pub const MIN_PEER_KEY_LENGTH: usize = 32;

/// A certificate and its key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

/// mTLS between components (`GRPC_TLS_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcTls {
    /// `GRPC_TLS_CA_FILE`: the CA that signs every peer's certificate.
    pub ca: PathBuf,
    /// `GRPC_TLS_CERT_FILE` / `GRPC_TLS_KEY_FILE`: this process's certificate, as server and
    /// as client. Unset: a client-only process (it cannot serve gRPC over TLS).
    pub identity: Option<CertFiles>,
}

/// Transport security.
#[derive(Debug, Clone)]
pub struct Transport {
    /// `EDGE_TLS_CERT_FILE` / `EDGE_TLS_KEY_FILE`: HTTPS on `EDGE_ADDR`.
    pub edge_tls: Option<CertFiles>,
    /// `EDGE_TLS=off`: plaintext on purpose (behind a TLS-terminating load balancer), which
    /// `APP_ENV=production` otherwise refuses.
    pub edge_tls_off: bool,
    /// `EDGE_PLAINTEXT_ADDR`: an extra plaintext listener beside HTTPS, for local use.
    pub edge_plaintext_addr: Option<SocketAddr>,
    /// `GRPC_TLS_*`.
    pub grpc_tls: Option<GrpcTls>,
    /// `GRPC_TRUSTED_PEERS`: certificate names (DNS SANs) of the peers a service believes when
    /// they forward a client's IP or act on a client's behalf.
    pub trusted_peers: Vec<String>,
    /// `GRPC_PEER_KEY`: without TLS, the key of the edge's signed peer credential. Unset
    /// outside `portico serve` (which makes one per process): no caller is trusted.
    pub peer_key: Option<SecretString>,
    /// `RATELIMIT_ALLOW_UNTRUSTED`: untrusted callers may spend and reset buckets.
    pub ratelimit_allow_untrusted: bool,
    /// `CHAT_ALLOW_UNTRUSTED`: untrusted callers may call the chat RPCs without credentials.
    pub chat_allow_untrusted: bool,
    /// `TLS_RELOAD_INTERVAL`: how often certificate files are re-read.
    pub reload_interval: Duration,
    /// `REDIS_TLS_CA_FILE`: the CA of `rediss://` servers (default: the system's roots).
    pub redis_tls_ca: Option<PathBuf>,
    /// How the edge bounds client connections.
    pub connections: Connections,
    /// `AUTH_HEALTH_ADDR`, `CONTENT_HEALTH_ADDR`, `CHAT_HEALTH_ADDR`, `RATELIMIT_HEALTH_ADDR`:
    /// a plaintext port serving only `grpc.health.v1` (kubelet's `grpc:` probes do not speak
    /// TLS).
    pub health_addrs: HealthAddrs,
}

/// Default `EDGE_IDLE_TIMEOUT`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `EDGE_BODY_READ_TIMEOUT`.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `EDGE_MAX_CONNECTIONS_PER_IP`.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 256;
/// Default `EDGE_MAX_HEADER_BYTES`.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;

/// Limits on the edge's client connections (slow or greedy clients).
#[derive(Debug, Clone)]
pub struct Connections {
    /// `EDGE_IDLE_TIMEOUT`: a connection (HTTP/1 keep-alive or HTTP/2) with no request in
    /// flight and no bytes moving for this long is closed.
    pub idle_timeout: Duration,
    /// `EDGE_BODY_READ_TIMEOUT`: a request body must arrive within this (else 408).
    pub body_read_timeout: Duration,
    /// `EDGE_MAX_CONNECTIONS_PER_IP`: open connections per client address (0: no cap). Behind
    /// a load balancer every connection comes from its address: raise it or set 0 there.
    pub max_per_ip: usize,
    /// `EDGE_MAX_HEADER_BYTES`: the largest request head (431 beyond it).
    pub max_header_bytes: usize,
}

/// Plaintext health-only ports of the gRPC services.
#[derive(Debug, Clone, Default)]
pub struct HealthAddrs {
    /// `AUTH_HEALTH_ADDR`.
    pub auth: Option<SocketAddr>,
    /// `CONTENT_HEALTH_ADDR`.
    pub content: Option<SocketAddr>,
    /// `CHAT_HEALTH_ADDR`.
    pub chat: Option<SocketAddr>,
    /// `RATELIMIT_HEALTH_ADDR`.
    pub ratelimit: Option<SocketAddr>,
}

fn path(r: &Reader<'_>, key: &str) -> Option<PathBuf> {
    r.raw(key).map(PathBuf::from)
}

fn pair(r: &mut Reader<'_>, cert_key: &str, key_key: &str) -> Option<CertFiles> {
    match (path(r, cert_key), path(r, key_key)) {
        (Some(cert), Some(key)) => Some(CertFiles { cert, key }),
        (None, None) => None,
        (Some(_), None) => {
            r.problem(key_key, format!("required when {cert_key} is set"));
            None
        }
        (None, Some(_)) => {
            r.problem(cert_key, format!("required when {key_key} is set"));
            None
        }
    }
}

fn optional_addr(r: &mut Reader<'_>, key: &str) -> Option<SocketAddr> {
    r.raw(key).map(|_| r.addr(key, "127.0.0.1:0"))
}

pub(crate) fn read_transport(r: &mut Reader<'_>) -> Transport {
    let edge_tls = pair(r, "EDGE_TLS_CERT_FILE", "EDGE_TLS_KEY_FILE");
    let edge_tls_off = match r
        .choice("EDGE_TLS", "auto", &["auto", "on", "off"])
        .as_str()
    {
        "off" => {
            if edge_tls.is_some() {
                r.problem(
                    "EDGE_TLS",
                    "off, but EDGE_TLS_CERT_FILE is set: unset one of them",
                );
            }
            true
        }
        "on" => {
            if edge_tls.is_none() {
                r.problem(
                    "EDGE_TLS",
                    "on requires EDGE_TLS_CERT_FILE and EDGE_TLS_KEY_FILE",
                );
            }
            false
        }
        _ => false,
    };
    let identity = pair(r, "GRPC_TLS_CERT_FILE", "GRPC_TLS_KEY_FILE");
    let grpc_tls = match (path(r, "GRPC_TLS_CA_FILE"), identity) {
        (Some(ca), identity) => Some(GrpcTls { ca, identity }),
        (None, Some(_)) => {
            r.problem(
                "GRPC_TLS_CA_FILE",
                "required with GRPC_TLS_CERT_FILE: the CA that signs the peers' certificates",
            );
            None
        }
        (None, None) => None,
    };
    let mut trusted_peers = r.list("GRPC_TRUSTED_PEERS");
    if r.raw("GRPC_TRUSTED_PEERS").is_none() {
        trusted_peers = vec![DEFAULT_TRUSTED_PEERS.to_owned()];
    }
    let peer_key = r.secret("GRPC_PEER_KEY");
    if peer_key
        .as_ref()
        .is_some_and(|k| k.expose_secret().len() < MIN_PEER_KEY_LENGTH)
    {
        r.problem(
            "GRPC_PEER_KEY",
            format!(
                "must be at least {MIN_PEER_KEY_LENGTH} characters (e.g. openssl rand -hex 32)"
            ),
        );
    }
    Transport {
        edge_tls,
        edge_tls_off,
        edge_plaintext_addr: optional_addr(r, "EDGE_PLAINTEXT_ADDR"),
        grpc_tls,
        trusted_peers,
        peer_key,
        ratelimit_allow_untrusted: r.bool("RATELIMIT_ALLOW_UNTRUSTED", false),
        chat_allow_untrusted: r.bool("CHAT_ALLOW_UNTRUSTED", false),
        reload_interval: r.duration(
            "TLS_RELOAD_INTERVAL",
            DEFAULT_TLS_RELOAD_INTERVAL,
            Unit::Seconds,
        ),
        redis_tls_ca: path(r, "REDIS_TLS_CA_FILE"),
        connections: Connections {
            idle_timeout: r.duration("EDGE_IDLE_TIMEOUT", DEFAULT_IDLE_TIMEOUT, Unit::Seconds),
            body_read_timeout: r.duration(
                "EDGE_BODY_READ_TIMEOUT",
                DEFAULT_BODY_READ_TIMEOUT,
                Unit::Seconds,
            ),
            max_per_ip: r.number(
                "EDGE_MAX_CONNECTIONS_PER_IP",
                DEFAULT_MAX_CONNECTIONS_PER_IP,
                0,
                1_000_000,
            ),
            max_header_bytes: r.number(
                "EDGE_MAX_HEADER_BYTES",
                DEFAULT_MAX_HEADER_BYTES,
                8 * 1024,
                1024 * 1024,
            ),
        },
        health_addrs: HealthAddrs {
            auth: optional_addr(r, "AUTH_HEALTH_ADDR"),
            content: optional_addr(r, "CONTENT_HEALTH_ADDR"),
            chat: optional_addr(r, "CHAT_HEALTH_ADDR"),
            ratelimit: optional_addr(r, "RATELIMIT_HEALTH_ADDR"),
        },
    }
}

/// A `*_GRPC_URL` must agree with the TLS settings: `https://` needs the CA, and `http://`
/// while this process has a gRPC certificate would be a silent downgrade. An unset URL follows
/// the TLS settings (its default becomes `https://`).
pub(crate) fn check_grpc_url(
    r: &mut Reader<'_>,
    key: &str,
    url: &mut String,
    tls: Option<&GrpcTls>,
) {
    let with_identity = tls.is_some_and(|tls| tls.identity.is_some());
    if r.raw(key).is_none() && with_identity {
        if let Some(rest) = url.strip_prefix("http://") {
            *url = format!("https://{rest}");
        }
        return;
    }
    match (url.starts_with("https://"), tls) {
        (true, None) => r.problem(
            key,
            "https:// needs GRPC_TLS_CA_FILE (and GRPC_TLS_CERT_FILE/GRPC_TLS_KEY_FILE for mTLS)",
        ),
        (false, _) if with_identity => r.problem(
            key,
            "http:// while GRPC_TLS_CERT_FILE is set: use https:// (the services refuse plaintext)",
        ),
        _ => {}
    }
}

/// `DATABASE_URL`'s PostgreSQL TLS parameters: a known `sslmode`, and an `sslrootcert` that
/// exists. (sqlx reads them; rustls does the TLS.)
pub(crate) fn check_database_tls(r: &mut Reader<'_>, url: &str) {
    let Some((_, query)) = url.split_once('?') else {
        return;
    };
    for (name, value) in query.split('&').filter_map(|p| p.split_once('=')) {
        match name {
            "sslmode" | "ssl-mode"
                if !matches!(
                    value,
                    "disable" | "prefer" | "require" | "verify-ca" | "verify-full"
                ) =>
            {
                r.problem(
                    "DATABASE_URL",
                    format!("sslmode={value} is not supported: use disable, prefer, require, verify-ca or verify-full"),
                );
            }
            "sslrootcert" | "ssl-root-cert" if !std::path::Path::new(value).is_file() => {
                r.problem("DATABASE_URL", format!("sslrootcert={value}: no such file"));
            }
            _ => {}
        }
    }
}
